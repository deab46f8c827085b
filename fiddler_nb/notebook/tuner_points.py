"""The tuner's pure callbacks (widgets.py builds the widget tree around them; tests call them):

* `run_point(engine, budget, placement, execution, prompt_tokens, new_tokens)` re-places the
  experts of a loaded engine (no reload), generates with the measurement discipline (warm-up,
  repeats until steady or a small time budget) and returns a measured `TunerPoint` with its
  spread;
* `project_point(plan_input, ...)` asks the planner instead and returns a point labelled
  "projected" (nothing runs);
* `sweep(target, budgets, ...)` runs either over several budgets with a progress bar;
* `cpu_only_note(engine)`: on a machine without a GPU, what the budget can and cannot show.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..measure.discipline import RepeatPolicy, conditions, machine_load, repeat, spread
from ..measure.shapes import ModelShape, get_shape
from ..runtime.engine.experts import GIB
from ..runtime.errors import OptionError
from ..runtime.validate import check_int
from .plots import MEASURED, PROJECTED

WARMUP_RUNS = 1  # discarded generations before timing (first calls pay lazy init / allocator)
# A point: at least 3 timed generations (an interval), more until the IQR is within 5% of the
# median, for at most 2 s or 9 runs -- a click answers within seconds on a tiny model
POINT_POLICY = RepeatPolicy(warmup=WARMUP_RUNS, min_repeats=3, max_repeats=9, budget_s=2.0)
LOAD_PROBE_S = 0.05  # a short idle-CPU probe before and after each point
CPU_ONLY_NOTE = ("No GPU here: every expert runs from CPU memory, so the GPU expert budget "
                 "cannot change speed on this machine -- each point measures this CPU (engine "
                 "overhead and noise, shown as error bars). To see what a budget does on a GPU, "
                 "build the tuner on a (shape, HardwareProfile) pair: it projects.")


def cpu_only_note(target: Any) -> str | None:
    """CPU_ONLY_NOTE for an engine on a machine without a GPU, else None."""
    device = getattr(target, "device", None)
    return CPU_ONLY_NOTE if device is not None and getattr(device, "type", "") == "cpu" else None


@dataclass(frozen=True)
class TunerPoint:
    """One run (measured) or projection of one configuration."""

    kind: str  # MEASURED or PROJECTED
    budget_experts: int  # experts resident on the GPU, all layers together
    budget_gib: float  # the same budget as expert-weight memory, GiB
    placement: str
    execution: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float  # all decode steps together
    prefill_tps: float
    decode_tps: float
    hit_rate: float  # decode: share of expert-token pairs served by a resident expert
    device: str  # where it ran ("cpu", "cuda:0") or the projected machine
    source: str  # checkpoint path or projected model shape
    decode_tps_low: float | None = None  # interquartile range of the runs (measured only)
    decode_tps_high: float | None = None
    runs: int = 0  # timed generations behind the medians (0: projected)
    busy_note: str | None = None  # "this machine was busy: ..." when the load said so

    @property
    def label(self) -> str:
        return f"{self.placement}+{self.execution}"

    @property
    def series(self) -> str:
        """The figure trace this point belongs to."""
        return f"{self.label}, prompt {self.prompt_tokens} ({self.kind})"


@dataclass(frozen=True)
class PlanInput:
    """What the tuner needs to project instead of measure: a model shape on a hardware profile."""

    shape: ModelShape
    profile: Any  # profiler.HardwareProfile (GPU measured or a preset attached)
    popularity: Any = None  # Popularity of this shape, or None for the planner's Zipf law
    samples: int = 256  # sampled decode tokens per layer (planner default)

    @property
    def total_experts(self) -> int:
        return self.shape.total_experts

    @property
    def expert_bytes(self) -> int:
        return self.shape.expert_bytes


def as_plan_input(target: Any, shape: ModelShape | str | None = None) -> PlanInput:
    """A PlanInput from a PlanInput, a (shape, profile) pair or a profile plus `shape`."""
    if isinstance(target, PlanInput):
        return target
    if isinstance(target, tuple) and len(target) == 2:
        shape, target = target
    if not hasattr(target, "latency_model"):
        raise OptionError("tuner takes an Engine, a PlanInput, a (shape, HardwareProfile) pair or a "
                          f"HardwareProfile with shape=...; got {type(target).__name__}")
    shape = shape or target.shape_name
    return PlanInput(get_shape(shape) if isinstance(shape, str) else shape, target)


def is_engine(target: Any) -> bool:
    return hasattr(target, "generate") and hasattr(target, "reconfigure")


# ---- the pure callbacks ------------------------------------------------------------------
def prompt_ids(engine: Any, tokens: int, seed: int = 0) -> torch.Tensor:
    """[1, tokens] seeded token ids: an exact prompt length for any tokenizer."""
    check_int("prompt length", tokens, minimum=1)
    vocab = int(engine.model.config.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, tokens), generator=gen)


def run_point(engine: Any, budget: int, placement: str, execution: str, prompt_tokens: int,
              new_tokens: int, warmup: int = WARMUP_RUNS,
              policy: RepeatPolicy | None = None) -> TunerPoint:
    """Re-place `engine`'s experts (no reload), then generate: warm-up, and repeats until the
    generation time is steady or the policy's time budget is spent (measure/discipline.py);
    the point carries the medians, the decode interquartile range and the runs."""
    check_int("new_tokens", new_tokens, minimum=2, hint="two tokens time one decode step")
    check_int("prompt length", prompt_tokens, minimum=1)
    cfg = engine.config  # one re-placement for all changes; a failure leaves cfg as it was
    engine.reconfigure(
        expert_budget=int(budget) if budget != cfg.expert_budget else None,
        placement=placement if placement != cfg.placement else None,
        execution=execution if execution != cfg.execution else None)
    ids = prompt_ids(engine, prompt_tokens)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # no early EOS stop
    policy = replace(policy or POINT_POLICY, warmup=warmup)
    before = conditions(probe_s=LOAD_PROBE_S)
    runs = repeat(lambda: engine.generate(ids, **kwargs).stats, policy,
                  value=lambda st: st.prefill_s + st.decode_s).runs
    decode = spread([st.decode_tokens_per_s for st in runs])
    prefill = spread([st.prefill_tokens_per_s for st in runs])
    # phase seconds and hit rate of the run nearest the median decode speed
    stats = min(runs, key=lambda st: abs(st.decode_tokens_per_s - decode.median))
    busy = before.finished(machine_load(LOAD_PROBE_S)).note([decode])
    return TunerPoint(
        kind=MEASURED, budget_experts=int(budget),
        budget_gib=budget * engine.expert_bytes / GIB, placement=placement, execution=execution,
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, prefill_s=stats.prefill_s,
        decode_s=stats.decode_s, prefill_tps=prefill.median,
        decode_tps=decode.median, hit_rate=stats.decode.hit_rate,
        device=stats.device, source=str(engine.path), decode_tps_low=decode.low,
        decode_tps_high=decode.high, runs=decode.repeats, busy_note=busy)


def project_point(plan_input: PlanInput, budget: int, placement: str, execution: str,
                  prompt_tokens: int, new_tokens: int) -> TunerPoint:
    """The planner's projection for one configuration (nothing runs; kind = "projected")."""
    from ..measure.planner import plan  # noqa: PLC0415 (planner pulls in the profiler)

    check_int("new_tokens", new_tokens, minimum=1)
    check_int("prompt length", prompt_tokens, minimum=1)
    if isinstance(budget, bool) or not isinstance(budget, int) \
            or not 0 <= budget <= plan_input.total_experts:
        raise OptionError(f"expert budget {budget} is out of range: {plan_input.shape.name} has "
                          f"{plan_input.total_experts} experts; pass 0..{plan_input.total_experts}")
    records = plan(plan_input.shape, plan_input.profile, budgets=(int(budget),),
                   placements=(placement,), executions=(execution,),
                   popularity=plan_input.popularity, prompt_tokens=prompt_tokens,
                   new_tokens=new_tokens, samples=plan_input.samples, baselines=())
    rec = records[0]
    return TunerPoint(
        kind=PROJECTED, budget_experts=rec.budget_experts,
        budget_gib=rec.budget_experts * plan_input.expert_bytes / GIB, placement=placement,
        execution=execution, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
        prefill_s=rec.prefill_ms / 1e3,
        decode_s=rec.decode_ms_per_token * max(new_tokens - 1, 0) / 1e3,
        prefill_tps=rec.prefill_tps, decode_tps=rec.decode_tps,
        hit_rate=rec.decode_gpu_hit_rate, device=rec.machine, source=rec.model)


