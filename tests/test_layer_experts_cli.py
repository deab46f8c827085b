"""`fiddler-nb bench --cpu-suite --layer-experts --expert-dtype ... --out FILE`: prints the machine
and command with the table, and saves the rows (small shapes here; the real run is Mixtral's)."""

from __future__ import annotations

import functools
import json

import pytest

from fiddler_nb.benchmarks import layer_experts
from fiddler_nb.cli.main import main
from fiddler_nb.runtime.kernels import native


@pytest.mark.skipif(not native.available(), reason="the layer call needs the native kernels")
def test_layer_experts_bench_saves_its_rows(tmp_path, monkeypatch, capsys):
    small = functools.partial(layer_experts.measure_layer_experts, hidden=64, inter=128,
                              experts=2, probe_bytes=1 << 20, progress=False)
    monkeypatch.setattr(layer_experts, "measure_layer_experts", small)
    out = tmp_path / "layer.json"
    assert main(["bench", "--cpu-suite", "--layer-experts", "--expert-dtype", "int8-g32",
                 "--suite-repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "machine:" in printed and "command: fiddler-nb" in printed and "int8-g32" in printed
    saved = json.loads(out.read_text())
    assert saved["kind"] == "layer-experts" and saved["machine"]["cpu_model"]
    assert [r["fmt"] for r in saved["rows"]] == ["int8-g32"]
    assert saved["rows"][0]["native_ms"] and saved["rows"][0]["probe_gbps"]
