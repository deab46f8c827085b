"""Building an Engine: `load` (a checkpoint directory or 'tiny') and `from_model` (in memory).

Everything a user can get wrong is checked before weights are read; if anything fails after,
GPU memory is released and the model is handed back untouched (no engine half-attached).
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..model.adapters import find_moe_layers
from ..model.config import EngineConfig, resolve_device, resolve_dtype
from .engine import Engine
from ..policies.execution import make_execution
from ..errors import OptionError
from .experts import GIB, ExpertStore, check_budget_range
from ..kernels.native import cpu_layout, kernel_note
from .dense import check_dense_dtype, route_dense_linears
from ..kernels.registry import DEFAULT_CHOICE, KernelChoice
from ..policies.latency import LatencyModel, LatencySource, default_latency_model
from .loading import check_checkpoint, check_moe_config, load_model, move_non_experts
from .sources import open_source
from ..formats.quant import ExpertFormat
from ..formats.quantize_load import check_format, quantize_experts, storage_for
from ..policies.placement import make_placement
from ..policies.popularity import Popularity
from ..validate import check_int, check_path, check_threads
from ..generation.workload import Workload, check_workload


def load(path: str | Path, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, expert_budget: int | None = None,
         placement: str = "popularity", execution: str = "auto",
         popularity: Popularity | str | Path | None = None,
         profile: Any = None, gpu_memory: str | int | None = None,
         scratch_slots: int = 2, seed: int = 0, workload: Workload | None = None,
         threads: int | None = None, expert_dtype: str | torch.dtype | None = None,
         group_size: int | None = None, kernels: KernelChoice | None = None,
         dense_dtype: str | None = None, allow_activation_quant: bool = False) -> Engine:
    """Load a checkpoint directory (or 'tiny') as an Engine. See the README for each argument.

    expert_budget: experts (all layers together) kept on the fast device; None = as many as fit
    (all of them on a CPU-only machine). gpu_memory: the same budget given as memory for resident
    experts, e.g. "20GiB" (not the whole card: non-expert weights come on top). profile: for
    `auto` execution, a HardwareProfile / LatencyModel / JSON path, or "quick" to measure this
    machine now (seconds) -- those two through `fnb.load` (api.py), which measures and reads
    files; here a LatencyModel or a profile object. None uses the documented default
    (`latency.default_latency_model`), and `engine.latency.source` says which was used.
    workload: a `Workload` whose KV cache + activations are kept free on the fast device (None:
    a fixed 1 GiB). threads: torch CPU threads while generating (None: torch's setting).
    expert_dtype / group_size: the routed experts' format (runtime/formats/quant.py); None keeps the
    checkpoint's. kernels: the CPU kernel per format and token count (None: the default).
    dense_dtype: None / "bf16" / "int8" / "int4": the dense linears' weights on a CPU-only
    engine (engine/dense.py); None keeps the checkpoint's. allow_activation_quant: CPU kernels
    may round activations to int8 per 32 inputs for int8 / int4 weights (integer dot products,
    as llama.cpp's Q8_0 / Q4_0 do; faster, not exact; off by default).
    """
    _check_options(placement, execution, scratch_slots, seed, popularity, workload, threads)
    _check_flag("allow_activation_quant", allow_activation_quant)
    if expert_budget is not None and gpu_memory is not None:
        raise OptionError("pass expert_budget or gpu_memory, not both")
    if gpu_memory is not None:
        parse_bytes(gpu_memory)
    dev = resolve_device(device)
    check_dense_dtype(dense_dtype, dev)
    torch_dtype = resolve_dtype(dtype)
    root = resolve_path(path)
    source = open_source(root, dev, torch_dtype, expert_dtype, group_size)  # GGUF, MXFP4
    if source is None:
        check_checkpoint(root)
        meta_layers = check_moe_config(root)
        fmt = cpu_layout(check_format(meta_layers, expert_dtype, group_size))
    else:  # a file's own blocks stay in torch's layout (GGUF Q4_1 / Q4_K carry zero points)
        meta_layers, fmt = source.layers, source.fmt
    num_layers, num_experts = len(meta_layers), meta_layers[0].num_experts
    if expert_budget is not None:
        check_budget_range(expert_budget, num_layers, num_experts)
    _check_slots(scratch_slots, num_experts)
    if isinstance(popularity, (str, Path)):
        popularity = Popularity.load(popularity)
    if popularity is not None:
        popularity.check_shape(num_layers, num_experts)
    model = None
    try:
        if source is None:
            model, tokenizer = load_model(root, dev, torch_dtype, fmt), _load_tokenizer(root)
        else:
            model, tokenizer = source.load_model(), _for_batches(source.tokenizer())
        engine = _build(model, tokenizer, dev, expert_budget, gpu_memory, placement,
                        execution, popularity, profile, scratch_slots, seed, str(root),
                        workload, threads, fmt, kernels, dense_dtype, allow_activation_quant)
        if source is not None:
            engine.load_notes = tuple(source.notes)
        return engine
    except BaseException:
        del model
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        raise


def from_model(model, tokenizer=None, device: str | torch.device | None = None,
               expert_budget: int | None = None, placement: str = "popularity",
               execution: str = "auto", popularity: Popularity | None = None,
               profile: Any = None, scratch_slots: int = 2, seed: int = 0,
               name: str = "in-memory", workload: Workload | None = None,
               threads: int | None = None, expert_dtype: str | torch.dtype | None = None,
               group_size: int | None = None, kernels: KernelChoice | None = None,
               dense_dtype: str | None = None, allow_activation_quant: bool = False) -> Engine:
    """An Engine around a transformers MoE model already in memory (e.g. random weights of a
    real shape for benchmarks). Non-expert weights move to `device`; experts stay in CPU memory.
    With `expert_dtype` the model's experts are converted in place (layer by layer).
    """
    _check_options(placement, execution, scratch_slots, seed, popularity, workload, threads)
    _check_flag("allow_activation_quant", allow_activation_quant)
    if isinstance(popularity, (str, Path)):
        popularity = Popularity.load(popularity)
    dev = resolve_device(device)
    check_dense_dtype(dense_dtype, dev)
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"from_model needs a transformers model, got {type(model).__name__}")
    layers = find_moe_layers(model)
    fmt = cpu_layout(check_format(layers, expert_dtype, group_size))
    if any(getattr(layer.module, n).device.type != "cpu"
           for layer in layers for n in layer.layout.param_names):
        raise OptionError("from_model needs the experts in CPU memory; load the model on the CPU")
    model.eval()
    move_non_experts(model, dev)
    if fmt is not None:
        quantize_experts(model, fmt, dev)
    return _build(model, tokenizer, dev, expert_budget, None, placement, execution, popularity,
                  profile, scratch_slots, seed, name, workload, threads, fmt, kernels,
                  dense_dtype, allow_activation_quant)


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, got {value!r}")


def _build(model, tokenizer, dev: torch.device, expert_budget, gpu_memory, placement: str,
           execution: str, popularity, profile, scratch_slots: int, seed: int,
           name: str, workload: Workload | None = None, threads: int | None = None,
           fmt: ExpertFormat | None = None, kernels: KernelChoice | None = None,
           dense_dtype: str | None = None, activation_quant: bool = False) -> Engine:
    """Attach an Engine to a model whose non-experts are on `dev` and whose experts are in
    `fmt` (None: the float dtype they have); undo everything on error."""
    layers = find_moe_layers(model)
    _check_slots(scratch_slots, layers[0].num_experts)
    storage = storage_for(layers[0], fmt, dev, model)
    store = ExpertStore(layers, dev, scratch_slots, storage=storage,
                        kernels=kernels or DEFAULT_CHOICE, activation_quant=activation_quant)
    layers = [replace(layer, expert_bytes=store.expert_bytes) for layer in layers]
    store.layers = layers
    engine = None
    try:
        if workload is not None:  # before the budget is computed: what fits depends on it
            store.set_reserve(*workload.reserve_for(model))
        latency = latency_from(profile, store.expert_bytes, model, dev)
        budget = _budget(expert_budget, gpu_memory, store)
        dtype = str(model.get_output_embeddings().weight.dtype).removeprefix("torch.")
        config = EngineConfig(str(dev), dtype, budget, placement, execution, scratch_slots, seed,
                              threads, storage.fmt.label())
        engine = Engine(model, tokenizer, layers, store, config, latency, None, name)
        engine.workload = workload
        engine.kernel_note = kernel_note(store.layer_call_blocker)  # '' if all runs natively
        if dev.type == "cpu":  # a CPU-only engine: every weight the CPU reads, same kernels
            route_dense_linears(model, store, dense_dtype)
        if threads is not None:
            engine.set_threads(threads)  # validates
        if popularity is not None:
            popularity.check_shape(engine.num_layers, engine.num_experts)
            engine.popularity = popularity  # placed once, just below
        engine._place(config)
        return engine
    except BaseException:
        if engine is not None:
            engine.close()  # detaches from the model: it behaves like stock transformers again
        else:
            store.release()
        raise


def _check_options(placement: str, execution: str, scratch_slots: int, seed: int,
                   popularity: Any, workload: Any = None, threads: Any = None) -> None:
    make_placement(placement), make_execution(execution)  # unknown names fail before loading
    check_int("scratch_slots", scratch_slots, minimum=1,
              hint="GPU buffers for transferred experts")
    check_int("seed", seed)
    if popularity is not None and not isinstance(popularity, (Popularity, str, Path)):
        raise OptionError(f"popularity must be a Popularity or the path of a saved one, got "
                          f"{type(popularity).__name__}")
    check_workload(workload)
    check_threads(threads)


def _check_slots(scratch_slots: int, num_experts: int) -> None:
    """More scratch slots than a layer has experts could never be used (and only cost memory)."""
    check_int("scratch_slots", scratch_slots, minimum=1, maximum=num_experts,
              hint="GPU buffers for transferred experts, at most one per expert of a layer")


def resolve_path(path: str | Path) -> Path:
    """'tiny' -> the embedded default checkpoint; anything else -> an expanded Path."""
    root = check_path("checkpoint path", path)
    if str(path) == "tiny":
        from ..model.tiny import default_tiny_path

        return default_tiny_path()
    return root


def _load_tokenizer(root: Path):
    """The checkpoint's tokenizer, set up for batches: left padding (generation continues each
    row at its end) and, as usual for causal LMs without one, EOS as the pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(root)
    except (OSError, ValueError, TypeError):
        return None  # token ids still work; encode() says so if text is given
    return _for_batches(tokenizer)


def _for_batches(tokenizer):
    if tokenizer is None:
        return None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _budget(expert_budget: int | None, gpu_memory: str | int | None, store: ExpertStore) -> int:
    if gpu_memory is not None:
        expert_budget = int(parse_bytes(gpu_memory) // store.expert_bytes)
        expert_budget = min(expert_budget, len(store.layers) * store.num_experts)
    if expert_budget is None:
        return store.max_resident_experts()
    return expert_budget


def parse_bytes(value: str | int) -> int:
    """'20GiB' / '20 GB' / '512MiB' / 1234 -> bytes (never negative)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int("memory size", value, minimum=0)
    if not isinstance(value, str):
        raise OptionError(f"cannot read memory size {value!r}; write e.g. '20GiB' or '512MiB'")
    units = {"gib": GIB, "gb": 10**9, "mib": 1 << 20, "mb": 10**6, "kib": 1 << 10, "kb": 10**3,
             "b": 1}
    text = str(value).strip().lower().replace(" ", "")
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                number = float(text[: -len(unit)])
            except ValueError:
                break
            if number >= 0 and number != float("inf"):
                return int(number * factor)
            break
    raise OptionError(f"cannot read memory size {value!r}; write e.g. '20GiB' or '512MiB'")


def latency_from(profile: LatencyModel | LatencySource | None, expert_bytes: int, model,
                 device: torch.device) -> LatencyModel:
    """The LatencyModel `auto` decides with: the default, a LatencyModel as given, or one made by
    a profile (a `HardwareProfile`, read and measured by the layer above: ../api.py)."""
    hidden_bytes = model.config.hidden_size * next(model.parameters()).element_size()
    if profile is None:
        return default_latency_model(expert_bytes, hidden_bytes, device_type=device.type)
    if isinstance(profile, LatencyModel):
        return profile
    if not isinstance(profile, LatencySource):
        raise OptionError(f"profile must be a HardwareProfile, its JSON path, 'quick' or a "
                          f"LatencyModel, got {type(profile).__name__}")
    latency = profile.latency_model(expert_bytes, hidden_bytes)  # scaled if measured elsewhere
    if device.type == "cpu":  # the fast device is this CPU: a transfer is a copy plus CPU work
        latency = replace(latency, gpu=latency.cpu, activation_ms_per_token=0.0,
                          concurrent=False, notes=latency.notes + ("fast device is the CPU",))
    return latency
