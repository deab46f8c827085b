"""Fuzz the public surface with malformed values (issue 11).

Every call either succeeds or raises a `FiddlerError` whose message is one line; any other
exception fails the test with the value that caused it (hypothesis prints the example). After
each call the shared engine must still generate the same tokens, and a failed call must leave its
settings exactly as they were. Examples are bounded and derandomized so the suite is fast and
reproducible in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fiddler_nb as fnb
from fiddler_nb.cli.main import main as cli_main

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
PROMPT = torch.tensor([[5, 17, 3, 42, 8, 9]])  # [1, T] fixed ids for the same-tokens check
NEW = 4

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.binary(max_size=8), st.lists(st.integers(-3, 70), max_size=3),
    st.just(object()), st.just(torch.tensor([1.5])), st.just(Path("/nonexistent/x")),
    st.sampled_from(["cpu", "cuda", "tpu", "cuda:7", "meta", "bf16", "int4", "auto", "quick",
                     "popularity", "lru", "20GiB", "-1GiB", "1e400GiB", "tiny", "", "nan"]),
)


def check_clean(call) -> bool:
    """Run `call`; True if it succeeded, False if it raised a well-formed FiddlerError."""
    try:
        call()
    except fnb.FiddlerError as err:
        message = str(err)
        assert message and "\n" not in message, f"not a one-line message: {message!r}"
        return False
    return True


def snapshot(eng: fnb.Engine) -> tuple:
    state = eng._state
    return (eng.config, eng.placement, eng.latency, eng.popularity, eng.closed,
            type(state.execution).__name__, state.cache is None)


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    eng = fnb.load(tiny_checkpoints["mixtral"], expert_budget=8, placement="layer-balanced")
    eng.baseline = eng.generate(PROMPT, max_new_tokens=NEW).token_ids
    yield eng
    eng.close()


def assert_unchanged(eng: fnb.Engine, before: tuple | None) -> None:
    if before is not None:
        assert snapshot(eng) == before, "a failed call changed the engine"
    again = eng.generate(PROMPT, max_new_tokens=NEW).token_ids
    assert torch.equal(again, eng.baseline), "the engine generates other tokens after the call"


def _restore(eng: fnb.Engine, before: tuple) -> None:
    cfg = before[0]
    eng.reconfigure(expert_budget=cfg.expert_budget, placement=cfg.placement,
                    execution=cfg.execution)
    eng.set_threads(cfg.threads)


# ---- loading -----------------------------------------------------------------------------
LOAD_ARGS = ["device", "dtype", "expert_budget", "placement", "execution", "gpu_memory",
             "expert_dtype", "group_size", "threads", "workload", "plan", "scratch_slots", "seed",
             "popularity", "profile"]


@settings(FUZZ, max_examples=45)
@given(arg=st.sampled_from(LOAD_ARGS), value=junk)
def test_load_with_a_malformed_argument(mixtral_path, arg, value):
    built = []
    ok = check_clean(lambda: built.append(fnb.load(mixtral_path, **{arg: value})))
    for eng in built:
        eng.close()
    assert ok == bool(built)


@FUZZ
@given(path=junk)
def test_load_with_a_malformed_path(path):
    if path == "tiny":
        return  # the embedded model: a valid path
    check_clean(lambda: fnb.load(path))


# ---- generation --------------------------------------------------------------------------
token_tensors = st.builds(
    lambda dtype, shape, fill: torch.full(shape, fill).to(dtype),
    st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8,
                     torch.float32, torch.bool]),
    st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple),
    st.integers(-3, 1100))
prompts = st.one_of(junk, token_tensors, st.lists(st.one_of(st.text(max_size=6), junk), max_size=3))


@settings(FUZZ, max_examples=60)
@given(prompt=prompts)
def test_generate_with_odd_prompts(engine, prompt):
    before = snapshot(engine)
    check_clean(lambda: engine.generate(prompt, max_new_tokens=2))
    assert_unchanged(engine, before)


@FUZZ
@given(max_new=st.one_of(st.integers(-2, 3), st.integers(1 << 16, 10**12), junk),
       mask=st.one_of(st.none(), junk, token_tensors))
def test_generate_with_odd_lengths_and_masks(engine, max_new, mask):
    """Lengths beyond the tiny model's context (1024) must be refused, not generated."""
    before = snapshot(engine)
    kwargs = {} if mask is None else {"attention_mask": mask}
    check_clean(lambda: engine.generate(PROMPT, max_new_tokens=max_new, **kwargs))
    assert_unchanged(engine, before)


