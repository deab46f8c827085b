"""Benchmark matrix: strategy x GPU expert budget x prompt length x batch, measured end to end.

Every cell runs the same seeded token-id prompts with greedy decoding: `warmup` discarded runs,
then `repeats` timed runs (clocks read after a device synchronise) whose medians go in a frozen
`BenchRecord` (kind="measured"). All strategies must produce the same greedy tokens; a mismatch
raises (or is recorded, `on_mismatch="record"`, for bf16 GPU runs where CPU and GPU kernels
round differently).

Strategies (the planner's `BASELINES` use the same definitions, so measured and projected
curves compare like with like):
  fiddler        popularity placement from a calibration run, `auto` execution
  cpu-experts    nothing resident, every activated expert runs on the CPU (budget unused)
  on-demand      the same popularity placement, every activated non-resident expert's weights
                 copied to the GPU and run there (`transfer`)
  lru-cache      per-layer LRU cache of GPU slots (same total budget), a miss copies + admits
  naive-offload  stock transformers + accelerate offloading (`naive.py`)
"""

from __future__ import annotations

import gc
import json
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..measure.shapes import get_shape
from ..runtime.errors import BudgetError, FiddlerError
from ..runtime.files import write_json
from ..runtime.validate import check_int, check_list, check_name

STRATEGIES: dict[str, tuple[str, str]] = {  # name -> (placement, execution) in the engine
    "fiddler": ("popularity", "auto"),
    "cpu-experts": ("none", "cpu"),
    "on-demand": ("popularity", "transfer"),
    "lru-cache": ("lru", "transfer"),
    "naive-offload": ("accelerate", "accelerate"),
}
CALIBRATION_PROMPTS = 4  # seeded random prompts for the popularity profile
CALIBRATION_TOKENS = 64


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
            f"{'decode tok/s':>14}{'TTFT s':>9}{'hit% dec':>9}{'MB moved':>10}{'same':>6}")
    rows = [head, cols]
    for r in records:
        if r.skipped:
            rows.append(f"{r.strategy:<14}{_f(r.budget_experts, 'd'):>7}{r.prompt_tokens:>7}"
                        f"{r.new_tokens:>5}{r.batch:>6}  skipped: {r.skipped}")
            continue
        rows.append(f"{r.strategy:<14}{_f(r.budget_experts, 'd'):>7}{r.prompt_tokens:>7}"
                    f"{r.new_tokens:>5}{r.batch:>6}{_f(r.prefill_tps, '.1f'):>15}"
                    f"{_f(r.decode_tps, '.2f'):>14}{_f(r.time_to_first_token_s, '.4f'):>9}"
                    f"{_f(None if r.decode_hit_rate is None else 100 * r.decode_hit_rate, '.1f'):>9}"
                    f"{_f(None if r.bytes_moved is None else r.bytes_moved / 1e6, '.2f'):>10}"
                    f"{_f(r.tokens_match, ''):>6}")
    return "\n".join(rows)


