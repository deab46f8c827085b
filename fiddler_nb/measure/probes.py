"""Timing probes behind the profiler: one expert on the CPU, CPU read bandwidth, and (with
CUDA) link bandwidth, the GPU expert curve and one expert's copy into a GPU slot.

Every probe follows the measurement discipline (discipline.py): warm-up runs discarded, clocks
read after a synchronise, repeats until the spread is small or the time budget runs out; the
expert curve keeps each point's interval, the bandwidth probes their medians.
The expert math is `experts.run_expert`'s (gate_up [2I, H], SiLU gate, down [H, I]) through the
engine's own `experts._linear`.

Shape legend: n = tokens routed to one expert, H = hidden size, I = expert intermediate size,
C = rotated weight copies (to defeat the CPU's last-level cache).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import math

from ..runtime.engine.experts import _linear
from .discipline import MIN_SAMPLE_S, RepeatPolicy, Spread, repeat, time_ms  # noqa: F401

PROBE_BYTES = 512 << 20  # bandwidth probe buffers: well past any CPU's last-level cache


def _median_ms(fn: Callable[[], Any], warmup: int, repeats: int,
               sync: Callable[[], None] = lambda: None,
               policy: RepeatPolicy | None = None) -> float:
    """Median wall ms of `fn` (discipline.time_ms): exactly `repeats` samples, or `policy`."""
    return time_ms(fn, policy or RepeatPolicy.fixed(repeats, warmup), sync).median


def _cuda_median_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median ms between CUDA events around `fn` on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()

    def sample() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return repeat(sample, RepeatPolicy.fixed(repeats, 0)).spread.median


def expert_forward(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The gated-expert math of `experts.run_expert`, with its kernel: x [n, H] -> [n, H]."""
    h = _linear(x, gate_up)  # [n, 2I]
    gate, up = h.chunk(2, dim=-1)  # [n, I] each
    return _linear(F.silu(gate) * up, down)  # [n, H]


