"""Measure this machine: CPU expert latency, CPU read bandwidth, and (with CUDA) the GPU side.

`profile_hardware(shape)` times one expert of the model's real shape and dtype with the math of
`experts.run_expert` (gate_up [2I, H], SiLU gate, down [H, I] through the engine's own
`experts._linear`, so one bf16 token takes the same ATen GEMV path), at the thread
count the engine uses, for 1, 2, 4, ... 512 routed tokens; it probes CPU read bandwidth several
ways and keeps the best; with CUDA it measures host<->device bandwidth (pinned and pageable), the
GPU expert curve and the time to copy one expert into a GPU slot. Without CUDA the GPU parts are
skipped with the reason recorded -- never invented. Every timing follows the measurement
discipline (discipline.py: warm-up discarded, repeats until the spread is small or the time
budget is spent); the CPU curve keeps each point's interval and repeats, and the machine's load
before and after is recorded, so `summary()` says when the machine was busy.

The result is a frozen `HardwareProfile` that saves to / loads from JSON, records for each part
whether it was "measured" or came from a preset/default (`sources`), and builds the
`LatencyModel` that `auto` execution and the planner use.

Shape legend: n = tokens routed to one expert, H = hidden size, I = expert intermediate size,
C = rotated weight copies (to defeat the CPU's last-level cache).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..runtime.model.config import resolve_dtype
from .shapes import ModelShape, get_shape
from ..runtime.errors import FileFormatError, OptionError, one_line
from ..runtime.files import read_json, write_json
from ..runtime.kernels.registry import KernelChoice
from ..runtime.policies.latency import Curve, LatencyModel, default_latency_model
from ..runtime.formats.quant import ExpertFormat, resolve_format
from ..runtime.validate import check_int, check_list
from .hardware import GpuPreset, LinkPreset, MachineFacts, get_gpu_preset, machine_facts
from .discipline import QUICK, Conditions, RepeatPolicy, Spread, conditions, machine_load
from .kernel_choice import KernelMeasurement, measure_kernels
from .probes import (PROBE_BYTES, READ_WRITE_PROBES, _measure_cuda, best_read_gbps,  # noqa: F401
                     expert_forward, measure_cpu_bandwidth, measure_cpu_expert)  # re-exported

FULL_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
QUICK_TOKENS = (1, 8, 64, 512)
MAX_PROFILE_TOKENS = 1 << 16  # beyond any prefill chunk; larger counts would only exhaust memory
QUICK_PROBE_BYTES = 256 << 20  # well past a 32-128 MiB LLC; quick mode needs fewer repeats
FORMAT_VERSION = 1
FULL_POLICY = RepeatPolicy(warmup=2, min_repeats=7, max_repeats=21, budget_s=2.0)
QUICK_POLICY = QUICK


@dataclass(frozen=True)
class HardwareProfile:
    """What was measured on one machine for one expert shape; see `sources` for provenance."""

    shape_name: str
    hidden_size: int
    intermediate_size: int
    dtype: str
    expert_bytes: int
    cpu_tokens: tuple[int, ...]  # [P]
    cpu_ms: tuple[float, ...]  # [P] median ms of one expert on the CPU
    cpu_probes_gbps: dict[str, float]  # probe name -> GB/s (bytes counted as in its note)
    cpu_read_gbps: float  # the best probe
    facts: MachineFacts
    gpu_tokens: tuple[int, ...] = ()  # measured GPU curve (empty without CUDA)
    gpu_ms: tuple[float, ...] = ()
    link_gbps: dict[str, float] = field(default_factory=dict)  # h2d_pinned, d2h_pageable, ...
    expert_copy_ms: float | None = None  # one expert host -> GPU slot (pinned, measured)
    activation_ms_per_token: float | None = None  # measured [n, H] round trip slope
    gpu_preset: dict | None = None  # GpuPreset fields when a preset GPU is attached
    link_preset: dict | None = None  # LinkPreset fields
    sources: dict[str, str] = field(default_factory=dict)  # part -> "measured" / "preset:x"
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why it was not measured
    notes: tuple[str, ...] = ()
    kernels: dict | None = None  # KernelMeasurement.to_dict(): CPU kernel per format, threads
    cpu_ms_low: tuple[float, ...] = ()  # [P] first quartile of the samples (empty: not kept)
    cpu_ms_high: tuple[float, ...] = ()  # [P] third quartile
    cpu_repeats: tuple[int, ...] = ()  # [P] samples behind each median
    conditions: dict | None = None  # discipline.Conditions.to_dict(): load before and after

    def cpu_spreads(self) -> list[Spread]:
        """The CPU curve as Spreads (a zero-width interval where a file kept none)."""
        low = self.cpu_ms_low or self.cpu_ms
        high = self.cpu_ms_high or self.cpu_ms
        reps = self.cpu_repeats or (0,) * len(self.cpu_ms)
        return [Spread(m, lo, hi, r, "ms") for m, lo, hi, r in zip(self.cpu_ms, low, high, reps)]

    def busy_note(self) -> str | None:
        """'this machine was busy: ...' when the load says so (None otherwise, or unknown)."""
        if not self.conditions:
            return None
        return Conditions.from_dict(self.conditions).note(self.cpu_spreads())

    def kernel_choice(self) -> KernelChoice | None:
        """The measured CPU kernel per format and token bucket, and threads (None if not
        measured: the engine keeps the documented default, runtime/kernels/registry.py)."""
        if not self.kernels:
            return None
        return KernelMeasurement.from_dict(self.kernels).kernel_choice()

    # ---- combining with presets --------------------------------------------------------
    def with_gpu_preset(self, name: str, link: str | None = None) -> "HardwareProfile":
        """This machine's measured CPU with a preset GPU and link (e.g. 'rtx-4090-pcie4')."""
        gpu, lnk = get_gpu_preset(name, link)
        sources = {k: v for k, v in self.sources.items() if k != "expert_copy"}  # not kept
        sources.update(gpu=f"preset:{gpu.name}", link=f"preset:{lnk.name}")
        return replace(self, gpu_tokens=(), gpu_ms=(), link_gbps={}, expert_copy_ms=None,
                       activation_ms_per_token=None, gpu_preset=gpu.to_dict(),
                       link_preset=lnk.to_dict(), sources=sources)

    @property
    def has_measured_gpu(self) -> bool:
        return bool(self.gpu_tokens)

    @property
    def gpu_memory_bytes(self) -> int:
        if self.gpu_preset is not None:
            return int(self.gpu_preset["memory_bytes"])
        return self.facts.gpu_memory_bytes

    # ---- the latency model -------------------------------------------------------------
    def latency_model(self, expert_bytes: int | None = None,
                      hidden_bytes: int | None = None) -> LatencyModel:
        """Curves for an expert of `expert_bytes` (default: the profiled one).

        Another expert size scales the measured CPU (and GPU) milliseconds by the bytes ratio --
        right while memory-bound, an approximation once compute-bound -- and says so in notes.
        """
        nbytes = int(expert_bytes or self.expert_bytes)
        dtype_bytes = resolve_dtype(self.dtype).itemsize
        hidden_bytes = int(hidden_bytes or self.hidden_size * dtype_bytes)
        ratio = nbytes / self.expert_bytes
        notes = [f"CPU: measured on {self.facts.cpu_model}, {self.facts.threads_used} threads, "
                 f"{self.dtype} {self.shape_name} expert"]
        if ratio != 1:
            notes.append(f"CPU/GPU ms scaled by bytes ratio {ratio:.4g} from the measured "
                         f"{self.expert_bytes}-byte expert")
        cpu = Curve(tuple(map(float, self.cpu_tokens)), tuple(m * ratio for m in self.cpu_ms))
        default = default_latency_model(nbytes, hidden_bytes)
        if self.has_measured_gpu:
            gpu = Curve(tuple(map(float, self.gpu_tokens)), tuple(m * ratio for m in self.gpu_ms))
            h2d = self.link_gbps.get("h2d_pinned", default.h2d_gbps)
            act = self.activation_ms_per_token or 0.0
            source = "measured"
        elif self.gpu_preset is not None:
            preset = GpuPreset(**self.gpu_preset)
            link = LinkPreset(**self.link_preset) if self.link_preset else get_gpu_preset(preset.name)[1]
            gpu, h2d = preset.curve(nbytes, dtype_bytes), link.h2d_gbps
            act = 2 * hidden_bytes / (link.h2d_gbps * 1e9) * 1e3  # activations there and back
            source = f"measured cpu + preset:{preset.name}-{link.name}"
            notes.append(f"GPU/link: preset {preset.name} ({preset.citation}); "
                         f"{link.name} ({link.citation})")
        else:
            gpu, h2d, act = default.gpu, default.h2d_gbps, default.activation_ms_per_token
            source = "measured cpu + default gpu"
            notes.append("GPU/link: " + default.notes[0] + " (no CUDA measured, no preset)")
        return LatencyModel(cpu, gpu, h2d, act, source=source, notes=tuple(notes))

    def crossover(self, expert_bytes: int | None = None) -> int | None:
        """n*: the smallest token count at which copying an expert beats the CPU."""
        nbytes = int(expert_bytes or self.expert_bytes)
        return self.latency_model(nbytes).crossover_tokens(nbytes)

    def summary(self) -> str:
        """A few lines for humans: machine, curve (median and interval), bandwidths, n* (only
        with a GPU, measured or preset), and a busy-machine note when the load says so."""
        f = self.facts
        curve = ", ".join(f"{n}: {s.median:.3f}" + (f" ({s.low:.3f}-{s.high:.3f})"
                                                    if s.high > s.low else "")
                          for n, s in zip(self.cpu_tokens, self.cpu_spreads()))
        reps = sorted(set(self.cpu_repeats))
        runs = f", {reps[0]}-{reps[-1]} runs each" if len(reps) > 1 else \
            (f", {reps[0]} runs each" if reps else "")
        lines = [f"{f.cpu_model}, {f.threads_used} threads of {f.cpu_cores} CPUs; "
                 f"torch {f.torch_version}; {f.date}",
                 f"expert {self.shape_name} {self.dtype} H={self.hidden_size} "
                 f"I={self.intermediate_size} ({self.expert_bytes / 1e6:.1f} MB)",
                 f"CPU ms per token count, median (interquartile range{runs}): {curve}",
                 f"CPU read {self.cpu_read_gbps:.1f} GB/s (best of " + ", ".join(
                     f"{k} {v:.1f}" for k, v in self.cpu_probes_gbps.items()) + ")"]
        if self.link_gbps:
            lines.append("link GB/s: " + ", ".join(f"{k} {v:.1f}" for k, v in self.link_gbps.items()))
        if self.has_measured_gpu or self.gpu_preset is not None:
            kind = "measured" if self.has_measured_gpu else "projected"
            lines.append(f"sources: {self.sources}; crossover n* = {self.crossover()} ({kind})")
        else:
            lines.append("no GPU here: GPU, link and crossover not measured (project one with "
                         "`fiddler-nb plan --profile FILE --gpu-preset NAME`)")
        note = self.busy_note()
        return "\n".join(lines + ([note] if note else []))

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> "HardwareProfile":
        """A profile from its JSON form; anything malformed is a FileFormatError naming `source`."""
        if not isinstance(data, dict):
            raise FileFormatError(f"{source} is not a hardware profile (a JSON object expected, "
                                  f"got {type(data).__name__}); measure one with `fiddler-nb profile`")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FileFormatError(f"{source} has profile format {version!r}, newer than this "
                                  f"fiddler_nb reads ({FORMAT_VERSION}); upgrade fiddler_nb or "
                                  "measure again")
        try:
            profile = cls._from_dict(data)
            profile.latency_model()  # every field it needs has a usable type and value
            return profile
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError,
                IndexError) as err:
            raise FileFormatError(f"{source} is not a valid hardware profile ({type(err).__name__}: "
                                  f"{one_line(err)}); measure again with `fiddler-nb profile`") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> "HardwareProfile":
        data = dict(data)
        data.pop("format_version", None)
        data["facts"] = MachineFacts.from_dict(data["facts"])
        for key in ("cpu_tokens", "gpu_tokens", "cpu_repeats"):
            data[key] = tuple(int(v) for v in data.get(key, ()))
        for key in ("cpu_ms", "gpu_ms", "notes", "cpu_ms_low", "cpu_ms_high"):
            data[key] = tuple(data.get(key, ()))
        if data.get("cpu_probes_gbps"):  # files written before copy probes were excluded
            data["cpu_read_gbps"] = best_read_gbps(data["cpu_probes_gbps"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "HardwareProfile":
        data = read_json(path, "hardware profile", "measure one with `fiddler-nb profile "
                         "--out FILE` or fnb.profile_hardware()")
        return cls.from_dict(data, source=str(path))


def _formats_of(shape_or_engine: Any, hidden: int, inter: int) -> list[ExpertFormat]:
    """The formats whose kernels to measure: an engine's own; for a shape, all of them."""
    label = getattr(shape_or_engine, "expert_dtype", None)
    if isinstance(label, str):
        name, _, group = label.partition("-g")
        return [resolve_format(name, int(group) if group else None, (hidden, inter))]
    return [resolve_format(f, None, (hidden, inter)) for f in ("bf16", "int8", "int4")]


def _resolve_target(shape_or_engine: Any, dtype: Any) -> tuple[str, int, int, torch.dtype]:
    """(name, H, I, dtype) from a ModelShape, a preset name or an Engine."""
    if isinstance(shape_or_engine, str):
        shape_or_engine = get_shape(shape_or_engine)
    if isinstance(shape_or_engine, ModelShape):
        s = shape_or_engine
        if not s.gated:
            raise OptionError(f"{s.name}: the profiler times gated (SwiGLU) experts only")
        return s.name, s.hidden_size, s.intermediate_size, resolve_dtype(dtype or s.dtype)
    layers = getattr(shape_or_engine, "layers", None)
    if not layers:
        raise OptionError("profile_hardware takes a ModelShape, a shape preset name or an Engine, "
                          f"not {type(shape_or_engine).__name__}")
    layer = layers[0]
    layout = layer.layout
    if not layout.has_gate or layout.has_bias or layout.is_transposed:
        raise OptionError(
            f"the profiler times gated (SwiGLU), unbiased, untransposed experts; this engine's "
            f"experts have has_gate={layout.has_gate}, has_bias={layout.has_bias}, "
            f"is_transposed={layout.is_transposed}. Profile a matching ModelShape preset "
            "instead (profile_hardware('<preset name>'), see fiddler_nb.config)")
    first = getattr(layer.module, layout.first_name)  # [E, 2I, H]
    hidden, inter = first.shape[2], first.shape[1] // 2
    return (Path(str(shape_or_engine.path)).name, int(hidden), int(inter),
            resolve_dtype(dtype) or first.dtype)


def profile_hardware(shape_or_engine: Any, dtype: str | torch.dtype | None = None,
                     threads: int | None = None, quick: bool = False,
                     tokens: Sequence[int] | None = None) -> HardwareProfile:
    """Measure this machine for one expert shape (see the module docstring).

    threads: torch threads for the CPU parts (default: torch.get_num_threads(), what the engine
    uses); restored afterwards. quick: fewer token counts, repeats and smaller probes.
    """
    if threads is not None:
        check_int("threads", threads, minimum=1, maximum=os.cpu_count() or 1)
    if not isinstance(quick, bool):
        raise OptionError(f"quick must be True or False, got {quick!r}")
    if tokens is not None:
        for n in check_list("tokens", tokens, "token counts"):
            check_int("each of tokens", n, minimum=1, maximum=MAX_PROFILE_TOKENS)
        tokens = sorted(set(tokens))
    name, hidden, inter, torch_dtype = _resolve_target(shape_or_engine, dtype)
    tokens = tuple(tokens or (QUICK_TOKENS if quick else FULL_TOKENS))
    policy = QUICK_POLICY if quick else FULL_POLICY
    warmup, repeats = policy.warmup, policy.min_repeats
    probe_bytes = QUICK_PROBE_BYTES if quick else PROBE_BYTES
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        before = conditions()
        facts = machine_facts()
        rotate = 0 if quick else 4 * max(facts.llc_bytes, 32 << 20)  # 4x LLC, at least 128 MiB
        cuda = torch.cuda.is_available()
        steps = len(tokens) + 3 + (len(tokens) + 3 if cuda else 0)
        with tqdm(total=steps, desc=f"profiling {name} {torch_dtype}".replace("torch.", "")) as bar:
            cpu = measure_cpu_expert(hidden, inter, torch_dtype, tokens, warmup, repeats,
                                     rotate, bar, policy=policy)
            probes = measure_cpu_bandwidth(probe_bytes, repeats, bar, policy=policy)
            kernels = measure_kernels(hidden, inter, _formats_of(shape_or_engine, hidden, inter),
                                      torch_dtype, warmup=warmup, repeats=repeats,
                                      threads=[threads] if threads else None,
                                      rotate_bytes=rotate).to_dict()
            bar.update(1)
            cuda_part = _measure_cuda(hidden, inter, torch_dtype, tokens, warmup, repeats,
                                      probe_bytes, bar) if cuda else None
        load = before.finished(machine_load())
    finally:
        torch.set_num_threads(old_threads)
    expert_bytes = 3 * hidden * inter * torch_dtype.itemsize
    sources = {"cpu": "measured", "cpu_bandwidth": "measured"}
    notes = [f"{'quick' if quick else 'full'} mode: {warmup} warm-up, then {repeats}-"
             f"{policy.max_repeats} repeats until the interquartile range is within "
             f"{100 * policy.rel_spread:.0f}% of the median or {policy.budget_s:g} s are spent",
             f"CPU weights rotated over {max(1, math.ceil(rotate / expert_bytes))} copies",
             f"bandwidth probes over {probe_bytes >> 20} MiB buffers"]
    skipped: dict[str, str] = {}
    if cuda_part is None:
        reason = "torch.cuda.is_available() is False on this machine; attach a GPU preset " \
                 "(with_gpu_preset) to project one"
        skipped = {k: reason for k in ("gpu", "link", "expert_copy")}
        extra: dict[str, Any] = {}
    else:
        sources.update(gpu="measured", link="measured", expert_copy="measured")
        notes.append(f"activation round trip fixed cost {cuda_part.pop('activation_fixed_ms'):.4f}"
                     " ms (not in the per-token slope)")
        extra = dict(cuda_part, gpu_tokens=tokens)
    return HardwareProfile(
        shape_name=name, hidden_size=hidden, intermediate_size=inter,
        dtype=str(torch_dtype).removeprefix("torch."), expert_bytes=expert_bytes,
        cpu_tokens=tokens, cpu_ms=tuple(s.median for s in cpu), cpu_probes_gbps=probes,
        cpu_read_gbps=best_read_gbps(probes), facts=facts, sources=sources, skipped=skipped,
        notes=tuple(notes), kernels=kernels, cpu_ms_low=tuple(s.low for s in cpu),
        cpu_ms_high=tuple(s.high for s in cpu), cpu_repeats=tuple(s.repeats for s in cpu),
        conditions=load.to_dict(), **extra)
