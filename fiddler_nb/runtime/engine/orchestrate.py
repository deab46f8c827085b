"""The experts forward that executes one layer's assignment, CPU and GPU overlapping.

Registered in transformers' `ExpertsInterface` as "fiddler", so `model.generate` runs through it
unchanged (DESIGN.md §3). For one layer it: groups the flattened (token, k) pairs by expert, asks
the execution policy which non-resident experts to transfer, then
  1. starts copying the CPU-bound tokens' activations to the host (async on CUDA),
  2. enqueues resident experts and transferred experts (copy stream -> scratch slot) on the GPU,
  3. runs the CPU experts on the host while the GPU works, and copies their results back,
  4. sums the k weighted expert outputs per token, as transformers' own kernels do.

Shape legend: T = tokens in the batch, k = experts per token, S = T*k routed pairs,
H = hidden size, n = pairs routed to one expert, E = experts in the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.adapters import MoELayer
from ..policies.execution import ExecutionPolicy
from .experts import ExpertStore
from ..policies.latency import LatencyModel
from ..policies.placement import DynamicPlacement
from ..generation.stats import StatsRecorder
from ..generation.trace import Tracer

IMPLEMENTATION_NAME = "fiddler"


@dataclass
class EngineState:
    """What every layer's forward shares; the engine swaps fields to re-configure."""

    store: ExpertStore
    execution: ExecutionPolicy
    latency: LatencyModel
    stats: StatsRecorder
    routing_counts: list[list[int]]  # [L][E] pairs routed since the last reset (for calibrate)
    cache: DynamicPlacement | None = None  # set for lru / lfu: misses that transfer are cached
    tracer: Tracer | None = None  # set while tracing one step (Engine.trace_decode_step)


