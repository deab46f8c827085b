"""Per-architecture facts, discovered from the loaded transformers model.

Every MoE architecture in transformers 5.x whose experts class is decorated with
`use_experts_implementation` stores its routed experts as fused 3-D parameters and exposes the
same forward signature (DESIGN.md §3). We find those modules generically instead of keeping a
table of class names, so new architectures come along; `TESTED_ARCHITECTURES` lists the ones the
test suite proves exact.

Shape legend: E = experts in a layer, H = hidden size, I = expert intermediate size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError

# model_type values covered by the exactness tests (tests/test_exactness.py)
TESTED_ARCHITECTURES: tuple[str, ...] = (
    "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "phimoe", "gpt_oss",
)


@dataclass(frozen=True)
class ExpertLayout:
    """How one experts module stores its weights (flags set by `use_experts_implementation`)."""

    first_name: str  # "gate_up_proj" for gated experts, "up_proj" otherwise
    has_gate: bool
    has_bias: bool
    is_transposed: bool  # weights stored [E, in, out] instead of [E, out, in]
    has_post_expert_norm: bool

    @property
    def param_names(self) -> tuple[str, ...]:
        names = [self.first_name, "down_proj"]
        if self.has_bias:
            names += [f"{self.first_name}_bias", "down_proj_bias"]
        return tuple(names)


@dataclass(frozen=True)
class MoELayer:
    """One MoE layer: its position, its experts module, and sizes."""

    index: int  # 0-based among MoE layers (rows of a Popularity matrix)
    decoder_index: int  # position among the model's decoder layers (dense ones included)
    name: str  # module path, e.g. "model.layers.3.mlp.experts"
    module: nn.Module
    layout: ExpertLayout
    num_experts: int
    expert_bytes: int  # all of one expert's weights (and biases)


def is_experts_module(module: nn.Module) -> bool:
    """True for modules built by transformers' `use_experts_implementation` decorator."""
    has_flags = all(hasattr(module, a) for a in ("has_gate", "is_transposed", "has_bias"))
    if not has_flags or not hasattr(type(module), "_apply_gate"):
        return False
    first = "gate_up_proj" if module.has_gate else "up_proj"
    weight = getattr(module, first, None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 3


def layout_of(module: nn.Module) -> ExpertLayout:
    return ExpertLayout(
        first_name="gate_up_proj" if module.has_gate else "up_proj",
        has_gate=bool(module.has_gate),
        has_bias=bool(module.has_bias),
        is_transposed=bool(module.is_transposed),
        has_post_expert_norm=bool(getattr(module, "has_post_expert_norm", False)),
    )


def _decoder_index(name: str) -> int:
    """The first integer in a module path ("model.layers.7.mlp.experts" -> 7)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return -1


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """All routed-experts modules of `model`, in forward order. Raises if there are none."""
    layers: list[MoELayer] = []
    for name, module in model.named_modules():
        if not is_experts_module(module):
            continue
        layout = layout_of(module)
        tensors = [getattr(module, n) for n in layout.param_names]
        num_experts = int(tensors[0].shape[0])
        per_expert = sum(t[0].numel() * t.element_size() for t in tensors)
        layers.append(MoELayer(len(layers), _decoder_index(name), name, module, layout,
                               num_experts, per_expert))
    if not layers:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UnsupportedModelError(
            f"model type {model_type!r} has no MoE layer that uses transformers' experts "
            f"interface; supported architectures include {', '.join(TESTED_ARCHITECTURES)}")
    shapes = {tuple(tuple(getattr(l.module, n).shape) for n in l.layout.param_names) + (l.layout,)
              for l in layers}
    if len(shapes) != 1:
        raise UnsupportedModelError("MoE layers have different expert counts or shapes; "
                                    "fiddler_nb needs the same experts in every MoE layer")
    return layers


def expert_weights(layer: MoELayer, expert: int) -> tuple[torch.Tensor, ...]:
    """Views of one expert's weights in the module's own (CPU) storage, in layout order."""
    return tuple(getattr(layer.module, n)[expert] for n in layer.layout.param_names)
