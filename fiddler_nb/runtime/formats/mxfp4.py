"""MXFP4 (OCP microscaling, as gpt-oss ships its experts): pure decoding functions.

A block of 32 weights is 16 bytes of 4-bit e2m1 codes plus one e8m0 scale byte s, and
w = FP4[code] * 2^(s - 127). We store a matrix as transformers' Mxfp4 quantizer reads it:
`blocks` uint8 [N, K/2] (byte b of a row holds input 2b in its low nibble, 2b+1 in its high
nibble) and `scales` uint8 [N, K/32]. GGUF's MXFP4 type holds the same numbers in another
order (per 17-byte block: the scale, then input j in the low nibble of byte j and input j+16 in
its high nibble); `from_gguf_blocks` reorders without touching a value.

Decoding is exact in every float dtype with an 8-bit exponent (fp32, bf16): an e2m1 value has
at most 2 significant bits, times a power of two. Only the exponent range can differ (fp16).

Shape legend: N = output channels, K = input channels, B = GGUF blocks of a row.
"""

from __future__ import annotations

import torch

GROUP = 32  # inputs per e8m0 scale
E8M0_BIAS = 127
# e2m1 code -> value (sign bit 3, exponent bits 2..1, mantissa bit 0): transformers' FP4_VALUES
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
GGUF_BLOCK_BYTES = 1 + GROUP // 2  # e8m0 scale + 16 bytes of codes
ROWS_PER_CHUNK = 256  # rows decoded at a time: the float copy of a chunk, never of a matrix


def decode_rows(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """blocks [R, K/2] uint8, scales [R, K/32] uint8 -> w [R, K] in `dtype` (exact)."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    rows, half = blocks.shape
    codes = torch.stack([blocks & 0xF, blocks >> 4], dim=-1).view(rows, half * 2)  # [R, K]
    w = lut[codes.long()].view(rows, -1, GROUP)  # [R, K/32, 32]
    exp = scales.to(torch.int32) - E8M0_BIAS  # [R, K/32]
    return torch.ldexp(w, exp.unsqueeze(-1).float()).view(rows, -1).to(dtype)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
               rows_per_chunk: int = ROWS_PER_CHUNK) -> torch.Tensor:
    """A whole matrix [N, K] in `dtype`, decoded chunk by chunk (float32 scratch of one chunk)."""
    n = blocks.shape[0]
    out = torch.empty((n, blocks.shape[1] * 2), dtype=dtype, device=blocks.device)
    for r in range(0, n, rows_per_chunk):
        out[r:r + rows_per_chunk] = decode_rows(blocks[r:r + rows_per_chunk],
                                                scales[r:r + rows_per_chunk], dtype)
    return out


def from_gguf_blocks(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GGUF MXFP4 rows [N, B*17] uint8 -> (blocks [N, K/2], scales [N, K/32]), same values."""
    n = raw.shape[0]
    raw = raw.reshape(n, -1, GGUF_BLOCK_BYTES)  # [N, B, 17]
    scales = raw[..., 0].contiguous()  # [N, B]
    qs = raw[..., 1:]  # [N, B, 16]: input j low nibble, input j + 16 high nibble
    codes = torch.cat([qs & 0xF, qs >> 4], dim=-1)  # [N, B, 32] in input order
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)  # [N, B, 16]
    return blocks.reshape(n, -1).contiguous(), scales


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (blocks, scales): round to the nearest e2m1 value with the scale
    2^(floor(log2 amax) - 2) (OCP's choice). For writing test checkpoints; no model is
    quantized to MXFP4 at load."""
    n, k = w.shape
    wg = w.float().reshape(n, k // GROUP, GROUP)  # [N, K/32, 32]
    amax = wg.abs().amax(dim=-1)  # [N, K/32]
    emax_fp4 = 2  # 6.0 = 1.5 * 2^2: the largest e2m1 exponent
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax)) - emax_fp4,
                      torch.zeros_like(amax)).clamp(-E8M0_BIAS, E8M0_BIAS)
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    scaled = wg / torch.ldexp(torch.ones_like(exp), exp).unsqueeze(-1)  # [N, K/32, 32]
    codes = (scaled.unsqueeze(-1) - lut).abs().argmin(dim=-1).to(torch.uint8)  # [N, K/32, 32]
    codes = codes.reshape(n, k)
    blocks = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return blocks.contiguous(), (exp.to(torch.int32) + E8M0_BIAS).to(torch.uint8)
