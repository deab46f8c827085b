"""`fiddler-nb autotune`: measure settings for a workload and save the chosen `Plan`.

Registered by `cli.main.build_parser` through `add_subcommands(sub)`; the library function
(`tune.autotune`) receives plain values.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def cmd_autotune(args: argparse.Namespace) -> int:
    from ..runtime.generation.workload import Workload
    from ..tune import autotune

    workload = Workload(args.prompt_tokens, args.new_tokens, args.batch)
    command = "fiddler-nb " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv and sys.argv[0].endswith("fiddler-nb") else "fiddler-nb autotune"
    plan = autotune(args.model, workload, seconds=args.seconds,
                    expert_dtypes=args.expert_dtypes or None, threads=args.threads or None,
                    profile=args.profile, command=command)
    print(plan.table())
    if args.out:
        print(f"saved {plan.save(args.out)}")
    return 0


def add_subcommands(sub) -> None:
    """Add `autotune` to the `fiddler-nb` sub-parsers."""
    from ..tune import DEFAULT_SECONDS

    p = sub.add_parser("autotune", help="measure settings for your workload; save the best plan")
    p.add_argument("--model", default="tiny", help="checkpoint directory, or 'tiny' (embedded)")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                   help="time limit for measuring candidates")
    p.add_argument("--threads", type=int, nargs="*", default=None,
                   help="CPU thread counts to try (default: all cores, half, one)")
    p.add_argument("--expert-dtypes", nargs="*", default=None,
                   help="expert formats to try, e.g. bf16 int8 (each a reload; default: keep)")
    p.add_argument("--profile", default=None,
                   help="a HardwareProfile JSON for the planner's projections (GPU only)")
    p.add_argument("--out", default=None, help="save the plan JSON here (fnb.load(plan=...))")
    p.set_defaults(func=cmd_autotune)
