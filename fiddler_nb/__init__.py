"""fiddler_nb: run Mixture-of-Experts models that do not fit in GPU memory, fast.

CPU-GPU orchestration after Fiddler (Kamahori et al., arXiv 2402.07033): non-expert weights and
the most popular experts on the GPU, the rest in CPU memory; each activated expert runs on the
CPU or has its weights copied over, whichever a latency model measured on this machine says is
faster. See README.md for the public API.
"""

from . import policies
from .config import SHAPE_PRESETS, EngineConfig, ModelShape, get_shape
from .bench import BenchRecord, bench
from .cpu_suite import run_cpu_suite
from .engine import Engine, GenerationResult
from .factory import from_model, load
from .hardware import GPU_PRESETS, LINK_PRESETS
from .latency import Curve, LatencyModel, assign_layer
from .planner import PlanRecord, plan, plan_table
from .profiler import HardwareProfile, profile_hardware
from .routing import Popularity, calibrate
from .stats import GenerationStats, PhaseStats
from .random_checkpoint import make_random_checkpoint, scaled_expert_budget
from .tiny import make_tiny_checkpoint

__version__ = "0.1.0"

__all__ = [
    "BenchRecord", "Curve", "Engine", "EngineConfig", "GPU_PRESETS", "GenerationResult", "GenerationStats",
    "HardwareProfile", "LINK_PRESETS", "LatencyModel", "ModelShape", "PhaseStats", "PlanRecord",
    "Popularity", "SHAPE_PRESETS", "assign_layer", "bench", "calibrate", "from_model",
    "get_shape", "load", "make_random_checkpoint", "make_tiny_checkpoint", "plan", "plan_table",
    "policies", "profile_hardware", "run_cpu_suite", "run_demo", "scaled_expert_budget",
]


_LAZY_MODULES = {"widgets", "nbmode", "plots", "report", "demo"}  # UI: imported on first use


def __getattr__(name: str):
    import importlib

    if name == "run_demo":  # lazy: the report pulls in plotly's HTML machinery
        return importlib.import_module(".demo", __name__).run_demo
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fiddler_nb' has no attribute {name!r}")
