"""`fnb.widgets.tuner(engine_or_plan)`: tune the GPU expert budget, placement and execution live.

The logic is plain functions that tests call directly:

* `run_point(engine, budget, placement, execution, prompt_tokens, new_tokens)` re-places the
  experts of a loaded engine (no reload), generates, and returns a measured `TunerPoint`;
* `project_point(plan_input, ...)` asks the planner instead and returns a point labelled
  "projected" (nothing runs);
* `sweep(target, budgets, ...)` runs either over several budgets with a progress bar.

`tuner(...)` builds the ipywidgets tree around them: budget slider (experts, with its size in
GiB), placement and execution dropdowns, prompt length, Run / Sweep buttons, a progress bar, a
status line, an error line (a failing run shows its message there; the cell never dies) and a
`plotly.graph_objects.FigureWidget` of decode tokens/s vs budget that is updated in place;
for an engine, an *Auto-tune* button (autotune_panel.py) that runs `fnb.autotune` for the prompt
and new tokens shown and displays the plan's table and plot.

Streaming widgets live in chat_widgets.py and are re-exported here: `widgets.generate_live(eng,
prompt)` and `widgets.chat(eng)`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..measure.shapes import ModelShape, get_shape
from ..runtime.errors import OptionError
from ..runtime.policies.execution import known_executions
from ..runtime.engine.experts import GIB
from ..runtime.policies.placement import known_placements
from ..runtime.validate import check_int
from .chat_widgets import chat, generate_live  # noqa: F401  (widgets.chat / generate_live)
from .plots import MEASURED, PROJECTED

WARMUP_RUNS = 1  # discarded generations before timing (first calls pay lazy init / allocator)
SWEEP_POINTS = 5  # budgets the Sweep button runs, evenly spread over the slider's range
MAX_PROMPT_TOKENS = 4096  # slider limit; a model's own position limit may be lower
EXPERT_FORMATS = ("bf16", "fp16", "fp32", "int8", "int4")  # runtime/formats/quant.py KNOWN_FORMATS
CSS_CLASS = "fnb-tuner"  # on the tuner's outer box, for styling and browser tests


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
              new_tokens: int, warmup: int = WARMUP_RUNS) -> TunerPoint:
    """Re-place `engine`'s experts (no reload), generate, and return the measured point."""
    check_int("new_tokens", new_tokens, minimum=2, hint="two tokens time one decode step")
    check_int("prompt length", prompt_tokens, minimum=1)
    cfg = engine.config  # one re-placement for all changes; a failure leaves cfg as it was
    engine.reconfigure(
        expert_budget=int(budget) if budget != cfg.expert_budget else None,
        placement=placement if placement != cfg.placement else None,
        execution=execution if execution != cfg.execution else None)
    ids = prompt_ids(engine, prompt_tokens)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)  # no early EOS stop
    for _ in range(warmup):
        engine.generate(ids, **kwargs)
    stats = engine.generate(ids, **kwargs).stats
    return TunerPoint(
        kind=MEASURED, budget_experts=int(budget),
        budget_gib=budget * engine.expert_bytes / GIB, placement=placement, execution=execution,
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, prefill_s=stats.prefill_s,
        decode_s=stats.decode_s, prefill_tps=stats.prefill_tokens_per_s,
        decode_tps=stats.decode_tokens_per_s, hit_rate=stats.decode.hit_rate,
        device=stats.device, source=str(engine.path))


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


# ---- the figure --------------------------------------------------------------------------
def budget_figure(kind: str, where: str, widget: bool = True):
    """An empty decode tokens/s vs budget figure (FigureWidget unless widget=False)."""
    import plotly.graph_objects as go

    cls = go.FigureWidget if widget else go.Figure
    fig = cls()
    fig.update_layout(title=f"Decode tokens/s vs GPU expert budget ({kind}: {where})",
                      xaxis_title="GPU expert budget (experts, all layers)",
                      yaxis_title="decode throughput (tokens/s)", template="plotly_white",
                      legend_title="placement+execution, prompt (kind)", height=420)
    return fig


