"""Execution policies: for each activated expert that is not resident, CPU or weight transfer.

Pure decisions over one layer's routed-token counts; `orchestrate.py` carries them out.
`cpu` is Fiddler's decode rule, `transfer` is on-demand offloading, `auto` minimises the
layer's makespan under a measured `LatencyModel` (see `latency.assign_layer`).

Shape legend: A = activated non-resident experts of one layer.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from .latency import LatencyModel, assign_layer
from .registry import Registry


class ExecutionPolicy(Protocol):
    name: str

    def decide(self, counts: Sequence[int], expert_bytes: int, latency: LatencyModel,
               resident_gpu_ms: float) -> tuple[bool, ...]:
        """[A] flags: True = copy the expert's weights to the fast device, False = run on CPU."""
        ...


_REGISTRY: Registry[ExecutionPolicy] = Registry("execution policy")
register = _REGISTRY.register  # class decorator: @register("name")


def known_executions() -> list[str]:
    return _REGISTRY.known()


def make_execution(name: str, **kwargs) -> ExecutionPolicy:
    """A new policy by name; unknown names raise ValueError listing the known ones."""
    return _REGISTRY.make(name, **kwargs)


@register("cpu")
class AllCpu:
    def decide(self, counts, expert_bytes, latency, resident_gpu_ms):
        return (False,) * len(counts)


@register("transfer")
class AllTransfer:
    def decide(self, counts, expert_bytes, latency, resident_gpu_ms):
        return (True,) * len(counts)


@register("auto")
class Auto:
    def decide(self, counts, expert_bytes, latency, resident_gpu_ms):
        cpu = [latency.cpu_path_ms(n) for n in counts]
        transfer = [latency.transfer_path_ms(n, expert_bytes) for n in counts]
        if not latency.concurrent:  # one resource: the makespan is the sum, so take each argmin
            return tuple(t < c for c, t in zip(cpu, transfer))
        return assign_layer(cpu, transfer, resident_gpu_ms).transfer
