"""Streaming quantization at load: an int8 load never holds all float experts.

Each load runs in a fresh subprocess that samples its own anonymous resident memory (RssAnon,
which excludes the memory-mapped checkpoint's page cache) every millisecond; the peak minus the
value just before `fnb.load` is what loading added (a warm-up load of the embedded tiny model
first pays for imports, which would otherwise dominate). A bf16 checkpoint with 8 MoE layers of
8 experts (hidden 256, intermediate 1024: 100 MB of bf16 experts) is loaded as bf16 and as
int8: int8 experts are half the bytes, plus at most one layer's float matrix in flight, so its
peak must stay well below the bf16 load's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fiddler_nb as fnb

MMAP_THRESHOLD_BYTES = 1 << 20
# the bf16 load must show (nearly) all its experts as added memory; memory the warm-up engine
# frees while the second load runs (garbage collected then) is subtracted from the figure, so
# allow a few percent (a 2-core CI box under load once measured 99.8% of the experts' bytes)
HELD_FRACTION = 0.95
SCRIPT = r"""
import json, sys, threading, time
import fiddler_nb as fnb

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

peak, done = [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon_kib())
        time.sleep(0.001)

path, fmt = sys.argv[1], (sys.argv[2] if sys.argv[2] != "none" else None)
fnb.load("tiny", device="cpu", expert_dtype=fmt).close()  # imports and registrations first
before = anon_kib()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
engine = fnb.load(path, device="cpu", expert_dtype=fmt, expert_budget=0, placement="none")
done.set()
thread.join()
print(json.dumps({"added_kib": max(peak[0], anon_kib()) - before,
                  "expert_bytes": engine.memory().host_experts_total}))
"""


def _load_peak(path: Path, fmt: str | None) -> dict:
    # a fixed mmap threshold: glibc otherwise raises it after each large free and keeps freed
    # blocks in its heap, so RSS would count memory the loader already gave back
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD_BYTES))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), fmt or "none"],
                         capture_output=True, text=True, check=True, timeout=300, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_int8_load_peaks_well_below_bf16_load(tmp_path):
    path = fnb.make_tiny_checkpoint(tmp_path / "wide", arch="mixtral", dtype="bfloat16",
                                    hidden_size=256, intermediate_size=1024,
                                    num_hidden_layers=8)
    bf16 = _load_peak(path, None)
    int8 = _load_peak(path, "int8")
    assert int8["expert_bytes"] < 0.55 * bf16["expert_bytes"]
    assert bf16["added_kib"] * 1024 >= HELD_FRACTION * bf16["expert_bytes"], \
        f"the bf16 load should hold its experts: added {bf16['added_kib']} KiB for " \
        f"{bf16['expert_bytes'] // 1024} KiB of experts"
    assert int8["added_kib"] < 0.75 * bf16["added_kib"], \
        f"int8 load added {int8['added_kib']} KiB, bf16 load {bf16['added_kib']} KiB"
