"""Placement policies: which (layer, expert) pairs live on the fast device.

A static policy is a pure function of a `PlacementRequest`; the engine only executes its answer.
A dynamic policy (`lru`, `lfu`: expert caches like mixtral-offloading's) also answers, on each
miss, which resident expert of the layer to evict; its bookkeeping is plain Python state with
no clock, so it is deterministic and testable.
`make_placement(name)` builds one from the registry and names the known policies on a typo.

Fiddler's policy is `popularity`: fill the GPU expert budget with the experts that a calibration
run routed the most tokens to (paper §3.2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import torch

from .registry import Registry

Slot = tuple[int, int]  # (MoE layer index, expert index)


@dataclass(frozen=True)
class PlacementRequest:
    num_layers: int
    num_experts: int
    budget: int  # experts to place, all layers together
    popularity: torch.Tensor | None = None  # [L, E] routed-token counts, or None
    seed: int = 0


class PlacementPolicy(Protocol):
    name: str

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        """The set of (layer, expert) to keep on the fast device; at most `budget` of them."""
        ...


class DynamicPlacement(PlacementPolicy, Protocol):
    def touch(self, layer: int, experts: list[int]) -> None:
        """Resident experts of `layer` were used (hits)."""
        ...

    def admit(self, layer: int, expert: int, resident: frozenset[int]) -> int | None:
        """`expert` missed; return the resident expert to evict for it, or None to not cache it."""
        ...


def is_dynamic(policy: PlacementPolicy) -> bool:
    return hasattr(policy, "admit") and hasattr(policy, "touch")


_REGISTRY: Registry[PlacementPolicy] = Registry("placement policy")
register = _REGISTRY.register  # class decorator: @register("name")


def known_placements() -> list[str]:
    return _REGISTRY.known()


def make_placement(name: str, **kwargs) -> PlacementPolicy:
    """A new policy by name; unknown names raise ValueError listing the known ones."""
    return _REGISTRY.make(name, **kwargs)


def _ranked_experts(request: PlacementRequest, layer: int) -> list[int]:
    """Experts of one layer, most popular first (index order without a popularity)."""
    if request.popularity is None:
        return list(range(request.num_experts))
    counts = request.popularity[layer].tolist()
    return sorted(range(request.num_experts), key=lambda e: (-counts[e], e))


@register("layer-balanced")
class LayerBalanced:
    """The same number of experts in every layer (the first layers take the remainder)."""

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        per_layer, extra = divmod(request.budget, request.num_layers)
        chosen = set()
        for layer in range(request.num_layers):
            take = per_layer + (1 if layer < extra else 0)
            chosen.update((layer, e) for e in _ranked_experts(request, layer)[:take])
        return frozenset(chosen)


@register("popularity")
class Popularity:
    """Fiddler: the globally most-used experts first, from a recorded routing profile."""

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        if request.popularity is None:
            return LayerBalanced().place(request)  # the engine says so in its notes
        counts = request.popularity.tolist()
        slots = [(layer, e) for layer in range(request.num_layers)
                 for e in range(request.num_experts)]
        slots.sort(key=lambda s: (-counts[s[0]][s[1]], s))  # ties: earlier layers first
        return frozenset(slots[:request.budget])


@register("first-layers")
class FirstLayers:
    """Whole layers from the input side first (what a layer-wise device_map would keep)."""

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        slots = [(layer, e) for layer in range(request.num_layers)
                 for e in _ranked_experts(request, layer)]
        return frozenset(slots[:request.budget])


@register("random")
class RandomPlacement:
    """A seeded uniform sample: the floor any informed policy must beat."""

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        slots = [(layer, e) for layer in range(request.num_layers)
                 for e in range(request.num_experts)]
        return frozenset(random.Random(request.seed).sample(slots, request.budget))


@register("none")
class NoPlacement:
    """Nothing resident: every activated expert goes through the execution policy."""

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        return frozenset()


@register("lru")
class LruCache:
    """Per-layer cache of the layer's share of the budget; a miss evicts the least recently used.

    Starts from the layer-balanced placement (most popular first when a profile exists).
    """

    def __init__(self) -> None:
        self._order: dict[int, dict[int, int]] = {}  # layer -> expert -> last use tick
        self._tick = 0

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        placed = LayerBalanced().place(request)
        self._order = {layer: {} for layer in range(request.num_layers)}
        for layer, e in sorted(placed, key=lambda s: (s[0], -_rank(request, s))):
            self._use(layer, e)
        return placed

    def _use(self, layer: int, expert: int) -> None:
        self._tick += 1
        self._order.setdefault(layer, {})[expert] = self._tick

    def touch(self, layer: int, experts: list[int]) -> None:
        for e in experts:
            self._use(layer, e)

    def admit(self, layer: int, expert: int, resident: frozenset[int]) -> int | None:
        if not resident:
            return None  # this layer has no cache slots
        uses = self._order.setdefault(layer, {})
        victim = min(resident, key=lambda e: (uses.get(e, 0), e))
        uses.pop(victim, None)
        self._use(layer, expert)
        return victim


@register("lfu")
class LfuCache(LruCache):
    """Like `lru`, but evicts the resident expert used least often (ties: least recently)."""

    def __init__(self) -> None:
        super().__init__()
        self._hits: dict[tuple[int, int], int] = {}

    def place(self, request: PlacementRequest) -> frozenset[Slot]:
        self._hits = {}  # a new placement starts a new count
        return super().place(request)

    def _use(self, layer: int, expert: int) -> None:
        super()._use(layer, expert)
        self._hits[(layer, expert)] = self._hits.get((layer, expert), 0) + 1

    def admit(self, layer: int, expert: int, resident: frozenset[int]) -> int | None:
        if not resident:
            return None
        uses = self._order.setdefault(layer, {})
        victim = min(resident, key=lambda e: (self._hits.get((layer, e), 0), uses.get(e, 0), e))
        self._hits.pop((layer, victim), None)  # an evicted expert starts from zero when it returns
        uses.pop(victim, None)
        self._use(layer, expert)
        return victim


def _rank(request: PlacementRequest, slot: Slot) -> int:
    """Popularity count of a slot (0 without a profile), for ordering initial cache recency."""
    if request.popularity is None:
        return -slot[1]
    return int(request.popularity[slot[0], slot[1]])
