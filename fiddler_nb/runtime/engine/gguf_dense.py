"""A GGUF file's non-expert weights kept in the file's own blocks on a CPU-only engine.

llama.cpp reads attention, lm_head and the embeddings as the file stores them (Q8_0 in a Q8_0
file, Q4_0 in a Q4_0 one). Dequantized to float32 they are ~4x the bytes, read per token by the
CPU (lm_head alone is a fifth of a 2-layer Mixtral's decode bytes) and held in memory. Here a
Q8_0 linear becomes a group-wise int8 `Matrix` with the file's int8 values and fp16 scales, a
Q4_0 one the native kernels' nibble layout with the file's fp16 scales (both exact: the same
numbers the `gguf` package's dequantization gives); they run through the engine's kernel choice
like the experts (engine/dense.py). Other quantized types (the Q6_K lm_head and Q4_K / Q5_K
layers llama-quantize's mixes use) become group-wise int8 with 32 inputs per fp16 scale, the
nearest format we keep, with the error against the file's values measured (the caller states
it in eng.notes): dequantized to float32 they would be 4-5x llama.cpp's bytes per token. An
embedding table stays in its blocks too and is dequantized row by row at lookup. Float tensors,
tied embeddings and GPU engines take the dequantized path.

transformers' tensor processors may permute rows (llama's Q / K heads): the permutation is
found by running the processor on the row numbers, and applied to whole rows of blocks (a
processor that changes values rather than rows keeps the dequantized path).

Shape legend: N = rows (out features / vocabulary), K = inputs, B = blocks of a row.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from torch import nn

from ..formats import gguf_blocks
from ..formats.matrix import Matrix
from ..formats.quant import dequantize_int8_grouped, pack_nibbles, quantize_int8_grouped
from ..kernels.native import available as native_available
from ..model.gguf_file import TensorEntry

KEPT = ("Q8_0", "Q4_0")  # non-expert types kept in their blocks exactly
CONVERTED_LABEL = "int8-g32"  # what other quantized non-expert types become


def kept_matrix(entry: TensorEntry, gguf_name: str, processor, shape: tuple[int, ...],
                errors: list[float]) -> tuple[Matrix, str] | None:
    """(the tensor as a stored matrix, its format label), or None to dequantize it to the
    activation dtype (float types; shapes the kernels cannot hold). shape: the parameter's
    (N, K). A converted tensor appends its relative RMS error to `errors`."""
    if len(shape) != 2 or entry.gguf_type in gguf_blocks.FLOATS:
        return None
    n, k = shape
    if k % gguf_blocks.GROUP:
        return None
    if entry.gguf_type not in KEPT or (entry.gguf_type == "Q4_0" and not native_available()):
        return _converted(entry, gguf_name, processor, n, k, errors)
    perm = _row_permutation(processor, gguf_name, n)
    if perm is None:
        return _converted(entry, gguf_name, processor, n, k, errors)
    raw = _raw_rows(entry, n)
    if entry.gguf_type == "Q8_0":
        q, scale = gguf_blocks.decode_q8_0(raw, k)  # [N, K] int8, [N, K/32] fp16
        return Matrix("int8-group", q[perm].contiguous(), scale[perm].contiguous(),
                      gguf_blocks.GROUP), "gguf-q8_0"
    q, scale, _ = gguf_blocks.decode_int4("Q4_0", raw, k)  # zero points 0 for Q4_0
    return Matrix("int4-blocks", pack_nibbles(q[perm]).contiguous(),
                  scale[perm].to(torch.float16).contiguous(), gguf_blocks.GROUP), "gguf-q4_0"


def _raw_rows(entry: TensorEntry, n: int) -> torch.Tensor:
    """The tensor's blocks [N, bytes of a row] uint8, copied out of the memory map."""
    return torch.from_numpy(np.array(entry.data)).view(torch.uint8).reshape(n, -1)


def _converted(entry: TensorEntry, gguf_name: str, processor, n: int, k: int,
               errors: list[float]) -> tuple[Matrix, str]:
    """The file's values (the `gguf` package's dequantization, transformers' processor) as
    group-wise int8 with fp16 scales per 32 inputs; the error appended to `errors`."""
    values = gguf_blocks.dequantize_raw(entry.gguf_type, _raw_rows(entry, n), k).numpy()
    w = torch.from_numpy(np.ascontiguousarray(
        processor.process(values, gguf_name).weights, dtype=np.float32)).reshape(n, k)
    q, scale = quantize_int8_grouped(w, gguf_blocks.GROUP)
    matrix = Matrix("int8-group", q, scale, gguf_blocks.GROUP)
    errors.append(gguf_blocks.conversion_error(w, dequantize_int8_grouped(q, scale,
                                                                          torch.float32)))
    return matrix, CONVERTED_LABEL


def _row_permutation(processor, gguf_name: str, n: int) -> torch.Tensor | None:
    """The row order transformers' processor gives this tensor (None if it does more than
    reorder rows)."""
    rows = np.arange(n, dtype=np.float32).reshape(n, 1)
    try:
        out = np.asarray(processor.process(rows, gguf_name).weights).reshape(-1)
    except (ValueError, TypeError, IndexError):
        return None
    if out.shape != (n,) or not np.array_equal(np.sort(out), np.arange(n, dtype=np.float32)):
        return None
    return torch.from_numpy(out.astype(np.int64))


def keep_embedding(module: nn.Embedding, matrix: Matrix, dtype: torch.dtype) -> None:
    """Give an embedding table kept in its blocks a lookup that dequantizes only the rows
    asked for (the weight becomes an empty placeholder)."""
    module.weight.data = torch.empty(0, dtype=dtype)
    module._fnb_file_rows = (matrix, dtype)
    module.forward = types.MethodType(_embedding_forward, module)


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    matrix, dtype = self._fnb_file_rows
    rows = ids.reshape(-1)  # [n]
    if matrix.fmt == "int8-group":
        q = matrix.data[rows].float()  # [n, K]
    else:
        from ..formats.quant import unpack_nibbles

        q = unpack_nibbles(matrix.data[rows]).float()
    scale = matrix.scale[rows].float().repeat_interleave(matrix.group_size, dim=-1)  # [n, K]
    return (q * scale).to(dtype).view(*ids.shape, -1)