def point(target: Any, budget: int, placement: str, execution: str, prompt_tokens: int,
          new_tokens: int) -> TunerPoint:
    """Measured for an Engine, projected for a PlanInput."""
    fn = run_point if is_engine(target) else project_point
    return fn(target, budget, placement, execution, prompt_tokens, new_tokens)


def sweep(target: Any, budgets: Sequence[int], placements: Sequence[str] = ("popularity",),
          executions: Sequence[str] = ("auto",), prompt_tokens: int = 32, new_tokens: int = 8,
          on_point: Callable[[TunerPoint], None] | None = None,
          progress: bool = True) -> list[TunerPoint]:
    """Every budget x placement x execution, with a tqdm progress bar."""
    target = target if is_engine(target) else as_plan_input(target)
    combos = [(b, p, x) for p in placements for x in executions for b in budgets]
    points = []
    for b, p, x in tqdm(combos, desc="tuner sweep", disable=not progress):
        points.append(point(target, int(b), p, x, prompt_tokens, new_tokens))
        if on_point is not None:
            on_point(points[-1])
    return points


def with_format(plan_input: PlanInput, name: str) -> PlanInput:
    """The same projection with experts in format `name` ('bf16', 'int8', 'int4', ...)."""
    from dataclasses import replace

    from ..runtime.formats.quant import resolve_format

    shape = plan_input.shape
    fmt = resolve_format(name, None, (shape.hidden_size, shape.intermediate_size))
    return replace(plan_input, shape=replace(shape, expert_format=fmt.label()))


