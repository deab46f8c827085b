"""`write_dequantized`: a checkpoint whose routed experts are exactly dequant(quant(w)).

With the same quantization math and scale rounding the engine uses (runtime/formats/quant.py), stock
transformers on this checkpoint is the reference an int8 / int4 engine is compared with: the two
multiply by the same weights and differ only in the kernels' accumulation order.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..model.adapters import find_moe_layers
from ..formats.quant import ExpertFormat, dtype_label, roundtrip
from ..formats.quantize_load import activation_dtype, check_format

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt")


def dequantize_experts_in_place(model, fmt: ExpertFormat) -> None:
    """Replace each routed expert matrix w by dequant(quant(w)) in the model's own dtype."""
    act = activation_dtype(model)
    for layer in find_moe_layers(model):
        for name in (layer.layout.first_name, "down_proj"):
            param = getattr(layer.module, name)  # [E, N, K] or [E, K, N]
            with torch.no_grad():
                for e in range(param.shape[0]):
                    w = param.data[e].t() if layer.layout.is_transposed else param.data[e]
                    deq = roundtrip(w, fmt, act).to(param.dtype)  # [N, K]
                    param.data[e].copy_(deq.t() if layer.layout.is_transposed else deq)


def write_dequantized(path: str | Path, out: str | Path, expert_dtype: str,
                      group_size: int | None = None) -> Path:
    """Write `path`'s checkpoint to `out` with experts replaced by dequant(quant(w)) for
    `expert_dtype` ('int8' / 'int4' / a float format) and `group_size`. Returns `out`."""
    from transformers import AutoModelForCausalLM

    from .factory import resolve_path
    from .loading import check_checkpoint, check_moe_config

    root = resolve_path(path)
    check_checkpoint(root)
    fmt = check_format(check_moe_config(root), expert_dtype, group_size)
    if fmt is None:
        raise ValueError("write_dequantized needs an expert_dtype such as 'int8' or 'int4'")
    model = AutoModelForCausalLM.from_pretrained(root, dtype="auto")
    dequantize_experts_in_place(model, fmt)
    target = Path(out).expanduser()
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (root / name).is_file():
            shutil.copyfile(root / name, target / name)
    return target


def dequantized_gguf_model(path: str | Path, dtype: torch.dtype | None = None):
    """A plain transformers model (on the CPU) of a GGUF file with every tensor the `gguf`
    package's dequantization of the file, cast to `dtype` (default float32); and its source."""
    from .gguf_load import GGUFSource

    dtype = dtype or torch.float32
    source = GGUFSource(Path(path).expanduser(), torch.device("cpu"), dtype,
                        expert_dtype=dtype_label(dtype), dense_blocks=False)
    return source.load_model(), source


def write_gguf_reference(path: str | Path, out: str | Path) -> Path:
    """A safetensors checkpoint (and tokenizer) of a GGUF model with every tensor the `gguf`
    package's dequantization of the file, in float32: what stock transformers runs as the
    reference for an engine on the GGUF file. Returns `out`."""
    model, source = dequantized_gguf_model(path)
    target = Path(out).expanduser()
    model.save_pretrained(target)
    tokenizer = source.tokenizer()
    if tokenizer is not None:
        tokenizer.save_pretrained(target)
    return target