def _f(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if spec else str(value)


def make_prompts(vocab_size: int, lengths: Sequence[int], batches: Sequence[int], seed: int,
                 avoid: Sequence[int] = ()) -> dict[tuple[int, int], torch.Tensor]:
    """(length, batch) -> seeded token ids [B, P] that avoid special ids (bos/eos/pad)."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in set(avoid)])
    return {(p, b): allowed[torch.randint(len(allowed), (b, p), generator=gen)]
            for p in lengths for b in batches}


def default_budgets(total_experts: int) -> list[int]:
    """0, a quarter, half and all of the experts."""
    return sorted({0, total_experts // 4, total_experts // 2, total_experts})


MAX_BATCH = 1 << 12  # rows per generate call; more would only exhaust memory


def validate_bench_args(strategies: Any, budgets: Any, prompt_lengths: Any, new_tokens: Any,
                        batches: Any, repeats: Any, warmup: Any, on_mismatch: Any,
                        full_shape: Any, seed: Any) -> None:
    """Every argument of `bench` that can be checked before loading (FiddlerError if not)."""
    for s in check_list("strategies", strategies):
        check_name("strategy", s, STRATEGIES)
    check_name("on_mismatch", on_mismatch, ("raise", "record"))
    for name, values in (("prompt_lengths", prompt_lengths), ("batches", batches)):
        for v in check_list(name, values):
            check_int(f"each of {name}", v, minimum=1,
                      maximum=MAX_BATCH if name == "batches" else None)
    for v in check_list("budgets", budgets) if budgets is not None else ():
        check_int("each of budgets", v, minimum=0)
    check_int("new_tokens", new_tokens, minimum=1)
    check_int("repeats", repeats, minimum=1)
    check_int("warmup", warmup, minimum=0)
    check_int("seed", seed)
    if full_shape is not None:
        get_shape(full_shape)


def bench(model: str | Path = "tiny", strategies: Sequence[str] = tuple(STRATEGIES),
          budgets: Sequence[int] | None = None, prompt_lengths: Sequence[int] = (16, 128, 512),
          new_tokens: int = 8, batches: Sequence[int] = (1, 2), repeats: int = 3, warmup: int = 1,
          device: str | None = None, dtype: str | None = None, seed: int = 0,
          on_mismatch: str = "raise", full_shape: str | None = None, profile: Any = None,
          command: str | None = None, progress: bool = True,
          expert_dtype: str | None = None, group_size: int | None = None) -> list[BenchRecord]:
    """Run the matrix (see the module docstring) and return one record per cell.

    budgets: GPU expert budgets (all layers together); None = `default_budgets`. full_shape: a
    shape preset (e.g. "mixtral-8x7b") whose layer count scales decode tok/s into the derived
    full-model figure. profile: a HardwareProfile / JSON for `auto` (default: the engine's).
    expert_dtype / group_size: the engine's expert format (the naive-offload baseline keeps the
    checkpoint's dtype, so pass on_mismatch="record" when comparing it with int8 / int4).
    """
    from ..api import load
    from ..measure.hardware import machine_facts
    from ..runtime.engine.calibrate import calibrate

    validate_bench_args(strategies, budgets, prompt_lengths, new_tokens, batches, repeats, warmup,
                        on_mismatch, full_shape, seed)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    eng = load(model, device=device, dtype=dtype, expert_budget=0, placement="none",
               execution="cpu", profile=profile, expert_dtype=expert_dtype,
               group_size=group_size)
    total = eng.num_layers * eng.num_experts
    try:
        eng.check_context(max(prompt_lengths), new_tokens)  # before building any prompt
        too_big = [b for b in budgets or () if b > total]
        if too_big:
            raise BudgetError(f"budgets {too_big} are out of range: {eng.path} has {total} "
                              f"experts; pass budgets in 0..{total}")
    except FiddlerError:
        eng.close()
        raise
    cfg = eng.model.config
    budgets = list(budgets) if budgets is not None else default_budgets(total)
    avoid = [getattr(cfg, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")]
    avoid = [s for s in avoid if isinstance(s, int)]  # special ids: no EOS inside a prompt
    prompts = make_prompts(cfg.vocab_size, prompt_lengths, batches, seed, avoid)
    facts = machine_facts()
    base = _base_fields(eng, facts, command, repeats, new_tokens)
    calib = [make_prompts(cfg.vocab_size, [CALIBRATION_TOKENS], [1], seed + 1 + i, avoid)
             [(CALIBRATION_TOKENS, 1)] for i in range(CALIBRATION_PROMPTS)]  # [1, P] each
    eng.set_placement("popularity")
    popularity = calibrate(eng, calib)
    cases = list(prompts)
    engine_strats = [s for s in strategies if s != "naive-offload"]
    # a strategy with nothing resident ignores the budget: run it once
    runs = [(b, s) for b in budgets for s in engine_strats
            if STRATEGIES[s][0] != "none" or b == budgets[0]]
    on_cuda = eng.device.type == "cuda"
    steps = len(runs) * len(cases) + ("naive-offload" in strategies) * len(cases) * (
        len(budgets) if on_cuda else 1)
    reference: dict[tuple[int, int], torch.Tensor] = {}
    records: list[BenchRecord] = []
    bar = tqdm(total=steps, desc="bench", disable=not progress)
    try:
        for budget, strategy in runs:
            placement, execution = STRATEGIES[strategy]
            if budget > eng.max_resident_experts():
                records += [_skipped(case, budget, base, "budget does not fit this GPU",
                                     strategy, placement, execution) for case in cases]
                bar.update(len(cases))
                continue
            eng.reconfigure(expert_budget=budget, placement=placement, execution=execution)
            for case in cases:
                records.append(_run_engine_cell(eng, strategy, budget, case, prompts[case],
                                                warmup, base, reference, on_mismatch))
                bar.update(1)
        eng.close()
        eng = None  # drop the engine's CPU experts before accelerate loads a second copy
        if "naive-offload" in strategies:
            records += _run_naive(model, device, dtype, budgets, cases, prompts, warmup, base,
                                  reference, on_mismatch, bar)
    finally:
        bar.close()
        if eng is not None:
            eng.close()  # frees GPU memory when a cell raised
    notes = (f"popularity: {popularity.source}, {popularity.tokens} tokens",
             f"load average (1 min) at start: {facts.load_average_1m:.2f}")
    records = [_with_derived(r, full_shape, notes) for r in records]
    return records


def _base_fields(eng, facts, command: str, repeats: int, new_tokens: int) -> dict[str, Any]:
    """The record fields every cell shares: model shape, machine, run settings."""
    cfg = eng.model.config
    from ..runtime.model.config import resolve_dtype
    from ..runtime.formats.quant import dtype_label

    same = eng.config.expert_dtype in ("", dtype_label(resolve_dtype(eng.config.dtype)))
    dtype = eng.config.dtype if same else f"{eng.config.dtype}, experts {eng.config.expert_dtype}"
    return dict(device=str(eng.device), dtype=dtype, model=Path(eng.path).name,
                layers=eng.num_layers, experts=eng.num_experts,
                top_k=int(getattr(cfg, "num_experts_per_tok", 0)),
                hidden_size=int(cfg.hidden_size),
                intermediate_size=int(getattr(cfg, "moe_intermediate_size", None)
                                      or cfg.intermediate_size),
                machine=f"{facts.cpu_model} x{facts.threads_used} threads"
                        + (f", {facts.gpu_name}" if facts.gpu_name else ""),
                date=facts.date, command=command, repeats=repeats, new_tokens=new_tokens)


def _with_derived(rec: BenchRecord, full_shape: str | None, notes: tuple[str, ...]) -> BenchRecord:
    derived = None
    if full_shape and rec.decode_tps:
        from .random_checkpoint import derive_full_model_tps

        derived = derive_full_model_tps(rec.batch / rec.decode_tps, rec.layers, full_shape) \
            * rec.batch
    return replace(rec, derived_full_decode_tps=derived, notes=rec.notes + notes)


def _check_tokens(case, ids: torch.Tensor, reference: dict, strategy: str, on_mismatch: str) -> bool:
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


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _run_engine_cell(eng, strategy: str, budget: int, case, ids: torch.Tensor, warmup: int,
                     base: dict, reference: dict, on_mismatch: str) -> BenchRecord:
    new = base["new_tokens"]
    kw = dict(min_new_tokens=new)  # no early EOS: every strategy decodes the same count
    for _ in range(warmup):
        eng.generate(ids, new, **kw)
    _peak_reset(eng.device)
    runs = [eng.generate(ids, new, **kw) for _ in range(base["repeats"])]
    stats = [r.stats for r in runs]
    same = _check_tokens(case, runs[0].token_ids, reference, strategy, on_mismatch)
    placement, execution = STRATEGIES[strategy]
    return BenchRecord(
        strategy=strategy, placement=placement, execution=execution,
        budget_experts=budget if placement != "none" else None,
        prompt_tokens=case[0], batch=case[1],
        prefill_tps=_median([s.prefill_tokens_per_s for s in stats]),
        decode_tps=_median([s.decode_tokens_per_s for s in stats]),
        time_to_first_token_s=_median([s.time_to_first_token_s for s in stats]),
        prefill_hit_rate=_median([s.prefill.hit_rate for s in stats]),
        decode_hit_rate=_median([s.decode.hit_rate for s in stats]),
        bytes_moved=int(statistics.median(s.bytes_moved for s in stats)),
        peak_gpu_bytes=_peak(eng.device), tokens_match=same,
        notes=tuple(stats[0].notes), **base)


def _run_naive(model, device, dtype, budgets, cases, prompts, warmup, base, reference,
               on_mismatch, bar) -> list[BenchRecord]:
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
            out += [_skipped(case, budget, base, f"accelerate not importable: {err}")
                    for case in cases]
            bar.update(len(cases))
            continue
        pad = getattr(naive.config, "pad_token_id", None)
        kw = dict(min_new_tokens=base["new_tokens"], pad_token_id=pad)
        for case in cases:
            ids = prompts[case]
            for _ in range(warmup):
                timed_generate(naive, ids, base["new_tokens"], dev, **kw)
            _peak_reset(dev)
            calls[0] = 0
            runs = [timed_generate(naive, ids, base["new_tokens"], dev, **kw)
                    for _ in range(base["repeats"])]
            moved = calls[0] // base["repeats"] * setup.expert_bytes_per_forward
            same = _check_tokens(case, runs[0].token_ids, reference, "naive-offload", on_mismatch)
            b, p, n = case[1], case[0], base["new_tokens"]
            out.append(BenchRecord(
                strategy="naive-offload", placement="accelerate", execution=setup.mode,
                budget_experts=budget, prompt_tokens=p, batch=b,
                prefill_tps=_median([b * p / r.prefill_s for r in runs]),
                decode_tps=_median([b * (n - 1) / r.decode_s if n > 1 else float("nan")
                                    for r in runs]),
                time_to_first_token_s=_median([r.prefill_s for r in runs]),
                prefill_hit_rate=None, decode_hit_rate=None, bytes_moved=moved,
                peak_gpu_bytes=_peak(dev), tokens_match=same, notes=(setup.note,), **base))
            bar.update(1)
        del naive, setup, calls
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the next budget dispatches a fresh copy
    return out


def _skipped(case, budget, base, reason: str, strategy: str = "naive-offload",
             placement: str = "accelerate", execution: str = "-") -> BenchRecord:
    return BenchRecord(strategy=strategy, placement=placement, execution=execution,
                       budget_experts=budget, prompt_tokens=case[0], batch=case[1],
                       prefill_tps=None, decode_tps=None, time_to_first_token_s=None,
                       prefill_hit_rate=None, decode_hit_rate=None, bytes_moved=None,
                       peak_gpu_bytes=None, tokens_match=None, skipped=reason, **base)
