"""Projected tokens/s for a model shape on a hardware profile, per strategy and GPU budget.

Nothing here runs a model: every `PlanRecord` is a projection (`kind="projected"`) from a
`HardwareProfile`'s latency model -- measured CPU curves, and GPU/link figures that are measured,
a cited preset, or the documented default (the record's `latency_source` says which).

Routing model: each layer's experts get a share of the routed (token, expert) pairs, from a
recorded `Popularity` or a synthetic Zipf law (`skew` = s: the expert of rank r gets a
share proportional to r**-s; s=0 is uniform routing, s=1 is classic Zipf). A token picks its
top_k experts by sampling without replacement in proportion to the shares; decode averages over
`samples` sampled tokens per layer, prefill routes `prompt_tokens` sampled tokens at once. All
strategies see the same sampled routing (seeded), so their differences are the strategies'.

Strategies (one record each per budget):
  naive-offload  accelerate-style device_map: whole layers on the GPU as the budget allows, every
                 expert of an offloaded layer copied to the GPU at every forward.
  on-demand      popularity placement; every activated non-resident expert is copied over.
  lru-cache      per-layer LRU of GPU slots (same total budget, warm start); misses copied.
  cpu-experts    every expert on the CPU, nothing resident (budget unused).
  fiddler        popularity placement + makespan-optimal `auto` (latency.assign_layer).
  <placement>+<execution>  any other combination asked for via placements / executions.
Non-expert layers run on the GPU: their time is the GPU expert curve scaled by
non_expert_bytes / expert_bytes (memory-bound at decode); attention over the KV cache is ignored.

Shape legend: L = MoE layers, E = experts per layer, k = top_k, N = sampled tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from ..runtime.model.config import EngineConfig
from .shapes import ModelShape, get_shape
from ..runtime.errors import OptionError
from ..runtime.policies.execution import make_execution
from ..runtime.engine.experts import DEFAULT_RESERVE_BYTES
from ..runtime.policies.latency import LatencyModel
from ..runtime.policies.placement import PlacementRequest, make_placement
from .profiler import HardwareProfile
from ..runtime.policies.popularity import Popularity
from ..runtime.formats.quant import resolve_format
from ..runtime.validate import check_float, check_int, check_list, check_name

MAX_PLAN_TOKENS = 1 << 20  # a million-token prompt: past every preset's context
MAX_SAMPLES = 1 << 16  # decode tokens sampled per projection; more changes nothing but time
DEFAULT_SKEW = 0.5  # mild skew: routing of trained MoEs is far from Zipf-1 but not uniform
RESERVE_BYTES = DEFAULT_RESERVE_BYTES  # GPU memory kept for activations / KV cache
SCRATCH_SLOTS = EngineConfig.scratch_slots  # transfer buffers, the engine's default
BASELINES = ("naive-offload", "on-demand", "lru-cache", "cpu-experts")
UNMEASURED_GPU = ("GPU/link: unmeasured default (attach a preset with with_gpu_preset or "
                  "--gpu-preset)")  # said loudly: such a projection is not about any real GPU


def gpu_is_unmeasured(profile: HardwareProfile) -> bool:
    """No measured GPU and no preset: the latency model falls back to the default GPU figures."""
    return not profile.has_measured_gpu and profile.gpu_preset is None


@dataclass(frozen=True)
class PlanRecord:
    kind: str  # always "projected": nothing was run
    model: str
    strategy: str
    placement: str
    execution: str
    budget_experts: int  # experts resident on (or cached in) the GPU, all layers together
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    decode_ms_per_token: float
    prefill_tps: float
    decode_tps: float
    end_to_end_s: float  # prefill + (new_tokens - 1) decode steps
    decode_gpu_hit_rate: float  # activated experts served from GPU memory without a copy
    decode_h2d_bytes_per_token: float  # expert weights copied per decode token
    cpu_roofline_decode_tps: float | None  # CPU read GB/s / CPU-run expert bytes per token
    popularity_source: str
    latency_source: str
    machine: str
    notes: tuple[str, ...] = ()


# ---- routing -----------------------------------------------------------------------------
def zipf_shares(num_layers: int, num_experts: int, skew: float) -> torch.Tensor:
    """[L, E] shares with expert e of rank e+1 getting (e+1)**-skew (normalised per layer)."""
    row = torch.arange(1, num_experts + 1, dtype=torch.float64) ** -skew
    return (row / row.sum()).expand(num_layers, num_experts).clone()


def _shares(shape: ModelShape, popularity: Popularity | None, skew: float) -> tuple[torch.Tensor, str]:
    if popularity is None:
        return zipf_shares(shape.num_layers, shape.num_experts, skew), f"zipf(s={skew})"
    if (popularity.num_layers, popularity.num_experts) != (shape.num_layers, shape.num_experts):
        raise OptionError(f"popularity is [{popularity.num_layers}, {popularity.num_experts}] but "
                          f"{shape.name} has {shape.num_layers} layers x {shape.num_experts} experts")
    return popularity.share(), f"recorded: {popularity.source or 'Popularity'}"


def _sample_routing(shares: torch.Tensor, tokens: int, top_k: int,
                    gen: torch.Generator) -> list[torch.Tensor]:
    """Per layer [N, k] expert ids, top_k distinct experts per token."""
    probs = shares.clamp(min=1e-12)  # sampling without replacement needs k non-zero entries
    return [torch.multinomial(p.expand(tokens, -1), top_k, replacement=False, generator=gen)
            for p in probs]


# ---- per-layer costs ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Cost:
    ms: float
    hits: int  # activated experts already in GPU memory
    activated: int
    copied: int  # experts whose weights crossed the link
    on_cpu: int = 0  # experts run on the CPU


def _placed_cost(counts: dict[int, int], resident: set[int], execution, lat: LatencyModel,
                 expert_bytes: int) -> _Cost:
    """Makespan of one layer: resident experts on the GPU, the rest as `execution` decides."""
    res = [n for e, n in counts.items() if e in resident]
    off = [n for e, n in counts.items() if e not in resident]
    gpu = sum(lat.gpu_ms(n) for n in res)
    flags = execution.decide(off, expert_bytes, lat, gpu) if off else ()
    cpu = sum(lat.cpu_path_ms(n) for n, t in zip(off, flags) if not t)
    gpu += sum(lat.transfer_path_ms(n, expert_bytes) for n, t in zip(off, flags) if t)
    return _Cost(max(cpu, gpu), len(res), len(counts), sum(flags), len(off) - sum(flags))


def _naive_cost(counts: dict[int, int], on_gpu: bool, num_experts: int, lat: LatencyModel,
                expert_bytes: int) -> _Cost:
    """accelerate offload: the whole layer's experts cross the link, then compute (serial)."""
    gpu = sum(lat.gpu_ms(n) for n in counts.values())
    copy = 0.0 if on_gpu else lat.transfer_ms(num_experts * expert_bytes)
    return _Cost(gpu + copy, len(counts) if on_gpu else 0, len(counts), 0 if on_gpu else num_experts)


