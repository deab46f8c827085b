"""Plotly figures. Each returns a `plotly.graph_objects.Figure` whose title says whether it
shows measured or projected numbers, with units on both axes. Measured lines are solid,
projected lines dashed (projected bars hatched); the two are never merged into one trace.

* `tokens_per_s_vs_budget` -- tokens/s vs GPU expert budget, one line per strategy;
* `latency_curves` -- CPU expert ms vs tokens, transfer + GPU ms, the crossover n* marked;
* `popularity_heatmap` -- routed tokens per MoE layer x expert, resident experts outlined;
* `decode_timeline` -- one decode step per layer on CPU / GPU / transfer lanes
  (`Engine.trace_decode_step(p)` or (layer, lane, start_ms, end_ms) rows);
* `phase_breakdown` -- prefill vs decode seconds per strategy; `hit_rates` -- expert hit rates;
* `autotune` -- measured (and projected) tokens/s per candidate of an autotune `Plan`.

Shape legend: L = MoE layers, E = experts per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import plotly.graph_objects as go

from ..runtime.errors import OptionError
from ..runtime.generation.trace import LANES

STRATEGY_COLORS = {  # one colour per strategy across every figure
    "fiddler": "#d62728", "cpu-experts": "#1f77b4", "on-demand": "#2ca02c",
    "lru-cache": "#9467bd", "naive-offload": "#7f7f7f",
}
CURVE_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)  # x points of latency curves
MEASURED, PROJECTED = "measured", "projected"
KINDS = (MEASURED, PROJECTED)
LANE_COLORS = {"cpu": "#4c78a8", "gpu": "#54a24b", "transfer": "#e45756"}
PHASE_COLORS = {"prefill": "#f58518", "decode": "#4c78a8"}
PROJECTED_PATTERN = "/"  # hatching marks projected bars (bars have no dash style)
OUTLINE = dict(color="#111111", width=2)  # resident-expert outline in the heatmap
TEMPLATE = "plotly_white"


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
                mine = [mine[0]] * 2  # flat across the budgets shown, with its spread
                xs, ys = [budgets[0], budgets[-1]], [_value(mine[0], phase)] * 2
            else:
                mine = sorted((r for r in mine if _budget(r) is not None), key=_budget)
                xs, ys = [_budget(r) for r in mine], [_value(r, phase) for r in mine]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{strategy} ({kind})",
                                     line=dict(dash=dash, color=STRATEGY_COLORS.get(strategy)),
                                     error_y=_error_bars(mine, phase, ys)))
    kinds = [k for k, recs in (("measured", measured), ("projected", projected)) if recs]
    label = " (solid) and ".join(kinds) + (" (dashed)" if len(kinds) == 2 else "")
    where = f", prompt {prompt_tokens} tokens" if prompt_tokens else ""
    where += f", batch {batch}" if batch else ""
    bars = "<br><sup>error bars: interquartile range of the repeats</sup>" if measured else ""
    fig.update_layout(title=f"{phase.capitalize()} tokens/s vs GPU expert budget -- "
                            f"{label or 'no data'}{where}{title_suffix}{bars}",
                      xaxis_title="GPU expert budget (experts resident, all layers)",
                      yaxis=dict(title=f"{phase} throughput (tokens/s)", rangemode="tozero"),
                      legend_title="strategy")
    return fig


def _error_bars(records: Sequence[Any], phase: str, ys: Sequence[float]) -> dict | None:
    """Asymmetric error bars from records with a `spread(phase)` (measured), else none."""
    spreads = [r.spread(phase) if hasattr(r, "spread") else None for r in records]
    if len(spreads) != len(ys) or not any(spreads):
        return None
    return dict(type="data", symmetric=False,
                array=[(s.high - y) if s else 0 for s, y in zip(spreads, ys)],
                arrayminus=[(y - s.low) if s else 0 for s, y in zip(spreads, ys)])


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


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise OptionError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


# ---- popularity heatmap ------------------------------------------------------------------
def popularity_heatmap(popularity: Any, placement: Iterable[tuple[int, int]] = (),
                       kind: str = MEASURED, share: bool = True,
                       title: str | None = None) -> go.Figure:
    """Heatmap [L, E] of routing popularity; experts in `placement` outlined.

    popularity: a `Popularity`, or an [L, E] tensor / nested list of counts.
    share: colour by each layer's share of routed pairs (%) instead of raw counts.
    kind: "measured" for recorded routing (fnb.calibrate), "projected" for a synthetic law.
    """
    import torch

    _check_kind(kind)
    counts = getattr(popularity, "counts", popularity)
    counts = torch.as_tensor(counts, dtype=torch.float64)  # [L, E]
    if counts.dim() != 2:
        raise OptionError(f"popularity must be [layers, experts], got {tuple(counts.shape)}")
    L, E = counts.shape
    z = 100 * counts / counts.sum(dim=1, keepdim=True).clamp(min=1) if share else counts
    unit = "share of layer's routed pairs (%)" if share else "routed (token, expert) pairs"
    resident = sorted(set(placement))
    bad = [(l, e) for l, e in resident if not (0 <= l < L and 0 <= e < E)]
    if bad:
        raise OptionError(f"placement has pairs outside [{L} layers, {E} experts]: {bad[:4]}")
    fig = go.Figure(go.Heatmap(
        z=z.tolist(), x=list(range(E)), y=list(range(L)), colorscale="Viridis",
        colorbar=dict(title=unit), name="popularity",
        hovertemplate="layer %{y}, expert %{x}: %{z:.3g}<extra></extra>"))
    for l, e in resident:  # one rectangle per resident (layer, expert) cell
        fig.add_shape(type="rect", x0=e - 0.5, x1=e + 0.5, y0=l - 0.5, y1=l + 0.5,
                      line=OUTLINE, fillcolor="rgba(0,0,0,0)")
    source = getattr(popularity, "source", "")
    title = title or (f"Expert popularity ({kind} routing); outlined: {len(resident)} experts "
                      f"resident on the GPU" + (f"<br><sup>{source}</sup>" if source else ""))
    fig.update_layout(title=title, template=TEMPLATE,
                      xaxis=dict(title="expert (index)", dtick=1),
                      yaxis=dict(title="MoE layer (index)", dtick=1, autorange="reversed"))
    return fig


# ---- per-layer timeline of one decode step -----------------------------------------------
def decode_timeline(rows: Any, kind: str = MEASURED, device: str = "",
                    title: str | None = None) -> go.Figure:
    """Gantt-style timeline: lanes CPU / GPU / transfer on y, milliseconds on x, one bar per
    (layer, lane) region labelled with its MoE layer.

    rows: (layer, lane, start_ms, end_ms) tuples, or an object with `.rows()` (a `StepTrace`,
    whose `device` is then used when `device` is not given).
    """
    step_ms = None
    if hasattr(rows, "rows"):
        device = device or getattr(rows, "device", "")
        step_ms = getattr(rows, "total_ms", None)
        rows = rows.rows()
    rows = [(int(l), str(lane), float(a), float(b)) for l, lane, a, b in rows]
    unknown = sorted({lane for _, lane, _, _ in rows} - set(LANES))
    if unknown:
        raise OptionError(f"unknown lanes {unknown}; lanes are {LANES}")
    bad = [r for r in rows if r[3] < r[2]]
    if bad:
        raise OptionError(f"rows end before they start: {bad[:3]}")
    _check_kind(kind)
    fig = go.Figure()
    for lane in LANES:
        mine = [r for r in rows if r[1] == lane]
        fig.add_bar(
            y=[lane] * len(mine), x=[b - a for _, _, a, b in mine],
            base=[a for _, _, a, _ in mine], orientation="h", name=lane,
            text=[f"L{l}" for l, *_ in mine], textposition="inside",
            marker=dict(color=LANE_COLORS[lane], line=dict(color="#333", width=1)),
            customdata=[[l, a, b] for l, _, a, b in mine],
            hovertemplate="layer %{customdata[0]}: %{customdata[1]:.3f}-%{customdata[2]:.3f} ms"
                          "<extra>" + lane + "</extra>")
        if kind == PROJECTED:
            fig.data[-1].marker.pattern.shape = PROJECTED_PATTERN
    total = step_ms if step_ms is not None else max((b for *_, b in rows), default=0.0)
    where = f" on {device}" if device else ""
    title = title or f"One decode step, per MoE layer ({kind}{where}; total {total:.3f} ms)"
    fig.update_layout(title=title, template=TEMPLATE, barmode="overlay",
                      xaxis=dict(title="time since the step started (ms)", rangemode="tozero"),
                      yaxis=dict(title="lane", categoryorder="array",
                                 categoryarray=list(reversed(LANES)),
                                 range=[-0.5, len(LANES) - 0.5]),  # empty lanes stay visible
                      legend=dict(title="lane", traceorder="normal"))
    return fig


# ---- prefill vs decode per strategy ------------------------------------------------------
@dataclass(frozen=True)
class PhaseTimes:
    """Seconds one strategy spent in each phase of one generation."""

    strategy: str
    prefill_s: float
    decode_s: float  # all decode steps together
    kind: str = MEASURED
    budget_experts: int | None = None  # named in the bar's label when strategies repeat
    prompt_tokens: int | None = None


def phase_times(item: Any) -> PhaseTimes | None:
    """PhaseTimes from a PhaseTimes, `widgets.TunerPoint`, `planner.PlanRecord` or
    `bench.BenchRecord` (None for a skipped bench cell).

    Anything else with `strategy`/`label`, `prefill_s`, `decode_s` (and optionally `kind`) works.
    """
    if isinstance(item, PhaseTimes):
        return item
    if hasattr(item, "decode_ms_per_token"):  # PlanRecord: decode is new_tokens - 1 steps
        return PhaseTimes(item.strategy, item.prefill_ms / 1e3,
                          item.decode_ms_per_token * max(item.new_tokens - 1, 0) / 1e3, PROJECTED,
                          item.budget_experts, item.prompt_tokens)
    if hasattr(item, "time_to_first_token_s"):  # BenchRecord: medians of tokens/s
        if item.time_to_first_token_s is None or not item.decode_tps:
            return None
        steps = item.batch * max(item.new_tokens - 1, 0)  # decode_tps counts batch x tokens
        return PhaseTimes(item.strategy, item.time_to_first_token_s, steps / item.decode_tps,
                          getattr(item, "kind", MEASURED), item.budget_experts, item.prompt_tokens)
    name = getattr(item, "strategy", None) or getattr(item, "label")
    return PhaseTimes(str(name), float(item.prefill_s), float(item.decode_s),
                      getattr(item, "kind", MEASURED), getattr(item, "budget_experts", None),
                      getattr(item, "prompt_tokens", None))


def _labels(times: Sequence[PhaseTimes]) -> list[str]:
    """'strategy (kind)', plus budget / prompt length where that alone repeats."""
    labels = [f"{t.strategy} ({t.kind})" for t in times]
    for extra in (lambda t: f", {t.budget_experts} experts", lambda t: f", prompt {t.prompt_tokens}"):
        if len(set(labels)) == len(labels):
            break
        labels = [f"{t.strategy}{extra(t)} ({t.kind})" if labels.count(lab) > 1 else lab
                  for t, lab in zip(times, labels)]
    return labels


def _pick_cells(items: Sequence[Any], budget: int | None, prompt_tokens: int | None) -> list[Any]:
    """Items at one budget / prompt length (items without a budget, e.g. naive, always kept)."""
    def keep(i: Any) -> bool:
        b = getattr(i, "budget_experts", None)
        return ((budget is None or b is None or b == budget) and
                (prompt_tokens is None or getattr(i, "prompt_tokens", None) in (None, prompt_tokens)))
    return [i for i in items if keep(i)]


def phase_breakdown(items: Sequence[Any], budget: int | None = None,
                    prompt_tokens: int | None = None, title: str | None = None) -> go.Figure:
    """Stacked bars per strategy: prefill seconds under decode seconds; projected ones hatched.

    budget / prompt_tokens: keep only records at that GPU expert budget / prompt length.
    """
    times = [t for t in map(phase_times, _pick_cells(items, budget, prompt_tokens)) if t is not None]
    if not times:
        raise OptionError("phase_breakdown needs at least one strategy (after filtering)")
    for t in times:
        _check_kind(t.kind)
    fig = go.Figure()
    labels = dict(zip(map(id, times), _labels(times)))
    for kind in KINDS:
        mine = [t for t in times if t.kind == kind]
        if not mine:
            continue
        x = [labels[id(t)] for t in mine]
        for phase in ("prefill", "decode"):
            y = [getattr(t, f"{phase}_s") for t in mine]
            pattern = dict(shape=PROJECTED_PATTERN if kind == PROJECTED else "")
            fig.add_bar(x=x, y=y, name=f"{phase} ({kind})", legendgroup=phase,
                        marker=dict(color=PHASE_COLORS[phase], pattern=pattern),
                        hovertemplate="%{x}: %{y:.4f} s<extra>" + phase + "</extra>")
    kinds = sorted({t.kind for t in times})
    where = "".join([f", budget {budget} experts" if budget is not None else "",
                     f", prompt {prompt_tokens} tokens" if prompt_tokens is not None else ""])
    title = title or f"Prefill vs decode time per strategy ({' and '.join(kinds)}{where})"
    fig.update_layout(title=title, template=TEMPLATE, barmode="stack",
                      xaxis_title="strategy (kind)", yaxis_title="time per generation (s)")
    return fig


# ---- decode hit rate per configuration ---------------------------------------------------
def hit_rates(points: Sequence[Any], title: str | None = None) -> go.Figure:
    """Bars of the decode GPU hit rate (%) per configuration, from `widgets.TunerPoint`s."""
    if not points:
        raise OptionError("hit_rates needs at least one point")
    kinds = sorted({_check_kind(p.kind) for p in points})
    fig = go.Figure()
    for kind in kinds:
        mine = [p for p in points if p.kind == kind]
        fig.add_bar(x=[f"{p.label}, {p.budget_experts} experts" for p in mine],
                    y=[100 * p.hit_rate for p in mine], name=kind,
                    marker=dict(pattern=dict(shape=PROJECTED_PATTERN if kind == PROJECTED else "")),
                    hovertemplate="%{x}: %{y:.1f}%<extra>" + kind + "</extra>")
    title = title or (f"Decode GPU hit rate per placement ({' and '.join(kinds)}): share of "
                      "expert-token pairs whose expert was resident")
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title="placement+execution, budget",
                      yaxis=dict(title="decode GPU hit rate (%)", range=[0, 100]))
    return fig


# ---- autotune ------------------------------------------------------------------------------
def autotune(plan: Any) -> go.Figure:
    """Prefill and decode tokens/s per candidate of a `fnb.Plan`: measured bars solid, the
    planner's projections (if any) hatched in traces of their own; the chosen one starred."""
    from plotly.subplots import make_subplots

    rows = list(plan.rows)
    labels = [("* " if r.settings == plan.settings else "") + r.settings.label for r in rows]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=("prefill tokens/s", "decode tokens/s"))
    for col, phase in ((1, "prefill"), (2, "decode")):
        for kind in KINDS:
            values = [getattr(r, f"{kind}_{phase}_tps") for r in rows]
            if all(v is None for v in values):
                continue
            fig.add_trace(go.Bar(
                y=labels, x=values, orientation="h", name=f"{phase} ({kind})",
                hovertext=[r.status for r in rows],
                marker=dict(color=PHASE_COLORS[phase],
                            pattern=dict(shape=PROJECTED_PATTERN if kind == PROJECTED else "")),
                legendgroup=kind), row=1, col=col)
    w = plan.workload
    fig.update_layout(
        title=f"Autotune: tokens/s per candidate -- measured (solid), projected (hatched); "
              f"* = chosen<br><sup>prompt {w.prompt_tokens} + {w.new_tokens} new, batch "
              f"{w.batch}, {plan.dtype} on {plan.device} ({plan.machine})</sup>",
        barmode="group", template=TEMPLATE, height=max(340, 110 + 28 * len(rows)),
        margin=dict(t=110),  # two title lines above the subplot titles
        yaxis=dict(autorange="reversed", title="candidate"), legend_title="phase (kind)")
    fig.update_xaxes(title_text="tokens/s")
    return fig