@FUZZ
@given(prompt=prompts)
def test_logits_and_trace_with_odd_inputs(engine, prompt):
    before = snapshot(engine)
    check_clean(lambda: engine.logits(prompt))
    check_clean(lambda: engine.trace_decode_step(prompt))
    assert_unchanged(engine, before)


# ---- re-configuration --------------------------------------------------------------------
@FUZZ
@given(budget=st.one_of(st.integers(-3, 40), junk), placement=st.one_of(st.sampled_from(
    fnb.policies.known_placements()), junk), execution=st.one_of(st.sampled_from(
        fnb.policies.known_executions()), junk), which=st.integers(0, 3))
def test_reconfigure_with_junk(engine, budget, placement, execution, which):
    before = snapshot(engine)
    calls = [lambda: engine.set_expert_budget(budget),
             lambda: engine.reconfigure(expert_budget=budget, placement=placement,
                                        execution=execution, threads=budget),
             lambda: engine.set_placement(placement),
             lambda: engine.set_execution(execution)]
    ok = check_clean(calls[which])
    assert_unchanged(engine, None if ok else before)
    if ok:
        _restore(engine, before)


@FUZZ
@given(prompts=st.one_of(prompts, st.lists(token_tensors, max_size=2)),
       max_new=st.one_of(st.integers(-1, 2), junk))
def test_calibrate_with_junk(engine, prompts, max_new):
    before = snapshot(engine)
    ok = check_clean(lambda: fnb.calibrate(engine, prompts, max_new_tokens=max_new))
    assert_unchanged(engine, None if ok else before)
    if ok:
        engine.popularity = before[3]


# ---- files -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_files(engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    pop = fnb.Popularity(torch.arange(32, dtype=torch.int64).reshape(4, 8), 10, "fuzz")
    prof = fnb.HardwareProfile.load(Path(__file__).parents[1] / "profiles"
                                    / "dev-2core-mixtral-8x7b-bf16.json")
    return {"popularity": pop.save(root / "pop.safetensors").read_bytes(),
            "profile": json.dumps(prof.to_dict()).encode()}


def _mutations(raw: bytes):
    return st.one_of(
        st.binary(max_size=64),
        st.integers(0, len(raw)).map(lambda n: raw[:n]),  # truncated
        st.tuples(st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 255)).map(
            lambda t: raw[:t[0]] + bytes([t[1]]) + raw[t[0] + 1:]))  # one byte flipped


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["popularity", "profile"]))
def test_garbage_and_truncated_files(engine, good_files, tmp_path_factory, data, kind):
    raw = data.draw(_mutations(good_files[kind]))
    path = tmp_path_factory.mktemp("junk") / ("f.safetensors" if kind == "popularity" else "f.json")
    path.write_bytes(raw)
    reader = fnb.Popularity.load if kind == "popularity" else fnb.HardwareProfile.load
    check_clean(lambda: reader(path))
    before = snapshot(engine)
    ok = check_clean(lambda: fnb.use_profile(engine, path)) if kind == "profile" else \
        check_clean(lambda: engine.set_popularity(fnb.Popularity.load(path)))
    assert_unchanged(engine, None if ok else before)
    if ok:
        engine.popularity, _ = before[3], engine.set_latency_model(before[2])


