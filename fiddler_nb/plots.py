"""Plotly figures for benchmarks and profiles. Each returns a `plotly.graph_objects.Figure`
whose title says whether it shows measured or projected numbers, with units on both axes.

Measured lines are solid, projected lines dashed; the two are never merged into one trace.
"""

from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

STRATEGY_COLORS = {  # one colour per strategy across every figure
    "fiddler": "#d62728", "cpu-experts": "#1f77b4", "on-demand": "#2ca02c",
    "lru-cache": "#9467bd", "naive-offload": "#7f7f7f",
}
CURVE_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # x points of latency curves


def _pick(records: Sequence[Any], prompt_tokens: int | None, batch: int | None) -> list[Any]:
    return [r for r in records if (prompt_tokens is None or r.prompt_tokens == prompt_tokens)
            and (batch is None or getattr(r, "batch", batch) == batch)]


def _budget(r: Any) -> int | None:
    return getattr(r, "budget_experts", None)


def _value(r: Any, phase: str) -> float | None:
    return getattr(r, f"{phase}_tps", None)


def tokens_per_s_vs_budget(measured: Sequence[Any] = (), projected: Sequence[Any] = (),
                           phase: str = "decode", prompt_tokens: int | None = None,
                           batch: int | None = 1, title_suffix: str = "") -> go.Figure:
    """Tokens/s against the GPU expert budget, one line per strategy.

    measured: `bench.BenchRecord`s (solid); projected: `planner.PlanRecord`s (dashed). A record
    with budget None (nothing resident, or no GPU) is drawn flat across the budgets shown.
    """
    fig = go.Figure()
    for kind, records, dash in (("measured", measured, "solid"), ("projected", projected, "dash")):
        rows = [r for r in _pick(records, prompt_tokens, batch) if _value(r, phase) is not None]
        budgets = sorted({_budget(r) for r in rows if _budget(r) is not None}) or [0]
        for strategy in dict.fromkeys(r.strategy for r in rows):
            mine = [r for r in rows if r.strategy == strategy]
            if all(_budget(r) is None for r in mine):
                xs, ys = [budgets[0], budgets[-1]], [_value(mine[0], phase)] * 2
            else:
                mine = sorted((r for r in mine if _budget(r) is not None), key=_budget)
                xs, ys = [_budget(r) for r in mine], [_value(r, phase) for r in mine]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{strategy} ({kind})",
                                     line=dict(dash=dash, color=STRATEGY_COLORS.get(strategy))))
    kinds = [k for k, recs in (("measured", measured), ("projected", projected)) if recs]
    label = " (solid) and ".join(kinds) + (" (dashed)" if len(kinds) == 2 else "")
    where = f", prompt {prompt_tokens} tokens" if prompt_tokens else ""
    where += f", batch {batch}" if batch else ""
    fig.update_layout(title=f"{phase.capitalize()} tokens/s vs GPU expert budget -- "
                            f"{label or 'no data'}{where}{title_suffix}",
                      xaxis_title="GPU expert budget (experts resident, all layers)",
                      yaxis_title=f"{phase} throughput (tokens/s)", legend_title="strategy")
    return fig


def latency_curves(latency: Any, expert_bytes: int, title: str = "",
                   tokens: Sequence[int] = CURVE_TOKENS) -> go.Figure:
    """CPU path vs weight-transfer path ms for one non-resident expert, with the crossover n*.

    latency: a `LatencyModel` (e.g. `HardwareProfile.latency_model()`); its `source` goes in the
    title so measured CPU curves and preset/projected GPU curves are told apart.
    """
    xs = list(tokens)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[latency.cpu_path_ms(n) for n in xs], mode="lines+markers",
                             name="run on CPU (activations move)"))
    fig.add_trace(go.Scatter(x=xs, y=[latency.transfer_path_ms(n, expert_bytes) for n in xs],
                             mode="lines+markers", name="copy weights, run on GPU",
                             line=dict(dash="dash")))
    cross = latency.crossover_tokens(expert_bytes)
    if cross is not None:  # a trace, not add_vline: shapes on log axes take log10 coordinates
        ys = [latency.cpu_path_ms(n) for n in xs] + [latency.transfer_path_ms(n, expert_bytes)
                                                     for n in xs]
        fig.add_trace(go.Scatter(x=[cross, cross], y=[min(ys), max(ys)], mode="lines",
                                 name=f"crossover n* = {cross} tokens",
                                 line=dict(color="black", dash="dot")))
    kind = "measured" if latency.source == "measured" else "projected"  # any preset/default part
    fig.update_layout(title=title or f"CPU vs transfer latency of one expert -- {kind} "
                                     f"({latency.source})",
                      xaxis_title="tokens routed to the expert", yaxis_title="latency (ms)",
                      xaxis_type="log", yaxis_type="log")
    return fig
