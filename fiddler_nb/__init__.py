"""fiddler_nb: run Mixture-of-Experts models that do not fit in GPU memory, fast.

CPU-GPU orchestration after Fiddler (Kamahori et al., arXiv 2402.07033): non-expert weights and
the most popular experts on the GPU, the rest in CPU memory; each activated expert runs on the
CPU or has its weights copied over, whichever a latency model measured on this machine says is
faster. See README.md for the public API.
"""

from . import policies
from .config import SHAPE_PRESETS, EngineConfig, ModelShape, get_shape
from .engine import Engine, GenerationResult, load
from .hardware import GPU_PRESETS, LINK_PRESETS
from .latency import Curve, LatencyModel, assign_layer
from .planner import PlanRecord, plan, plan_table
from .profiler import HardwareProfile, profile_hardware
from .routing import Popularity, calibrate
from .stats import GenerationStats, PhaseStats
from .tiny import make_tiny_checkpoint

__version__ = "0.1.0"

__all__ = [
    "Curve", "Engine", "EngineConfig", "GPU_PRESETS", "GenerationResult", "GenerationStats",
    "HardwareProfile", "LINK_PRESETS", "LatencyModel", "ModelShape", "PhaseStats", "PlanRecord",
    "Popularity", "SHAPE_PRESETS", "assign_layer", "calibrate", "get_shape", "load",
    "make_tiny_checkpoint", "plan", "plan_table", "policies", "profile_hardware",
]
