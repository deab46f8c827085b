"""The CPU kernel for MXFP4 expert matrices (gpt-oss, GGUF MXFP4), in torch.

torch has no MXFP4 GEMM on the CPU, so the kernel decodes a chunk of output rows at a time into
the activations' dtype (a 16-entry table for the e2m1 codes, the e8m0 scale as a power of two:
formats/mxfp4.py, exact in fp32 and bf16) and multiplies that chunk. The float copy alive at
any moment is one chunk of rows (`mxfp4.ROWS_PER_CHUNK` x K), never the matrix or the model.

Shape legend: n = tokens, N = output channels, K = input channels, R = rows of a chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats import mxfp4
from ..formats.matrix import Matrix
from .registry import register


@register("mxfp4-dequant", "mxfp4")
def mxfp4_linear(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """y [n, N] = x [n, K] @ dequant(m)^T, decoded chunk of rows by chunk of rows."""
    n_out = m.data.shape[0]
    y = torch.empty((x.shape[0], n_out), dtype=x.dtype, device=x.device)
    step = mxfp4.ROWS_PER_CHUNK
    for r in range(0, n_out, step):
        w = mxfp4.decode_rows(m.data[r:r + step], m.scale[r:r + step], x.dtype)  # [R, K]
        y[:, r:r + step] = F.linear(x, w)
    return y
