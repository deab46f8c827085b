"""fiddler_nb: run Mixture-of-Experts models that do not fit in GPU memory, fast.

CPU-GPU orchestration after Fiddler (Kamahori et al., arXiv 2402.07033): non-expert weights and
the most popular experts on the GPU, the rest in CPU memory; each activated expert runs on the
CPU or has its weights copied over, whichever a latency model measured on this machine says is
faster. See README.md for the public API.

Layers (imports run one way, top to bottom of this list; tests/test_layers.py checks it):
  runtime/     the engine: model facts, loading, experts, policies, latency model, orchestration
  measure/     this machine's facts, probes, profiler, planner (projections)
  api.py       the entry points: load, from_model, use_profile, calibrate
  tune.py      autotune: candidates ranked by the planner, measured on the workload -> Plan
  benchmarks/  measured comparisons: bench matrix, naive offload, CPU suite, random checkpoints
  notebook/    plots, widgets, nbmode, and the demo report
  cli/         the `fiddler-nb` command
"""

from .api import calibrate, from_model, load, use_profile
from .tune import autotune
from .benchmarks.cpu_suite import run_cpu_suite
from .benchmarks.matrix import BenchRecord, bench
from .benchmarks.random_checkpoint import make_random_checkpoint, scaled_expert_budget
from .measure.hardware import GPU_PRESETS, LINK_PRESETS
from .measure.planner import PlanRecord, plan, plan_table
from .measure.profiler import HardwareProfile, profile_hardware
from .runtime import policies
from .runtime.model.config import EngineConfig
from .measure.shapes import SHAPE_PRESETS, ModelShape, get_shape
from .runtime.engine.engine import Engine, GenerationResult
from .runtime.engine.dequantized import write_dequantized, write_gguf_reference
from .runtime.errors import (BudgetError, CheckpointError, ContextLengthError, DeviceError,
                             EngineClosedError, FiddlerError, FileFormatError, FileWriteError,
                             FormatError,
                             InputError, MissingFileError, OptionError, UnsupportedModelError)
from .runtime.policies.latency import Curve, LatencyModel, assign_layer
from .runtime.generation.plan_file import Plan, PlanRow, PlanSettings
from .runtime.policies.popularity import Popularity
from .runtime.generation.stats import GenerationStats, PhaseStats
from .runtime.generation.streaming import GenerationStream, TokenEvent
from .runtime.model.tiny import make_tiny_checkpoint
from .runtime.model.tiny_gguf import make_tiny_gguf
from .runtime.engine.model_facts import ModelFacts, inspect
from .runtime.generation.workload import Workload, kv_cache_bytes

__version__ = "0.1.0"

__all__ = [
    "BenchRecord", "BudgetError", "CheckpointError", "ContextLengthError", "Curve", "DeviceError",
    "Engine", "EngineClosedError", "EngineConfig", "FiddlerError", "FileFormatError", "FileWriteError",
    "FormatError", "GPU_PRESETS", "GenerationResult", "GenerationStats", "GenerationStream", "HardwareProfile",
    "InputError", "LINK_PRESETS", "LatencyModel", "MissingFileError", "ModelFacts", "ModelShape",
    "OptionError", "PhaseStats", "Plan", "PlanRecord", "PlanRow", "PlanSettings", "Popularity",
    "SHAPE_PRESETS", "TokenEvent", "UnsupportedModelError", "Workload", "assign_layer",
    "autotune", "bench", "calibrate", "from_model", "get_shape", "inspect", "kv_cache_bytes",
    "load", "make_random_checkpoint", "make_tiny_checkpoint", "make_tiny_gguf", "plan", "plan_table", "policies",
    "profile_hardware", "run_cpu_suite", "run_demo", "scaled_expert_budget", "use_profile",
    "write_dequantized", "write_gguf_reference",
]

# UI modules, imported on first use (the report pulls in plotly's HTML machinery)
_LAZY_MODULES = {"widgets": "notebook.widgets", "nbmode": "notebook.nbmode",
                 "plots": "notebook.plots", "demo": "notebook.demo",
                 "report": "benchmarks.report"}


def __getattr__(name: str):
    import importlib

    if name == "run_demo":
        return importlib.import_module(".notebook.demo", __name__).run_demo
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{_LAZY_MODULES[name]}", __name__)
    raise AttributeError(f"module 'fiddler_nb' has no attribute {name!r}")
