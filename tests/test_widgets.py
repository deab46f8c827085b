"""The tuner: pure callbacks (measured and projected) and the real ipywidgets tree around them."""

from __future__ import annotations

import math

import ipywidgets as w
import plotly.graph_objects as go
import pytest

import fiddler_nb as fnb
from fiddler_nb.notebook import widgets
from fiddler_nb.measure.hardware import MachineFacts
from fiddler_nb.measure.profiler import HardwareProfile

NEW_TOKENS = 3  # two decode steps: enough to time decode, fast on tiny


def synthetic_profile() -> HardwareProfile:
    """A Mixtral-shaped CPU profile with made-up figures, a preset GPU attached."""
    facts = MachineFacts("Test CPU", 4, 2, 32 << 20, "", 0, "2.x", "5.x", "3.x",
                         "2026-01-01T00:00:00+00:00")
    return HardwareProfile("mixtral-8x7b", 4096, 14336, "bfloat16", 3 * 4096 * 14336 * 2,
                           (1, 8, 64, 512), (20.0, 24.0, 70.0, 450.0), {"sum_fp32": 30.0}, 30.0,
                           facts, sources={"cpu": "measured"}).with_gpu_preset("rtx-4090-pcie4")


@pytest.fixture()
def engine(mixtral_path):
    return fnb.load(mixtral_path, expert_budget=4, placement="layer-balanced", execution="cpu")


def test_run_point_re_places_without_reloading(engine):
    model = engine.model
    pt = widgets.run_point(engine, 12, "first-layers", "auto", prompt_tokens=9,
                           new_tokens=NEW_TOKENS)
    assert engine.model is model, "run_point reloaded the model"
    assert engine.config.expert_budget == 12 and len(engine.placement) == 12
    assert engine.config.placement == "first-layers" and engine.config.execution == "auto"
    assert (pt.kind, pt.budget_experts, pt.prompt_tokens, pt.new_tokens) == \
        ("measured", 12, 9, NEW_TOKENS)
    assert pt.prefill_tps > 0 and pt.decode_tps > 0 and 0 <= pt.hit_rate <= 1
    assert math.isclose(pt.budget_gib, 12 * engine.expert_bytes / 2**30)
    with pytest.raises(Exception):
        pt.budget_experts = 3  # frozen
    assert pt.runs >= 3 and pt.decode_tps_low <= pt.decode_tps <= pt.decode_tps_high
    assert "IQR" in widgets.describe(pt) and f"{pt.runs} runs" in widgets.describe(pt)


def test_run_point_repeats_until_steady_or_its_budget(engine):
    from fiddler_nb.measure.discipline import RepeatPolicy

    fixed = widgets.run_point(engine, 4, "first-layers", "cpu", 4, NEW_TOKENS,
                              policy=RepeatPolicy.fixed(5))
    assert fixed.runs == 5
    quick = widgets.run_point(engine, 4, "first-layers", "cpu", 4, NEW_TOKENS,
                              policy=RepeatPolicy(min_repeats=3, max_repeats=50, budget_s=0.0))
    assert quick.runs == 3, "after the minimum, an exhausted budget stops the repeats"


def test_cpu_only_tuner_says_budget_has_no_effect(engine):
    t = widgets.tuner(engine, prompt_tokens=4, new_tokens=NEW_TOKENS)
    if engine.device.type != "cpu":
        assert t.info.value == ""
        return
    assert "cannot change speed" in t.info.value and "projects" in t.info.value
    assert "no GPU: every budget runs on the CPU" in t.figure.layout.title.text
    t.run()
    bars = t.figure.data[0].error_y
    assert bars.visible and len(bars.array) == 1, "the point carries its spread"


def test_run_point_failure_leaves_every_setting_unchanged(engine):
    before = engine.config
    with pytest.raises(ValueError):
        widgets.run_point(engine, 10**6, "first-layers", "auto", prompt_tokens=4,
                          new_tokens=NEW_TOKENS)
    assert engine.config == before, "a refused budget must not half-apply placement/execution"


def test_project_point_is_labelled_projected():
    plan_input = widgets.as_plan_input(synthetic_profile())
    pt = widgets.project_point(plan_input, 64, "popularity", "auto", 128, 16)
    assert pt.kind == "projected" and pt.source == "mixtral-8x7b" and pt.budget_experts == 64
    assert pt.decode_tps > 0 and pt.series.endswith("(projected)")
    with pytest.raises(ValueError, match="out of range"):
        widgets.project_point(plan_input, 10_000, "popularity", "auto", 128, 16)


def test_tuner_builds_real_widgets_from_the_engine(engine):
    t = widgets.tuner(engine, prompt_tokens=8, new_tokens=NEW_TOKENS)
    assert isinstance(t.widget, w.VBox) and isinstance(t.figure, go.FigureWidget)
    assert isinstance(t.budget, w.IntSlider) and isinstance(t.progress, w.IntProgress)
    assert t.budget.max == engine.num_layers * engine.num_experts and t.budget.value == 4
    assert t.placement.value == "layer-balanced" and t.execution.value == "cpu"
    assert set(t.placement.options) == set(fnb.policies.known_placements())
    assert set(t.execution.options) == set(fnb.policies.known_executions())
    assert "GiB" in t.budget_gib.value
    assert "measured" in t.figure.layout.title.text
    assert "application/vnd.jupyter.widget-view+json" in t._repr_mimebundle_()


