"""Writing a gpt-oss checkpoint with MXFP4 experts, as OpenAI ships gpt-oss: the tiny seeded
model's experts quantized to MXFP4 (`*_blocks` / `*_scales`, the layout transformers' Mxfp4
quantizer reads), everything else as saved, and `quantization_config: {quant_method: mxfp4}`.
Test data made here, no download.

Shape legend: E = experts, N = output channels, K = inputs, G = 32 inputs per scale.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model.tiny import make_tiny_checkpoint
from . import mxfp4

CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}


def make_tiny_mxfp4_checkpoint(path: str | Path, seed: int = 0,
                               dtype: str = "bfloat16") -> Path:
    """Write the tiny gpt-oss checkpoint with MXFP4 experts at `path`; returns it."""
    from safetensors.torch import load_file, save_file

    out = make_tiny_checkpoint(path, arch="gpt_oss", seed=seed, dtype=dtype)
    for shard in sorted(out.glob("*.safetensors")):
        tensors = load_file(str(shard))
        for name in [n for n in tensors if n.endswith(("experts.gate_up_proj",
                                                       "experts.down_proj"))]:
            w = tensors.pop(name)  # [E, K, N]: gpt-oss stores experts transposed
            packed = [mxfp4.quantize(w[e].t().float()) for e in range(w.shape[0])]
            blocks = torch.stack([b for b, _ in packed])  # [E, N, K/2]
            tensors[name + "_blocks"] = blocks.reshape(*blocks.shape[:2], -1, mxfp4.GROUP // 2)
            tensors[name + "_scales"] = torch.stack([s for _, s in packed])  # [E, N, K/32]
        save_file(tensors, str(shard), metadata={"format": "pt"})
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = CONFIG
    config_path.write_text(json.dumps(config, indent=2))
    return out
