"""fiddler_nb (CPU-only engine) beside llama.cpp's `llama-bench` and stock transformers, on the
same weights, in interleaved rounds (`fiddler-nb bench --cpu-suite --llama-bench PATH --gguf
FORMAT=FILE ...`).

For each `--gguf FORMAT=FILE` (FORMAT: bf16, int8 = Q8_0's layout, int4 = Q4_0's group, or
`file` for a file compared as it is, e.g. a Q4_K_M mix; FILE: the same checkpoint through
llama.cpp's convert_hf_to_gguf.py + llama-quantize), fiddler_nb
loads the safetensors checkpoint quantizing its experts and dense weights to the same bits
(`CONTENDERS`), optionally a second time with activation quantization allowed (llama.cpp's own
method for Q8_0 / Q4_0: activations rounded to 8 bits per 32 inputs) and, with `direct`, the
GGUF file itself. Each round runs one fiddler_nb measurement (decode tok/s after a 16-token
prompt, prefill tok/s over 128 tokens) and then one llama-bench run of the file (`-p 128 -n N
-r 1`); ratios are taken per round, medians reported. Stock transformers bf16 runs once first.
Nothing is printed inside timed regions; `on_line` gets one JSON-ready dict per measurement.

Shape legend: T = prompt tokens.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..measure.discipline import conditions, machine_load
from ..measure.hardware import machine_facts
from ..runtime.errors import OptionError
from ..runtime.files import write_json

# --gguf key -> fnb.load keywords for the same bits from the safetensors checkpoint
CONTENDERS = {
    "bf16": dict(expert_dtype="bf16"),
    "int8": dict(expert_dtype="int8", group_size=32, dense_dtype="int8"),  # Q8_0's layout
    "int4": dict(expert_dtype="int4", group_size=32, dense_dtype="int4"),  # Q4_0's group
}
QUANTIZED = ("int8", "int4")  # the formats that activation quantization applies to
FILE_ONLY = "file"  # --gguf file=PATH: only the file itself, no safetensors contender
DECODE_PROMPT, PREFILL_TOKENS = 16, 128
VOCAB_MARGIN = 1000  # prompt ids drawn below vocab_size - margin (never special tokens)
BUILD_HINT = ("llama.cpp side by side: pass --llama-bench PATH/llama-bench --gguf int8=FILE "
              "(a GGUF of the same weights; build steps and conversion in docs/benchmarks.md, "
              "'llama.cpp to compare against')")


@dataclass(frozen=True)
class LlamaCompareResult:
    rows: list[dict[str, Any]]  # one per contender: medians, ratios, samples
    stock: dict[str, float]
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
                 f"{s['threads']} threads; {self.date}",
                 f"decode: {s['new_tokens']} tokens after a {DECODE_PROMPT}-token prompt; "
                 f"prefill {PREFILL_TOKENS} tokens; {s['rounds']} interleaved rounds (median, "
                 "range); llama-bench -p 128 -n N -r 1 per round",
                 f"stock transformers bf16: {self.stock['decode_tps']:.2f} tok/s decode, "
                 f"{self.stock['prefill128_tps']:.1f} tok/s prefill",
                 f"command: {self.command}"] + ([s["busy_note"]] if s.get("busy_note") else [])
        lines += ["", "| fiddler_nb | llama.cpp file | decode tok/s ours / theirs | decode "
                  "ratio | prefill-128 tok/s ours / theirs | prefill ratio | decode x stock |",
                  "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            dr = r["decode_ratios"]
            lines.append(
                f"| {r['name']} | {Path(r['gguf']).name} | {r['fnb_decode_tps']:.2f} / "
                f"{r['llama_decode_tps']:.2f} | {r['decode_ratio']:.2f} ({min(dr):.2f}-"
                f"{max(dr):.2f}) | {r['fnb_prefill128_tps']:.1f} / {r['llama_prefill128_tps']:.1f}"
                f" | {r['prefill_ratio']:.2f} | {r['fnb_decode_tps'] / self.stock['decode_tps']:.2f} |")
        return "\n".join(lines)


def check_inputs(llama_bench: str, ggufs: list[tuple[str, str]]) -> str:
    """The llama-bench path to run; a clear error for a missing binary, file or format."""
    binary = shutil.which(llama_bench) or (llama_bench if Path(llama_bench).is_file() else None)
    if binary is None:
        raise OptionError(f"--llama-bench {llama_bench!r} is not an executable; " + BUILD_HINT)
    if not ggufs:
        raise OptionError("--llama-bench needs at least one --gguf FORMAT=FILE; " + BUILD_HINT)
    for key, path in ggufs:
        if key not in CONTENDERS and key != FILE_ONLY:
            raise OptionError(f"--gguf {key}=...: FORMAT is one of {', '.join(CONTENDERS)} "
                              f"or {FILE_ONLY}")
        if not Path(path).is_file():
            raise OptionError(f"--gguf {key}={path}: no such file")
    return binary


def parse_ggufs(items: list[str]) -> list[tuple[str, str]]:
    """['int8=a.gguf', ...] -> [('int8', 'a.gguf'), ...]"""
    out = []
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not path:
            raise OptionError(f"--gguf {item!r}: write FORMAT=FILE, FORMAT one of "
                              f"{', '.join(CONTENDERS)} or {FILE_ONLY}")
        out.append((key, path))
    return out


def prompts(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hi = vocab - min(VOCAB_MARGIN, vocab // 4)  # small test vocabularies keep 3/4
    return (torch.randint(0, hi, (1, DECODE_PROMPT), generator=g),  # [1, T]
            torch.randint(0, hi, (1, PREFILL_TOKENS), generator=g))


def fnb_round(engine, new: int) -> tuple[float, float]:
    """(decode tok/s, prefill tok/s) of one fiddler_nb round, after a short warm-up."""
    p16, p128 = prompts(engine.model.config.vocab_size)
    engine.generate(p16, max_new_tokens=4)  # warm-up
    dec = engine.generate(p16, max_new_tokens=new, min_new_tokens=new).stats.decode_tokens_per_s
    pre = engine.generate(p128, max_new_tokens=1).stats.prefill_tokens_per_s
    return dec, pre


def llama_round(binary: str, gguf: str, threads: int, new: int) -> tuple[float, float]:
    """(decode tok/s, prefill tok/s) of one llama-bench run."""
    out = subprocess.run([binary, "-m", gguf, "-t", str(threads), "-p", str(PREFILL_TOKENS),
                          "-n", str(new), "-r", "1", "-o", "json"], capture_output=True,
                         text=True, check=True)
    rows = json.loads(out.stdout)
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
    return tg, pp


def stock_round(path: str, new: int) -> tuple[float, float]:
    """Stock transformers bf16 on the checkpoint: (decode tok/s, prefill tok/s)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    p16, p128 = prompts(model.config.vocab_size)
    with torch.inference_mode():
        model.generate(p16, max_new_tokens=4, do_sample=False)
        t = time.perf_counter()
        model.generate(p16, max_new_tokens=1, do_sample=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(p16, max_new_tokens=new + 1, min_new_tokens=new + 1, do_sample=False)
        total = time.perf_counter() - t
        t = time.perf_counter()
        model(p128)
        prefill = time.perf_counter() - t
    del model
    return new / (total - first), p128.shape[1] / prefill


def contenders(checkpoint: str, ggufs: list[tuple[str, str]], direct: bool,
               activation_quant: bool) -> list[tuple[str, str, dict, str]]:
    """(name, path to load, fnb.load keywords, GGUF file to compare with) per contender."""
    out = []
    for key, gguf in ggufs:
        if key != FILE_ONLY:
            out.append((f"{key} (from safetensors)", checkpoint, CONTENDERS[key], gguf))
            if activation_quant and key in QUANTIZED:
                out.append((f"{key} + int8 activations", checkpoint,
                            dict(CONTENDERS[key], allow_activation_quant=True), gguf))
        if direct or key == FILE_ONLY:
            name = f"{Path(gguf).name} as it is"
            out.append((name, gguf, {}, gguf))
            if activation_quant and key != "bf16":
                out.append((f"{name} + int8 activations", gguf,
                            dict(allow_activation_quant=True), gguf))
    return out


def run_llama_compare(checkpoint: str, llama_bench: str, ggufs: list[tuple[str, str]],
                      rounds: int = 3, threads: int = 2, new_tokens: int = 32,
                      direct: bool = False, activation_quant: bool = False, command: str = "",
                      on_line: Callable[[dict], None] | None = None) -> LlamaCompareResult:
    """Measure every contender against llama-bench on its file (module docstring)."""
    from ..api import load

    binary = check_inputs(llama_bench, ggufs)
    emit = on_line or (lambda line: None)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    before = conditions()
    facts = asdict(machine_facts())
    facts["isa"] = torch.backends.cpu.get_cpu_capability()
    rows = []
    try:
        dec, pre = stock_round(checkpoint, new_tokens)
        stock = {"decode_tps": dec, "prefill128_tps": pre}
        emit({"engine": "stock transformers bf16", **stock})
        for name, path, kwargs, gguf in contenders(checkpoint, ggufs, direct, activation_quant):
            t = time.perf_counter()
            eng = load(path, device="cpu", threads=threads, expert_budget=0, **kwargs)
            load_s, expert_dtype = time.perf_counter() - t, eng.expert_dtype
            emit({"contender": name, "load_s": load_s, "expert_dtype": expert_dtype,
                  "notes": list(eng.notes)})
            samples = []
            try:
                for r in range(rounds):  # interleaved: one of ours, then one of theirs
                    ours = fnb_round(eng, new_tokens)
                    theirs = llama_round(binary, gguf, threads, new_tokens)
                    samples.append(ours + theirs)
                    emit({"contender": name, "round": r, "fnb_decode_tps": ours[0],
                          "llama_decode_tps": theirs[0], "fnb_prefill128_tps": ours[1],
                          "llama_prefill128_tps": theirs[1]})
            finally:
                eng.close()
            rows.append(_row(name, gguf, load_s, expert_dtype, kwargs, samples))
    finally:
        torch.set_num_threads(old)
    load = before.finished(machine_load())
    settings = dict(threads=threads, rounds=rounds, new_tokens=new_tokens,
                    checkpoint=checkpoint, ggufs=[list(g) for g in ggufs], llama_bench=binary,
                    torch=torch.__version__, conditions=load.to_dict(), busy_note=load.note([]))
    return LlamaCompareResult(rows, stock, facts, settings, command,
                              _dt.datetime.now().astimezone().isoformat(timespec="seconds"))


def _row(name: str, gguf: str, load_s: float, expert_dtype: str, kwargs: dict,
         samples: list[tuple[float, float, float, float]]) -> dict[str, Any]:
    med = lambda i: statistics.median(s[i] for s in samples)  # noqa: E731
    return {"name": name, "gguf": gguf, "load_s": load_s, "expert_dtype": expert_dtype,
            "load_kwargs": kwargs, "samples": samples,
            "fnb_decode_tps": med(0), "fnb_prefill128_tps": med(1),
            "llama_decode_tps": med(2), "llama_prefill128_tps": med(3),
            "decode_ratios": [s[0] / s[2] for s in samples],
            "decode_ratio": statistics.median(s[0] / s[2] for s in samples),
            "prefill_ratio": statistics.median(s[1] / s[3] for s in samples)}