@FUZZ
@given(profile_edit=st.dictionaries(
    st.sampled_from(["cpu_ms", "cpu_tokens", "facts", "expert_bytes", "format_version",
                     "hidden_size", "dtype", "cpu_read_gbps", "gpu_ms", "link_gbps"]),
    junk, min_size=1, max_size=3))
def test_profile_json_with_wrong_field_types(good_files, tmp_path_factory, profile_edit):
    data = json.loads(good_files["profile"])
    data.update(profile_edit)
    path = tmp_path_factory.mktemp("prof") / "p.json"
    try:
        path.write_text(json.dumps(data, default=repr))
    except ValueError:  # NaN/inf are valid Python floats but not JSON: nothing to test
        return
    check_clean(lambda: fnb.HardwareProfile.load(path))


def test_popularity_of_another_model_shape(engine, tmp_path):
    other = fnb.Popularity(torch.ones(3, 5, dtype=torch.int64)).save(tmp_path / "other.safetensors")
    before = snapshot(engine)
    with pytest.raises(fnb.FileFormatError, match=r"\[3, 5\].*4 MoE layers x 8 experts"):
        engine.set_popularity(fnb.Popularity.load(other))
    with pytest.raises(fnb.FileFormatError, match="record it on this model"):
        fnb.load(engine.path, popularity=other)
    assert_unchanged(engine, before)


# ---- measuring, planning, benchmarking ----------------------------------------------------
@settings(FUZZ, max_examples=12)
@given(shape=st.one_of(st.just("tiny"), junk), dtype=st.one_of(st.none(), junk),
       threads=st.one_of(st.none(), st.integers(-1, 3), junk),
       tokens=st.one_of(st.none(), st.lists(st.integers(-1, 1 << 17), max_size=3), junk))
def test_profile_hardware_with_junk(shape, dtype, threads, tokens):
    check_clean(lambda: fnb.profile_hardware(shape, dtype=dtype, threads=threads, quick=True,
                                             tokens=tokens))


@settings(FUZZ, max_examples=25)
@given(shape=st.one_of(st.sampled_from(["tiny", "mixtral-8x7b"]), junk),
       budgets=st.one_of(st.lists(st.one_of(st.integers(-2, 300), junk), min_size=1, max_size=2), junk),
       prompt=st.one_of(st.integers(-1, 64), junk), new=st.one_of(st.integers(-1, 8), junk),
       skew=st.one_of(st.floats(-1, 2), junk))
def test_plan_with_junk(good_files, shape, budgets, prompt, new, skew):
    prof = fnb.HardwareProfile.from_dict(json.loads(good_files["profile"]))
    check_clean(lambda: fnb.plan(shape, prof, budgets=budgets, prompt_tokens=prompt,
                                 new_tokens=new, skew=skew, samples=8))


@settings(FUZZ, max_examples=15)
@given(arg=st.sampled_from(["strategies", "budgets", "prompt_lengths", "new_tokens", "batches",
                            "repeats", "warmup", "on_mismatch", "full_shape", "seed"]),
       value=junk)
def test_bench_with_a_malformed_argument(mixtral_path, arg, value):
    """Only malformed calls are run to the end (a valid matrix takes seconds, not fuzz time)."""
    from fiddler_nb.benchmarks import matrix

    kwargs = dict(strategies=("fiddler",), budgets=(0,), prompt_lengths=(4,), new_tokens=2,
                  batches=(1,), repeats=1, warmup=0, on_mismatch="raise", full_shape=None, seed=0)
    kwargs[arg] = value
    if check_clean(lambda: matrix.validate_bench_args(**kwargs)):
        check_clean(lambda: fnb.bench(mixtral_path, progress=False, **kwargs))
    else:  # the same refusal from bench itself, before anything is loaded
        with pytest.raises(fnb.FiddlerError):
            fnb.bench("/nonexistent/never-loaded", progress=False, **kwargs)


