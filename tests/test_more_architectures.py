"""Architectures beyond the seven tiny presets: the engine finds experts generically (any
transformers experts class decorated with `use_experts_implementation`), including ungated
experts (nemotron_h), grouped routing (deepseek_v2, glm4_moe) and hybrid models.

Each model is a random 2-layer config saved as a *sharded* checkpoint, compared with stock
transformers for greedy tokens and fp32 logits under every execution policy.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import fiddler_nb as fnb
from fiddler_nb.runtime.policies.latency import Curve, LatencyModel

# one superset of size fields; each config class takes the ones it knows
SMALL = dict(vocab_size=272, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=8,
             num_local_experts=8, n_routed_experts=8, num_experts_per_tok=2, head_dim=16,
             max_position_embeddings=512, tie_word_embeddings=False, first_k_dense_replace=0,
             n_group=1, topk_group=1, n_shared_experts=1, kv_lora_rank=16, q_lora_rank=32,
             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, pad_token_id=0,
             bos_token_id=1, eos_token_id=2)
ARCHS = ["glm4_moe", "dots1", "ernie4_5_moe", "hunyuan_v1_moe", "granitemoe", "minimax",
         "deepseek_v2", "flex_olmo", "nemotron_h"]
ATOL = 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_generic_architecture_matches_stock(arch, tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **SMALL)).save_pretrained(
        tmp_path, max_shard_size="100KB")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 200, (2, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        want = ref.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
        want_logits = ref(ids).logits
    engine = fnb.load(tmp_path, expert_budget=3, placement="layer-balanced")
    # CPU for small expert groups, transfer for large ones (n* = 8 tokens)
    gbps = engine.expert_bytes / 8e-3 / 1e9
    engine.set_latency_model(LatencyModel(Curve((1.0, 1024.0), (1.0, 1024.0)),
                                          Curve((1.0, 1024.0), (0.0, 0.0)), h2d_gbps=gbps))
    for execution in ("cpu", "transfer", "auto"):
        engine.set_execution(execution)
        with torch.inference_mode():
            got = engine.model.generate(ids, attention_mask=mask, max_new_tokens=4,
                                        do_sample=False)
            err = (engine.model(ids).logits - want_logits).abs().max().item()
        assert torch.equal(got, want), f"{arch}/{execution}: tokens differ from stock"
        assert err <= ATOL, f"{arch}/{execution}: max |dlogit| {err:.2e}"
