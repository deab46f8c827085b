"""Clocks for generation: where prefill ends and decode begins.

`FirstTokenClock` is a logits processor: generate() calls it once per step, right after the
model's forward, so its first call marks the end of prefill. Unlike a streamer it works with
beam search and leaves a caller's own streamer alone. The device is synchronised before the
clock is read, so queued GPU work is counted where it belongs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from transformers import LogitsProcessor


def sync(device: torch.device) -> None:
    """Wait for queued work on `device` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FirstTokenClock(LogitsProcessor):
    def __init__(self, device: torch.device, on_first: Callable[[], None] | None = None):
        self.device = device
        self.on_first = on_first  # e.g. switch the stats recorder to "decode"
        self.first_token_at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.first_token_at is None:
            sync(self.device)
            self.first_token_at = time.perf_counter()
            if self.on_first is not None:
                self.on_first()
        return scores


def with_clock(generate_kwargs: dict, clock: FirstTokenClock) -> dict:
    """generate() kwargs with `clock` added to any logits processors the caller passed."""
    from transformers import LogitsProcessorList

    kwargs = dict(generate_kwargs)
    kwargs["logits_processor"] = LogitsProcessorList(
        [clock, *(kwargs.get("logits_processor") or [])])
    return kwargs


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch CPU threads (None: unchanged); the old count is restored."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
