"""HardwareProfile: a quick real profile of the tiny shape, JSON round trip, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fiddler_nb.measure.hardware import GPU_PRESETS, LINK_PRESETS, MachineFacts, get_gpu_preset
from fiddler_nb.measure.profiler import HardwareProfile, profile_hardware


def _facts() -> MachineFacts:
    return MachineFacts("Test CPU", 4, 2, 32 << 20, "", 0, "2.x", "5.x", "3.x",
                        "2026-01-01T00:00:00+00:00")


def synthetic_profile(**kw) -> HardwareProfile:
    """A Mixtral-shaped profile with made-up CPU figures (no measuring)."""
    fields = dict(shape_name="mixtral-8x7b", hidden_size=4096, intermediate_size=14336,
                  dtype="bfloat16", expert_bytes=3 * 4096 * 14336 * 2,
                  cpu_tokens=(1, 8, 64, 512), cpu_ms=(20.0, 24.0, 70.0, 450.0),
                  cpu_probes_gbps={"sum_fp32": 30.0, "matvec_bf16": 18.0}, cpu_read_gbps=30.0,
                  facts=_facts(), sources={"cpu": "measured", "cpu_bandwidth": "measured"})
    fields.update(kw)
    return HardwareProfile(**fields)


@pytest.fixture(scope="module")
def quick_tiny_run() -> tuple[HardwareProfile, int, int]:
    """(profile, torch threads before the call, torch threads after it)."""
    before = torch.get_num_threads()
    profile = profile_hardware("tiny", quick=True, threads=1)
    return profile, before, torch.get_num_threads()


@pytest.fixture(scope="module")
def quick_tiny(quick_tiny_run) -> HardwareProfile:
    return quick_tiny_run[0]


def test_quick_profile_of_tiny_shape(quick_tiny_run):
    p, threads_before, threads_after = quick_tiny_run
    assert p.shape_name == "tiny" and p.dtype == "float32"
    assert p.cpu_tokens == (1, 8, 64, 512) and all(ms > 0 for ms in p.cpu_ms)
    assert set(p.cpu_probes_gbps) >= {"sum_fp32", "copy_fp32", "matvec_bf16"}
    reads = [v for k, v in p.cpu_probes_gbps.items() if k != "copy_fp32"]
    assert p.cpu_read_gbps == max(reads), "read bandwidth = best read-only probe"
    assert p.sources["cpu"] == "measured"
    assert p.facts.threads_used == 1 and p.facts.torch_version == torch.__version__
    if not torch.cuda.is_available():
        assert "gpu" in p.skipped and "gpu" not in p.sources, "a GPU part must never be faked"
        assert p.gpu_ms == () and p.link_gbps == {}
    assert threads_after == threads_before, \
        f"profile_hardware(threads=1) left torch at {threads_after} threads, not {threads_before}"


def test_profile_json_round_trip(tmp_path, quick_tiny):
    for profile in (quick_tiny, quick_tiny.with_gpu_preset("rtx-4090-pcie4"),
                    synthetic_profile(gpu_tokens=(1, 512), gpu_ms=(0.5, 2.0),
                                      link_gbps={"h2d_pinned": 24.0}, expert_copy_ms=14.0)):
        path = profile.save(tmp_path / "p.json")
        assert HardwareProfile.load(path) == profile, "save/load must round-trip exactly"


def test_load_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="profile"):
        HardwareProfile.load(tmp_path / "none.json")


def test_latency_model_without_gpu_is_labelled_default():
    lat = synthetic_profile().latency_model()
    assert lat.source == "measured cpu + default gpu"
    assert lat.cpu_ms(8) == pytest.approx(24.0) and lat.cpu_ms(1024) > lat.cpu_ms(512)
    assert any("unmeasured default" in n for n in lat.notes)


def test_latency_model_scales_other_expert_sizes_and_says_so():
    p = synthetic_profile()
    lat = p.latency_model(expert_bytes=p.expert_bytes // 2)
    assert lat.cpu_ms(1) == pytest.approx(10.0)
    assert any("scaled by bytes ratio" in n for n in lat.notes)


def test_gpu_preset_profile_and_crossover():
    p = synthetic_profile().with_gpu_preset("rtx-4090", link="pcie3")
    assert p.sources["gpu"] == "preset:rtx-4090" and p.sources["link"] == "preset:pcie3"
    assert p.gpu_memory_bytes == GPU_PRESETS["rtx-4090"].memory_bytes
    lat = p.latency_model()
    assert lat.h2d_gbps == 12.0 and "preset:rtx-4090-pcie3" in lat.source
    # 352 MB over 12 GB/s ~ 29 ms + GPU > 20-24 ms CPU at small n; copying wins for long prompts
    n_star = p.crossover()
    assert n_star is not None and 1 < n_star < 64
    assert lat.gpu_ms(1) < lat.gpu_ms(4096), "preset GPU becomes compute-bound for long prompts"


def test_measured_gpu_takes_precedence():
    p = synthetic_profile(gpu_tokens=(1, 512), gpu_ms=(0.5, 2.0), link_gbps={"h2d_pinned": 24.0},
                          sources={"cpu": "measured", "gpu": "measured", "link": "measured"})
    lat = p.latency_model()
    assert lat.source == "measured" and lat.h2d_gbps == 24.0 and lat.gpu_ms(1) == 0.5


def test_presets_carry_citations():
    for name, gpu in GPU_PRESETS.items():
        assert len(gpu.citation) > 20 and "GB/s" in gpu.citation, f"{name} needs a citation"
        assert gpu.default_link in LINK_PRESETS
        assert 0 < gpu.memory_efficiency <= 1 and 0 < gpu.compute_efficiency <= 1
    for name, link in LINK_PRESETS.items():
        assert "PCIe" in link.citation and link.h2d_gbps > 0, f"{name} needs a citation"
    assert [LINK_PRESETS[k].h2d_gbps for k in ("pcie3", "pcie4", "pcie5")] == [12.0, 25.0, 50.0]


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError, match="rtx-4090"):
        get_gpu_preset("rtx-9999")


def test_profile_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        synthetic_profile().cpu_read_gbps = 1.0


def test_profile_of_a_loaded_engine_uses_its_expert_shape():
    from fiddler_nb.api import load

    engine = load("tiny", device="cpu", expert_budget=0, placement="none")
    try:
        p = profile_hardware(engine, quick=True, threads=1, tokens=(1, 4))
        expert_bytes = engine.expert_bytes
    finally:
        engine.close()
    assert (p.hidden_size, p.intermediate_size) == (64, 128)
    assert p.expert_bytes == expert_bytes
    assert p.cpu_tokens == (1, 4)


def test_profile_of_an_engine_with_other_experts_says_what_to_do(tiny_checkpoints):
    from fiddler_nb.api import load

    engine = load(tiny_checkpoints["gpt_oss"], device="cpu", expert_budget=0, placement="none")
    try:
        layout = engine.layers[0].layout
        assert layout.has_bias or layout.is_transposed, "gpt-oss experts are biased/transposed"
        with pytest.raises(ValueError, match="ModelShape preset"):
            profile_hardware(engine, quick=True, threads=1, tokens=(1,))
    finally:
        engine.close()


def test_profiler_times_the_engines_kernel():
    """expert_forward must go through experts._linear (ATen GEMV for one bf16 CPU token)."""
    from fiddler_nb.measure import probes, profiler
    from fiddler_nb.runtime.engine.experts import _linear

    assert probes._linear is _linear
    torch.manual_seed(0)
    x = torch.randn(1, 64).bfloat16()
    gate_up, down = torch.randn(256, 64).bfloat16(), torch.randn(64, 128).bfloat16()
    h = _linear(x, gate_up)
    want = _linear(torch.nn.functional.silu(h[:, :128]) * h[:, 128:], down)
    assert torch.equal(profiler.expert_forward(x, gate_up, down), want)
