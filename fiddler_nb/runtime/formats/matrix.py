"""`Matrix`: one expert matrix as stored in its format (what the CPU kernels read).

Shape legend: N = output channels, K = input channels, G = group size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matrix:
    """One expert's matrix as stored."""

    fmt: str  # 'float' | 'int8' | 'int4' (CPU pack) | 'int4-nibbles' (fast-device copy)
    data: torch.Tensor  # float [N, K] | int8 [N, K] | uint8 [N, K/2]
    scale: torch.Tensor | None = None  # int8: [N]; int4: [K/G, N, 2] (activation dtype)
    group_size: int | None = None  # int4 only
