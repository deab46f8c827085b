"""Configuration: the engine's settings and model-shape presets.

`EngineConfig` is what `fnb.load` was asked for; `ModelShape` describes an MoE model by the
numbers that matter for placement and latency (layers, experts, expert matrix sizes), so the
planner and profiler can reason about models that are not loaded (e.g. Mixtral-8x7B on a
laptop). Preset figures come from each model's published `config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DeviceError, OptionError

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


@dataclass(frozen=True)
class ModelShape:
    """An MoE model's sizes. Expert bytes follow from the matrices: gate+up (2*I*H) and down (I*H)."""

    name: str
    num_layers: int  # MoE layers only
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int  # of one routed expert
    dtype: str = "bfloat16"
    non_expert_bytes: int = 0  # attention, embeddings, norms, routers, shared experts, lm_head
    gated: bool = True  # SwiGLU-style experts have three matrices, ungated two
    expert_format: str | None = None  # 'int8', 'int4-g64', 'bf16', ...: None = `dtype`

    @property
    def dtype_bytes(self) -> int:
        return torch.empty((), dtype=resolve_dtype(self.dtype)).element_size()

    @property
    def expert_params(self) -> int:
        matrices = 3 if self.gated else 2
        return matrices * self.hidden_size * self.intermediate_size

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert as stored (scales included for int8 / int4)."""
        if self.expert_format is None:
            return self.expert_params * self.dtype_bytes
        from .quant import parse_label

        bits = parse_label(self.expert_format).bits_per_weight(scale_bytes=self.dtype_bytes)
        return int(self.expert_params * bits / 8)

    @property
    def total_experts(self) -> int:
        return self.num_layers * self.num_experts

    def with_layers(self, num_layers: int) -> "ModelShape":
        """The same per-layer shape with fewer (or more) MoE layers; non-expert bytes scale too."""
        scale = num_layers / self.num_layers
        from dataclasses import replace

        return replace(self, num_layers=num_layers,
                       non_expert_bytes=int(self.non_expert_bytes * scale))


_GB = 10**9
# name -> shape. Figures from each model's config.json on the Hugging Face hub; non-expert
# bytes are bf16 weights outside the routed experts (rounded, for planning only).
SHAPE_PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape("tiny", num_layers=4, num_experts=8, top_k=2, hidden_size=64,
                       intermediate_size=128, dtype="float32", non_expert_bytes=600_000),
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 8, 2, 4096, 14336,
                               non_expert_bytes=int(3.2 * _GB)),
    "mixtral-8x22b": ModelShape("mixtral-8x22b", 56, 8, 2, 6144, 16384,
                                non_expert_bytes=int(5.0 * _GB)),
    "qwen3-30b-a3b": ModelShape("qwen3-30b-a3b", 48, 128, 8, 2048, 768,
                                non_expert_bytes=int(2.0 * _GB)),
    "deepseek-v2-lite": ModelShape("deepseek-v2-lite", 26, 64, 6, 2048, 1408,
                                   non_expert_bytes=int(2.5 * _GB)),
    "olmoe-1b-7b": ModelShape("olmoe-1b-7b", 16, 64, 8, 2048, 1024,
                              non_expert_bytes=int(0.6 * _GB)),
    "gpt-oss-20b": ModelShape("gpt-oss-20b", 24, 32, 4, 2880, 2880,
                              non_expert_bytes=int(2.4 * _GB)),
}


def get_shape(name: str) -> ModelShape:
    """A preset by name; the error lists the known names."""
    if not isinstance(name, str) or name not in SHAPE_PRESETS:
        raise OptionError(f"unknown model shape {name!r}; known: {', '.join(SHAPE_PRESETS)}")
    return SHAPE_PRESETS[name]
