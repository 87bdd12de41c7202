"""Scheduling strategies for the ``scheduling_strategy`` option (Ray's names).

``"DEFAULT"`` (local first, then spill to the least loaded node) and ``"SPREAD"``
are strings; ``NodeAffinitySchedulingStrategy`` pins a task to one node, and
``PlacementGroupSchedulingStrategy`` runs it in a placement group's bundle
(``placement_group.py`` rewrites its resources into the group's).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_SCHEDULING_STRATEGY",
    "SPREAD_SCHEDULING_STRATEGY",
    "NodeAffinitySchedulingStrategy",
    "PlacementGroupSchedulingStrategy",
]

DEFAULT_SCHEDULING_STRATEGY = "DEFAULT"
SPREAD_SCHEDULING_STRATEGY = "SPREAD"


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run the task on node ``node_id``.

    Args:
        node_id: the node (as ``get_runtime_context().get_node_id()`` names it).
        soft: if True, run elsewhere when that node is dead or cannot fit the task;
            if False, the task fails when the node is dead and waits while it is busy.
    """

    node_id: str
    soft: bool
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(
                f"NodeAffinitySchedulingStrategy needs a node id string, got {self.node_id!r}")
        if not isinstance(self.soft, bool):
            raise TypeError(
                f"NodeAffinitySchedulingStrategy(soft=...) must be a bool, got {self.soft!r}")


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run the task (or actor) in a placement group's bundle.

    Args:
        placement_group: the ``PlacementGroup`` (from ``shoal.util.placement_group``).
        placement_group_bundle_index: the bundle to use; -1 (default) for any bundle.
        placement_group_capture_child_tasks: accepted for Ray compatibility; child
            tasks are not captured into the group (schedule them into it explicitly).
    """

    placement_group: object
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None

    def __post_init__(self) -> None:
        index = self.placement_group_bundle_index
        if not isinstance(index, int) or isinstance(index, bool) or index < -1:
            raise ValueError(
                "PlacementGroupSchedulingStrategy(placement_group_bundle_index=...) must be "
                f"an int >= -1 (-1: any bundle), got {index!r}")
