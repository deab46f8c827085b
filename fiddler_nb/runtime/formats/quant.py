"""Expert weight formats and their quantization math (pure functions, no model code).

Formats: a float dtype ("bf16", "fp16", "fp32": a cast), "int8" (weight-only, symmetric, one
scale per output channel), "int8" with a `group_size` (label "int8-g32": one fp16 scale per G
inputs of an output channel; G = 32 is GGUF Q8_0's block) and "int4" (weight-only, symmetric,
one scale per `group_size` inputs of an output channel). Quantized matrices are always stored `[N, K]` (out, in), whatever the
checkpoint's layout, so one kernel family serves every architecture.

int4 is stored in torch's CPU pack (`aten._convert_weight_to_int4pack_for_cpu`: two 4-bit values
per byte in a machine-specific order) because the CPU runs most experts in Fiddler; the fast
device, when it is a GPU, also gets the plain nibble layout (`pack_nibbles`) it can unpack.
The unsigned nibble u holds q + 8, with q in [-8, 7]; dequant(q) = q * scale (zero point 0).

Shape legend: N = output channels, K = input channels, G = group size, E = experts.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import torch

from ..errors import FormatError

INT8_MAX = 127  # symmetric: q in [-127, 127], so -w and w quantize alike
INT4_MAX = 7  # scale = amax / 7, q in [-7, 7] (the kernel's -8 is never produced)
INT4_OFFSET = 8  # torch's int4 kernels read an unsigned nibble u and use (u - 8)
INT4_N_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu: output channels in blocks of 16
INT4_GROUP_SIZES = (32, 64, 128)  # what torch's int4 kernels accept
INT8_GROUP_SIZES = (32, 64, 128)  # group-wise int8: 32 is GGUF Q8_0; the kernels step by 32
GROUP_SCALE_DTYPE = torch.float16  # group-wise int8 scales: fp16, as GGUF Q8_0 stores them
# Default group when none is given (if it divides every input dim; else the largest that does).
# Measured (docs/benchmarks.md, Zen 3 AVX2, 2 threads, busy machine, 28672 x 4096 at 1 token,
# torch int4pack): g32 36.0 ms, g64 35.7 ms, g128 40.8 ms -- equal within noise for 32 / 64;
# 64 reads fewer scale bytes than 32 and has half the error step of 128.
DEFAULT_INT4_GROUP = 64
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
QUANTIZED = ("int8", "int4")
FLOAT_FORMATS = ("bf16", "fp16", "fp32")
KNOWN_FORMATS = FLOAT_FORMATS + QUANTIZED
MXFP4 = "mxfp4"  # 4-bit e2m1 values, one e8m0 (power of two) scale per 32 inputs (gpt-oss)
MXFP4_GROUP = 32
# Checkpoint formats kept as they are (never a user's expert_dtype choice): label -> the kernel
# family that runs them and its group. GGUF Q4_0 / Q4_K are torch's int4 pack with group-32
# scales (Q4_1 / Q4_K with zero points), so int4 kernels run them; Q8_0 is group-wise int8 with
# fp16 scales; MXFP4 has its own kernel (kernels/torch_mxfp4.py).
SOURCE_FORMATS: dict[str, tuple[str, int]] = {
    "gguf-q4_0": ("int4", 32), "gguf-q4_1": ("int4", 32), "gguf-q4_k": ("int4", 32),
    "gguf-q8_0": ("int8", 32), "gguf-mxfp4": (MXFP4, MXFP4_GROUP),
    MXFP4: (MXFP4, MXFP4_GROUP),
}


@dataclass(frozen=True)
class ExpertFormat:
    """How routed experts are stored. name: 'bf16' | 'fp16' | 'fp32' | 'int8' | 'int4'.
    group_size: int4's group; for int8, None = one scale per output channel, G = group-wise."""

    name: str
    group_size: int | None = None  # int4 and mxfp4 (always) and group-wise int8
    _: KW_ONLY  # the rest by keyword only: two merged features once swapped them positionally
    source: str | None = None  # a checkpoint's own format kept as is ('gguf-q4_0', 'mxfp4')
    # int4 only, how the CPU copy is laid out: "torch" (torch's CPU int4 pack, for its
    # kernels) or "nibbles" (plain nibbles [N, K/2] + scales [N, K/G], what the package's native
    # kernels and the fast device read). Not part of the format's identity (label, equality).
    int4_layout: str = field(default="torch", compare=False)

    @property
    def is_quantized(self) -> bool:
        return self.name in QUANTIZED or self.name == MXFP4

    @property
    def float_dtype(self) -> torch.dtype | None:
        """The storage dtype of a float format (None for int8 / int4)."""
        return None if self.is_quantized else FLOAT_DTYPES[self.name]

    @property
    def matrix_fmt(self) -> str:
        """The `Matrix.fmt` its matrices are stored in (what the CPU kernels are keyed by)."""
        if not self.is_quantized:
            return "float"
        if self.name == "int8" and self.group_size is not None:
            return "int8-group"
        if self.name == "int4" and self.int4_layout == "nibbles":
            return "int4-blocks"
        return self.name

    def bits_per_weight(self, scale_bytes: int = 2) -> float:
        """Bytes read per weight x 8, scales included (scale_bytes: the activations' dtype)."""
        if self.name == "int8" and self.group_size is not None:
            return 8.0 + 8.0 * GROUP_SCALE_DTYPE.itemsize / self.group_size
        if self.name == "int8":
            return 8.0  # + one scale per row: negligible next to K weights
        if self.name == "int4":
            return 4.0 + 8.0 * scale_bytes / self.group_size
        if self.name == MXFP4:
            return 4.0 + 8.0 / self.group_size  # one e8m0 byte per group
        return 8.0 * FLOAT_DTYPES[self.name].itemsize

    def label(self) -> str:
        """What users see (eng.expert_dtype): the checkpoint's format when kept as is."""
        return self.source or self.kernel_label

    @property
    def kernel_label(self) -> str:
        """The kernel family's label ('int4-g32' for GGUF Q4_0): what kernel choices key on."""
        if self.name == MXFP4 or self.group_size is None:
            return self.name
        return f"{self.name}-g{self.group_size}"