class _Lru:
    """One layer's GPU slots in least-recently-used order (front = next to evict)."""

    def __init__(self, slots: int, warm: Sequence[int]):
        self.slots = slots
        self.order: OrderedDict[int, None] = OrderedDict((e, None) for e in list(warm)[:slots])

    def cost(self, counts: dict[int, int], lat: LatencyModel, expert_bytes: int) -> _Cost:
        ms, hits = 0.0, 0
        for e, n in counts.items():
            hit = e in self.order
            hits += hit
            ms += lat.gpu_ms(n) if hit else lat.transfer_path_ms(n, expert_bytes)
            if hit:
                self.order.move_to_end(e)
            elif self.slots:
                if len(self.order) >= self.slots:
                    self.order.popitem(last=False)
                self.order[e] = None
        return _Cost(ms, hits, len(counts), len(counts) - hits)


# ---- the projection ----------------------------------------------------------------------
def resolve_budget(budget: int | str | None, shape: ModelShape, gpu_memory_bytes: int) -> int:
    """Experts that fit: an int as given, '20GiB' as memory, None = the profile's GPU memory."""
    if isinstance(budget, bool) or not isinstance(budget, (int, str, type(None))):
        raise OptionError(f"a budget must be a number of experts, a memory size such as '20GiB' "
                          f"or None (what fits), got {budget!r}")
    if isinstance(budget, int):
        experts = check_int("expert budget", budget, minimum=0)
    else:
        if budget is None:
            memory = gpu_memory_bytes
        else:
            from ..runtime.engine.factory import parse_bytes  # keeps this module import-light

            memory = parse_bytes(budget)
        free = memory - shape.non_expert_bytes - RESERVE_BYTES - SCRATCH_SLOTS * shape.expert_bytes
        experts = max(0, free // shape.expert_bytes)
    return int(min(max(experts, 0), shape.total_experts))


def plan(shape: ModelShape | str, profile: HardwareProfile | str | Path,
         budgets: Sequence[int | str | None] = (None,),
         placements: Sequence[str] = ("popularity",), executions: Sequence[str] = ("auto",),
         popularity: Popularity | None = None, prompt_tokens: int = 512, new_tokens: int = 32,
         skew: float = DEFAULT_SKEW, samples: int = 256, seed: int = 0,
         baselines: Sequence[str] = BASELINES, expert_dtype: str | None = None,
         group_size: int | None = None) -> list[PlanRecord]:
    """Project prefill/decode tokens/s for each budget x strategy (see the module docstring).

    budgets: experts (int), None (what fits the profile's GPU memory) or a memory string such
    as "20GiB". A memory string is the *whole card's* memory: the non-expert weights, a 1 GiB
    reserve and the scratch slots are subtracted before counting experts -- unlike
    `fnb.load(gpu_memory=...)`, whose memory is for resident experts only.
    A profile with neither a measured GPU nor a preset still projects, on the documented default
    GPU figures, and every record's notes (and `plan_table`'s header) say so (`UNMEASURED_GPU`).
    expert_dtype / group_size: the experts' format ('int8', 'int4', ...): expert bytes (memory,
    copies, CPU bytes per token) are the format's, scales included; expert times scale with
    those bytes (the bandwidth-bound assumption; the records' notes say so).
    """
    shape = get_shape(shape) if isinstance(shape, str) else shape
    if not isinstance(shape, ModelShape):
        raise OptionError(f"shape must be a ModelShape or a preset name, got {type(shape).__name__}")
    format_notes: tuple[str, ...] = ()
    if expert_dtype is not None:
        fmt = resolve_format(expert_dtype, group_size, (shape.hidden_size, shape.intermediate_size))
        shape = replace(shape, expert_format=fmt.label(), name=f"{shape.name} ({fmt.label()})")
        format_notes = (f"experts {fmt.label()}: {shape.expert_bytes / 1e6:.1f} MB each; expert "
                        "times scaled from the profiled dtype by bytes (bandwidth-bound)",)
    profile = HardwareProfile.load(profile) if isinstance(profile, (str, Path)) else profile
    if not isinstance(profile, HardwareProfile):
        raise OptionError(f"profile must be a HardwareProfile or its JSON path, got "
                          f"{type(profile).__name__}")
    check_int("prompt_tokens", prompt_tokens, minimum=1, maximum=MAX_PLAN_TOKENS)
    check_int("new_tokens", new_tokens, minimum=1, maximum=MAX_PLAN_TOKENS)
    check_int("samples", samples, minimum=1, maximum=MAX_SAMPLES)
    check_int("seed", seed)
    check_float("skew", skew, minimum=0.0)
    for name in placements:
        make_placement(name)
    for name in executions:
        make_execution(name)
    for name in baselines:
        check_name("baseline", name, BASELINES)
    budgets = check_list("budgets", budgets, "ints, memory sizes or None")
    for b in budgets:  # a number of experts the model does not have is a mistake, not a clamp
        if isinstance(b, int) and not isinstance(b, bool):
            check_int("expert budget", b, minimum=0, maximum=shape.total_experts,
                      hint=f"{shape.name} has {shape.total_experts} experts")
    if popularity is not None and not isinstance(popularity, Popularity):
        raise OptionError(f"popularity must be a Popularity, got {type(popularity).__name__}")
    lat = profile.latency_model(shape.expert_bytes, shape.hidden_size * shape.dtype_bytes)
    notes = lat.notes + format_notes + ((UNMEASURED_GPU,) if gpu_is_unmeasured(profile) else ())
    shares, pop_source = _shares(shape, popularity, skew)
    gen = torch.Generator().manual_seed(seed)
    decode = _sample_routing(shares, samples, shape.top_k, gen)  # L x [N, k]
    prefill = [torch.bincount(r.reshape(-1), minlength=shape.num_experts)
               for r in _sample_routing(shares, prompt_tokens, shape.top_k, gen)]  # L x [E]
    prefill_counts = [{e: int(n) for e, n in enumerate(c.tolist()) if n} for c in prefill]
    decode_counts = [[{int(e): 1 for e in tok} for tok in r.tolist()] for r in decode]
    per_token_ne = lat.gpu_ms(1) * shape.non_expert_bytes / shape.expert_bytes
    prefill_ne = lat.gpu_ms(prompt_tokens) * shape.non_expert_bytes / shape.expert_bytes
    common = dict(model=shape.name, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                  popularity_source=pop_source, latency_source=lat.source,
                  machine=f"{profile.facts.cpu_model} x{profile.facts.threads_used} threads")
    records = []
    for budget in dict.fromkeys(resolve_budget(b, shape, profile.gpu_memory_bytes) for b in budgets):
        combos = [(p, x) for p in placements for x in executions]
        names = {"naive-offload": ("first-layers", "naive"), "on-demand": ("popularity", "transfer"),
                 "lru-cache": ("lru", "transfer"), "cpu-experts": ("none", "cpu")}
        runs = [(n, *names[n]) for n in baselines] + [
            ("fiddler" if (p, x) == ("popularity", "auto") else f"{p}+{x}", p, x) for p, x in combos]
        for strategy, placement, execution in runs:
            pre, dec = _project(strategy, placement, execution, shape, lat, shares, budget,
                                prefill_counts, decode_counts, seed)
            pre_ms = prefill_ne + sum(c.ms for c in pre)
            dec_ms = per_token_ne + sum(sum(c.ms for c in layer) / len(layer) for layer in dec)
            hits = sum(c.hits for layer in dec for c in layer)
            activated = sum(c.activated for layer in dec for c in layer)
            copied = sum(c.copied for layer in dec for c in layer) / samples
            cpu_bytes = sum(c.on_cpu for layer in dec for c in layer) / samples * shape.expert_bytes
            roofline = profile.cpu_read_gbps * 1e9 / cpu_bytes if cpu_bytes else None
            records.append(PlanRecord(
                kind="projected", strategy=strategy, placement=placement, execution=execution,
                budget_experts=budget, prefill_ms=pre_ms, decode_ms_per_token=dec_ms,
                prefill_tps=prompt_tokens * 1e3 / pre_ms, decode_tps=1e3 / dec_ms,
                end_to_end_s=(pre_ms + max(new_tokens - 1, 0) * dec_ms) / 1e3,
                decode_gpu_hit_rate=hits / max(activated, 1),
                decode_h2d_bytes_per_token=copied * shape.expert_bytes,
                cpu_roofline_decode_tps=roofline, notes=notes, **common))
    return records


def _project(strategy: str, placement: str, execution: str, shape: ModelShape,
             lat: LatencyModel, shares: torch.Tensor, budget: int,
             prefill_counts: list[dict[int, int]], decode_counts: list[list[dict[int, int]]],
             seed: int) -> tuple[list[_Cost], list[list[_Cost]]]:
    """(prefill cost per layer, decode costs per layer per sampled token)."""
    L, E, nbytes = shape.num_layers, shape.num_experts, shape.expert_bytes
    ranked = [sorted(range(E), key=lambda e: (-float(shares[l, e]), e)) for l in range(L)]
    if strategy == "naive-offload":
        gpu_layers = budget // E  # accelerate keeps whole modules; a partial layer is offloaded
        pre = [_naive_cost(c, l < gpu_layers, E, lat, nbytes) for l, c in enumerate(prefill_counts)]
        dec = [[_naive_cost(c, l < gpu_layers, E, lat, nbytes) for c in tokens]
               for l, tokens in enumerate(decode_counts)]
        return pre, dec
    if strategy == "lru-cache":
        per_layer, extra = divmod(budget, L)
        caches = [_Lru(per_layer + (l < extra), ranked[l]) for l in range(L)]
        pre = [cache.cost(c, lat, nbytes) for cache, c in zip(caches, prefill_counts)]
        dec = [[cache.cost(c, lat, nbytes) for c in tokens]
               for cache, tokens in zip(caches, decode_counts)]
        return pre, dec
    request = PlacementRequest(L, E, budget if placement != "none" else 0, shares, seed)
    placed = make_placement(placement).place(request)
    resident = [{e for (l, e) in placed if l == layer} for layer in range(L)]
    policy = make_execution(execution)
    pre = [_placed_cost(c, resident[l], policy, lat, nbytes) for l, c in enumerate(prefill_counts)]
    dec = [[_placed_cost(c, resident[l], policy, lat, nbytes) for c in tokens]
           for l, tokens in enumerate(decode_counts)]
    return pre, dec


def plan_table(records: Sequence[PlanRecord]) -> str:
    """A fixed-width table; the header says these are projections."""
    if not records:
        return "projected: (no records)"
    r0 = records[0]
    warn = f"{UNMEASURED_GPU}\n" if any(UNMEASURED_GPU in r.notes for r in records) else ""
    head = (f"{warn}projected (not measured): {r0.model}, prompt {r0.prompt_tokens} + {r0.new_tokens} "
            f"new tokens, popularity {r0.popularity_source}\n  latency: {r0.latency_source}; "
            f"machine: {r0.machine}")
    cols = f"{'strategy':<24}{'budget':>7}{'hit%':>7}{'prefill tok/s':>15}{'decode tok/s':>14}" \
           f"{'e2e s':>9}{'H2D MB/tok':>12}{'CPU roof tok/s':>16}"
    rows = [f"{r.strategy:<24}{r.budget_experts:>7}{100 * r.decode_gpu_hit_rate:>7.1f}"
            f"{r.prefill_tps:>15.1f}{r.decode_tps:>14.2f}{r.end_to_end_s:>9.2f}"
            f"{r.decode_h2d_bytes_per_token / 1e6:>12.1f}{_fmt(r.cpu_roofline_decode_tps):>16}"
            for r in records]
    return "\n".join([head, cols, *rows])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
