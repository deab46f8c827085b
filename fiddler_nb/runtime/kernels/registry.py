"""CPU kernels for one expert matrix, per format, behind a small registry.

A kernel computes y = x @ W^T for one stored matrix (`Matrix`: float, int8 + per-row scales, or
torch's CPU int4 pack + group scales). Which kernel runs is a `KernelChoice`: per format and
token-count bucket, a kernel name, picked by measurement on this machine (measure/probes.py,
recorded in the HardwareProfile) or, without a profile, `DEFAULT_CHOICE` below. Nothing here is
tuned to one CPU: the default is what torch itself would do, plus the one-token ATen switch that
was faster on both machines we measured (docs/benchmarks.md).

Shape legend: n = tokens routed to the expert, N = output channels, K = input channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..formats.matrix import Matrix
from ..formats.quant import dequantize_int8_grouped, unpack_nibbles

# Token-count buckets: a kernel is chosen per bucket; n tokens use the first bucket >= n.
TOKEN_BUCKETS: tuple[int, ...] = (1, 8, 64, 512)


KernelFn = Callable[[torch.Tensor, Matrix], torch.Tensor]


@dataclass(frozen=True)
class KernelSpec:
    name: str
    fmt: str  # the Matrix.fmt it reads
    fn: KernelFn
    available: Callable[[], bool] = lambda: True
    # rounds the activations (e.g. to int8 blocks) before multiplying: not exact, so it runs
    # only where the caller allows it (KernelChoice.allow_activation_quant)
    quantizes_activations: bool = False


_KERNELS: dict[str, KernelSpec] = {}


def register(name: str, fmt: str, available: Callable[[], bool] = lambda: True,
             quantizes_activations: bool = False):
    """Decorator: add a kernel function under `name` for matrices of `fmt`."""
    def wrap(fn: KernelFn) -> KernelFn:
        _KERNELS[name] = KernelSpec(name, fmt, fn, available, quantizes_activations)
        return fn
    return wrap


def known_kernels(fmt: str | None = None) -> list[str]:
    """Registered kernels (for one Matrix.fmt), available on this machine or not."""
    return sorted(k for k, s in _KERNELS.items() if fmt is None or s.fmt == fmt)


def candidates(fmt: str, activation_quant: bool = False) -> list[str]:
    """Kernels for `fmt` that can run here (what a measurement compares); the ones that
    quantize activations only with activation_quant."""
    return [k for k in known_kernels(fmt) if _KERNELS[k].available()
            and (activation_quant or not _KERNELS[k].quantizes_activations)]


def quantizes_activations(name: str) -> bool:
    return name in _KERNELS and _KERNELS[name].quantizes_activations


def get_kernel(name: str) -> KernelSpec:
    if name not in _KERNELS:
        raise ValueError(f"unknown CPU kernel {name!r}; known: {', '.join(known_kernels())}")
    return _KERNELS[name]


def bucket_of(n: int) -> int:
    """The token bucket that n tokens fall in."""
    for b in TOKEN_BUCKETS:
        if n <= b:
            return b
    return TOKEN_BUCKETS[-1]


# ---- the kernels ---------------------------------------------------------------------------
@register("onednn", "float")
def _onednn(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    return F.linear(x, m.data)  # [n, N]


@register("aten", "float")
def _aten(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """F.linear with oneDNN switched off: ATen's own GEMV / GEMM. Uses the switch behind
    torch.backends.mkldnn.flags(enabled=False) without that context manager's TF32 side effect
    (and its warning on every machine without an Intel GPU)."""
    previous = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.linear(x, m.data)
    finally:
        torch._C._set_mkldnn_enabled(previous)


@register("int8pack", "int8")
def _int8pack(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    return torch._weight_int8pack_mm(x, m.data, m.scale)  # [n, N]


@register("int8-dequant", "int8")
def _int8_dequant(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """Dequantize to the activations' dtype, then oneDNN (can win for many tokens where the
    GEMM is compute-bound and the CPU has fast bf16 / AMX)."""
    w = m.data.to(x.dtype) * m.scale.unsqueeze(-1)  # [N, K]
    return F.linear(x, w)


@register("int8g-dequant", "int8-group")
def _int8g_dequant(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """Group-wise int8: dequantize (q * scale in fp32, rounded once to the activations' dtype,
    exactly the weights `write_dequantized` stores), then F.linear."""
    return F.linear(x, dequantize_int8_grouped(m.data, m.scale, x.dtype))  # [n, N]


@register("int4b-dequant", "int4-blocks")
def _int4b_dequant(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """int4 in the plain nibble layout: dequantize, then F.linear (oneDNN for many tokens)."""
    return F.linear(x, dequantize_matrix(m, x.dtype))  # [n, N]


@register("int4pack", "int4")
def _int4pack(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, m.data, m.group_size, m.scale)


@dataclass(frozen=True)
class KernelChoice:
    """Per format label ('bf16', 'int8', 'int4-g64', ...) and token bucket, a kernel name; plus
    the CPU threads to run with (None: leave torch's setting). `source` says where it came from.
    `table_q8`: the same with the kernels that quantize activations among the candidates, used
    (and those kernels run at all) only when `allow_activation_quant`."""

    table: dict[str, dict[int, str]] = field(default_factory=dict)
    threads: int | None = None
    source: str = "default (no measured profile)"
    table_q8: dict[str, dict[int, str]] = field(default_factory=dict)
    allow_activation_quant: bool = False

    def allowing_activation_quant(self, allow: bool) -> "KernelChoice":
        return replace(self, allow_activation_quant=allow)

    def kernel_for(self, fmt_label: str, m: Matrix, x: torch.Tensor) -> KernelSpec:
        return get_kernel(self.kernel_name(fmt_label, m.fmt, x.shape[0], x.dtype))

    def kernel_name(self, fmt_label: str, matrix_fmt: str, n: int, dtype: torch.dtype) -> str:
        """The kernel that runs n tokens of a `matrix_fmt` matrix of format `fmt_label`: the
        table's (table_q8's first when activation quantization is allowed), unless it is
        unknown, for another layout, cannot run here or quantizes activations unasked (then the
        default)."""
        allow, bucket = self.allow_activation_quant, bucket_of(n)
        name = self.table_q8.get(fmt_label, {}).get(bucket) if allow else None
        name = name or self.table.get(fmt_label, {}).get(bucket)
        spec = _KERNELS.get(name) if name else None
        if spec is None or spec.fmt != matrix_fmt or not spec.available() \
                or (spec.quantizes_activations and not allow):
            name = default_kernel(matrix_fmt, n, dtype, allow)
        return name


# The package's compiled kernel per Matrix.fmt (kernels/native.py registers them when it loads)
NATIVE_KERNELS = {"float": "native-float", "int8": "native-int8", "int8-group": "native-int8g",
                  "int4-blocks": "native-int4"}
# ... and the ones that quantize the activations to int8 blocks (integer dot products)
NATIVE_Q8_KERNELS = {"int8": "native-q8-int8", "int8-group": "native-q8-int8g",
                     "int4-blocks": "native-q8-int4"}
# ... and the native dequantization into the activations' dtype + oneDNN (many tokens)
NATIVE_DEQUANT_KERNELS = {"int8": "native-dequant-int8", "int8-group": "native-dequant-int8g",
                          "int4-blocks": "native-dequant-int4"}
# ... and the many-token kernels: panels of rows widened once per call to fp32, register tiles
# over the tokens (exact: the weight-only kernels' numbers) ...
NATIVE_TILE_KERNELS = {"float": "native-tile-float", "int8": "native-tile-int8",
                       "int8-group": "native-tile-int8g", "int4-blocks": "native-tile-int4"}
# ... or to bf16 panels multiplied by bf16 activations with vdpbf16ps (AVX512-BF16 CPUs; integer
# weights rounded to bf16 as the dequantizing kernels and a bf16 reference round them). Which of
# the two is faster depends on the CPU (vdpbf16ps runs at half the fp32 FMA rate on some)
NATIVE_BF16_TILE_KERNELS = {"float": "native-bf16tile-float", "int8": "native-bf16tile-int8",
                            "int8-group": "native-bf16tile-int8g",
                            "int4-blocks": "native-bf16tile-int4"}
# ... or the same bf16 panels multiplied in AMX tile registers (tdpbf16ps: 16 tokens x 32
# inputs x 16 rows per instruction; CPUs with AMX-BF16 whose OS grants the tile state)
NATIVE_AMX_TILE_KERNELS = {"float": "native-amxtile-float", "int8": "native-amxtile-int8",
                           "int8-group": "native-amxtile-int8g",
                           "int4-blocks": "native-amxtile-int4"}
# Kernels whose cost per token falls as tokens grow (the weights converted once per call, then a
# GEMM): what runs past the largest measured bucket (measure/kernel_choice.py)
GEMM_KERNELS = frozenset({"onednn", "int8-dequant", "int8g-dequant", "int4b-dequant",
                          "mxfp4-dequant", *NATIVE_DEQUANT_KERNELS.values(),
                          *NATIVE_TILE_KERNELS.values(), *NATIVE_BF16_TILE_KERNELS.values(),
                          *NATIVE_AMX_TILE_KERNELS.values()})
NATIVE_MAX_TOKENS = 64  # the default hands more tokens to oneDNN (compute-bound GEMMs)
TORCH_DEFAULT = {"int8": ("int8pack", "int8-dequant"), "int8-group": ("int8g-dequant",) * 2,
                 "int4": ("int4pack", "int4pack"), "int4-blocks": ("int4b-dequant",) * 2,
                 "mxfp4": ("mxfp4-dequant",) * 2}


def default_kernel(matrix_fmt: str, n: int, dtype: torch.dtype,
                   activation_quant: bool = False) -> str:
    """Without a measurement: the native kernel up to NATIVE_MAX_TOKENS tokens where it runs
    (weight-only, reads at bandwidth; with activation_quant, the one that quantizes the
    activations where the format has one); else ATen for one bf16 token (oneDNN's bf16 GEMV was
    slower on every machine we measured; DESIGN.md §6) and oneDNN for more; torch's packed
    kernels for few int8 / int4 tokens, dequantize + oneDNN for many (prefill: what stock
    transformers' speed comes from; the native dequantization where it runs, torch's is
    several times slower)."""
    native = NATIVE_KERNELS.get(matrix_fmt)
    if activation_quant and matrix_fmt in NATIVE_Q8_KERNELS:
        native = NATIVE_Q8_KERNELS[matrix_fmt]
    if n <= NATIVE_MAX_TOKENS and native in _KERNELS and _KERNELS[native].available():
        return native
    if matrix_fmt == "float":
        return "aten" if n == 1 and dtype == torch.bfloat16 else "onednn"
    dequant = NATIVE_DEQUANT_KERNELS.get(matrix_fmt)
    if n > NATIVE_MAX_TOKENS and dequant in _KERNELS and _KERNELS[dequant].available():
        return dequant
    few, many = TORCH_DEFAULT[matrix_fmt]
    return few if n <= NATIVE_MAX_TOKENS else many


DEFAULT_CHOICE = KernelChoice()


def linear(x: torch.Tensor, m: Matrix, choice: KernelChoice, fmt_label: str) -> torch.Tensor:
    """y [n, N] = x [n, K] @ W^T with the chosen kernel (CPU) or a dequantize + F.linear
    (any other device: the fast device's own GEMM)."""
    if x.device.type != "cpu":
        return F.linear(x, dequantize_matrix(m, x.dtype))
    return choice.kernel_for(fmt_label, m, x).fn(x, m)


def dequantize_matrix(m: Matrix, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] weights in `dtype` from a float or int8 matrix (int4 on the fast device is
    dequantized by the store from its nibble copy before it gets here)."""
    if m.fmt == "float":
        return m.data
    if m.fmt == "int8":
        return m.data.to(dtype) * m.scale.to(dtype).unsqueeze(-1)
    if m.fmt == "int8-group":
        return dequantize_int8_grouped(m.data, m.scale, dtype)
    if m.fmt == "int4-blocks":  # [N, K/2] nibbles, scale [N, K/G]
        q = unpack_nibbles(m.data)  # [N, K]
        n, k = q.shape
        w = q.float().view(n, m.scale.shape[1], -1) * m.scale.to(dtype).float().unsqueeze(-1)
        return w.view(n, k).to(dtype)
    if m.fmt == "int4-nibbles":  # the fast device's copy: [N, K/2] nibbles, scale [K/G, N, 2]
        q = unpack_nibbles(m.data)  # [N, K]
        n, k = q.shape
        s = m.scale[..., 0].t().to(dtype).unsqueeze(-1)  # [N, K/G, 1]
        z = m.scale[..., 1].t().to(dtype).unsqueeze(-1)  # zero points (GGUF Q4_1 / Q4_K)
        return (q.to(dtype).view(n, s.shape[1], -1) * s + z).view(n, k)
    if m.fmt == "mxfp4":  # the same bytes on the fast device: decoded there into its dtype
        from ..formats.mxfp4 import dequantize

        return dequantize(m.data, m.scale, dtype)
    raise ValueError(f"matrix format {m.fmt!r} cannot run off the CPU; the fast device gets "
                     "the int4 nibble copy ('int4-nibbles')")
