"""The package's own compiled CPU kernels (csrc/, built by native_build.py), registered beside
torch's: weight-only y = x @ W^T with fp32 accumulation for bf16 / fp16 / fp32 weights, int8
per output channel, group-wise int8 (fp16 scales, GGUF Q8_0's layout) and int4 in the plain
nibble layout ('int4-blocks'); and, for the integer formats, kernels that quantize the
activations to int8 blocks first ('native-q8-*', registered as quantizing activations: they run
only where the caller allows it); and for many tokens the tile kernels ('native-tile-*': fp32
outer products, exact; 'native-bf16tile-*': bf16 panels x bf16 activations on AVX512-BF16), which
widen each weight once per call. The SIMD variant (AVX-512 with or without VNNI, AVX2+FMA+F16C,
or the portable auto-vectorised path) is picked at run time from the CPU's features; rows are split across the
library's own pthreads (torch.get_num_threads() of them), and the ctypes call releases the GIL.

Exactness: every product is an fp32 product of the exact weight (q * scale is exact in fp32 for
8-bit q and an 8/11-bit-mantissa scale) and the activation, summed in fp32, so the result differs
from a dequantize + F.linear only by the order of the fp32 additions (and, in bf16 models, by the
one bf16 rounding of the dequantized weight that the reference applies and we do not).

Shape legend: n = tokens, N = output channels, K = input channels, G = group size.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import torch

from ..formats.matrix import Matrix
from .native_build import ISA_NAMES, NativeLibrary, load_library
from .registry import (NATIVE_AMX_TILE_KERNELS, NATIVE_BF16_TILE_KERNELS, NATIVE_DEQUANT_KERNELS,
                       NATIVE_KERNELS, NATIVE_Q8_KERNELS, NATIVE_TILE_KERNELS, register)

F32, BF16, F16, I8ROW, I8GRP, I4GRP = range(6)  # fnb_kernels.h weight kinds
TILE_NONE, TILE_F32, TILE_BF16, TILE_AMX = range(4)  # fnb_kernels.h FNB_TILE_*
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
FLOAT_KINDS = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16}


class NativeKernelError(RuntimeError):
    """The native kernel refused its arguments (a bug: the wrapper checks what it passes)."""


def library() -> NativeLibrary:
    """The native kernels under the current settings (FIDDLER_NB_NATIVE, FIDDLER_NB_CC)."""
    return load_library()


def available() -> bool:
    return library().lib is not None


def unavailable_reason() -> str:
    """'' when the native kernels run; else one line saying why not."""
    return library().error


@lru_cache(maxsize=None)
def _isa_code(lib_path: str, forced: str | None) -> int:
    lib = library()
    if forced:
        if forced not in ISA_NAMES or not lib.isa_supported(forced):
            raise NativeKernelError(f"FIDDLER_NB_ISA={forced!r} does not run here; this CPU "
                                    f"runs {[i for i in ISA_NAMES if lib.isa_supported(i)]}")
        return ISA_NAMES.index(forced)
    return ISA_NAMES.index(lib.best_isa())


def current_isa() -> int:
    """The variant code the kernels run: FIDDLER_NB_ISA, or the best this CPU runs."""
    return _isa_code(library().path, os.environ.get("FIDDLER_NB_ISA"))


def native_linear(x: torch.Tensor, m: Matrix, isa: str | None = None,
                  quantize_activations: bool = False, tile: int = TILE_NONE) -> torch.Tensor:
    """y [n, N] = x [n, K] @ W^T for a stored matrix, in x's dtype. isa: a variant name
    (ISA_NAMES); None: FIDDLER_NB_ISA or the best this CPU runs. quantize_activations: x rounded
    per 32-block to int8 first and integer dot products (int8 / int4 matrices whose K is a
    multiple of 32; others run weight-only). tile: TILE_F32 / TILE_BF16, the many-token kernels
    (panels of rows widened once, register tiles over the tokens; TILE_BF16: bf16 activations on
    AVX512-BF16 meet the weights rounded to bf16, as the dequantizing kernels round them)."""
    lib = library()
    out_dtype = x.dtype
    if x.dtype not in DTYPE_CODES:
        x = x.float()
    if x.dim() != 2 or x.stride(-1) != 1:
        x = x.reshape(-1, x.shape[-1]).contiguous()
    kind, scale, sdtype, group = _kind_of(m)
    n_out = m.data.shape[0]
    k_in = x.shape[1]
    w = m.data if m.data.is_contiguous() else m.data.contiguous()
    y = torch.empty((x.shape[0], n_out), dtype=x.dtype)  # [n, N]
    code = ISA_NAMES.index(isa) if isa else current_isa()
    entry = lib.lib.fnb_linear
    if quantize_activations and lib.lib.fnb_q8_supported(kind, k_in):
        entry = lib.lib.fnb_linear_q8
    extra = ()
    if tile and entry is lib.lib.fnb_linear:
        entry, extra = lib.lib.fnb_linear_tile, (tile,)
    rc = entry(code, torch.get_num_threads(), kind, w.data_ptr(),
               scale.data_ptr() if scale is not None else None, sdtype, group,
               n_out, k_in, x.data_ptr(), DTYPE_CODES[x.dtype], x.stride(0),
               x.shape[0], y.data_ptr(), DTYPE_CODES[y.dtype], n_out, *extra)
    if rc != 0:
        raise NativeKernelError(f"fnb_linear refused {m.fmt} {tuple(m.data.shape)} with x "
                                f"{tuple(x.shape)} on ISA {isa or lib.best_isa()} (code {rc})")
    return y if y.dtype == out_dtype else y.to(out_dtype)


def _kind_of(m: Matrix) -> tuple[int, torch.Tensor | None, int, int]:
    """(weight kind, contiguous scale or None, scale dtype code, group) of a stored matrix."""
    if m.fmt == "float":
        return FLOAT_KINDS[m.data.dtype], None, 0, 0
    scale = m.scale.contiguous()
    if scale.dtype not in DTYPE_CODES:
        scale = scale.float()
    kind = {"int8": I8ROW, "int8-group": I8GRP, "int4-blocks": I4GRP}[m.fmt]
    return kind, scale, DTYPE_CODES[scale.dtype], int(m.group_size or 0)



def native_dequantize(m: Matrix, dtype: torch.dtype, out: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """w [N, K] in `dtype` of an int8 / int8-group / int4-blocks matrix: q * scale in fp32,
    rounded once to dtype (the same numbers as registry.dequantize_matrix), on the library's
    threads; into `out` ([N, K], contiguous) when given."""
    lib = library()
    kind, scale, sdtype, group = _kind_of(m)
    n_out = m.data.shape[0]
    k_in = m.data.shape[1] * (2 if kind == I4GRP else 1)
    out_dtype = dtype if dtype in DTYPE_CODES else torch.float32
    w = m.data if m.data.is_contiguous() else m.data.contiguous()
    y = out if out is not None and out.dtype == out_dtype else \
        torch.empty((n_out, k_in), dtype=out_dtype)  # [N, K]
    rc = lib.lib.fnb_dequantize(current_isa(),
                                torch.get_num_threads(), kind, w.data_ptr(), scale.data_ptr(),
                                sdtype, group, n_out, k_in, y.data_ptr(), DTYPE_CODES[out_dtype])
    if rc != 0:
        raise NativeKernelError(f"fnb_dequantize refused {m.fmt} {tuple(m.data.shape)} "
                                f"(code {rc})")
    return y if out_dtype == dtype else y.to(dtype)


DEQUANT_CHUNK_BYTES = 8 << 20  # rows dequantized per GEMM: stays in a 32 MiB+ last-level cache
_chunk = threading.local()  # one reused buffer per thread (no page faults per call)


def _chunk_buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    buf = getattr(_chunk, dtype.__repr__(), None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype)
        setattr(_chunk, dtype.__repr__(), buf)
    return buf[:numel]


def native_dequant_linear(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """y [n, N] = x @ W^T for many tokens: W dequantized by the native kernel into the
    activations' dtype (the reference's weights, exactly) a chunk of rows at a time into one
    reused buffer, each chunk multiplied by oneDNN's GEMM while it is still in cache."""
    dtype = x.dtype if x.dtype in DTYPE_CODES else torch.float32
    x = x.to(dtype)
    n_out = m.data.shape[0]
    k_in = x.shape[-1]
    rows = max(1, DEQUANT_CHUNK_BYTES // (k_in * x.element_size()))
    if rows >= n_out:
        return torch.nn.functional.linear(x, native_dequantize(m, dtype))
    rows = max(64, rows // 64 * 64)
    y_t = torch.empty((n_out, x.shape[0]), dtype=dtype)  # [N, n]
    buf = _chunk_buffer(rows * k_in, dtype)
    for r0 in range(0, n_out, rows):
        r1 = min(n_out, r0 + rows)
        part = Matrix(m.fmt, m.data[r0:r1], m.scale[r0:r1], m.group_size)
        w = native_dequantize(part, dtype, buf[:(r1 - r0) * k_in].view(r1 - r0, k_in))
        torch.mm(w, x.t(), out=y_t[r0:r1])  # [rows, n]
    return y_t.t()


def native_linear_q8(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """native_linear with the activations quantized to int8 blocks (not exact: the error of
    rounding x to 8 bits per 32 inputs, measured in the CPU suite)."""
    return native_linear(x, m, quantize_activations=True)


for _fmt, _name in NATIVE_KERNELS.items():
    register(_name, _fmt, available)(native_linear)
for _fmt, _name in NATIVE_Q8_KERNELS.items():
    register(_name, _fmt, available, quantizes_activations=True)(native_linear_q8)
def native_tile_linear(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """native_linear for many tokens, fp32 panels (exact)."""
    return native_linear(x, m, tile=TILE_F32)


def native_bf16_tile_linear(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """native_linear for many tokens, bf16 panels x bf16 activations (vdpbf16ps)."""
    return native_linear(x, m, tile=TILE_BF16)


def native_amx_tile_linear(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """native_linear for many tokens, bf16 panels x bf16 activations in AMX tiles."""
    return native_linear(x, m, tile=TILE_AMX)


def amx_available() -> bool:
    """Whether this CPU runs the AMX tile kernel (AMX-BF16, tile state granted by the OS, the
    avx512vnni variant built with it; FIDDLER_NB_AMX=0 switches it off)."""
    lib = library()
    return lib.lib is not None and bool(lib.lib.fnb_bf16_dot(current_isa(), BF16, TILE_AMX))


def bf16_dot_available() -> bool:
    """Whether this CPU runs the bf16 panels (AVX512-BF16, the avx512vnni variant)."""
    lib = library()
    return lib.lib is not None and bool(lib.lib.fnb_bf16_dot(current_isa(), BF16, TILE_BF16))


for _fmt, _name in NATIVE_DEQUANT_KERNELS.items():
    register(_name, _fmt, available)(native_dequant_linear)
for _fmt, _name in NATIVE_TILE_KERNELS.items():
    register(_name, _fmt, available)(native_tile_linear)
for _fmt, _name in NATIVE_BF16_TILE_KERNELS.items():
    register(_name, _fmt, bf16_dot_available)(native_bf16_tile_linear)
for _fmt, _name in NATIVE_AMX_TILE_KERNELS.items():
    register(_name, _fmt, amx_available)(native_amx_tile_linear)


def cpu_layout(fmt):
    """`fmt` with the int4 layout the CPU kernels here read: plain nibbles when the native
    kernels run (one copy for them and the fast device), else torch's CPU int4 pack."""
    from dataclasses import replace

    if fmt is None or fmt.name != "int4":
        return fmt
    return replace(fmt, int4_layout="nibbles" if available() else "torch")


def kernel_note(layer_blocker: str = "") -> str:
    """'' when the native kernels run (a layer's CPU experts in one call unless
    `layer_blocker` says why not); else the one line an engine shows in its notes."""
    why = unavailable_reason()
    if why:
        return f"CPU kernels: torch's only ({why})"
    if layer_blocker:
        return f"CPU experts run one by one through the native kernels, not in one call per " \
               f"layer ({layer_blocker})"
    return ""
