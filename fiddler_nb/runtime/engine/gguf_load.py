"""Loading a GGUF file (or split set, or a folder with one) as the model an Engine runs.

`GGUFSource(path, ...)` reads the headers and tensor tables, builds the model on the meta device
from the metadata (model/gguf_file.py: transformers' GGUF config mapping), and checks every
tensor it will need (present, shape, type) and the experts' format -- all before any weight is
placed. `load_model()` then fills the model: non-expert tensors dequantized by the `gguf` package
to the activation dtype on the fast device; routed experts read from the memory-mapped file one
expert at a time and stored in the format that holds their blocks as they are
(formats/gguf_blocks.py), or converted with the error measured (`notes`).

The activation dtype defaults to float32 on a CPU-only machine and float16 with a GPU: both
hold GGUF's fp16 block scales exactly (bf16 does not), so the engine multiplies by the file's
own numbers; dtype='bfloat16' is allowed and says what it rounds in `notes`.

Shape legend: E = experts, I = expert intermediate size, H = hidden, N = rows, K = inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, FormatError
from ..formats import gguf_blocks, mxfp4
from ..formats.quant import MXFP4, ExpertFormat, dtype_label, pack_int4_cpu, pack_nibbles, roundtrip
from ..formats.quantize_load import check_format
from ..formats.storage import NIBBLES_SUFFIX, SCALE_SUFFIX, ExpertStorage, convert_weight
from ..model.adapters import MoELayer
from ..model.gguf_file import (TensorEntry, dense_tensor_names, expert_tensor_name,
                               open_checkpoint, tensor_processor, transformers_config)
from . import gguf_dense
from ..kernels.native import available as native_available
from .skeleton import build_skeleton, finish, set_expert_tensors, set_tensor

# Activation dtype when none is given: both hold GGUF's fp16 block scales exactly (bf16 does
# not); on a GPU fp16 is also what its GEMMs run fastest, on the CPU fp32 is exact for Q4_K too
DEFAULT_DTYPES = {"cpu": torch.float32, "cuda": torch.float16}
# Types we convert (8 bits or fewer, blocks of 32 or more) go to group-wise int8 with fp16 scales
# per 32 inputs: the nearest format we keep (measured on the random test blocks: relative RMS
# error 4.5e-3 for Q6_K, whose 16-input sub-block scales two int8 groups cannot follow)
CONVERT_TO = ExpertFormat("int8", 32)


class GGUFSource:
    """A checked GGUF model, ready to load (nothing placed yet)."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype | None,
                 expert_dtype=None, group_size: int | None = None, dense_blocks: bool = True):
        self.ckpt = open_checkpoint(path)
        self.dense_blocks = dense_blocks  # CPU-only: quantized linears stay quantized
        self.device = device
        self.dtype = dtype or DEFAULT_DTYPES.get(device.type, torch.float32)
        self.config = transformers_config(self.ckpt)
        self.skeleton, self.layers = build_skeleton(self.config, self.ckpt.name)
        self.dense = self._check_dense()
        self.experts = self._check_experts()
        types = sorted({e.gguf_type for layer in self.experts for w, e in layer.items()
                        if not w.endswith(".bias")})
        self.fmt, self.convert, self.notes = self._choose_format(types, expert_dtype, group_size)
        self.errors: list[float] = []

    # ---- checks (before any weight is placed) ----------------------------------------------
    def _check_dense(self) -> dict[str, tuple[str, TensorEntry]]:
        """hf name -> (gguf name, entry) of every non-expert tensor the model needs."""
        names = dense_tensor_names(self.skeleton, self.ckpt.architecture)
        expert_params = {id(p) for layer in self.layers for p in layer.module.parameters()}
        wanted = {n: p for n, p in self.skeleton.named_parameters() if id(p) not in expert_params}
        tied = getattr(self.skeleton.config, "tie_word_embeddings", False)
        found: dict[str, tuple[str, TensorEntry]] = {}
        for gguf_name, hf_name in names.items():
            if hf_name in wanted and gguf_name in self.ckpt.tensors:
                found[hf_name] = (gguf_name, self.ckpt.tensors[gguf_name])
        for hf_name, param in wanted.items():
            if hf_name not in found:
                if tied and param is self.skeleton.get_output_embeddings().weight:
                    continue
                gguf = next((g for g, h in names.items() if h == hf_name), hf_name)
                raise CheckpointError(f"{self.ckpt.name} has no tensor {gguf!r} (for {hf_name}); "
                                      "is the file complete?")
            gguf_name, entry = found[hf_name]
            _check_type(entry, self.ckpt.name, dense=True)
            if _numel(entry.shape) != param.numel():
                raise CheckpointError(f"tensor {gguf_name!r} in {self.ckpt.name} has shape "
                                      f"{list(entry.shape)}, the model needs "
                                      f"{list(param.shape)}; the metadata and tensors disagree")
        return found

    def _check_experts(self) -> list[dict[str, TensorEntry]]:
        """Per MoE layer, its 'gate' / 'up' / 'down' entries, checked against the model."""
        out = []
        for layer in self.layers:
            if not layer.layout.has_gate:
                raise CheckpointError(f"{self.ckpt.name}: experts of {layer.name} are not "
                                      "gated; not supported from GGUF")
            e, (n, k), (n_down, k_down) = layer.num_experts, *(
                _n_k(layer, m) for m in ("gate_up_proj", "down_proj"))
            shapes = {"gate": (e, n // 2, k), "up": (e, n // 2, k), "down": (e, n_down, k_down)}
            if layer.layout.has_bias:
                shapes.update({"gate.bias": (e, n // 2), "up.bias": (e, n // 2),
                               "down.bias": (e, n_down)})
            entries = {}
            for which, shape in shapes.items():
                which, _, kind = which.partition(".")
                name = expert_tensor_name(layer.decoder_index, which, kind or "weight")
                which = f"{which}.{kind}" if kind else which
                entry = self.ckpt.tensors.get(name)
                if entry is None:
                    raise CheckpointError(f"{self.ckpt.name} has no tensor {name!r}; is the file "
                                          "complete?")
                _check_type(entry, self.ckpt.name, dense=False)
                if entry.shape != tuple(int(s) for s in shape):
                    raise CheckpointError(f"tensor {name!r} in {self.ckpt.name} has shape "
                                          f"{list(entry.shape)}, the model needs {list(shape)}")
                entries[which] = entry
            out.append(entries)
        return out

    def _choose_format(self, types: list[str], expert_dtype, group_size
                       ) -> tuple[ExpertFormat, bool, list[str]]:
        """(format, convert?, notes). One format for every expert: a single kept type stays as
        it is; mixed or converted types go to int8; a user's expert_dtype converts all."""
        if expert_dtype is not None:
            fmt = check_format(self.layers, expert_dtype, group_size)
            return fmt, True, [f"experts {'/'.join(types)} converted to {fmt.label()} as asked"]
        plan = gguf_blocks.plan_for(types[0]) if len(types) == 1 else None
        if plan is not None and plan.kind == "float":
            return ExpertFormat(dtype_label(self.dtype)), True, []
        if plan is not None and plan.kind in ("int4", "int8-group", "mxfp4"):
            name = {"int4": "int4", "int8-group": "int8", "mxfp4": MXFP4}[plan.kind]
            notes = []
            if plan.gguf_type == "Q4_0" and native_available():  # no zero points: the native
                # kernels' nibble layout with the file's fp16 scales, exact in any dtype
                return ExpertFormat(name, gguf_blocks.GROUP, source=plan.label,
                                    int4_layout="nibbles"), False, notes
            exact = self.dtype == torch.float32 or (plan.gguf_type == "Q4_0"
                                                    and self.dtype == torch.float16)
            if plan.kind == "int4" and not exact:
                notes.append(f"{plan.gguf_type} block scales rounded to {dtype_label(self.dtype)} "
                             "for torch's int4 kernel; dtype='float32' keeps them exactly")
            return ExpertFormat(name, gguf_blocks.GROUP, source=plan.label), False, notes
        why = "mixed types" if len(types) > 1 else "no kernel of ours runs it as is"
        return CONVERT_TO, True, [f"experts {'/'.join(types)} ({why}) converted to "
                                  f"{CONVERT_TO.label()} at load"]

    # ---- loading ---------------------------------------------------------------------------
    def load_model(self) -> nn.Module:
        """Fill the skeleton: non-experts on the fast device, experts in host memory."""
        model = self.skeleton
        processor = tensor_processor(self.ckpt.architecture, self.config)
        kept: dict[str, int] = {}
        dense_errors: list[float] = []
        for hf_name, (gguf_name, entry) in self.dense.items():
            param = model.get_parameter(hf_name)
            if self._keep_in_blocks(model, hf_name, gguf_name, entry, processor, param.shape,
                                    dense_errors):
                kept[entry.gguf_type] = kept.get(entry.gguf_type, 0) + 1
                continue
            w = processor.process(_dequantize(entry), gguf_name).weights
            tensor = torch.from_numpy(w.copy()).reshape(param.shape)
            set_tensor(model, hf_name, tensor.to(device=self.device, dtype=self.dtype))
        on_gpu = self.device.type == "cuda"
        for layer, entries in zip(self.layers, self.experts):
            tensors = {}
            for matrix, parts in (("gate_up_proj", ("gate", "up")), ("down_proj", ("down",))):
                for e in range(layer.num_experts):  # into [E, ...] tensors: no per-layer copy
                    for suffix, t in self._expert(entries, parts, e, on_gpu, layer).items():
                        if e == 0:
                            tensors[matrix + suffix] = t.new_empty((layer.num_experts, *t.shape))
                        tensors[matrix + suffix][e] = t
                if layer.layout.has_bias:  # [E, N] (gate and up interleaved like the rows)
                    biases = [torch.from_numpy(_dequantize(entries[f"{p}.bias"]).copy())
                              for p in parts]
                    tensors[matrix + "_bias"] = self._join(biases, dim=1).to(self.dtype)
            set_expert_tensors(layer.module, tensors)
        finish(model, self.device, self.ckpt.name)
        if kept:
            exact = {t: n for t, n in kept.items() if t in gguf_dense.KEPT}
            other = {t: n for t, n in kept.items() if t not in gguf_dense.KEPT}
            if exact:
                self.notes.append("non-expert weights kept in the file's blocks: " + ", ".join(
                    f"{n} {t}" for t, n in sorted(exact.items())))
            if other:
                self.notes.append(
                    "non-expert weights converted to " + gguf_dense.CONVERTED_LABEL + ": " +
                    ", ".join(f"{n} {t}" for t, n in sorted(other.items())) +
                    f" (relative RMS error vs the file's values {max(dense_errors):.2e} worst; "
                    "float32 would read ~4x the bytes per token)")
        if self.errors:
            self.notes.append(f"conversion error vs the file's values: relative RMS "
                              f"{sum(self.errors) / len(self.errors):.2e} on average, "
                              f"{max(self.errors):.2e} worst matrix")
        return model

    def _keep_in_blocks(self, model: nn.Module, hf_name: str, gguf_name: str,
                        entry: TensorEntry, processor, shape, errors: list[float]) -> bool:
        """On a CPU-only engine, a quantized linear or embedding weight stays in its blocks
        (Q8_0 / Q4_0) or becomes int8-g32 (engine/gguf_dense.py); True when it did."""
        owner_name, _, leaf = hf_name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        tied = getattr(model.config, "tie_word_embeddings", False)
        if not self.dense_blocks or self.device.type != "cpu" or leaf != "weight" or \
                type(owner) not in (nn.Linear, nn.Embedding) or \
                (tied and type(owner) is nn.Embedding):
            return False
        found = gguf_dense.kept_matrix(entry, gguf_name, processor, tuple(shape), errors)
        if found is None:
            return False
        matrix, label = found
        set_tensor(model, hf_name, torch.empty(0, dtype=self.dtype))
        if type(owner) is nn.Embedding:
            gguf_dense.keep_embedding(owner, matrix, self.dtype)
        else:
            owner._fnb_file_matrix = (matrix, label)  # engine/dense.py routes it
        return True

    def _join(self, parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        """Gate and up rows as the model fuses them: stacked (Mixtral, Qwen) or interleaved
        (gpt-oss: gate row i at 2i, up row i at 2i + 1)."""
        if len(parts) == 1 or self.ckpt.architecture != "gpt-oss":
            return torch.cat(parts, dim=dim)
        return torch.stack(parts, dim=dim + 1).flatten(dim, dim + 1)

    def _expert(self, entries: dict[str, TensorEntry], parts: tuple[str, ...], e: int,
                on_gpu: bool, layer: MoELayer) -> dict[str, torch.Tensor]:
        """One expert's matrix (gate and up rows joined) as the format's tensors."""
        raws = [(entries[p], torch.from_numpy(entries[p].data[e].copy())) for p in parts]
        k = raws[0][0].shape[-1]
        kind, join = self.fmt.name, self._join
        if self.convert:
            w = join([gguf_blocks.dequantize_raw(t.gguf_type, r, k) for t, r in raws])  # [N, K]
            if self.fmt.is_quantized:
                self.errors.append(gguf_blocks.conversion_error(w, roundtrip(w, self.fmt,
                                                                             self.dtype)))
            elif layer.layout.is_transposed:  # float experts keep the model's [K, N] layout
                w = w.t()
            return {s: t[0] for s, t in convert_weight(w[None], self.fmt, False, self.dtype,
                                                       on_gpu).items()}
        if self.fmt.matrix_fmt == "int8-group":  # GGUF Q8_0: the file's int8 and fp16 scales
            q, scale = zip(*(gguf_blocks.decode_q8_0(r, k) for _, r in raws))
            return {"": join(list(q)), SCALE_SUFFIX: join(list(scale))}
        if kind == "mxfp4":
            blocks, scales = zip(*(mxfp4.from_gguf_blocks(r) for _, r in raws))
            return {"": join(list(blocks)), SCALE_SUFFIX: join(list(scales))}
        decoded = [gguf_blocks.decode_int4(t.gguf_type, r, k) for t, r in raws]
        q, scale, zero = (join(list(x)) for x in zip(*decoded))  # [N, K], [N, K/32] x 2
        if self.fmt.matrix_fmt == "int4-blocks":  # Q4_0: the file's nibbles and fp16 scales
            return {"": pack_nibbles(q), SCALE_SUFFIX: scale.to(torch.float16).contiguous()}
        out = {"": pack_int4_cpu(q),
               SCALE_SUFFIX: torch.stack([scale.t(), zero.t()], -1).to(self.dtype).contiguous()}
        if on_gpu:
            out[NIBBLES_SUFFIX] = pack_nibbles(q)
        return out

    def storage(self, layer: MoELayer) -> ExpertStorage:
        return ExpertStorage(layer.layout, self.fmt, on_gpu=self.device.type == "cuda")

    def tokenizer(self):
        """The tokenizer the metadata describes (transformers' GGUF tokenizer converter; the
        fast class directly: AutoTokenizer would first parse the config with transformers'
        GGUF loader, which misreads gpt-oss's rope keys)."""
        from transformers import PreTrainedTokenizerFast

        file = self.ckpt.files[0]
        try:
            return PreTrainedTokenizerFast.from_pretrained(file.parent, gguf_file=file.name)
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None  # token ids still work; encode() says so if text is given


def _check_type(entry: TensorEntry, source: str, dense: bool) -> None:
    """FormatError unless we can read (dense) or hold (experts) this tensor's type."""
    known = gguf_blocks.SUPPORTED
    if entry.gguf_type not in known:
        role = "non-expert" if dense else "expert"
        raise FormatError(f"{role} tensor {entry.name!r} in {source} has GGUF type "
                          f"{entry.gguf_type}, which fiddler_nb does not read; supported: "
                          f"{', '.join(known)}")


def _dequantize(entry: TensorEntry):
    """A non-expert tensor as float32 numpy (the `gguf` package's dequantize)."""
    import numpy as np
    from gguf import GGMLQuantizationType, dequantize

    values = dequantize(np.asarray(entry.data), GGMLQuantizationType[entry.gguf_type])
    return np.asarray(values, dtype=np.float32).reshape(entry.shape)


def _n_k(layer: MoELayer, matrix: str) -> tuple[int, int]:
    """(N, K) of one expert's `matrix` (gpt-oss stores experts transposed, [E, K, N])."""
    shape = getattr(layer.module, matrix).shape
    return (int(shape[2]), int(shape[1])) if layer.layout.is_transposed else (int(shape[1]),
                                                                             int(shape[2]))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
