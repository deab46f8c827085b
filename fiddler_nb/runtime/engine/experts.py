"""ExpertStore: where each expert's weights live, and the kernels that run one expert.

All expert weights stay in the model's own fused parameters in CPU memory (pinned when CUDA is
present, so copies are asynchronous). Experts placed on the fast device get a copy there, in one
tensor per layer and weight (`[R, ...]`, R = resident experts of the layer). Transfers copy one
expert into a scratch slot on a dedicated copy stream, so a copy overlaps the previous expert's
compute. On a CPU-only machine the fast device *is* the CPU: resident experts use the CPU
weights directly and a transfer is a real memcpy into a scratch slot.

Shape legend: E = experts, R = resident experts in a layer, S = scratch slots, n = tokens routed
to one expert, H = hidden size, I = expert intermediate size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..model.adapters import MoELayer
from ..errors import BudgetError
from ..kernels.native_layer import layer_kernel, layer_support, run_layer, tile_mode
from ..kernels.registry import (DEFAULT_CHOICE, KernelChoice, Matrix, linear,
                                quantizes_activations)
from ..formats.quant import ExpertFormat, dtype_label
from ..formats.storage import ExpertStorage, tensor_bytes
from ..generation.workload import check_fits, experts_that_fit

GIB = 1 << 30
DEFAULT_RESERVE_BYTES = GIB  # kept free on the GPU for activations and KV cache


def check_budget_range(budget: int, num_layers: int, num_experts: int) -> None:
    """BudgetError unless `budget` is an int in 0..(all experts of the model)."""
    total = num_layers * num_experts
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 <= budget <= total:
        raise BudgetError(f"expert budget {budget!r} is out of range: this model has {total} "
                          f"experts ({num_layers} MoE layers x {num_experts}); pass 0..{total}")


def run_expert(layer: MoELayer, x: torch.Tensor, weights: tuple[torch.Tensor, ...],
               storage: ExpertStorage | None = None, on_device: bool = False,
               choice: KernelChoice = DEFAULT_CHOICE) -> torch.Tensor:
    """One expert on whatever device `weights` are on. x: [n, H] -> [n, H].

    Mirrors transformers' experts math for every layout flag (gated or not, biases, transposed
    storage, custom `_apply_gate` such as gpt-oss's clamped interleaved SwiGLU). `weights` are in
    `storage.cpu_names()` order (`device_names()` when `on_device`); None: the float layout.
    Matrices go through `kernels.linear` (the measured CPU kernel of the format, or the fast
    device's GEMM).
    """
    module, layout = layer.module, layer.layout
    storage = storage or ExpertStorage(layout, ExpertFormat(dtype_label(weights[0].dtype)))
    first, down, biases = storage.matrices(weights, on_device)
    label = storage.fmt.kernel_label  # measured kernel choices key on the kernel family
    if not storage.fmt.is_quantized:
        x = x.to(first.data.dtype)
    if storage.is_transposed:
        h = x @ first.data  # [n, 2I] or [n, I]
    else:
        h = linear(x, first, choice, label)
    if layout.has_bias:
        h = h + biases[0]
    h = module._apply_gate(h) if layout.has_gate else module.act_fn(h)  # [n, I]
    y = h @ down.data if storage.is_transposed else linear(h, down, choice, label)  # [n, H]
    if layout.has_bias:
        y = y + biases[1]
    if layout.has_post_expert_norm:
        y = _post_norm_on(module, y.device)(y)
    return y


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [n, K] @ w [N, K]^T with the default float kernel (measure/probes.py's float probe)."""
    return linear(x, Matrix("float", w), DEFAULT_CHOICE, dtype_label(w.dtype))


def _post_norm_on(module, device: torch.device):
    """The experts' post-norm with its (small) weights on `device`: one copy per device, since
    the same expert may run on the CPU or the fast device."""
    norms = module.__dict__.setdefault("_fnb_post_norms", {})
    if device not in norms:
        base = module.post_expert_norm
        on_base = next(base.parameters(), torch.empty(0)).device == device
        norms[device] = base if on_base else copy.deepcopy(base).to(device)
    return norms[device]


@dataclass
class _LayerSlots:
    resident: dict[int, int]  # expert -> row in the resident tensors
    tensors: tuple[torch.Tensor, ...] | None  # per weight: [R, ...] on the fast device


class ExpertStore:
    """Residency and weight movement for all MoE layers of one model."""

    def __init__(self, layers: list[MoELayer], device: torch.device, scratch_slots: int = 2,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES, storage: ExpertStorage | None = None,
                 kernels: KernelChoice = DEFAULT_CHOICE, activation_quant: bool = False):
        self.layers = layers
        self.device = device
        self.is_cuda = device.type == "cuda"
        self.reserve_bytes = reserve_bytes  # kept free on the GPU for activations and KV cache
        self.reserve_split: tuple[int, int] | None = None  # (KV, activations) of a Workload
        first = getattr(layers[0].module, layers[0].layout.first_name)
        self.storage = storage or ExpertStorage(layers[0].layout,
                                                ExpertFormat(dtype_label(first.dtype)))
        # which CPU kernel runs each format and token count; activation_quant: whether kernels
        # that round activations to int8 blocks may (the choice carries it too)
        self.activation_quant = activation_quant
        self.kernels = kernels.allowing_activation_quant(activation_quant)
        # '' when a layer's CPU experts can run in one native call; else why not
        self.layer_call_blocker = layer_support(layers[0].module, layers[0].layout,
                                                self.storage.fmt.is_quantized)
        # bytes of one expert on the fast device (what a transfer moves; compressed if quantized)
        self.expert_bytes = self._bytes_per_expert(self.storage.device_names())
        self.num_experts = layers[0].num_experts
        self._slots = [_LayerSlots({}, None) for _ in layers]
        self._row_read: dict[tuple[int, int], object] = {}
        if self.is_cuda:
            self._pin_cpu_weights()
        self.copy_stream = torch.cuda.Stream(device) if self.is_cuda else None
        self.scratch_slots = max(1, scratch_slots)
        self._scratch = self._alloc_scratch(self.scratch_slots)  # per weight: [S, ...]
        self._next_scratch = 0
        self._slot_free = [None] * self.scratch_slots  # CUDA events: compute done with a slot

    # ---- placement -------------------------------------------------------------------
    @property
    def placement(self) -> frozenset[tuple[int, int]]:
        return frozenset((i, e) for i, s in enumerate(self._slots) for e in s.resident)

    def is_resident(self, layer: int, expert: int) -> bool:
        return expert in self._slots[layer].resident

    def max_resident_experts(self) -> int:
        """How many experts fit on the fast device now (all of them on a CPU-only machine)."""
        total = len(self.layers) * self.num_experts
        if not self.is_cuda:
            return total
        return experts_that_fit(self._free_bytes(), self.reserve_bytes, self.expert_bytes, total)

    def _free_bytes(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        # blocks torch's allocator caches but does not use are free to us (empty_cache frees them)
        free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + self._resident_bytes()  # re-placing frees the current residents first

    def set_reserve(self, kv_bytes: int, activation_bytes: int) -> None:
        """Keep a workload's KV cache + activations free (instead of the fixed default)."""
        self.reserve_split = (int(kv_bytes), int(activation_bytes))
        self.reserve_bytes = int(kv_bytes) + int(activation_bytes)

    def check_budget(self, budget: int) -> None:
        check_budget_range(budget, len(self.layers), self.num_experts)
        total = len(self.layers) * self.num_experts
        if self.is_cuda and self.reserve_split is not None:
            check_fits(budget, self._free_bytes(), self.expert_bytes, total, *self.reserve_split,
                       device=str(self.device))
        fit = self.max_resident_experts()
        if budget > fit:
            need = budget * self.expert_bytes / GIB
            raise BudgetError(f"expert budget {budget} needs {need:.2f} GiB on {self.device} but "
                              f"only {fit} experts fit (keeping {self.reserve_bytes / GIB:.1f} GiB "
                              f"free for activations); pass expert_budget<={fit}")

    def set_placement(self, placement: frozenset[tuple[int, int]]) -> None:
        """Make exactly `placement` resident. On failure the previous placement is rebuilt."""
        old = self.placement  # pairs only: holding the old tensors would need 2x GPU memory
        try:
            self._build_all(placement)
        except BaseException:
            self._build_all(old)  # the failed copies were freed first, so the old ones fit again
            raise

    def _build_all(self, placement: frozenset[tuple[int, int]]) -> None:
        self._row_read = {}  # (layer, row) -> CUDA event after the last kernel reading the row
        for s in self._slots:  # free first so the new copies fit where the old ones were
            s.resident, s.tensors = {}, None
        if self.is_cuda:
            torch.cuda.empty_cache()
        for i, layer in enumerate(self.layers):
            self._slots[i] = self._build_layer(layer, sorted(e for (l, e) in placement if l == i))
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def _build_layer(self, layer: MoELayer, experts: list[int]) -> _LayerSlots:
        resident = {e: row for row, e in enumerate(experts)}
        if not experts or not self.is_cuda:
            return _LayerSlots(resident, None)  # CPU: resident experts use the CPU weights
        cpu = [getattr(layer.module, n) for n in self.storage.device_names()]
        tensors = tuple(torch.empty((len(experts), *w.shape[1:]), dtype=w.dtype, device=self.device)
                        for w in cpu)
        for row, e in enumerate(experts):
            for dst, src in zip(tensors, cpu):
                dst[row].copy_(src[e], non_blocking=True)
        return _LayerSlots(resident, tensors)

    def _resident_bytes(self) -> int:
        return sum(len(s.resident) for s in self._slots) * self.expert_bytes if self.is_cuda else 0

    def resident_bytes(self) -> int:
        """Bytes of resident expert copies on the fast device (0 on a CPU-only machine)."""
        return self._resident_bytes()

    def scratch_tensors(self) -> tuple[torch.Tensor, ...]:
        return self._scratch

    # ---- weights ---------------------------------------------------------------------
    def cpu_weights(self, layer: int, expert: int) -> tuple[torch.Tensor, ...]:
        """One expert's tensors in host memory that the CPU kernels read (cpu_names order)."""
        module = self.layers[layer].module
        return tuple(getattr(module, n)[expert] for n in self.storage.cpu_names())

    def host_device_weights(self, layer: int, expert: int) -> tuple[torch.Tensor, ...]:
        """One expert's host tensors that are copied to the fast device (device_names order)."""
        module = self.layers[layer].module
        return tuple(getattr(module, n)[expert] for n in self.storage.device_names())

    def run(self, layer: int, x: torch.Tensor, weights: tuple[torch.Tensor, ...],
            on_device: bool) -> torch.Tensor:
        """Run one expert: `weights` from cpu_weights (on_device=False) or from a resident row,
        scratch slot or cache fill (on_device=True). x: [n, H] -> [n, H]."""
        return run_expert(self.layers[layer], x, weights, self.storage,
                          on_device and self.is_cuda, self.kernels)

    def layer_call_kernel(self, counts: list[int], dtype: torch.dtype) -> str | None:
        """The native kernel experts with these token counts run with in one native call
        (run_cpu_layer), or None when they go one by one."""
        if self.layer_call_blocker:
            return None
        fmt = self.storage.fmt
        return layer_kernel(self.kernels, fmt.label(), fmt.matrix_fmt, counts, dtype)

    def run_cpu_layer(self, layer: int, experts: list[int], counts: list[int], x: torch.Tensor,
                      route: torch.Tensor, out_dtype: torch.dtype, pin: bool,
                      kernel: str) -> torch.Tensor:
        """One layer's CPU experts in one native call with `kernel` (layer_call_kernel): x [P, H]
        grouped by expert (counts), route [P] -> the weighted outputs [P, H] in out_dtype."""
        mats = [self.storage.matrices(self.cpu_weights(layer, e), False)[:2] for e in experts]
        return run_layer(mats, counts, x, route, out_dtype, pin,
                         quantize_activations=quantizes_activations(kernel),
                         tile=tile_mode(kernel))

    def resident_weights(self, layer: int, expert: int) -> tuple[torch.Tensor, ...]:
        slots = self._slots[layer]
        if slots.tensors is None:
            return self.cpu_weights(layer, expert)
        row = slots.resident[expert]
        return tuple(t[row] for t in slots.tensors)

    def residents(self, layer: int) -> frozenset[int]:
        return frozenset(self._slots[layer].resident)

    def swap_in(self, layer: int, expert: int, victim: int) -> tuple[torch.Tensor, ...]:
        """Replace resident `victim` with `expert` (a cache fill); returns the new weights.

        On CUDA the copy runs on the copy stream once the last kernel that read the victim's row
        is done (`mark_read` events), so it overlaps other experts' compute; the compute stream
        then waits for it. On the CPU the fill is a real copy into a scratch slot.
        """
        slots = self._slots[layer]
        row = slots.resident.pop(victim)
        slots.resident[expert] = row
        if slots.tensors is None:
            slot, weights = self.begin_transfer(layer, expert)
            self.end_transfer(slot)
            return weights
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            last_read = self._row_read.get((layer, row))
            # a row nobody has marked may have reads still queued: wait for all queued compute
            if last_read is None:
                self.copy_stream.wait_stream(compute)
            else:
                self.copy_stream.wait_event(last_read)
            for dst, src in zip(slots.tensors, self.host_device_weights(layer, expert)):
                dst[row].copy_(src, non_blocking=True)
        compute.wait_stream(self.copy_stream)
        return tuple(t[row] for t in slots.tensors)

    def mark_read(self, layer: int, expert: int) -> None:
        """Record that the compute stream has enqueued its reads of a resident expert's row
        (lets a later cache fill of that row start as early as possible)."""
        if self.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._row_read[(layer, self._slots[layer].resident[expert])] = event

    def begin_transfer(self, layer: int, expert: int) -> tuple[int, tuple[torch.Tensor, ...]]:
        """Start copying one expert into the next scratch slot; returns (slot, weights there).

        On CUDA the copy runs on the copy stream and the compute stream is made to wait for it;
        call `end_transfer(slot)` after enqueueing the compute that reads the slot.
        """
        slot = self._next_scratch
        self._next_scratch = (slot + 1) % self.scratch_slots
        dst = tuple(t[slot] for t in self._scratch)
        src = self.host_device_weights(layer, expert)  # compressed bytes if quantized
        if self.is_cuda:
            compute = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self.copy_stream):
                if self._slot_free[slot] is not None:  # don't overwrite weights still in use
                    self.copy_stream.wait_event(self._slot_free[slot])
                for d, s in zip(dst, src):
                    d.copy_(s, non_blocking=True)
            compute.wait_stream(self.copy_stream)
        else:
            for d, s in zip(dst, src):
                d.copy_(s)
        return slot, dst

    def wait_for_free_slot(self) -> None:
        """Make the copy stream wait until the next scratch slot's last reader is done."""
        event = self._slot_free[self._next_scratch]
        if self.is_cuda and event is not None:
            self.copy_stream.wait_event(event)

    def end_transfer(self, slot: int) -> None:
        if self.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._slot_free[slot] = event

    # ---- set-up ----------------------------------------------------------------------
    def _alloc_scratch(self, count: int) -> tuple[torch.Tensor, ...]:
        first = self.layers[0]
        cpu = [getattr(first.module, n) for n in self.storage.device_names()]
        return tuple(torch.empty((count, *w.shape[1:]), dtype=w.dtype, device=self.device)
                     for w in cpu)  # per weight: [S, ...]

    def _bytes_per_expert(self, names: tuple[str, ...]) -> int:
        module = self.layers[0].module
        return sum(tensor_bytes(getattr(module, n)[0]) for n in names)

    def _pin_cpu_weights(self) -> None:
        """Page-lock the experts' CPU memory so host->device copies are asynchronous."""
        for layer in self.layers:
            for name in self.storage.host_names():
                param = getattr(layer.module, name)
                if not param.is_pinned():
                    param.data = param.data.pin_memory()

    def release(self) -> None:
        """Free every fast-device buffer (used when an engine is closed or failed to load)."""
        for s in self._slots:
            s.resident, s.tensors = {}, None
        self._scratch = ()
        if self.is_cuda:
            torch.cuda.empty_cache()
            empty_host_cache = getattr(torch.accelerator, "empty_host_cache", None)
            if empty_host_cache is not None:  # cached pinned blocks go back to the OS too
                empty_host_cache()
