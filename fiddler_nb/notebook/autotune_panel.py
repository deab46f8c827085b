"""The tuner's *Auto-tune* button: run `fnb.autotune` on the engine for the workload the tuner's
controls show, then show the plan's table and `plots.autotune` figure.

`run_autotune(engine, prompt_tokens, new_tokens, seconds, autotune=...)` is the pure callback
(tests inject a fake `autotune`); `AutotunePanel` builds the widgets around it and is added to the
measured tuner (widgets.Tuner) under its Run / Sweep buttons.
"""

from __future__ import annotations

import html
from typing import Any, Callable

from ..runtime.generation.workload import Workload
from ..tune import autotune as _autotune
from . import plots

DEFAULT_SECONDS = 30.0  # a notebook button: long enough for a few points, short enough to wait


def run_autotune(engine: Any, prompt_tokens: int, new_tokens: int, seconds: float,
                 autotune: Callable[..., Any] = _autotune):
    """The plan for this workload (the engine is left with its settings)."""
    return autotune(engine, Workload(int(prompt_tokens), int(new_tokens)), seconds=seconds)


class AutotunePanel:
    def __init__(self, engine: Any, workload_controls: Callable[[], tuple[int, int]],
                 on_plan: Callable[[Any], None] | None = None,
                 seconds: float = DEFAULT_SECONDS, autotune: Callable[..., Any] = _autotune):
        import ipywidgets as w

        self.engine = engine
        self.workload_controls = workload_controls  # () -> (prompt tokens, new tokens)
        self.on_plan = on_plan
        self.autotune = autotune
        self.plan = None
        self.button = w.Button(description="Auto-tune", button_style="warning",
                               layout=w.Layout(width="auto"))
        self.seconds = w.BoundedFloatText(value=seconds, min=1, max=3600, description="seconds",
                                          layout=w.Layout(width="180px"))
        self.table = w.HTML(value="")
        self.figure_box = w.VBox([])
        self.button.on_click(lambda _: self.run())
        self.widget = w.VBox([w.HBox([self.button, self.seconds]), self.table, self.figure_box])

    def run(self):
        """Auto-tune now; errors go to the table line (the cell never dies)."""
        import plotly.graph_objects as go

        prompt_tokens, new_tokens = self.workload_controls()
        self.button.disabled = True
        self.table.value = "<i>auto-tuning ...</i>"
        try:
            self.plan = run_autotune(self.engine, prompt_tokens, new_tokens, self.seconds.value,
                                     self.autotune)
        except Exception as exc:  # noqa: BLE001
            self.table.value = (f"<span style='color:#b00020'>error: {type(exc).__name__}: "
                                f"{html.escape(str(exc))}</span>")
            return None
        finally:
            self.button.disabled = False
        self.table.value = f"<pre>{html.escape(self.plan.table())}</pre>"
        self.figure_box.children = (go.FigureWidget(plots.autotune(self.plan)),)
        if self.on_plan is not None:
            self.on_plan(self.plan)
        return self.plan
