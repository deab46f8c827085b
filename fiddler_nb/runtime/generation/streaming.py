"""`Engine.stream`: text pieces as tokens are produced, through transformers' streamer hook.

A `GenerationStream` runs `Engine.generate` in a worker thread with a `BaseStreamer` that, for
every new token, records its id, the time, and the expert-token pairs the forward that produced
it ran resident / on the CPU / after a transfer (a delta of the engine's stats tally, read in
the worker thread that writes it). Iterating yields decoded text pieces; a piece is held back
while it ends in an incomplete UTF-8 sequence, so the pieces always join to the final text.

Leaving the loop early (break, an exception, `close()`) sets a flag a `StoppingCriteria` reads
before the next step, then joins the worker: generation ends after at most one more token, the
engine is free again, and `stream.result` holds the same `GenerationResult` (stats included)
that `generate` returns for the tokens actually produced. One generation at a time per engine.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..errors import InputError, OptionError
from .stats import PATHS
from .timing import torch_threads

_DONE = object()  # end of the worker's output
INCOMPLETE = "\ufffd"  # what a decoder shows for a cut-off (or invalid) UTF-8 sequence
MAX_HELD_TOKENS = 3  # a UTF-8 character has at most 4 bytes: after 3 more it is complete or invalid


@dataclass(frozen=True)
class TokenEvent:
    """One produced token and the expert work of the forward that produced it."""

    index: int  # 0 = the first new token (its forward was the prefill)
    token_id: int
    text: str  # the text piece yielded with it ("" while held back)
    resident: int  # expert-token pairs on resident experts, all MoE layers
    cpu: int  # pairs run on the CPU
    transfer: int  # pairs run after copying the expert's weights
    elapsed_s: float  # since the stream started

    @property
    def phase(self) -> str:
        return "prefill" if self.index == 0 else "decode"


class _StopFlag(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class _TokenStreamer(BaseStreamer):
    """Called by generate in the worker: first with the prompt (skipped), then per token."""

    def __init__(self, out: queue.Queue, totals: Callable[[], dict[str, int]],
                 start: float):
        self.out, self.totals, self.start = out, totals, start
        self.prompt_seen = False
        self.last: dict[str, int] = {}

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate has reset the stats tally by now
            self.prompt_seen = True
            self.last = self.totals()
            return
        now = self.totals()
        delta = {p: now[p] - self.last[p] for p in PATHS}
        self.last = now
        self.out.put((int(value.reshape(-1)[0]), delta, time.perf_counter() - self.start))

    def end(self) -> None:
        pass  # the worker signals the end once generate has returned its result


class GenerationStream:
    """Iterate for text pieces; `result` / `stats` / `events` once finished or closed."""

    def __init__(self, engine: Any, prompt: str | torch.Tensor, max_new_tokens: int,
                 generate_kwargs: dict[str, Any]):
        _check_streamable(engine, prompt, generate_kwargs)
        self.engine = engine
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = dict(generate_kwargs)
        self.events: list[TokenEvent] = []
        self.text = ""  # what has been yielded so far
        self.result = None  # GenerationResult, once the worker is done
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ids: list[int] = []
        self._held = 0  # tokens decoded but not yet yielded

    # ---- lifecycle ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return self._pieces()  # a fresh generator: leaving a for-loop finalises it -> close()

    def __enter__(self) -> "GenerationStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self):
        return None if self.result is None else self.result.stats

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop generating (after at most one more token) and wait for the worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _start(self) -> None:
        if self._thread is not None:
            return
        state = self.engine._open()
        threads = self.engine.config.threads or torch.get_num_threads()  # the caller's count
        streamer = _TokenStreamer(self._queue, state.stats.totals, time.perf_counter())
        kwargs = dict(self.generate_kwargs, streamer=streamer, stopping_criteria=
                      StoppingCriteriaList([_StopFlag(self._stop),
                                            *(self.generate_kwargs.get("stopping_criteria") or [])]))

        def work() -> None:
            try:
                with torch_threads(threads):
                    self.result = self.engine.generate(self.prompt, self.max_new_tokens, **kwargs)
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the consumer
                self._error = exc
            finally:
                self._queue.put(_DONE)

        self._thread = threading.Thread(target=work, name="fiddler-nb-stream", daemon=True)
        self._thread.start()

    # ---- pieces -----------------------------------------------------------------------------
    def _pieces(self) -> Iterator[str]:
        if self._stop.is_set():
            return
        self._start()
        try:
            while (item := self._queue.get()) is not _DONE:
                token, pairs, elapsed = item
                self._ids.append(token)
                piece = self._next_piece(self._decode(self._ids))
                self.events.append(TokenEvent(len(self.events), token, piece, pairs["resident"],
                                              pairs["cpu"], pairs["transfer"], elapsed))
                if piece:
                    yield piece
            self._thread.join()
            if self._error is None and self.result is not None:
                final = self._decode(self.result.token_ids[0].tolist())
                rest = final[len(self.text):] if final.startswith(self.text) else ""
                if rest:
                    self.text += rest
                    yield rest
        finally:
            self.close()

    def _decode(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True)

    def _next_piece(self, text: str) -> str:
        self._held += 1
        if not text.startswith(self.text) or (text.endswith(INCOMPLETE)
                                              and self._held <= MAX_HELD_TOKENS):
            return ""  # wait for the rest of a multi-byte character
        piece = text[len(self.text):]
        self.text, self._held = text, 0
        return piece

    def tokens_per_s(self) -> float:
        """Decode tokens/s so far (tokens after the first over the time since the first)."""
        if len(self.events) < 2:
            return float("nan")
        span = self.events[-1].elapsed_s - self.events[0].elapsed_s
        return (len(self.events) - 1) / span if span > 0 else float("nan")


def _check_streamable(engine: Any, prompt: Any, kwargs: dict[str, Any]) -> None:
    if engine.tokenizer is None:
        raise InputError(f"{engine.path} has no tokenizer, so there is no text to stream; "
                         "use engine.generate(token_ids) instead")
    rows = len(prompt) if isinstance(prompt, (list, tuple)) else (
        prompt.shape[0] if isinstance(prompt, torch.Tensor) and prompt.dim() == 2 else 1)
    beams = max(int(kwargs.get("num_beams", 1) or 1), int(kwargs.get("num_return_sequences", 1) or 1))
    if rows != 1 or beams != 1:
        raise OptionError(f"stream produces one sequence; got {rows} prompt(s) and "
                          f"num_beams/num_return_sequences {beams}; pass one prompt and no "
                          "beams, or use engine.generate for batches")