def add_point(fig, pt: TunerPoint) -> None:
    """Put `pt` into its series (replacing an earlier point at the same budget), sorted by budget."""
    trace = next((t for t in fig.data if t.name == pt.series), None)
    if trace is None:
        fig.add_scatter(x=[pt.budget_experts], y=[pt.decode_tps], name=pt.series,
                        mode="lines+markers",
                        line=dict(dash="dash" if pt.kind == PROJECTED else "solid"))
        return
    merged = dict(zip(trace.x, trace.y))
    merged[pt.budget_experts] = pt.decode_tps
    xs = sorted(merged)
    with fig.batch_update():
        trace.x, trace.y = xs, [merged[x] for x in xs]


def describe(pt: TunerPoint) -> str:
    return (f"{pt.kind}: budget {pt.budget_experts} experts ({pt.budget_gib:.3g} GiB), "
            f"{pt.label}, prompt {pt.prompt_tokens} + {pt.new_tokens} new: prefill "
            f"{pt.prefill_tps:.1f} tok/s, decode {pt.decode_tps:.2f} tok/s, decode GPU hit rate "
            f"{100 * pt.hit_rate:.0f}% on {pt.device}")


# ---- the widget tree ---------------------------------------------------------------------
class Tuner:
    """The tuner's widgets; display it in a notebook cell (it renders as its VBox)."""

    def __init__(self, target: Any, prompt_tokens: int = 32, new_tokens: int = 8,
                 shape: ModelShape | str | None = None):
        import ipywidgets as w

        self.target = target if is_engine(target) else as_plan_input(target, shape)
        self.kind = MEASURED if is_engine(target) else PROJECTED
        self.points: list[TunerPoint] = []
        total, self.expert_bytes = self._range()
        style = {"description_width": "130px"}
        self.budget = w.IntSlider(value=self._start_budget(total), min=0, max=total,
                                  description="GPU experts", style=style, continuous_update=False)
        self.budget_gib = w.Label()
        self.placement = w.Dropdown(options=known_placements(), value=self._cfg("placement"),
                                    description="placement", style=style)
        self.execution = w.Dropdown(options=known_executions(), value=self._cfg("execution"),
                                    description="execution", style=style)
        self.prompt_tokens = w.IntSlider(value=prompt_tokens, min=1, max=self._max_prompt(),
                                         description="prompt tokens", style=style,
                                         continuous_update=False)
        self.new_tokens = w.BoundedIntText(value=new_tokens, min=2, max=MAX_PROMPT_TOKENS,
                                           description="new tokens", style=style)
        # an engine's format is fixed at load (fnb.load(expert_dtype=...)); projections switch
        self.expert_format = w.Dropdown(options=EXPERT_FORMATS, value=self._format(),
                                        description="expert format", style=style,
                                        disabled=self.kind == MEASURED)
        self.expert_format.observe(lambda c: self._set_format(c["new"]), names="value")
        verb = "Measure" if self.kind == MEASURED else "Project"
        wide = w.Layout(width="auto")  # the whole label, not "Measure this bud..."
        self.run_button = w.Button(description=f"{verb} this budget", button_style="primary",
                                   layout=wide)
        self.sweep_button = w.Button(description=f"{verb} {SWEEP_POINTS} budgets", layout=wide)
        self.progress = w.IntProgress(value=0, min=0, max=1, description="progress", style=style)
        self.status = w.HTML(value=f"<i>{self.kind}; press {verb}</i>")
        self.error = w.HTML(value="")
        self.figure = budget_figure(self.kind, self._where())
        self.budget.observe(lambda _: self._show_gib(), names="value")
        self.run_button.on_click(lambda _: self.run())
        self.sweep_button.on_click(lambda _: self.run_sweep())
        self._show_gib()
        controls = w.VBox([w.HBox([self.budget, self.budget_gib]), self.placement, self.execution,
                           self.expert_format, self.prompt_tokens, self.new_tokens,
                           w.HBox([self.run_button, self.sweep_button]), self.progress])
        self.autotune = None
        extra = []
        if self.kind == MEASURED:
            from .autotune_panel import AutotunePanel

            self.autotune = AutotunePanel(
                self.target, lambda: (self.prompt_tokens.value, self.new_tokens.value),
                on_plan=self._show_plan)
            extra = [self.autotune.widget]
        self.widget = w.VBox([controls, self.status, self.error, self.figure, *extra])
        self.widget.add_class(CSS_CLASS)

    def _format(self) -> str:
        if self.kind == MEASURED:
            return self.target.expert_dtype.partition("-g")[0]
        from ..runtime.model.config import resolve_dtype
        from ..runtime.formats.quant import dtype_label

        shape = self.target.shape
        return (shape.expert_format or dtype_label(resolve_dtype(shape.dtype))).partition("-g")[0]

    def _set_format(self, name: str) -> None:
        """Projections: re-plan with the experts in `name` (bytes, so also the budget's GiB)."""
        if self.kind == PROJECTED:
            self.target = with_format(self.target, name)
            self.expert_bytes = self.target.expert_bytes
            self._show_gib()

    # the cell displays the VBox
    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _range(self) -> tuple[int, int]:
        t = self.target
        if self.kind == MEASURED:
            return t.num_layers * t.num_experts, t.expert_bytes
        return t.total_experts, t.expert_bytes

    def _start_budget(self, total: int) -> int:
        return int(self.target.config.expert_budget) if self.kind == MEASURED else total // 2

    def _cfg(self, name: str) -> str:
        defaults = {"placement": "popularity", "execution": "auto"}
        return getattr(self.target.config, name) if self.kind == MEASURED else defaults[name]

    def _max_prompt(self) -> int:
        if self.kind == PROJECTED:
            return MAX_PROMPT_TOKENS
        limit = getattr(self.target.model.config, "max_position_embeddings", MAX_PROMPT_TOKENS)
        return int(min(limit // 2, MAX_PROMPT_TOKENS))  # half: room left for the new tokens

    def _where(self) -> str:
        t = self.target
        if self.kind == MEASURED:
            return f"{t.path.rsplit('/', 1)[-1]} on {t.device}"
        return f"{t.shape.name} on {t.profile.facts.cpu_model} + {t.profile.sources.get('gpu', 'gpu')}"

    def _show_gib(self) -> None:
        self.budget_gib.value = f"= {self.budget.value * self.expert_bytes / GIB:.3g} GiB"

    # ---- actions (button handlers; errors go to the error line) ----------------------------
    def run(self) -> TunerPoint | None:
        """Run (or project) the configuration the controls show."""
        done = self._guarded([self.budget.value])
        return done[-1] if done else None

    def run_sweep(self, budgets: Sequence[int] | None = None) -> list[TunerPoint]:
        top = self.budget.max
        budgets = budgets or sorted({round(i * top / (SWEEP_POINTS - 1)) for i in range(SWEEP_POINTS)})
        return self._guarded(budgets)

    def _guarded(self, budgets: Sequence[int]) -> list[TunerPoint]:
        self.error.value = ""
        self.progress.max, self.progress.value = len(budgets), 0
        self.progress.bar_style = "info"
        done: list[TunerPoint] = []
        try:
            for b in budgets:
                done.append(point(self.target, int(b), self.placement.value, self.execution.value,
                                  self.prompt_tokens.value, self.new_tokens.value))
                self._record(done[-1])
        except Exception as exc:  # noqa: BLE001 -- any failure is shown in the widget
            self.progress.bar_style = "danger"
            self.error.value = (f"<span style='color:#b00020'>error: {type(exc).__name__}: "
                                f"{html.escape(str(exc))}</span>")
            return done
        self.progress.bar_style = "success"
        return done

    def _show_plan(self, plan: Any) -> None:
        """After Auto-tune: the controls show the settings the engine now has."""
        self.budget.value = min(plan.settings.expert_budget, self.budget.max)
        self.placement.value, self.execution.value = plan.settings.placement, plan.settings.execution
        self.status.value = html.escape(f"auto-tuned: {plan.settings.label} ({plan.reason})")

    def _record(self, pt: TunerPoint) -> None:
        self.points.append(pt)
        add_point(self.figure, pt)
        self.status.value = html.escape(describe(pt))
        self.progress.value += 1


def tuner(engine_or_plan: Any, prompt_tokens: int = 32, new_tokens: int = 8,
          shape: ModelShape | str | None = None) -> Tuner:
    """Build the tuner for an Engine (measures) or a PlanInput / (shape, profile) (projects)."""
    return Tuner(engine_or_plan, prompt_tokens, new_tokens, shape)
