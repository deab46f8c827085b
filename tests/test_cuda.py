"""CUDA mechanism: pinned expert memory, copy stream, CPU/GPU overlap, memory budget.

Skipped on CPU-only machines (no CUDA device to exercise); run on a GPU with
`pytest -m cuda tests/test_cuda.py`.
"""

from __future__ import annotations

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.experts import BudgetError

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


@pytest.mark.parametrize("execution", ["cpu", "transfer", "auto"])
def test_cuda_matches_stock(mixtral_path, stock_model, execution):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=8, execution=execution,
                      placement="layer-balanced")
    ref = stock_model(mixtral_path).cuda()
    inputs = engine.encode(["a longer prompt to route many tokens " * 4, "b"])
    with torch.inference_mode():
        want = ref.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=258)
        got = engine.model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                    pad_token_id=258)
        err = (engine.model(**inputs).logits - ref(**inputs).logits).abs().max().item()
    assert torch.equal(got, want)
    assert err < 1e-4


def test_budget_beyond_free_memory_is_refused(mixtral_path):
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=0)
    store = engine._state.store
    free, _ = torch.cuda.mem_get_info()
    store.reserve_bytes = free  # leave no room: nothing fits
    with pytest.raises(BudgetError, match="experts fit"):
        engine.set_expert_budget(1)
    assert engine.placement == frozenset()


def test_transfer_path_copies_whole_experts(mixtral_path):
    """Every transfer moves exactly one expert's bytes through the copy stream."""
    engine = fnb.load(mixtral_path, device="cuda", expert_budget=0, execution="transfer")
    res = engine.generate("overlap", max_new_tokens=4)
    assert sum(res.stats.decode.transfers) > 0
    assert res.stats.decode.weight_bytes == sum(res.stats.decode.transfers) * engine.expert_bytes
