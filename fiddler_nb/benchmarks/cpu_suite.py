"""CPU benchmark suite that runs on every machine (DESIGN.md §4, CPU targets).

  (a) kernel:   one expert of `shape` (default Mixtral-8x7B, bf16) at 1 token through the
                engine's own kernel `experts.run_expert` (its `_linear` takes ATen's GEMV for one
                bf16 CPU token); weight GB/s vs the machine's read bandwidth (best read-only
                probe, `profiler.best_read_gbps`). Target kernel_bw_ratio >= 0.8. For
                comparison only, the same math through plain `F.linear` (oneDNN) is timed too.
  (b) overhead: tiny-model decode tokens/s through the engine (everything on the CPU) vs stock
                transformers on the same checkpoint, interleaved repeats. Target >= 0.9.
  (c) layers:   a `layers`-layer model with `shape`'s real sizes decoding on CPU experts:
                seconds per layer vs the floor top_k * expert bytes / read bandwidth
                (layer_floor_ratio = floor / measured, 1.0 = at the bandwidth limit).

Timings: warm-up discarded, medians, nothing printed inside timed regions. The read bandwidth is
measured before and after the suite and the best probe kept (the other core may be busy).

Shape legend: H = hidden size, I = expert intermediate size, C = expert copies rotated over.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..measure.discipline import conditions, machine_load, spread
from ..measure.probes import PROBE_BYTES, best_read_gbps, measure_cpu_bandwidth
from ..runtime.model.config import resolve_dtype
from ..measure.shapes import ModelShape, get_shape
from ..runtime.files import write_json

KERNEL_COPIES = 2  # experts rotated over so each call reads its weights from DRAM
KERNEL_REPEATS = 15
OVERHEAD_REPEATS = 7  # interleaved engine/stock pairs
OVERHEAD_NEW_TOKENS = 32
LAYER_NEW_TOKENS = 9  # 8 decode steps after the first token
PROMPT_TOKENS = 8
LAYER_REPEATS = 5  # median of 5 decodes; (c) is the noisiest part


@dataclass(frozen=True)
class CpuSuiteResult:
    kernel_bw_ratio: float | None  # median kernel GB/s / read_gbps
    engine_overhead_ratio: float | None  # median of interleaved engine/stock decode tok/s pairs
    layer_floor_ratio: float | None  # floor s/layer / median measured s/layer
    read_gbps: float  # best read-only probe, before and after (profiler.best_read_gbps)
    probes_gbps: dict[str, float]
    kernel: dict[str, Any] = field(default_factory=dict)
    overhead: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    date: str = ""
    command: str = ""
    load_average_after: float = 0.0  # 1-minute load average at the end (noise warning)
    conditions: dict = field(default_factory=dict)  # discipline.Conditions: load before/after
    busy_note: str | None = None  # "this machine was busy: ..." when the load said so
    kernel_onednn_ratio: float | None = None  # comparison: plain F.linear (oneDNN) GB/s / read
    kind: str = "measured"

    def save(self, path: str | Path) -> Path:
        return write_json(path, asdict(self))

    def summary(self) -> str:
        """Raw figures first, the three ratios last."""
        k, o, l = self.kernel, self.overhead, self.layers
        lines = [f"machine: {self.machine.get('cpu_model')} x{self.machine.get('threads_used')} "
                 f"threads; {self.date}", f"read bandwidth {self.read_gbps:.1f} GB/s (best read probe of "
                 + ", ".join(f"{n} {v:.1f}" for n, v in self.probes_gbps.items()) + ")"]
        if k:
            lines.append(f"(a) {k['shape']} {k['dtype']} expert at 1 token: {k['ms']:.3f} ms"
                         + (f" (IQR {k['ms_low']:.3f}-{k['ms_high']:.3f}, {k['repeats']} runs)"
                            if "ms_low" in k else "") + ", "
                         f"{k['gbps']:.1f} GB/s of weights (best sample {k['best_gbps']:.1f}); "
                         f"comparison, plain F.linear (oneDNN): {k['onednn_ms']:.3f} ms, "
                         f"{k['onednn_gbps']:.1f} GB/s")
        if o:
            lines.append(f"(b) tiny decode: engine {o['engine_tps']:.1f} tok/s, stock "
                         f"{o['stock_tps']:.1f} tok/s")
        if l:
            lines.append(f"(c) {l['layers']}-layer {l['shape']} {l['dtype']} decode: "
                         f"{l['s_per_layer'] * 1e3:.2f} ms/layer vs floor "
                         f"{l['floor_s_per_layer'] * 1e3:.2f} ms/layer")
        lines.append(f"load average: {self.machine.get('load_average_1m', 0):.2f} at start, "
                     f"{self.load_average_after:.2f} at end (other work on the machine = noise)")
        if self.busy_note:
            lines.append(self.busy_note)
        lines.append(f"kernel_bw_ratio={_fmt(self.kernel_bw_ratio)} (target >= 0.8)  "
                     f"engine_overhead_ratio={_fmt(self.engine_overhead_ratio)} (target >= 0.9)  "
                     f"layer_floor_ratio={_fmt(self.layer_floor_ratio)}  "
                     f"(kernel via oneDNN, comparison: {_fmt(self.kernel_onednn_ratio)})")
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def read_bandwidth(probe_bytes: int = PROBE_BYTES, repeats: int = 5) -> dict[str, float]:
    """GB/s of the profiler's bandwidth probes; `best_read_gbps` picks the read figure."""
    return measure_cpu_bandwidth(probe_bytes, repeats)


