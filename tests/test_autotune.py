"""autotune: pure ranking, "the best of what it measured" under a fake clock, formats through an
injected loader, Plan save/load validation, and load(plan=...) reproducing the settings."""

from __future__ import annotations

import json
import math

import pytest
import torch

import fiddler_nb as fnb
from fiddler_nb import tune
from fiddler_nb.runtime.errors import FiddlerError
from fiddler_nb.runtime.generation.plan_file import TIME_LIMIT_STATUS, PlanRow, PlanSettings

WORK = fnb.Workload(prompt_tokens=16, new_tokens=5)
STEP_S = 10.0  # what one fake measurement takes on the fake clock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_measure(speeds: dict, clock: FakeClock, calls: list):
    """Measured tokens/s by (threads, format); each call advances the clock by STEP_S."""

    def measure(engine, workload, new_tokens):
        fmt = engine.expert_dtype
        key = (engine.config.threads, None if fmt == "fp32" else fmt)  # fp32: the tiny's own
        calls.append(key)
        clock.now += STEP_S
        return tune.Measured(*speeds[key])

    return measure


@pytest.fixture()
def engine(mixtral_path):
    return fnb.load(mixtral_path, expert_budget=8, placement="layer-balanced", execution="cpu")


# ---- pure decisions --------------------------------------------------------------------------
def test_options_and_workload_seconds():
    assert tune.thread_options(16) == (16, 8, 1) and tune.thread_options(2) == (2, 1)
    assert tune.thread_options(1) == (1,)
    assert tune.budget_options(8) == (8, 6, 4, 2, 0) and tune.budget_options(0) == (0,)
    assert tune.workload_seconds(fnb.Workload(100, 11, batch=2), 200.0, 10.0) == 1.0 + 2.0
    assert tune.workload_seconds(WORK, 0.0, 10.0) == math.inf


def test_rank_follows_projections_then_default_threads_then_more_threads():
    a, b, c, d = (PlanSettings(8, "popularity", "auto", t) for t in (1, 2, 4, 8))
    e = PlanSettings(0, "popularity", "cpu", 2)
    projected = {a: 2.0, b: 2.0, c: 2.0, d: 2.0, e: 1.0}
    assert tune.rank([a, b, c, d, e], projected, default_threads=2) == [e, b, d, c, a]
    assert tune.rank([a, b, c], {}, default_threads=1) == [a, c, b]


def test_best_row_ignores_unmeasured_rows():
    s1, s2 = PlanSettings(1, "popularity", "auto", 1), PlanSettings(2, "popularity", "auto", 1)
    rows = [PlanRow(s1, TIME_LIMIT_STATUS, projected_prefill_tps=1e9, projected_decode_tps=1e9),
            PlanRow(s2, "measured", 10.0, 5.0, 3.0), PlanRow(s1, "failed: x")]
    assert tune.best_row(rows).settings == s2
    assert tune.best_row(rows[:1]) is None


def test_tie_rule_keeps_the_simpler_setting_and_separation_picks_the_leader():
    from fiddler_nb.measure.compare import decide, refine_targets

    one, two = PlanSettings(8, "none", "cpu", 1), PlanSettings(8, "none", "cpu", 2)
    key = tune.simplicity(default_threads=2, current=(8, "none", "cpu"), formats=(None,))
    noisy = {one: [0.95, 1.05, 1.0, 0.9], two: [1.0, 1.1, 0.98, 1.02]}  # one looks faster
    tie = decide(noisy, key)
    assert tie.fastest == one and tie.tied == (two,) and tie.best == two, "tied: default threads"
    apart = {one: [0.50, 0.52, 0.51], two: [1.0, 1.1, 0.98]}
    sep = decide(apart, key)
    assert sep.separated and sep.best == one
    assert refine_targets(apart) == [], "separated: nothing more to measure"
    assert set(refine_targets(noisy)) == {one, two}, "tied: measure both leaders again"
    assert refine_targets({one: [0.5], two: [1.0]}) == [one, two], "no interval yet"
    # without an interval only a gap beyond the unknown noise counts
    assert decide({one: [0.5], two: [1.0]}, key).best == one
    assert decide({one: [0.9], two: [1.0]}, key).best == two


