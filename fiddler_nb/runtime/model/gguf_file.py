"""A GGUF checkpoint as files on disk: finding them, reading their headers and tensor tables
(the `gguf` package's reader memory-maps each file; nothing is read until a tensor's bytes are
touched), checking every tensor before any weight is placed, and the transformers config the
metadata describes.

Accepted paths: a .gguf file, a split set's first file (`name-00001-of-00003.gguf`: every part
must be next to it), or a folder holding one model (one file or one split set). Every problem is
a `CheckpointError` / `UnsupportedModelError` line naming the file, the tensor, the type found
and what is supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnsupportedModelError, one_line

SUFFIX = ".gguf"
BLOCK = re.compile(r"^blk\.(?P<layer>\d+)\.")
SPLIT = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# llama.cpp architecture -> transformers model_type, for the MoE models we load. Mixtral is
# stored as 'llama' with expert tensors; transformers' GGUF config mapping has no expert keys
# for 'llama', so `transformers_config` adds them.
ARCHITECTURES = {"llama": "mixtral", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe",
                 "gpt-oss": "gpt_oss"}
# Errors the `gguf` reader raises on a corrupt or truncated file (it parses with numpy views)
READ_ERRORS = (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, OSError,
               TypeError, AssertionError, MemoryError)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file(s): its type name, shape (numpy order, outermost first) and bytes."""

    name: str
    gguf_type: str  # 'Q4_0', 'F32', ...
    shape: tuple[int, ...]  # e.g. (E, N, K) for ffn_gate_exps
    file: Path
    data: Any  # numpy memmap view: uint8 [..., bytes of a row] for block types


@dataclass
class GGUFCheckpoint:
    """The files of one GGUF model, their metadata and tensor table (read lazily)."""

    files: tuple[Path, ...]
    metadata: dict[str, Any]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def name(self) -> str:
        return str(self.files[0])


def is_gguf_path(path: Path) -> bool:
    """A .gguf file, or a folder with a .gguf file and no config.json (a Hugging Face folder
    with a config loads as safetensors, as before)."""
    if path.is_file():
        return path.suffix == SUFFIX
    return path.is_dir() and not (path / "config.json").is_file() and any(path.glob("*" + SUFFIX))


def find_files(path: Path) -> tuple[Path, ...]:
    """The file(s) of the model at `path` (see the module docstring)."""
    if path.is_dir():
        found = sorted(path.glob("*" + SUFFIX))
        firsts = [f for f in found if not SPLIT.match(f.name) or int(SPLIT.match(f.name)["no"]) == 1]
        if len(firsts) != 1:
            raise CheckpointError(f"{path} holds {len(firsts)} GGUF models "
                                  f"({', '.join(f.name for f in firsts) or 'none'}); pass one file")
        path = firsts[0]
    match = SPLIT.match(path.name)
    if not match:
        return (path,)
    count = int(match["count"])
    if int(match["no"]) != 1:
        raise CheckpointError(f"{path.name} is part {int(match['no'])} of a split GGUF; pass the "
                              f"first part ({match['stem']}-00001-of-{match['count']}.gguf)")
    parts = tuple(path.with_name(f"{match['stem']}-{i:05d}-of-{match['count']}.gguf")
                  for i in range(1, count + 1))
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise CheckpointError(f"split GGUF {path.name} is missing part(s) {', '.join(missing)}; "
                              "download every part into the same folder")
    return parts


def open_checkpoint(path: Path) -> GGUFCheckpoint:
    """Read the headers and tensor tables of every file and check each tensor (type known to
    the reader, bytes inside the file). Nothing is dequantized."""
    from gguf import GGUFReader

    files = find_files(path)
    ckpt: GGUFCheckpoint | None = None
    for file in files:
        try:
            reader = GGUFReader(file, "r")
            fields = {k: _field_value(f) for k, f in reader.fields.items()}
            entries = [(t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)),
                        t.data, int(t.n_bytes)) for t in reader.tensors]
        except READ_ERRORS as err:
            raise CheckpointError(f"GGUF file {file} is corrupt or truncated ({one_line(err)}); "
                                  "re-download it") from None
        if ckpt is None:
            ckpt = GGUFCheckpoint(files, fields)
        for name, type_name, shape, data, n_bytes in entries:
            if name in ckpt.tensors:
                raise CheckpointError(f"tensor {name!r} appears twice in {files[0].name}'s files")
            if data.nbytes != n_bytes:
                raise CheckpointError(f"GGUF file {file} is truncated: tensor {name!r} "
                                      f"({type_name}) needs {n_bytes} bytes, {data.nbytes} are "
                                      "there; re-download it")
            ckpt.tensors[name] = TensorEntry(name, type_name, shape, file, data)
    if not ckpt.tensors:
        raise CheckpointError(f"GGUF file {files[0]} has no tensors")
    return ckpt


def _field_value(f) -> Any:
    """One metadata field as a Python value (strings decoded, arrays as lists)."""
    values = [f.contents(i) for i in range(len(f.data))] if len(f.data) > 1 else [f.contents()]
    return values[0] if len(values) == 1 and len(f.types) == 1 else values


