"""The entry points: `load` (optionally from an autotuned `Plan`), `from_model`, `use_profile`,
`calibrate`.

These compose the runtime (engine, loading, policies) with the measurements (profiler): a
`profile=` argument may be a HardwareProfile, its JSON file, a LatencyModel, or "quick" to measure
this machine with the loaded model's own expert. The runtime itself only takes LatencyModels and
profile objects, so it never imports the measurement layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from .measure.profiler import HardwareProfile, profile_hardware
from .runtime.engine import factory
from .runtime.engine.calibrate import calibrate
from .runtime.engine.engine import Engine
from .runtime.errors import OptionError
from .runtime.formats.quant import parse_label
from .runtime.engine.factory import latency_from
from .runtime.kernels.registry import KernelChoice
from .runtime.policies.latency import LatencyModel
from .runtime.generation.plan_file import Plan, as_plan
from .runtime.policies.popularity import Popularity
from .runtime.generation.workload import Workload

QUICK_PROFILE = "quick"  # profile= value: measure this machine at load time

ProfileArg = Union[HardwareProfile, LatencyModel, str, Path, None]

__all__ = ["QUICK_PROFILE", "Plan", "Workload", "calibrate", "from_model", "load", "use_profile"]


DEFAULTS = dict(placement="popularity", execution="auto")  # when neither caller nor plan says


def load(path: str | Path, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, expert_budget: int | None = None,
         placement: str | None = None, execution: str | None = None,
         popularity: Popularity | str | Path | None = None, profile: ProfileArg = None,
         gpu_memory: str | int | None = None, scratch_slots: int = 2, seed: int = 0,
         workload: Workload | None = None, threads: int | None = None,
         plan: Plan | str | Path | None = None, expert_dtype: str | torch.dtype | None = None,
         group_size: int | None = None, dense_dtype: str | None = None,
         allow_activation_quant: bool = False) -> Engine:
    """Load a checkpoint directory (or 'tiny') as an Engine; see README for every argument.

    placement / execution default to "popularity" / "auto". plan: a `Plan` from `fnb.autotune`
    or its JSON file; its settings (budget, placement, execution, threads, workload) are the
    starting point and every keyword passed here explicitly overrides them. A profile file is
    read before any weight is; "quick" measures once the model is loaded (seconds) and an error
    there closes the engine. expert_dtype: None keeps the checkpoint's; "bf16" / "fp16" / "fp32"
    cast the routed experts; "int8" / "int4" (with group_size 32 / 64 / 128) quantize them while
    loading (int8 without a group_size: one scale per output channel; "int8" with group_size=32,
    label "int8-g32": GGUF Q8_0's layout). A profile's measured kernel choice is used for the
    format; without one, this machine's (measured once, cached). dense_dtype: None / "bf16" /
    "int8" / "int4" compresses attention, shared experts and lm_head on a CPU-only engine.
    allow_activation_quant: int8 / int4 weights may run through CPU kernels that round the
    activations to int8 per 32 inputs (integer dot products, as llama.cpp does; faster, not
    exact: `fiddler-nb bench --cpu-suite` measures the error). Off by default.
    """
    given = dict(expert_budget=expert_budget, placement=placement, execution=execution,
                 threads=threads, workload=workload, expert_dtype=expert_dtype,
                 group_size=group_size)
    settings = _with_plan(given, plan, gpu_memory)
    latency, quick = _resolve_profile(profile)
    engine = factory.load(path, device=device, dtype=dtype, popularity=popularity,
                          profile=latency, gpu_memory=gpu_memory, scratch_slots=scratch_slots,
                          seed=seed, kernels=_kernels_of(latency), dense_dtype=dense_dtype,
                          allow_activation_quant=allow_activation_quant, **settings)
    return _finish_quick(_with_machine_kernels(engine, latency), quick)


def _with_plan(given: dict, plan: Plan | str | Path | None, gpu_memory) -> dict:
    """Explicit keyword arguments (not None) over the plan's settings over the defaults."""
    base = dict(DEFAULTS)
    if plan is not None:
        from_plan = as_plan(plan).load_kwargs()
        if given.get("expert_dtype") is not None:  # the caller's format wins, with its group
            from_plan.pop("group_size", None)
        if gpu_memory is not None:
            from_plan.pop("expert_budget")  # the caller gave the budget as memory
        base.update(from_plan)
    base.update({k: v for k, v in given.items() if v is not None})
    return base


def from_model(model, tokenizer=None, device: str | torch.device | None = None,
               expert_budget: int | None = None, placement: str = "popularity",
               execution: str = "auto", popularity: Popularity | None = None,
               profile: ProfileArg = None, scratch_slots: int = 2, seed: int = 0,
               name: str = "in-memory", workload: Workload | None = None,
               threads: int | None = None, expert_dtype: str | torch.dtype | None = None,
               group_size: int | None = None, dense_dtype: str | None = None,
               allow_activation_quant: bool = False) -> Engine:
    """An Engine around a transformers MoE model already in memory (experts on the CPU;
    converted in place to `expert_dtype` when given)."""
    latency, quick = _resolve_profile(profile)
    engine = factory.from_model(model, tokenizer, device=device, expert_budget=expert_budget,
                                placement=placement, execution=execution,
                                popularity=popularity, profile=latency,
                                scratch_slots=scratch_slots, seed=seed, name=name,
                                workload=workload, threads=threads, expert_dtype=expert_dtype,
                                group_size=group_size, kernels=_kernels_of(latency),
                                dense_dtype=dense_dtype,
                                allow_activation_quant=allow_activation_quant)
    return _finish_quick(_with_machine_kernels(engine, latency), quick)


def use_profile(engine: Engine, profile: ProfileArg) -> LatencyModel:
    """Make `auto` decide from a HardwareProfile, its JSON path, a LatencyModel, or "quick"
    (measure this machine now with the engine's own expert). Returns the model in use."""
    if not isinstance(engine, Engine):
        raise OptionError(f"use_profile needs an Engine from fnb.load, got {type(engine).__name__}")
    if isinstance(profile, str) and profile == QUICK_PROFILE:
        profile = profile_hardware(engine, quick=True)
    source, _ = _resolve_profile(profile)
    latency = latency_from(source, engine.expert_bytes, engine.model, engine.device)
    engine.set_latency_model(latency)
    kernels = _kernels_of(source)
    if kernels is not None:
        engine.set_kernels(kernels)
    return latency


def _with_machine_kernels(engine: Engine, source: Any) -> Engine:
    """Without a profile's kernel choice: this machine's, measured once and cached
    (measure/kernel_cache.py)."""
    if _kernels_of(source) is not None:
        return engine
    from .measure.kernel_cache import machine_kernel_choice

    try:
        act = getattr(torch, engine.config.dtype)
        fmt = engine.expert_dtype
        choice = machine_kernel_choice(fmt, parse_label(fmt).float_dtype or act)
        if choice is not None:
            engine.set_kernels(choice)
    except BaseException:
        engine.close()
        raise
    return engine


def _kernels_of(source: Any) -> KernelChoice | None:
    """The CPU kernel choice a HardwareProfile measured (None for a LatencyModel / nothing)."""
    return source.kernel_choice() if isinstance(source, HardwareProfile) else None


def _resolve_profile(profile: Any) -> tuple[HardwareProfile | LatencyModel | None, bool]:
    """(what the runtime takes, whether to measure after loading)."""
    if isinstance(profile, str) and profile == QUICK_PROFILE:
        return None, True  # the default until the engine exists and can be measured
    if isinstance(profile, (str, Path)):
        return HardwareProfile.load(profile), False
    if profile is not None and not isinstance(profile, (HardwareProfile, LatencyModel)):
        raise OptionError(f"profile must be a HardwareProfile, its JSON path, {QUICK_PROFILE!r} "
                          f"or a LatencyModel, got {type(profile).__name__}")
    return profile, False


def _finish_quick(engine: Engine, quick: bool) -> Engine:
    if quick:
        try:
            use_profile(engine, QUICK_PROFILE)
        except BaseException:
            engine.close()
            raise
    return engine