def format_tradeoff(points: Sequence[Any], title: str = "") -> go.Figure:
    """Expert memory, decode tokens/s and output error per expert format (benchmarks/
    format_compare.py `FormatPoint`s): three panels, one bar per format."""
    from plotly.subplots import make_subplots

    names = [p.expert_format for p in points]
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "routed experts in host memory (MiB)", "decode tokens/s",
        "relative expert-output error (bars) / top-1 agreement (markers)"))
    fig.add_bar(x=names, y=[p.expert_bytes / (1 << 20) for p in points], row=1, col=1,
                name="memory", showlegend=False)
    fig.add_bar(x=names, y=[p.decode_tps for p in points], row=1, col=2, name="decode",
                showlegend=False)
    fig.add_bar(x=names, y=[p.rel_expert_error for p in points], row=1, col=3,
                name="relative error", showlegend=True)
    fig.add_scatter(x=names, y=[1.0 - p.top1_agreement for p in points], row=1, col=3,
                    mode="markers", marker=dict(size=12, symbol="diamond"),
                    name="1 - top-1 agreement", showlegend=True)
    kinds = sorted({p.kind for p in points})
    fig.update_layout(title=title or f"Expert formats: memory vs speed vs error ({', '.join(kinds)})",
                      template="plotly_white", height=420)
    return fig