# ---- command line ------------------------------------------------------------------------
cli_values = st.one_of(st.text(alphabet="abc-019.:/ ", max_size=8),
                       st.sampled_from(["-1", "0", "1e9", "nan", "tpu", "/nonexistent", "tiny"]))


@settings(FUZZ, max_examples=20)
@given(flag=st.sampled_from(["--expert-budget", "--max-new-tokens", "--device", "--dtype",
                             "--placement", "--execution", "--gpu-memory", "--profile",
                             "--popularity", "--model"]), value=cli_values)
def test_cli_generate_never_shows_a_traceback(mixtral_path, capsys, flag, value):
    argv = ["generate", "--model", mixtral_path, "--max-new-tokens", "2", flag, value]
    try:
        code = cli_main(argv)
    except SystemExit as exit_:  # argparse refuses it: usage + one error line, status 2
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 2), f"exit status {code} for {argv}"
    if code == 2:
        assert "Traceback" not in err and "error:" in err.splitlines()[-1]


@settings(FUZZ, max_examples=20)
@given(model=junk, arg=st.sampled_from(["device", "expert_budget", "placement", "execution",
                                        "scratch_slots", "popularity", "profile"]), value=junk)
def test_from_model_with_junk(model, arg, value):
    check_clean(lambda: fnb.from_model(model, **{arg: value}))


# ---- widget callbacks --------------------------------------------------------------------
@settings(FUZZ, max_examples=25)
@given(budget=st.one_of(st.integers(-2, 40), junk), placement=st.one_of(
    st.sampled_from(fnb.policies.known_placements()), junk),
       execution=st.one_of(st.sampled_from(fnb.policies.known_executions()), junk),
       prompt=st.one_of(st.integers(-1, 8), junk), new=st.one_of(st.integers(-1, 4), junk))
def test_tuner_callbacks_with_junk(engine, budget, placement, execution, prompt, new):
    from fiddler_nb.notebook import widgets

    before = snapshot(engine)
    ok = check_clean(lambda: widgets.run_point(engine, budget, placement, execution, prompt, new,
                                               warmup=0))
    assert_unchanged(engine, None if ok else before)
    if ok:
        _restore(engine, before)


# ---- every CLI command -------------------------------------------------------------------
CLI_CASES = [
    ["plan", "--shape", "tiny", "--gpu-preset", "l4", "--prompt-tokens", "{v}"],
    ["plan", "--shape", "tiny", "--profile", "{v}"],
    ["plan", "--shape", "tiny", "--gpu-preset", "l4", "--budgets", "{v}"],
    ["profile", "--shape", "tiny", "--threads", "{v}", "--out", "/tmp/fnb-fuzz-prof.json"],
    ["bench", "--model", "{model}", "--prompt-lengths", "{v}", "--new-tokens", "2",
     "--repeats", "1", "--warmup", "0", "--strategies", "fiddler", "--batches", "1"],
    ["bench", "--model", "{model}", "--budgets", "{v}", "--prompt-lengths", "4",
     "--new-tokens", "2", "--repeats", "1", "--warmup", "0", "--strategies", "fiddler"],
]


@settings(FUZZ, max_examples=20)
@given(case=st.integers(0, len(CLI_CASES) - 1),
       value=st.sampled_from(["-1", "x", "1e9", "/nonexistent", "nan", "99999999999", ""]))
def test_every_cli_command_refuses_in_one_line(mixtral_path, capsys, case, value):
    """Every value here is bad for every case (valid runs take seconds, not fuzz time)."""
    argv = [a.format(v=value, model=mixtral_path) for a in CLI_CASES[case]]
    try:
        code = cli_main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, f"exit status {code} for {argv}"
    assert "Traceback" not in err and "error:" in err.strip().splitlines()[-1], err


