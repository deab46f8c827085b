"""A transformers model filled tensor by tensor, for checkpoints transformers would dequantize
whole (GGUF files, MXFP4 gpt-oss): the model is built on the meta device (no memory), each
parameter is set from the file as it is read, routed experts get their format's tensors
(formats/storage.py names), and what the constructor computes itself (rotary frequencies) is
recomputed on the real device at the end. At no point does a float copy of the model exist.

Shape legend: E = experts, N = output channels, K = input channels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UnsupportedModelError, one_line
from ..model.adapters import MoELayer, find_moe_layers


def build_skeleton(config_dict: dict[str, Any], source: str) -> tuple[nn.Module, list[MoELayer]]:
    """The model of `config_dict` on the meta device and its MoE layers (shapes only)."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **config_dict)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError,
            ZeroDivisionError, OverflowError, AssertionError, StrictDataclassError) as err:
        raise UnsupportedModelError(f"{source} describes a {model_type!r} model transformers "
                                    f"cannot build ({one_line(err)})") from None
    model.eval()
    return model, find_moe_layers(model)


def set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace parameter (or buffer) `name` of `model` by `tensor` (no gradient)."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        raise KeyError(name)


def set_expert_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give an experts module its stored tensors (the format's names), dropping the meta ones."""
    for name in [n for n, p in module._parameters.items() if p is not None and p.is_meta]:
        del module._parameters[name]
    for name, tensor in tensors.items():
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)


def finish(model: nn.Module, device: torch.device, source: str) -> None:
    """Tie weights the config ties, recompute buffers the constructor made (rotary frequencies)
    on `device`, and check that nothing is left on the meta device."""
    if getattr(model.config, "tie_word_embeddings", False):
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    for module in model.modules():
        meta = [n for n, b in module._buffers.items() if b is not None and b.is_meta]
        if not meta:
            continue
        for n in meta:
            module._buffers[n] = torch.empty_like(module._buffers[n], device=device)
        model._init_weights(module)  # transformers' own init: recomputes rotary inv_freq
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source} has no tensor for {', '.join(left[:4])}"
                              f"{' ...' if len(left) > 4 else ''}; is the file complete?")
    release_freed_memory()


def release_freed_memory() -> None:
    """Hand the per-expert conversion buffers back to the OS. glibc keeps freed blocks of a few
    MB in its heap once a freed mapping raised its mmap threshold; measured on a 135 MB Q4_0
    file, that kept anonymous memory 1.9x the model's tensors after loading, 1.09x after
    malloc_trim. A no-op where there is no glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)
