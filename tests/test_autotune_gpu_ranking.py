"""The GPU side of autotune that runs anywhere: the search space and the planner's projections
for a CUDA engine, computed from the engine's real shape (nothing is timed, nothing faked about
a GPU: these are the pure projection and enumeration steps, labelled projected)."""

from __future__ import annotations

import types

import pytest

import fiddler_nb as fnb
from fiddler_nb import tune
from fiddler_nb.runtime.generation.plan_file import PlanSettings

from test_widgets import synthetic_profile


@pytest.fixture()
def engine(mixtral_path):
    return fnb.load(mixtral_path, expert_budget=8, placement="layer-balanced", execution="cpu")


def test_engine_shape_matches_the_engine(engine):
    shape = tune.engine_shape(engine)
    assert shape.expert_bytes == engine.expert_bytes
    assert (shape.num_layers, shape.num_experts, shape.top_k, shape.hidden_size) == (4, 8, 2, 64)
    assert shape.non_expert_bytes > 0


def test_projection_on_a_gpu_engine_labels_every_candidate(engine):
    as_cuda = types.SimpleNamespace(**{k: getattr(engine, k) for k in (
        "layers", "model", "num_layers", "num_experts", "expert_bytes", "path", "popularity")},
        device=types.SimpleNamespace(type="cuda"))
    work = fnb.Workload(64, 16)
    space = tune.SearchSpace(tune.budget_options(32), ("layer-balanced", "lru"),
                             tune.GPU_EXECUTIONS, (2, 1))
    candidates = tune.enumerate_candidates(space)
    assert len(candidates) == 5 * 2 * 3 * 2
    projected, source = tune._default_projection(synthetic_profile())(as_cuda, work, candidates)
    assert source.startswith("planner (projected")
    assert set(projected) == set(candidates)
    assert all(p > 0 and d > 0 for p, d in projected.values())
    ranked = tune.rank(candidates, tune._seconds_of(projected, work), default_threads=2)
    best = ranked[0]
    assert best.threads == 2  # among equal projections the engine's own thread count first
    for c in candidates:  # each strategy: its default-threads candidate before the other
        if c.threads == 1:
            assert ranked.index(c) > ranked.index(PlanSettings(
                c.expert_budget, c.placement, c.execution, 2))
    assert tune.workload_seconds(work, *projected[best]) == min(
        tune.workload_seconds(work, *v) for v in projected.values())


def test_cpu_engine_gets_no_projection_and_a_threads_only_space(engine):
    projected, source = tune._default_projection(None)(engine, fnb.Workload(8, 4), [])
    assert projected == {} and source.startswith("none (no GPU")
    space = tune.search_space(engine, fnb.Workload(8, 4), (None,), threads=(3, 1))
    assert space.budgets == (32,) and space.threads == (3, 1)
    assert space.placements == ("layer-balanced",) and space.executions == ("cpu",)
    assert tune.enumerate_candidates(space) == [
        PlanSettings(32, "layer-balanced", "cpu", 3), PlanSettings(32, "layer-balanced", "cpu", 1)]
