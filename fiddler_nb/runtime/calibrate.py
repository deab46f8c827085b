"""`calibrate(engine, prompts)`: record which experts a prompt set routes to.

The counts become a `Popularity` (popularity.py) and the engine's placement input.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .engine import Engine
from .popularity import Popularity


def calibrate(engine: Engine, prompts: Sequence[str] | str,
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
