"""Placement policies are pure functions of a PlacementRequest; the registry names its policies."""

from __future__ import annotations

import pytest
import torch

from fiddler_nb.runtime.policies.placement import PlacementRequest, known_placements, make_placement

L, E = 4, 8


def _request(budget, popularity=None, seed=0):
    return PlacementRequest(L, E, budget, popularity, seed)


@pytest.mark.parametrize("name", ["popularity", "layer-balanced", "first-layers", "random", "lru", "lfu"])
@pytest.mark.parametrize("budget", [0, 1, 5, 31, 32])
def test_policies_place_exactly_the_budget(name, budget):
    counts = torch.arange(L * E).reshape(L, E)
    placed = make_placement(name).place(_request(budget, counts))
    assert len(placed) == budget
    assert all(0 <= layer < L and 0 <= e < E for layer, e in placed)


def test_none_places_nothing():
    assert make_placement("none").place(_request(10)) == frozenset()


def test_popularity_takes_the_most_used_experts_globally():
    counts = torch.zeros(L, E, dtype=torch.int64)
    counts[3, 5], counts[0, 1], counts[2, 2] = 100, 50, 10
    placed = make_placement("popularity").place(_request(2, counts))
    assert placed == {(3, 5), (0, 1)}


def test_popularity_without_profile_balances_silently():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fallback is said once, in the engine's notes
        placed = make_placement("popularity").place(_request(8))
    assert placed == make_placement("layer-balanced").place(_request(8))


def test_engine_says_the_popularity_fallback_in_its_repr(mixtral_path):
    import fiddler_nb as fnb

    eng = fnb.load(mixtral_path, expert_budget=4)
    assert "no routing profile yet" in repr(eng) and eng.notes
    fnb.calibrate(eng, ["hello world"])
    assert "no routing profile" not in repr(eng) and not eng.notes


def test_layer_balanced_spreads_over_layers():
    placed = make_placement("layer-balanced").place(_request(6))
    per_layer = [sum(1 for layer, _ in placed if layer == i) for i in range(L)]
    assert per_layer == [2, 2, 1, 1]


def test_first_layers_fills_whole_layers_in_order():
    placed = make_placement("first-layers").place(_request(10))
    assert {layer for layer, _ in placed} == {0, 1}
    assert sum(1 for layer, _ in placed if layer == 0) == E


def test_random_is_seeded():
    a = make_placement("random").place(_request(7, seed=1))
    assert a == make_placement("random").place(_request(7, seed=1))
    assert a != make_placement("random").place(_request(7, seed=2))


def test_unknown_policy_lists_known_names():
    with pytest.raises(ValueError) as err:
        make_placement("hottest")
    for name in known_placements():
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["lru", "lfu"])
def test_caches_start_layer_balanced(name):
    assert make_placement(name).place(_request(6)) == make_placement("layer-balanced").place(_request(6))


def test_lru_evicts_least_recently_used():
    cache = make_placement("lru")
    cache.place(_request(L * 2))  # two slots per layer: experts 0 and 1
    cache.touch(0, [0])  # expert 0 used last -> expert 1 is the LRU victim
    assert cache.admit(0, 5, frozenset({0, 1})) == 1
    assert cache.admit(0, 6, frozenset({0, 5})) == 0
    assert cache.admit(1, 3, frozenset()) is None, "a layer without slots caches nothing"


def test_lfu_evicts_least_frequently_used():
    cache = make_placement("lfu")
    cache.place(_request(L * 2))
    cache.touch(0, [1, 1, 0])  # expert 1 used more often, expert 0 more recently
    assert cache.admit(0, 7, frozenset({0, 1})) == 0


def test_lru_engine_caches_misses(mixtral_path):
    import fiddler_nb as fnb

    engine = fnb.load(mixtral_path, expert_budget=8, placement="lru", execution="transfer")
    before = engine.placement
    stats = engine.generate("cache me if you can", max_new_tokens=4).stats
    assert len(engine.placement) == 8, "a cache keeps its size"
    assert engine.placement != before, "misses must be admitted into the cache"
    assert sum(stats.decode.transfers) + sum(stats.prefill.transfers) > 0
    assert sum(stats.decode.resident_pairs) > 0, "recently used experts must hit"
