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


class EngineClosedError(FiddlerError, RuntimeError):
    """The engine was closed (also a RuntimeError)."""


class OptionError(FiddlerError):
    """An argument has the wrong type, is out of range, or names something unknown."""


class DeviceError(OptionError):
    """The device asked for does not exist here or cannot be used."""


class InputError(FiddlerError):
    """A prompt or token ids that the model cannot take (type, shape, range, empty)."""


class ContextLengthError(InputError):
    """The prompt plus the tokens to generate exceed the model's context."""


class FileFormatError(FiddlerError):
    """A file (profile, popularity, plan) is unreadable, of the wrong format or version, or was
    written for another model shape."""


class FileWriteError(FiddlerError, OSError):
    """A file could not be written (disk full, no permission); an older file is left intact
    (also an OSError)."""


class MissingFileError(FiddlerError, FileNotFoundError):
    """A file the caller named does not exist (also a FileNotFoundError)."""


def one_line(err: BaseException) -> str:
    """An underlying library error as one short line, to quote inside our own messages."""
    text = " ".join(str(err).split()) or type(err).__name__
    limit = 160  # long enough for a parser's position, short enough for one terminal line
    return text if len(text) <= limit else text[: limit - 3] + "..."
