"""`fnb.widgets.tuner(engine_or_plan)`: tune the GPU expert budget, placement and execution live.

The logic is plain functions that tests call directly (tuner_points.py, re-exported here):
`run_point` (measured, with the measurement discipline: repeats until steady, the spread kept),
`project_point` (the planner; nothing runs), `point` and `sweep`.

`tuner(...)` builds the ipywidgets tree around them: budget slider (experts, with its size in
GiB), placement and execution dropdowns, prompt length, Run / Sweep buttons, a progress bar, a
status line, an error line (a failing run shows its message there; the cell never dies) and a
`plotly.graph_objects.FigureWidget` of decode tokens/s vs budget, each measured point with its
interquartile range as an error bar, updated in place. On a machine without a GPU a note says
that the budget cannot change speed there and what a point measures instead. For an engine, an
*Auto-tune* button (autotune_panel.py) runs `fnb.autotune` for the prompt and new tokens shown.

Streaming widgets live in chat_widgets.py and are re-exported here: `widgets.generate_live(eng,
prompt)` and `widgets.chat(eng)`.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

from ..measure.shapes import ModelShape
from ..runtime.engine.experts import GIB
from ..runtime.policies.execution import known_executions
from ..runtime.policies.placement import known_placements
from .chat_widgets import chat, generate_live  # noqa: F401  (widgets.chat / generate_live)
from .plots import MEASURED, PROJECTED
from .tuner_points import (POINT_POLICY, WARMUP_RUNS, PlanInput, TunerPoint,  # noqa: F401
                           as_plan_input, cpu_only_note, is_engine, point, project_point,
                           prompt_ids, run_point, sweep, with_format)

SWEEP_POINTS = 5  # budgets the Sweep button runs, evenly spread over the slider's range
MAX_PROMPT_TOKENS = 4096  # slider limit; a model's own position limit may be lower
EXPERT_FORMATS = ("bf16", "fp16", "fp32", "int8", "int4")  # runtime/formats/quant.py KNOWN_FORMATS
CSS_CLASS = "fnb-tuner"  # on the tuner's outer box, for styling and browser tests


# ---- the figure --------------------------------------------------------------------------
def budget_figure(kind: str, where: str, widget: bool = True, cpu_only: bool = False):
    """An empty decode tokens/s vs budget figure (FigureWidget unless widget=False); on a
    CPU-only machine its title says the budget has no effect there."""
    import plotly.graph_objects as go

    cls = go.FigureWidget if widget else go.Figure
    fig = cls()
    title = f"Decode tokens/s vs GPU expert budget ({kind}: {where})"
    if cpu_only:
        title = (f"Decode tokens/s per click ({kind}: {where})<br><sup>no GPU: every budget "
                 "runs on the CPU, so differences are noise; error bars: interquartile range"
                 "</sup>")
    fig.update_layout(title=title, xaxis_title="GPU expert budget (experts, all layers)",
                      yaxis=dict(title="decode throughput (tokens/s)", rangemode="tozero"),
                      template="plotly_white", margin=dict(t=90),
                      legend_title="placement+execution, prompt (kind)", height=420)
    return fig


def add_point(fig, pt: TunerPoint, lines: bool = True) -> None:
    """Put `pt` into its series (replacing an earlier point at the same budget), sorted by
    budget; measured points carry their interquartile range as error bars. lines=False: markers
    only (on a CPU-only machine a line between budgets would suggest a trend that is noise)."""
    trace = next((t for t in fig.data if t.name == pt.series), None)
    merged = {} if trace is None else dict(zip(trace.x, zip(
        trace.y, trace.error_y.array or [0] * len(trace.x),
        trace.error_y.arrayminus or [0] * len(trace.x))))
    up = (pt.decode_tps_high - pt.decode_tps) if pt.decode_tps_high is not None else 0.0
    down = (pt.decode_tps - pt.decode_tps_low) if pt.decode_tps_low is not None else 0.0
    merged[pt.budget_experts] = (pt.decode_tps, up, down)
    xs = sorted(merged)
    ys, ups, downs = ([merged[x][i] for x in xs] for i in range(3))
    bars = dict(type="data", symmetric=False, array=ups, arrayminus=downs,
                visible=pt.kind == MEASURED)
    if trace is None:
        fig.add_scatter(x=xs, y=ys, name=pt.series, error_y=bars,
                        mode="lines+markers" if lines else "markers",
                        line=dict(dash="dash" if pt.kind == PROJECTED else "solid"))
        return
    with fig.batch_update():
        trace.x, trace.y, trace.error_y = xs, ys, bars


def describe(pt: TunerPoint) -> str:
    spread = (f" (IQR {pt.decode_tps_low:.2f}-{pt.decode_tps_high:.2f}, {pt.runs} runs)"
              if pt.runs > 1 else "")
    text = (f"{pt.kind}: budget {pt.budget_experts} experts ({pt.budget_gib:.3g} GiB), "
            f"{pt.label}, prompt {pt.prompt_tokens} + {pt.new_tokens} new: prefill "
            f"{pt.prefill_tps:.1f} tok/s, decode {pt.decode_tps:.2f} tok/s{spread}, decode GPU "
            f"hit rate {100 * pt.hit_rate:.0f}% on {pt.device}")
    note = pt.busy_note
    return text + (f". {note[0].upper()}{note[1:]}" if note else "")


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
        self.note = cpu_only_note(self.target) if self.kind == MEASURED else None
        self.status = w.HTML(value=f"<i>{self.kind}; press {verb}</i>")
        self.info = w.HTML(value=f"<b>{html.escape(self.note)}</b>" if self.note else "")
        for widget, name in ((self.status, "status"), (self.info, "note")):
            widget.add_class(f"{CSS_CLASS}-{name}")  # browser tests find them by class
        self.error = w.HTML(value="")
        self.error.add_class(f"{CSS_CLASS}-error")
        self.figure = budget_figure(self.kind, self._where(), cpu_only=self.note is not None)
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
        self.widget = w.VBox([self.info, controls, self.status, self.error, self.figure, *extra])
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
        add_point(self.figure, pt, lines=self.note is None)
        self.status.value = html.escape(describe(pt))
        self.progress.value += 1


def tuner(engine_or_plan: Any, prompt_tokens: int = 32, new_tokens: int = 8,
          shape: ModelShape | str | None = None) -> Tuner:
    """Build the tuner for an Engine (measures) or a PlanInput / (shape, profile) (projects)."""
    return Tuner(engine_or_plan, prompt_tokens, new_tokens, shape)
