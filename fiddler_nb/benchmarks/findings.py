"""What a run found, in sentences: the conclusion the demo report opens with.

Pure functions of the results (a HardwareProfile, bench `BenchRecord`s, planner `PlanRecord`s):
  * `cpu_expert_finding`  -- what one expert of the profiled shape costs on this CPU, with spread;
  * `projection_finding`  -- what a GPU (measured or preset) would give, projected, against
                             naive offloading at the budget that fits;
  * `measured_finding`    -- what the measured strategies did here (on a CPU-only machine: that
                             budget has no effect, and whether the strategies' spreads overlap);
  * `strategy_summary`    -- per strategy: decode and prefill tokens/s pooled over budgets.
Every number carries its unit and whether it was measured or projected.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from ..measure.discipline import Spread
from .report import human_bytes

NAIVE = "naive-offload"
OURS = "fiddler"


@dataclass(frozen=True)
class StrategySummary:
    """One strategy's measured tokens/s, pooled over the budgets it ran at."""

    strategy: str
    decode: Spread | None  # median of the cells' medians and of their IQR bounds (typical)
    prefill: Spread | None
    cells: int


def _pool(spreads: Sequence[Spread], unit: str) -> Spread | None:
    if not spreads:
        return None
    # the typical cell: median of the medians and of the IQR bounds (one outlier cell among the
    # budgets would otherwise stretch the interval over everything)
    return Spread(statistics.median(s.median for s in spreads),
                  statistics.median(s.low for s in spreads),
                  statistics.median(s.high for s in spreads),
                  sum(s.repeats for s in spreads), unit)


def strategy_summary(records: Sequence[Any], decode_prompt: int, prefill_prompt: int,
                     batch: int = 1) -> list[StrategySummary]:
    """Per strategy (in the records' order): decode at `decode_prompt`, prefill at
    `prefill_prompt`, batch `batch`, pooled over budgets."""
    out = []
    for strategy in dict.fromkeys(r.strategy for r in records):
        mine = [r for r in records if r.strategy == strategy and r.batch == batch and not r.skipped]
        dec = [s for r in mine if r.prompt_tokens == decode_prompt
               for s in [r.spread("decode")] if s is not None]
        pre = [s for r in mine if r.prompt_tokens == prefill_prompt
               for s in [r.spread("prefill")] if s is not None]
        out.append(StrategySummary(strategy, _pool(dec, "tok/s"), _pool(pre, "tok/s"), len(mine)))
    return out


def cpu_expert_finding(profile: Any) -> str:
    """'On this CPU (...), one mixtral-8x7b bf16 expert (352 MB) takes 18.2 ms at 1 token (IQR
    17.5-19.0, 7 runs): 19.3 GB/s of weights; the machine reads 30.1 GB/s.'"""
    s = profile.cpu_spreads()[0]
    n = profile.cpu_tokens[0]
    gbps = profile.expert_bytes / (s.median * 1e-3) / 1e9
    f = profile.facts
    interval = f" (IQR {s.low:.3g}-{s.high:.3g} ms, {s.repeats} runs)" if s.repeats > 1 else ""
    threads = f"{f.threads_used} thread{'s' if f.threads_used != 1 else ''}"
    return (f"On this CPU ({f.cpu_model}, {threads}), one {profile.shape_name} "
            f"{profile.dtype} expert ({human_bytes(profile.expert_bytes)}) takes {s.median:.3g} ms "
            f"at {n} token{'s' if n > 1 else ''}{interval}, reading its weights at {gbps:.1f} "
            f"GB/s; the machine reads {profile.cpu_read_gbps:.1f} GB/s at best (measured).")


def _at_fit(plan_records: Sequence[Any], strategy: str) -> Any | None:
    mine = [r for r in plan_records if r.strategy == strategy]
    return max(mine, key=lambda r: r.budget_experts) if mine else None


def projection_finding(plan_records: Sequence[Any], gpu: str, shape: str,
                       profile: Any = None) -> str:
    """'With an rtx-4090 next to this CPU, fiddler would decode mixtral-8x7b at 3.1 tok/s
    against 0.4 tok/s for naive offloading (7.8x), holding 53 experts on the GPU (projected).'"""
    ours, naive = _at_fit(plan_records, OURS), _at_fit(plan_records, NAIVE)
    if ours is None:
        return f"No projection for {shape} on {gpu}."
    text = (f"With the GPU {gpu} next to this CPU, fiddler would decode {shape} at "
            f"{ours.decode_tps:.2f} tok/s with {ours.budget_experts} experts on the GPU")
    if naive is not None and naive.decode_tps > 0:
        text += (f", against {naive.decode_tps:.2f} tok/s for naive offloading "
                 f"({ours.decode_tps / naive.decode_tps:.1f}x)")
    text += " -- projected from the CPU curve measured here and the GPU's preset figures"
    if profile is not None:
        lat = profile.latency_model()
        cpu, copy = lat.cpu_path_ms(1), lat.transfer_path_ms(1, profile.expert_bytes)
        if copy < cpu:  # auto copies every non-resident expert: the link, not this CPU, decides
            text += (f"; at {cpu:.0f} ms per expert this CPU is slower than copying one to the "
                     f"GPU ({copy:.0f} ms), so the projection is bound by the link, not by it")
    return text + "."


def _overlap(summaries: Sequence[StrategySummary]) -> bool:
    spans = [(s.decode.low, s.decode.high) for s in summaries if s.decode is not None]
    return bool(spans) and max(lo for lo, _ in spans) <= min(hi for _, hi in spans)


def measured_finding(records: Sequence[Any], summaries: Sequence[StrategySummary]) -> str:
    """What the measured strategies did on this machine, in one sentence."""
    r0 = records[0]
    decoded = [s for s in summaries if s.decode is not None]
    if not decoded:
        return "No strategy was measured."
    lo = min(s.decode.median for s in decoded)
    hi = max(s.decode.median for s in decoded)
    same = all(r.tokens_match is not False for r in records)
    tokens = "the same greedy tokens" if same else "different greedy tokens in some cells"
    if r0.device == "cpu":
        spread_word = "their spreads overlap" if _overlap(decoded) else \
            "their spreads do not all overlap, so engine overheads differ"
        return (f"There is no GPU here, so every budget runs on the CPU: on the {r0.model} test "
                f"model the {len(decoded)} strategies decode at {lo:.0f}-{hi:.0f} tok/s and "
                f"produce {tokens}; {spread_word} -- a check that they agree, not a GPU "
                "speed-up (measured).")
    ours = [r for r in records if r.strategy == OURS and r.decode_tps and not r.skipped]
    naive = [r for r in records if r.strategy == NAIVE and r.decode_tps and not r.skipped]
    if ours and naive:
        best = max(ours, key=lambda r: r.decode_tps)
        ref = max(naive, key=lambda r: r.decode_tps)
        return (f"On this machine's GPU ({r0.device}), fiddler decodes the {r0.model} model at "
                f"{best.decode_tps:.1f} tok/s (budget {best.budget_experts}) against "
                f"{ref.decode_tps:.1f} tok/s for naive offloading, with {tokens} (measured).")
    return f"The strategies decode at {lo:.1f}-{hi:.1f} tok/s with {tokens} (measured)."
