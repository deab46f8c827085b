"""CPU suite plumbing on the tiny shape (the Mixtral-sized run is `fiddler-nb bench --cpu-suite`)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from fiddler_nb.benchmarks.cpu_suite import CpuSuiteResult, experts_module, run_cpu_suite, run_kernel
from fiddler_nb.measure.shapes import get_shape

SMALL_PROBE = 8 << 20  # bytes: fast, and no timing is asserted


@pytest.fixture(scope="module")
def result():
    return run_cpu_suite(shape="tiny", dtype="float32", layers=1, probe_bytes=SMALL_PROBE,
                         repeats=3, new_tokens=4, progress=False, command="pytest")


def test_ratios_and_raw_figures(result):
    for key in ("kernel_bw_ratio", "engine_overhead_ratio", "layer_floor_ratio"):
        assert getattr(result, key) > 0, key
    assert result.read_gbps == max(v for k, v in result.probes_gbps.items() if k != "copy_fp32")
    assert result.kernel["shape"] == "tiny" and result.kernel["expert_bytes"] == 3 * 64 * 128 * 4
    assert result.overhead["same_tokens"] is True  # engine and stock decode the same tokens
    assert result.layers["layers"] == 1 and result.layers["floor_s_per_layer"] > 0
    assert result.machine["cpu_model"] and result.date and result.command == "pytest"


def test_json_keys_and_summary(result, tmp_path):
    data = json.loads(result.save(tmp_path / "s.json").read_text())
    assert {"kernel_bw_ratio", "engine_overhead_ratio", "layer_floor_ratio", "read_gbps",
            "machine", "date", "command"} <= set(data)
    assert CpuSuiteResult(**data) == result
    assert result.summary().splitlines()[-1].startswith("kernel_bw_ratio=")


def test_kernel_uses_the_engine_layout():
    layer = experts_module(get_shape("tiny"), torch.float32, copies=2)
    assert layer.num_experts == 2 and layer.layout.has_gate
    out = run_kernel(get_shape("tiny"), torch.float32, repeats=3)
    assert out["gbps"] > 0 and out["repeats"] == 3
    assert out["onednn_gbps"] > 0, "the plain-F.linear comparison is reported alongside"


def test_oneDNN_comparison_computes_the_engine_math():
    from fiddler_nb.runtime.model.adapters import expert_weights
    from fiddler_nb.benchmarks.cpu_suite import _onednn_expert
    from fiddler_nb.runtime.engine.experts import run_expert

    layer = experts_module(get_shape("tiny"), torch.bfloat16, copies=1)
    x, weights = torch.randn(1, 64).bfloat16(), expert_weights(layer, 0)
    torch.testing.assert_close(_onednn_expert(layer, x, weights), run_expert(layer, x, weights))


def test_read_bandwidth_rule_is_the_profilers():
    from fiddler_nb.benchmarks import cpu_suite
    from fiddler_nb.measure import profiler

    assert cpu_suite.best_read_gbps is profiler.best_read_gbps


def test_cli_cpu_suite(tmp_path, capsys):
    from fiddler_nb.cli.bench import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    out = tmp_path / "suite.json"
    args = parser.parse_args(["bench", "--cpu-suite", "--shape", "tiny", "--dtype", "float32",
                              "--layers", "1", "--probe-mib", "8", "--suite-repeats", "2",
                              "--out", str(out)])
    assert args.func(args) == 0
    assert "layer_floor_ratio" in json.loads(out.read_text())
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("kernel_bw_ratio=")
