"""Configuration: the engine's settings, and the dtype and device names users pass.

`EngineConfig` is what `fnb.load` was asked for. (Model shapes for planning models that are not
loaded live in `measure/shapes.py`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DeviceError, OptionError

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn 'bf16' / 'bfloat16' / torch.bfloat16 into a torch dtype; None stays None."""
    if dtype is None or dtype in DTYPE_NAMES.values():
        return dtype
    if isinstance(dtype, torch.dtype):
        raise OptionError(f"dtype {dtype} is not supported; use one of {sorted(set(DTYPE_NAMES))}")
    key = str(dtype).removeprefix("torch.").lower()
    if not isinstance(dtype, str) or key not in DTYPE_NAMES:
        raise OptionError(f"unknown dtype {dtype!r}; use one of {sorted(set(DTYPE_NAMES))}")
    return DTYPE_NAMES[key]


SUPPORTED_DEVICES = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise DeviceError(f"device must be a string such as 'cuda' or 'cpu', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; pass 'cpu', 'cuda', 'cuda:N' or None "
                          "(CUDA when available)") from None
    if dev.type not in SUPPORTED_DEVICES:
        raise DeviceError(f"device {device!r} is not supported; fiddler_nb runs on "
                          f"{' or '.join(SUPPORTED_DEVICES)} (None picks CUDA when available)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was asked for but CUDA is not available here; "
                          "pass device=None or device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device={device!r} does not exist: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@dataclass(frozen=True)
class EngineConfig:
    """What the engine was asked to do. Change it with `dataclasses.replace`."""

    device: str = "cpu"
    dtype: str = "float32"
    expert_budget: int = 0  # experts (all layers together) kept on the fast device
    placement: str = "popularity"
    execution: str = "auto"
    scratch_slots: int = 2  # GPU buffers for transferred experts: one copying while one computes
    seed: int = 0  # for seeded policies (random placement)
    threads: int | None = None  # torch CPU threads while generating (None: leave torch's setting)
    expert_dtype: str = ""  # the routed experts' format label: 'bf16', 'int8', 'int4-g128', ...
