"""Placement and timing figures: their data, units, and measured/projected labels."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from fiddler_nb.notebook import plots
from fiddler_nb.runtime.policies.popularity import Popularity
from fiddler_nb.notebook.widgets import TunerPoint

COUNTS = torch.tensor([[5, 1, 0, 4], [2, 2, 2, 2], [0, 0, 9, 1]])  # [L=3, E=4]


def test_heatmap_data_and_outlined_placement():
    pop = Popularity(COUNTS, tokens=20, source="unit test")
    fig = plots.popularity_heatmap(pop, {(0, 0), (2, 2)})
    assert isinstance(fig, go.Figure)
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert heat.z[0] == pytest.approx([50.0, 10.0, 0.0, 40.0]), "per-layer share in %"
    rects = {(s.y0 + 0.5, s.x0 + 0.5) for s in fig.layout.shapes}
    assert rects == {(0, 0), (2, 2)}, "one outline per resident (layer, expert)"
    title = fig.layout.title.text
    assert "measured" in title and "2 experts resident" in title and "unit test" in title
    assert "expert" in fig.layout.xaxis.title.text and "layer" in fig.layout.yaxis.title.text
    assert "%" in heat.colorbar.title.text


def test_heatmap_counts_projected_and_bad_placement():
    fig = plots.popularity_heatmap(COUNTS.tolist(), share=False, kind="projected")
    assert fig.data[0].z[2] == pytest.approx([0, 0, 9, 1]) and "projected" in fig.layout.title.text
    assert "pairs" in fig.data[0].colorbar.title.text and not fig.layout.shapes
    with pytest.raises(ValueError, match="outside"):
        plots.popularity_heatmap(COUNTS, {(3, 0)})
    with pytest.raises(ValueError, match="kind"):
        plots.popularity_heatmap(COUNTS, kind="guessed")


ROWS = [(0, "gpu", 0.0, 0.5), (0, "cpu", 0.5, 1.5), (1, "transfer", 1.5, 2.0),
        (1, "gpu", 2.0, 2.25)]


def test_timeline_lanes_bars_and_units():
    fig = plots.decode_timeline(ROWS, device="cpu")
    by_lane = {t.name: t for t in fig.data}
    assert set(by_lane) == {"cpu", "gpu", "transfer"}
    gpu = by_lane["gpu"]
    assert gpu.orientation == "h" and list(gpu.base) == [0.0, 2.0]
    assert list(gpu.x) == pytest.approx([0.5, 0.25]), "bar length = end - start (ms)"
    assert list(gpu.text) == ["L0", "L1"]
    assert "(ms)" in fig.layout.xaxis.title.text
    assert "measured on cpu" in fig.layout.title.text and "2.250 ms" in fig.layout.title.text


def test_timeline_from_a_step_trace_and_errors():
    from fiddler_nb.runtime.generation.trace import StepTrace, TraceEvent

    trace = StepTrace(tuple(TraceEvent(l, lane, a, b, 1) for l, lane, a, b in ROWS), 2.5,
                      "cuda:0", 1)
    fig = plots.decode_timeline(trace)
    assert "cuda:0" in fig.layout.title.text and "2.500 ms" in fig.layout.title.text
    projected = plots.decode_timeline(ROWS, kind="projected")
    assert "projected" in projected.layout.title.text
    assert all(t.marker.pattern.shape == plots.PROJECTED_PATTERN for t in projected.data)
    with pytest.raises(ValueError, match="lanes"):
        plots.decode_timeline([(0, "disk", 0.0, 1.0)])
    with pytest.raises(ValueError, match="end before"):
        plots.decode_timeline([(0, "cpu", 2.0, 1.0)])


def _point(label_placement: str, prefill_s: float, decode_s: float) -> TunerPoint:
    return TunerPoint("measured", 4, 0.001, label_placement, "auto", 16, 4, prefill_s, decode_s,
                      16 / prefill_s, 3 / decode_s, 0.5, "cpu", "tiny")


def test_phase_breakdown_measured_and_projected():
    from fiddler_nb.measure.planner import PlanRecord

    plan = PlanRecord("projected", "mixtral-8x7b", "fiddler", "popularity", "auto", 56, 128, 33,
                      prefill_ms=400.0, decode_ms_per_token=250.0, prefill_tps=320.0,
                      decode_tps=4.0, end_to_end_s=8.4, decode_gpu_hit_rate=0.2,
                      decode_h2d_bytes_per_token=0.0, cpu_roofline_decode_tps=None,
                      popularity_source="zipf", latency_source="preset", machine="m")
    items = [_point("popularity", 0.1, 0.3), _point("none", 0.2, 0.6), plan]
    fig = plots.phase_breakdown(items)
    names = [t.name for t in fig.data]
    assert names == ["prefill (measured)", "decode (measured)", "prefill (projected)",
                     "decode (projected)"]
    assert list(fig.data[0].x) == ["popularity+auto (measured)", "none+auto (measured)"]
    assert list(fig.data[1].y) == pytest.approx([0.3, 0.6])
    assert list(fig.data[3].y) == pytest.approx([250.0 * 32 / 1e3]), "decode = (new - 1) steps"
    assert fig.data[2].marker.pattern.shape == plots.PROJECTED_PATTERN, "projected hatched"
    assert not fig.data[0].marker.pattern.shape
    assert fig.layout.barmode == "stack" and "(s)" in fig.layout.yaxis.title.text
    assert "measured and projected" in fig.layout.title.text


def test_phase_breakdown_needs_input():
    with pytest.raises(ValueError, match="at least one"):
        plots.phase_breakdown([])
    only = plots.phase_breakdown([plots.PhaseTimes("x", 1.0, 2.0, "projected")])
    assert "projected" in only.layout.title.text and "measured" not in only.layout.title.text


def test_phase_breakdown_from_bench_records_filters_one_cell():
    from types import SimpleNamespace as Rec  # the fields of bench.BenchRecord this reads

    def rec(strategy, budget, prompt, ttft, tps, skipped=False):
        return Rec(strategy=strategy, budget_experts=budget, prompt_tokens=prompt, new_tokens=5,
                   batch=2, time_to_first_token_s=None if skipped else ttft,
                   decode_tps=None if skipped else tps, kind="measured")

    records = [rec("fiddler", 0, 16, 0.1, 80.0), rec("fiddler", 8, 16, 0.05, 100.0),
               rec("fiddler", 0, 64, 0.4, 70.0), rec("naive-offload", None, 16, 0.3, 20.0),
               rec("lru-cache", 0, 16, 0.0, 0.0, skipped=True)]
    fig = plots.phase_breakdown(records, budget=0, prompt_tokens=16)
    prefill, decode = fig.data
    assert list(prefill.x) == ["fiddler (measured)", "naive-offload (measured)"], \
        "budget/prompt filter keeps budget-less records and drops skipped cells"
    assert list(prefill.y) == pytest.approx([0.1, 0.3])
    assert list(decode.y) == pytest.approx([2 * 4 / 80.0, 2 * 4 / 20.0]), "batch x (new-1) / tok/s"
    assert "budget 0 experts" in fig.layout.title.text and "prompt 16" in fig.layout.title.text
    with pytest.raises(ValueError, match="after filtering"):
        plots.phase_breakdown(records, budget=99, prompt_tokens=999)


def test_hit_rates_bars():
    pts = [_point("popularity", 0.1, 0.2), _point("none", 0.1, 0.2)]
    fig = plots.hit_rates(pts)
    (bars,) = fig.data
    assert list(bars.y) == pytest.approx([50.0, 50.0]) and bars.name == "measured"
    assert list(bars.x) == ["popularity+auto, 4 experts", "none+auto, 4 experts"]
    assert "(%)" in fig.layout.yaxis.title.text and "measured" in fig.layout.title.text
    with pytest.raises(ValueError, match="at least one"):
        plots.hit_rates([])


def test_phase_breakdown_names_the_budget_when_a_strategy_repeats():
    fig = plots.phase_breakdown([
        TunerPoint("measured", 0, 0.0, "popularity", "auto", 16, 4, 0.1, 0.2, 1, 1, 0, "cpu", "t"),
        TunerPoint("measured", 8, 0.0, "popularity", "auto", 16, 4, 0.1, 0.2, 1, 1, 0, "cpu", "t")])
    assert list(fig.data[0].x) == ["popularity+auto, 0 experts (measured)",
                                   "popularity+auto, 8 experts (measured)"]
