"""`Matrix`: one expert matrix as stored in its format (what the CPU kernels read).

Shape legend: N = output channels, K = input channels, G = group size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matrix:
    """One expert's matrix as stored.

    fmt       data                      scale                            group_size
    'float'   float [N, K]              None                             None
    'int8'    int8 [N, K]               [N] (activation dtype)           None
    'int8-group' int8 [N, K]            float16 [N, K/G]                 G (32 = GGUF Q8_0)
    'int4'    torch CPU pack uint8      [K/G, N, 2] (scale, zero=0)      G
    'int4-nibbles' uint8 [N, K/2]       [K/G, N, 2]                      G
    'int4-blocks' (native kernels' repack of 'int4': see kernels/native.py)
    int8-group: w[n, k] = data[n, k] * scale[n, k // G] (fp32), both contiguous.
    """

    fmt: str
    data: torch.Tensor
    scale: torch.Tensor | None = None
    group_size: int | None = None  # int4 and int8-group