def _expert_weights(hidden: int, inter: int, dtype: torch.dtype, copies: int,
                    device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    scale = hidden ** -0.5  # keeps activations O(1) so no denormals slow the CPU down
    return [((torch.randn(2 * inter, hidden, device=device) * scale).to(dtype),  # [2I, H]
             (torch.randn(hidden, inter, device=device) * scale).to(dtype))  # [H, I]
            for _ in range(copies)]


def measure_cpu_expert(hidden: int, inter: int, dtype: torch.dtype, tokens: Sequence[int],
                       warmup: int = 2, repeats: int = 5, rotate_bytes: int = 0,
                       progress: tqdm | None = None,
                       policy: RepeatPolicy | None = None) -> list[Spread]:
    """CPU ms of one expert per token count (median and interval; `policy`, default exactly
    `repeats` samples); weights rotate over C copies so a small expert is read from DRAM, as it
    would be in a model, not from the last-level cache."""
    policy = policy or RepeatPolicy.fixed(repeats, warmup)
    expert_bytes = 3 * hidden * inter * dtype.itemsize
    copies = max(1, math.ceil(rotate_bytes / expert_bytes))  # C
    weights = _expert_weights(hidden, inter, dtype, copies)
    out = []
    with torch.inference_mode():
        for n in tokens:
            x = torch.randn(n, hidden).to(dtype)  # [n, H]
            turn = iter(range(1 << 62))

            def call():
                w = weights[next(turn) % copies]
                return expert_forward(x, *w)

            out.append(time_ms(call, policy))
            if progress is not None:
                progress.update(1)
    return out


READ_WRITE_PROBES = ("copy_fp32",)  # count written bytes too: reported, not a read figure


def best_read_gbps(probes: dict[str, float]) -> float:
    """The machine's read bandwidth: the best of the read-only probes."""
    reads = [v for k, v in probes.items() if k not in READ_WRITE_PROBES]
    return max(reads or probes.values())


def measure_cpu_bandwidth(nbytes: int = PROBE_BYTES, repeats: int = 5,
                          progress: tqdm | None = None,
                          policy: RepeatPolicy | None = None) -> dict[str, float]:
    """GB/s of several read-heavy probes; take the best as the machine's read bandwidth.

    sum_fp32: bytes read by a reduction. copy_fp32: bytes read + written by a copy.
    matvec_bf16 / matvec_fp32: weight bytes streamed by F.linear with one token (the expert's
    decode access pattern).
    """
    probes: dict[str, float] = {}
    policy = policy or RepeatPolicy.fixed(repeats, 1)

    def ms(fn: Callable[[], Any]) -> float:
        return time_ms(fn, policy).median

    with torch.inference_mode():
        src = torch.rand(nbytes // 4)
        probes["sum_fp32"] = nbytes / ms(src.sum) / 1e6
        dst = torch.empty_like(src)
        probes["copy_fp32"] = 2 * nbytes / ms(lambda: dst.copy_(src)) / 1e6
        del dst
        cols = 4096  # a Mixtral-sized row: long enough for full-width vector loads
        for name, dtype in (("matvec_bf16", torch.bfloat16), ("matvec_fp32", torch.float32)):
            w = src.view(-1, cols).to(dtype)  # [rows, cols]; a no-op view for fp32
            x = torch.randn(1, cols).to(dtype)
            probes[name] = w.numel() * dtype.itemsize / ms(lambda: F.linear(x, w)) / 1e6
            if progress is not None:
                progress.update(1)
    return probes


def _measure_cuda(hidden: int, inter: int, dtype: torch.dtype, tokens: Sequence[int],
                  warmup: int, repeats: int, link_bytes: int, progress: tqdm) -> dict[str, Any]:
    """H2D/D2H pinned and pageable GB/s, GPU expert curve, one-expert copy ms, activation ms."""
    dev = torch.device("cuda", torch.cuda.current_device())
    link: dict[str, float] = {}
    gpu_buf = torch.empty(link_bytes, dtype=torch.uint8, device=dev)
    for kind, host in (("pinned", torch.empty(link_bytes, dtype=torch.uint8).pin_memory()),
                       ("pageable", torch.empty(link_bytes, dtype=torch.uint8))):
        h2d = _cuda_median_ms(lambda: gpu_buf.copy_(host, non_blocking=True), warmup, repeats)
        d2h = _cuda_median_ms(lambda: host.copy_(gpu_buf, non_blocking=True), warmup, repeats)
        link[f"h2d_{kind}"] = link_bytes / h2d / 1e6
        link[f"d2h_{kind}"] = link_bytes / d2h / 1e6
        progress.update(1)
    del gpu_buf
    with torch.inference_mode():
        gate_up, down = _expert_weights(hidden, inter, dtype, 1, device="cuda")[0]
        gpu_ms = []
        for n in tokens:
            x = torch.randn(n, hidden, device=dev).to(dtype)  # [n, H]
            gpu_ms.append(_cuda_median_ms(lambda: expert_forward(x, gate_up, down), warmup, repeats))
            progress.update(1)
        host = [w.cpu().pin_memory() for w in (gate_up, down)]
        slot = [torch.empty_like(w) for w in (gate_up, down)]
        copy_ms = _cuda_median_ms(lambda: [d.copy_(s, non_blocking=True)
                                           for d, s in zip(slot, host)], warmup, repeats)
        big = max(tokens)
        act = {}
        for n in (1, big):  # hidden states to the CPU and the expert's output back
            xg = torch.randn(n, hidden, device=dev).to(dtype)
            xh = torch.empty(n, hidden, dtype=dtype).pin_memory()
            act[n] = _cuda_median_ms(lambda: (xh.copy_(xg, non_blocking=True),
                                              xg.copy_(xh, non_blocking=True)), warmup, repeats)
        progress.update(1)
    slope = max(0.0, (act[big] - act[1]) / max(big - 1, 1))
    return {"link_gbps": link, "gpu_ms": tuple(gpu_ms), "expert_copy_ms": copy_ms,
            "activation_ms_per_token": slope, "activation_fixed_ms": act[1]}


# ---- the entry point ---------------------------------------------------------------------
