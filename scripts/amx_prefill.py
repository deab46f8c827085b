"""Prefill-128 with and without the AMX tile kernels, interleaved with stock transformers bf16.

    python scripts/amx_prefill.py CKPT OUT.json int8-g32 int4-g32

For each format: a CPU-only engine (dense weights in the same format) with the measured kernel
choice, loaded once with AMX and once with FIDDLER_NB_AMX=0 (its own measured choice), and stock
transformers on the checkpoint's bf16 weights; ROUNDS interleaved rounds (who goes first
rotates) after a warm-up, THREADS threads. Prints one JSON line per format and writes them all,
with the machine, to OUT.json.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

import torch

import fiddler_nb as fnb
from fiddler_nb.runtime.kernels import native

PREFILL, ROUNDS, THREADS = 128, 4, 2


def set_amx(on: bool) -> None:
    if on:
        os.environ.pop("FIDDLER_NB_AMX", None)
    else:
        os.environ["FIDDLER_NB_AMX"] = "0"


def prefill_tps(model, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(ids)
        return ids.shape[1] / (time.perf_counter() - t0)


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def main(path: str, out_path: str, formats: list[str]) -> None:
    torch.set_num_threads(THREADS)
    ids = torch.randint(0, 256, (1, PREFILL), generator=torch.Generator().manual_seed(0))
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t")
    out = {"machine": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "amx_available": native.amx_available(), "threads": THREADS,
           "prefill_tokens": PREFILL, "rounds": ROUNDS, "command": " ".join(sys.argv), "rows": {}}
    stock = fnb.load(path, device="cpu", execution="cpu", expert_budget=0)
    stock_impl = stock._previous_impl or "grouped_mm"
    for fmt in formats:
        engines = {}
        for on in (True, False):
            set_amx(on)
            engines[on] = fnb.load(path, device="cpu", execution="cpu", expert_budget=0,
                                   expert_dtype=fmt, dense_dtype=fmt.split("-")[0],
                                   dtype="bfloat16")
        samples = {"stock": [], "amx": [], "no-amx": []}
        contenders = [("stock", True), ("amx", True), ("no-amx", False)]
        for r in range(ROUNDS + 1):  # round 0 warms up
            for name, on in contenders[r % 3:] + contenders[:r % 3]:
                set_amx(on)
                if name == "stock":
                    stock.model.set_experts_implementation(stock_impl)
                    tps = prefill_tps(stock.model, ids)
                    stock.model.set_experts_implementation("fiddler")
                else:
                    tps = prefill_tps(engines[on].model, ids)
                if r:
                    samples[name].append(tps)
        set_amx(True)
        row = {k: {"median": statistics.median(v), "samples": v} for k, v in samples.items()}
        row["amx_x_no_amx"] = ratio(samples["amx"], samples["no-amx"])
        row["amx_x_stock"] = ratio(samples["amx"], samples["stock"])
        row["no_amx_x_stock"] = ratio(samples["no-amx"], samples["stock"])
        out["rows"][fmt] = row
        print(json.dumps({fmt: row}), flush=True)
        for eng in engines.values():
            eng.close()
        del engines
        gc.collect()
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
