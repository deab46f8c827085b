"""Machine facts, and presets for GPUs and host links we cannot measure here.

`machine_facts()` reads what this machine is (CPU model from /proc/cpuinfo, cores, threads
torch uses, GPU name and memory, library versions, date). `GPU_PRESETS` / `LINK_PRESETS` hold
vendor figures, each with its citation, so a profile measured on a CPU-only laptop can be
combined with a GPU it does not have (`HardwareProfile.with_gpu_preset("rtx-4090-pcie4")`) and
the planner can project it -- always labelled as a preset, never as measured.

A preset GPU runs one expert in  LAUNCH_MS + max(bytes / (memory bandwidth * MEMORY_EFFICIENCY),
2 * params * tokens / (dense bf16 tensor FLOP/s * COMPUTE_EFFICIENCY)): a roofline, memory-bound
at decode, compute-bound for long prompts.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..runtime.errors import OptionError
from ..runtime.policies.latency import Curve

# Batch-1 GEMV kernels stream weights at ~75-90% of peak DRAM bandwidth on recent NVIDIA parts
# (e.g. the memory-bound decode figures in gpt-fast's README); 0.8 is the middle of that range.
MEMORY_EFFICIENCY = 0.8
# Large bf16 GEMMs reach ~60-80% of the dense tensor-core peak; prompts of a few hundred tokens
# split over experts give medium GEMMs, so the low end.
COMPUTE_EFFICIENCY = 0.6
LAUNCH_MS = 0.02  # three kernels per expert (gate_up, gate, down) at ~5-7 us CUDA launch each
PRESET_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # curve points


@dataclass(frozen=True)
class MachineFacts:
    cpu_model: str
    cpu_cores: int  # logical CPUs this process may run on
    threads_used: int  # torch.get_num_threads() during the measurement
    llc_bytes: int  # last-level cache of cpu0 (0 if unknown)
    gpu_name: str  # "" without CUDA
    gpu_memory_bytes: int
    torch_version: str
    transformers_version: str
    python_version: str
    date: str  # ISO 8601, local time of the measurement
    load_average_1m: float = 0.0  # other work on the machine when measuring (noise warning)

    @classmethod
    def from_dict(cls, data: dict) -> "MachineFacts":
        return cls(**data)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _llc_bytes() -> int:
    """Size of the highest cache level of cpu0 from sysfs, e.g. '32768K' -> bytes."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    best = 0
    for idx in sorted(root.glob("index*")):
        try:
            text = (idx / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    return best


def machine_facts(threads: int | None = None) -> MachineFacts:
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = ""
    gpu_name, gpu_mem = "", 0
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu_name, gpu_mem = props.name, int(props.total_memory)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return MachineFacts(
        cpu_model=_cpu_model(), cpu_cores=int(cores or 1),
        threads_used=int(threads or torch.get_num_threads()), llc_bytes=_llc_bytes(),
        gpu_name=gpu_name, gpu_memory_bytes=gpu_mem, torch_version=torch.__version__,
        transformers_version=tf_version, python_version=platform.python_version(),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        load_average_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)


@dataclass(frozen=True)
class GpuPreset:
    """Vendor figures for one GPU; latency follows from them by a stated roofline."""

    name: str
    memory_bytes: int
    memory_gbps: float  # peak DRAM bandwidth, GB/s
    bf16_tflops: float  # dense tensor-core peak (fp16 for pre-Ampere parts without bf16)
    default_link: str  # the host link it ships with (key of LINK_PRESETS)
    citation: str
    memory_efficiency: float = MEMORY_EFFICIENCY
    compute_efficiency: float = COMPUTE_EFFICIENCY
    launch_ms: float = LAUNCH_MS

    def expert_ms(self, tokens: float, expert_bytes: float, dtype_bytes: int = 2) -> float:
        """One expert with `tokens` tokens, weights already on this GPU (roofline)."""
        memory_ms = expert_bytes / (self.memory_gbps * 1e9 * self.memory_efficiency) * 1e3
        flops = 2 * (expert_bytes / dtype_bytes) * tokens  # one multiply-add per weight per token
        compute_ms = flops / (self.bf16_tflops * 1e12 * self.compute_efficiency) * 1e3
        return self.launch_ms + max(memory_ms, compute_ms)

    def curve(self, expert_bytes: float, dtype_bytes: int = 2) -> Curve:
        ts = tuple(float(t) for t in PRESET_TOKENS)
        return Curve(ts, tuple(self.expert_ms(t, expert_bytes, dtype_bytes) for t in ts))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LinkPreset:
    """A host<->GPU link: effective bandwidth of large pinned copies, per direction."""

    name: str
    h2d_gbps: float
    d2h_gbps: float
    citation: str

    def to_dict(self) -> dict:
        return asdict(self)


_GB = 10**9
_PCIE_NOTE = ("PCI-SIG PCIe Base Spec: {raw} GB/s raw per direction for x16 after 128b/130b "
              "encoding; pinned cudaMemcpy typically reaches ~80% of raw (CUDA samples "
              "bandwidthTest), hence ~{eff} GB/s")
LINK_PRESETS: dict[str, LinkPreset] = {
    "pcie3": LinkPreset("pcie3", 12.0, 12.0, _PCIE_NOTE.format(raw=15.75, eff=12)),
    "pcie4": LinkPreset("pcie4", 25.0, 25.0, _PCIE_NOTE.format(raw=31.5, eff=25)),
    "pcie5": LinkPreset("pcie5", 50.0, 50.0, _PCIE_NOTE.format(raw=63.0, eff=50)),
}

GPU_PRESETS: dict[str, GpuPreset] = {
    "rtx-4090": GpuPreset("rtx-4090", 24 * _GB, 1008.0, 165.2, "pcie4",
                          "NVIDIA Ada GPU Architecture whitepaper v2.1, Table 2 (GeForce RTX "
                          "4090): 24 GB GDDR6X, 1008 GB/s; FP16/BF16 tensor w/ FP32 accumulate "
                          "165.2 TFLOPS dense; PCIe 4.0 x16"),
    "rtx-3090": GpuPreset("rtx-3090", 24 * _GB, 936.0, 71.0, "pcie4",
                          "NVIDIA Ampere GA102 GPU Architecture whitepaper v2.0, Table 1 "
                          "(GeForce RTX 3090): 24 GB GDDR6X, 936 GB/s; FP16/BF16 tensor w/ FP32 "
                          "accumulate 71 TFLOPS dense; PCIe 4.0 x16"),
    "l4": GpuPreset("l4", 24 * _GB, 300.0, 121.0, "pcie4",
                    "NVIDIA L4 Tensor Core GPU datasheet: 24 GB GDDR6, 300 GB/s; BF16 tensor "
                    "242 TFLOPS with sparsity (121 dense); PCIe 4.0 x16"),
    "rtx-6000-ada": GpuPreset("rtx-6000-ada", 48 * _GB, 960.0, 182.1, "pcie4",
                              "NVIDIA RTX 6000 Ada Generation datasheet: 48 GB GDDR6 ECC, "
                              "960 GB/s; Ada whitepaper: BF16 tensor 364.2 TFLOPS with "
                              "sparsity (182.1 dense); PCIe 4.0 x16"),
    "quadro-rtx-6000": GpuPreset("quadro-rtx-6000", 24 * _GB, 672.0, 130.5, "pcie3",
                                 "NVIDIA Quadro RTX 6000 datasheet: 24 GB GDDR6, 672 GB/s, "
                                 "130.5 FP16 tensor TFLOPS (Turing has no bf16); PCIe 3.0 x16. "
                                 "The GPU of the Fiddler paper's first testbed"),
    "a100-80gb-pcie": GpuPreset("a100-80gb-pcie", 80 * _GB, 1935.0, 312.0, "pcie4",
                                "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB PCIe): 80 GB "
                                "HBM2e, 1935 GB/s; BF16 tensor 312 TFLOPS dense; PCIe 4.0 x16"),
    "h100-pcie": GpuPreset("h100-pcie", 80 * _GB, 2000.0, 756.0, "pcie5",
                           "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe): 80 GB HBM2e, "
                           "2 TB/s (2000 GB/s); BF16 tensor 1513 TFLOPS with sparsity (756 dense); "
                           "PCIe 5.0 x16"),
}


def known_gpu_presets() -> list[str]:
    """GPU names, and each GPU with every link as '<gpu>-<link>' (e.g. 'rtx-4090-pcie4')."""
    return sorted(GPU_PRESETS) + sorted(f"{g}-{l}" for g in GPU_PRESETS for l in LINK_PRESETS)


def get_gpu_preset(name: str, link: str | None = None) -> tuple[GpuPreset, LinkPreset]:
    """'rtx-4090' (its own link), 'rtx-4090-pcie3' or ('rtx-4090', link='pcie5')."""
    gpu_name = name
    for key in LINK_PRESETS:
        if name.endswith("-" + key) and name[: -len(key) - 1] in GPU_PRESETS:
            gpu_name, link = name[: -len(key) - 1], link or key
    if gpu_name not in GPU_PRESETS:
        raise OptionError(f"unknown GPU preset {name!r}; known: {', '.join(known_gpu_presets())}")
    gpu = GPU_PRESETS[gpu_name]
    link = link or gpu.default_link
    if link not in LINK_PRESETS:
        raise OptionError(f"unknown link preset {link!r}; known: {', '.join(LINK_PRESETS)}")
    return gpu, LINK_PRESETS[link]
