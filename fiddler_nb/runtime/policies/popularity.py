"""Routing popularity: how many tokens each (layer, expert) received on a calibration set.

Fiddler ranks experts by an offline routing profile and keeps the most popular on the GPU.
`calibrate(engine, prompts)` (calibrate.py) records one; `Popularity.save/load` keep it as safetensors so it is
data produced by a run, not a literal in code.

Shape legend: L = MoE layers, E = experts per layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import FileFormatError, MissingFileError, OptionError, one_line
from ..files import write_with


@dataclass(frozen=True)
class Popularity:
    counts: torch.Tensor  # [L, E] routed (token, expert) pairs, int64
    tokens: int = 0  # tokens the counts were recorded over
    source: str = ""  # what produced them (model path, prompt set)

    def __post_init__(self) -> None:
        if not isinstance(self.counts, torch.Tensor):
            raise OptionError(f"popularity counts must be a [layers, experts] tensor, got "
                              f"{type(self.counts).__name__}")
        if self.counts.dim() != 2 or self.counts.numel() == 0:
            raise OptionError(f"popularity counts must be [layers, experts], got {tuple(self.counts.shape)}")

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[1])

    def check_shape(self, num_layers: int, num_experts: int) -> None:
        """FileFormatError unless these counts were recorded on a model of this shape."""
        if (self.num_layers, self.num_experts) != (num_layers, num_experts):
            raise FileFormatError(f"popularity is [{self.num_layers}, {self.num_experts}] but the "
                                  f"model has {num_layers} MoE layers x {num_experts} experts; "
                                  "record it on this model with fnb.calibrate")

    def share(self) -> torch.Tensor:
        """[L, E] fraction of each layer's pairs routed to each expert."""
        totals = self.counts.sum(dim=1, keepdim=True).clamp(min=1)
        return self.counts.double() / totals

    def save(self, path: str | Path) -> Path:
        meta = {"tokens": str(self.tokens), "source": self.source}
        return write_with(path, lambda tmp: save_file({"counts": self.counts.contiguous()}, tmp,
                                                      metadata=meta), "popularity file")

    @classmethod
    def load(cls, path: str | Path) -> "Popularity":
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingFileError(f"popularity file {path} does not exist; record one with "
                                   "fnb.calibrate(engine, prompts).save(path)")
        try:
            with safe_open(str(path), "pt") as f:  # one read: header metadata and the tensor
                meta = f.metadata() or {}
                names = list(f.keys())
                counts = f.get_tensor("counts") if "counts" in names else None
            tokens = int(meta.get("tokens", 0))
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise FileFormatError(f"{path} is not a fiddler_nb popularity file (safetensors: "
                                  f"{one_line(err)}); record one with fnb.calibrate(...).save()") from None
        if counts is None:
            raise FileFormatError(f"{path} holds no 'counts' tensor; is it a fiddler_nb popularity "
                                  "file? record one with fnb.calibrate(engine, prompts).save(path)")
        if counts.dim() != 2 or counts.is_floating_point() and not torch.isfinite(counts).all() \
                or bool((counts < 0).any()):
            raise FileFormatError(f"{path}: 'counts' must be a [layers, experts] tensor of "
                                  f"non-negative counts, got shape {tuple(counts.shape)}")
        return cls(counts.to(torch.int64), tokens, meta.get("source", ""))

    def to_json(self) -> str:
        return json.dumps({"counts": self.counts.tolist(), "tokens": self.tokens,
                           "source": self.source})
