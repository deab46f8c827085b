"""Calibration records routing counts; popularity files round-trip; placement follows them."""

from __future__ import annotations

import pytest
import torch

import fiddler_nb as fnb


def test_calibrate_counts_every_routed_pair(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=6, placement="popularity")
    pop = fnb.calibrate(engine, ["one prompt", "and another, longer prompt"])
    top_k = engine.model.config.num_experts_per_tok
    assert pop.counts.shape == (engine.num_layers, engine.num_experts)
    assert (pop.counts.sum(dim=1) == pop.tokens * top_k).all()
    want = make_want(pop.counts, 6)
    assert engine.placement == want, "popularity placement must follow the new counts"


def make_want(counts, budget):
    slots = sorted(((int(counts[l, e]), l, e) for l in range(counts.shape[0])
                    for e in range(counts.shape[1])), key=lambda s: (-s[0], s[1], s[2]))
    return frozenset((l, e) for _, l, e in slots[:budget])


def test_popularity_round_trip_and_load_argument(tmp_path, mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4)
    pop = fnb.calibrate(engine, "calibration text")
    path = pop.save(tmp_path / "pop.safetensors")
    again = fnb.Popularity.load(path)
    assert torch.equal(again.counts, pop.counts) and again.tokens == pop.tokens
    engine2 = fnb.load(mixtral_path, expert_budget=4, popularity=path)
    assert engine2.placement == engine.placement


def test_popularity_of_another_model_is_rejected(mixtral_path):
    engine = fnb.load(mixtral_path, expert_budget=4)
    with pytest.raises(ValueError, match="record it on this model"):
        engine.set_popularity(fnb.Popularity(torch.ones(2, 3, dtype=torch.int64)))


def test_missing_popularity_file(mixtral_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate"):
        fnb.load(mixtral_path, popularity=tmp_path / "none.safetensors")
