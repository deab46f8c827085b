"""GGUF block types of routed experts: which of our formats holds each one, and the decoding of
one expert matrix's raw blocks into that format's parts (pure functions on uint8 tensors).

Kept as they are (the file's numbers, repacked for our kernels, no second rounding):
  Q4_0  w = (u - 8) * d, 32 per block, fp16 d       -> int4 group 32, scale d, zero 0
  Q4_1  w = u * d + m                                 -> int4 group 32, scale d, zero m + 8d
  Q4_K  w = u * (d sc_j) - dmin m_j, 8 x 32 per 256  -> int4 group 32, scale d sc_j,
                                                        zero 8 d sc_j - dmin m_j
  Q8_0  w = q * d, q int8, 32 per block, fp16 d      -> group-wise int8, group 32, fp16 d
  MXFP4 e2m1 codes and an e8m0 scale per 32           -> mxfp4 (formats/mxfp4.py)
  F32 / F16 / BF16                                    -> float (the activation dtype)
u is the stored nibble (0..15); our int4 is torch's CPU pack of q = u - 8 with per-group
(scale, zero) and w = q * scale + zero, which reproduces the file's w exactly for Q4_0 (fp16 d
held in fp32 or fp16) and to one fp32 rounding of the zero point for Q4_1 / Q4_K. Q8_0 is
group-wise int8 with the same fp16 scales, exact in any activation dtype up to the one rounding
of q * d to it.
Converted at load (dequantized by the `gguf` package, then quantized to our nearest format, with
the error measured against the file's values and stated in eng.notes): Q5_0, Q5_1, Q2_K, Q3_K,
Q5_K, Q6_K -> int8 per output channel.
Anything else (IQ*, TQ*, NVFP4, ...) is refused with the list above.

Shape legend: N = rows (output channels), K = inputs, B = blocks of a row, J = sub-blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32  # the int4 group every kept 4-bit type maps onto
QK_K = 256  # super-block of the K-quants
NATIVE_INT4 = ("Q4_0", "Q4_1", "Q4_K")
FLOATS = ("F32", "F16", "BF16")
CONVERTED = ("Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q5_K", "Q6_K")
SUPPORTED = FLOATS + NATIVE_INT4 + ("Q8_0", "MXFP4") + CONVERTED


@dataclass(frozen=True)
class TypePlan:
    """How one GGUF tensor type is held: `kind` 'float' | 'int4' | 'int8-group' | 'mxfp4' |
    'convert'."""

    gguf_type: str  # 'Q4_0', ...
    kind: str
    label: str | None  # eng.expert_dtype when kept ('gguf-q4_0'); None: the target's label


def plan_for(gguf_type: str) -> TypePlan | None:
    """The plan for a type name, or None if we cannot hold it."""
    if gguf_type in FLOATS:
        return TypePlan(gguf_type, "float", None)
    if gguf_type in NATIVE_INT4:
        return TypePlan(gguf_type, "int4", f"gguf-{gguf_type.lower()}")
    if gguf_type == "Q8_0":
        return TypePlan(gguf_type, "int8-group", "gguf-q8_0")
    if gguf_type == "MXFP4":
        return TypePlan(gguf_type, "mxfp4", "gguf-mxfp4")
    if gguf_type in CONVERTED:
        return TypePlan(gguf_type, "convert", None)
    return None


def _fp16(raw: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 (little-endian fp16) -> [...] float32 (exact)."""
    return raw.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles_low_high(qs: torch.Tensor) -> torch.Tensor:
    """[..., 16] bytes -> [..., 32] nibbles: the 16 low nibbles, then the 16 high ones (the
    element order of Q4_0 / Q4_1 / MXFP4 blocks and of each 32-byte chunk of Q4_K)."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def decode_int4(gguf_type: str, raw: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw [N, bytes of a row] uint8 of a Q4_0 / Q4_1 / Q4_K matrix with K inputs ->
    (q [N, K] int8 in [-8, 7], scale [N, K/32] fp32, zero [N, K/32] fp32): w = q * scale + zero."""
    n = raw.shape[0]
    if gguf_type == "Q4_0":
        blk = raw.reshape(n, k // GROUP, 2 + GROUP // 2)  # [N, B, 18]
        scale = _fp16(blk[..., :2])  # [N, B]
        u = _nibbles_low_high(blk[..., 2:])  # [N, B, 32]
        zero = torch.zeros_like(scale)
    elif gguf_type == "Q4_1":
        blk = raw.reshape(n, k // GROUP, 4 + GROUP // 2)  # [N, B, 20]
        scale, low = _fp16(blk[..., :2]), _fp16(blk[..., 2:4])  # w = u d + m
        u = _nibbles_low_high(blk[..., 4:])
        zero = low + 8 * scale
    elif gguf_type == "Q4_K":
        blk = raw.reshape(n, k // QK_K, 4 + 12 + QK_K // 2)  # [N, B, 144]
        d, dmin = _fp16(blk[..., :2]), _fp16(blk[..., 2:4])  # [N, B]
        sc, mins = _k_scale_min(blk[..., 4:16])  # [N, B, 8] each
        chunks = blk[..., 16:].reshape(n, -1, 4, GROUP)  # [N, B, 4, 32]: two sub-blocks each
        u = torch.stack([chunks & 0xF, chunks >> 4], dim=3)  # [N, B, 4, 2, 32]
        u = u.reshape(n, -1, 8, GROUP)  # [N, B, J=8, 32]
        scale = d.unsqueeze(-1) * sc.float()  # [N, B, 8]: exact (11 x 6 bits)
        zero = 8 * scale - dmin.unsqueeze(-1) * mins.float()  # one fp32 rounding
        scale, zero, u = scale.reshape(n, -1), zero.reshape(n, -1), u.reshape(n, -1, GROUP)
    else:
        raise ValueError(f"not an int4-kept GGUF type: {gguf_type}")
    q = (u.to(torch.int8) - 8).reshape(n, k)  # [N, K]
    return q, scale.reshape(n, -1), zero.reshape(n, -1)


def decode_q8_0(raw: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """raw [N, bytes of a row] uint8 of a Q8_0 matrix -> (q [N, K] int8, scale [N, K/32] fp16):
    w = q * scale, the group-wise int8 layout (formats/matrix.py 'int8-group')."""
    n = raw.shape[0]
    blk = raw.reshape(n, k // GROUP, 2 + GROUP)  # [N, B, 34]
    scale = blk[..., :2].contiguous().view(torch.float16).squeeze(-1)  # [N, B]
    q = blk[..., 2:].contiguous().view(torch.int8).reshape(n, k)  # [N, K]
    return q, scale.contiguous()


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K 12-byte packing of eight 6-bit (scale, min) pairs -> ([..., 8], [..., 8])
    (gguf's Q4_K.get_scale_min, in torch)."""
    d, m, m_d = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mins


def dequantize_raw(gguf_type: str, raw: torch.Tensor, k: int) -> torch.Tensor:
    """raw [N, bytes of a row] of any type the `gguf` package reads -> w [N, K] float32 (the
    file's own values: what a reference checkpoint stores and a conversion is measured against)."""
    import numpy as np
    from gguf import GGMLQuantizationType, dequantize

    values = dequantize(np.ascontiguousarray(raw.numpy()), GGMLQuantizationType[gguf_type])
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(-1, k)


def conversion_error(file_values: torch.Tensor, ours: torch.Tensor) -> float:
    """Relative RMS error of a converted matrix against the file's values (0 for all-zero)."""
    ref = file_values.double()
    norm = ref.norm().item()
    return (ours.double() - ref).norm().item() / norm if norm else 0.0
