"""Workload: the KV-cache arithmetic against transformers' real cache after a generation, the
reserve it sets, and the refusal (with numbers) of a budget that leaves too little room."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import fiddler_nb as fnb
from fiddler_nb.runtime.model.adapters import TESTED_ARCHITECTURES
from fiddler_nb.runtime.errors import BudgetError, FiddlerError
from fiddler_nb.runtime.generation.workload import check_fits, experts_that_fit, kv_cache_bytes

PROMPT, NEW, BATCH = 40, 5, 2  # 40 > gpt_oss's sliding window (32): the cap is exercised
MIB = 1 << 20


def cache_bytes_after_generate(model) -> int:
    """Bytes of the keys and values the cache holds once generate() is done."""
    return sum(t.numel() * t.element_size() for t in _kv_tensors(model))


@pytest.mark.parametrize("arch", TESTED_ARCHITECTURES)
def test_kv_arithmetic_matches_the_real_cache(arch, tiny_checkpoints, stock_model):
    model = stock_model(tiny_checkpoints[arch])
    real = cache_bytes_after_generate(model)
    # the cache holds prompt + new - 1 tokens: the last new token is never fed back
    est = kv_cache_bytes(model.config, PROMPT + NEW - 1, BATCH, 4)
    assert est.bytes == real, f"{arch}: arithmetic {est.bytes} B, real cache {real} B"
    assert est.notes == ()


@pytest.mark.parametrize("arch", ["deepseek_v2", "dots1", "nemotron_h"])
def test_kv_arithmetic_mla_layer_types_and_hybrid(arch):
    """MLA latents (deepseek_v2), explicit layer_types (dots1), and a hybrid whose Mamba state
    is named as not counted while its attention layers are exact (nemotron_h)."""
    from test_more_architectures import SMALL

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **SMALL)).eval()
    real = cache_bytes_after_generate(model)
    est = kv_cache_bytes(model.config, PROMPT + NEW - 1, BATCH, 4)
    assert est.bytes == real, f"{arch}: arithmetic {est.bytes} B, real cache {real} B"
    if arch == "nemotron_h":
        assert est.notes and "linear_attention" in est.notes[0] and "not counted" in est.notes[0]


def _kv_tensors(model) -> list[torch.Tensor]:
    ids = torch.randint(3, 200, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, return_dict_in_generate=True,
                             pad_token_id=0)
    return [t for layer in out.past_key_values.layers
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(t, torch.Tensor)]


def test_workload_reserve_grows_with_the_workload(mixtral_path):
    eng = fnb.load(mixtral_path, expert_budget=0, placement="none")
    small, big = fnb.Workload(16, 16), fnb.Workload(512, 512, batch=4)
    cfg = eng.model.config
    assert big.kv_cache(cfg, 4).bytes == 4 * (1024 / 32) * small.kv_cache(cfg, 4).bytes
    assert big.reserve_bytes(cfg, 4) > small.reserve_bytes(cfg, 4) > 0
    eng.set_workload(big)
    assert eng.workload == big
    assert eng._open().store.reserve_bytes == big.reserve_bytes(cfg, 4)


def test_attention_scores_count_only_where_eager_attention_materialises_them(mixtral_path):
    eng = fnb.load(mixtral_path, expert_budget=0, placement="none")
    cfg = eng.model.config
    work = fnb.Workload(256, 256)
    tiled = work.activation_bytes(cfg, 4)
    cfg._attn_implementation = "eager"
    eager = work.activation_bytes(cfg, 4)
    assert eager - tiled == cfg.num_attention_heads * 256 * 512 * 4


def test_largest_budget_depends_on_the_workload():
    expert = 100 * MIB
    free = 10_000 * MIB
    short = experts_that_fit(free, 500 * MIB, expert, 256)
    long = experts_that_fit(free, 4_000 * MIB, expert, 256)
    assert (short, long) == (95, 60)
    assert experts_that_fit(free, 20_000 * MIB, expert, 256) == 0
    assert experts_that_fit(10**15, 0, expert, 256) == 256


def test_a_budget_without_room_for_the_kv_cache_is_refused_with_the_numbers():
    with pytest.raises(BudgetError) as err:
        check_fits(80, free_bytes=10_000 * MIB, expert_bytes=100 * MIB, total=256,
                   kv_bytes=3_000 * MIB, activation_bytes=1_000 * MIB, device="cuda:0")
    msg = str(err.value)
    assert "KV cache needs 2.930 GiB" in msg and "60 experts fit" in msg, msg
    assert "expert_budget<=60" in msg and "\n" not in msg
    check_fits(60, 10_000 * MIB, 100 * MIB, 256, 3_000 * MIB, 1_000 * MIB)  # fits: no error


@pytest.mark.parametrize("kwargs", [dict(prompt_tokens=0), dict(new_tokens=-1),
                                    dict(batch=1.5), dict(prompt_tokens=8, new_tokens=8,
                                                          context=10)])
def test_bad_workload_is_one_line(kwargs):
    with pytest.raises(FiddlerError) as err:
        fnb.Workload(**kwargs)
    assert "\n" not in str(err.value)


def test_inspect_reports_experts_and_what_fits(mixtral_path):
    eng = fnb.load(mixtral_path, expert_budget=0, placement="none")
    facts = fnb.inspect(eng, fnb.Workload(32, 8), device_memory=2 * MIB)
    assert (facts.architecture, facts.moe_layers, facts.experts_per_layer) == ("mixtral", 4, 8)
    assert facts.expert_bytes == eng.expert_bytes == 3 * 64 * 128 * 4
    assert facts.experts_fit_here == 32  # CPU-only: the fast device is the CPU
    room = 2 * MIB - facts.non_expert_bytes - 2 * facts.expert_bytes
    want = (room - facts.kv_bytes - facts.activation_bytes) // facts.expert_bytes
    assert facts.experts_fit_card == max(0, min(32, want))
    assert "bytes per expert" in facts.table()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_budget_shrinks_with_a_long_workload(mixtral_path):
    """A context too long for the card leaves room for no expert: refused with the numbers."""
    eng = fnb.load(mixtral_path, device="cuda", expert_budget=1, placement="first-layers")
    huge = fnb.Workload(prompt_tokens=8, new_tokens=8, context=10**9)
    with pytest.raises(BudgetError, match="KV cache needs"):
        eng.set_workload(huge)
    assert eng.workload is None and len(eng.placement) == 1  # nothing changed
    eng.set_workload(fnb.Workload(8, 8))
    assert eng.max_resident_experts() == 32