def parse_label(label: str) -> ExpertFormat:
    """'int4-g64' -> ExpertFormat('int4', 64); 'int8' -> ExpertFormat('int8'); 'int8-g32' ->
    ExpertFormat('int8', 32); 'gguf-q4_0' -> ExpertFormat('int4', 32, source='gguf-q4_0')."""
    if label in SOURCE_FORMATS:
        name, group = SOURCE_FORMATS[label]
        return ExpertFormat(name, group, source=None if label == name else label)
    name, _, group = label.partition("-g")
    return ExpertFormat(name, int(group) if group else None)


def dtype_label(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the format name of a float dtype)."""
    for name in FLOAT_FORMATS:
        if FLOAT_DTYPES[name] == dtype:
            return name
    raise FormatError(f"expert dtype {dtype} has no format name; use one of {FLOAT_FORMATS}")


def resolve_format(expert_dtype: str | torch.dtype | None, group_size: int | None,
                   input_dims: tuple[int, ...] = (), output_dims: tuple[int, ...] = (),
                   model: str = "this model") -> ExpertFormat | None:
    """Check a user's (expert_dtype, group_size) and return the format; None keeps the
    checkpoint's dtype. `input_dims` / `output_dims`: every K / N of the expert matrices (int4
    groups split K; torch's int4 CPU pack needs N divisible by INT4_N_MULTIPLE)."""
    if expert_dtype is None:
        if group_size is not None:
            raise FormatError(f"group_size={group_size!r} needs expert_dtype='int4' or 'int8'")
        return None
    name = dtype_label(expert_dtype) if isinstance(expert_dtype, torch.dtype) else \
        {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(str(expert_dtype).lower(),
                                                                      str(expert_dtype).lower())
    base, sep, label_group = name.partition("-g")
    if sep and base in QUANTIZED:  # a label such as eng.expert_dtype or a plan writes
        if not label_group.isdigit() or (group_size is not None and group_size != int(label_group)):
            raise FormatError(f"expert_dtype {expert_dtype!r} and group_size={group_size!r} "
                              f"disagree; pass expert_dtype='{base}' with the group_size you want")
        name, group_size = base, int(label_group)
    if name not in KNOWN_FORMATS:
        raise FormatError(f"unknown expert_dtype {expert_dtype!r}; use one of "
                          f"{', '.join(KNOWN_FORMATS)} (or None to keep the checkpoint's)")
    if name == "int8":
        return _resolve_int8(group_size, input_dims, model)
    if name != "int4":
        if group_size is not None:
            raise FormatError(f"group_size={group_size!r} applies to expert_dtype='int4' or "
                              f"'int8' only, not {name!r}; drop it")
        return ExpertFormat(name)
    bad_n = sorted({n for n in output_dims if n % INT4_N_MULTIPLE})
    if bad_n:
        raise FormatError(f"int4 needs expert output dims divisible by {INT4_N_MULTIPLE} (torch's "
                          f"int4 CPU kernel); {model} has {bad_n}; use expert_dtype='int8'")
    if group_size is None:
        fits = [g for g in INT4_GROUP_SIZES if all(k % g == 0 for k in input_dims)]
        if not fits:
            raise FormatError(f"int4 needs input dims divisible by one of {INT4_GROUP_SIZES}, "
                              f"this model has {input_dims}; use expert_dtype='int8'")
        return ExpertFormat("int4", DEFAULT_INT4_GROUP if DEFAULT_INT4_GROUP in fits else max(fits))
    return _grouped("int4", group_size, INT4_GROUP_SIZES, input_dims, model, "the default")


def _resolve_int8(group_size: int | None, input_dims: tuple[int, ...], model: str) -> ExpertFormat:
    """int8 per output channel (group_size None) or group-wise (one of INT8_GROUP_SIZES)."""
    if group_size is None:
        return ExpertFormat("int8")
    return _grouped("int8", group_size, INT8_GROUP_SIZES, input_dims, model,
                    "one scale per output channel")


def _grouped(name: str, group_size: int, allowed: tuple[int, ...], input_dims: tuple[int, ...],
             model: str, none_means: str) -> ExpertFormat:
    """A group-wise format after checking its group against the kernels and the model."""
    if group_size not in allowed:
        raise FormatError(f"{name} group_size {group_size!r} is not supported by the kernels; use "
                          f"one of {allowed} (or None for {none_means})")
    bad = [k for k in input_dims if k % group_size]
    if bad:
        raise FormatError(f"{name} group_size {group_size} does not divide the expert input "
                          f"dim(s) {sorted(set(bad))} of {model}; pass a group_size that does, "
                          "e.g. 32")
    return ExpertFormat(name, group_size)


# ---- int8: one scale per output channel -------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] float -> (q [..., N, K] int8, scale [..., N] fp32). All-zero rows get
    scale 1 (q = 0), so nothing divides by zero."""
    w32 = w.float()
    amax = w32.abs().amax(dim=-1)  # [..., N]
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(w32 / scale.unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(q [..., N, K], scale [..., N]) -> w [..., N, K] in `dtype` (scale rounded to `dtype`
    first, as the kernels see it)."""
    return (q.float() * scale.to(dtype).float().unsqueeze(-1)).to(dtype)


# ---- group-wise int8: one fp16 scale per G inputs of an output channel (GGUF Q8_0) -------
# Stored Matrix (what GGUF Q8_0 maps onto without loss): fmt "int8-group", data int8 [N, K]
# contiguous (row n, inputs k), scale float16 [N, K/G] contiguous, group_size G. A Q8_0 block b
# of row n (fp16 d, int8 qs[32]) is data[n, 32b:32b+32] = qs and scale[n, b] = d; the weight is
# w[n, k] = data[n, k] * scale[n, k // G], computed in fp32 (exact: 8-bit q x 11-bit scale).
def _fp16_scale_at_least(scale: torch.Tensor) -> torch.Tensor:
    """fp32 scales -> fp16, rounded up where rounding went below (so |w| / s <= 127 still)."""
    s16 = scale.to(GROUP_SCALE_DTYPE)
    up = torch.nextafter(s16, torch.full_like(s16, float("inf")))
    s16 = torch.where(s16.float() < scale, up, s16)  # branch-free: also runs on meta tensors
    if s16.device.type != "meta" and not bool(torch.isfinite(s16).all()):
        raise FormatError("a weight group's max exceeds what an fp16 scale holds (|w| > "
                          f"{127 * torch.finfo(GROUP_SCALE_DTYPE).max:.3g}); use per-channel int8")
    return s16


def quantize_int8_grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] float -> (q [..., N, K] int8 in [-127, 127], scale [..., N, K/G] fp16).
    q is rounded against the stored (fp16) scale; all-zero groups get scale 1."""
    *lead, n, k = w.shape
    if k % group_size:
        raise FormatError(f"int8 group_size {group_size} does not divide K={k}")
    wg = w.float().reshape(*lead, n, k // group_size, group_size)  # [..., N, K/G, G]
    amax = wg.abs().amax(dim=-1)  # [..., N, K/G]
    scale = _fp16_scale_at_least(torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax)))
    q = torch.round(wg / scale.float().unsqueeze(-1)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(*lead, n, k), scale


def dequantize_int8_grouped(q: torch.Tensor, scale: torch.Tensor,
                            dtype: torch.dtype) -> torch.Tensor:
    """(q [..., N, K] int8, scale [..., N, K/G]) -> w [..., N, K] in `dtype` (q * scale in
    fp32, exact, then one rounding to `dtype`)."""
    *lead, n, k = q.shape
    groups = scale.shape[-1]
    w = q.float().reshape(*lead, n, groups, k // groups) * scale.float().unsqueeze(-1)
    return w.reshape(*lead, n, k).to(dtype)


# ---- int4: one scale per G inputs of an output channel ----------------------------------
def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] float -> (q [..., N, K] int8 in [-7, 7], scale [..., N, K/G] fp32).
    All-zero groups get scale 1."""
    *lead, n, k = w.shape
    if k % group_size:
        raise FormatError(f"int4 group_size {group_size} does not divide K={k}")
    wg = w.float().reshape(*lead, n, k // group_size, group_size)  # [..., N, K/G, G]
    amax = wg.abs().amax(dim=-1)  # [..., N, K/G]
    scale = torch.where(amax > 0, amax / INT4_MAX, torch.ones_like(amax))
    q = torch.round(wg / scale.unsqueeze(-1)).clamp_(-INT4_MAX, INT4_MAX).to(torch.int8)
    return q.reshape(*lead, n, k), scale


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(q [..., N, K], scale [..., N, K/G]) -> w [..., N, K] in `dtype`."""
    *lead, n, k = q.shape
    groups = scale.shape[-1]
    qg = q.float().reshape(*lead, n, groups, k // groups)
    w = qg * scale.to(dtype).float().unsqueeze(-1)
    return w.reshape(*lead, n, k).to(dtype)


def pack_int4_cpu(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] int8 in [-8, 7] -> torch's CPU int4 pack [N, K/2] uint8."""
    u = (q.to(torch.int32) + INT4_OFFSET).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)


