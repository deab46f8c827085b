"""Latency model and the pure decision: which non-resident experts run on the CPU.

A `LatencyModel` interpolates curves measured on this machine (see `measure/profiler.py`):
`cpu_ms(n)` for one expert on the CPU with n tokens, `gpu_ms(n)` for one expert on the GPU, and
`transfer_ms(bytes)` for copying weights host->device. `assign_layer` then chooses, per
activated non-resident expert, CPU or weight transfer so that the layer's makespan
max(CPU work, GPU work + transfers) is minimal -- CPU and GPU run concurrently, so a sum is the
wrong objective (the reference Fiddler code minimises a sum of hard-coded constants).

Shape legend: A = activated non-resident experts in a layer, P = points on a curve.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from ..errors import OptionError


@runtime_checkable
class LatencySource(Protocol):
    """Anything that makes a LatencyModel for an expert size (a measured `HardwareProfile`)."""

    def latency_model(self, expert_bytes: int | None = None,
                      hidden_bytes: int | None = None) -> "LatencyModel": ...


@dataclass(frozen=True)
class Curve:
    """Monotone piecewise-linear curve through measured (tokens, ms) points.

    Beyond the last point it extrapolates linearly with the slope of the last segment (work
    grows with tokens); below the first it stays at the first value (fixed overheads dominate).
    """

    tokens: tuple[float, ...]  # [P], strictly increasing
    ms: tuple[float, ...]  # [P]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.ms) or not self.tokens:
            raise OptionError("a latency curve needs the same, non-zero number of tokens and ms")
        if any(b <= a for a, b in zip(self.tokens, self.tokens[1:])):
            raise OptionError(f"curve tokens must be strictly increasing, got {self.tokens}")
        # a measured curve can dip from noise; a latency model must not reward more work
        object.__setattr__(self, "ms", tuple(_running_max(self.ms)))

    def __call__(self, n: float) -> float:
        xs, ys = self.tokens, self.ms
        if n <= xs[0] or len(xs) == 1:
            return ys[0] if n <= xs[0] else ys[0] * n / xs[0]
        i = bisect.bisect_left(xs, n)
        if i == len(xs):
            i -= 1  # extrapolate with the last segment's slope
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)


def _running_max(values: Sequence[float]) -> list[float]:
    out, best = [], -math.inf
    for v in values:
        best = max(best, float(v))
        out.append(best)
    return out


@dataclass(frozen=True)
class LatencyModel:
    """Costs of one expert of one shape on this machine, in milliseconds."""

    cpu: Curve  # expert on CPU (weights already in CPU memory)
    gpu: Curve  # expert on the fast device (weights already there)
    h2d_gbps: float  # host->device copy bandwidth for expert weights (pinned)
    activation_ms_per_token: float = 0.0  # moving one token's activations to the CPU and back
    source: str = "default"  # "measured", "preset:<name>" or "default"
    notes: tuple[str, ...] = field(default_factory=tuple)
    concurrent: bool = True  # CPU and fast device work in parallel (False: they share the CPU)

    def cpu_ms(self, n: float) -> float:
        return self.cpu(n)

    def gpu_ms(self, n: float) -> float:
        return self.gpu(n)

    def transfer_ms(self, nbytes: float) -> float:
        if self.h2d_gbps <= 0 or math.isinf(self.h2d_gbps):
            return 0.0
        return nbytes / (self.h2d_gbps * 1e9) * 1e3

    def cpu_path_ms(self, n: float) -> float:
        """Run on the CPU, including moving the tokens' activations there and back."""
        return self.cpu_ms(n) + n * self.activation_ms_per_token

    def transfer_path_ms(self, n: float, expert_bytes: float) -> float:
        """Copy the expert's weights to the fast device, then run it there."""
        return self.transfer_ms(expert_bytes) + self.gpu_ms(n)

    def crossover_tokens(self, expert_bytes: float, max_tokens: int = 1 << 16) -> int | None:
        """Smallest n at which copying the weights beats the CPU (n*), or None if never."""
        lo, hi = 1, max_tokens
        if self.transfer_path_ms(hi, expert_bytes) >= self.cpu_path_ms(hi):
            return None
        while lo < hi:  # both sides are monotone in n and the CPU side grows faster
            mid = (lo + hi) // 2
            if self.transfer_path_ms(mid, expert_bytes) < self.cpu_path_ms(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo


@dataclass(frozen=True)
class Assignment:
    """Which activated non-resident experts to transfer; the rest run on the CPU."""

    transfer: tuple[bool, ...]  # [A]
    cpu_ms: float  # projected CPU work of the layer
    gpu_ms: float  # projected GPU work incl. transfers (resident experts included)

    @property
    def makespan_ms(self) -> float:
        return max(self.cpu_ms, self.gpu_ms)


def assign_layer(cpu_costs: Sequence[float], transfer_costs: Sequence[float],
                 resident_gpu_ms: float = 0.0, max_frontier: int = 256) -> Assignment:
    """Minimise max(sum of CPU costs, resident GPU work + sum of transfer costs).

    Exact by a Pareto-frontier dynamic programme over experts grouped by identical costs
    (decode steps have a handful of distinct token counts, so the frontier stays tiny). Only if
    the frontier exceeds `max_frontier` points is it thinned, keeping the extremes; the result
    is then within one thinning step of optimal. Cost: O(A * frontier).
    """
    if len(cpu_costs) != len(transfer_costs):
        raise OptionError("cpu_costs and transfer_costs must have one entry per expert")
    groups: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(zip(cpu_costs, transfer_costs)):
        groups.setdefault(key, []).append(i)
    # frontier points: (cpu_ms, gpu_ms, choices) with choices = transfers taken per group
    frontier: list[tuple[float, float, tuple[int, ...]]] = [(0.0, resident_gpu_ms, ())]
    for (c, t), members in groups.items():
        grown = [(cpu + (len(members) - k) * c, gpu + k * t, picks + (k,))
                 for cpu, gpu, picks in frontier for k in range(len(members) + 1)]
        frontier = _pareto(grown, max_frontier)
    cpu, gpu, picks = min(frontier, key=lambda p: (max(p[0], p[1]), p[0] + p[1]))
    transfer = [False] * len(cpu_costs)
    for k, members in zip(picks, groups.values()):
        for i in members[:k]:
            transfer[i] = True
    return Assignment(tuple(transfer), cpu, gpu)


def _pareto(points: list[tuple[float, float, tuple[int, ...]]], limit: int):
    """Points not dominated in (cpu, gpu); thinned evenly to `limit` keeping both ends."""
    points.sort(key=lambda p: (p[0], p[1]))
    kept, best_gpu = [], math.inf
    for p in points:
        if p[1] < best_gpu:
            kept.append(p)
            best_gpu = p[1]
    if len(kept) > limit:
        step = (len(kept) - 1) / (limit - 1)
        kept = [kept[round(i * step)] for i in range(limit)]
    return kept


def brute_force_assign(cpu_costs: Sequence[float], transfer_costs: Sequence[float],
                       resident_gpu_ms: float = 0.0) -> float:
    """Optimal makespan by enumerating every subset (for tests; exponential)."""
    best = math.inf
    n = len(cpu_costs)
    for mask in range(1 << n):
        cpu = sum(c for i, c in enumerate(cpu_costs) if not mask >> i & 1)
        gpu = resident_gpu_ms + sum(t for i, t in enumerate(transfer_costs) if mask >> i & 1)
        best = min(best, max(cpu, gpu))
    return best


# Documented default until a profile is measured or loaded (issue: profiler). Figures: a CPU
# streaming expert weights at 20 GB/s (DESIGN.md §1, 2-core dev machine) with compute growing
# ~1.5% per token, a GPU at 1 TB/s, and PCIe 4.0 x16 at ~25 GB/s effective for pinned copies.
DEFAULT_CPU_GBPS = 20.0
DEFAULT_GPU_GBPS = 1000.0
DEFAULT_H2D_GBPS = 25.0
DEFAULT_CPU_PER_TOKEN_GROWTH = 0.015


def default_latency_model(expert_bytes: int, hidden_bytes: int = 0, max_tokens: int = 4096,
                          device_type: str = "cuda") -> LatencyModel:
    """A documented, unmeasured model for one expert of `expert_bytes` bytes.

    With `device_type="cpu"` the "fast device" is the CPU itself: running a transferred expert
    costs a memcpy plus the same CPU compute, and nothing overlaps, so `auto` keeps experts on
    the CPU path (a transfer there only adds work).
    """
    base_cpu = expert_bytes / (DEFAULT_CPU_GBPS * 1e9) * 1e3
    base_gpu = expert_bytes / (DEFAULT_GPU_GBPS * 1e9) * 1e3
    points = (1.0, float(max_tokens))
    cpu = Curve(points, (base_cpu, base_cpu * (1 + DEFAULT_CPU_PER_TOKEN_GROWTH * max_tokens)))
    if device_type == "cpu":
        return LatencyModel(cpu, cpu, DEFAULT_CPU_GBPS, 0.0, source="default",
                            notes=("unmeasured default, CPU-only: transfers are memcpy + the "
                                   "same CPU compute",), concurrent=False)
    gpu = Curve(points, (base_gpu, base_gpu * 2))
    per_token = 2 * hidden_bytes / (DEFAULT_H2D_GBPS * 1e9) * 1e3
    return LatencyModel(cpu, gpu, DEFAULT_H2D_GBPS, per_token, source="default",
                        notes=("unmeasured default: CPU 20 GB/s, GPU 1 TB/s, PCIe 25 GB/s",))
