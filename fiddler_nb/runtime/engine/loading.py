"""Checkpoint checks and loading: non-expert weights to the fast device, experts stay on CPU.

Everything a user can get wrong is checked before any weight is read (path, config, model type,
MoE layers, every safetensors shard), so a bad input costs milliseconds and loads nothing. The
model is then built on the CPU by transformers' own loader and only the non-expert parameters
are moved; experts are never handed to accelerate's offloading (DESIGN.md §3 trap).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..model.adapters import MoELayer, find_moe_layers, is_experts_module
from ..errors import CheckpointError, UnsupportedModelError, one_line
from ..formats.quant import ExpertFormat

CONFIG_FILE = "config.json"


def check_checkpoint(path: str | Path) -> Path:
    """Validate a checkpoint directory before loading; returns it as a Path."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"checkpoint path {str(root)!r} does not exist; pass a local "
                              "directory with config.json and *.safetensors (or 'tiny')")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint path {str(root)!r} is a file; pass its directory")
    if not (root / CONFIG_FILE).is_file():
        raise CheckpointError(f"{str(root)!r} has no {CONFIG_FILE}; is it a Hugging Face "
                              "checkpoint directory?")
    try:
        json.loads((root / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{root / CONFIG_FILE} is not valid JSON ({one_line(err)})") from None
    for shard in _shards(root):
        _check_shard(shard)
    return root


def _shards(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index} is not a valid safetensors index ({err})") from None
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise CheckpointError(f"shard(s) {', '.join(missing)} listed in {index.name} are "
                                  f"missing from {root}; re-download or re-save the checkpoint")
        return [root / n for n in names]
    shards = sorted(root.glob("*.safetensors"))
    if not shards and not list(root.glob("*.bin")):
        raise CheckpointError(f"{root} has no weights (*.safetensors or *.bin)")
    return shards


def _check_shard(shard: Path) -> None:
    """safe_open reads only the header and checks it covers the whole file (truncation)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(shard), "pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"safetensors file {shard} is truncated or corrupt ({err}); "
                              "re-download or re-save it") from None


def check_moe_config(root: Path) -> list[MoELayer]:
    """Build the model on the meta device (no memory), make sure it has MoE layers and return
    them (meta tensors: shapes and layouts for budget and format checks before loading)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(root)
    except (ValueError, KeyError, OSError, TypeError, AttributeError) as err:
        raise CheckpointError(f"cannot read the config in {root}: {one_line(err)}") from None
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as err:
        raise UnsupportedModelError(f"model type {config.model_type!r} is not a causal LM "
                                    f"transformers can build: {one_line(err)}") from None
    except (TypeError, AttributeError, KeyError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"the config in {root} cannot build a {config.model_type!r} model "
                              f"({one_line(err)}); check config.json") from None
    return find_moe_layers(skeleton)


def load_model(root: Path, device: torch.device, dtype: torch.dtype | None,
               fmt: ExpertFormat | None = None) -> nn.Module:
    """The transformers model with non-expert weights on `device`, experts on the CPU. With
    `fmt`, experts are converted while the checkpoint is read (runtime/formats/quantizer.py), so the
    float copy of at most one fused matrix exists at a time."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {}
    if fmt is not None:
        from ..formats.quantizer import quantization_config

        act = dtype or _checkpoint_dtype(AutoConfig.from_pretrained(root))
        kwargs["quantization_config"] = quantization_config(fmt, act, device.type == "cuda")
    try:
        model = AutoModelForCausalLM.from_pretrained(root, dtype=dtype or "auto", device_map=None,
                                                     **kwargs)
    except OSError as err:
        raise CheckpointError(f"loading {root} failed: {err}") from None
    except RuntimeError:  # transformers' report of a failed conversion: ours, if it was ours
        if fmt is not None:
            from ..formats.quantizer import raise_recorded

            raise_recorded()  # e.g. non-finite weights, named (layer, expert, matrix)
        raise
    if fmt is not None:
        from ..formats.quantizer import detach_quantizer

        detach_quantizer(model)
    model.eval()
    move_non_experts(model, device)
    return model


def _checkpoint_dtype(config) -> torch.dtype:
    """The dtype `from_pretrained(dtype='auto')` gives the model (float32 if none is recorded)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    from ..model.config import resolve_dtype

    return resolve_dtype(value) if value else torch.float32


def move_non_experts(model: nn.Module, device: torch.device) -> None:
    """Move every parameter and buffer not owned by a routed-experts module (or its children,
    e.g. a post-expert norm) to `device`."""
    inside = {id(m) for e in model.modules() if is_experts_module(e) for m in e.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.device != device:
                param.data = param.data.to(device)
        for name, buf in module.named_buffers(recurse=False):
            if buf.device != device:
                module._buffers[name] = buf.to(device)


def experts_on_cpu(model: nn.Module) -> bool:
    """True if every routed expert weight is in CPU memory (nothing moved by accident)."""
    return all(getattr(layer.module, n).device.type == "cpu"
               for layer in find_moe_layers(model) for n in layer.layout.param_names)
