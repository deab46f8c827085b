"""Timeline of one forward step: when each layer's CPU, GPU and transfer work ran.

Off by default (zero cost); `Engine.trace_decode_step` switches it on for one decode step.
CPU work is timed on the host clock; on CUDA, GPU and copy-stream work is timed with CUDA
events (read after the step, so tracing adds no synchronisation inside it). On a CPU-only
machine every lane runs synchronously on the host and is timed with the host clock.

Lanes are named for the device that ran the work: "cpu", "gpu" and "transfer" (copies). On a
CPU-only machine the resident experts run on the CPU too, so their work is on the "cpu" lane;
each event's `work` says which experts it ran ("host experts", "resident experts", "copy").
`StepTrace.table()` prints the step as a fixed-width table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

LANES = ("cpu", "gpu", "transfer")
WORK = {"cpu": "host experts", "gpu": "resident experts", "transfer": "copy"}  # by engine lane


@dataclass(frozen=True)
class TraceEvent:
    layer: int  # MoE layer index
    lane: str  # one of LANES
    start_ms: float  # from the start of the step
    end_ms: float
    experts: int  # experts run (or copied) in this region
    work: str = ""  # what ran: "host experts", "resident experts" or "copy" (WORK)


@dataclass(frozen=True)
class StepTrace:
    events: tuple[TraceEvent, ...]
    total_ms: float
    device: str
    tokens: int  # tokens in the traced step (batch size for a decode step)

    def rows(self) -> list[tuple[int, str, float, float]]:
        """(layer, lane, start_ms, end_ms) tuples, the input `plots.decode_timeline` takes."""
        return [(e.layer, e.lane, e.start_ms, e.end_ms) for e in self.events]

    def table(self) -> str:
        """One row per (layer, lane) region: start, end and length in ms, experts, what ran."""
        head = [f"one decode step on {self.device} ({self.tokens} token(s)): {self.total_ms:.3f} ms",
                f"{'layer':>5}  {'lane':<9}{'start ms':>10}{'end ms':>10}{'ms':>9}{'experts':>9}"
                "  work"]
        rows = [f"{e.layer:>5}  {e.lane:<9}{e.start_ms:>10.3f}{e.end_ms:>10.3f}"
                f"{e.end_ms - e.start_ms:>9.3f}{e.experts:>9}  {e.work}" for e in self.events]
        busy = {lane: sum(e.end_ms - e.start_ms for e in self.events if e.lane == lane)
                for lane in LANES}
        foot = "busy ms per lane: " + ", ".join(f"{k} {v:.3f}" for k, v in busy.items() if v)
        return "\n".join(head + rows + [foot])


class Tracer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self._open: list[tuple[int, str, object, object, int]] = []
        self._t0 = time.perf_counter()
        self._e0 = None
        if self.cuda:
            torch.cuda.synchronize(device)
            self._e0 = torch.cuda.Event(enable_timing=True)
            self._e0.record(torch.cuda.current_stream(device))
            self._t0 = time.perf_counter()

    def _mark(self, lane: str, stream=None):
        if self.cuda and lane != "cpu":
            event = torch.cuda.Event(enable_timing=True)
            event.record(stream if stream is not None else torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def start(self, lane: str, stream=None):
        return self._mark(lane, stream)

    def stop(self, layer: int, lane: str, started, experts: int, stream=None) -> None:
        self._open.append((layer, lane, started, self._mark(lane, stream), experts))

    def finish(self, tokens: int) -> StepTrace:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        events = [TraceEvent(layer, self._device_lane(lane), self._ms(a), self._ms(b), n,
                             WORK[lane]) for layer, lane, a, b, n in self._open]
        events.sort(key=lambda e: (e.start_ms, e.layer))
        return StepTrace(tuple(events), (end - self._t0) * 1e3, str(self.device), tokens)

    def _device_lane(self, lane: str) -> str:
        """The engine's 'gpu' lane is the fast device: the CPU on a CPU-only machine."""
        return "cpu" if lane == "gpu" and not self.cuda else lane

    def _ms(self, mark) -> float:
        if isinstance(mark, float):
            return (mark - self._t0) * 1e3
        return self._e0.elapsed_time(mark)