class LayerRuntime:
    """Attached to one experts module as `_fiddler_runtime`."""

    def __init__(self, layer: MoELayer, state: EngineState):
        self.layer = layer
        self.state = state

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        st, idx = self.state, self.layer.index
        num_tokens, hidden_size = hidden.shape
        top_k = top_k_index.shape[-1]
        num_experts = self.layer.num_experts
        expert_ids = top_k_index.reshape(-1)  # [S]
        pair_weights = top_k_weights.reshape(-1)  # [S]
        order = torch.argsort(expert_ids, stable=True)  # [S] pairs grouped by expert
        counts = torch.bincount(expert_ids, minlength=num_experts).tolist()  # one host sync
        row_lists = torch.split(order, counts[:num_experts] + [len(order) - sum(counts[:num_experts])])

        resident, offloaded = [], []
        for e in range(num_experts):
            if counts[e]:
                st.routing_counts[idx][e] += counts[e]
                (resident if st.store.is_resident(idx, e) else offloaded).append(e)
        gpu_ms = sum(st.latency.gpu_ms(counts[e]) for e in resident)
        flags = st.execution.decide([counts[e] for e in offloaded], st.store.expert_bytes,
                                    st.latency, gpu_ms) if offloaded else ()
        on_cpu = [e for e, t in zip(offloaded, flags) if not t]
        transferred = [e for e, t in zip(offloaded, flags) if t]

        fmt = st.store.storage.fmt
        weight_dtype = fmt.float_dtype if not fmt.is_quantized else hidden.dtype
        out_dtype = torch.promote_types(weight_dtype, top_k_weights.dtype)
        out = torch.zeros(len(order), hidden_size, dtype=out_dtype, device=hidden.device)  # [S, H]

        cpu_job = self._start_cpu_inputs(hidden, pair_weights, on_cpu, row_lists, top_k)
        tracer = st.tracer
        mark = tracer.start("gpu") if tracer and resident else None
        for e in resident:
            rows = row_lists[e]
            self._write(out, rows, st.store.run(idx, hidden[rows // top_k],
                                                st.store.resident_weights(idx, e), True),
                        pair_weights)
            if st.cache is not None:
                st.store.mark_read(idx, e)  # a cache fill may reuse this row soon
            st.stats.add(idx, "resident", counts[e])
        if mark is not None:
            tracer.stop(idx, "gpu", mark, len(resident))
        if st.cache is not None:
            st.cache.touch(idx, resident)
        for e in transferred:
            rows = row_lists[e]
            victim = st.cache.admit(idx, e, st.store.residents(idx)) if st.cache else None
            copy_stream = st.store.copy_stream
            if tracer and victim is None and copy_stream is not None:
                st.store.wait_for_free_slot()  # the lane starts once the slot is free to fill
            mark = tracer.start("transfer", copy_stream) if tracer else None
            if victim is None:
                slot, weights = st.store.begin_transfer(idx, e)
            else:
                slot, weights = None, st.store.swap_in(idx, e, victim)
            if tracer:
                tracer.stop(idx, "transfer", mark, 1, copy_stream)
                mark = tracer.start("gpu")
            self._write(out, rows, st.store.run(idx, hidden[rows // top_k], weights, True),
                        pair_weights)
            if tracer:
                tracer.stop(idx, "gpu", mark, 1)
            if slot is not None:
                st.store.end_transfer(slot)
            else:
                st.store.mark_read(idx, e)
            st.stats.add(idx, "transfer", counts[e])
            st.stats.add_transfer(idx, st.store.expert_bytes)
        if cpu_job is not None:
            self._finish_cpu(out, cpu_job, on_cpu, counts)
        return out.view(num_tokens, top_k, hidden_size).sum(dim=1).to(hidden.dtype)  # [T, H]

    @staticmethod
    def _write(out: torch.Tensor, rows: torch.Tensor, y: torch.Tensor,
               pair_weights: torch.Tensor) -> None:
        out.index_copy_(0, rows, (y * pair_weights[rows, None]).to(out.dtype))  # [n, H]

    def _start_cpu_inputs(self, hidden, pair_weights, on_cpu, row_lists, top_k):
        """Gather the CPU experts' tokens and routing weights; start their copy to the host."""
        if not on_cpu:
            return None
        rows = torch.cat([row_lists[e] for e in on_cpu])  # [P] pairs run on the CPU
        x, w = hidden[rows // top_k], pair_weights[rows]  # [P, H], [P]
        if hidden.device.type == "cpu":
            return rows, x, w, None
        x_host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        w_host = torch.empty(w.shape, dtype=w.dtype, pin_memory=True)
        x_host.copy_(x, non_blocking=True)
        w_host.copy_(w, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(hidden.device))
        return rows, x_host, w_host, ready

    def _finish_cpu(self, out, job, on_cpu, counts) -> None:
        """Run the CPU experts on the host (the GPU keeps working) and send results back."""
        rows, x_host, w_host, ready = job
        st, idx = self.state, self.layer.index
        if ready is not None:
            ready.synchronize()
        mark = st.tracer.start("cpu") if st.tracer else None
        cpu_counts = [counts[e] for e in on_cpu]
        kernel = st.store.layer_call_kernel(cpu_counts, x_host.dtype)
        if kernel is not None:  # one native call, GIL released
            y_host = st.store.run_cpu_layer(idx, on_cpu, cpu_counts, x_host, w_host, out.dtype,
                                            pin=ready is not None, kernel=kernel)  # [P, H]
            for n in cpu_counts:
                st.stats.add(idx, "cpu", n)
        else:
            y_host = self._cpu_experts_one_by_one(x_host, w_host, on_cpu, counts, out.dtype,
                                                  ready is not None)
        if mark is not None:
            st.tracer.stop(idx, "cpu", mark, len(on_cpu))
        if ready is not None:
            st.stats.add_activations(x_host.numel() * x_host.element_size()
                                     + y_host.numel() * y_host.element_size())
        out.index_copy_(0, rows, y_host.to(out.device, non_blocking=True))

    def _cpu_experts_one_by_one(self, x_host, w_host, on_cpu, counts, out_dtype, pin):
        """The per-expert path: one kernel call per matrix, weighted rows written in order."""
        st, idx = self.state, self.layer.index
        y_host = torch.empty((x_host.shape[0], x_host.shape[1]), dtype=out_dtype,
                             pin_memory=pin)  # [P, H]
        start = 0
        for e in on_cpu:
            n = counts[e]
            y = st.store.run(idx, x_host[start:start + n], st.store.cpu_weights(idx, e), False)
            y_host[start:start + n] = y * w_host[start:start + n, None]
            start += n
            st.stats.add(idx, "cpu", n)
        return y_host


def fiddler_experts_forward(module, hidden_states, top_k_index, top_k_weights):
    """The function registered with transformers' ExpertsInterface."""
    runtime = getattr(module, "_fiddler_runtime", None)
    if runtime is None:  # a model not managed by an engine: behave like stock transformers
        from transformers.integrations.moe import grouped_mm_experts_forward

        return grouped_mm_experts_forward(module, hidden_states, top_k_index, top_k_weights)
    return runtime.forward(hidden_states, top_k_index, top_k_weights)


def register_with_transformers() -> None:
    """Make `experts_implementation="fiddler"` known to transformers (idempotent)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(IMPLEMENTATION_NAME, fiddler_experts_forward)