# ---- streaming, chat, workloads and plans (issue 10's surface) ----------------------------
@settings(FUZZ, max_examples=25)
@given(prompt=prompts, max_new=st.one_of(st.just(2), st.integers(-1, 3), junk))
def test_stream_with_odd_inputs(engine, prompt, max_new):
    before = snapshot(engine)

    def consume():
        stream = engine.stream(prompt, max_new_tokens=max_new)
        try:
            for _ in stream:
                pass
        finally:
            stream.close()

    check_clean(consume)
    assert_unchanged(engine, before)


messages = st.one_of(junk, st.lists(st.one_of(
    junk, st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "assistant", "system"]), junk),
                                 "content": st.one_of(st.text(max_size=8), junk)})), max_size=3))


@settings(FUZZ, max_examples=25)
@given(msgs=messages, template=st.one_of(st.none(), junk))
def test_chat_with_odd_messages(engine, msgs, template):
    before = snapshot(engine)
    check_clean(lambda: engine.chat(msgs, max_new_tokens=2, chat_template=template))
    assert_unchanged(engine, before)


@settings(FUZZ, max_examples=25)
@given(prompt=st.one_of(st.integers(-1, 4096), junk), new=st.one_of(st.integers(-1, 64), junk),
       batch=st.one_of(st.integers(-1, 4), junk), context=st.one_of(st.none(), junk),
       threads=st.one_of(st.none(), st.integers(-1, 3), junk))
def test_workload_and_threads_with_junk(engine, prompt, new, batch, context, threads):
    before = snapshot(engine)
    workload = []
    check_clean(lambda: workload.append(fnb.Workload(prompt, new, batch, context)))
    ok = check_clean(lambda: engine.set_workload(workload[0] if workload else prompt))
    ok_threads = check_clean(lambda: engine.set_threads(threads))
    if ok or ok_threads:
        engine.set_workload(None)
        engine.set_threads(before[0].threads)
    assert_unchanged(engine, before)


@pytest.fixture(scope="module")
def plan_bytes(engine, tmp_path_factory):
    from fiddler_nb.runtime.generation.plan_file import Plan, PlanSettings

    settings_ = PlanSettings(expert_budget=4, placement="layer-balanced", execution="cpu",
                             threads=1)
    plan = Plan(model=str(engine.path), settings=settings_, workload=fnb.Workload(8, 4), rows=(),
                machine="fuzz", device="cpu", dtype="float32", reason="fuzz",
                measured_prompt_tokens=8, measured_new_tokens=4, seconds_limit=1.0,
                seconds_used=0.0)
    return plan.save(tmp_path_factory.mktemp("plan") / "plan.json").read_bytes()


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_garbage_plans_leave_the_engine_as_it_was(engine, plan_bytes, tmp_path_factory, data):
    raw = data.draw(st.one_of(_mutations(plan_bytes), st.dictionaries(
        st.sampled_from(["expert_budget", "placement", "execution", "threads", "format_version",
                         "workload", "settings"]), junk, min_size=1, max_size=2).map(
        lambda edit: _edit_plan(plan_bytes, edit))))
    path = tmp_path_factory.mktemp("plan") / "p.json"
    path.write_bytes(raw)
    before = snapshot(engine)
    loaded = []
    if check_clean(lambda: loaded.append(fnb.Plan.load(path))):
        ok = check_clean(lambda: loaded[0].apply(engine))
        assert_unchanged(engine, None if ok else before)
        if ok:
            engine.set_workload(None)
            _restore(engine, before)


def _edit_plan(raw: bytes, edit: dict) -> bytes:
    data = json.loads(raw)
    for key, value in edit.items():
        target = data["settings"] if key in ("expert_budget", "placement", "execution",
                                              "threads") and isinstance(data.get("settings"), dict) else data
        target[key] = value
    try:
        return json.dumps(data, default=repr).encode()
    except ValueError:
        return raw
