"""Planner projections: labelled, consistent, and `auto` never worse than its fixed options."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fiddler_nb.measure.shapes import SHAPE_PRESETS, ModelShape
from fiddler_nb.measure.planner import (UNMEASURED_GPU, PlanRecord, plan, plan_table, resolve_budget,
                                zipf_shares)
from fiddler_nb.measure.hardware import MachineFacts
from fiddler_nb.measure.profiler import HardwareProfile
from fiddler_nb.runtime.policies.popularity import Popularity

SMALL = ModelShape("small", num_layers=3, num_experts=8, top_k=2, hidden_size=256,
                   intermediate_size=512, non_expert_bytes=2_000_000)


def synthetic_profile() -> HardwareProfile:
    """A Mixtral-shaped CPU profile with made-up figures (20 ms at 1 token, 30 GB/s)."""
    facts = MachineFacts("Test CPU", 4, 2, 32 << 20, "", 0, "2.x", "5.x", "3.x",
                         "2026-01-01T00:00:00+00:00")
    return HardwareProfile("mixtral-8x7b", 4096, 14336, "bfloat16", 3 * 4096 * 14336 * 2,
                           (1, 8, 64, 512), (20.0, 24.0, 70.0, 450.0), {"sum_fp32": 30.0}, 30.0,
                           facts, sources={"cpu": "measured"})


def _by_strategy(records: list[PlanRecord], budget: int) -> dict[str, PlanRecord]:
    return {r.strategy: r for r in records if r.budget_experts == budget}


def test_every_record_is_projected_and_table_says_so():
    profile = synthetic_profile().with_gpu_preset("rtx-4090-pcie4")
    records = plan("mixtral-8x7b", profile, budgets=(None, 0, 64), samples=32, prompt_tokens=64)
    assert records and all(r.kind == "projected" for r in records)
    assert {r.strategy for r in records} >= {"naive-offload", "on-demand", "lru-cache",
                                             "cpu-experts", "fiddler"}
    table = plan_table(records)
    assert table.splitlines()[0].startswith("projected")
    assert "preset:rtx-4090-pcie4" in records[0].latency_source
    json.dumps([r.__dict__ for r in records])  # records serialise as they are


@pytest.mark.parametrize("shape", ["mixtral-8x7b", "qwen3-30b-a3b", "tiny", SMALL])
@pytest.mark.parametrize("preset", ["rtx-4090-pcie4", "l4-pcie3", None])
def test_auto_never_slower_than_all_cpu_or_all_transfer(shape, preset):
    profile = synthetic_profile()
    if preset:
        profile = profile.with_gpu_preset(preset)
    total = (SHAPE_PRESETS[shape] if isinstance(shape, str) else shape).total_experts
    records = plan(shape, profile, budgets=(0, total // 5, total // 2),
                   executions=("auto", "cpu", "transfer"), samples=24, prompt_tokens=96,
                   baselines=("cpu-experts",))
    for budget in {r.budget_experts for r in records}:
        by = _by_strategy(records, budget)
        fid, cpu, xfer = by["fiddler"], by["popularity+cpu"], by["popularity+transfer"]
        tol = 1e-9
        assert fid.decode_ms_per_token <= min(cpu.decode_ms_per_token,
                                              xfer.decode_ms_per_token) + tol, (
            f"{shape} {preset} budget {budget}: auto decode {fid.decode_ms_per_token} ms vs "
            f"cpu {cpu.decode_ms_per_token} / transfer {xfer.decode_ms_per_token}")
        assert fid.prefill_ms <= min(cpu.prefill_ms, xfer.prefill_ms) + tol, (
            f"{shape} {preset} budget {budget}: auto prefill {fid.prefill_ms} ms vs "
            f"cpu {cpu.prefill_ms} / transfer {xfer.prefill_ms}")
        if budget == 0:  # with nothing resident, popularity+cpu is the all-CPU baseline
            assert math.isclose(cpu.decode_ms_per_token, by["cpu-experts"].decode_ms_per_token)


def test_on_demand_equals_popularity_transfer_and_naive_copies_whole_layers():
    profile = synthetic_profile().with_gpu_preset("rtx-4090-pcie4")
    records = plan(SMALL, profile, budgets=(8,), executions=("transfer",), samples=16)
    by = _by_strategy(records, 8)
    assert math.isclose(by["on-demand"].decode_ms_per_token,
                        by["popularity+transfer"].decode_ms_per_token)
    naive = by["naive-offload"]  # one of three layers on the GPU: two layers copied per token
    assert naive.decode_h2d_bytes_per_token == 2 * SMALL.num_experts * SMALL.expert_bytes


def test_more_budget_is_never_slower_for_fiddler():
    profile = synthetic_profile().with_gpu_preset("rtx-3090")
    records = plan("mixtral-8x7b", profile, budgets=(0, 32, 128, 256), samples=32)
    fid = sorted((r for r in records if r.strategy == "fiddler"), key=lambda r: r.budget_experts)
    ms = [r.decode_ms_per_token for r in fid]
    assert all(b <= a + 1e-9 for a, b in zip(ms, ms[1:])), f"decode ms by budget: {ms}"
    assert fid[-1].decode_gpu_hit_rate == 1.0


def test_recorded_popularity_is_used_and_checked():
    counts = torch.zeros(SMALL.num_layers, SMALL.num_experts, dtype=torch.int64)
    counts[:, :2] = 100  # two experts take all traffic: placing them gives a 100% hit rate
    pop = Popularity(counts, tokens=100, source="unit test")
    records = plan(SMALL, synthetic_profile().with_gpu_preset("l4"), budgets=(6,),
                   popularity=pop, samples=16)
    fid = _by_strategy(records, 6)["fiddler"]
    assert fid.popularity_source == "recorded: unit test"
    assert fid.decode_gpu_hit_rate == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="popularity"):
        plan("mixtral-8x7b", synthetic_profile(), popularity=pop)


def test_zipf_shares_and_budget_resolution():
    s = zipf_shares(2, 4, 1.0)
    assert s.shape == (2, 4) and torch.allclose(s.sum(1), torch.ones(2, dtype=torch.float64))
    assert torch.equal(zipf_shares(1, 4, 0.0), torch.full((1, 4), 0.25, dtype=torch.float64))
    mixtral = SHAPE_PRESETS["mixtral-8x7b"]
    fit_24gb = resolve_budget(None, mixtral, 24 * 10**9)
    assert 45 <= fit_24gb <= 60, "53 of 256 Mixtral experts fit a 24e9-byte card (DESIGN.md)"
    assert resolve_budget("24GB", mixtral, 0) == fit_24gb
    assert resolve_budget(10_000, mixtral, 0) == mixtral.total_experts


def test_unmeasured_default_gpu_is_said_loudly():
    records = plan("mixtral-8x7b", synthetic_profile(), budgets=(0, 16), samples=8,
                   prompt_tokens=16, baselines=())
    assert records and all(UNMEASURED_GPU in r.notes for r in records)
    assert plan_table(records).splitlines()[0] == UNMEASURED_GPU
    preset = plan("mixtral-8x7b", synthetic_profile().with_gpu_preset("rtx-4090-pcie4"),
                  budgets=(0,), samples=8, prompt_tokens=16, baselines=())
    assert UNMEASURED_GPU not in preset[0].notes and UNMEASURED_GPU not in plan_table(preset)


@pytest.mark.parametrize("preset", [None, "rtx-4090-pcie4"])
def test_cli_plan_warns_first_without_a_gpu_preset(tmp_path, capsys, preset):
    import argparse

    from fiddler_nb.cli.measure import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    path = synthetic_profile().save(tmp_path / "p.json")
    argv = ["plan", "--shape", "mixtral-8x7b", "--profile", str(path), "--budgets", "0"]
    args = parser.parse_args(argv + (["--gpu-preset", preset] if preset else []))
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    if preset is None:
        assert lines[0] == f"warning: {UNMEASURED_GPU}"
    else:
        assert not any(UNMEASURED_GPU in line for line in lines)


@pytest.mark.parametrize("budgets", [object(), [], "20GiB", 5])
def test_budgets_that_are_not_a_list_are_refused_in_one_line(budgets):
    from fiddler_nb.runtime.errors import OptionError

    with pytest.raises(OptionError, match="budgets") as err:
        plan(SMALL, synthetic_profile(), budgets=budgets)
    assert "\n" not in str(err.value)
