"""Bench matrix plumbing on the tiny model: records, equal tokens, JSON, plots, report, demo.

No timing assertions: timings on a shared CI machine are noise; the figures' labels and the
records' structure are what is checked.
"""

from __future__ import annotations

import json

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb.benchmarks.matrix import (STRATEGIES, TokenMismatchError, _check_tokens, bench, load_records,
                              records_table, save_records)


@pytest.fixture(scope="module")
def records(mixtral_path):
    return bench(mixtral_path, budgets=[0, 8], prompt_lengths=(8,), batches=(1, 2),
                 new_tokens=3, repeats=1, warmup=0, progress=False, command="pytest")


def test_one_record_per_cell(records):
    engine_cells = {(r.strategy, r.budget_experts, r.batch) for r in records
                    if r.strategy != "naive-offload"}
    # placement 'none' ignores the budget: cpu-experts runs once per case, budget None
    expected = {(s, b, batch) for s in ("fiddler", "on-demand", "lru-cache") for b in (0, 8)
                for batch in (1, 2)} | {("cpu-experts", None, 1), ("cpu-experts", None, 2)}
    assert engine_cells == expected
    naive = [r for r in records if r.strategy == "naive-offload"]
    assert len(naive) == 2 and all(r.budget_experts is None for r in naive)  # no GPU here
    assert all(r.execution == "cpu_offload" and "hook overhead" in r.notes[0] for r in naive)
    assert {r.strategy for r in records} == set(STRATEGIES)


def test_fields_and_same_tokens(records):
    for r in records:
        assert r.kind == "measured" and r.skipped is None
        assert r.tokens_match is True, f"{r.strategy} budget {r.budget_experts} differed"
        assert r.prompt_tokens == 8 and r.new_tokens == 3 and r.repeats == 1
        assert r.decode_tps > 0 and r.prefill_tps > 0 and r.time_to_first_token_s > 0
        assert r.peak_gpu_bytes is None  # CPU-only
        assert (r.layers, r.experts, r.top_k, r.hidden_size) == (4, 8, 2, 64)
        assert r.dtype == "float32" and r.device == "cpu" and r.command == "pytest"
    resident = [r for r in records if r.strategy == "fiddler" and r.budget_experts == 8]
    assert all(0 < r.decode_hit_rate < 1 for r in resident)
    transfers = [r for r in records if r.strategy == "on-demand" and r.budget_experts == 0]
    assert all(r.bytes_moved > 0 for r in transfers)


def test_json_round_trip_and_table(records, tmp_path):
    path = save_records(records, tmp_path / "b.json", extra={"note": "x"})
    assert json.loads(path.read_text())["kind"] == "measured"
    assert load_records(path) == records
    table = records_table(records)
    assert table.startswith("measured:") and "naive-offload" in table


def test_mismatch_raises_or_is_recorded():
    ref: dict = {}
    assert _check_tokens((8, 1), torch.tensor([[1, 2]]), ref, "a", "raise")
    with pytest.raises(TokenMismatchError, match="prompt length 8"):
        _check_tokens((8, 1), torch.tensor([[1, 3]]), ref, "b", "raise")
    assert _check_tokens((8, 1), torch.tensor([[1, 3]]), ref, "b", "record") is False


def test_unknown_strategy_is_refused(mixtral_path):
    with pytest.raises(ValueError, match="known: fiddler"):
        bench(mixtral_path, strategies=["magic"], progress=False)


def test_naive_device_map_is_module_level(mixtral_path):
    from transformers import AutoModelForCausalLM

    from fiddler_nb.benchmarks.naive import naive_device_map

    model = AutoModelForCausalLM.from_pretrained(mixtral_path)
    dm = naive_device_map(model, gpu_layers=2, gpu="cuda:0")
    cpu = sorted(k for k, v in dm.items() if v == "cpu")
    assert cpu == ["model.layers.2.mlp.experts", "model.layers.3.mlp.experts"]
    for name, _ in model.named_parameters():  # every weight covered by exactly one prefix
        owners = [k for k in dm if k == "" or name == k or name.startswith(k + ".")]
        assert len(owners) == 1, (name, owners)


def test_random_model_and_budgets(tmp_path):
    from fiddler_nb.benchmarks.random_checkpoint import (build_random_model, derive_full_model_tps,
                                              make_random_checkpoint, scaled_expert_budget)

    model = build_random_model("tiny", layers=2, dtype="float32")
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert torch.isfinite(model.model.rotary_emb.inv_freq).all()
    full = scaled_expert_budget("mixtral-8x7b", 24 * 10**9)
    assert 40 < full < 64  # 53 of 256 experts fit a 24 GB (24e9-byte) card (DESIGN.md §1)
    assert scaled_expert_budget("mixtral-8x7b", 24 * 10**9, layers=4) == round(full * 4 / 32)
    assert derive_full_model_tps(0.1, 4, "mixtral-8x7b") == pytest.approx(1.25)
    path = make_random_checkpoint(tmp_path / "r", "tiny", layers=2, dtype="float32")
    eng = fnb.load(path, expert_budget=4, placement="first-layers", execution="cpu")
    assert eng.num_layers == 2 and eng.generate(torch.tensor([[1, 2, 3]]), 2).token_ids.shape == (1, 2)


def test_plots_say_measured_or_projected(records):
    from fiddler_nb.notebook.plots import latency_curves, tokens_per_s_vs_budget
    from fiddler_nb.runtime.policies.latency import default_latency_model

    fig = tokens_per_s_vs_budget(measured=records, prompt_tokens=8)
    assert "measured" in fig.layout.title.text and "tokens/s" in fig.layout.yaxis.title.text
    assert all(t.line.dash == "solid" for t in fig.data)
    assert any(t.name.startswith("cpu-experts") for t in fig.data)  # budget None drawn flat
    lat = default_latency_model(10**6, 256)
    fig = latency_curves(lat, 10**6)
    assert "(ms)" in fig.layout.yaxis.title.text and "projected (default)" in fig.layout.title.text


