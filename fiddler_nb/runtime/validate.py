"""Checks at the public boundary: numbers, names, paths and token ids, before any work.

Each check raises a `FiddlerError` subclass whose one-line message names the argument, the value
and the fix; none of them touches engine state, so a failed call leaves everything as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import FiddlerError, InputError, OptionError


def _show(value: Any) -> str:
    text = repr(value)
    limit = 60  # keep the message on one readable line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
              hint: str = "", error: type[FiddlerError] = OptionError) -> int:
    """`value` must be an int (not a bool) within [minimum, maximum]; else `error`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an integer, got {_show(value)}"
                    f" ({type(value).__name__}){'; ' + hint if hint else ''}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f">= {minimum}" if maximum is None else
                  f"<= {maximum}" if minimum is None else f"in {minimum}..{maximum}")
        raise error(f"{name} must be {bounds}, got {value}{'; ' + hint if hint else ''}")
    return value


def check_list(name: str, values: Any, what: str = "values") -> list:
    """A non-empty list, tuple or range (not a string) as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range)):
        raise OptionError(f"{name} must be a list or tuple of {what}, got {_show(values)}")
    if not values:
        raise OptionError(f"{name} is empty; give at least one of {what}")
    return list(values)


def check_threads(threads: Any) -> int | None:
    """torch CPU threads for generating: a positive int, or None for torch's own setting."""
    if threads is not None:
        check_int("threads", threads, minimum=1, hint="or None for torch's own setting")
    return threads


def check_float(name: str, value: Any, minimum: float | None = None,
                strictly_positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise OptionError(f"{name} must be a number, got {_show(value)}")
    if strictly_positive and value <= 0:
        raise OptionError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise OptionError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


def check_name(name: str, value: Any, known: Iterable[str]) -> str:
    """`value` must be a string among `known` (the message lists them)."""
    known = list(known)
    if not isinstance(value, str) or value not in known:
        raise OptionError(f"unknown {name} {_show(value)}; known: {', '.join(known)}")
    return value


def check_path(name: str, value: Any) -> Path:
    """A str or os.PathLike, expanded (`~`)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise OptionError(f"{name} must be a path (str or pathlib.Path), got {_show(value)}")
    return Path(value).expanduser()


def check_token_ids(ids: Any, vocab_size: int | None) -> torch.Tensor:
    """Token ids as a [B, T] integer tensor with every id in [0, vocab_size)."""
    if not isinstance(ids, torch.Tensor):
        raise InputError(f"token ids must be a torch tensor, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputError(f"token ids must be integers, got a {str(ids.dtype).removeprefix('torch.')} "
                         "tensor; pass torch.long ids (e.g. tokenizer(text).input_ids)")
    if ids.dim() not in (1, 2):
        raise InputError(f"token ids must be [T] or [B, T], got shape {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise InputError("the token ids are empty; pass at least one token")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bad = low if low < 0 else high
        raise InputError(f"token id {bad} is outside this model's vocabulary "
                         f"(0..{(vocab_size or 0) - 1}); encode with the model's own tokenizer")
    ids = ids if ids.dim() == 2 else ids.unsqueeze(0)
    return ids.long()


def check_attention_mask(mask: Any, ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"attention_mask must be a torch tensor, got {type(mask).__name__}")
    if mask.numel() != ids.numel():
        raise InputError(f"attention_mask has shape {tuple(mask.shape)} but the token ids "
                         f"{tuple(ids.shape)}; pass one 0/1 per token")
    if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 and 1")
    return mask.reshape(ids.shape).long()


def check_prompt_text(prompt: Any) -> list[str]:
    """A str or a non-empty sequence of non-empty str."""
    if isinstance(prompt, str):
        if not prompt:
            raise InputError("the prompt is empty; pass text, a list of texts or token ids")
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise InputError(f"a prompt must be text, a list of texts or token ids, got "
                         f"{type(prompt).__name__}")
    if not prompt:
        raise InputError("the prompt list is empty; pass at least one text")
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is {type(p).__name__}, not text; pass a list of "
                             "strings (or one tensor of token ids)")
        if not p:
            raise InputError(f"prompt {i} is empty; every prompt needs text")
    return list(prompt)
