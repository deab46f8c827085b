"""`fiddler-nb profile` and `fiddler-nb plan`: measure this machine, project others.

Registered by `cli.build_parser` through `add_subcommands(sub)`. Parsing stays here; the library
functions (`profiler.profile_hardware`, `planner.plan`) receive plain values.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..runtime.errors import OptionError
from ..runtime.files import write_json
from ..measure.shapes import SHAPE_PRESETS

MEASURE_FIRST_S = 30  # a quick Mixtral-sized profile on a 2-core laptop (issue 17: ~29 s)


def cmd_profile(args: argparse.Namespace) -> int:
    from ..measure.profiler import profile_hardware

    target = args.shape
    if args.model is not None:
        from ..api import load

        target = load(args.model, device="cpu", dtype=args.dtype, expert_budget=0,
                      placement="none")
    profile = profile_hardware(target, dtype=args.dtype, threads=args.threads, quick=args.quick)
    print(profile.summary())
    if args.out:
        print(f"saved {profile.save(args.out)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..measure.planner import UNMEASURED_GPU, gpu_is_unmeasured, plan, plan_table
    from ..measure.profiler import HardwareProfile, profile_hardware

    if args.profile is None and args.gpu_preset is None:
        raise OptionError("plan needs --profile FILE (measured) and/or --gpu-preset NAME")
    if args.profile is not None:
        profile = HardwareProfile.load(args.profile)
    else:  # no saved profile: a quick measurement of this CPU for the shape, said first
        print(f"no --profile given: measuring this CPU for one {args.shape} expert first "
              f"(about {MEASURE_FIRST_S} s); to skip it, save a profile once with `fiddler-nb "
              f"profile --shape {args.shape} --quick --out FILE` and pass --profile FILE",
              flush=True)
        profile = profile_hardware(args.shape, quick=True)
    if args.gpu_preset is not None:
        profile = profile.with_gpu_preset(args.gpu_preset)
    elif gpu_is_unmeasured(profile):
        print(f"warning: {UNMEASURED_GPU}")  # first, before any projected number
    popularity = None
    if args.popularity is not None:
        from ..runtime.policies.popularity import Popularity

        popularity = Popularity.load(args.popularity)
    note = profile.busy_note()
    if note:
        print(note)  # before the projection that rests on the measured CPU curve
    budgets = [_budget(b) for b in args.budgets] if args.budgets else [None]
    records = plan(args.shape, profile, budgets=budgets, popularity=popularity,
                   prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, skew=args.skew)
    print(plan_table(records))
    if args.out:
        path = write_json(args.out, {"kind": "projected", "profile": profile.to_dict(),
                                     "records": [asdict(r) for r in records]}, "plan records")
        print(f"saved {path}")
    return 0


def _budget(text: str) -> int | str | None:
    """'53' -> 53 experts, '20GiB' -> memory, 'fit' -> the profile's GPU memory."""
    if text == "fit":
        return None
    return int(text) if text.isdigit() else text


def add_subcommands(sub) -> None:
    """Add `profile` and `plan` to the `fiddler-nb` sub-parsers."""
    from ..measure.hardware import known_gpu_presets
    from ..measure.planner import DEFAULT_SKEW

    prof = sub.add_parser("profile", help="measure CPU (and GPU) expert latency and bandwidth")
    src = prof.add_mutually_exclusive_group()
    src.add_argument("--shape", default="tiny", choices=sorted(SHAPE_PRESETS),
                     help="model shape preset to time one expert of (default: tiny)")
    src.add_argument("--model", default=None, help="a checkpoint directory: time its experts")
    prof.add_argument("--dtype", default=None, help="bf16 / fp32 / fp16 (default: the shape's)")
    prof.add_argument("--threads", type=int, default=None,
                      help="torch threads (default: torch.get_num_threads(), as the engine)")
    prof.add_argument("--quick", action="store_true", help="fewer points and repeats (<1 min)")
    prof.add_argument("--out", default=None, help="save the HardwareProfile JSON here")
    prof.set_defaults(func=cmd_profile)

    pl = sub.add_parser("plan", help="projected tokens/s per strategy and GPU budget")
    pl.add_argument("--shape", default="mixtral-8x7b", choices=sorted(SHAPE_PRESETS))
    pl.add_argument("--profile", default=None,
                    help="a HardwareProfile JSON from `profile`; without it, plan first measures "
                         f"this CPU (about {MEASURE_FIRST_S} s)")
    pl.add_argument("--gpu-preset", default=None, choices=known_gpu_presets(),
                    help="attach a preset GPU (+link), e.g. rtx-4090-pcie4")
    pl.add_argument("--budgets", nargs="*", default=None,
                    help="expert counts, the whole card's memory ('20GiB'; non-expert weights, "
                         "reserve and scratch subtracted) or 'fit' (default: fit)")
    pl.add_argument("--prompt-tokens", type=int, default=512)
    pl.add_argument("--new-tokens", type=int, default=32)
    pl.add_argument("--popularity", default=None, help="a recorded Popularity file")
    pl.add_argument("--skew", type=float, default=DEFAULT_SKEW,
                    help="Zipf exponent of the synthetic popularity (0 = uniform)")
    pl.add_argument("--out", default=None, help="save records (and the profile) as JSON")
    pl.set_defaults(func=cmd_plan)
