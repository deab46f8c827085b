"""Shared fixtures: tiny seeded checkpoints of every tested architecture, built once per run."""

from __future__ import annotations

import os

import pytest
import torch

import fiddler_nb as fnb

from fiddler_nb.runtime.model.adapters import TESTED_ARCHITECTURES
from fiddler_nb.runtime.model.tiny import make_tiny_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """The embedded default model is written under a per-run folder, not the user's home."""
    if "FIDDLER_NB_CACHE" not in os.environ:
        os.environ["FIDDLER_NB_CACHE"] = str(tmp_path_factory.mktemp("fnb_cache"))
    # the static default kernel choice: no test pays the once-per-machine measurement
    # (tests/test_native_kernels.py measures it on purpose)
    os.environ.setdefault("FIDDLER_NB_KERNEL_CHOICE", "default")
    if "FIDDLER_NB_KERNELS_CACHE" not in os.environ:  # the native kernels build once, not per run
        import tempfile

        os.environ["FIDDLER_NB_KERNELS_CACHE"] = os.path.join(
            tempfile.gettempdir(), f"fiddler_nb-kernels-{getattr(os, 'getuid', lambda: 0)()}")


@pytest.fixture(params=["native", "torch"])
def cpu_kernels(request, monkeypatch) -> str:
    """Run a test with the package's native CPU kernels (where a compiler builds them) and with
    torch's kernels only (FIDDLER_NB_NATIVE=0)."""
    from fiddler_nb.runtime.kernels import native

    if request.param == "native" and not native.available():
        pytest.skip(f"native CPU kernels unavailable: {native.unavailable_reason()}")
    if request.param == "torch":
        monkeypatch.setenv("FIDDLER_NB_NATIVE", "0")
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: str(make_tiny_checkpoint(root / arch, arch=arch, seed=0))
            for arch in TESTED_ARCHITECTURES}


@pytest.fixture(scope="session")
def mixtral_path(tiny_checkpoints) -> str:
    return tiny_checkpoints["mixtral"]


def _stock(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


@pytest.fixture(scope="session")
def stock_model():
    """Stock transformers on the same checkpoint, default experts implementation."""
    return _stock


@pytest.fixture(scope="session")
def dequantized(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("deq")
    cache: dict[tuple[str, str, int | None], str] = {}

    def get(arch: str, fmt: str, group: int | None) -> str:
        """`fnb.write_dequantized` of the tiny checkpoint, written once per run."""
        key = (arch, fmt, group)
        if key not in cache:
            out = root / f"{arch}-{fmt}-g{group}"
            cache[key] = str(fnb.write_dequantized(tiny_checkpoints[arch], out, fmt, group))
        return cache[key]
    return get
