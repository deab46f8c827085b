"""`fnb.autotune(path_or_engine, workload, seconds)`: pick settings by measuring the workload.

1. Enumerate candidates (`search_space`): with a GPU, expert budgets up to what fits next to the
   workload's KV cache, placements, executions and CPU thread counts; on a CPU-only machine the
   fast device *is* the CPU, so budget, placement and execution cannot change speed and only
   thread counts (and expert formats the caller allows) are tried.
2. Rank them (`rank`): by the planner's projected workload time where there is a projection (a
   GPU: measure/planner.py on a HardwareProfile), then the engine's own thread count first, then
   more threads before fewer.
3. Measure in that order (each point re-placed without reloading: `Engine.reconfigure`) until
   the time limit would be passed by one more point (at least one point is always measured),
   with a tqdm bar; then spend the rest of the time measuring the two leaders again until one
   is ahead by more than the noise (measure/compare.py). Expert formats (`expert_dtypes` with
   more than one entry) each need a reload through `loader` and get an equal share of the time.
4. Return a `Plan` (runtime/generation/plan_file.py) with the best *measured* candidate: the one
   whose measured prefill and decode tokens/s give the workload the shortest median time -- if
   it is ahead of the rest by more than the noise; if not, they are tied and the simpler setting
   is kept (the default thread count, no re-placement). The plan's reason and rows carry the
   evidence (median and interquartile range of the workload seconds, runs per candidate), and a
   note says when the machine was busy.

`measure`, `clock`, `project` and `loader` are injectable, so tests are deterministic.
This module composes the runtime (engine), the measurements (planner, machine facts) and the
api (load): it is its own layer, above api (tests/test_layers.py).

May import: runtime, measure, api. Never benchmarks, notebook or cli.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .measure.compare import Decision, decide, refine_targets
from .measure.discipline import conditions, machine_load, spread
from .measure.shapes import engine_shape
from .runtime.errors import FiddlerError
from .runtime.validate import check_float
from .runtime.generation.plan_file import (MEASURED_STATUS, TIME_LIMIT_STATUS, Plan, PlanRow,
                                PlanSettings, use_workload)
from .runtime.generation.workload import Workload

DEFAULT_SECONDS = 120.0
MEASURE_NEW_TOKENS = 32  # decode tok/s is steady after a few tokens; short points fit more in
BUDGET_POINTS = 4  # GPU budgets tried besides the largest that fits: 0, 1/4, 1/2, 3/4 of it
GPU_EXECUTIONS = ("auto", "cpu", "transfer")
WARMUP_PROMPT_TOKENS = 8  # untimed short generation before each measured point
CPU_REASON = ("no GPU: the fast device is this CPU, so the expert budget and placement do not "
              "change speed (every expert runs from CPU memory); tuned: CPU threads")


@dataclass(frozen=True)
class Measured:
    """What one measured point gave."""

    prefill_tps: float
    decode_tps: float


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions to enumerate (pure data; `search_space(engine, ...)` fills it)."""

    budgets: tuple[int, ...]
    placements: tuple[str, ...]
    executions: tuple[str, ...]
    threads: tuple[int, ...]
    formats: tuple[str | None, ...] = (None,)


