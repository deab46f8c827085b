"""Curve / LatencyModel behaviour and the exactness of assign_layer against brute force."""

from __future__ import annotations

import random

import pytest

from fiddler_nb.runtime.policies.latency import Curve, LatencyModel, assign_layer, brute_force_assign


def _synthetic_model() -> LatencyModel:
    # CPU: 10 ms fixed + 1 ms/token from 1 to 64 tokens; GPU nearly flat; link 10 GB/s
    cpu = Curve((1.0, 8.0, 64.0), (11.0, 18.0, 74.0))
    gpu = Curve((1.0, 64.0), (0.5, 1.0))
    return LatencyModel(cpu, gpu, h2d_gbps=10.0, activation_ms_per_token=0.01, source="test")


def test_curve_interpolates_between_points():
    c = Curve((1.0, 3.0), (2.0, 6.0))
    assert c(2.0) == pytest.approx(4.0), "midpoint of a linear segment"
    assert c(1.0) == 2.0 and c(3.0) == 6.0, "curve must pass through its points"


def test_curve_extrapolates_with_last_slope_and_clamps_below():
    c = Curve((1.0, 2.0, 4.0), (1.0, 2.0, 6.0))
    assert c(8.0) == pytest.approx(14.0), "beyond the last point: last segment's slope (2/token)"
    assert c(0.5) == 1.0, "below the first point: the first value (fixed overheads)"


def test_curve_is_monotone_even_from_noisy_points():
    c = Curve((1.0, 2.0, 4.0, 8.0), (5.0, 4.0, 6.0, 5.5))
    xs = [0.5 + 0.25 * i for i in range(60)]
    ys = [c(x) for x in xs]
    assert all(b >= a for a, b in zip(ys, ys[1:])), f"latency must not drop with more tokens: {ys}"


@pytest.mark.parametrize("tokens, ms", [((), ()), ((1.0, 1.0), (1.0, 2.0)), ((1.0,), (1.0, 2.0))])
def test_curve_rejects_bad_points(tokens, ms):
    with pytest.raises(ValueError):
        Curve(tokens, ms)


def test_latency_model_paths_and_crossover():
    m = _synthetic_model()
    expert_bytes = 100_000_000  # 100 MB at 10 GB/s = 10 ms of transfer
    assert m.transfer_ms(expert_bytes) == pytest.approx(10.0)
    assert m.cpu_path_ms(4) == pytest.approx(m.cpu_ms(4) + 0.04)
    n_star = m.crossover_tokens(expert_bytes)
    assert n_star is not None
    assert m.transfer_path_ms(n_star, expert_bytes) < m.cpu_path_ms(n_star)
    assert n_star == 1 or m.transfer_path_ms(n_star - 1, expert_bytes) >= m.cpu_path_ms(n_star - 1)
    huge = 10**12  # 100 s of transfer: never worth it within the search range
    assert m.crossover_tokens(huge, max_tokens=1024) is None


def _random_case(rng: random.Random):
    n = rng.randint(0, 10)
    palette = [rng.choice([0.0, 1.0, 2.5, 3.0]) for _ in range(3)]  # repeated values -> ties
    cpu = [rng.choice(palette + [rng.uniform(0, 20)]) for _ in range(n)]
    transfer = [rng.choice(palette + [rng.uniform(0, 20)]) for _ in range(n)]
    if n and rng.random() < 0.3:
        transfer = list(cpu)  # equal costs on both sides
    resident = rng.choice([0.0, 0.0, rng.uniform(0, 30), 5.0])
    return cpu, transfer, resident


def test_assign_layer_matches_brute_force():
    rng = random.Random(1234)
    for case in range(300):
        cpu, transfer, resident = _random_case(rng)
        got = assign_layer(cpu, transfer, resident)
        best = brute_force_assign(cpu, transfer, resident)
        assert abs(got.makespan_ms - best) <= 1e-9, (
            f"case {case}: assign_layer makespan {got.makespan_ms} != optimum {best} for "
            f"cpu={cpu} transfer={transfer} resident={resident}")
        # the reported split must be the split of the returned choice
        cpu_sum = sum(c for c, t in zip(cpu, got.transfer) if not t)
        gpu_sum = resident + sum(x for x, t in zip(transfer, got.transfer) if t)
        assert got.cpu_ms == pytest.approx(cpu_sum, abs=1e-9)
        assert got.gpu_ms == pytest.approx(gpu_sum, abs=1e-9)


def test_assign_layer_empty_layer_is_resident_work():
    a = assign_layer([], [], resident_gpu_ms=3.0)
    assert a.transfer == () and a.makespan_ms == 3.0
