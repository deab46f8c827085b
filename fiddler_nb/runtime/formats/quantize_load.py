"""Putting a model's routed experts into a format: checks before loading, conversion after.

`check_format` validates (expert_dtype, group_size) against the model's expert shapes before any
weight is read. `quantize_experts` converts a loaded model's experts layer by layer and matrix
by matrix (runtime/formats/storage.py), so besides the result only one float matrix of one layer is
alive at a time; `quantizer.py` does the same while the checkpoint is read. Both first check the
weights are finite (`check_finite`): a NaN or inf quantizes to garbage without a word, so it is
named (layer, expert, matrix) in one CheckpointError instead.
"""

from __future__ import annotations

import gc
import re

import torch
from torch import nn

from ..model.adapters import MoELayer, find_moe_layers
from ..errors import CheckpointError
from .quant import ExpertFormat, resolve_format
from .storage import ExpertStorage, convert_module


def matrix_dims(layer: MoELayer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(K of each expert matrix, N of each): input dims the int4 groups split, output dims."""
    ks, ns = [], []
    for name in (layer.layout.first_name, "down_proj"):
        shape = getattr(layer.module, name).shape  # [E, N, K] or [E, K, N] if transposed
        n, k = (shape[-1], shape[-2]) if layer.layout.is_transposed else (shape[-2], shape[-1])
        ks.append(int(k))
        ns.append(int(n))
    return tuple(ks), tuple(ns)


def check_format(layers: list[MoELayer], expert_dtype: str | torch.dtype | None,
                 group_size: int | None) -> ExpertFormat | None:
    """The format asked for, checked against the experts' shapes (meta tensors are fine)."""
    ks, ns = matrix_dims(layers[0])
    return resolve_format(expert_dtype, group_size, ks, ns, type(layers[0].module).__name__)


def storage_for(layer: MoELayer, fmt: ExpertFormat | None, device: torch.device,
                model: nn.Module) -> ExpertStorage:
    """How `layer`'s experts are stored once in `fmt` (None: the float dtype they have)."""
    if fmt is None:
        from .quant import dtype_label

        fmt = ExpertFormat(dtype_label(getattr(layer.module, layer.layout.first_name).dtype))
    return ExpertStorage(layer.layout, fmt, on_gpu=device.type == "cuda")


def activation_dtype(model: nn.Module) -> torch.dtype:
    """The dtype hidden states reach the experts in (the model's non-expert weights)."""
    return model.get_output_embeddings().weight.dtype


def check_finite(w: torch.Tensor, layer: int | str, matrix: str) -> None:
    """CheckpointError naming the first (layer, expert, matrix) whose weights w [E, ...] hold
    NaN or inf. One fp32-accumulated sum per expert (a NaN or inf anywhere makes it non-finite;
    finite weights of a real model cannot overflow fp32), so no copy of the matrix is made."""
    for expert in range(w.shape[0]):
        if bool(torch.isfinite(w[expert].sum(dtype=torch.float32))):
            continue
        bad = w[expert]
        nan, inf = int(torch.isnan(bad).sum()), int(torch.isinf(bad).sum())
        if nan == inf == 0:
            continue  # only a sum too large for fp32: every weight is finite
        raise CheckpointError(f"non-finite expert weights: layer {layer}, expert {expert}, matrix "
                              f"{matrix} holds {nan} NaN and {inf} inf of {bad.numel()} values; "
                              "the checkpoint is damaged -- re-download or re-export it")


def layer_of(param_name: str) -> int | str:
    """'model.layers.3.mlp.experts.gate_up_proj' -> 3 (the name itself if it has no index)."""
    found = re.search(r"layers\.(\d+)\.", param_name)
    return int(found.group(1)) if found else param_name


def quantize_experts(model: nn.Module, fmt: ExpertFormat, device: torch.device) -> None:
    """Convert every routed-experts module of `model` to `fmt` in place, one layer at a time."""
    act = activation_dtype(model)
    for layer in find_moe_layers(model):
        storage = storage_for(layer, fmt, device, model)
        for name in storage.matrix_names:
            check_finite(getattr(layer.module, name), layer.index, name)
        convert_module(layer.module, storage, act)
        gc.collect()
