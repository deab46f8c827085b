"""`fnb.inspect(engine, workload)`: what a loaded checkpoint is and what fits for a workload.

Architecture, MoE layers x experts, top-k, bytes per expert and of everything else, and for the
workload the KV cache + activation reserve (runtime/generation/workload.py) and how many experts fit next to
it: on this engine's fast device (measured free memory on CUDA; on a CPU-only machine the fast
device is the CPU and every expert is "resident"), and -- arithmetic from the same numbers, not a
measurement -- on a card with `device_memory` bytes that also holds the non-expert weights and
the transfer scratch slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..generation.workload import GIB, Workload, experts_that_fit


@dataclass(frozen=True)
class ModelFacts:
    architecture: str  # transformers model_type
    path: str
    moe_layers: int
    experts_per_layer: int
    top_k: int
    expert_bytes: int
    expert_dtype: str  # the stored format's label: 'bf16', 'int4-g64', 'gguf-q4_k', 'mxfp4', ...
    non_expert_bytes: int  # attention, embeddings, norms, routers, shared experts, lm_head
    workload: Workload
    kv_bytes: int
    activation_bytes: int
    kv_notes: tuple[str, ...]
    device: str
    experts_fit_here: int  # on this engine's fast device next to the workload's reserve
    card_bytes: int | None = None  # a hypothetical card's memory (device_memory=)
    experts_fit_card: int | None = None  # computed, not measured

    @property
    def total_experts(self) -> int:
        return self.moe_layers * self.experts_per_layer

    def table(self) -> str:
        w = self.workload
        rows = [("checkpoint", self.path), ("architecture", self.architecture),
                ("MoE layers x experts (top-k)",
                 f"{self.moe_layers} x {self.experts_per_layer} = {self.total_experts} "
                 f"(top-{self.top_k})"),
                ("bytes per expert", f"{self.expert_bytes:,} ({self.expert_dtype})"),
                ("all experts", _gib(self.total_experts * self.expert_bytes)),
                ("non-expert weights", _gib(self.non_expert_bytes)),
                ("workload", f"batch {w.batch} x (prompt {w.prompt_tokens} + {w.new_tokens} "
                             f"new), context {w.context_tokens}"),
                ("KV cache for it", _gib(self.kv_bytes) + "".join(f"; {n}" for n in
                                                                  self.kv_notes)),
                ("activations (estimate)", _gib(self.activation_bytes)),
                (f"experts that fit on {self.device}", f"{self.experts_fit_here} of "
                 f"{self.total_experts}" + ("" if self.device.startswith("cuda") else
                                            " (the fast device is this CPU)"))]
        if self.card_bytes is not None:
            rows.append((f"experts on a {_gib(self.card_bytes)} card (computed)",
                         f"{self.experts_fit_card} of {self.total_experts}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython shows the table
        p.text(self.table())


def inspect(engine: Any, workload: Workload | None = None,
            device_memory: int | str | None = None) -> ModelFacts:
    """Facts of a loaded engine for `workload` (default `Workload()`); `device_memory` (bytes
    or e.g. "24GiB") adds what would fit on such a card."""
    from .factory import parse_bytes

    workload = workload or Workload()
    model = engine.model
    cfg = model.config.get_text_config()
    dtype_bytes = model.get_input_embeddings().weight.element_size()
    kv = workload.kv_cache(model.config, dtype_bytes)
    act = workload.activation_bytes(model.config, dtype_bytes)
    total = engine.num_layers * engine.num_experts
    all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    non_expert = max(0, all_bytes - total * engine.expert_bytes)
    store = engine._open().store
    if engine.device.type == "cuda":
        here = experts_that_fit(store._free_bytes(), kv.bytes + act, engine.expert_bytes, total)
    else:
        here = total
    card = fit_card = None
    if device_memory is not None:
        card = parse_bytes(device_memory)
        room = card - non_expert - store.scratch_slots * engine.expert_bytes
        fit_card = experts_that_fit(room, kv.bytes + act, engine.expert_bytes, total)
    return ModelFacts(
        architecture=str(getattr(cfg, "model_type", type(model).__name__)), path=str(engine.path),
        moe_layers=engine.num_layers, experts_per_layer=engine.num_experts,
        top_k=int(getattr(cfg, "num_experts_per_tok", 0) or 0), expert_bytes=engine.expert_bytes,
        expert_dtype=engine.expert_dtype, non_expert_bytes=non_expert,
        workload=workload, kv_bytes=kv.bytes, activation_bytes=act, kv_notes=kv.notes,
        device=str(engine.device), experts_fit_here=here, card_bytes=card,
        experts_fit_card=fit_card)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.3f} GiB" if nbytes >= GIB // 100 else f"{nbytes / (1 << 20):.3f} MiB"
