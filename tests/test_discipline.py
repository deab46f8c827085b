"""The measurement discipline on a fake clock with injected noise: repeats stop when the spread
is small, the interval is reported, the busy-machine note appears."""

from __future__ import annotations

import random

import pytest

import fiddler_nb as fnb
from fiddler_nb.measure import discipline as d


class FakeClock:
    """A clock that each call of `work` advances by base_ms plus noise drawn from `noise`."""

    def __init__(self, base_ms: float, noise):
        self.now, self.base_ms, self.noise, self.calls = 0.0, base_ms, noise, 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.calls += 1
        self.now += (self.base_ms + self.noise(self.calls)) / 1e3


def test_steady_samples_stop_at_min_repeats():
    clock = FakeClock(10.0, lambda i: 0.01 * (i % 2))  # 0.1% noise
    got = d.time_ms(clock.work, d.RepeatPolicy(warmup=1, min_repeats=3, max_repeats=20),
                    clock=clock, min_sample_s=0)
    assert got.repeats == 3 and got.stopped == d.STEADY
    assert got.median == pytest.approx(10.0, abs=0.02)
    assert got.low <= got.median <= got.high


def test_noisy_samples_repeat_until_budget_and_report_interval():
    rng = random.Random(0)
    clock = FakeClock(10.0, lambda i: rng.uniform(-4, 4))  # +-40%: never steady
    policy = d.RepeatPolicy(warmup=1, min_repeats=3, max_repeats=1000, rel_spread=0.05,
                            budget_s=0.2)
    got = d.time_ms(clock.work, policy, clock=clock, min_sample_s=0)
    assert got.stopped == d.BUDGET
    assert 15 <= got.repeats <= 25  # ~0.2 s of 10 ms samples
    assert 6 < got.low < got.median < got.high < 14
    assert got.rel_spread > 0.05
    assert "runs)" in got.text() and f"{got.repeats} runs" in got.text()


def test_max_repeats_caps_the_loop():
    rng = random.Random(1)
    clock = FakeClock(10.0, lambda i: rng.uniform(-4, 4))
    got = d.time_ms(clock.work, d.RepeatPolicy(min_repeats=3, max_repeats=7, budget_s=100),
                    clock=clock, min_sample_s=0)
    assert got.repeats == 7 and got.stopped == d.MAX_REPEATS


def test_noise_that_settles_stops_steady_before_budget():
    # one slow outlier among the first samples, then quiet: the IQR shrinks and the loop stops
    clock = FakeClock(10.0, lambda i: 8.0 if i == 3 else 0.0)
    got = d.time_ms(clock.work, d.RepeatPolicy(warmup=0, min_repeats=3, max_repeats=50,
                                               budget_s=100), clock=clock, min_sample_s=0)
    assert got.stopped == d.STEADY and 3 < got.repeats < 10
    assert got.median == pytest.approx(10.0)


def test_repeat_keeps_runs_and_reads_values():
    seq = iter([5.0, 4.0, 6.0, 5.0, 5.0])
    out = d.repeat(lambda: {"tps": next(seq)}, d.RepeatPolicy.fixed(4, warmup=1),
                   value=lambda r: r["tps"], unit="tok/s", clock=lambda: 0.0)
    assert [r["tps"] for r in out.runs] == [4.0, 6.0, 5.0, 5.0]  # 5.0 was the warm-up
    assert out.spread.median == 5.0 and out.spread.unit == "tok/s"
    assert out.spread.low == pytest.approx(4.75) and out.spread.high == pytest.approx(5.25)


def test_inverse_flips_the_interval():
    ms = d.Spread(10.0, 8.0, 20.0, 5, "ms")
    tps = ms.inverse(1e3, "tok/s")
    assert (tps.median, tps.low, tps.high) == (100.0, 50.0, 125.0)


def test_policy_rejects_bad_values():
    with pytest.raises(fnb.FiddlerError, match="min_repeats"):
        d.RepeatPolicy(min_repeats=5, max_repeats=2)
    with pytest.raises(fnb.FiddlerError, match="warmup"):
        d.RepeatPolicy(warmup=-1)


def _load(share: float | None, load_1m: float = 0.3, cpus: int = 2) -> d.MachineLoad:
    ticks = iter([(100, 200), (100 + round(100 * (1 - share)), 300)] if share is not None else [])
    return d.machine_load(0.1 if share is not None else 0.0, cpu_times=lambda: next(ticks),
                          sleep=lambda s: None, loadavg=lambda: load_1m, cpus=lambda: cpus)


def test_idle_probe_measures_others_share():
    assert _load(0.6).others_share == pytest.approx(0.6)
    assert _load(0.6).busy and not _load(0.1).busy


def test_busy_note_appears_with_the_spread():
    busy = d.Conditions(_load(0.1), _load(0.7, load_1m=2.52))
    note = busy.note([d.Spread(100.0, 80.0, 120.0, 9)])
    assert note.startswith("this machine was busy")
    assert "+-20%" in note and "2.52" in note and "70%" in note
    assert "read slow" not in note, "1.3 runnable threads per CPU: the spread says enough"
    loaded = d.Conditions(_load(1.0, load_1m=9.5)).note([d.Spread(100.0, 90.0, 110.0, 9)])
    assert "+-10%" in loaded and "perhaps by 5x" in loaded


def test_quiet_machine_has_no_note():
    assert d.Conditions(_load(0.05), _load(0.1)).note([d.Spread(1, 0.9, 1.1, 3)]) is None


def test_without_proc_stat_the_load_average_decides():
    assert _load(None, load_1m=3.0).busy and not _load(None, load_1m=1.5).busy
    assert "load average 3.00 on 2 CPUs" in d.Conditions(_load(None, load_1m=3.0)).note()


def test_conditions_round_trip():
    c = d.Conditions(_load(0.3), _load(0.2))
    assert d.Conditions.from_dict(c.to_dict()) == c
