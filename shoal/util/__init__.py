"""Ray's ``ray.util`` under shoal's name: ``from shoal.util import ActorPool,
placement_group``; ``shoal.util.queue.Queue``; ``shoal.util.scheduling_strategies``."""

from shoal.runtime.util.actor_pool import ActorPool

from . import queue, scheduling_strategies

# Imported from the submodule so that ``shoal.util.placement_group`` stays the function
# even after ``import shoal.util.placement_group`` (the module is loaded first, here).
from .placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]