def test_demo_writes_a_report(tmp_path, monkeypatch):
    from fiddler_nb.notebook import demo

    monkeypatch.setattr(demo, "QUICK", dict(prompt_lengths=(8,), repeats=1, new_tokens=3))
    monkeypatch.setattr(demo, "PROJECTED_SHAPE", "tiny")  # a quick profile of a tiny expert
    path = demo.run_demo(tmp_path, quick=True, progress=False)
    text = path.read_text()
    assert path.name == "demo.html" and "[measured]" in text and "[projected]" in text
    assert text.count("<script type=\"text/javascript\">/**") <= 1  # plotly.js inlined once
    plan = json.loads((tmp_path / "demo_plan.json").read_text())
    assert plan["kind"] == "projected" and plan["records"]
    assert load_records(tmp_path / "demo_bench.json")


def test_demo_report_leads_with_its_conclusion(tmp_path, monkeypatch):
    import re

    from fiddler_nb.notebook import demo

    monkeypatch.setattr(demo, "QUICK", dict(prompt_lengths=(8, 16), repeats=1, new_tokens=3))
    monkeypatch.setattr(demo, "PROJECTED_SHAPE", "tiny")
    text = demo.run_demo(tmp_path, quick=True, progress=False).read_text()
    body = text.split("<body>", 1)[1]
    first = re.sub(r"<[^>]+>", " ", body.split("<h2>", 1)[0])  # before the first section
    assert "takes" in first and "ms at 1 token" in first, "the CPU expert finding comes first"
    assert "projected" in first and "naive offloading" in first
    assert "no gpu here" in first.lower() or "GPU (" in first
    if "no gpu here" in first.lower():
        assert "No GPU: every budget runs on the CPU" in text
    assert "decode tok/s" in text and "decode_tps" not in text.split("<table", 1)[1].split(
        "</table>", 1)[0], "tables use readable headers"


def test_findings_say_when_the_link_not_the_cpu_bounds_the_projection():
    from types import SimpleNamespace as NS

    from fiddler_nb.benchmarks.findings import projection_finding

    recs = [NS(strategy="fiddler", budget_experts=53, decode_tps=1.5),
            NS(strategy="naive-offload", budget_experts=53, decode_tps=0.3)]
    lat = NS(cpu_path_ms=lambda n: 190.0, transfer_path_ms=lambda n, b: 15.0)
    slow = NS(latency_model=lambda: lat, expert_bytes=1)
    text = projection_finding(recs, "rtx-4090", "mixtral-8x7b", slow)
    assert "1.50 tok/s" in text and "0.30 tok/s" in text and "(5.0x)" in text
    assert "bound by the link" in text
    lat.cpu_path_ms = lambda n: 5.0
    assert "bound by the link" not in projection_finding(recs, "rtx-4090", "m", slow)


def test_llama_side_by_side_runs_llama_bench_interleaved(mixtral_path, tmp_path, capsys):
    """The --llama-bench path end to end with a stand-in binary that prints llama-bench's JSON
    (the real one needs a llama.cpp build: docs/benchmarks.md)."""
    import json
    import stat

    from fiddler_nb.cli.main import main

    calls = tmp_path / "calls.txt"
    fake = tmp_path / "llama-bench"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"$@\" >> {calls}\n"
                    "echo '[{\"n_prompt\": 128, \"n_gen\": 0, \"avg_ts\": 50.0},"
                    " {\"n_prompt\": 0, \"n_gen\": 4, \"avg_ts\": 10.0}]'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    gguf = tmp_path / "m-q8_0.gguf"
    gguf.write_bytes(b"GGUF")  # only llama-bench reads it here
    out = tmp_path / "side.json"
    rc = main(["bench", "--cpu-suite", "--model", str(mixtral_path), "--llama-bench", str(fake),
               "--gguf", f"int8={gguf}", "--allow-activation-quant", "--suite-repeats", "2",
               "--new-tokens", "4", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    names = [r["name"] for r in data["rows"]]
    assert names == ["int8 (from safetensors)", "int8 + int8 activations"]
    for row in data["rows"]:
        assert len(row["samples"]) == 2 and row["llama_decode_tps"] == 10.0
        assert row["decode_ratio"] == pytest.approx(row["fnb_decode_tps"] / 10.0)
    assert data["rows"][1]["load_kwargs"]["allow_activation_quant"] is True
    assert len(calls.read_text().splitlines()) == 4  # one llama-bench run per round
    assert "-t 1 -p 128 -n 4" in calls.read_text()
    assert "| int8 + int8 activations |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["--gguf", "int8=x.gguf"], "needs both --llama-bench and --gguf"),
    (["--llama-bench", "/nonexistent/llama-bench", "--gguf", "int8=x.gguf", "--model", "m"],
     "is not an executable"),
    (["--llama-bench", "/bin/sh", "--gguf", "int3=x.gguf", "--model", "m"], "FORMAT is one of"),
    (["--llama-bench", "/bin/sh", "--gguf", "x.gguf", "--model", "m"], "write FORMAT=FILE"),
])
def test_llama_side_by_side_bad_input(argv, match, capsys):
    from fiddler_nb.cli.main import main

    assert main(["bench", "--cpu-suite", *argv]) != 0
    assert match in capsys.readouterr().err
