"""One MoE layer's CPU experts at one token, native kernels vs torch's, against the read probe.

A layer of `experts` experts with `shape`'s sizes (random weights, stored as the engine stores
them: storage.convert_weight), top_k of them routed one token; each round measures, in
interleaved order: the read probe (a torch sum over `probe_bytes`), the native layer call
(kernels/native_layer.py: gate_up, SiLU gate, down, routing weights, one call) and torch's
per-expert path (torch's kernel per matrix: ATen GEMV for bf16, `_weight_int8pack_mm`,
`_weight_int4pack_mm_for_cpu`, dequantize + F.linear for group-wise int8). The experts run
rotate so every call reads its weights from DRAM. Reported per format: the medians, the bytes
read, and per round native / probe and torch / probe (fractions of the read bandwidth), and
torch ms / native ms. With activation_quant (int8 / int4 formats), the native layer call that
rounds activations to int8 per 32 inputs runs in each round too, and its output's error
against the exact native call is reported (relative RMS). Nothing is printed inside timed
regions.

Shape legend: H = hidden size, I = expert intermediate size, E = experts, k = top_k.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..runtime.formats.matrix import Matrix
from ..runtime.formats.quant import ExpertFormat, resolve_format
from ..runtime.formats.storage import SCALE_SUFFIX, convert_weight, tensor_bytes
from ..runtime.kernels.native import library
from ..runtime.kernels.native_layer import run_layer
from ..runtime.kernels.registry import NATIVE_Q8_KERNELS, get_kernel

PROBE_BYTES = 512 << 20
TORCH_KERNEL = {"float": "aten", "int8": "int8pack", "int8-group": "int8g-dequant",
                "int4": "int4pack"}  # what the engine runs at one token without native kernels


@dataclass(frozen=True)
class LayerExpertsResult:
    fmt: str
    bytes_per_call: int  # weights + scales of the top_k experts read by one call
    probe_gbps: list[float]
    native_ms: list[float]
    torch_ms: list[float]
    torch_kernel: str
    isa: str
    native_of_probe: float = 0.0  # median over rounds of (bytes / native time) / probe
    torch_of_probe: float = 0.0
    native_speedup: float = 0.0  # median of torch ms / native ms
    q8_ms: list[float] = field(default_factory=list)  # activation-quantizing layer call
    q8_of_probe: float | None = None
    q8_rel_rms_error: float | None = None  # its output vs the exact native call's
    extra: dict = field(default_factory=dict)


def _stored(w: torch.Tensor, fmt: ExpertFormat, act: torch.dtype) -> Matrix:
    parts = convert_weight(w[None], fmt, False, act, on_gpu=False)
    return Matrix(fmt.matrix_fmt, parts[""][0], parts.get(SCALE_SUFFIX, [None])[0],
                  fmt.group_size)


def _bytes(m: Matrix) -> int:
    return tensor_bytes(m.data) + (tensor_bytes(m.scale) if m.scale is not None else 0)


def _torch_expert(x: torch.Tensor, gate_up: Matrix, down: Matrix) -> torch.Tensor:
    fn = get_kernel(TORCH_KERNEL[gate_up.fmt]).fn
    h = fn(x, gate_up)  # [1, 2I]
    g, u = h.chunk(2, dim=-1)
    return fn(F.silu(g) * u, down)  # [1, H]


def measure_layer_experts(label: str, hidden: int = 4096, inter: int = 14336, experts: int = 4,
                          top_k: int = 2, rounds: int = 5, act: torch.dtype = torch.bfloat16,
                          probe_bytes: int = PROBE_BYTES, progress: bool = True,
                          activation_quant: bool = False) -> LayerExpertsResult:
    """Interleaved rounds of probe / native layer call / torch per-expert path (module doc)."""
    fmt = resolve_format(label, None, (hidden, inter), (2 * inter, hidden))
    native_fmt = ExpertFormat(fmt.name, fmt.group_size, int4_layout="nibbles") if fmt.name == "int4" else fmt
    gen = torch.Generator().manual_seed(0)
    native, torch_side = [], []
    for _ in tqdm(range(experts), desc=f"{label}: quantizing experts", disable=not progress):
        w1 = (torch.randn(2 * inter, hidden, generator=gen) * hidden ** -0.5).to(act)
        w2 = (torch.randn(hidden, inter, generator=gen) * inter ** -0.5).to(act)
        native.append((_stored(w1, native_fmt, act), _stored(w2, native_fmt, act)))
        torch_side.append(native[-1] if native_fmt is fmt else
                          (_stored(w1, fmt, act), _stored(w2, fmt, act)))
        del w1, w2
    x = torch.randn(1, hidden).to(act)  # [1, H]
    xs = x.expand(top_k, hidden).contiguous()  # [k, H] the token once per expert
    route = torch.full((top_k,), 1.0 / top_k)
    nbytes = top_k * (_bytes(native[0][0]) + _bytes(native[0][1]))
    probe_src = torch.rand(probe_bytes // 4)
    probe, t_native, t_torch, t_q8 = [], [], [], []
    groups = [list(range(i, i + top_k)) for i in range(0, experts - top_k + 1, top_k)]
    quant = activation_quant and native[0][0].fmt in NATIVE_Q8_KERNELS
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0: warm-up, discarded
            group = groups[r % len(groups)]
            t0 = time.perf_counter()
            probe_src.sum()
            t1 = time.perf_counter()
            run_layer([native[e] for e in group], [1] * top_k, xs, route, act)
            t2 = time.perf_counter()
            group = groups[(r + 1) % len(groups)]  # other experts: nothing left in cache
            for e in group:
                _torch_expert(x, *torch_side[e])
            t3 = time.perf_counter()
            if quant:
                group = groups[r % len(groups)]
                run_layer([native[e] for e in group], [1] * top_k, xs, route, act,
                          quantize_activations=True)
            t4 = time.perf_counter()
            if r:
                probe.append(probe_bytes / (t1 - t0) / 1e9)
                t_native.append((t2 - t1) * 1e3)
                t_torch.append((t3 - t2) * 1e3)
                t_q8.append((t4 - t3) * 1e3)
        q8_err = None
        if quant:
            exact = run_layer(native[:top_k], [1] * top_k, xs, route, torch.float32).double()
            approx = run_layer(native[:top_k], [1] * top_k, xs, route, torch.float32,
                               quantize_activations=True).double()
            q8_err = ((approx - exact).norm() / exact.norm()).item()
    gbps = lambda ms: nbytes / ms / 1e6  # noqa: E731
    return LayerExpertsResult(
        label if fmt.name != "int4" else fmt.label(), nbytes, probe, t_native, t_torch,
        TORCH_KERNEL[torch_side[0][0].fmt], library().best_isa(),
        statistics.median(gbps(n) / p for n, p in zip(t_native, probe)),
        statistics.median(gbps(t) / p for t, p in zip(t_torch, probe)),
        statistics.median(t / n for t, n in zip(t_torch, t_native)),
        t_q8 if quant else [],
        statistics.median(gbps(q) / p for q, p in zip(t_q8, probe)) if quant else None,
        q8_err)


def table(results: Sequence[LayerExpertsResult]) -> str:
    """Markdown: per format, medians and the fractions of the read probe."""
    rows = ["| format | ISA | native ms | torch kernel | torch ms | probe GB/s | native / probe |"
            " torch / probe | torch ms / native ms | int8-activation ms | its / probe | "
            "its rel. RMS error |", "|" + "---|" * 12]
    for r in results:
        q8 = (f"{statistics.median(r.q8_ms):.1f} | {r.q8_of_probe:.2f} | "
              f"{r.q8_rel_rms_error:.2e}") if r.q8_ms else "- | - | -"
        rows.append(f"| {r.fmt} | {r.isa} | {statistics.median(r.native_ms):.1f} | "
                    f"{r.torch_kernel} | {statistics.median(r.torch_ms):.1f} | "
                    f"{statistics.median(r.probe_gbps):.1f} | {r.native_of_probe:.2f} | "
                    f"{r.torch_of_probe:.2f} | {r.native_speedup:.2f} | {q8} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """python -m fiddler_nb.benchmarks.layer_experts [formats...]"""
    import sys

    labels = list(argv if argv is not None else sys.argv[1:]) or ["bf16", "int8", "int8-g32",
                                                                  "int4"]
    torch.set_num_threads(torch.get_num_threads())
    results = [measure_layer_experts(lab) for lab in labels]
    print(table(results))


if __name__ == "__main__":
    main()
