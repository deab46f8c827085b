"""Loading a gpt-oss safetensors checkpoint whose experts ship in MXFP4, keeping them in MXFP4.

transformers' Mxfp4 quantizer reads `*_blocks` (uint8 [E, N, K/32, 16]) and `*_scales` (uint8
[E, N, K/32]) per experts matrix and, on a machine without its GPU kernels, dequantizes every
expert to bf16. Here the model is built on the meta device, non-expert tensors are read one by
one to the fast device, and each layer's blocks and scales become the experts' stored tensors
as they are (formats/mxfp4.py layout; run by kernels/torch_mxfp4.py on the CPU, decoded into the
scratch slot on a GPU). With `expert_dtype` the experts are decoded and converted instead.

Shape legend: E = experts, N = output channels, K = inputs (gate_up: N = 2I, K = H; down: N = H,
K = I), G = 32 inputs per scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, one_line
from ..formats import mxfp4
from ..formats.gguf_blocks import conversion_error
from ..formats.quant import MXFP4, MXFP4_GROUP, ExpertFormat, roundtrip
from ..formats.quantize_load import check_format
from ..formats.storage import SCALE_SUFFIX, convert_weight
from ..model.config import resolve_dtype
from .loading import CONFIG_FILE, check_checkpoint
from .skeleton import build_skeleton, finish, set_expert_tensors, set_tensor

QUANT_METHOD = "mxfp4"
MATRICES = ("gate_up_proj", "down_proj")


def is_mxfp4_checkpoint(root: Path) -> bool:
    """A checkpoint folder whose config says its weights are MXFP4-quantized."""
    config = root / CONFIG_FILE
    if not root.is_dir() or not config.is_file():
        return False
    try:
        quant = json.loads(config.read_text()).get("quantization_config") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False  # check_checkpoint says what is wrong with it
    return isinstance(quant, dict) and quant.get("quant_method") == QUANT_METHOD


class MXFP4Source:
    """A checked MXFP4 checkpoint, ready to load (nothing placed yet)."""

    def __init__(self, root: Path, device: torch.device, dtype: torch.dtype | None,
                 expert_dtype=None, group_size: int | None = None):
        check_checkpoint(root)
        self.root, self.device = root, device
        config = json.loads((root / CONFIG_FILE).read_text())
        config.pop("quantization_config")
        self.dtype = dtype or resolve_dtype(config.get("dtype") or config.get("torch_dtype")
                                            or "bfloat16")
        self.skeleton, self.layers = build_skeleton(config, str(root))
        self.shards = self._tensor_table()
        self._check()
        self.convert = expert_dtype is not None
        self.fmt = check_format(self.layers, expert_dtype, group_size) if self.convert else \
            ExpertFormat(MXFP4, MXFP4_GROUP)
        self.notes: list[str] = []
        self.errors: list[float] = []

    def _tensor_table(self) -> dict[str, Path]:
        from safetensors import safe_open

        table = {}
        for shard in sorted(self.root.glob("*.safetensors")):
            with safe_open(str(shard), "pt") as handle:
                table.update({k: shard for k in handle.keys()})
        return table

    def _shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open

        with safe_open(str(self.shards[name]), "pt") as handle:
            return tuple(handle.get_slice(name).get_shape())

    def _check(self) -> None:
        """Every tensor the model needs is there with the shape it needs."""
        expert_params = {id(p) for layer in self.layers for p in layer.module.parameters()}
        wanted = {n: tuple(p.shape) for n, p in self.skeleton.named_parameters()
                  if id(p) not in expert_params}
        for layer in self.layers:
            for matrix in MATRICES:
                n, k = _n_k(layer.module, matrix)
                e = layer.num_experts
                wanted[f"{layer.name}.{matrix}_blocks"] = (e, n, k // MXFP4_GROUP, MXFP4_GROUP // 2)
                wanted[f"{layer.name}.{matrix}_scales"] = (e, n, k // MXFP4_GROUP)
                wanted[f"{layer.name}.{matrix}_bias"] = (e, n)
        tied = getattr(self.skeleton.config, "tie_word_embeddings", False)
        for name, shape in wanted.items():
            if name not in self.shards:
                if tied and name == "lm_head.weight":
                    continue
                raise CheckpointError(f"{self.root} has no tensor {name!r}; is it a complete "
                                      "MXFP4 gpt-oss checkpoint?")
            found = self._shape(name)
            if found != shape:
                raise CheckpointError(f"tensor {name!r} in {self.root} has shape {list(found)}, "
                                      f"the model needs {list(shape)}")

    def load_model(self) -> nn.Module:
        from safetensors import safe_open

        model = self.skeleton
        handles = {s: safe_open(str(s), "pt") for s in set(self.shards.values())}
        try:
            get = lambda name: handles[self.shards[name]].get_tensor(name)  # noqa: E731
            expert_params = {id(p) for layer in self.layers for p in layer.module.parameters()}
            for name, param in list(model.named_parameters()):
                if id(param) not in expert_params and name in self.shards:
                    set_tensor(model, name, get(name).to(device=self.device, dtype=self.dtype))
            for layer in self.layers:
                tensors = {}
                for matrix in MATRICES:
                    blocks = get(f"{layer.name}.{matrix}_blocks")  # [E, N, K/32, 16]
                    blocks = blocks.reshape(*blocks.shape[:2], -1)  # [E, N, K/2]
                    scales = get(f"{layer.name}.{matrix}_scales")  # [E, N, K/32]
                    tensors.update(self._matrix(matrix, blocks, scales))
                    tensors[f"{matrix}_bias"] = get(f"{layer.name}.{matrix}_bias").to(self.dtype)
                set_expert_tensors(layer.module, tensors)
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"reading {self.root} failed ({one_line(err)})") from None
        finally:
            handles.clear()
        finish(model, self.device, str(self.root))
        if self.errors:
            self.notes.append(f"MXFP4 experts converted to {self.fmt.label()}: relative RMS "
                              f"error {max(self.errors):.2e} worst matrix vs the file's values")
        return model

    def _matrix(self, matrix: str, blocks: torch.Tensor, scales: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """One fused matrix as the format's tensors: as stored (MXFP4), or converted expert by
        expert (the float copy of one expert at a time)."""
        if not self.convert:
            return {matrix: blocks.contiguous(), matrix + SCALE_SUFFIX: scales.contiguous()}
        parts: dict[str, list[torch.Tensor]] = {}
        for e in range(blocks.shape[0]):
            w = mxfp4.dequantize(blocks[e], scales[e], torch.float32)  # [N, K]
            if self.fmt.is_quantized:
                self.errors.append(conversion_error(w, roundtrip(w, self.fmt, self.dtype)))
                converted = convert_weight(w[None], self.fmt, False, self.dtype,
                                           self.device.type == "cuda")
            else:  # float experts keep gpt-oss's own [K, N] layout
                converted = convert_weight(w.t()[None], self.fmt, False, self.dtype, False)
            for suffix, t in converted.items():
                parts.setdefault(matrix + suffix, []).append(t[0])
        return {name: torch.stack(ts) for name, ts in parts.items()}

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.root)
        except (OSError, ValueError, TypeError):
            return None


def _n_k(module: nn.Module, matrix: str) -> tuple[int, int]:
    """(N, K) of one expert's matrix from the experts module (gpt-oss stores [E, K, N])."""
    shape = getattr(module, matrix).shape
    return (int(shape[2]), int(shape[1])) if module.is_transposed else (int(shape[1]),
                                                                        int(shape[2]))