def transformers_config(ckpt: GGUFCheckpoint) -> dict[str, Any]:
    """The config dict transformers' GGUF integration reads from the metadata, plus the MoE
    keys it lacks for llama-stored Mixtral. UnsupportedModelError for other architectures."""
    from transformers.integrations.ggml import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    arch = ckpt.architecture
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} ({ckpt.name}) is not supported; fiddler_nb loads GGUF "
            f"MoE models of architecture {', '.join(ARCHITECTURES)}")
    # transformers' own metadata -> config table, applied to the metadata read once above
    # (its loader re-parses the file and misreads gpt-oss's rope keys)
    table = "llama" if arch == "llama" else ARCHITECTURES[arch]
    config: dict[str, Any] = {"model_type": ARCHITECTURES[arch]}
    for key, name in GGUF_CONFIG_MAPPING[table].items():
        value = ckpt.metadata.get(f"{arch}.{key}")
        if name and value is not None:
            config[name] = value
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(ARCHITECTURES[arch], {}).items():
        config.setdefault(key, value)
    tokens = ckpt.metadata.get("tokenizer.ggml.tokens")
    if "vocab_size" not in config and isinstance(tokens, list):
        config["vocab_size"] = len(tokens)
    meta = ckpt.metadata
    # transformers looks for output.weight in the first file only; a split set may hold it later
    config["tie_word_embeddings"] = "output.weight" not in ckpt.tensors
    if arch == "llama":
        experts = meta.get("llama.expert_count", 0)
        if not experts:
            raise UnsupportedModelError(f"{ckpt.name} is a dense llama model (no llama.expert_count); "
                                        "fiddler_nb runs MoE models")
        config.update(model_type="mixtral", num_local_experts=int(experts),
                      num_experts_per_tok=int(meta.get("llama.expert_used_count", 2)))
    if arch == "qwen2moe":
        for key, name in (("expert_feed_forward_length", "moe_intermediate_size"),
                          ("expert_shared_feed_forward_length", "shared_expert_intermediate_size")):
            if f"qwen2moe.{key}" in meta:
                config[name] = int(meta[f"qwen2moe.{key}"])
    if arch == "gpt-oss":
        _gpt_oss_config(meta, config)
    if arch == "qwen3moe" and "qwen3moe.expert_feed_forward_length" in meta:
        config["moe_intermediate_size"] = int(meta["qwen3moe.expert_feed_forward_length"])
    for key, name in (("tokenizer.ggml.bos_token_id", "bos_token_id"),
                      ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                      ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        if key in meta:
            config.setdefault(name, int(meta[key]))
        vocab = config.get("vocab_size")
        if config.get(name) is not None and not (isinstance(vocab, int)
                                                 and 0 <= config[name] < vocab):
            raise CheckpointError(f"{ckpt.name}: {key} = {config[name]} is not a token id of a "
                                  f"vocabulary of {vocab!r}; the metadata is corrupt")
    config.pop("_model_name_or_path", None)
    _check_blocks(ckpt, config)
    return config


def _gpt_oss_config(meta: dict[str, Any], config: dict[str, Any]) -> None:
    """What transformers' GGUF mapping leaves out for gpt-oss: the head width, the experts'
    width, and YaRN as gpt-oss's config states it (rope_parameters, truncate off)."""
    key = lambda name: meta.get(f"gpt-oss.{name}")  # noqa: E731
    if key("attention.key_length"):
        config["head_dim"] = int(key("attention.key_length"))
    if key("expert_feed_forward_length"):
        config["intermediate_size"] = int(key("expert_feed_forward_length"))
    config.pop("rope_scaling", None)
    rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": 4096,
            "rope_theta": float(config.pop("rope_theta", 150000.0))}  # gpt-oss's own defaults
    if key("rope.scaling.factor"):
        rope["factor"] = float(key("rope.scaling.factor"))
    if key("rope.scaling.original_context_length"):
        rope["original_max_position_embeddings"] = int(key("rope.scaling.original_context_length"))
    config["rope_parameters"] = rope


def _check_blocks(ckpt: GGUFCheckpoint, config: dict[str, Any]) -> None:
    """The metadata's layer count must be the tensor table's (a corrupt count would build a
    model of millions of layers before any tensor check could refuse it)."""
    blocks = {int(m["layer"]) for n in ckpt.tensors if (m := BLOCK.match(n))}
    stated = config.get("num_hidden_layers")
    if not isinstance(stated, int) or stated != len(blocks) or blocks != set(range(len(blocks))):
        raise CheckpointError(f"{ckpt.name} states {stated!r} layers but its tensors are for "
                              f"{len(blocks)} (blk.0 .. blk.{max(blocks, default=-1)}); the file "
                              "is corrupt")
    experts = config.get("num_local_experts") or config.get("num_experts")
    top_k = config.get("num_experts_per_tok")
    if not (isinstance(experts, int) and isinstance(top_k, int) and 1 <= top_k <= experts):
        raise CheckpointError(f"{ckpt.name} routes each token to {top_k!r} of {experts!r} "
                              "experts; the expert counts in its metadata are corrupt")


EXPERT_TENSOR = re.compile(r"^blk\.(?P<layer>\d+)\.ffn_(?P<w>gate|up|down)_exps\.(?P<kind>weight|bias)$")


def expert_tensor_name(layer: int, which: str, kind: str = "weight") -> str:
    """llama.cpp's name of a layer's stacked experts: which = 'gate' | 'up' | 'down'."""
    return f"blk.{layer}.ffn_{which}_exps.{kind}"


def dense_tensor_names(model, arch: str) -> dict[str, str]:
    """GGUF name -> transformers parameter name for every tensor outside the routed experts
    (transformers' own GGUF name map, from the `gguf` package's tensor table)."""
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    mapping = get_gguf_hf_weights_map(model, tensor_processor(arch, {}),
                                      model_type="llama" if arch == "llama" else None)
    return {g: h for g, h in mapping.items() if "_exps" not in g}


def tensor_processor(arch: str, config: dict):
    """transformers' per-architecture fix-ups of GGUF tensors (llama's Q/K row permutation,
    Qwen's 1-D shared-expert gate)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    return TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config)
