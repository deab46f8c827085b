"""The options every engine command shares (generate, chat): model, device, budget, policies,
profile, plan -- and loading the engine from them."""

from __future__ import annotations

import argparse

from ..runtime.policies.execution import known_executions
from ..runtime.policies.placement import known_placements


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny",
                   help="checkpoint directory, a .gguf file (or folder holding one), or 'tiny'")
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


def load_engine(args: argparse.Namespace):
    from ..api import load

    return load(args.model, device=args.device, dtype=args.dtype,
                expert_budget=args.expert_budget, gpu_memory=args.gpu_memory,
                placement=args.placement, execution=args.execution,
                popularity=args.popularity, profile=args.profile, plan=args.plan)
