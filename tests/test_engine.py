"""Engine behaviour beyond exactness: where weights live, defaults, re-configuration."""

from __future__ import annotations

import torch

import fiddler_nb as fnb
from fiddler_nb.loading import experts_on_cpu


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
    assert (0, "gpu") in lanes and (3, "cpu") in lanes
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
