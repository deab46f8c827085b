"""Engine behaviour beyond exactness: where weights live, defaults, re-configuration."""

from __future__ import annotations

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.engine.loading import experts_on_cpu


def test_experts_stay_in_cpu_memory_after_generation(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=5, execution="transfer", placement="none")
    ptrs = [layer.module.gate_up_proj.data_ptr() for layer in engine.layers]
    engine.generate("weights must not move", max_new_tokens=3)
    assert experts_on_cpu(engine.model)
    assert ptrs == [layer.module.gate_up_proj.data_ptr() for layer in engine.layers], \
        "expert weights were re-allocated during a forward"


def test_cpu_only_default_keeps_auto_on_the_cpu(mixtral_path):
    engine = fnb.load(mixtral_path, device="cpu", expert_budget=0, placement="none")
    assert engine.latency.source == "default" and not engine.latency.concurrent
    stats = engine.generate(["a long prompt " * 20, "b"], max_new_tokens=3).stats
    assert sum(stats.prefill.transfer_pairs) == 0 and sum(stats.decode.transfer_pairs) == 0


def test_default_budget_on_cpu_is_everything(mixtral_path):
    engine = fnb.load(mixtral_path)
    assert len(engine.placement) == engine.num_layers * engine.num_experts


def test_gpu_memory_form_of_the_budget(mixtral_path):
    probe = fnb.load(mixtral_path, expert_budget=0)
    engine = fnb.load(mixtral_path, gpu_memory=probe.expert_bytes * 3 + 1)
    assert engine.config.expert_budget == 3


def test_set_expert_budget_reuses_the_model(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=2, placement="layer-balanced")
    model = engine.model
    for budget in (0, 7, 32, 1):
        engine.set_expert_budget(budget)
        assert len(engine.placement) == budget and engine.model is model


def test_token_ids_input_and_batch(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4, execution="cpu")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    res = engine.generate(ids, max_new_tokens=3)
    assert res.token_ids.shape == (2, 3) and res.stats.batch_size == 2
    assert isinstance(res.text, list) and len(res.text) == 2


def test_close_releases_the_model(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4)
    engine.close()
    assert engine.model is None


def test_trace_decode_step_has_lanes_per_layer(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=8, placement="first-layers", execution="cpu")
    trace = engine.trace_decode_step("trace me")
    lanes = {(e.layer, e.lane) for e in trace.events}
    fast = "gpu" if engine.device.type == "cuda" else "cpu"  # the lane names the device
    assert (0, fast) in lanes and (3, "cpu") in lanes
    work = {(e.layer, e.work) for e in trace.events}
    assert (0, "resident experts") in work and (3, "host experts") in work
    table = trace.table()
    assert "resident experts" in table and "busy ms per lane" in table
    assert fast != "cpu" or " gpu " not in table, "no GPU here: no gpu lane"
    assert all(0 <= e.start_ms <= e.end_ms <= trace.total_ms for e in trace.events)
    assert trace.tokens == 1 and engine._state.tracer is None
    engine.set_execution("transfer")
    assert any(e.lane == "transfer" for e in engine.trace_decode_step("again").events)


def test_user_streamer_still_receives_tokens(mixtral_path):
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.puts, self.ended = 0, False

        def put(self, value):
            self.puts += 1

        def end(self):
            self.ended = True

    collect = Collect()
    engine = fnb.load(mixtral_path, expert_budget=4)
    engine.generate("stream", max_new_tokens=3, streamer=collect)
    assert collect.puts == 1 + 3 and collect.ended


def test_profile_loads_into_the_engine(mixtral_path, tmp_path):
    profile = fnb.profile_hardware("tiny", quick=True)
    path = profile.save(tmp_path / "profile.json")
    engine = fnb.load(mixtral_path, device="cpu", expert_budget=0, placement="none",
                      profile=path)
    assert engine.latency.source.startswith("measured")
    assert not engine.latency.concurrent, "on a CPU-only engine nothing overlaps"
    stats = engine.generate("profiled", max_new_tokens=2).stats
    assert sum(stats.prefill.transfer_pairs) == 0


def test_quick_profile_at_load(mixtral_path):
    engine = fnb.load(mixtral_path, profile="quick", expert_budget=2)
    assert engine.latency.source.startswith("measured")


def test_generate_keywords_pass_through(mixtral_path, stock_model):
    """Beam search, several return sequences, dict outputs and an explicit mask all work."""
    engine = fnb.load(mixtral_path, expert_budget=6, placement="layer-balanced", execution="cpu")
    beams = engine.generate("beam me", max_new_tokens=3, num_beams=2)
    assert beams.token_ids.shape == (1, 3) and beams.stats.prefill.seconds > 0
    many = engine.generate("sample", max_new_tokens=3, do_sample=True, num_return_sequences=3)
    assert many.token_ids.shape == (3, 3) and isinstance(many.text, list) and len(many.text) == 3
    assert many.stats.batch_size == 3 and many.stats.decode.tokens == 3 * 2
    as_dict = engine.generate("dict", max_new_tokens=2, return_dict_in_generate=True)
    assert as_dict.token_ids.shape == (1, 2)
    ids = torch.tensor([[258, 258, 5, 6, 7], [9, 10, 11, 12, 13]])  # row 0 left-padded
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = engine.generate(ids, max_new_tokens=3, attention_mask=mask).token_ids
    with torch.inference_mode():
        want = stock_model(mixtral_path).generate(ids, attention_mask=mask, max_new_tokens=3,
                                                  do_sample=False, pad_token_id=258)
    assert torch.equal(got, want[:, 5:])


def test_batch_prompts_with_a_tokenizer_without_pad_token(tmp_path, mixtral_path, stock_model):
    """Causal-LM tokenizers often have no pad token and pad on the right: batches still work."""
    import shutil

    from transformers import AutoTokenizer

    ckpt = tmp_path / "nopad"
    shutil.copytree(mixtral_path, ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(ckpt)
    engine = fnb.load(ckpt, expert_budget=4, execution="cpu")
    prompts = ["a much longer first prompt", "short"]
    res = engine.generate(prompts, max_new_tokens=3)
    inputs = engine.encode(prompts)
    assert inputs["attention_mask"][1, 0] == 0, "batches must be padded on the left"
    with torch.inference_mode():
        want = stock_model(str(ckpt)).generate(**inputs, max_new_tokens=3, do_sample=False,
                                               pad_token_id=engine.pad_token_id)
    assert torch.equal(res.token_ids, want[:, inputs["input_ids"].shape[1]:])


def test_closed_engine_says_so(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4)
    engine.close()
    assert "closed" in repr(engine)
    with pytest.raises(RuntimeError, match="engine is closed"):
        engine.generate("x")


def test_failed_from_model_leaves_the_model_stock(mixtral_path, stock_model):
    from fiddler_nb.runtime.errors import BudgetError

    model = stock_model(mixtral_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        want = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=258)
    with pytest.raises(BudgetError):
        fnb.from_model(model, device="cpu", expert_budget=999, execution="transfer")
    assert model.config._experts_implementation != "fiddler"
    with torch.inference_mode():
        got = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=258)
    assert torch.equal(got, want)


def test_stats_phase_resets_after_generate(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4)
    engine.generate("x", max_new_tokens=2)
    assert engine._state.stats.phase == "prefill"


def test_memory_table_in_human_units(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4, expert_dtype="int8")
    table = engine.memory().table()
    assert "routed experts (int8)" in table and "KiB" in table and "non-expert weights" in table
    assert f"total on {engine.device}" in table
    assert "e+" not in table, "no raw byte counts in scientific notation"
