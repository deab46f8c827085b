"""The compressed-experts targets table (issue 9), measured side by side in one run.

On a `layers`-layer model with `shape`'s real sizes (random weights, benchmarks/
random_checkpoint.py), all experts on the CPU path, at `threads` threads:
  - decode tok/s (after a `prompt`-token prompt) and prefill tok/s (one forward of
    `prefill` tokens) of stock transformers bf16 and of the engine with bf16 / int8 / int4
    experts, in interleaved rounds (each round runs every contender once, in rotating order;
    medians over rounds, ratios taken per round against stock, then the median);
  - host bytes of the experts per format, as a ratio to bf16;
  - kernel_bw_ratio per format: bytes of the format read per second by the kernel chosen for one
    token (measure/kernel_choice.py), over the machine's read bandwidth (best read probe);
  - with activation_quant, each int8 / int4 format a second time as '<format>+q8' (the same
    engine with `set_activation_quant(True)`: kernels that round activations to int8 per 32
    inputs), with its error against the exact run on the prefill prompt: the largest logit
    difference over the logits' range, and how often the greedy token agrees.
Stock transformers runs the bf16 engine's own model with transformers' experts implementation
switched back, so both read the same weights. Nothing is printed inside timed regions.

Shape legend: T = prompt tokens.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..measure.hardware import machine_facts
from ..measure.kernel_choice import ROTATE_BYTES, measure_kernels
from ..measure.discipline import conditions, machine_load, spread
from ..measure.probes import PROBE_BYTES, best_read_gbps, measure_cpu_bandwidth
from ..measure.shapes import get_shape
from ..runtime.files import write_json
from ..runtime.formats.quant import resolve_format
from .naive import timed_generate

STOCK = "stock-bf16"
DEFAULT_FORMATS = ("bf16", "int8", "int4")
DECODE_PROMPT = 16
PREFILL_TOKENS = 128
DECODE_TOKENS = 9  # 8 timed decode steps after the first token
ROUNDS = 3
Q8_SUFFIX = "+q8"  # a format run with activation quantization allowed


@dataclass(frozen=True)
class FormatSuiteResult:
    rows: dict[str, dict[str, float]]  # contender -> decode_tps, prefill_tps, ratios, bytes
    kernel: dict[str, Any]  # KernelMeasurement.to_dict()
    read_gbps: float
    probes_gbps: dict[str, float]
    machine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    date: str = ""
    kind: str = "measured"

    def save(self, path: str | Path) -> Path:
        return write_json(path, asdict(self))

    def table(self) -> str:
        s = self.settings
        lines = [f"machine: {self.machine.get('cpu_model')} ({self.machine.get('isa')}), "
                 f"{s['threads']} threads; load average {self.machine.get('load_average_1m', 0):.2f}"
                 f" at start, {s.get('load_average_after', 0):.2f} at end; {self.date}",
                 f"model: {s['shape']} x {s['layers']} layers, random weights, all experts on "
                 f"the CPU path; decode after a {s['prompt']}-token prompt ({s['decode_tokens'] - 1}"
                 f" steps), prefill {s['prefill']} tokens; median of {s['rounds']} interleaved "
                 "rounds (interquartile range in brackets)",
                 f"read bandwidth {self.read_gbps:.1f} GB/s (best read probe)",
                 f"command: {self.command}"] + ([s["busy_note"]] if s.get("busy_note") else []) + [
                 "", "| engine / format | decode tok/s | x stock | prefill tok/s | x stock | "
                 "expert bytes x bf16 | kernel | kernel GB/s | kernel_bw_ratio | "
                 "logit error (activation quant) | greedy agrees |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in self.rows.items():
            kern = r.get("kernel", "-")
            lines.append(
                f"| {name} | {_iqr(r, 'decode')} | {r['decode_x_stock']:.2f} | "
                f"{_iqr(r, 'prefill')} | {r['prefill_x_stock']:.2f} | "
                f"{_f(r.get('bytes_x_bf16'))} | {kern} | {_f(r.get('kernel_gbps'), 1)} | "
                f"{_f(r.get('kernel_bw_ratio'))} | {_f(r.get('act_quant_logit_err'), 4)} | "
                f"{_f(r.get('act_quant_top1_agree'))} |")
        return "\n".join(lines)


def _iqr(row: dict, phase: str) -> str:
    """'2.05 (1.98-2.11)': the median tok/s of a phase and the IQR of its rounds."""
    low, high = row.get(f"{phase}_tps_low"), row.get(f"{phase}_tps_high")
    text = f"{row[f'{phase}_tps']:.2f}"
    return text if low is None else f"{text} ({low:.2f}-{high:.2f})"


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_format_suite(shape: str = "mixtral-8x7b", layers: int = 2,
                     formats: tuple[str, ...] = DEFAULT_FORMATS, threads: int | None = 2,
                     rounds: int = ROUNDS, prompt: int = DECODE_PROMPT,
                     prefill: int = PREFILL_TOKENS, decode_tokens: int = DECODE_TOKENS,
                     probe_bytes: int = PROBE_BYTES, rotate_bytes: int = ROTATE_BYTES,
                     command: str | None = None, progress: bool = True,
                     activation_quant: bool = False) -> FormatSuiteResult:
    """Measure the targets table (module docstring); returns it with machine and command."""
    from ..api import from_model
    from .random_checkpoint import build_random_model

    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    spec = get_shape(shape)
    fmts = [resolve_format(f, None, (spec.hidden_size, spec.intermediate_size)) for f in formats]
    facts = asdict(machine_facts())
    facts["isa"] = torch.backends.cpu.get_cpu_capability()
    facts["platform"] = platform.platform()
    before = conditions()
    try:
        with tqdm(total=3 + len(fmts) + rounds, desc="format suite", disable=not progress) as bar:
            probes = measure_cpu_bandwidth(probe_bytes)
            bar.update(1)
            kernels = measure_kernels(spec.hidden_size, spec.intermediate_size, fmts,
                                      torch.bfloat16, buckets=(1, 64),
                                      threads=[torch.get_num_threads()],
                                      rotate_bytes=rotate_bytes)
            bar.update(1)
            engines = {}
            for fmt in fmts:
                model = build_random_model(spec, layers, "bfloat16")
                engines[fmt.label()] = from_model(
                    model, device="cpu", placement="none", execution="cpu", expert_budget=0,
                    expert_dtype=fmt.name, group_size=fmt.group_size,
                    name=f"random-{shape}-{layers}L-{fmt.label()}")
                engines[fmt.label()].set_kernels(kernels.kernel_choice())
                bar.update(1)
            q8 = [k for k, f in zip(engines, fmts) if activation_quant and has_q8_kernel(f)]
            samples = _interleaved(engines, rounds, prompt, prefill, decode_tokens, bar, q8)
            after = measure_cpu_bandwidth(probe_bytes)
            probes = {k: max(v, after.get(k, 0.0)) for k, v in probes.items()}
            bar.update(1)
    finally:
        torch.set_num_threads(old_threads)
    read = best_read_gbps(probes)
    rows = _rows(samples, engines, kernels, read)
    for label in q8:
        rows[f"engine-{label}{Q8_SUFFIX}"].update(activation_quant_error(engines[label], prefill))
    for eng in engines.values():
        eng.close()
    settings = dict(shape=shape, layers=layers, threads=threads or old_threads, rounds=rounds,
                    prompt=prompt, prefill=prefill, decode_tokens=decode_tokens,
                    formats=[f.label() for f in fmts], activations="bfloat16",
                    load_average_after=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    load = before.finished(machine_load())
    settings.update(conditions=load.to_dict(), busy_note=load.note(
        [spread(s[p]) for s in samples.values() for p in ("decode", "prefill") if s[p]]))
    return FormatSuiteResult(rows, kernels.to_dict(), read, probes, facts, settings, command,
                             _dt.datetime.now().astimezone().isoformat(timespec="seconds"))


def has_q8_kernel(fmt) -> bool:
    """Whether an activation-quantizing native kernel runs this format here."""
    from ..runtime.kernels.native import available, cpu_layout
    from ..runtime.kernels.registry import NATIVE_Q8_KERNELS

    return available() and cpu_layout(fmt).matrix_fmt in NATIVE_Q8_KERNELS


def activation_quant_error(engine, tokens: int, seed: int = 1) -> dict[str, float]:
    """The engine's logits on a random `tokens`-token prompt with and without activation
    quantization: max |difference| / max |exact logit|, and the share of positions whose
    greedy token agrees."""
    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        engine.set_activation_quant(False)
        exact = engine.model(ids).logits.float()  # [1, T, V]
        engine.set_activation_quant(True)
        quant = engine.model(ids).logits.float()
        engine.set_activation_quant(False)
    return {"act_quant_logit_err": ((quant - exact).abs().max() / exact.abs().max()).item(),
            "act_quant_top1_agree": (quant.argmax(-1) == exact.argmax(-1)).float().mean().item()}


def _contenders(engines: dict, q8: list[str] = ()) -> dict:
    """name -> (model, implementation to run it with, engine or None, activation quant).
    Stock is the bf16 engine's model with transformers' own experts implementation."""
    bf16 = engines.get("bf16") or next(iter(engines.values()))
    out = {STOCK: (bf16.model, bf16._previous_impl or "grouped_mm", None, False)}
    out.update({f"engine-{k}": (e.model, "fiddler", e, False) for k, e in engines.items()})
    out.update({f"engine-{k}{Q8_SUFFIX}": (engines[k].model, "fiddler", engines[k], True)
                for k in q8})
    return out


def _interleaved(engines, rounds, prompt, prefill, decode_tokens, bar, q8=()) -> dict:
    """contender -> {'decode': [tok/s per round], 'prefill': [...]} with a warm-up round."""
    contenders = _contenders(engines, q8)
    gen = torch.Generator().manual_seed(0)
    decode_ids = torch.randint(0, 256, (1, prompt), generator=gen)  # [1, T]
    prefill_ids = torch.randint(0, 256, (1, prefill), generator=gen)  # [1, P]
    cpu = torch.device("cpu")
    out = {name: {"decode": [], "prefill": []} for name in contenders}
    names = list(contenders)
    for r in range(rounds + 1):  # round 0 warms up
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            model, impl, engine, quant = contenders[name]
            model.set_experts_implementation(impl)
            if engine is not None:
                engine.set_activation_quant(quant)
            timed = timed_generate(model, decode_ids, decode_tokens, cpu,
                                   min_new_tokens=decode_tokens, pad_token_id=0)
            with torch.inference_mode():
                t0 = time.perf_counter()
                model(prefill_ids)
                seconds = time.perf_counter() - t0
            if r:
                out[name]["decode"].append((decode_tokens - 1) / timed.decode_s)
                out[name]["prefill"].append(prefill / seconds)
        bar.update(1 if r else 0)
    for eng in engines.values():
        eng.model.set_experts_implementation("fiddler")
        eng.set_activation_quant(False)
    return out


def _rows(samples, engines, kernels, read_gbps) -> dict[str, dict[str, float]]:
    stock = samples[STOCK]
    bf16_bytes = None
    if "bf16" in engines:
        bf16_bytes = engines["bf16"].memory().host_experts_total
    rows = {}
    for name, s in samples.items():
        dec, pre = spread(s["decode"]), spread(s["prefill"])
        row = {"decode_tps": dec.median, "prefill_tps": pre.median,
               "decode_tps_low": dec.low, "decode_tps_high": dec.high,
               "prefill_tps_low": pre.low, "prefill_tps_high": pre.high,
               "decode_x_stock": statistics.median(a / b for a, b in zip(s["decode"],
                                                                         stock["decode"])),
               "prefill_x_stock": statistics.median(a / b for a, b in zip(s["prefill"],
                                                                          stock["prefill"])),
               "decode_samples": s["decode"], "prefill_samples": s["prefill"]}
        if name != STOCK:
            label = name.removeprefix("engine-").removesuffix(Q8_SUFFIX)
            quant = name.endswith(Q8_SUFFIX)
            row["format"] = label
            row["activation_quant"] = quant
            nbytes = engines[label].memory().host_experts_total
            row["expert_bytes"] = nbytes
            if bf16_bytes:
                row["bytes_x_bf16"] = nbytes / bf16_bytes
            row["kernel"] = (kernels.choice_q8 if quant else kernels.choice)[label]["1"]
            row["kernel_gbps"] = kernels.gbps(label, 1, quant)
            row["kernel_bw_ratio"] = row["kernel_gbps"] / read_gbps
        rows[name] = row
    return rows
