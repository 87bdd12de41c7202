"""Ray's ``ray.util.scheduling_strategies`` under shoal's name."""

from shoal.runtime.api.scheduling_strategies import (
    DEFAULT_SCHEDULING_STRATEGY,
    SPREAD_SCHEDULING_STRATEGY,
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "DEFAULT_SCHEDULING_STRATEGY",
    "SPREAD_SCHEDULING_STRATEGY",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
]
