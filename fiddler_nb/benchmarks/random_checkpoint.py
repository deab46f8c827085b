"""Real-shaped MoE models with random weights and fewer layers, for benchmarks without downloads.

`build_random_model("mixtral-8x7b", layers=2)` is a real transformers model whose every layer
has Mixtral-8x7B's shapes (H=4096, I=14336, 8 experts, top-2, 32/8 attention heads) but only
`layers` decoder layers and a small vocabulary (the full 32000-token embedding and lm_head are
262 MB each in bf16 and say nothing about expert offloading). Weights are filled by tiling a
seeded random block -- a real random init of one Mixtral layer takes ~25 s on 2 cores, tiling
~1 s -- so values are random-looking and finite, which is all a bandwidth benchmark needs.
`make_random_checkpoint` saves it as a Hugging Face checkpoint (per-expert keys, byte tokenizer).

`scaled_expert_budget(shape, gpu_memory, layers)` gives the experts a `gpu_memory` card holds for
the full model, scaled to the layers kept; `derive_full_model_tps` turns measured per-token time
on `layers` layers into a full-model figure (labelled derived, never measured).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..runtime.errors import OptionError
from ..runtime.model.config import resolve_dtype
from ..measure.shapes import ModelShape, get_shape
from ..runtime.model.tiny import ROUTER_STD

TILE_ELEMENTS = 1_000_003  # a prime: tiled rows never line up with the block period
TILE_REPEATS = 64  # copy ~128 MB per call in bf16: few Python iterations, little extra memory
INIT_STD = 0.02  # transformers' default initializer_range
VOCAB_SIZE = 512  # >= the 260-token byte tokenizer, a multiple of 64; keeps lm_head tiny
CARD_24GB = 24 * 10**9  # "a 24 GB card" as GPU vendors count bytes (RTX 4090 / L4 / Quadro RTX 6000)

# Attention facts ModelShape does not carry, from each model's config.json.
ARCH_FACTS: dict[str, dict[str, Any]] = {
    "mixtral-8x7b": dict(model_type="mixtral", num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=1e6, rms_norm_eps=1e-5),
    "mixtral-8x22b": dict(model_type="mixtral", num_attention_heads=48, num_key_value_heads=8,
                          rope_theta=1e6, rms_norm_eps=1e-5),
    "tiny": dict(model_type="mixtral", num_attention_heads=4, num_key_value_heads=2),
}


def random_config(shape: ModelShape | str = "mixtral-8x7b", layers: int = 2,
                  vocab_size: int = VOCAB_SIZE, **overrides: Any):
    """A transformers config with `shape`'s per-layer sizes and `layers` decoder layers."""
    from transformers import AutoConfig

    shape = get_shape(shape) if isinstance(shape, str) else shape
    if shape.name not in ARCH_FACTS:
        raise OptionError(f"no attention facts for {shape.name!r}; known: {', '.join(ARCH_FACTS)}")
    facts = dict(ARCH_FACTS[shape.name])
    model_type = facts.pop("model_type")
    kwargs = dict(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                  num_local_experts=shape.num_experts, num_experts_per_tok=shape.top_k,
                  num_hidden_layers=layers, vocab_size=vocab_size, tie_word_embeddings=False,
                  max_position_embeddings=4096, bos_token_id=256, eos_token_id=257,
                  pad_token_id=258, **facts)  # special ids as tiny.py's byte tokenizer
    return AutoConfig.for_model(model_type, **{**kwargs, **overrides})


def build_random_model(shape: ModelShape | str = "mixtral-8x7b", layers: int = 2,
                       dtype: str | torch.dtype = "bfloat16", seed: int = 0,
                       vocab_size: int = VOCAB_SIZE, **overrides: Any) -> torch.nn.Module:
    """The model in CPU memory, eval mode, weights filled as the module docstring says."""
    from transformers import AutoModelForCausalLM

    config = random_config(shape, layers, vocab_size, **overrides)
    torch_dtype = resolve_dtype(dtype)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(TILE_ELEMENTS, generator=gen) * INIT_STD  # [TILE]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:  # norm scales
                param.fill_(1.0)
            elif name.endswith("mlp.gate.weight"):  # the router
                param.copy_(torch.randn(param.shape, generator=gen) * ROUTER_STD)
            else:
                _tile_fill(param, block, offset=int(torch.randint(TILE_ELEMENTS, (1,), generator=gen)))
    _rebuild_rotary(model)
    return model.eval()


def _tile_fill(param: torch.Tensor, block: torch.Tensor, offset: int) -> None:
    flat = param.view(-1)
    reps = max(1, min(TILE_REPEATS, flat.numel() // block.numel()))
    src = torch.roll(block, offset).to(param.dtype).repeat(reps)  # [TILE * reps]
    for start in range(0, flat.numel(), src.numel()):
        chunk = flat[start:start + src.numel()]
        chunk.copy_(src[:chunk.numel()])


def _rebuild_rotary(model: torch.nn.Module) -> None:
    """to_empty() leaves non-persistent buffers (rotary inv_freq) uninitialised: rebuild them."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "inv_freq") and hasattr(module, "original_inv_freq"):
            fresh = type(module)(config=model.config)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], fresh)


def make_random_checkpoint(path: str | Path, shape: ModelShape | str = "mixtral-8x7b",
                           layers: int = 2, dtype: str | torch.dtype = "bfloat16", seed: int = 0,
                           vocab_size: int = VOCAB_SIZE) -> Path:
    """Save `build_random_model(...)` with a byte tokenizer; reuses `path` if already complete."""
    from ..runtime.model.tiny import build_tokenizer

    out = Path(path)
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return out
    model = build_random_model(shape, layers, dtype, seed, vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    del model
    return out


def scaled_expert_budget(shape: ModelShape | str = "mixtral-8x7b",
                         gpu_memory_bytes: int = CARD_24GB, layers: int | None = None) -> int:
    """Experts a `gpu_memory_bytes` card holds for the full model, scaled to `layers` layers.

    Full model: (memory - non-expert weights - 1 GiB reserve - 2 scratch slots) // expert bytes,
    as the planner counts (Mixtral-8x7B, 24 GB = 24e9 bytes: 53 of 256). Scaled: that share of
    each layer.
    """
    from ..measure.planner import resolve_budget  # noqa: PLC0415 (planner imports the profiler)

    shape = get_shape(shape) if isinstance(shape, str) else shape
    full = resolve_budget(None, shape, gpu_memory_bytes)
    if layers is None or layers == shape.num_layers:
        return full
    return int(min(round(full * layers / shape.num_layers), layers * shape.num_experts))


def derive_full_model_tps(seconds_per_token: float, layers_run: int,
                          shape: ModelShape | str = "mixtral-8x7b") -> float:
    """Derived (not measured) full-model tokens/s: per-token time scaled by layers.

    Assumes every layer costs what the measured ones did on average; embedding/lm_head of the
    full vocabulary and attention over a longer KV cache are not included.
    """
    shape = get_shape(shape) if isinstance(shape, str) else shape
    return 1.0 / (seconds_per_token * shape.num_layers / layers_run)
