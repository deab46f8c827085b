"""Dense (non-expert) linears of a CPU-only engine through the measured CPU kernels.

On a CPU-only machine attention, shared experts and lm_head are a third of the bytes read per
token; their `nn.Linear`s then run through `kernels.linear` like the experts (the native kernels
for few tokens, oneDNN for prefill, per the engine's kernel choice). `dense_dtype` optionally
compresses them: "bf16" (a cast), "int8" (one scale per output channel) or "int4" (group-wise,
the layout the CPU kernels here read); None keeps the checkpoint's dtype. Routers that are not
`nn.Linear` and the embeddings stay as they are. Compressed weights stay compressed after
`engine.close()` (like compressed experts); float ones get their own forward back. A GGUF
file's Q8_0 / Q4_0 linears arrive already in their blocks (engine/gguf_dense.py) and are routed
as they are, unless `dense_dtype` asks for another format.

Shape legend: n = tokens (all batch rows), N = out features, K = in features.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from ..errors import FormatError
from ..formats.matrix import Matrix
from ..formats.quant import (DEFAULT_INT4_GROUP, FLOAT_DTYPES, INT4_N_MULTIPLE,
                             int4_scales_and_zeros, pack_int4_cpu, pack_nibbles, quantize_int4,
                             quantize_int8)
from ..kernels.native import available as native_available
from ..kernels.registry import dequantize_matrix, linear

DENSE_DTYPES = ("bf16", "int8", "int4")


def check_dense_dtype(dense_dtype: str | None, device: torch.device) -> str | None:
    """The dense format asked for, or a FormatError before any weight is read."""
    if dense_dtype is None:
        return None
    if dense_dtype not in DENSE_DTYPES:
        raise FormatError(f"unknown dense_dtype {dense_dtype!r}; use one of "
                          f"{', '.join(DENSE_DTYPES)} (or None to keep the checkpoint's)")
    if device.type != "cpu":
        raise FormatError(f"dense_dtype={dense_dtype!r} compresses the dense weights of a "
                          f"CPU-only engine; on {device} they live on the GPU: drop it")
    return dense_dtype


def route_dense_linears(model: nn.Module, store, dense_dtype: str | None) -> int:
    """Give every CPU nn.Linear of `model` a forward through the store's kernel choice (and
    `dense_dtype`'s weights). Returns how many linears were routed."""
    tied = {p.data_ptr() for p in model.get_input_embeddings().parameters()}
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or module.weight.device.type != "cpu":
            continue
        kept = module.__dict__.pop("_fnb_file_matrix", None)  # a GGUF file's own blocks
        if kept is not None and dense_dtype is not None:  # compress as asked, from its values
            module.weight.data = dequantize_matrix(kept[0], module.weight.dtype)
            kept = None
        matrix, label = kept or _matrix(module.weight.data, dense_dtype)
        if matrix is None:
            continue
        if matrix.fmt != "float" and module.weight.data_ptr() not in tied:
            module.weight.data = torch.empty(0, dtype=module.weight.dtype)  # the copy is it
        module._fnb_dense = (matrix, label, store)
        module.forward = types.MethodType(_forward, module)
        count += 1
    return count


def unroute_dense_linears(model: nn.Module) -> None:
    for module in model.modules():
        if "_fnb_dense" in module.__dict__:
            matrix = module.__dict__.pop("_fnb_dense")[0]
            if matrix.fmt == "float":
                module.__dict__.pop("forward", None)  # back to nn.Linear.forward


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    matrix, label, store = self._fnb_dense
    x2 = x.reshape(-1, x.shape[-1])  # [n, K]
    if matrix.fmt == "float" and x2.dtype != matrix.data.dtype:
        x2 = x2.to(matrix.data.dtype)
    y = linear(x2, matrix, store.kernels, label).to(x.dtype)  # [n, N]
    if self.bias is not None:
        y = y + self.bias
    return y.view(*x.shape[:-1], y.shape[-1])


def _matrix(w: torch.Tensor, dense_dtype: str | None) -> tuple[Matrix | None, str]:
    """(stored matrix, format label) for one dense weight w [N, K]; (None, '') to leave it."""
    n_out, k_in = w.shape
    act = w.dtype
    if dense_dtype is None or dense_dtype == "bf16":
        data = w if dense_dtype is None else w.to(FLOAT_DTYPES["bf16"])
        label = {v: k for k, v in FLOAT_DTYPES.items()}.get(data.dtype)
        return (Matrix("float", data), label) if label else (None, "")
    if dense_dtype == "int8":
        q, s = quantize_int8(w)
        return Matrix("int8", q, s.to(act)), "int8"
    group = DEFAULT_INT4_GROUP if k_in % DEFAULT_INT4_GROUP == 0 else 32
    if k_in % group:
        return None, ""
    q, s = quantize_int4(w, group)
    if native_available():
        return Matrix("int4-blocks", pack_nibbles(q), s.to(act), group), f"int4-g{group}"
    if n_out % INT4_N_MULTIPLE:
        return None, ""
    return Matrix("int4", pack_int4_cpu(q), int4_scales_and_zeros(s, act), group), \
        f"int4-g{group}"
