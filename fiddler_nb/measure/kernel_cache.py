"""The CPU kernel choice without a profile: measured once per machine, cached, reused.

The first engine of a format on a machine times every kernel the registry offers for that
format (measure/kernel_choice.py) on one gate_up-sized matrix (MEASURE_SHAPE, the same for every
model so one measurement serves them all) at 1, 8 and 64 tokens -- a few seconds, with a
progress bar and one line saying what it does -- and saves the result under the package cache
folder (FIDDLER_NB_CACHE, default ~/.cache/fiddler_nb) in `kernel-choice/`, keyed by the CPU
model, torch's CPU capability, the native kernels' ISA, the thread count and the package
version, the kernel set and the rules that turn timings into a choice (CHOICE_RULES). Later
engines read the file. More tokens (prefill's hundreds) take the fastest GEMM-class kernel of
the 64-token bucket (oneDNN, dequantize + oneDNN or the tile kernels: what stock transformers'
prefill runs, or faster).
`profile=` still overrides; FIDDLER_NB_KERNEL_CHOICE=default skips the measurement and uses
the static default (the test suite does, so no test pays for it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from ..runtime.files import write_json
from ..runtime.formats.quant import parse_label
from ..runtime.kernels.native import library
from ..runtime.kernels.registry import KernelChoice, get_kernel, known_kernels
from .hardware import _cpu_model
from .kernel_choice import QUICK_BUCKETS, KernelMeasurement, measure_kernels

MEASURE_SHAPE = (4096, 4096)  # (hidden, intermediate): gate_up [8192, 4096], 64 MiB in bf16
ROTATE_BYTES = 192 << 20  # copies rotated so each call reads from DRAM (past a 32-128 MiB LLC)
SKIP_ENV = "FIDDLER_NB_KERNEL_CHOICE"
CHOICE_RULES = 2  # bump when measure_kernels turns the same timings into another choice


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fiddler-nb")
    except PackageNotFoundError:
        return "unknown"


def cache_key(fmt_label: str, act: torch.dtype, threads: int) -> dict:
    return {"cpu_model": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_isa": library().best_isa(), "threads": threads, "version": _package_version(),
            "format": fmt_label, "act_dtype": str(act).removeprefix("torch."),
            "shape": list(MEASURE_SHAPE),
            # new kernels, or ones that run here now and did not (FIDDLER_NB_AMX): again
            "kernels": [k for k in known_kernels() if get_kernel(k).available()],
            "rules": CHOICE_RULES, "native_build": _native_build()}


def _native_build() -> str:
    """The native library's build folder name (its hash covers sources, compiler and flags):
    changed kernels are measured again."""
    path = library().path
    return Path(path).parent.name if path else "none"


def cache_path(key: dict) -> Path:
    root = Path(os.environ.get("FIDDLER_NB_CACHE", Path.home() / ".cache" / "fiddler_nb"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "kernel-choice" / f"{key['format']}-{digest}.json"


def machine_kernel_choice(fmt_label: str, act: torch.dtype, threads: int | None = None,
                          progress: bool = True) -> KernelChoice | None:
    """This machine's measured kernel choice for one format (None: FIDDLER_NB_KERNEL_CHOICE=
    default, use the static default)."""
    if os.environ.get(SKIP_ENV, "").strip().lower() == "default":
        return None
    threads = threads or torch.get_num_threads()
    key = cache_key(fmt_label, act, threads)
    path = cache_path(key)
    measured = _read(path, key)
    if measured is None:
        print(f"fiddler_nb: measuring this CPU's kernels for {fmt_label} once (a few seconds; "
              f"cached in {path.parent})", file=sys.stderr)
        fmt = parse_label(fmt_label)
        measured = measure_kernels(*MEASURE_SHAPE, [fmt], act, QUICK_BUCKETS, threads=[threads],
                                   rotate_bytes=ROTATE_BYTES, progress=progress)
        write_json(path, {"key": key, "measurement": measured.to_dict()})
    choice = measured.kernel_choice()
    return KernelChoice(choice.table, None, f"measured once on this machine ({path.name})",
                        choice.table_q8)


def _read(path: Path, key: dict) -> KernelMeasurement | None:
    """The cached measurement, or None when absent, unreadable or for another key."""
    try:
        data = json.loads(path.read_text())
        return KernelMeasurement.from_dict(data["measurement"]) if data["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
