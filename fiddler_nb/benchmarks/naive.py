"""The naive-offload baseline: stock transformers + Hugging Face accelerate's real offloading.

This is how a user runs a model that does not fit without this toolkit: accelerate keeps some
modules on the GPU and *offloads* the rest -- their weights stay in CPU memory and accelerate's
hooks copy them to the GPU at every forward (DESIGN.md §3).

Device map (module level only: parameter-level entries on fused experts give wrong answers):
every non-expert module on the GPU, and the experts module of whole layers on the GPU while
`expert_budget // num_experts` layers fit; the experts of all other layers are "cpu", i.e.
offloaded. That is the GPU memory of the expert budget plus the non-expert weights -- the same
memory the engine gets -- at accelerate's granularity (one fused experts module per layer), and
the same model the planner projects ("naive-offload").

Without CUDA there is nothing to offload to: the model runs under `accelerate.cpu_offload` with
execution device CPU, i.e. through the same hooks but with no link to cross. That measures the
hooks' overhead only and is labelled so; it is never a GPU number.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.model.adapters import find_moe_layers, is_experts_module
from ..runtime.engine.dequantized import dequantized_gguf_model
from ..runtime.model.gguf_file import is_gguf_path
from ..runtime.generation.timing import FirstTokenClock, sync, with_clock

CPU_NOTE = ("no CUDA: accelerate cpu_offload hooks with execution device cpu; no weights cross a "
            "link, so this measures hook overhead only (not an offloading number); the expert "
            "budget has no effect")


@dataclass(frozen=True)
class NaiveSetup:
    """How the baseline was dispatched."""

    mode: str  # "dispatch_model" (CUDA) or "cpu_offload" (CPU only)
    gpu_layers: int  # MoE layers whose experts stay on the GPU
    offloaded_layers: int  # MoE layers whose experts are copied over at every forward
    expert_bytes_per_forward: int  # weight bytes an offloaded forward moves (all its experts)
    note: str


def naive_device_map(model: torch.nn.Module, gpu_layers: int, gpu: str) -> dict[str, str]:
    """Module-level map: experts of MoE layers >= `gpu_layers` on "cpu", all else on `gpu`."""
    offloaded = {layer.name for layer in find_moe_layers(model)[gpu_layers:]}
    device_map: dict[str, str] = {}

    def visit(prefix: str, module: torch.nn.Module) -> None:
        if prefix in offloaded:
            device_map[prefix] = "cpu"
            return
        if not any(name.startswith(prefix + "." if prefix else "") for name in offloaded):
            device_map[prefix] = gpu
            return
        for name, _ in module.named_parameters(recurse=False):  # non-expert direct params only
            device_map[f"{prefix}.{name}" if prefix else name] = gpu
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    bad = [k for k in device_map if "." in k and _is_fused_param(model, k)]
    if bad:
        raise RuntimeError(f"parameter-level device_map entries on fused experts: {bad}")
    return device_map


def _is_fused_param(model: torch.nn.Module, key: str) -> bool:
    owner, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    return is_experts_module(module) and leaf in dict(module.named_parameters(recurse=False))


def load_naive(path: str | Path, dtype: torch.dtype | None, expert_budget: int,
               device: torch.device) -> tuple[torch.nn.Module, NaiveSetup, list[int]]:
    """(dispatched model, setup, forward counter of offloaded experts modules [1])."""
    from accelerate import cpu_offload, dispatch_model
    from transformers import AutoModelForCausalLM

    if is_gguf_path(Path(path)):  # the naive way to run a GGUF file: dequantize it all
        model = dequantized_gguf_model(path, dtype)[0]
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", device_map=None)
    model.eval()
    layers = find_moe_layers(model)
    per_layer_bytes = layers[0].num_experts * layers[0].expert_bytes
    calls = [0]
    if device.type != "cuda":
        cpu_offload(model, execution_device=torch.device("cpu"))
        return model, NaiveSetup("cpu_offload", 0, 0, 0, CPU_NOTE), calls
    gpu_layers = min(expert_budget // layers[0].num_experts, len(layers))
    device_map = naive_device_map(model, gpu_layers, str(device))
    dispatch_model(model, device_map=device_map, main_device=str(device))
    for layer in layers[gpu_layers:]:
        layer.module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    note = (f"accelerate dispatch_model: experts of {len(layers) - gpu_layers} of {len(layers)} "
            f"layers offloaded (copied at every forward), {gpu_layers} on {device}")
    return model, NaiveSetup("dispatch_model", gpu_layers, len(layers) - gpu_layers,
                             per_layer_bytes, note), calls


@dataclass(frozen=True)
class TimedGeneration:
    token_ids: torch.Tensor  # [B, new] on the CPU
    prefill_s: float
    decode_s: float


def timed_generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int,
                   device: torch.device, **generate_kwargs) -> TimedGeneration:
    """Greedy generate with the clock read after a device synchronise, prefill split off."""
    ids = input_ids.to(device)
    clock = FirstTokenClock(device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, **with_clock(generate_kwargs, clock))
    sync(device)
    end = time.perf_counter()
    first = clock.first_token_at or end
    return TimedGeneration(out[:, ids.shape[1]:].cpu(), first - start, end - first)
