"""Figures that show measured numbers with their spread (measure/discipline.py):

* `strategies_without_gpu` -- on a CPU-only machine, one bar per strategy (tokens/s, median, with
  the interquartile range as error bars), axis from zero: budgets cannot change anything there,
  so no curve against the budget is drawn that could look like a finding;
* `latency_with_spread` -- `plots.latency_curves` plus the CPU points as measured, each with its
  interquartile range.
"""

from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from .plots import STRATEGY_COLORS, TEMPLATE, latency_curves


def strategies_without_gpu(summaries: Sequence[Any], phase: str = "decode",
                           where: str = "") -> go.Figure:
    """Bars of `phase` tokens/s per strategy from `findings.StrategySummary`s (measured)."""
    rows = [(s.strategy, getattr(s, phase)) for s in summaries if getattr(s, phase) is not None]
    fig = go.Figure(go.Bar(
        y=[f"{name} ({sp.repeats} runs)" for name, sp in rows], x=[sp.median for _, sp in rows],
        orientation="h",
        marker=dict(color=[STRATEGY_COLORS.get(name, "#888") for name, _ in rows]),
        error_x=dict(type="data", symmetric=False, array=[sp.high - sp.median for _, sp in rows],
                     arrayminus=[sp.median - sp.low for _, sp in rows]),
        name=phase, hovertemplate="%{y}: %{x:.1f} tok/s<extra>" + phase + "</extra>"))
    fig.update_layout(
        title=f"No GPU: every budget runs on the CPU -- {phase} tokens/s per strategy "
              f"(measured{where})<br><sup>median over budgets; error bars: the typical "
              "interquartile range of a cell's repeats</sup>",
        template=TEMPLATE, height=120 + 45 * len(rows), margin=dict(t=90),
        xaxis=dict(title=f"{phase} throughput (tokens/s)", rangemode="tozero"),
        yaxis=dict(title="strategy", autorange="reversed"), showlegend=False)
    return fig


def latency_with_spread(profile: Any, latency: Any, expert_bytes: int,
                        title: str = "") -> go.Figure:
    """CPU vs transfer latency (log axes) with the profile's measured CPU points and IQRs."""
    fig = latency_curves(latency, expert_bytes, title=title)
    spreads = profile.cpu_spreads()
    fig.add_trace(go.Scatter(
        x=list(profile.cpu_tokens), y=[s.median for s in spreads], mode="markers",
        name="CPU as measured (median, IQR)", marker=dict(color="black", size=7),
        error_y=dict(type="data", symmetric=False, array=[s.high - s.median for s in spreads],
                     arrayminus=[s.median - s.low for s in spreads])))
    fig.update_layout(xaxis_title="tokens routed to the expert (log scale)",
                      yaxis_title="latency (ms, log scale)")
    return fig
