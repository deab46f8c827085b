"""All CPU experts of one MoE layer in one native call (csrc/fnb_layer.c): gate_up, SiLU gate,
down and the routing weights for every (token, expert) pair the layer runs on the CPU, the
matrices' rows split across the library's threads in one work list, the GIL released for the
whole call. The per-pair outputs come back weighted; the caller adds them per token (with the
fast device's experts).

It runs the layout most MoE checkpoints have (gated SiLU, no biases, weights [N, K], no
post-expert norm) when the kernel choice picks one native kernel (per-row, int8-activation or
tile) for every expert's token count; anything else (biases, gpt-oss's transposed clamped
SwiGLU, ungated or other activations, post-expert norms, token counts whose kernels differ or
are not native) goes through the per-expert path (`layer_support` says why).

Shape legend: P = pairs run here, H = hidden size, I = expert intermediate size, E = experts.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from ..formats.matrix import Matrix
from ..model.adapters import ExpertLayout
from .native import (DTYPE_CODES, TILE_AMX, TILE_BF16, TILE_F32, TILE_NONE, NativeKernelError,
                     _kind_of, current_isa, library)
from .registry import (NATIVE_AMX_TILE_KERNELS, NATIVE_BF16_TILE_KERNELS, NATIVE_KERNELS,
                       NATIVE_Q8_KERNELS, NATIVE_TILE_KERNELS, KernelChoice)

_SILU_NAMES = ("SiLU", "SiLUActivation")  # torch's and transformers' own


def layer_support(module: nn.Module, layout: ExpertLayout, quantized: bool) -> str:
    """'' when the native layer call can run this experts module; else why not (one line)."""
    from transformers.integrations.moe import _default_apply_gate

    why = []
    if not layout.has_gate:
        why.append("ungated experts")
    elif getattr(type(module), "_apply_gate", None) is not _default_apply_gate:
        why.append(f"{type(module).__name__}'s own gate (e.g. gpt-oss's clamped SwiGLU)")
    elif type(getattr(module, "act_fn", None)).__name__ not in _SILU_NAMES:
        why.append(f"activation {type(getattr(module, 'act_fn', None)).__name__}")
    if layout.has_bias:
        why.append("expert biases")
    if layout.is_transposed and not quantized:
        why.append("transposed float weights")
    if layout.has_post_expert_norm:
        why.append("post-expert norms")
    return ", ".join(why)


def layer_kernel(choice: KernelChoice, fmt_label: str, matrix_fmt: str, counts: list[int],
                 dtype: torch.dtype) -> str | None:
    """The native kernel (weight-only, or quantizing activations) the kernel choice runs
    every one of these token counts with; None when it is not one native kernel for all."""
    if library().lib is None:
        return None
    names = {choice.kernel_name(fmt_label, matrix_fmt, n, dtype) for n in counts}
    if len(names) != 1:
        return None
    name = names.pop()
    return name if name in (NATIVE_KERNELS.get(matrix_fmt), NATIVE_Q8_KERNELS.get(matrix_fmt),
                            NATIVE_TILE_KERNELS.get(matrix_fmt),
                            NATIVE_BF16_TILE_KERNELS.get(matrix_fmt),
                            NATIVE_AMX_TILE_KERNELS.get(matrix_fmt)) else None


def tile_mode(kernel: str) -> int:
    """The fnb_job.tile value a layer-call kernel name runs with."""
    if kernel in NATIVE_TILE_KERNELS.values():
        return TILE_F32
    if kernel in NATIVE_AMX_TILE_KERNELS.values():
        return TILE_AMX
    return TILE_BF16 if kernel in NATIVE_BF16_TILE_KERNELS.values() else TILE_NONE


def run_layer(experts: list[tuple[Matrix, Matrix]], counts: list[int], x: torch.Tensor,
              route: torch.Tensor, out_dtype: torch.dtype, pin: bool = False,
              quantize_activations: bool = False, tile: int = TILE_NONE) -> torch.Tensor:
    """y [P, H] = route[p] * down_e(silu(gate_e(x_p)) * up_e(x_p)) for pairs grouped by expert
    (counts[i] rows of x for experts[i] = (gate_up [2I, H], down [H, I])). quantize_activations:
    x and the SiLU product rounded per 32-block to int8 (the 'native-q8-*' kernels). tile:
    TILE_F32 / TILE_BF16 / TILE_AMX for the many-token kernels (tile_mode of 'native-tile-*' /
    'native-bf16tile-*' / 'native-amxtile-*')."""
    lib = library()
    first, down = experts[0]
    act = first.data.dtype if first.fmt == "float" else x.dtype
    x = x.to(act).contiguous()  # [P, H]
    hidden, inter = x.shape[1], down.data.shape[1] * (2 if down.fmt == "int4-blocks" else 1)
    kind, _, sdtype, group = _kind_of(first)
    q8 = int(quantize_activations and bool(lib.lib.fnb_q8_supported(kind, hidden))
             and bool(lib.lib.fnb_q8_supported(kind, inter)))
    n = len(experts)
    ptrs = [(ctypes.c_void_p * n)() for _ in range(4)]
    keep = []  # contiguous scale copies must outlive the call
    for i, (a, b) in enumerate(experts):
        for slot, m in ((0, a), (2, b)):
            _, scale, _, _ = _kind_of(m)
            keep.append(scale)
            ptrs[slot][i] = m.data.data_ptr()
            ptrs[slot + 1][i] = scale.data_ptr() if scale is not None else None
    c_counts = (ctypes.c_int64 * n)(*counts)
    weights = route.float().contiguous()  # [P]
    y = torch.empty(x.shape, dtype=out_dtype, pin_memory=pin)  # [P, H]
    rc = lib.lib.fnb_moe_experts(
        current_isa(), torch.get_num_threads(), kind,
        sdtype, group, n, *ptrs,
        c_counts, hidden, inter, x.data_ptr(), DTYPE_CODES[x.dtype], x.stride(0),
        weights.data_ptr(), y.data_ptr(), DTYPE_CODES[out_dtype], y.stride(0),
        DTYPE_CODES[act], q8, tile)
    if rc != 0:
        raise NativeKernelError(f"fnb_moe_experts refused {n} {first.fmt} experts "
                                f"({hidden}x{inter}, code {rc})")
    return y
