"""A self-contained HTML report: headings, notes, tables and plotly figures.

plotly.js is inlined once (the first figure) so the file opens offline; later figures reuse it.
Measured and projected numbers go in separate, labelled tables -- never one mixed column.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go

from ..runtime.files import write_atomic

MEASURED_COLUMNS = ("strategy", "budget_experts", "prompt_tokens", "new_tokens", "batch",
                    "prefill_tps", "decode_tps", "time_to_first_token_s", "decode_hit_rate",
                    "bytes_moved", "tokens_match")
PROJECTED_COLUMNS = ("strategy", "budget_experts", "prompt_tokens", "new_tokens", "prefill_tps",
                     "decode_tps", "end_to_end_s", "decode_gpu_hit_rate",
                     "decode_h2d_bytes_per_token", "cpu_roofline_decode_tps")
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;
padding:2px 6px;text-align:right}th{background:#eee}.measured{color:#064}.projected{color:#a50}
pre{background:#f6f6f6;padding:.6em;font-size:12px;overflow-x:auto}"""


@dataclass
class Report:
    """Collects sections in order, then writes one HTML file."""

    title: str
    parts: list[str] = field(default_factory=list)
    _js_done: bool = False

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

    def table(self, records: Sequence[Any], columns: Sequence[str], kind: str,
              collapsed: bool = False) -> None:
        """One row per record (dataclasses); `kind` ("measured"/"projected") labels the table."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        rows = []
        for r in records:
            d = asdict(r)
            rows.append("<tr>" + "".join(f"<td>{html.escape(_cell(d.get(c)))}</td>"
                                         for c in columns) + "</tr>")
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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)
