"""Seeded tiny random MoE checkpoints with a tokenizer built locally (no hub, no download).

`make_tiny_checkpoint(path, arch="mixtral")` writes a real Hugging Face checkpoint directory:
config.json, safetensors weights with one tensor per expert (as released checkpoints have) and
a byte-level tokenizer, so tests, demos and a user's first run go through the real loading path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import OptionError

# Each tiny config keeps the architecture's distinctive features (shared experts, dense first
# layers, MLA attention, biases, interleaved gates) at sizes that run in milliseconds.
_COMMON: dict[str, Any] = dict(
    vocab_size=272,  # 256 bytes + 4 special tokens, padded to a multiple of 16
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, tie_word_embeddings=False,
    bos_token_id=256, eos_token_id=257, pad_token_id=258,
)
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "mixtral": dict(intermediate_size=128, num_local_experts=8, num_experts_per_tok=2),
    "qwen2_moe": dict(intermediate_size=128, moe_intermediate_size=64, num_experts=8,
                      num_experts_per_tok=2, shared_expert_intermediate_size=96,
                      norm_topk_prob=False),
    "qwen3_moe": dict(intermediate_size=128, moe_intermediate_size=64, num_experts=8,
                      num_experts_per_tok=2, head_dim=16, norm_topk_prob=True),
    "olmoe": dict(intermediate_size=128, num_experts=8, num_experts_per_tok=2),
    "deepseek_v3": dict(intermediate_size=128, moe_intermediate_size=64, n_routed_experts=8,
                        num_experts_per_tok=2, n_shared_experts=1, n_group=2, topk_group=1,
                        first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=32,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                        num_key_value_heads=4),
    "phimoe": dict(intermediate_size=128, num_local_experts=8, num_experts_per_tok=2,
                   router_jitter_noise=0.0, input_jitter_noise=0.0),
    "gpt_oss": dict(intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
                    head_dim=16, sliding_window=32,
                    max_position_embeddings=131072,  # = YaRN factor 32 x original 4096
                    layer_types=["sliding_attention", "full_attention"] * 2),
}
DEFAULT_ARCH = "mixtral"
ROUTER_STD = 0.5  # decisive routing: near-equal router scores would flip top-k on noise
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>")  # ids 256..259, after the 256 bytes
# A small chat template (role line, content, end of turn) so chat runs on tiny checkpoints in CI
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def build_tokenizer():
    """A byte-level tokenizer (every UTF-8 byte is a token, so any text round-trips) with a
    small chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins for raw bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = len(alphabet) + i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(arch: str = DEFAULT_ARCH, **overrides: Any):
    """The transformers config of a tiny `arch` model (overrides win)."""
    from transformers import AutoConfig

    if arch not in TINY_CONFIGS:
        raise OptionError(f"unknown tiny architecture {arch!r}; known: {', '.join(TINY_CONFIGS)}")
    kwargs = {**_COMMON, **TINY_CONFIGS[arch], **overrides}
    return AutoConfig.for_model(arch, **kwargs)


def make_tiny_checkpoint(path: str | Path, arch: str = DEFAULT_ARCH, seed: int = 0,
                         dtype: str | torch.dtype = "float32", **config_overrides: Any) -> Path:
    """Write a seeded random `arch` checkpoint (safetensors, per-expert keys) and tokenizer."""
    from transformers import AutoModelForCausalLM

    from .config import resolve_dtype

    config = tiny_config(arch, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype))
    _scale_routers(model, seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


def _scale_routers(model: torch.nn.Module, seed: int) -> None:
    """Spread router logits so routing is decisive: with init-scale routers every expert gets
    near-equal scores and tiny numeric noise would flip top-k choices between kernels."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_router = (".gate.weight" in name or ".router.weight" in name) and param.dim() == 2
            if is_router and param.shape[0] < param.shape[1] * 4:
                param.copy_(torch.randn(param.shape, generator=gen) * ROUTER_STD)


TINY_VERSION = 2  # bump when what make_tiny_checkpoint writes changes (2: a chat template)


def default_tiny_path(arch: str = DEFAULT_ARCH, seed: int = 0) -> Path:
    """The embedded default model: written once under the user cache, then reused.

    FIDDLER_NB_CACHE overrides the location (tests point it at a temporary folder).
    """
    import os
    import shutil

    base = Path(os.environ.get("FIDDLER_NB_CACHE", Path.home() / ".cache" / "fiddler_nb"))
    path = base / f"tiny-{arch}-seed{seed}-v{TINY_VERSION}"  # an older cached copy is not reused
    if not (path / "config.json").is_file() or not list(path.glob("*.safetensors")):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            make_tiny_checkpoint(tmp, arch=arch, seed=seed)
            if path.exists():  # a half-written folder from an interrupted run: replace it
                shutil.rmtree(path, ignore_errors=True)
            tmp.replace(path)
        except OSError:
            if not (path / "config.json").is_file():  # not another process winning the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path