# ---- pure decisions -------------------------------------------------------------------------
def thread_options(cores: int) -> tuple[int, ...]:
    """All cores, half of them, and one: the counts worth measuring (largest first)."""
    return tuple(sorted({max(1, cores), max(1, cores // 2), 1}, reverse=True))


def budget_options(fit: int, points: int = BUDGET_POINTS) -> tuple[int, ...]:
    """0 ... `fit` evenly spread, `fit` included, largest first."""
    return tuple(sorted({round(i * fit / points) for i in range(points + 1)}, reverse=True))


def enumerate_candidates(space: SearchSpace) -> list[PlanSettings]:
    return [PlanSettings(b, p, x, t, f) for f in space.formats for b in space.budgets
            for p in space.placements for x in space.executions for t in space.threads]


def workload_seconds(workload: Workload, prefill_tps: float, decode_tps: float) -> float:
    """The workload's time at these speeds: prefill of every prompt token, then the decode
    steps (the first new token comes with the prefill)."""
    if not (prefill_tps > 0 and decode_tps > 0):
        return math.inf
    prefill = workload.batch * workload.prompt_tokens / prefill_tps
    return prefill + workload.batch * (workload.new_tokens - 1) / decode_tps


def rank(candidates: Sequence[PlanSettings], projected_s: dict[PlanSettings, float],
         default_threads: int) -> list[PlanSettings]:
    """Projected workload time first (unprojected last), the default thread count first among
    equals, then more threads first; the enumeration order breaks the remaining ties."""
    order = {c: i for i, c in enumerate(candidates)}
    return sorted(candidates, key=lambda c: (projected_s.get(c, math.inf),
                                             c.threads != default_threads, -c.threads, order[c]))


def best_row(rows: Sequence[PlanRow]) -> PlanRow | None:
    """The measured row with the shortest workload time (first one on a tie)."""
    measured = [r for r in rows if r.measured and r.measured_workload_s is not None]
    return min(measured, key=lambda r: r.measured_workload_s) if measured else None


def simplicity(default_threads: int, current: tuple[int, str, str],
               formats: Sequence[str | None]) -> Callable[[PlanSettings], tuple]:
    """Sort key, simplest first: the default thread count, the engine's own budget, placement
    and execution (no re-placement), the first expert format."""
    def key(c: PlanSettings) -> tuple:
        replaced = (c.expert_budget, c.placement, c.execution) != current
        fmt = formats.index(c.expert_dtype) if c.expert_dtype in formats else len(formats)
        return (c.threads != default_threads, replaced, fmt, -c.threads)
    return key


# ---- the mechanism --------------------------------------------------------------------------
def search_space(engine: Any, workload: Workload, formats: Sequence[str | None],
                 threads: Sequence[int] | None = None) -> SearchSpace:
    """What to try on this engine's device for this workload."""
    cores = torch.get_num_threads() if engine.config.threads is None else engine.config.threads
    thr = tuple(threads) if threads else thread_options(max(cores, _cpu_count()))
    if engine.device.type != "cuda":
        total = engine.num_layers * engine.num_experts
        return SearchSpace((total,), (engine.config.placement,), (engine.config.execution,),
                           thr, tuple(formats))
    use_workload(engine, workload)  # what fits depends on the workload's KV cache
    placement = "popularity" if engine.popularity is not None else "layer-balanced"
    return SearchSpace(budget_options(engine.max_resident_experts()), (placement, "lru"),
                       GPU_EXECUTIONS, thr, tuple(formats))


def measure_point(engine: Any, workload: Workload, new_tokens: int) -> Measured:
    """Generate the workload (seeded random prompt ids of its length) and read the stats.

    A short untimed generation first absorbs what a changed setting costs once (a new thread
    pool, first use of re-placed weights), so no candidate pays for the one before it."""
    vocab = int(engine.model.config.get_text_config().vocab_size)
    ids = torch.randint(0, vocab, (workload.batch, workload.prompt_tokens),
                        generator=torch.Generator().manual_seed(0))
    engine.generate(ids[:, :WARMUP_PROMPT_TOKENS], max_new_tokens=2, min_new_tokens=2)
    stats = engine.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens).stats
    return Measured(stats.prefill_tokens_per_s, stats.decode_tokens_per_s)


def autotune(path_or_engine: Any, workload: Workload | None = None,
             seconds: float = DEFAULT_SECONDS, expert_dtypes: Sequence[str] | None = None, *,
             threads: Sequence[int] | None = None, profile: Any = None,
             measure_new_tokens: int | None = None, progress: bool = True,
             measure: Callable[[Any, Workload, int], Measured] = measure_point,
             clock: Callable[[], float] = time.monotonic,
             project: Callable[[Any, Workload, Sequence[PlanSettings]], tuple[dict, str]]
             | None = None,
             loader: Callable[..., Any] | None = None, command: str = "") -> Plan:
    """Measure the most promising settings for `workload` within `seconds`; the best measured
    one as a `Plan` (see the module docstring). A loaded engine is left with the chosen
    settings; a path is loaded here and closed afterwards.

    expert_dtypes: expert formats to try (each a reload with `expert_dtype=`); None keeps the
    checkpoint's. threads: CPU thread counts to try (default all cores, half, one). profile:
    a HardwareProfile for the planner's projections on a GPU (default: a quick measurement).
    """
    workload = workload or Workload()
    command = command or (f"fnb.autotune({str(getattr(path_or_engine, 'path', path_or_engine))!r}, "
                          f"{workload!r}, seconds={seconds!r}, expert_dtypes={expert_dtypes!r})")
    check_float("seconds", seconds, strictly_positive=True)
    formats: tuple[str | None, ...] = tuple(expert_dtypes) if expert_dtypes else (None,)
    user_engine = None if not hasattr(path_or_engine, "reconfigure") else path_or_engine
    load = loader or _default_loader
    engine = user_engine or load(path_or_engine, workload, formats[0])
    current_fmt = getattr(engine, "expert_dtype", None) if user_engine else formats[0]
    new_tokens = max(2, min(workload.new_tokens, measure_new_tokens or MEASURE_NEW_TOKENS))
    start = clock()
    rows: list[PlanRow] = []
    samples: dict[PlanSettings, list[Measured]] = {}
    notes: list[str] = []
    load_before = conditions(probe_s=0.1 if measure is measure_point else 0.0)
    current = (engine.config.expert_budget, engine.config.placement, engine.config.execution)
    try:
        space = search_space(engine, workload, formats, threads)
        candidates = enumerate_candidates(space)
        projected, source = (project or _default_projection(profile))(engine, workload,
                                                                      candidates)
        default_threads = engine.config.threads or torch.get_num_threads()
        with tqdm(total=len(candidates), desc="autotune", disable=not progress) as bar:
            for i, fmt in enumerate(formats):
                if fmt != current_fmt:  # a format is a reload; the caller's engine stays open
                    path = engine.path
                    if engine is not user_engine:
                        engine.close()
                    engine, current_fmt = load(path, workload, fmt), fmt
                group = rank([c for c in candidates if c.expert_dtype == fmt],
                             _seconds_of(projected, workload), default_threads)
                _warm_up(engine, measure, workload)
                got, more = _measure_group(engine, workload, group, projected, measure,
                                           new_tokens, clock,
                                           start + seconds * (i + 1) / len(formats), bar)
                rows += got
                samples.update(more)
        decision = decide(_workload_samples(samples, workload),
                          simplicity(default_threads, current, formats))
        best = next((r for r in rows if decision and r.settings == decision.best), None)
        if best is None:
            raise FiddlerError("autotune measured no candidate successfully: " + "; ".join(
                f"{r.settings.label}: {r.status}" for r in rows[:3]) + "; check the model loads "
                "and generates with fnb.load(path).generate('hi')")
        if engine.device.type != "cuda":
            notes.append(CPU_REASON + (", expert formats" if len(formats) > 1 else ""))
        busy = load_before.finished(machine_load(0.1 if measure is measure_point else 0.0)) \
            .note(list(decision.spreads.values()))
        notes += [busy] if busy else []
        plan = _make_plan(engine, workload, best, rows, source, seconds, clock() - start,
                          new_tokens, notes, command, decision, default_threads)
        if user_engine is not None and best.settings.expert_dtype in (
                None, getattr(user_engine, "expert_dtype", None)):
            plan.apply(user_engine)
        return plan
    finally:
        if engine is not user_engine:
            engine.close()


def _measure_group(engine, workload, order, projected, measure, new_tokens, clock, deadline,
                   bar) -> tuple[list[PlanRow], dict[PlanSettings, list[Measured]]]:
    """Each candidate once in rank order while time lasts, then the two leaders again until one
    is ahead by more than the noise (or the time is spent); rows and every sample."""
    samples: dict[PlanSettings, list[Measured]] = {}
    status: dict[PlanSettings, str] = {}
    longest = 0.0

    def one(settings: PlanSettings) -> None:
        nonlocal longest
        t0 = clock()
        try:
            engine.reconfigure(expert_budget=settings.expert_budget, placement=settings.placement,
                               execution=settings.execution, threads=settings.threads)
            samples.setdefault(settings, []).append(measure(engine, workload, new_tokens))
            status[settings] = MEASURED_STATUS
        except FiddlerError as err:  # e.g. a budget that does not fit: the next one may
            status.setdefault(settings, f"failed: {err}")
        longest = max(longest, clock() - t0)

    for settings in order:
        if status and clock() + longest > deadline:
            status[settings] = TIME_LIMIT_STATUS
        else:
            one(settings)
        bar.update(1)
    while clock() + longest <= deadline:
        targets = refine_targets(_workload_samples(samples, workload))
        if not targets:
            break
        for settings in targets:
            one(settings)
    rows = [_row(c, status[c], samples.get(c, []), projected.get(c, (None, None)), workload)
            for c in order]
    return rows, samples


def _workload_samples(samples: dict, workload: Workload) -> dict[PlanSettings, list[float]]:
    return {c: [workload_seconds(workload, m.prefill_tps, m.decode_tps) for m in ms]
            for c, ms in samples.items() if ms}


def _row(settings: PlanSettings, status: str, got: list[Measured], proj, workload) -> PlanRow:
    if not got:
        return PlanRow(settings, status, projected_prefill_tps=proj[0],
                       projected_decode_tps=proj[1])
    secs = spread([workload_seconds(workload, m.prefill_tps, m.decode_tps) for m in got])
    return PlanRow(settings, status, spread([m.prefill_tps for m in got]).median,
                   spread([m.decode_tps for m in got]).median, secs.median, proj[0], proj[1],
                   secs.low, secs.high, secs.repeats)


def _seconds_of(projected: dict, workload: Workload) -> dict[PlanSettings, float]:
    return {c: workload_seconds(workload, p, d) for c, (p, d) in projected.items()
            if p is not None and d is not None}


def _warm_up(engine: Any, measure: Callable, workload: Workload) -> None:
    """One untimed run at the workload's prompt shape: first-use costs of its kernels (and
    lazy initialisation) are nobody's measurement."""
    if measure is measure_point:  # an injected measure has nothing to warm up
        measure(engine, Workload(workload.prompt_tokens, 2, workload.batch), 2)


def _default_projection(profile: Any) -> Callable:
    """On a GPU: the planner's tokens/s per (budget, placement, execution); none on a CPU."""

    def project(engine, workload, candidates):
        if engine.device.type != "cuda":
            return {}, "none (no GPU: the planner projects GPU strategies)"
        from .measure.planner import plan
        from .measure.profiler import HardwareProfile, profile_hardware

        prof = HardwareProfile.load(profile) if isinstance(profile, (str, Path)) else profile
        prof = prof or profile_hardware(engine, quick=True)
        shape = engine_shape(engine)
        keys = {(c.expert_budget, c.placement, c.execution) for c in candidates}
        records = plan(shape, prof, budgets=sorted({k[0] for k in keys}),
                       placements=sorted({k[1] for k in keys}),
                       executions=sorted({k[2] for k in keys}), popularity=engine.popularity,
                       prompt_tokens=workload.prompt_tokens, new_tokens=workload.new_tokens,
                       baselines=())
        by_key = {(r.budget_experts, r.placement, r.execution): (r.prefill_tps, r.decode_tps)
                  for r in records}
        return ({c: by_key[(c.expert_budget, c.placement, c.execution)] for c in candidates
                 if (c.expert_budget, c.placement, c.execution) in by_key},
                f"planner (projected, {records[0].latency_source})" if records else "none")

    return project


def _default_loader(path: Any, workload: Workload, fmt: str | None):
    from .api import load

    return load(path, workload=workload, expert_dtype=fmt)


def evidence(decision: Decision, rows: Sequence[PlanRow], default_threads: int) -> str:
    """Why the chosen row won: ahead of the runner-up by more than the noise, or tied and the
    simpler setting kept; each with median (IQR, runs) of its workload seconds."""
    label = {r.settings: r.settings.label for r in rows}

    def text(c) -> str:
        return f"{label[c]}: {decision.spreads[c].text(3)}"

    if decision.separated:
        rest = [c for c in decision.spreads if c != decision.best]
        if not rest:
            return f"the only measured candidate, {text(decision.best)}"
        return (f"ahead by more than the noise: {text(decision.best)} vs the runner-up "
                f"{text(rest[0])}")
    tied = [decision.fastest, *decision.tied]
    why = ("the default thread count" if decision.best.threads == default_threads
           else "the simpler setting")
    return (f"tied within the noise ({'; '.join(text(c) for c in tied[:4])}): kept {why}, "
            f"{label[decision.best]}")


def _make_plan(engine, workload, best: PlanRow, rows, source, seconds, used, new_tokens, notes,
               command, decision: Decision, default_threads: int) -> Plan:
    from .measure.hardware import machine_facts

    facts = machine_facts()
    machine = (f"{facts.cpu_model}, {facts.cpu_cores} CPUs; "
               f"{facts.gpu_name or 'no GPU'}; torch {facts.torch_version}")
    measured = sum(r.measured for r in rows)
    skipped = sum(r.status == TIME_LIMIT_STATUS for r in rows)
    runs = sum(r.samples for r in rows)
    reason = (f"workload {best.measured_workload_s:.3f} s (prefill {best.measured_prefill_tps:.1f}"
              f" tok/s, decode {best.measured_decode_tps:.1f} tok/s); "
              f"{evidence(decision, rows, default_threads)}; {measured} candidate(s) measured in "
              f"{runs} runs, {skipped} not measured (time limit)")
    return Plan(model=str(engine.path), settings=best.settings, workload=workload, rows=tuple(rows),
                machine=machine, device=str(engine.device), dtype=engine.config.dtype,
                reason=reason, measured_prompt_tokens=workload.prompt_tokens,
                measured_new_tokens=new_tokens, seconds_limit=float(seconds),
                seconds_used=float(used), projection_source=source, notes=tuple(notes),
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                command=command)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