def int4_scales_and_zeros(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """scale [N, K/G] -> [K/G, N, 2] (scale, zero=0) in `dtype`, the layout torch's int4 CPU
    kernel reads."""
    s = scale.to(dtype).t()  # [K/G, N]
    return torch.stack([s, torch.zeros_like(s)], dim=-1).contiguous()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q [..., K] int8 in [-8, 7] -> [..., K/2] uint8, low nibble = even k (for GPU unpacking)."""
    u = (q.to(torch.int16) + INT4_OFFSET).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_nibbles`: [..., K/2] uint8 -> [..., K] int8."""
    low = (packed & 0xF).to(torch.int8) - INT4_OFFSET
    high = (packed >> 4).to(torch.int8) - INT4_OFFSET
    return torch.stack([low, high], dim=-1).flatten(-2)


def roundtrip(w: torch.Tensor, fmt: ExpertFormat, dtype: torch.dtype) -> torch.Tensor:
    """dequant(quant(w)) in `dtype`: exactly the weights the engine's kernels multiply by
    (what `write_dequantized` stores). w [..., N, K]."""
    if fmt.matrix_fmt == "int8-group":
        return dequantize_int8_grouped(*quantize_int8_grouped(w, fmt.group_size), dtype)
    if fmt.name == "int8":
        return dequantize_int8(*quantize_int8(w), dtype)
    if fmt.name == "int4":
        return dequantize_int4(*quantize_int4(w, fmt.group_size), dtype)
    return w.to(fmt.float_dtype)


def half_step(w: torch.Tensor, fmt: ExpertFormat) -> torch.Tensor:
    """Half the quantization step each weight of w [..., N, K] sees (the error bound)."""
    if fmt.matrix_fmt == "int8-group":
        scale = quantize_int8_grouped(w, fmt.group_size)[1].float()  # [..., N, K/G]
        return scale.repeat_interleave(fmt.group_size, dim=-1) / 2
    if fmt.name == "int8":
        return quantize_int8(w)[1].unsqueeze(-1).expand_as(w) / 2
    scale = quantize_int4(w, fmt.group_size)[1]  # [..., N, K/G]
    return scale.repeat_interleave(fmt.group_size, dim=-1) / 2
