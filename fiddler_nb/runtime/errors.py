"""The errors fiddler_nb raises for bad input or an unusable environment.

Every one is a `FiddlerError`, itself a `ValueError` (so `except ValueError` keeps working).
A message is one line: what was wrong, the value, and how to fix it. Errors from inside torch or
transformers that a user could not have caused are not wrapped.
"""

from __future__ import annotations


class FiddlerError(ValueError):
    """Base class: bad input to fiddler_nb or an environment it cannot use."""


class CheckpointError(FiddlerError):
    """The checkpoint path or its files are missing, unreadable or corrupt."""


class UnsupportedModelError(FiddlerError):
    """The model is not an MoE model whose experts use transformers' experts interface."""


class BudgetError(FiddlerError):
    """The requested expert budget does not fit (number of experts or device memory)."""


class FormatError(FiddlerError):
    """An expert format (expert_dtype / group_size) that is unknown or that the model cannot take."""
