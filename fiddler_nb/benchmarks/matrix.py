"""Benchmark matrix: strategy x GPU expert budget x prompt length x batch, measured end to end.

Every cell runs the same seeded token-id prompts with greedy decoding: `warmup` discarded runs,
then at least `repeats` timed runs (clocks read after a device synchronise), more until the
generation time is steady or the cell's time budget is spent (measure/discipline.py); medians
and interquartile ranges go in a frozen `BenchRecord` (kind="measured", records.py). The
machine's load is read before and after; when it was busy, every record says so (`busy_note`). All strategies must produce the same greedy tokens; a mismatch
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

import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..measure.discipline import RepeatPolicy, conditions, machine_load
from ..measure.shapes import get_shape
from ..runtime.errors import BudgetError, FiddlerError
from ..runtime.validate import check_float, check_int, check_list, check_name
from .cells import check_tokens as _check_tokens  # noqa: F401  (tests call it)
from .cells import run_engine_cell, run_naive, skipped_cell
from .records import (STRATEGIES, BenchRecord, TokenMismatchError, load_records,  # noqa: F401
                      records_table, save_records)

CELL_BUDGET_S = 1.0  # after `repeats` runs, a cell repeats until steady for at most this long
MAX_REPEATS_FACTOR = 3  # ... and at most this many times `repeats` runs
CALIBRATION_PROMPTS = 4  # seeded random prompts for the popularity profile
CALIBRATION_TOKENS = 64


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
          expert_dtype: str | None = None, group_size: int | None = None,
          threads: int | None = None, cell_budget_s: float = CELL_BUDGET_S) -> list[BenchRecord]:
    """Run the matrix (see the module docstring) and return one record per cell.

    budgets: GPU expert budgets (all layers together); None = `default_budgets`. full_shape: a
    shape preset (e.g. "mixtral-8x7b") whose layer count scales decode tok/s into the derived
    full-model figure. profile: a HardwareProfile / JSON for `auto` (default: the engine's).
    expert_dtype / group_size: the engine's expert format (the naive-offload baseline keeps the
    checkpoint's dtype, so pass on_mismatch="record" when comparing it with int8 / int4).
    threads: torch CPU threads while generating (None: torch's setting). repeats: the least
    number of timed runs per cell; more run until the generation time is steady, for at most
    `cell_budget_s` seconds and `MAX_REPEATS_FACTOR` x repeats runs.
    """
    from ..api import load
    from ..measure.hardware import machine_facts
    from ..runtime.engine.calibrate import calibrate

    validate_bench_args(strategies, budgets, prompt_lengths, new_tokens, batches, repeats, warmup,
                        on_mismatch, full_shape, seed)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    check_float("cell_budget_s", cell_budget_s, minimum=0.0)
    policy = RepeatPolicy(warmup, repeats, MAX_REPEATS_FACTOR * repeats, budget_s=cell_budget_s)
    before = conditions()
    eng = load(model, device=device, dtype=dtype, expert_budget=0, placement="none",
               execution="cpu", profile=profile, expert_dtype=expert_dtype,
               group_size=group_size, threads=threads)
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
                records += [skipped_cell(case, budget, base, "budget does not fit this GPU",
                                     strategy, placement, execution) for case in cases]
                bar.update(len(cases))
                continue
            eng.reconfigure(expert_budget=budget, placement=placement, execution=execution)
            for case in cases:
                records.append(run_engine_cell(eng, strategy, budget, case, prompts[case],
                                               policy, base, reference, on_mismatch))
                bar.update(1)
        eng.close()
        eng = None  # drop the engine's CPU experts before accelerate loads a second copy
        if "naive-offload" in strategies:
            records += run_naive(model, device, dtype, budgets, cases, prompts, policy, base,
                                 reference, on_mismatch, bar)
    finally:
        bar.close()
        if eng is not None:
            eng.close()  # frees GPU memory when a cell raised
    load = before.finished(machine_load())
    measured = [s for r in records for s in (r.spread("decode"), r.spread("prefill")) if s]
    busy = load.note(measured)
    notes = (f"popularity: {popularity.source}, {popularity.tokens} tokens",
             f"load before: {load.before.text()}; after: {load.after.text()}",
             f"repeats: {warmup} warm-up, then {repeats}-{policy.max_repeats} runs per cell until "
             f"the generation time is steady or {cell_budget_s:g} s are spent")
    return [replace(_with_derived(r, full_shape, notes), busy_note=busy) for r in records]


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


