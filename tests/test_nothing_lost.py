"""Nothing is lost on failure (issue 11): a refused change leaves the engine exactly as it was,
and an interrupted generation leaves it generating the same tokens as before."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import fiddler_nb as fnb

PROMPT = torch.tensor([[11, 5, 17, 3, 42, 8]])  # [1, T]
NEW = 6


def state_of(eng: fnb.Engine) -> dict:
    """Everything a re-configuration may touch: settings, placement, policy, cache, stats."""
    st = eng._state
    return {"config": eng.config, "placement": eng.placement, "latency": eng.latency,
            "popularity": eng.popularity, "execution": type(st.execution).__name__,
            "cache": type(st.cache).__name__, "stats": copy.deepcopy(vars(st.stats)),
            "resident": [st.store.residents(i) for i in range(eng.num_layers)],
            "cuda_bytes": torch.cuda.memory_allocated() if torch.cuda.is_available() else 0}


@pytest.fixture(params=["layer-balanced", "lru"])
def engine(request, mixtral_path):
    eng = fnb.load(mixtral_path, expert_budget=8, placement=request.param)
    eng.reference = eng.generate(PROMPT, max_new_tokens=NEW).token_ids
    yield eng
    eng.close()


@pytest.mark.parametrize("change", [
    lambda e: e.set_expert_budget(10**6),
    lambda e: e.set_expert_budget(-1),
    lambda e: e.set_expert_budget(2.5),
    lambda e: e.reconfigure(expert_budget=4, placement="no-such-policy"),
    lambda e: e.reconfigure(expert_budget=4, execution="no-such-execution"),
    lambda e: e.reconfigure(expert_budget=10**6, placement="first-layers", execution="cpu"),
    lambda e: e.set_placement(None),
    lambda e: e.set_execution("gpu-only"),
    lambda e: e.set_popularity(fnb.Popularity(torch.ones(2, 3, dtype=torch.int64))),
    lambda e: fnb.use_profile(e, "/nonexistent/profile.json"),
    lambda e: fnb.calibrate(e, ["fine", ""]),
], ids=["budget-too-big", "budget-negative", "budget-float", "bad-placement", "bad-execution",
        "reconfigure-too-big", "placement-none", "unknown-execution", "popularity-shape",
        "missing-profile", "calibrate-empty-prompt"])
def test_a_refused_change_leaves_the_engine_as_it_was(engine, change):
    before = state_of(engine)
    with pytest.raises(fnb.FiddlerError):
        change(engine)
    assert state_of(engine) == before
    assert torch.equal(engine.generate(PROMPT, max_new_tokens=NEW).token_ids, engine.reference)


class _Interrupt(BaseStreamer):
    """A streamer that raises KeyboardInterrupt after `after` pieces (Ctrl-C in a notebook)."""

    def __init__(self, after: int):
        self.after, self.seen = after, 0

    def put(self, value) -> None:
        self.seen += 1
        if self.seen > self.after:
            raise KeyboardInterrupt

    def end(self) -> None:
        pass


class _StopByInterrupt(StoppingCriteria):
    def __init__(self, after: int):
        self.after, self.calls = after, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@pytest.mark.parametrize("how", ["streamer", "stopping-criterion"])
def test_an_interrupted_generation_leaves_the_engine_usable(engine, how):
    kwargs = ({"streamer": _Interrupt(after=2)} if how == "streamer" else
              {"stopping_criteria": StoppingCriteriaList([_StopByInterrupt(after=2)])})
    with pytest.raises(KeyboardInterrupt):
        engine.generate(PROMPT, max_new_tokens=NEW, **kwargs)
    assert engine._state.stats.phase == "prefill", "the next generation would be mis-timed"
    again = engine.generate(PROMPT, max_new_tokens=NEW)
    assert torch.equal(again.token_ids, engine.reference)
    assert again.stats.new_tokens == NEW


def test_a_prompt_beyond_the_context_is_refused_with_the_numbers(engine):
    limit = engine.max_context
    with pytest.raises(fnb.ContextLengthError, match=rf"{PROMPT.shape[1]} tokens \+ "
                       rf"max_new_tokens={limit} .* context of {limit} tokens"):
        engine.generate(PROMPT, max_new_tokens=limit)
    # the caller may opt in (the tiny model has rotary positions: nothing breaks)
    out = engine.generate(PROMPT, max_new_tokens=2, allow_beyond_context=True)
    assert out.token_ids.shape == (1, 2)


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([[1.5, 2.0]]), "must be integers"),
    (torch.tensor([[10**6]]), "outside this model's vocabulary"),
    (torch.tensor([[-1, 3]]), "outside this model's vocabulary"),
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
    (torch.zeros(2, 2, 2, dtype=torch.long), r"\[T\] or \[B, T\]"),
])
def test_bad_token_ids_are_named(engine, ids, message):
    with pytest.raises(fnb.InputError, match=message):
        engine.generate(ids, max_new_tokens=2)


def test_issue_examples_are_fiddler_errors(mixtral_path, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    bad_json = tmp_path / "junk.json"
    bad_json.write_text("{'single': quotes}")
    with pytest.raises(fnb.DeviceError, match="tpu"):
        fnb.load(mixtral_path, device="tpu")
    with pytest.raises(fnb.FileFormatError, match="not a fiddler_nb popularity file"):
        fnb.load(mixtral_path, popularity=junk)
    with pytest.raises(fnb.FileFormatError, match="not readable JSON"):
        fnb.load(mixtral_path, profile=bad_json)
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for old callers
        fnb.Popularity.load(tmp_path / "missing.safetensors")


def test_closed_engine_error_is_both_kinds(mixtral_path):
    eng = fnb.load(mixtral_path, expert_budget=0)
    eng.close()
    for kind in (fnb.FiddlerError, RuntimeError):
        with pytest.raises(kind, match="closed"):
            eng.generate(PROMPT)


def test_cli_prints_one_line_and_no_warning(mixtral_path, capsys):
    from fiddler_nb.cli.main import main

    assert main(["generate", "--model", mixtral_path, "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr()
    assert "Warning" not in out.err and "warn(" not in out.err
    assert "no routing profile yet" in out.out  # said once, in the engine's line
    assert main(["generate", "--model", mixtral_path, "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fiddler-nb: error: unknown device 'tpu'") and len(err[-1]) < 200


def test_a_plan_that_does_not_fit_leaves_the_engine_as_it_was(engine):
    from fiddler_nb.runtime.generation.plan_file import Plan, PlanSettings

    plan = Plan(model=str(engine.path), workload=fnb.Workload(16, 4),
                settings=PlanSettings(expert_budget=10**6, placement="first-layers",
                                      execution="cpu", threads=1),
                rows=(), machine="test", device="cpu", dtype="float32", reason="test",
                measured_prompt_tokens=16, measured_new_tokens=4, seconds_limit=1.0,
                seconds_used=0.0)
    before = state_of(engine)
    with pytest.raises(fnb.BudgetError):
        plan.apply(engine)
    assert state_of(engine) == before and engine.workload is None
    assert torch.equal(engine.generate(PROMPT, max_new_tokens=NEW).token_ids, engine.reference)


def test_a_plan_with_an_unknown_policy_is_a_damaged_file(tmp_path):
    from fiddler_nb.runtime.generation.plan_file import Plan

    data = {"format": "fiddler_nb.plan", "version": 1}
    path = tmp_path / "p.json"
    path.write_text(__import__("json").dumps(data))
    with pytest.raises(fnb.FileFormatError):
        Plan.load(path)
