"""What one benchmark cell is: `BenchRecord` (frozen; medians with their interquartile range,
the repeats behind them, the machine and the command), the strategies it names, and the
records' JSON file and fixed-width table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from ..measure.discipline import Spread
from ..runtime.files import write_json

STRATEGIES: dict[str, tuple[str, str]] = {  # name -> (placement, execution) in the engine
    "fiddler": ("popularity", "auto"),
    "cpu-experts": ("none", "cpu"),
    "on-demand": ("popularity", "transfer"),
    "lru-cache": ("lru", "transfer"),
    "naive-offload": ("accelerate", "accelerate"),
}


class TokenMismatchError(AssertionError):
    """Two strategies produced different greedy tokens for the same prompt."""


@dataclass(frozen=True)
class BenchRecord:
    strategy: str
    placement: str
    execution: str
    budget_experts: int | None  # experts resident on the fast device; None: has no effect
    prompt_tokens: int  # per sequence
    new_tokens: int  # per sequence
    batch: int
    prefill_tps: float | None  # median prompt tokens (x batch) per second
    decode_tps: float | None  # median generated tokens (x batch) per second after the first
    time_to_first_token_s: float | None
    prefill_hit_rate: float | None  # expert-token pairs served by resident experts
    decode_hit_rate: float | None
    bytes_moved: int | None  # expert weights + activations copied, one generation
    peak_gpu_bytes: int | None  # None on a CPU-only machine
    tokens_match: bool | None  # same greedy tokens as the reference strategy
    repeats: int
    device: str
    dtype: str
    model: str
    layers: int
    experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    machine: str
    date: str
    command: str
    kind: str = "measured"
    derived_full_decode_tps: float | None = None  # scaled to the full model's layers: derived
    skipped: str | None = None  # why this cell was not run (its numbers are then None)
    notes: tuple[str, ...] = field(default_factory=tuple)
    prefill_tps_low: float | None = None  # interquartile range of the repeats (discipline.py)
    prefill_tps_high: float | None = None
    decode_tps_low: float | None = None
    decode_tps_high: float | None = None
    busy_note: str | None = None  # "this machine was busy: ..." when the load said so

    def spread(self, phase: str) -> Spread | None:
        """The `phase` ('prefill' / 'decode') tokens/s as a Spread (None if not measured)."""
        median = getattr(self, f"{phase}_tps")
        if median is None:
            return None
        low, high = getattr(self, f"{phase}_tps_low"), getattr(self, f"{phase}_tps_high")
        return Spread(median, median if low is None else low, median if high is None else high,
                      self.repeats, "tok/s")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchRecord":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["notes"] = tuple(kwargs.get("notes", ()))
        return cls(**kwargs)


def save_records(records: Sequence[BenchRecord], path: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    payload = {"kind": "measured", **(extra or {}), "records": [asdict(r) for r in records]}
    return write_json(path, payload, "bench results")


def load_records(path: str | Path) -> list[BenchRecord]:
    data = json.loads(Path(path).read_text())
    return [BenchRecord.from_dict(r) for r in data["records"]]


def records_table(records: Sequence[BenchRecord]) -> str:
    """Fixed-width table; the header names the machine, dtype and model of the first record."""
    if not records:
        return "measured: (no records)"
    r0 = records[0]
    head = (f"measured: {r0.model} ({r0.layers} MoE layers x {r0.experts} experts, H={r0.hidden_size}"
            f" I={r0.intermediate_size}) {r0.dtype} on {r0.device}; {r0.machine}; {r0.date}")
    cols = (f"{'strategy':<14}{'budget':>7}{'prompt':>7}{'new':>5}{'batch':>6}{'prefill tok/s':>15}"
            f"{'decode tok/s (IQR)':>26}{'runs':>5}{'TTFT s':>9}{'hit% dec':>9}{'MB moved':>10}"
            f"{'same':>6}")
    rows = [head, cols]
    for r in records:
        if r.skipped:
            rows.append(f"{r.strategy:<14}{_f(r.budget_experts, 'd'):>7}{r.prompt_tokens:>7}"
                        f"{r.new_tokens:>5}{r.batch:>6}  skipped: {r.skipped}")
            continue
        rows.append(f"{r.strategy:<14}{_f(r.budget_experts, 'd'):>7}{r.prompt_tokens:>7}"
                    f"{r.new_tokens:>5}{r.batch:>6}{_f(r.prefill_tps, '.1f'):>15}"
                    f"{_interval(r.spread('decode')):>26}{r.repeats:>5}"
                    f"{_f(r.time_to_first_token_s, '.4f'):>9}"
                    f"{_f(None if r.decode_hit_rate is None else 100 * r.decode_hit_rate, '.1f'):>9}"
                    f"{_f(None if r.bytes_moved is None else r.bytes_moved / 1e6, '.2f'):>10}"
                    f"{_f(r.tokens_match, ''):>6}")
    notes = dict.fromkeys(r.busy_note for r in records if r.busy_note)
    return "\n".join(rows + list(notes))


def _interval(s: Spread | None) -> str:
    return "-" if s is None else f"{s.median:.2f} ({s.low:.2f}-{s.high:.2f})"


def _f(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if spec else str(value)


