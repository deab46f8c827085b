"""`calibrate(engine, prompts)`: record which experts a prompt set routes to.

The counts become a `Popularity` (popularity.py) and the engine's placement input.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .engine import Engine
from ..errors import InputError, OptionError
from ..policies.popularity import Popularity
from ..validate import check_int


def calibrate(engine: Engine, prompts: Sequence[str] | str,
              max_new_tokens: int = 0) -> Popularity:
    """Run `prompts` through the engine (prefill, plus optional greedy decode) and count routing.

    The counts also become the engine's popularity; with placement 'popularity' the experts are
    re-placed at once.
    """
    if not isinstance(engine, Engine):
        raise OptionError(f"calibrate needs an Engine from fnb.load, got {type(engine).__name__}")
    prompts = [prompts] if isinstance(prompts, (str, torch.Tensor)) else prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        got = "an empty list" if isinstance(prompts, (list, tuple)) else type(prompts).__name__
        raise InputError(f"calibrate needs a prompt or a non-empty list of prompts, got {got}")
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    encoded = [engine.encode(p) for p in prompts]  # every prompt checked before any is run
    engine.reset_routing_counts()
    tokens = 0
    with torch.inference_mode():
        for ids in encoded:
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
