"""Seeded tiny GGUF files written here with the `gguf` package (its writer and quantizers), the
way llama.cpp's converter lays them out: test data for every architecture and tensor type we
load, without a download.

`make_tiny_gguf(path, arch, expert_type)` takes the seeded tiny transformers model of `arch`
(model/tiny.py), writes its metadata (llama.cpp keys), a byte-level 'gpt2' tokenizer, the
non-expert tensors (F32 by default; llama's Q/K rows permuted as llama.cpp does) and the routed
experts stacked per layer (`blk.N.ffn_{gate,up,down}_exps.weight`, [E, N, K]) in `expert_type`.
Types the `gguf` package can quantize (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, BF16) quantize the
model's weights; the K-quants (which it can only read) get seeded random blocks with sane fp16
scales, which is all a loader test needs: the reference dequantizes the same bytes.
K-quant files use hidden and expert sizes of 256 (one super-block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import OptionError
from .gguf_file import ARCHITECTURES, dense_tensor_names, expert_tensor_name
from .tiny import SPECIAL_TOKENS, CHAT_TEMPLATE, _scale_routers, tiny_config

GGUF_ARCH = {v: k for k, v in ARCHITECTURES.items()}  # 'mixtral' -> 'llama'
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
K_QUANT_SIZE = 256  # hidden / expert width of K-quant files: one 256-element super-block
# byte offsets of the fp16 scale fields in one block (set to sane values in random blocks)
_FP16_FIELDS = {"Q2_K": (-4, -2), "Q3_K": (-2,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (-2,)}
# fp16 super-block scale of random blocks: (scale x quant) products reach ~20 (Q2_K) to ~1000
# (Q6_K), so weights come out near 0.02, the tiny models' init std
_K_SCALE = {"Q2_K": 1e-3, "Q3_K": 4e-4, "Q4_K": 1e-4, "Q5_K": 4e-5, "Q6_K": 2e-5}


def make_tiny_gguf(path: str | Path, arch: str = "mixtral", expert_type: str = "Q4_0",
                   seed: int = 0, dense_type: str = "F32", split_max_tensors: int = 0,
                   **config_overrides) -> Path:
    """Write a seeded tiny `arch` model as one GGUF file at `path` (split_max_tensors > 0: a
    split set `stem-0000i-of-0000n.gguf` of that many tensors each; config_overrides: sizes of
    the tiny config); returns the (first) path."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from transformers import AutoModelForCausalLM

    if arch not in GGUF_ARCH:
        raise OptionError(f"no tiny GGUF for {arch!r}; known: {', '.join(GGUF_ARCH)}")
    if expert_type not in GGMLQuantizationType.__members__:
        raise OptionError(f"unknown GGUF type {expert_type!r}")
    sizes = {}
    if expert_type in K_QUANTS or dense_type in K_QUANTS:
        wide = "intermediate_size" if arch == "mixtral" else "moe_intermediate_size"
        sizes = {"hidden_size": K_QUANT_SIZE, wide: K_QUANT_SIZE}
    config = tiny_config(arch, **{**sizes, **config_overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _scale_routers(model, seed)
    gguf_arch = GGUF_ARCH[arch]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(out), gguf_arch, split_max_tensors=split_max_tensors)
    _write_metadata(writer, gguf_arch, config)
    _write_tokenizer(writer)
    state = model.state_dict()
    rng = np.random.default_rng(seed)
    for gguf_name, hf_name in dense_tensor_names(model, gguf_arch).items():
        if hf_name not in state or (gguf_name == "output.weight" and config.tie_word_embeddings):
            continue
        w = state[hf_name].float().numpy()
        if gguf_arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            heads = config.num_attention_heads if ".attn_q." in gguf_name else \
                config.num_key_value_heads
            w = _permute(w, heads)
        if gguf_name.endswith("ffn_gate_inp_shexp.weight"):
            w = w.reshape(-1)  # llama.cpp stores the shared-expert gate 1-D
        _add(writer, gguf_name, w, dense_type if w.ndim == 2 else "F32", rng)
    for layer, name in _expert_modules(model):
        module = model.get_submodule(name)
        for which, w in _expert_matrices(module).items():
            _add(writer, expert_tensor_name(layer, which), np.ascontiguousarray(w), expert_type,
                 rng)
        if module.has_bias:  # gpt-oss: gate / up biases de-interleaved as llama.cpp writes them
            bias = module.gate_up_proj_bias.detach().float().numpy()  # [E, 2I]
            for which, b in (("gate", bias[:, 0::2]), ("up", bias[:, 1::2]),
                             ("down", module.down_proj_bias.detach().float().numpy())):
                _add(writer, expert_tensor_name(layer, which, "bias"), np.ascontiguousarray(b),
                     "F32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(out)[0] if split_max_tensors else out


def _expert_matrices(module) -> dict[str, np.ndarray]:
    """gate / up / down of every expert, [E, N, K] (llama.cpp's order)."""
    gate_up = module.gate_up_proj.detach().float().numpy()
    down = module.down_proj.detach().float().numpy()
    if module.is_transposed:  # gpt-oss: [E, H, 2I] with gate / up interleaved, down [E, I, H]
        gate_up = gate_up.transpose(0, 2, 1)  # [E, 2I, H]
        return {"gate": gate_up[:, 0::2], "up": gate_up[:, 1::2], "down": down.transpose(0, 2, 1)}
    inter = gate_up.shape[1] // 2
    return {"gate": gate_up[:, :inter], "up": gate_up[:, inter:], "down": down}


def _expert_modules(model) -> list[tuple[int, str]]:
    from .adapters import find_moe_layers

    return [(layer.decoder_index, layer.name) for layer in find_moe_layers(model)]


def _write_metadata(writer, arch: str, config) -> None:
    key = lambda name: f"{arch}.{name}"  # noqa: E731
    moe_width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    writer.add_name(f"tiny-{config.model_type}")
    writer.add_uint32(key("context_length"), config.max_position_embeddings)
    writer.add_uint32(key("embedding_length"), config.hidden_size)
    writer.add_uint32(key("block_count"), config.num_hidden_layers)
    writer.add_uint32(key("feed_forward_length"), config.intermediate_size)
    writer.add_uint32(key("attention.head_count"), config.num_attention_heads)
    writer.add_uint32(key("attention.head_count_kv"), config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_uint32(key("rope.dimension_count"), head_dim)
    writer.add_uint32(key("attention.key_length"), head_dim)
    writer.add_uint32(key("attention.value_length"), head_dim)
    theta = config.rope_parameters["rope_theta"]
    writer.add_float32(key("rope.freq_base"), float(theta))
    writer.add_float32(key("attention.layer_norm_rms_epsilon"), float(config.rms_norm_eps))
    writer.add_uint32(key("expert_count"), getattr(config, "num_local_experts", None)
                      or config.num_experts)
    writer.add_uint32(key("expert_used_count"), config.num_experts_per_tok)
    writer.add_uint32(key("vocab_size"), config.vocab_size)
    if arch != "llama":
        writer.add_uint32(key("expert_feed_forward_length"), moe_width)
    if arch == "gpt-oss":
        rope = config.rope_parameters
        writer.add_uint32(key("sliding_window"), config.sliding_window)
        writer.add_string(key("rope.scaling.type"), rope["rope_type"])
        writer.add_float32(key("rope.scaling.factor"), rope["factor"])
        writer.add_uint32(key("rope.scaling.original_context_length"),
                          rope["original_max_position_embeddings"])
    shared = getattr(config, "shared_expert_intermediate_size", None)
    if shared:
        writer.add_uint32(key("expert_shared_feed_forward_length"), shared)


def _write_tokenizer(writer) -> None:
    """A byte-level 'gpt2' vocabulary (the 256 printable stand-ins of bytes, then the special
    tokens), no merges: the same tokenizer as the safetensors tiny checkpoints."""
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = sorted(ByteLevel.alphabet()) + list(SPECIAL_TOKENS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    normal, control = 1, 3  # llama.cpp token types
    writer.add_token_types([normal] * (len(tokens) - len(SPECIAL_TOKENS))
                           + [control] * len(SPECIAL_TOKENS))
    writer.add_token_merges([])
    writer.add_token_scores([0.0] * len(tokens))  # no merges: transformers derives none from equal scores
    first_special = len(tokens) - len(SPECIAL_TOKENS)
    writer.add_bos_token_id(first_special)
    writer.add_eos_token_id(first_special + 1)
    writer.add_pad_token_id(first_special + 2)
    writer.add_unk_token_id(first_special + 3)
    writer.add_chat_template(CHAT_TEMPLATE)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (convert_hf_to_gguf's permute), undone by transformers."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _add(writer, name: str, w: np.ndarray, type_name: str, rng=None) -> None:
    from gguf import GGMLQuantizationType, GGML_QUANT_SIZES, quantize

    qtype = GGMLQuantizationType[type_name]
    if type_name == "F32":
        writer.add_tensor(name, w.astype(np.float32))
    elif type_name == "F16":
        writer.add_tensor(name, w.astype(np.float16))
    elif type_name in _FP16_FIELDS:
        block, size = GGML_QUANT_SIZES[qtype]
        rows = w.reshape(-1, w.shape[-1])
        raw = rng.integers(0, 256, (rows.shape[0], w.shape[-1] // block, size), dtype=np.uint8)
        scale = np.full(raw.shape[:2], _K_SCALE[type_name], dtype=np.float16).view(np.uint8) \
            .reshape(*raw.shape[:2], 2)
        for offset in _FP16_FIELDS[type_name]:
            raw[..., offset:offset + 2 if offset + 2 else None] = scale
        writer.add_tensor(name, raw.reshape(*w.shape[:-1], -1), raw_dtype=qtype)
    else:
        writer.add_tensor(name, quantize(w.astype(np.float32), qtype), raw_dtype=qtype)
