"""CUDA mechanism: pinned expert memory, copy stream, CPU/GPU overlap, memory budget.

Skipped on CPU-only machines (no CUDA device to exercise); run on a GPU with
`pytest -m cuda tests/test_cuda.py`.
"""

from __future__ import annotations

import weakref

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.errors import BudgetError

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_experts_stay_pinned_on_cpu_and_non_experts_on_gpu(mixtral_path):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=5)
    for layer in engine.layers:
        w = layer.module.gate_up_proj
        assert w.device.type == "cpu" and w.is_pinned()
    assert engine.model.lm_head.weight.device.type == "cuda"


CUDA_ATOL = 1e-4  # fp32 on GPU: TF32-free matmuls, but a different reduction order than the CPU


def _assert_matches_stock(engine, ref) -> None:
    """Greedy tokens equal and fp32 logits close, batch 2 with left padding."""
    inputs = engine.encode(["a longer prompt to route many tokens " * 4, "b"])
    with torch.inference_mode():
        want = ref.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=258)
        got = engine.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                    pad_token_id=258)
        err = (engine.model(**inputs).logits - ref(**inputs).logits).abs().max().item()
    assert torch.equal(got, want), "tokens differ from stock transformers"
    assert err < CUDA_ATOL, f"max |dlogit| {err:.2e}"


@pytest.mark.parametrize("execution", ["cpu", "transfer", "auto"])
def test_cuda_matches_stock(mixtral_path, stock_model, execution):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=8, execution=execution,
                      placement="layer-balanced")
    _assert_matches_stock(engine, stock_model(mixtral_path).cuda())


def test_budget_beyond_free_memory_is_refused(mixtral_path):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=0)
    store = engine._state.store
    store.reserve_bytes = torch.cuda.mem_get_info()[1]  # keep the whole card free: nothing fits
    with pytest.raises(BudgetError, match="experts fit"):
        engine.set_expert_budget(1)
    assert engine.placement == frozenset()


@pytest.mark.parametrize("placement,slots", [("lru", 2), ("popularity", 1), ("none", 2)])
def test_transfer_paths_match_stock(mixtral_path, stock_model, placement, slots):
    """Cache fills (lru), a single reused scratch slot, and plain transfers give stock tokens."""
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=8, placement=placement,
                      execution="transfer", scratch_slots=slots)
    _assert_matches_stock(engine, stock_model(mixtral_path).cuda())


def test_replacement_frees_old_residents_first(mixtral_path):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=8, placement="layer-balanced")
    store = engine._state.store
    old = [weakref.ref(s.tensors[0]) for s in store._slots if s.tensors is not None]
    seen, build = [], store._build_layer
    store._build_layer = lambda layer, experts: (seen.append(any(r() is not None for r in old)),
                                                 build(layer, experts))[1]
    engine.set_placement("random")
    assert old and not any(seen), "old resident copies were alive while new ones were built"


def test_trace_on_cuda_has_overlapping_lanes(mixtral_path):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=0, execution="transfer")
    trace = engine.trace_decode_step("overlap")
    assert {"gpu", "transfer"} <= {e.lane for e in trace.events}
    assert all(0 <= e.start_ms <= e.end_ms <= trace.total_ms for e in trace.events)


# ---- nothing lost on failure, on the device (issue 11) ------------------------------------
def _free_for_experts(engine) -> int:
    free, _ = torch.cuda.mem_get_info(engine.device)
    return free + torch.cuda.memory_reserved(engine.device) - torch.cuda.memory_allocated(engine.device)


def test_budget_beyond_free_memory_leaves_memory_where_it_was(mixtral_path, monkeypatch):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=4)
    store = engine._state.store
    monkeypatch.setattr(store, "max_resident_experts", lambda: 6)  # a card with room for 6
    before, placement = torch.cuda.memory_allocated(), engine.placement
    with pytest.raises(BudgetError, match="only 6 experts fit"):
        engine.set_expert_budget(7)
    assert torch.cuda.memory_allocated() == before and engine.placement == placement


def test_budget_that_fits_only_without_the_reserve_is_refused(mixtral_path):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=2)
    store = engine._state.store
    # leave room for exactly 3 more experts' bytes beyond the reserve
    store.reserve_bytes = _free_for_experts(engine) + store._resident_bytes() - 3 * store.expert_bytes
    before, placement = torch.cuda.memory_allocated(), engine.placement
    with pytest.raises(BudgetError, match="free for activations"):
        engine.set_expert_budget(5)  # would fit in the reserve, not beside it
    assert torch.cuda.memory_allocated() == before and engine.placement == placement
    engine.set_expert_budget(3)
    assert len(engine.placement) == 3


def test_failed_re_placement_restores_the_old_copies(mixtral_path, monkeypatch):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=4, placement="layer-balanced")
    ids = torch.tensor([[5, 17, 3, 42]])
    want = engine.generate(ids, max_new_tokens=4).token_ids
    before, placement = torch.cuda.memory_allocated(), engine.placement
    store = engine._state.store
    real, calls = store._build_layer, []

    def flaky(layer, experts):
        calls.append(layer.index)
        if len(calls) == 3:  # fail part-way through the new placement
            raise torch.cuda.OutOfMemoryError("injected")
        return real(layer, experts)

    monkeypatch.setattr(store, "_build_layer", flaky)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.set_expert_budget(12)
    monkeypatch.setattr(store, "_build_layer", real)
    assert engine.placement == placement and engine.config.expert_budget == 4
    assert torch.cuda.memory_allocated() == before
    assert torch.equal(engine.generate(ids, max_new_tokens=4).token_ids, want)
