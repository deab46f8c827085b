"""The options every engine command shares (generate, chat, and bench's engine format and
threads): model, device, budget, policies, expert format, threads, profile, plan -- and loading
the engine from them. One flag per `fnb.load` keyword a terminal user would want."""

from __future__ import annotations

import argparse

from ..runtime.engine.dense import DENSE_DTYPES
from ..runtime.formats.quant import INT4_GROUP_SIZES, KNOWN_FORMATS
from ..runtime.policies.execution import known_executions
from ..runtime.policies.placement import known_placements

TINY_NOTE = ("note: 'tiny' is the embedded test model with random weights, so its answers are "
             "gibberish; pass --model PATH (a Hugging Face MoE checkpoint directory, e.g. "
             "Mixtral or Qwen-MoE) for real text")


def add_format_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """--expert-dtype / --group-size / --threads (bench takes several formats with --cpu-suite)."""
    p.add_argument("--expert-dtype", default=None, nargs="+" if many else None,
                   metavar="FORMAT",
                   help=f"routed experts' format: {', '.join(KNOWN_FORMATS)} (int8/int4 quantize "
                        "while loading; default: the checkpoint's, or the plan's)"
                        + (". With --cpu-suite: several, the targets table" if many else ""))
    p.add_argument("--group-size", type=int, default=None,
                   help=f"int4 group size, one of {', '.join(map(str, INT4_GROUP_SIZES))} "
                        "(default 64); with int8: group-wise int8 (32 is GGUF Q8_0's layout)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads while generating (default: torch's setting, or the plan's)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny",
                   help="checkpoint directory, a .gguf file (or folder holding one), or 'tiny' "
                        "(embedded, random weights: gibberish)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: checkpoint's)")
    p.add_argument("--expert-budget", type=int, default=None,
                   help="experts kept on the fast device, all layers together (default: as many as fit)")
    p.add_argument("--gpu-memory", default=None, help="the budget as memory, e.g. 20GiB")
    p.add_argument("--placement", default=None, choices=known_placements(),
                   help="default: popularity (or the plan's)")
    p.add_argument("--execution", default=None, choices=known_executions(),
                   help="default: auto (or the plan's)")
    add_format_args(p)
    p.add_argument("--dense-dtype", default=None, choices=DENSE_DTYPES,
                   help="CPU-only engines: compress attention, shared experts and lm_head too "
                        "(default: the checkpoint's dtype)")
    p.add_argument("--allow-activation-quant", action="store_true",
                   help="int8 / int4 weights: CPU kernels may round activations to int8 per 32 "
                        "inputs (integer dot products, as llama.cpp; faster, not exact)")
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
                popularity=args.popularity, profile=args.profile, plan=args.plan,
                expert_dtype=args.expert_dtype, group_size=args.group_size, threads=args.threads,
                dense_dtype=args.dense_dtype,
                allow_activation_quant=args.allow_activation_quant)


def is_tiny(model: str) -> bool:
    return str(model) == "tiny"
