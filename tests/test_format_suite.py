"""The compressed-experts targets table, on the tiny shape (plumbing; no timing asserted).
The Mixtral-shaped run is `fiddler-nb bench --cpu-suite --expert-dtype bf16 int8 int4`."""

from __future__ import annotations

import json

import pytest

from fiddler_nb.benchmarks.format_suite import STOCK, run_format_suite


@pytest.fixture(scope="module")
def result():
    return run_format_suite(shape="tiny", layers=1, rounds=2, prefill=16, decode_tokens=3,
                            probe_bytes=8 << 20, rotate_bytes=1 << 20, threads=1, command="pytest", progress=False)


def test_rows_for_stock_and_every_format(result):
    assert set(result.rows) == {STOCK, "engine-bf16", "engine-int8", "engine-int4-g64"}
    assert result.rows[STOCK]["decode_x_stock"] == 1.0
    for name, row in result.rows.items():
        assert row["decode_tps"] > 0 and row["prefill_tps"] > 0, name
        assert len(row["decode_samples"]) == 2
    assert result.rows["engine-int8"]["bytes_x_bf16"] < 0.55
    assert result.rows["engine-int4-g64"]["bytes_x_bf16"] < 0.35
    for label in ("bf16", "int8", "int4-g64"):
        assert result.rows[f"engine-{label}"]["kernel_bw_ratio"] > 0
    assert result.machine["isa"] and result.command == "pytest"


def test_json_and_table(result, tmp_path):
    data = json.loads(result.save(tmp_path / "f.json").read_text())
    assert data["rows"].keys() == result.rows.keys() and data["kind"] == "measured"
    table = result.table()
    assert "| engine-int8 |" in table and "command: pytest" in table
    assert result.machine["isa"] in table


def test_activation_quant_rows_measure_their_error():
    from fiddler_nb.benchmarks.format_suite import has_q8_kernel
    from fiddler_nb.runtime.formats.quant import ExpertFormat
    from fiddler_nb.runtime.kernels.registry import candidates, quantizes_activations

    if not has_q8_kernel(ExpertFormat("int8")):
        pytest.skip("no native kernels here: no activation-quantizing rows")
    res = run_format_suite(shape="tiny", layers=1, rounds=1, prefill=16, decode_tokens=3,
                           formats=("bf16", "int8-g32"), probe_bytes=8 << 20,
                           rotate_bytes=1 << 20, threads=1, command="pytest", progress=False,
                           activation_quant=True)
    assert set(res.rows) == {STOCK, "engine-bf16", "engine-int8-g32", "engine-int8-g32+q8"}
    q8, exact = res.rows["engine-int8-g32+q8"], res.rows["engine-int8-g32"]
    assert q8["activation_quant"] and not exact["activation_quant"]
    # the measured choice: the q8 kernel where it was faster on this tiny matrix (timing decides)
    # (exact: the int8-group kernels that run here and keep the activations; the tile kinds
    # include the AMX ones on CPUs with AMX)
    exact_kernels = candidates("int8-group")
    assert all(not quantizes_activations(k) for k in exact_kernels)
    assert q8["kernel"] in ["native-q8-int8g", *exact_kernels]
    assert exact["kernel"] in exact_kernels
    assert 0 <= q8["act_quant_logit_err"] < 0.05 and 0 < q8["act_quant_top1_agree"] <= 1
    assert "act_quant_logit_err" not in exact
    assert "| engine-int8-g32+q8 |" in res.table()


def test_compare_formats_with_int8_activations_and_a_users_file(tmp_path):
    """Notebook 08's comparison: '+q8' points beside the exact ones (more error, never less
    than zero), and a GGUF file measured against its own reference (its values: ~0 error)."""
    import fiddler_nb as fnb
    from fiddler_nb.benchmarks.format_compare import compare_formats, gguf_reference
    from fiddler_nb.benchmarks.format_suite import has_q8_kernel
    from fiddler_nb.runtime.formats.quant import ExpertFormat

    gguf = fnb.make_tiny_gguf(tmp_path / "m.gguf", "mixtral", "Q8_0", dense_type="Q8_0")
    ref = gguf_reference(gguf)
    assert (ref / "config.json").is_file() and gguf_reference(gguf) == ref  # written once
    points = compare_formats(ref, formats=("int8",), new_tokens=2, activation_quant=True,
                             files=[gguf])
    names = [p.expert_format for p in points]
    q8 = has_q8_kernel(ExpertFormat("int8"))
    assert names == ["fp32", "int8"] + (["int8+q8"] if q8 else []) + ["gguf-q8_0"] + \
        (["gguf-q8_0+q8"] if q8 else [])
    by = {p.expert_format: p for p in points}
    assert by["fp32"].rel_expert_error == 0 and by["fp32"].top1_agreement == 1
    assert by["gguf-q8_0"].rel_expert_error < 1e-5  # the file's own values: exact
    assert by["gguf-q8_0"].source == str(gguf)
    assert 1e-4 < by["int8"].rel_expert_error < 0.05
    if q8:
        assert by["int8+q8"].activation_quant and by["int8+q8"].rel_expert_error > \
            by["int8"].rel_expert_error * 0.5
        assert 1e-4 < by["gguf-q8_0+q8"].rel_expert_error < 0.05
