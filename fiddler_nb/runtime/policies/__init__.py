"""`fnb.policies`: the placement and execution policy registries in one place."""

from .execution import ExecutionPolicy, known_executions, make_execution
from .execution import register as register_execution
from .placement import PlacementPolicy, PlacementRequest, known_placements, make_placement
from .placement import register as register_placement

__all__ = [
    "ExecutionPolicy", "PlacementPolicy", "PlacementRequest", "known_executions",
    "known_placements", "make_execution", "make_placement", "register_execution",
    "register_placement",
]
