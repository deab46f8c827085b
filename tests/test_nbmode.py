"""The notebooks' one switch: smoke vs full sizes, chosen from the environment."""

from __future__ import annotations

import pytest
import torch

from fiddler_nb.notebook import nbmode


def test_environment_forces_the_mode(monkeypatch):
    monkeypatch.setenv(nbmode.MODE_ENV, "full")
    assert nbmode.mode() == ("full", "FIDDLER_NB_MODE=full")
    assert nbmode.sizes().mode == "full" and nbmode.sizes().model == nbmode.RANDOM_MODEL
    monkeypatch.setenv(nbmode.MODE_ENV, "SMOKE")
    assert nbmode.sizes().mode == "smoke" and nbmode.sizes().model == "tiny"
    monkeypatch.setenv(nbmode.MODE_ENV, "huge")
    with pytest.raises(ValueError, match="smoke, full"):
        nbmode.sizes()


def test_default_follows_cuda(monkeypatch):
    monkeypatch.delenv(nbmode.MODE_ENV, raising=False)
    expected = "full" if torch.cuda.is_available() else "smoke"
    assert nbmode.sizes().mode == expected and nbmode.sizes().reason


def test_model_env_and_smoke_is_smaller(monkeypatch):
    monkeypatch.setenv(nbmode.MODEL_ENV, "/some/checkpoint")
    assert nbmode.sizes("full").model_path() == "/some/checkpoint"
    smoke, full = nbmode.SMOKE, nbmode.FULL
    assert smoke.prompt_tokens < full.prompt_tokens and smoke.new_tokens < full.new_tokens
    assert max(smoke.prompt_sweep) < max(full.prompt_sweep) and smoke.profile_quick
    with pytest.raises(ValueError, match="unknown notebook mode"):
        nbmode.sizes("medium")


def test_sizes_helpers():
    s = nbmode.sizes("smoke")
    assert s.budgets(32) == [0, 11, 21, 32] and s.budgets(1) == [0, 1]
    assert len(s.prompt()) == s.prompt_tokens and len(s.prompt(7)) == 7
    prompts = s.calibration_set()
    assert len(prompts) == s.calibration_prompts == len(set(prompts))
    assert s.expert_budget(32) == 32 // nbmode.OFFLOAD_SHARE


def test_full_mode_budget_is_a_24gb_card_share():
    from fiddler_nb.benchmarks.random_checkpoint import CARD_24GB, scaled_expert_budget

    full = nbmode.sizes("full")
    assert full.expert_budget(16) == scaled_expert_budget("mixtral-8x7b", CARD_24GB,
                                                          full.random_layers)


def test_load_calibrates_then_places_the_budget(mixtral_path, recwarn):
    s = nbmode.sizes("smoke")
    eng = s.load(mixtral_path)
    assert eng.popularity is not None and eng.popularity.tokens > 0
    assert eng.config.placement == "popularity"
    assert len(eng.placement) == s.expert_budget(eng.num_layers * eng.num_experts)
    assert not [w for w in recwarn if "no routing profile" in str(w.message)]


def test_output_dir_is_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FIDDLER_NB_CACHE", str(tmp_path))
    assert nbmode.output_dir() == tmp_path / "notebooks" and nbmode.output_dir().is_dir()
