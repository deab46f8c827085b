"""Every architecture x placement x execution x budget gives stock transformers' greedy tokens
and fp32 logits within 1e-5 on the same checkpoint.

How: one engine per architecture is re-configured in place (set_placement / set_execution /
set_expert_budget, no reload) and compared with `AutoModelForCausalLM.from_pretrained` on the
same files. A synthetic latency model makes `auto` pick the CPU for small expert groups and a
weight transfer for large ones, and the stats prove both paths ran.
"""

from __future__ import annotations

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.model.adapters import TESTED_ARCHITECTURES
from fiddler_nb.runtime.policies.latency import Curve, LatencyModel
from fiddler_nb.runtime.policies import known_executions, known_placements

NEW_TOKENS = 6
FP32_ATOL = 1e-5
# CPU cost 1 ms per token, transfer 8 ms flat: n* = 8, so decode (n <= batch) runs on the CPU
# and long-prompt prefill groups are transferred.
TRANSFER_MS = 8.0


def split_latency(expert_bytes: int) -> LatencyModel:
    gbps = expert_bytes / (TRANSFER_MS * 1e-3) / 1e9  # copying one expert takes TRANSFER_MS
    return LatencyModel(Curve((1.0, 1024.0), (1.0, 1024.0)), Curve((1.0, 1024.0), (0.0, 0.0)),
                        h2d_gbps=gbps, source="test: n*=8")
PROMPTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Hello"]  # batch 2, padded


def _budgets(engine) -> list[int]:
    total = engine.num_layers * engine.num_experts
    return [0, total // 3, total]


def _tokens_and_logits(model, inputs):
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=258)
        logits = model(**inputs).logits
    return out[:, inputs["input_ids"].shape[1]:], logits


def sweep_differences(engine, inputs, want_tokens, want_logits, executions, atol) -> list[str]:
    """Every budget x execution of `engine` against the reference: one line per combination whose
    greedy tokens differ or whose logits are off by more than `atol`. With every expert resident
    the execution policy has nothing to decide, so only the first runs there."""
    failures = []
    total = engine.num_layers * engine.num_experts
    for budget in _budgets(engine):
        engine.set_expert_budget(budget)
        for execution in executions if budget < total else executions[:1]:
            engine.set_execution(execution)
            tokens, logits = _tokens_and_logits(engine.model, inputs)
            err = (logits - want_logits).abs().max().item()
            if not torch.equal(tokens, want_tokens) or err > atol:
                failures.append(f"{execution}/budget={budget}: max|dlogit|={err:.2e}, tokens "
                                f"{tokens.tolist()} != {want_tokens.tolist()}")
    return failures


def sweep_against(engine, reference, executions, atol) -> list[str]:
    """`sweep_differences` with the popularity placement calibrated on PROMPTS and the split
    latency model (so 'auto' uses both paths), against `reference` (a stock transformers model)."""
    engine.set_latency_model(split_latency(engine.expert_bytes))
    engine.set_popularity(fnb.calibrate(engine, PROMPTS))
    engine.set_placement("popularity")
    inputs = engine.encode(PROMPTS)
    want_tokens, want_logits = _tokens_and_logits(reference, inputs)
    return sweep_differences(engine, inputs, want_tokens, want_logits, executions, atol)


