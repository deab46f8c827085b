"""Running one benchmark cell: the engine under one strategy, or accelerate's naive offload,
on one (prompt length, batch) case -- warm-up, then repeats until the generation time is steady
or the cell's time budget is spent (measure/discipline.py) -- into a `BenchRecord` with the
median and interquartile range of each phase's tokens/s. Greedy tokens are checked against the
reference strategy's (the first to run the case).
"""

from __future__ import annotations

import gc
import statistics
from dataclasses import replace
from typing import Any, Sequence

import torch

from ..measure.discipline import RepeatPolicy, repeat, spread
from .records import STRATEGIES, BenchRecord, TokenMismatchError


def check_tokens(case, ids: torch.Tensor, reference: dict, strategy: str, on_mismatch: str) -> bool:
    ref = reference.setdefault(case, ids)
    same = ref.shape == ids.shape and bool(torch.equal(ref, ids))
    if not same and on_mismatch == "raise":
        raise TokenMismatchError(f"{strategy} generated {ids.tolist()} but the reference strategy "
                                 f"generated {ref.tolist()} for prompt length {case[0]}, batch "
                                 f"{case[1]}")
    return same


def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v == v]  # drop NaN (e.g. decode of a single new token)
    return statistics.median(values) if values else None


def _spread_fields(prefill: Sequence[float], decode: Sequence[float]) -> dict[str, Any]:
    """Median and interquartile range of each phase's tokens/s (NaN runs dropped)."""
    out: dict[str, Any] = {}
    for phase, values in (("prefill", prefill), ("decode", decode)):
        kept = [v for v in values if v == v]
        s = spread(kept) if kept else None
        out.update({f"{phase}_tps": s and s.median, f"{phase}_tps_low": s and s.low,
                    f"{phase}_tps_high": s and s.high})
    return out


def _wall_s(stats: Any) -> float:
    """What the repeats must make steady: the whole generation's time."""
    return stats.prefill_s + stats.decode_s


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def run_engine_cell(eng, strategy: str, budget: int, case, ids: torch.Tensor,
                    policy: RepeatPolicy, base: dict, reference: dict,
                    on_mismatch: str) -> BenchRecord:
    """One engine cell: warm-up, then repeats until the generation time is steady (policy)."""
    new = base["new_tokens"]
    kw = dict(min_new_tokens=new)  # no early EOS: every strategy decodes the same count
    for _ in range(policy.warmup):
        eng.generate(ids, new, **kw)
    peak_reset(eng.device)
    steady = replace(policy, warmup=0)
    runs = repeat(lambda: eng.generate(ids, new, **kw), steady,
                  value=lambda r: _wall_s(r.stats)).runs
    stats = [r.stats for r in runs]
    same = check_tokens(case, runs[0].token_ids, reference, strategy, on_mismatch)
    placement, execution = STRATEGIES[strategy]
    return BenchRecord(
        strategy=strategy, placement=placement, execution=execution,
        budget_experts=budget if placement != "none" else None,
        prompt_tokens=case[0], batch=case[1],
        **_spread_fields([s.prefill_tokens_per_s for s in stats],
                         [s.decode_tokens_per_s for s in stats]),
        time_to_first_token_s=_median([s.time_to_first_token_s for s in stats]),
        prefill_hit_rate=_median([s.prefill.hit_rate for s in stats]),
        decode_hit_rate=_median([s.decode.hit_rate for s in stats]),
        bytes_moved=int(statistics.median(s.bytes_moved for s in stats)),
        peak_gpu_bytes=_peak(eng.device), tokens_match=same,
        notes=tuple(stats[0].notes), **dict(base, repeats=len(runs)))


def run_naive(model, device, dtype, budgets, cases, prompts, policy: RepeatPolicy, base,
              reference, on_mismatch, bar) -> list[BenchRecord]:
    """The naive-offload cells (accelerate), with the same repeat policy as the engine's."""
    from ..runtime.model.config import resolve_device, resolve_dtype
    from ..runtime.engine.factory import resolve_path
    from .naive import load_naive, timed_generate

    dev = resolve_device(device)
    out = []
    # Without CUDA the budget changes nothing: run once and record budget None.
    run_budgets = budgets if dev.type == "cuda" else [None]
    for budget in run_budgets:
        try:
            naive, setup, calls = load_naive(resolve_path(model), resolve_dtype(dtype),
                                             budget or 0, dev)
        except ImportError as err:
            out += [skipped_cell(case, budget, base, f"accelerate not importable: {err}")
                    for case in cases]
            bar.update(len(cases))
            continue
        pad = getattr(naive.config, "pad_token_id", None)
        kw = dict(min_new_tokens=base["new_tokens"], pad_token_id=pad)
        for case in cases:
            ids = prompts[case]
            for _ in range(policy.warmup):
                timed_generate(naive, ids, base["new_tokens"], dev, **kw)
            peak_reset(dev)
            calls[0] = 0
            runs = repeat(lambda: timed_generate(naive, ids, base["new_tokens"], dev, **kw),
                          replace(policy, warmup=0),
                          value=lambda r: r.prefill_s + r.decode_s).runs
            moved = calls[0] // len(runs) * setup.expert_bytes_per_forward
            same = check_tokens(case, runs[0].token_ids, reference, "naive-offload", on_mismatch)
            b, p, n = case[1], case[0], base["new_tokens"]
            out.append(BenchRecord(
                strategy="naive-offload", placement="accelerate", execution=setup.mode,
                budget_experts=budget, prompt_tokens=p, batch=b,
                **_spread_fields([b * p / r.prefill_s for r in runs],
                                 [b * (n - 1) / r.decode_s if n > 1 else float("nan")
                                  for r in runs]),
                time_to_first_token_s=_median([r.prefill_s for r in runs]),
                prefill_hit_rate=None, decode_hit_rate=None, bytes_moved=moved,
                peak_gpu_bytes=_peak(dev), tokens_match=same, notes=(setup.note,),
                **dict(base, repeats=len(runs))))
            bar.update(1)
        del naive, setup, calls
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the next budget dispatches a fresh copy
    return out


def skipped_cell(case, budget, base, reason: str, strategy: str = "naive-offload",
             placement: str = "accelerate", execution: str = "-") -> BenchRecord:
    return BenchRecord(strategy=strategy, placement=placement, execution=execution,
                       budget_experts=budget, prompt_tokens=case[0], batch=case[1],
                       prefill_tps=None, decode_tps=None, time_to_first_token_s=None,
                       prefill_hit_rate=None, decode_hit_rate=None, bytes_moved=None,
                       peak_gpu_bytes=None, tokens_match=None, skipped=reason, **base)
