"""Memory vs decode speed vs output error of one model in several expert formats.

`compare_formats(path)` loads the checkpoint once per format (all experts on the CPU path) and
measures, for each: host bytes of the experts (`Engine.memory`), decode tokens/s of a greedy
generation, the relative error of every expert's output against the reference format on the same
random inputs (||y_fmt - y_ref|| / ||y_ref||, mean over experts and layers), and the share of
positions whose top-1 next token agrees with the reference's logits on the prompts. The
reference is the checkpoint's own dtype (bf16 for released MoE checkpoints; fp32 for the tiny
test model). Notebook 08 plots the result (notebook/plots.py `format_tradeoff`).

`activation_quant=True` adds, for each int8 / int4 format, a point '<format>+q8': the same
engine with kernels that round activations to int8 per 32 inputs (`Engine.set_activation_quant`),
so its extra error is measured beside the exact kernels'. `files=[...]`: checkpoints as users
have them (a GGUF file, MXFP4 gpt-oss) of the same weights, each loaded as it is and measured
against the same reference; for a GGUF file the reference is `fnb.write_gguf_reference(file)`
(the file's own values), `gguf_reference` below.

Shape legend: n = probe tokens, H = hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

PROBE_TOKENS = 16  # random inputs per expert for the output-error figure
PROBE_SEED = 0


@dataclass(frozen=True)
class FormatPoint:
    expert_format: str  # label: 'fp32', 'bf16', 'int8', 'int4-g64', ...
    expert_bytes: int  # host bytes of all routed experts
    decode_tps: float
    rel_expert_error: float  # mean ||y - y_ref|| / ||y_ref|| over experts (0 for the reference)
    top1_agreement: float  # share of prompt positions with the reference's argmax token
    kind: str = "measured"
    activation_quant: bool = False  # kernels that round activations to int8 ran
    source: str = ""  # the file it was loaded from, for `files`


def _expert_outputs(engine, x: torch.Tensor) -> list[torch.Tensor]:
    """Every expert's output on x [n, H], run through the engine's own CPU kernels."""
    store = engine._open().store
    with torch.inference_mode():
        return [store.run(i, x, store.cpu_weights(i, e), False)
                for i in range(engine.num_layers) for e in range(engine.num_experts)]


def compare_formats(path: str | Path = "tiny", formats: Sequence[str | None] = (None, "bf16",
                    "int8", "int4"), prompts: Sequence[str] = ("The quick brown fox",),
                    new_tokens: int = 8, activation_quant: bool = False,
                    files: Sequence[str | Path] = ()) -> list[FormatPoint]:
    """One FormatPoint per format (None = the checkpoint's dtype, the reference, first), per
    activation-quantized int8 / int4 format and per file (module docstring)."""
    from ..api import load

    points: list[FormatPoint] = []
    ref: dict = {}
    runs = [(path, fmt, "") for fmt in dict.fromkeys((None, *formats))]
    runs += [(f, None, str(f)) for f in files]
    for source, fmt, label in runs:
        eng = load(source, device="cpu", expert_dtype=fmt, placement="none", expert_budget=0,
                   execution="cpu")
        try:
            modes = [False] + ([True] if activation_quant and _has_q8(eng) else [])
            for quant in modes:
                eng.set_activation_quant(quant)
                points.append(_measure(eng, ref, prompts, new_tokens, quant, label))
        finally:
            eng.close()
    return points


def _has_q8(engine) -> bool:
    from .format_suite import has_q8_kernel

    return has_q8_kernel(engine._open().store.storage.fmt)


def _measure(eng, ref: dict, prompts: Sequence[str], new_tokens: int, quant: bool,
             source: str) -> FormatPoint:
    """One point; the first call fills `ref` (probe input, expert outputs, top-1 tokens)."""
    if "x" not in ref:
        hidden = eng.model.config.hidden_size
        gen = torch.Generator().manual_seed(PROBE_SEED)
        ref["x"] = torch.randn(PROBE_TOKENS, hidden, generator=gen)  # [n, H]
    x = ref["x"].to(eng.model.dtype)
    outs = [y.float() for y in _expert_outputs(eng, x)]
    top1 = eng.logits(list(prompts)).argmax(dim=-1)  # [B, T]
    stats = eng.generate(prompts[0], max_new_tokens=new_tokens, min_new_tokens=new_tokens).stats
    if "out" not in ref:
        ref["out"], ref["top1"] = outs, top1
    err = torch.stack([(y - r).norm() / r.norm().clamp_min(1e-30)
                       for y, r in zip(outs, ref["out"])]).mean().item()
    label = eng.expert_dtype + ("+q8" if quant else "")
    return FormatPoint(label, eng.memory().host_experts_total, stats.decode.tokens_per_s, err,
                       (top1 == ref["top1"]).float().mean().item(), activation_quant=quant,
                       source=source)


def gguf_reference(file: str | Path, out: str | Path | None = None) -> Path:
    """The safetensors reference of a GGUF file (every tensor the `gguf` package's
    dequantization, float32), written once next to it (or at `out`)."""
    from ..runtime.engine.dequantized import write_gguf_reference

    file = Path(file)
    target = Path(out) if out is not None else file.with_name(file.stem + "-reference")
    if not (target / "config.json").is_file():
        write_gguf_reference(file, target)
    return target
