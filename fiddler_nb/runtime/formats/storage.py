"""How one experts module stores its weights in a format: tensor names, per-expert views, and
the conversion of float experts into the format (per expert, so the float copy of at most one
expert exists next to the result).

A quantized matrix `name` becomes: `name` (int8 [E, N, K] or torch's CPU int4 pack
[E, N, K/2]), `name_fnb_scale` (int8: [E, N]; group-wise int8: fp16 [E, N, K/G]; int4:
[E, K/G, N, 2]) and, when the fast device is
a GPU, `name_fnb_nibbles` (int4 [E, N, K/2], a layout the GPU can unpack). int4 in the "nibbles"
layout (ExpertFormat.int4_layout, chosen when the native kernels run) stores those nibbles as
`name` itself with scales [E, N, K/G]: one copy serves the CPU kernels and the fast device. Quantized matrices
are stored [N, K] even for transposed checkpoints (gpt-oss). Biases keep the model's dtype.

Shape legend: E = experts, N = output channels, K = input channels, G = int4 group size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.adapters import ExpertLayout
from .matrix import Matrix
from .quant import (ExpertFormat, int4_scales_and_zeros, pack_int4_cpu, pack_nibbles,
                    quantize_int4, quantize_int8, quantize_int8_grouped)

SCALE_SUFFIX = "_fnb_scale"
NIBBLES_SUFFIX = "_fnb_nibbles"


@dataclass(frozen=True)
class ExpertStorage:
    """The stored tensors of a layout in a format. on_gpu: the fast device is a GPU."""

    layout: ExpertLayout
    fmt: ExpertFormat
    on_gpu: bool = False

    @property
    def matrix_names(self) -> tuple[str, str]:
        return (self.layout.first_name, "down_proj")

    @property
    def bias_names(self) -> tuple[str, ...]:
        return self.layout.param_names[2:]

    def cpu_names(self) -> tuple[str, ...]:
        """What the CPU kernels read, in order: per matrix (data[, scale]), then biases."""
        if not self.fmt.is_quantized:
            return self.layout.param_names
        return tuple(n + s for n in self.matrix_names for s in ("", SCALE_SUFFIX)) + \
            self.bias_names

    @property
    def torch_int4_on_gpu(self) -> bool:
        """int4 in torch's CPU pack with a GPU: a second (nibble) copy for the fast device."""
        return self.fmt.matrix_fmt == "int4" and self.on_gpu

    def device_names(self) -> tuple[str, ...]:
        """What is copied to the fast device (resident rows, scratch slots)."""
        if self.torch_int4_on_gpu:
            return tuple(n + s for n in self.matrix_names for s in (NIBBLES_SUFFIX, SCALE_SUFFIX)) \
                + self.bias_names
        return self.cpu_names()

    def host_names(self) -> tuple[str, ...]:
        """Every expert tensor in host memory."""
        extra = tuple(n + NIBBLES_SUFFIX for n in self.matrix_names) \
            if self.torch_int4_on_gpu else ()
        return self.cpu_names() + extra

    def matrices(self, weights: tuple[torch.Tensor, ...], on_device: bool
                 ) -> tuple[Matrix, Matrix, tuple[torch.Tensor, ...]]:
        """(first, down, biases) of one expert from tensors in cpu_names / device_names order."""
        if not self.fmt.is_quantized:
            return Matrix("float", weights[0]), Matrix("float", weights[1]), tuple(weights[2:])
        fmt = self.fmt.matrix_fmt
        if fmt == "int4" and on_device and self.on_gpu:
            fmt = "int4-nibbles"
        first = Matrix(fmt, weights[0], weights[1], self.fmt.group_size)
        down = Matrix(fmt, weights[2], weights[3], self.fmt.group_size)
        return first, down, tuple(weights[4:])

    @property
    def is_transposed(self) -> bool:
        """Float weights kept in the checkpoint's transposed layout ([E, K, N])."""
        return self.layout.is_transposed and not self.fmt.is_quantized


def convert_weight(w: torch.Tensor, fmt: ExpertFormat, transposed: bool,
                   act_dtype: torch.dtype, on_gpu: bool) -> dict[str, torch.Tensor]:
    """One fused matrix w [E, N, K] (or [E, K, N] if transposed) -> {suffix: tensor} in `fmt`,
    converting one expert at a time."""
    if not fmt.is_quantized:
        return {"": w.to(fmt.float_dtype)}
    experts = w.shape[0]
    out: dict[str, list[torch.Tensor]] = {"": [], SCALE_SUFFIX: []}
    if fmt.matrix_fmt == "int4" and on_gpu:
        out[NIBBLES_SUFFIX] = []
    for e in range(experts):
        we = w[e].t() if transposed else w[e]  # [N, K]
        if fmt.matrix_fmt == "int8-group":
            q, s = quantize_int8_grouped(we, fmt.group_size)
            out[""].append(q)
            out[SCALE_SUFFIX].append(s)  # fp16 whatever the activations: kept exactly
        elif fmt.name == "int8":
            q, s = quantize_int8(we)
            out[""].append(q)
            out[SCALE_SUFFIX].append(s.to(act_dtype))
        elif fmt.matrix_fmt == "int4-blocks":
            q, s = quantize_int4(we, fmt.group_size)
            out[""].append(pack_nibbles(q))  # [N, K/2], low nibble = even k
            out[SCALE_SUFFIX].append(s.to(act_dtype))  # [N, K/G]
        else:
            q, s = quantize_int4(we, fmt.group_size)
            out[""].append(pack_int4_cpu(q))
            out[SCALE_SUFFIX].append(int4_scales_and_zeros(s, act_dtype))
            if on_gpu:
                out[NIBBLES_SUFFIX].append(pack_nibbles(q))
    return {k: torch.stack(v) for k, v in out.items()}


def convert_module(module: nn.Module, storage: ExpertStorage, act_dtype: torch.dtype) -> None:
    """Replace an experts module's float expert matrices by `storage.fmt` in place, matrix by
    matrix (the float tensor is dropped as soon as its converted copy exists)."""
    for name in storage.matrix_names:
        w = module._parameters.pop(name).data
        converted = convert_weight(w, storage.fmt, storage.layout.is_transposed, act_dtype,
                                   storage.on_gpu)
        del w
        for suffix, tensor in converted.items():
            module._parameters[name + suffix] = nn.Parameter(tensor, requires_grad=False)
    if storage.fmt.is_quantized:
        return
    for name in storage.bias_names:  # a float cast applies to the experts' biases too
        param = module._parameters[name]
        param.data = param.data.to(storage.fmt.float_dtype)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