def test_autotune_spends_its_time_on_the_leaders_and_records_the_tie(engine):
    clock, calls = FakeClock(), []
    wobble = (1.0, 1.1, 0.9)  # the same speed for both, +-10% run to run

    def measure(eng, workload, new_tokens):
        calls.append(eng.config.threads)
        clock.now += STEP_S
        f = wobble[calls.count(calls[-1]) % len(wobble)]
        return tune.Measured(100.0 * f, 10.0 * f)

    engine.set_threads(2)
    plan = fnb.autotune(engine, WORK, seconds=200, threads=(2, 1), progress=False,
                        measure=measure, clock=clock)
    assert len(calls) > 2 and calls.count(1) >= 3 and calls.count(2) >= 3, "leaders re-measured"
    assert plan.settings.threads == 2 and "tied within the noise" in plan.reason
    assert "kept the default thread count" in plan.reason
    rows = {r.settings.threads: r for r in plan.rows}
    assert rows[1].samples >= 3 and rows[1].measured_workload_s_low is not None
    assert "(IQR)" in plan.table() and plan.seconds_used <= 200
    assert fnb.Plan.from_dict(plan.to_dict()) == plan


# ---- the loop, with a fake clock ---------------------------------------------------------------
def test_autotune_returns_the_best_of_what_it_measured(engine):
    clock, calls = FakeClock(), []
    # 1 thread would be fastest but is ranked last and the time runs out before it
    speeds = {(4, None): (100.0, 10.0), (2, None): (200.0, 20.0), (1, None): (900.0, 90.0)}
    engine.set_threads(4)  # the engine's own count is measured first
    plan = fnb.autotune(engine, WORK, seconds=25, threads=(4, 2, 1), progress=False,
                        measure=fake_measure(speeds, clock, calls), clock=clock)
    assert calls == [(4, None), (2, None)], "measured in rank order until the limit"
    assert plan.settings.threads == 2
    by_thr = {r.settings.threads: r for r in plan.rows}
    assert by_thr[1].status == TIME_LIMIT_STATUS and by_thr[1].measured_decode_tps is None
    assert by_thr[2].measured_decode_tps == 20.0 and by_thr[2].measured_prefill_tps == 200.0
    assert by_thr[2].projected_decode_tps is None  # CPU: nothing projected, never mixed in
    assert plan.seconds_used == 20.0 and "1 not measured (time limit)" in plan.reason
    assert any("do not change speed" in n for n in plan.notes)
    assert engine.config.threads == 2, "the engine is left with the chosen settings"
    assert "meas. decode" in plan.table() and "proj. decode" in plan.table()


def test_a_better_projection_does_not_beat_a_better_measurement(engine):
    clock, calls = FakeClock(), []
    speeds = {(2, None): (100.0, 10.0), (1, None): (300.0, 30.0)}

    def project(eng, workload, candidates):  # the 2-thread candidate looks far better on paper
        return {c: ((1e6, 1e6) if c.threads == 2 else (1.0, 1.0)) for c in candidates}, "fake"

    plan = fnb.autotune(engine, WORK, seconds=100, threads=(2, 1), progress=False, clock=clock,
                        measure=fake_measure(speeds, clock, calls), project=project)
    assert calls[0] == (2, None) and plan.settings.threads == 1
    row = next(r for r in plan.rows if r.settings.threads == 2)
    assert (row.projected_decode_tps, row.measured_decode_tps) == (1e6, 10.0)
    assert plan.projection_source == "fake"


def test_formats_are_tried_only_when_asked_each_through_a_reload(mixtral_path):
    clock, calls, loads = FakeClock(), [], []

    def loader(path, workload, fmt):
        loads.append(fmt)
        return fnb.load(path, workload=workload, expert_budget=8, placement="layer-balanced",
                        expert_dtype=fmt)

    speeds = {(1, "bf16"): (100.0, 10.0), (1, "int8"): (100.0, 40.0)}
    plan = fnb.autotune(mixtral_path, WORK, seconds=100, expert_dtypes=("bf16", "int8"),
                        threads=(1,), progress=False, clock=clock, loader=loader,
                        measure=fake_measure(speeds, clock, calls))
    # a lone candidate per format is measured until it has an interval (3 runs), then the next
    assert loads == ["bf16", "int8"] and calls == [(1, "bf16")] * 3 + [(1, "int8")] * 3
    assert plan.settings.expert_dtype == "int8"
    assert plan.load_kwargs()["expert_dtype"] == "int8"


