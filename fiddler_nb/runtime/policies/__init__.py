"""Decisions, as pure functions behind small registries: placement policies (`placement`:
which experts live on the fast device), execution policies (`execution`: CPU or transfer per
non-resident expert), the shared name -> class registry (`registry`), the latency model and the
pure per-layer assignment (`latency`), and routing popularity (`popularity`).

This module is `fnb.policies`: the placement and execution registries in one place.

May import: base.
"""

from .execution import ExecutionPolicy, known_executions, make_execution
from .execution import register as register_execution
from .placement import PlacementPolicy, PlacementRequest, known_placements, make_placement
from .placement import register as register_placement

__all__ = [
    "ExecutionPolicy", "PlacementPolicy", "PlacementRequest", "known_executions",
    "known_placements", "make_execution", "make_placement", "register_execution",
    "register_placement",
]
