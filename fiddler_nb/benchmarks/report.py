"""A self-contained HTML report: a lead (the conclusion, first), headings, notes, tables and
plotly figures.

plotly.js is inlined once (the first figure) so the file opens offline; later figures reuse it.
Measured and projected numbers go in separate, labelled tables -- never one mixed column. Table
columns have headers a reader understands and cells in human units (`Column`: a header and a
function of the record; `human_bytes`, `rate`, `tps`).
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import plotly.graph_objects as go

from ..runtime.files import write_atomic

Column = tuple[str, Callable[[Any], Any]]  # (header, record -> value shown)


def human_bytes(n: float | None) -> str:
    """'1.2 GB', '352 MB', '12 kB', '0 B' (decimal units, as the bandwidths are)."""
    if n is None:
        return "-"
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def rate(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def tps(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.1f}"


def _iqr(r: Any, phase: str) -> str:
    s = r.spread(phase) if hasattr(r, "spread") else None
    return "-" if s is None or s.repeats <= 1 else f"{s.low:.1f}-{s.high:.1f}"


MEASURED_COLUMNS: tuple[Column, ...] = (
    ("strategy", lambda r: r.strategy),
    ("GPU experts", lambda r: "no effect" if r.budget_experts is None else r.budget_experts),
    ("prompt tokens", lambda r: r.prompt_tokens), ("new tokens", lambda r: r.new_tokens),
    ("batch", lambda r: r.batch),
    ("prefill tok/s", lambda r: tps(r.prefill_tps)), ("prefill IQR", lambda r: _iqr(r, "prefill")),
    ("decode tok/s", lambda r: tps(r.decode_tps)), ("decode IQR", lambda r: _iqr(r, "decode")),
    ("runs", lambda r: r.repeats),
    ("first token (ms)", lambda r: "-" if r.time_to_first_token_s is None
     else f"{r.time_to_first_token_s * 1e3:.1f}"),
    ("decode hits on GPU", lambda r: rate(r.decode_hit_rate)),
    ("copied per generation", lambda r: human_bytes(r.bytes_moved)),
    ("same tokens", lambda r: {True: "yes", False: "NO", None: "-"}[r.tokens_match]))
PROJECTED_COLUMNS: tuple[Column, ...] = (
    ("strategy", lambda r: r.strategy), ("GPU experts", lambda r: r.budget_experts),
    ("prompt tokens", lambda r: r.prompt_tokens), ("new tokens", lambda r: r.new_tokens),
    ("prefill tok/s", lambda r: tps(r.prefill_tps)), ("decode tok/s", lambda r: tps(r.decode_tps)),
    ("end to end (s)", lambda r: f"{r.end_to_end_s:.2f}"),
    ("decode hits on GPU", lambda r: rate(r.decode_gpu_hit_rate)),
    ("copied per decode token", lambda r: human_bytes(r.decode_h2d_bytes_per_token)),
    ("CPU roofline decode tok/s", lambda r: tps(r.cpu_roofline_decode_tps)))
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;
padding:2px 6px;text-align:right}th{background:#eee}.measured{color:#064}.projected{color:#a50}
pre{background:#f6f6f6;padding:.6em;font-size:12px;overflow-x:auto}
.lead{font-size:17px;line-height:1.45;border-left:5px solid #064;padding:.4em 1em;
background:#f3f8f5}.busy{color:#a50;font-weight:bold}"""


@dataclass
class Report:
    """Collects sections in order, then writes one HTML file."""

    title: str
    parts: list[str] = field(default_factory=list)
    _js_done: bool = False

    def lead(self, sentences: Sequence[str], warning: str | None = None) -> None:
        """The conclusion, first in the file: one paragraph, and a busy-machine line if any."""
        body = "".join(f"<p>{html.escape(s)}</p>" for s in sentences)
        busy = f'<p class="busy">{html.escape(warning[:1].upper() + warning[1:])}</p>' \
            if warning else ""
        self.parts.append(f'<div class="lead">{body}{busy}</div>')

    def heading(self, text: str, kind: str | None = None) -> None:
        tag = f' <span class="{kind}">[{kind}]</span>' if kind else ""
        self.parts.append(f"<h2>{html.escape(text)}{tag}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def figure(self, fig: go.Figure) -> None:
        self.parts.append(fig.to_html(full_html=False,
                                      include_plotlyjs=not self._js_done))  # inline plotly.js once
        self._js_done = True

    def table(self, records: Sequence[Any], columns: Sequence[Union[str, Column]], kind: str,
              collapsed: bool = False) -> None:
        """One row per record; a column is a field name or a (header, record -> value) pair;
        `kind` ("measured"/"projected") labels the table."""
        cols = [c if isinstance(c, tuple) else (c, _field(c)) for c in columns]
        head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in cols)
        rows = ["<tr>" + "".join(f"<td>{html.escape(_cell(fn(r)))}</td>" for _, fn in cols)
                + "</tr>" for r in records]
        table = (f'<table class="{kind}"><caption>{kind}</caption><tr>{head}</tr>'
                 + "".join(rows) + "</table>")
        if collapsed:
            table = f"<details><summary>{kind} table ({len(rows)} rows)</summary>{table}</details>"
        self.parts.append(table)

    def write(self, path: str | Path) -> Path:
        body = "\n".join(self.parts)
        return write_atomic(path, f"<!doctype html><html><head><meta charset='utf-8'><title>"
                        f"{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
                        f"<h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>", "report")


def _field(name: str) -> Callable[[Any], Any]:
    return lambda r: (asdict(r) if is_dataclass(r) else vars(r)).get(name)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)