def test_slider_and_click_measure_and_update_the_figure(engine):
    t = widgets.tuner(engine, prompt_tokens=8, new_tokens=NEW_TOKENS)
    t.budget.value, t.placement.value, t.execution.value = 10, "popularity", "auto"
    t.run_button.click()
    assert t.error.value == ""
    pt = t.points[-1]
    assert (pt.budget_experts, pt.placement, pt.execution, pt.kind) == \
        (10, "popularity", "auto", "measured")
    assert engine.config.expert_budget == 10 and len(engine.placement) == 10
    (trace,) = t.figure.data
    assert list(trace.x) == [10] and trace.y[0] == pytest.approx(pt.decode_tps)
    assert trace.name == pt.series and trace.line.dash == "solid"
    assert t.progress.value == t.progress.max == 1 and "decode" in t.status.value

    t.budget.value = 2
    t.run_button.click()
    assert list(t.figure.data[0].x) == [2, 10], "a second budget is appended, sorted"
    t.run_button.click()
    assert list(t.figure.data[0].x) == [2, 10], "the same budget refreshes its point"

    t.prompt_tokens.value = 5
    t.run_button.click()
    assert len(t.figure.data) == 2, "another prompt length is another series"


def test_budget_gib_label_follows_the_slider(engine):
    t = widgets.tuner(engine)
    t.budget.value = 20
    assert t.budget_gib.value == f"= {20 * engine.expert_bytes / 2**30:.3g} GiB"


def test_errors_show_in_the_widget_not_as_exceptions(engine):
    t = widgets.tuner(engine, prompt_tokens=8, new_tokens=NEW_TOKENS)
    total = t.budget.max
    t.budget.max = total + 5  # as if the slider allowed more than the model has
    t.budget.value = total + 5
    t.run_button.click()  # must not raise
    assert "error" in t.error.value and "out of range" in t.error.value
    assert t.progress.bar_style == "danger" and t.points == []
    assert engine.config.expert_budget == 4, "a failed run keeps the old placement"
    t.budget.value = 3
    t.run_button.click()
    assert t.error.value == "" and t.points[-1].budget_experts == 3, "the next run clears it"


def test_sweep_button_fills_the_figure_with_progress(engine):
    t = widgets.tuner(engine, prompt_tokens=4, new_tokens=NEW_TOKENS)
    t.sweep_button.click()
    budgets = [p.budget_experts for p in t.points]
    assert len(budgets) == widgets.SWEEP_POINTS and budgets[0] == 0 and budgets[-1] == t.budget.max
    assert list(t.figure.data[0].x) == sorted(budgets)
    assert t.progress.value == t.progress.max == widgets.SWEEP_POINTS
    assert t.progress.bar_style == "success"


def test_projected_tuner_draws_dashed_projected_series():
    t = widgets.tuner(synthetic_profile(), prompt_tokens=64, new_tokens=8)
    assert t.kind == "projected" and "projected" in t.figure.layout.title.text
    assert t.budget.max == 256 and t.run_button.description.startswith("Project")
    t.budget.value = 56
    t.run_button.click()
    assert t.error.value == ""
    (trace,) = t.figure.data
    assert trace.line.dash == "dash" and trace.name.endswith("(projected)")
    assert list(trace.x) == [56] and t.points[-1].kind == "projected"


def test_sweep_function_runs_every_combination(engine):
    seen = []
    pts = widgets.sweep(engine, [0, 32], placements=("popularity", "none"), executions=("cpu",),
                        prompt_tokens=4, new_tokens=NEW_TOKENS, on_point=seen.append,
                        progress=False)
    assert [(p.budget_experts, p.placement) for p in pts] == \
        [(0, "popularity"), (32, "popularity"), (0, "none"), (32, "none")]
    assert seen == pts
    assert pts[-1].hit_rate == 0, "placement 'none' keeps nothing resident"
    assert pts[1].hit_rate == 1, "all experts resident: every pair hits"


def test_bad_targets_and_lengths_are_refused(engine):
    with pytest.raises(fnb.FiddlerError, match="tuner takes"):
        widgets.tuner(object())
    with pytest.raises(ValueError, match="new_tokens"):
        widgets.run_point(engine, 0, "none", "cpu", 4, 1)
    with pytest.raises(ValueError, match="prompt length"):
        widgets.run_point(engine, 0, "none", "cpu", 0, 3)


def test_format_control_reprojects_with_the_formats_bytes(engine):
    t = widgets.tuner(synthetic_profile(), prompt_tokens=64, new_tokens=8)
    t.budget.value = 56
    t.run_button.click()
    bf16 = t.points[-1]
    t.expert_format.value = "int4"
    t.run_button.click()
    int4 = t.points[-1]
    assert t.error.value == "" and t.target.shape.expert_format == "int4-g64"
    assert int4.budget_gib < 0.35 * bf16.budget_gib  # the same 56 experts take far less memory
    measured = widgets.tuner(engine)
    assert measured.expert_format.disabled and measured.expert_format.value == "fp32"
