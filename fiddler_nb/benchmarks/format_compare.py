"""Memory vs decode speed vs output error of one model in several expert formats.

`compare_formats(path)` loads the checkpoint once per format (all experts on the CPU path) and
measures, for each: host bytes of the experts (`Engine.memory`), decode tokens/s of a greedy
generation, the relative error of every expert's output against the reference format on the same
random inputs (||y_fmt - y_ref|| / ||y_ref||, mean over experts and layers), and the share of
positions whose top-1 next token agrees with the reference's logits on the prompts. The
reference is the checkpoint's own dtype (bf16 for released MoE checkpoints; fp32 for the tiny
test model). Notebook 08 plots the result (notebook/plots.py `format_tradeoff`).

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


def _expert_outputs(engine, x: torch.Tensor) -> list[torch.Tensor]:
    """Every expert's output on x [n, H], run through the engine's own CPU kernels."""
    store = engine._open().store
    with torch.inference_mode():
        return [store.run(i, x, store.cpu_weights(i, e), False)
                for i in range(engine.num_layers) for e in range(engine.num_experts)]


def compare_formats(path: str | Path = "tiny", formats: Sequence[str | None] = (None, "bf16",
                    "int8", "int4"), prompts: Sequence[str] = ("The quick brown fox",),
                    new_tokens: int = 8) -> list[FormatPoint]:
    """One FormatPoint per format (None = the checkpoint's dtype, the reference, first)."""
    from ..api import load

    points, ref_out, ref_top1, x = [], None, None, None
    for fmt in dict.fromkeys((None, *formats)):
        eng = load(path, device="cpu", expert_dtype=fmt, placement="none", expert_budget=0,
                   execution="cpu")
        if x is None:
            hidden = eng.model.config.hidden_size
            gen = torch.Generator().manual_seed(PROBE_SEED)
            x = torch.randn(PROBE_TOKENS, hidden, generator=gen).to(eng.model.dtype)  # [n, H]
        outs = [y.float() for y in _expert_outputs(eng, x)]
        top1 = eng.logits(list(prompts)).argmax(dim=-1)  # [B, T]
        stats = eng.generate(prompts[0], max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens).stats
        if ref_out is None:
            ref_out, ref_top1 = outs, top1
        err = torch.stack([(y - r).norm() / r.norm().clamp_min(1e-30)
                           for y, r in zip(outs, ref_out)]).mean().item()
        points.append(FormatPoint(eng.expert_dtype, eng.memory().host_experts_total,
                                  stats.decode.tokens_per_s, err,
                                  (top1 == ref_top1).float().mean().item()))
        eng.close()
    return points
