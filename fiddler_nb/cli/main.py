"""`fiddler-nb` command line: generate, chat, autotune, demo, profile, plan, bench.

Argument parsing stays here; library functions receive plain values, never a Namespace.
Errors a user can fix are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..runtime.execution import known_executions
from ..runtime.placement import known_placements

DEFAULT_PROMPT = "The quick brown fox"


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="checkpoint directory, or 'tiny' (embedded)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: checkpoint's)")
    p.add_argument("--expert-budget", type=int, default=None,
                   help="experts kept on the fast device, all layers together (default: as many as fit)")
    p.add_argument("--gpu-memory", default=None, help="the budget as memory, e.g. 20GiB")
    p.add_argument("--placement", default=None, choices=known_placements(),
                   help="default: popularity (or the plan's)")
    p.add_argument("--execution", default=None, choices=known_executions(),
                   help="default: auto (or the plan's)")
    p.add_argument("--popularity", default=None, help="a popularity file from calibrate")
    p.add_argument("--profile", default=None,
                   help="a HardwareProfile JSON for 'auto', or 'quick' to measure this machine now")
    p.add_argument("--plan", default=None,
                   help="a plan from `fiddler-nb autotune --out` (explicit options override it)")


def _load_engine(args: argparse.Namespace):
    from ..api import load

    return load(args.model, device=args.device, dtype=args.dtype,
                expert_budget=args.expert_budget, gpu_memory=args.gpu_memory,
                placement=args.placement, execution=args.execution,
                popularity=args.popularity, profile=args.profile, plan=args.plan)


def cmd_generate(args: argparse.Namespace) -> int:
    engine = _load_engine(args)
    result = engine.generate(args.prompt, max_new_tokens=args.max_new_tokens)
    print(result.text)
    print()
    print(f"{engine!r}")
    print(f"resident experts: {len(engine.placement)} of {engine.num_layers * engine.num_experts}")
    print(result.stats.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiddler-nb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate text and print per-layer stats")
    _add_engine_args(gen)
    gen.add_argument("--prompt", default=DEFAULT_PROMPT)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.set_defaults(func=cmd_generate)
    from . import bench as cli_bench
    from . import chat as cli_chat
    from . import measure as cli_measure
    from . import tune as cli_tune

    demo = sub.add_parser("demo", help="the main job: profile, calibrate, bench, HTML report")
    cli_bench.add_demo_args(demo)
    cli_measure.add_subcommands(sub)
    cli_bench.add_subcommands(sub)
    cli_chat.add_subcommands(sub, _add_engine_args)
    cli_tune.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # FiddlerError is a ValueError
        print(f"fiddler-nb: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
