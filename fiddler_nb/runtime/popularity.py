"""Routing popularity: how many tokens each (layer, expert) received on a calibration set.

Fiddler ranks experts by an offline routing profile and keeps the most popular on the GPU.
`calibrate(engine, prompts)` records one; `Popularity.save/load` keep it as safetensors so it is
data produced by a run, not a literal in code.

Shape legend: L = MoE layers, E = experts per layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class Popularity:
    counts: torch.Tensor  # [L, E] routed (token, expert) pairs, int64
    tokens: int = 0  # tokens the counts were recorded over
    source: str = ""  # what produced them (model path, prompt set)

    def __post_init__(self) -> None:
        if self.counts.dim() != 2:
            raise ValueError(f"popularity counts must be [layers, experts], got {tuple(self.counts.shape)}")

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[1])

    def share(self) -> torch.Tensor:
        """[L, E] fraction of each layer's pairs routed to each expert."""
        totals = self.counts.sum(dim=1, keepdim=True).clamp(min=1)
        return self.counts.double() / totals

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {"tokens": str(self.tokens), "source": self.source}
        save_file({"counts": self.counts.contiguous()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Popularity":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"popularity file {path} does not exist; record one with "
                                    "fnb.calibrate(engine, prompts).save(path)")
        with safe_open(str(path), "pt") as f:  # one read: header metadata and the tensor
            meta = f.metadata() or {}
            if "counts" not in f.keys():
                raise ValueError(f"{path} holds no 'counts' tensor; is it a fiddler_nb popularity file?")
            counts = f.get_tensor("counts")
        return cls(counts.to(torch.int64), int(meta.get("tokens", 0)), meta.get("source", ""))

    def to_json(self) -> str:
        return json.dumps({"counts": self.counts.tolist(), "tokens": self.tokens,
                           "source": self.source})


def calibrate(engine: "Engine", prompts: Sequence[str] | str,
              max_new_tokens: int = 0) -> Popularity:
    """Run `prompts` through the engine (prefill, plus optional greedy decode) and count routing.

    The counts also become the engine's popularity; with placement 'popularity' the experts are
    re-placed at once.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    engine.reset_routing_counts()
    tokens = 0
    with torch.inference_mode():
        for prompt in prompts:
            ids = engine.encode(prompt)
            tokens += int(ids["input_ids"].numel())
            if max_new_tokens:
                engine.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=engine.pad_token_id)
                tokens += max_new_tokens * int(ids["input_ids"].shape[0])
            else:
                engine.model(**ids)
    popularity = Popularity(torch.tensor(engine.routing_counts, dtype=torch.int64), tokens,
                            source=f"calibrate({len(prompts)} prompts) on {engine.path}")
    engine.set_popularity(popularity)
    return popularity