@pytest.mark.parametrize("arch", TESTED_ARCHITECTURES)
def test_every_policy_matches_stock(arch, cpu_kernels, tiny_checkpoints, stock_model):
    path = tiny_checkpoints[arch]
    engine = fnb.load(path, device="cpu", expert_budget=0, placement="none", execution="cpu")
    engine.set_latency_model(split_latency(engine.expert_bytes))
    engine.set_popularity(fnb.calibrate(engine, PROMPTS))
    inputs = engine.encode(PROMPTS)
    want_tokens, want_logits = _tokens_and_logits(stock_model(path), inputs)
    failures = []
    for placement in known_placements():
        engine.set_placement(placement)
        for budget in _budgets(engine):
            engine.set_expert_budget(budget)
            for execution in known_executions():
                engine.set_execution(execution)
                tokens, logits = _tokens_and_logits(engine.model, inputs)
                err = (logits - want_logits).abs().max().item()
                if not torch.equal(tokens, want_tokens) or err > FP32_ATOL:
                    failures.append(f"{placement}/{execution}/budget={budget}: max|dlogit|="
                                    f"{err:.2e}, tokens {tokens.tolist()} != {want_tokens.tolist()}")
    assert not failures, f"{arch}: {len(failures)} combinations differ from stock:\n" + \
        "\n".join(failures[:10])


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "gpt_oss"])
def test_auto_uses_both_paths_and_matches(arch, tiny_checkpoints, stock_model):
    path = tiny_checkpoints[arch]
    engine = fnb.load(path, device="cpu", expert_budget=0, placement="none", execution="auto")
    engine.set_latency_model(split_latency(engine.expert_bytes))
    result = engine.generate(PROMPTS, max_new_tokens=NEW_TOKENS)
    want, _ = _tokens_and_logits(stock_model(path), engine.encode(PROMPTS))
    assert torch.equal(result.token_ids, want.cpu())
    stats = result.stats
    assert sum(stats.prefill.transfer_pairs) > 0, "auto never transferred during a long prefill"
    assert sum(stats.decode.cpu_pairs) > 0, "auto never used the CPU while decoding"
    assert sum(stats.decode.transfer_pairs) == 0, "decode of batch 2 should stay below n*=8"


def test_bf16_logits_within_tolerance(tiny_checkpoints, stock_model):
    path = tiny_checkpoints["mixtral"]
    ref = stock_model(path, torch.bfloat16)
    engine = fnb.load(path, device="cpu", dtype="bfloat16", expert_budget=10,
                      placement="layer-balanced", execution="auto")
    engine.set_latency_model(split_latency(engine.expert_bytes))
    inputs = engine.encode(PROMPTS)
    with torch.inference_mode():
        want = ref(**inputs).logits.float()
    got = engine.logits(PROMPTS).float()
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= 0.02 * scale, f"bf16 logits differ by {err:.3g} (scale {scale:.3g})"
    assert engine.config.dtype == "bfloat16"


def test_generate_returns_text_ids_and_stats(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=8, placement="first-layers", execution="cpu")
    result = engine.generate("Hello there", max_new_tokens=5)
    assert isinstance(result.text, str)
    assert result.token_ids.shape == (1, 5)
    stats = result.stats
    assert stats.new_tokens == 5 and stats.batch_size == 1
    per_token = engine.model.config.num_experts_per_tok * engine.num_layers
    decode_pairs = sum(stats.decode.resident_pairs) + sum(stats.decode.cpu_pairs)
    assert decode_pairs == per_token * 4, "each decoded token routes top_k pairs per layer"
    assert len(stats.decode.cpu_pairs) == engine.num_layers
    assert 0.0 <= stats.decode.hit_rate <= 1.0
    assert "decode" in stats.table()


def test_model_generate_works_unchanged(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4, execution="cpu", placement="random")
    inputs = engine.encode("abc")
    out = engine.model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=258)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert engine.model.config._experts_implementation == "fiddler"


def test_sharded_checkpoint_matches_stock(tmp_path, stock_model):
    """A checkpoint split over several safetensors shards with an index loads the same."""
    path = fnb.make_tiny_checkpoint(tmp_path / "qwen", arch="qwen2_moe", seed=3)
    model = stock_model(str(path))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    sharded = tmp_path / "sharded"
    assert (sharded / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_bytes((path / name).read_bytes())
    engine = fnb.load(sharded, expert_budget=5, placement="random", execution="transfer")
    inputs = engine.encode(PROMPTS)
    want, want_logits = _tokens_and_logits(model, inputs)
    got, logits = _tokens_and_logits(engine.model, inputs)
    assert torch.equal(got, want)
    assert (logits - want_logits).abs().max().item() <= FP32_ATOL


def test_bf16_checkpoint_keeps_its_dtype(tmp_path):
    path = fnb.make_tiny_checkpoint(tmp_path / "bf16", arch="olmoe", dtype="bfloat16")
    engine = fnb.load(path, expert_budget=3)
    assert engine.config.dtype == "bfloat16"
    assert engine.model.lm_head.weight.dtype == torch.bfloat16
