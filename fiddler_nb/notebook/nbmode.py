"""The one switch between smoke and full runs of the tutorials.

`sizes()` decides once, from the environment, how big every notebook's run is:

* smoke -- CPU-only machines (or ``FIDDLER_NB_MODE=smoke``): the embedded tiny model, a few
  short prompts, a quick hardware profile. Every notebook finishes in well under two minutes;
  numbers show that the machinery works, not what a GPU would do.
* full -- a CUDA device (or ``FIDDLER_NB_MODE=full``): longer prompts, more budgets, the full
  profiler, so the same notebook measures the real thing.

Full mode loads a Mixtral-8x7B-shaped random checkpoint with two layers (built once, ~6 GB in
bf16) and a 24 GB card's expert budget; ``FIDDLER_NB_MODEL`` points the notebooks at any
checkpoint directory (or "tiny") instead. Notebooks read sizes from the
returned `NotebookSizes`, never from literals of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import OptionError

MODE_ENV = "FIDDLER_NB_MODE"
MODEL_ENV = "FIDDLER_NB_MODEL"
MODES = ("smoke", "full")
RANDOM_MODEL = "random"  # model name meaning: build a Mixtral-shaped random checkpoint
RANDOM_SHAPE = "mixtral-8x7b"
OFFLOAD_SHARE = 4  # smoke budget: 1/4 of the experts resident, so most run offloaded


@dataclass(frozen=True)
class NotebookSizes:
    """How big a notebook's run is; one instance per mode (see SMOKE / FULL)."""

    mode: str  # "smoke" or "full"
    reason: str  # why this mode was chosen (printed in every notebook's setup cell)
    model: str  # checkpoint directory or "tiny"
    prompt_tokens: int  # prompt length of single runs
    prompt_sweep: tuple[int, ...]  # prompt lengths of sweeps (tokens)
    new_tokens: int  # generated tokens per run
    budget_points: int  # GPU expert budgets per sweep, spread evenly from 0 to all experts
    calibration_prompts: int  # prompts fed to fnb.calibrate
    profile_quick: bool  # profiler quick mode (fewer token counts, smaller probes)
    profile_tokens: tuple[int, ...] | None  # token counts to profile; None = the mode's default
    plan_samples: int  # sampled decode tokens per layer in planner projections
    gpu_preset: str  # GPU projected when this machine has none (24 GB, as in the paper)
    random_layers: int = 2  # decoder layers of the Mixtral-shaped random model (model="random")
    autotune_seconds: float = 120.0  # fnb.autotune's time limit for measuring candidates
    chat_tokens: int = 256  # max new tokens of a chat answer

    def model_path(self) -> str:
        """The checkpoint to load: `model` as given, or for "random" a Mixtral-8x7B-shaped random
        checkpoint with `random_layers` layers, written once under the cache folder."""
        if self.model != RANDOM_MODEL:
            return self.model
        from ..benchmarks.random_checkpoint import make_random_checkpoint

        path = output_dir() / f"random-{RANDOM_SHAPE}-{self.random_layers}layers"
        return str(make_random_checkpoint(path, RANDOM_SHAPE, layers=self.random_layers))

    def expert_budget(self, total_experts: int) -> int:
        """A budget that leaves experts off the GPU: a 24 GB card's share for the random Mixtral
        (as the paper's machines), otherwise a quarter of the experts."""
        if self.model == RANDOM_MODEL:
            from ..benchmarks.random_checkpoint import CARD_24GB, scaled_expert_budget

            return scaled_expert_budget(RANDOM_SHAPE, CARD_24GB, self.random_layers)
        return total_experts // OFFLOAD_SHARE

    def load(self, model: str | None = None, calibrate: bool = True,
             placement: str = "popularity", **kwargs):
        """`fnb.load(model or self.model_path(), ...)` with `expert_budget(total)` experts resident.

        Loaded with no expert resident, then (calibrate=True) routing popularity is recorded on
        `calibration_set()` so 'popularity' placement knows the hot experts, then `placement`
        places the budget: a GPU never holds more than the budget, nothing falls back silently.
        """
        from ..api import load
        from ..runtime.engine.calibrate import calibrate as record

        eng = load(model or self.model_path(), expert_budget=0, placement="none", **kwargs)
        if calibrate:
            record(eng, self.calibration_set())
        eng.set_placement(placement)  # budget still 0: nothing is copied yet
        eng.set_expert_budget(self.expert_budget(eng.num_layers * eng.num_experts))
        return eng

    def budgets(self, total_experts: int) -> list[int]:
        """`budget_points` budgets from 0 to `total_experts`, evenly spread, no repeats."""
        points = max(2, self.budget_points)
        return sorted({round(i * total_experts / (points - 1)) for i in range(points)})

    def prompt(self, tokens: int | None = None) -> str:
        """A plain-text prompt of about `tokens` tokens (byte-level tiny tokenizer: exactly)."""
        n = self.prompt_tokens if tokens is None else tokens
        text = "The quick brown fox jumps over the lazy dog. " * (n // 10 + 1)
        return text[:n]

    def calibration_set(self) -> list[str]:
        """`calibration_prompts` distinct prompts for routing popularity."""
        topics = ("weather", "cooking", "physics", "music", "travel", "history", "code", "sport")
        return [f"Tell me about {topics[i % len(topics)]}, part {i}: " + self.prompt()
                for i in range(self.calibration_prompts)]


SMOKE = NotebookSizes(
    mode="smoke", reason="", model="tiny", prompt_tokens=32, prompt_sweep=(8, 64),
    new_tokens=8, budget_points=4, calibration_prompts=4, profile_quick=True,
    profile_tokens=(1, 8, 64),  # 3 points: enough to see the curve bend, seconds on 2 cores
    plan_samples=64, gpu_preset="quadro-rtx-6000",
    autotune_seconds=10.0,  # a few thread counts on the tiny model take about a second
    chat_tokens=200)  # long enough to watch an answer stream in the browser test
FULL = NotebookSizes(
    mode="full", reason="", model=RANDOM_MODEL, prompt_tokens=256, prompt_sweep=(16, 128, 512),
    new_tokens=32, budget_points=7, calibration_prompts=32, profile_quick=False,
    profile_tokens=None, plan_samples=256, gpu_preset="quadro-rtx-6000")


def output_dir() -> Path:
    """Where notebooks write files (profiles, popularity, models): FIDDLER_NB_CACHE/notebooks."""
    base = Path(os.environ.get("FIDDLER_NB_CACHE", Path.home() / ".cache" / "fiddler_nb"))
    out = base / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    return out


def mode() -> tuple[str, str]:
    """(mode, reason): the environment variable wins, else full exactly when CUDA is present."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced:
        if forced not in MODES:
            raise OptionError(f"{MODE_ENV}={forced!r}; use one of {', '.join(MODES)}")
        return forced, f"{MODE_ENV}={forced}"
    import torch

    if torch.cuda.is_available():
        return "full", f"CUDA device {torch.cuda.get_device_name()}"
    return "smoke", "no CUDA device; tiny sizes, timings show the mechanics only"


def sizes(which: str | None = None) -> NotebookSizes:
    """The sizes for `which` mode (default: `mode()`), with the model from FIDDLER_NB_MODEL."""
    from dataclasses import replace

    if which is None:
        which, reason = mode()
    elif which in MODES:
        reason = "asked for"
    else:
        raise OptionError(f"unknown notebook mode {which!r}; use one of {', '.join(MODES)}")
    base = SMOKE if which == "smoke" else FULL
    return replace(base, reason=reason, model=os.environ.get(MODEL_ENV, base.model))
