"""Model shapes: an MoE model described by the numbers that matter for placement and latency.

`ModelShape` (layers, experts, expert matrix sizes, format) lets the planner and profiler reason
about models that are not loaded (e.g. Mixtral-8x7B on a laptop). Preset figures come from each
model's published `config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..runtime.errors import OptionError
from ..runtime.formats.quant import parse_label
from ..runtime.model.config import resolve_dtype


@dataclass(frozen=True)
class ModelShape:
    """An MoE model's sizes. Expert bytes follow from the matrices: gate+up (2*I*H) and down (I*H)."""

    name: str
    num_layers: int  # MoE layers only
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int  # of one routed expert
    dtype: str = "bfloat16"
    non_expert_bytes: int = 0  # attention, embeddings, norms, routers, shared experts, lm_head
    gated: bool = True  # SwiGLU-style experts have three matrices, ungated two
    expert_format: str | None = None  # 'int8', 'int4-g64', 'bf16', ...: None = `dtype`

    @property
    def dtype_bytes(self) -> int:
        return torch.empty((), dtype=resolve_dtype(self.dtype)).element_size()

    @property
    def expert_params(self) -> int:
        matrices = 3 if self.gated else 2
        return matrices * self.hidden_size * self.intermediate_size

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert as stored (scales included for int8 / int4)."""
        if self.expert_format is None:
            return self.expert_params * self.dtype_bytes
        bits = parse_label(self.expert_format).bits_per_weight(scale_bytes=self.dtype_bytes)
        return int(self.expert_params * bits / 8)

    @property
    def total_experts(self) -> int:
        return self.num_layers * self.num_experts

    def with_layers(self, num_layers: int) -> "ModelShape":
        """The same per-layer shape with fewer (or more) MoE layers; non-expert bytes scale too."""
        scale = num_layers / self.num_layers
        return replace(self, num_layers=num_layers,
                       non_expert_bytes=int(self.non_expert_bytes * scale))


_GB = 10**9
# name -> shape. Figures from each model's config.json on the Hugging Face hub; non-expert
# bytes are bf16 weights outside the routed experts (rounded, for planning only).
SHAPE_PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape("tiny", num_layers=4, num_experts=8, top_k=2, hidden_size=64,
                       intermediate_size=128, dtype="float32", non_expert_bytes=600_000),
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 8, 2, 4096, 14336,
                               non_expert_bytes=int(3.2 * _GB)),
    "mixtral-8x22b": ModelShape("mixtral-8x22b", 56, 8, 2, 6144, 16384,
                                non_expert_bytes=int(5.0 * _GB)),
    "qwen3-30b-a3b": ModelShape("qwen3-30b-a3b", 48, 128, 8, 2048, 768,
                                non_expert_bytes=int(2.0 * _GB)),
    "deepseek-v2-lite": ModelShape("deepseek-v2-lite", 26, 64, 6, 2048, 1408,
                                   non_expert_bytes=int(2.5 * _GB)),
    "olmoe-1b-7b": ModelShape("olmoe-1b-7b", 16, 64, 8, 2048, 1024,
                              non_expert_bytes=int(0.6 * _GB)),
    "gpt-oss-20b": ModelShape("gpt-oss-20b", 24, 32, 4, 2880, 2880,
                              non_expert_bytes=int(2.4 * _GB)),
}


def get_shape(name: str) -> ModelShape:
    """A preset by name; the error lists the known names."""
    if not isinstance(name, str) or name not in SHAPE_PRESETS:
        raise OptionError(f"unknown model shape {name!r}; known: {', '.join(SHAPE_PRESETS)}")
    return SHAPE_PRESETS[name]


def engine_shape(engine: Any) -> "ModelShape":
    """The planner's ModelShape of a loaded engine (what autotune projects with)."""
    layer = engine.layers[0]
    first = getattr(layer.module, layer.layout.first_name)  # [E, 2I, H] (or transposed)
    cfg = engine.model.config.get_text_config()
    hidden = int(cfg.hidden_size)
    dtype = str(first.dtype).removeprefix("torch.")
    expert_params = engine.expert_bytes // first.element_size()
    matrices = 3 if layer.layout.has_gate else 2
    non_expert = sum(p.numel() * p.element_size() for p in engine.model.parameters()) - \
        engine.num_layers * engine.num_experts * engine.expert_bytes
    return ModelShape(Path(str(engine.path)).name, engine.num_layers, engine.num_experts,
                      int(getattr(cfg, "num_experts_per_tok", 2)), hidden,
                      max(1, expert_params // (matrices * hidden)), dtype, max(0, non_expert),
                      gated=layer.layout.has_gate)
