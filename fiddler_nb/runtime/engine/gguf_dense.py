"""A GGUF file's non-expert weights kept in the file's own blocks on a CPU-only engine.

llama.cpp reads attention, lm_head and the embeddings as the file stores them (Q8_0 in a Q8_0
file, Q4_0 in a Q4_0 one). Dequantized to float32 they are ~4x the bytes, read per token by the
CPU (lm_head alone is a fifth of a 2-layer Mixtral's decode bytes) and held in memory. Here a
Q8_0 linear becomes a group-wise int8 `Matrix` with the file's int8 values and fp16 scales, a
Q4_0 one the native kernels' nibble layout with the file's fp16 scales (both exact: the same
numbers the `gguf` package's dequantization gives); they run through the engine's kernel choice
like the experts (engine/dense.py). A Q8_0 / Q4_0 embedding table stays in its blocks too and is
dequantized row by row at lookup. Other types, tied embeddings and GPU engines take the
dequantized path.

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
from ..formats.quant import pack_nibbles
from ..kernels.native import available as native_available
from ..model.gguf_file import TensorEntry

KEPT = ("Q8_0", "Q4_0")  # non-expert types kept in their blocks (others are dequantized)


def kept_matrix(entry: TensorEntry, gguf_name: str, processor, shape: tuple[int, ...]
                ) -> tuple[Matrix, str] | None:
    """(the tensor as a stored matrix, its format label) when it stays in its blocks, else
    None. shape: the parameter's (N, K)."""
    if len(shape) != 2 or entry.gguf_type not in KEPT:
        return None
    if entry.gguf_type == "Q4_0" and not native_available():
        return None  # torch's int4 pack would need a repack with zero points: dequantize
    n, k = shape
    perm = _row_permutation(processor, gguf_name, n)
    if perm is None or k % gguf_blocks.GROUP:
        return None
    raw = torch.from_numpy(np.ascontiguousarray(entry.data)).view(torch.uint8).reshape(n, -1)
    if entry.gguf_type == "Q8_0":
        q, scale = gguf_blocks.decode_q8_0(raw, k)  # [N, K] int8, [N, K/32] fp16
        return Matrix("int8-group", q[perm].contiguous(), scale[perm].contiguous(),
                      gguf_blocks.GROUP), "gguf-q8_0"
    q, scale, _ = gguf_blocks.decode_int4("Q4_0", raw, k)  # zero points 0 for Q4_0
    return Matrix("int4-blocks", pack_nibbles(q[perm]).contiguous(),
                  scale[perm].to(torch.float16).contiguous(), gguf_blocks.GROUP), "gguf-q4_0"


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