def experts_module(shape: ModelShape, dtype: torch.dtype, copies: int, seed: int = 0):
    """A real transformers experts module of `shape` with `copies` experts, filled on the CPU."""
    from transformers import AutoModelForCausalLM

    from ..runtime.model.adapters import find_moe_layers
    from .random_checkpoint import TILE_ELEMENTS, _tile_fill, random_config

    cfg = random_config(shape, layers=1, num_local_experts=copies)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    module = find_moe_layers(model)[0].module.to_empty(device="cpu")
    block = torch.randn(TILE_ELEMENTS, generator=torch.Generator().manual_seed(seed)) * 0.02
    with torch.no_grad():
        for i, param in enumerate(module.parameters()):
            _tile_fill(param, block, offset=i)
    return find_moe_layers(module)[0]


def _samples_s(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _onednn_expert(layer, x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Comparison only: `run_expert`'s gated math through plain `F.linear` (oneDNN for bf16),
    i.e. without the one-token GEMV choice of `experts._linear`. x: [1, H] -> [1, H]."""
    h = layer.module._apply_gate(F.linear(x, weights[0]))  # [1, I]
    return F.linear(h, weights[1])  # [1, H]


def run_kernel(shape: ModelShape, dtype: torch.dtype, repeats: int = KERNEL_REPEATS) -> dict:
    """(a) ms and weight GB/s of `experts.run_expert` at 1 token, rotating over expert copies;
    interleaved with `_onednn_expert` (comparison: the same math through plain F.linear)."""
    from ..runtime.model.adapters import expert_weights
    from ..runtime.engine.experts import run_expert

    layer = experts_module(shape, dtype, KERNEL_COPIES)
    weights = [expert_weights(layer, e) for e in range(KERNEL_COPIES)]
    x = torch.randn(1, shape.hidden_size).to(dtype)  # [1, H]
    turn = iter(range(1 << 62))

    def engine_kernel():
        return run_expert(layer, x, weights[next(turn) % KERNEL_COPIES])

    def onednn_kernel():
        return _onednn_expert(layer, x, weights[next(turn) % KERNEL_COPIES])

    samples: dict[str, list[float]] = {"engine": [], "onednn": []}
    with torch.inference_mode():
        for _ in range(2 * KERNEL_COPIES):  # warm-up, both paths
            engine_kernel(), onednn_kernel()
        for _ in range(repeats):  # interleaved so both see the same background load
            for name, fn in (("engine", engine_kernel), ("onednn", onednn_kernel)):
                samples[name] += _samples_s(fn, warmup=0, repeats=1)
    nbytes = layer.expert_bytes
    seconds, onednn = statistics.median(samples["engine"]), statistics.median(samples["onednn"])
    return {"shape": shape.name, "dtype": str(dtype).removeprefix("torch."),
            "expert_bytes": nbytes, "ms": seconds * 1e3, "gbps": nbytes / seconds / 1e9,
            "best_ms": min(samples["engine"]) * 1e3,
            "best_gbps": nbytes / min(samples["engine"]) / 1e9,
            "onednn_ms": onednn * 1e3, "onednn_gbps": nbytes / onednn / 1e9,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "samples_s": samples["engine"], "ms_low": spread(samples["engine"]).low * 1e3,
            "ms_high": spread(samples["engine"]).high * 1e3}


def run_overhead(model: str = "tiny", repeats: int = OVERHEAD_REPEATS,
                 new_tokens: int = OVERHEAD_NEW_TOKENS) -> dict:
    """(b) decode tok/s of the engine (all on the CPU) vs stock transformers, interleaved."""
    from transformers import AutoModelForCausalLM

    from ..api import load
    from ..runtime.engine.factory import resolve_path
    from .naive import timed_generate

    path = resolve_path(model)
    cpu = torch.device("cpu")
    eng = load(path, device="cpu", placement="layer-balanced", execution="cpu")  # all resident
    stock = AutoModelForCausalLM.from_pretrained(path, device_map=None).eval()
    ids = torch.randint(0, 256, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    kw = dict(min_new_tokens=new_tokens, pad_token_id=eng.pad_token_id)
    rates: dict[str, list[float]] = {"engine": [], "stock": []}  # [repeats] decode tok/s
    same = True
    for i in range(repeats + 1):  # round 0 is the warm-up
        runs = {}
        for name, m in (("engine", eng.model), ("stock", stock)) if i % 2 else \
                (("stock", stock), ("engine", eng.model)):  # alternate who goes first
            runs[name] = timed_generate(m, ids, new_tokens, cpu, **kw)
        same &= bool(torch.equal(runs["engine"].token_ids, runs["stock"].token_ids))
        if i:
            for name, r in runs.items():
                rates[name].append((new_tokens - 1) / r.decode_s)
    eng.close()
    e, s = statistics.median(rates["engine"]), statistics.median(rates["stock"])
    # pairs ran back to back under the same background load: the median of their ratios is
    # steadier on a shared machine than the ratio of medians (both are kept)
    pair = statistics.median(a / b for a, b in zip(rates["engine"], rates["stock"]))
    return {"model": path.name, "engine_tps": e, "stock_tps": s, "ratio": pair,
            "ratio_of_medians": e / s,
            "same_tokens": same, "repeats": repeats, "new_tokens": new_tokens,
            "engine_samples": rates["engine"], "stock_samples": rates["stock"]}


def run_layers(shape: ModelShape, dtype: torch.dtype, layers: int, read_gbps: float,
               new_tokens: int = LAYER_NEW_TOKENS, repeats: int = LAYER_REPEATS) -> dict:
    """(c) decode seconds per layer on CPU experts vs the bandwidth floor."""
    from ..api import from_model
    from .random_checkpoint import build_random_model

    model = build_random_model(shape, layers, dtype)
    eng = from_model(model, device="cpu", placement="none", execution="cpu", expert_budget=0,
                     name=f"random-{shape.name}-{layers}L")
    ids = torch.randint(0, 256, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    eng.generate(ids, 2, min_new_tokens=2)  # warm-up
    per_token = []  # [repeats] s/token
    for _ in range(repeats):
        st = eng.generate(ids, new_tokens, min_new_tokens=new_tokens).stats
        per_token.append(st.decode.seconds / max(st.decode.tokens, 1))
    expert_bytes = eng.expert_bytes
    non_expert = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                     if ".experts." not in n and "embed" not in n and "lm_head" not in n) / layers
    eng.close()
    s_token = statistics.median(per_token)
    floor = shape.top_k * expert_bytes / (read_gbps * 1e9)
    floor_all = (shape.top_k * expert_bytes + non_expert) / (read_gbps * 1e9)
    return {"shape": shape.name, "dtype": str(dtype).removeprefix("torch."), "layers": layers,
            "s_per_token": s_token, "s_per_layer": s_token / layers, "floor_s_per_layer": floor,
            "best_ratio": floor / (min(per_token) / layers),
            "floor_all_weights_s_per_layer": floor_all, "ratio": floor / (s_token / layers),
            "ratio_all_weights": floor_all / (s_token / layers), "new_tokens": new_tokens,
            "activated_expert_bytes_per_layer": shape.top_k * expert_bytes,
            "non_expert_bytes_per_layer": int(non_expert), "samples_s_per_token": per_token}


def run_cpu_suite(shape: str | ModelShape = "mixtral-8x7b", dtype: str = "bfloat16",
                  layers: int = 2, tiny_model: str = "tiny", probe_bytes: int = PROBE_BYTES,
                  parts: tuple[str, ...] = ("kernel", "overhead", "layers"),
                  repeats: int | None = None, new_tokens: int | None = None,
                  command: str | None = None, progress: bool = True) -> CpuSuiteResult:
    """Run (a)-(c) (see the module docstring); `parts` picks a subset.

    repeats / new_tokens override every part's defaults (tests use small ones).
    """
    from ..measure.hardware import machine_facts

    shape = get_shape(shape) if isinstance(shape, str) else shape
    torch_dtype = resolve_dtype(dtype)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    out: dict[str, dict] = {}
    before = conditions()
    with tqdm(total=2 + len(parts), desc="cpu suite", disable=not progress) as bar:
        probes = read_bandwidth(probe_bytes)
        bar.update(1)
        if "kernel" in parts:
            out["kernel"] = run_kernel(shape, torch_dtype, repeats or KERNEL_REPEATS)
            bar.update(1)
        if "overhead" in parts:
            out["overhead"] = run_overhead(tiny_model, repeats or OVERHEAD_REPEATS,
                                           new_tokens or OVERHEAD_NEW_TOKENS)
            bar.update(1)
        after = read_bandwidth(probe_bytes)
        probes = {k: max(v, after.get(k, 0.0)) for k, v in probes.items()}
        bar.update(1)
        read = best_read_gbps(probes)
        if "layers" in parts:
            out["layers"] = run_layers(shape, torch_dtype, layers, read,
                                       new_tokens or LAYER_NEW_TOKENS, repeats or LAYER_REPEATS)
            bar.update(1)
    k = out.get("kernel")
    load = before.finished(machine_load())
    runs = [spread(v) for part in out.values() for key, v in part.items()
            if key.endswith("samples") and v]
    return CpuSuiteResult(
        conditions=load.to_dict(), busy_note=load.note(runs),
        kernel_bw_ratio=k["gbps"] / read if k else None,
        kernel_onednn_ratio=k["onednn_gbps"] / read if k else None,
        engine_overhead_ratio=out["overhead"]["ratio"] if "overhead" in out else None,
        layer_floor_ratio=out["layers"]["ratio"] if "layers" in out else None,
        read_gbps=read, probes_gbps=probes, kernel=k or {}, overhead=out.get("overhead", {}),
        layers=out.get("layers", {}), machine=asdict(machine_facts()),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), command=command,
        load_average_after=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
