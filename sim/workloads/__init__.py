"""Workloads for ``shoal sim run``: each builds a cluster, drives it, and checks it."""

from __future__ import annotations

from random import Random
from typing import Any

WORKLOADS = ("membership", "tasks", "actors", "placement_groups")


class UnknownWorkload(ValueError):
    pass


def make_workload(name: str, rng: Random) -> Any:
    """Returns a fresh workload by name; raises ``UnknownWorkload`` listing valid names."""
    if name == "membership":
        from shoal.sim.workloads.membership import MembershipWorkload
        return MembershipWorkload(rng)
    if name == "tasks":
        from shoal.sim.workloads.tasks import TasksWorkload
        return TasksWorkload(rng)
    if name == "actors":
        from shoal.sim.workloads.actors import ActorsWorkload
        return ActorsWorkload(rng)
    if name == "placement_groups":
        from shoal.sim.workloads.placement_groups import PlacementGroupsWorkload
        return PlacementGroupsWorkload(rng)
    raise UnknownWorkload(
        f"unknown workload {name!r}; choose one of: {', '.join(WORKLOADS)}")
