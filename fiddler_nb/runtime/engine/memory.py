"""What an engine holds in memory: a frozen report (`Engine.memory()`).

Host bytes of the routed experts by format (every tensor the store keeps for them: weights,
scales, the GPU's nibble copy of int4), fast-device bytes (non-expert weights, resident experts,
scratch slots, the reserve kept free for activations), and page-locked host bytes. On a CPU-only
machine the fast device is the CPU: non-expert weights count there, resident experts are the
host copies (0 extra bytes), and scratch slots are real host buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..model.adapters import is_experts_module
from .experts import ExpertStore
from ..formats.storage import tensor_bytes

MIB = 1 << 20
UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def human_bytes(n: int) -> str:
    """'1.25 GiB', '812.0 KiB', '0 B': the largest unit that keeps the number >= 1."""
    for size, unit in UNITS:
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class MemoryReport:
    expert_format: str  # 'bf16', 'int8', 'int4-g64', ...
    host_expert_bytes: dict[str, int]  # format label -> bytes of routed experts in host memory
    non_expert_bytes: int  # on the fast device (the CPU on a CPU-only machine)
    resident_expert_bytes: int  # extra copies on the fast device (0 on a CPU-only machine)
    scratch_bytes: int  # buffers for transferred experts
    reserve_bytes: int  # kept free on the GPU for activations and KV cache (0 on the CPU)
    pinned_host_bytes: int
    device: str

    @property
    def host_experts_total(self) -> int:
        return sum(self.host_expert_bytes.values())

    @property
    def fast_device_bytes(self) -> int:
        return (self.non_expert_bytes + self.resident_expert_bytes + self.scratch_bytes
                + self.reserve_bytes)

    def short(self) -> str:
        """One line for the engine's repr."""
        return (f"experts {self.host_experts_total / MIB:.1f} MiB host ({self.expert_format}), "
                f"{self.fast_device_bytes / MIB:.1f} MiB on {self.device}")

    def table(self) -> str:
        """Fixed-width table in human units: host memory, then the fast device, with totals."""
        dev = self.device
        rows = [(f"routed experts ({k})", v) for k, v in self.host_expert_bytes.items()]
        rows += [("  of which page-locked (pinned)", self.pinned_host_bytes)]
        fast = [("non-expert weights", self.non_expert_bytes),
                ("resident experts (extra copies)", self.resident_expert_bytes),
                ("scratch slots for copied experts", self.scratch_bytes),
                ("reserve (activations, KV cache)", self.reserve_bytes)]
        lines = [f"memory of the engine ({self.expert_format} experts; fast device {dev})",
                 "host memory"] + [f"  {w:<36}{human_bytes(b):>12}" for w, b in rows]
        lines += [f"fast device ({dev})"] + [f"  {w:<36}{human_bytes(b):>12}" for w, b in fast]
        lines.append(f"  {'total on ' + dev:<36}{human_bytes(self.fast_device_bytes):>12}")
        if dev == "cpu":
            lines.append("  (no GPU: the fast device is the CPU; resident experts are the host "
                         "copies, no extra bytes)")
        return "\n".join(lines)

    def rows(self) -> list[tuple[str, float]]:
        """(what, MiB) rows for a report table."""
        rows = [(f"host: experts ({k})", v / MIB) for k, v in self.host_expert_bytes.items()]
        return rows + [("fast device: non-expert weights", self.non_expert_bytes / MIB),
                       ("fast device: resident experts", self.resident_expert_bytes / MIB),
                       ("fast device: scratch slots", self.scratch_bytes / MIB),
                       ("fast device: reserve", self.reserve_bytes / MIB),
                       ("host: pinned", self.pinned_host_bytes / MIB)]


def _compressed_dense_bytes(model: nn.Module) -> int:
    """Bytes of dense weights held outside their parameters: compressed linears
    (engine/dense.py) and GGUF embeddings kept in the file's blocks (engine/gguf_dense.py)."""
    total = 0
    for module in model.modules():
        for key in ("_fnb_dense", "_fnb_file_rows"):
            held = module.__dict__.get(key)
            if held is not None and held[0].fmt != "float":
                m = held[0]
                total += tensor_bytes(m.data) + (tensor_bytes(m.scale) if m.scale is not None
                                                 else 0)
    return total


def memory_report(model: nn.Module, store: ExpertStore) -> MemoryReport:
    label = store.storage.fmt.label()
    host = sum(tensor_bytes(getattr(layer.module, n))
               for layer in store.layers for n in store.storage.host_names())
    inside = {id(p) for m in model.modules() if is_experts_module(m) for p in m.parameters()}
    non_expert = sum(tensor_bytes(p) for p in model.parameters() if id(p) not in inside)
    non_expert += _compressed_dense_bytes(model)
    pinned = sum(tensor_bytes(getattr(layer.module, n)) for layer in store.layers
                 for n in store.storage.host_names() if getattr(layer.module, n).is_pinned())
    return MemoryReport(
        expert_format=label, host_expert_bytes={label: host}, non_expert_bytes=non_expert,
        resident_expert_bytes=store.resident_bytes(),
        scratch_bytes=sum(tensor_bytes(t) for t in store.scratch_tensors()),
        reserve_bytes=store.reserve_bytes if store.is_cuda else 0, pinned_host_bytes=pinned,
        device=str(store.device))
