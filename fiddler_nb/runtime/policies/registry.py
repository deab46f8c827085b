"""A name -> policy-class registry with a `register` decorator and a factory whose error lists
the known names (shared by placement and execution policies)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from ..errors import OptionError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # e.g. "placement policy", used in error messages
        self._classes: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: add the class under `name` (and set its `name` attribute)."""
        def wrap(cls: type) -> type:
            cls.name = name
            self._classes[name] = cls
            return cls
        return wrap

    def known(self) -> list[str]:
        return sorted(self._classes)

    def make(self, name: str, **kwargs) -> T:
        if not isinstance(name, str) or name not in self._classes:
            raise OptionError(f"unknown {self.kind} {name!r}; known: {', '.join(self.known())}")
        return self._classes[name](**kwargs)