def test_the_real_loader_reloads_each_format(mixtral_path):
    plan = fnb.autotune(mixtral_path, fnb.Workload(8, 3), seconds=60, threads=(1,),
                        expert_dtypes=("fp32", "int8"), progress=False)
    measured = {r.settings.expert_dtype for r in plan.rows if r.measured}
    assert measured == {"fp32", "int8"} and plan.settings.expert_dtype in measured
    with pytest.raises(FiddlerError, match="unknown expert_dtype"):
        fnb.autotune(mixtral_path, WORK, seconds=5, expert_dtypes=("int3",), progress=False)


def test_real_autotune_on_tiny_measures_threads(engine):
    plan = fnb.autotune(engine, fnb.Workload(8, 4), seconds=30, progress=False)
    measured = [r for r in plan.rows if r.measured]
    assert measured and all(r.measured_decode_tps > 0 for r in measured)
    assert plan.settings in [r.settings for r in measured]
    best = min(measured, key=lambda r: r.measured_workload_s)
    if "tied within the noise" in plan.reason:  # kept the simpler setting: the default threads
        assert plan.settings.threads == (engine.config.threads or torch.get_num_threads())
    else:
        assert plan.settings == best.settings and "ahead by more than the noise" in plan.reason
    assert all(r.samples >= 1 for r in measured)
    assert plan.machine and plan.device == "cpu" and plan.measured_new_tokens == 4


# ---- plans on disk -----------------------------------------------------------------------------
def _plan(engine):
    clock = FakeClock()
    speeds = {(2, None): (100.0, 10.0), (1, None): (300.0, 30.0)}
    return fnb.autotune(engine, WORK, seconds=100, threads=(2, 1), progress=False, clock=clock,
                        measure=fake_measure(speeds, clock, []))


def test_plan_save_load_round_trip(engine, tmp_path):
    plan = _plan(engine)
    path = plan.save(tmp_path / "plan.json")
    assert fnb.Plan.load(path) == plan
    assert json.loads(path.read_text())["format"] == "fiddler_nb.plan"


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(format="something-else"), "not a fiddler_nb plan"),
    (lambda d: d.update(version=99), "plan version 99"),
    (lambda d: d.pop("settings"), "damaged plan"),
])
def test_plan_load_refuses_other_files(engine, tmp_path, change, match):
    data = _plan(engine).to_dict()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FiddlerError, match=match):
        fnb.Plan.load(path)
    path.write_text("not json")
    with pytest.raises(FiddlerError, match="not readable JSON"):
        fnb.Plan.load(path)
    with pytest.raises(FiddlerError, match="does not exist"):
        fnb.Plan.load(tmp_path / "missing.json")


def test_load_with_a_plan_reproduces_its_settings_and_kwargs_override(engine, mixtral_path,
                                                                      tmp_path):
    plan = _plan(engine)
    path = plan.save(tmp_path / "plan.json")
    eng = fnb.load(mixtral_path, plan=path)
    s = plan.settings
    assert (eng.config.expert_budget, eng.config.placement, eng.config.execution,
            eng.config.threads) == (s.expert_budget, s.placement, s.execution, s.threads)
    assert eng.workload == plan.workload == WORK
    over = fnb.load(mixtral_path, plan=plan, execution="transfer", threads=2, expert_budget=3)
    assert (over.config.execution, over.config.threads, over.config.expert_budget,
            over.config.placement) == ("transfer", 2, 3, s.placement)
    plain = fnb.load(mixtral_path)
    assert (plain.config.placement, plain.config.execution, plain.config.threads) == \
        ("popularity", "auto", None)
