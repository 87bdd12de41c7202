"""The ``placement_groups`` workload: placement groups end to end, under faults.

A driver program written against the public API runs rounds during the
faults: it creates a few groups (strategy, bundle count and sizes drawn from
the seed; some may fit nowhere and stay pending), waits for them with a
timeout, runs tasks in chosen bundles (each task asks its bundle's whole CPU
for a while, so tasks of one bundle must take turns) and an actor in a bundle,
then removes every group: the actor must then answer ``RayActorError``, and
the table must show the group ``REMOVED``. The shape is drawn from the seed.

Checked during the run:

* a bundle is never double-booked: tasks record the (group, bundle) they run
  in, and at no instant do more of them run in one bundle than its CPUs allow
  (``_Bookings``); the raylets' ledgers balance (their invariant checks);
* a task in a bundle runs on a node whose raylet holds that bundle, committed;
* a CREATED group's table row names a node for every bundle.

Checked at quiescence (after the heal), besides the program's own assertions:
every group is ``REMOVED`` and the GCS gives nothing back any more, every
raylet holds no bundle and has all its resources back (its quiescence
problems), no actor is alive, no task, lease or object is left in any core
worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import Any

from shoal.sim.harness import ClusterSim
from shoal.sim.workloads.settling import SettlingWorkload

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_BOOKINGS: _Bookings | None = None


@dataclass(slots=True)
class _Bookings:
    """Who runs in which bundle right now; a violation as soon as one is overbooked."""

    sim: ClusterSim
    running: dict[tuple[str, int], float] = field(default_factory=dict)
    tasks: int = 0

    def start(self, pg_id: str, index: int, cpus: float, capacity: float, node: str) -> None:
        from shoal.kernel.messages import Address

        proc = self.sim.engine.processes.get(Address(node=node, component="raylet"))
        held = proc.kernel.bundles.bundles if proc is not None and proc.kernel else ()
        if not any(b[:2] == (pg_id, index) and b[3] for b in held):
            self.sim.violation(
                f"a task of bundle {index} of placement group {pg_id!r} runs on node "
                f"{node!r}, whose raylet holds no such committed bundle ({held})")
        key = (pg_id, index)
        self.running[key] = self.running.get(key, 0.0) + cpus
        self.tasks += 1
        if self.running[key] > capacity + 1e-9:
            self.sim.violation(
                f"bundle {index} of placement group {pg_id!r} is double-booked: tasks "
                f"asking {self.running[key]} CPU run at once in a bundle of {capacity}")

    def end(self, pg_id: str, index: int, cpus: float) -> None:
        key = (pg_id, index)
        self.running[key] = self.running.get(key, 0.0) - cpus


def booked_task(pg_id: str, index: int, cpus: float, capacity: float,
                pause_s: float) -> str:
    """A task body: holds its bundle's CPU for ``pause_s``; returns its node."""
    from shoal.sim import api

    import shoal

    assert _BOOKINGS is not None
    node = shoal.get_runtime_context().get_node_id()
    _BOOKINGS.start(pg_id, index, cpus, capacity, node)
    try:
        api.sleep(pause_s)
    finally:
        _BOOKINGS.end(pg_id, index, cpus)
    return node


class Member:
    """An actor placed in a bundle."""

    def node(self) -> str:
        import shoal

        return shoal.get_runtime_context().get_node_id()


@dataclass(frozen=True)
class _Shape:
    groups: int
    tasks: int
    nodes: int


def placement_groups_program(rng: Random, nodes: int, until_s: float = 30.0) -> Any:
    """Builds the driver's ``main`` for one seed: rounds of group work during the faults."""
    shape = _Shape(groups=1 + rng.randrange(3), tasks=1 + rng.randrange(4), nodes=nodes)
    busy_s = until_s * (0.2 + 0.6 * rng.random())
    draws = Random(rng.getrandbits(64))

    def main() -> dict[str, Any]:
        from shoal.sim import api

        rounds, created = 0, 0
        while True:
            created += _one_round(shape, draws)
            rounds += 1
            if api.now() >= busy_s:
                break
            api.sleep(0.5)
        return {"rounds": rounds, "created": created}

    return main


def _one_round(shape: _Shape, draws: Random) -> int:
    from shoal.runtime.api.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )

    groups = []
    for _ in range(shape.groups):
        count = 1 + draws.randrange(min(3, shape.nodes))
        bundles = [{"CPU": draws.choice((0.5, 1.0))} for _ in range(count)]
        groups.append(placement_group(bundles, strategy=draws.choice(STRATEGIES)))
    created = 0
    for pg in groups:
        if pg.wait(5) and placement_group_table(pg)["state"] != "PENDING":
            created += 1
            _use(pg, shape, draws)
    for pg in groups:
        remove_placement_group(pg)
        row = placement_group_table(pg)
        assert row["state"] == "REMOVED", row
        member = getattr(pg, "member", None)
        if member is not None:
            _check_member_died(member)
    return created


def _check_member_died(member: Any) -> None:
    """The actor of a removed group dies. A call may still reach its worker before the
    kill does (as in Ray), so it is given a little time; then it must fail."""
    from shoal.sim import api

    import shoal
    from shoal import exceptions

    for _ in range(50):
        try:
            shoal.get(member.node.remote())
        except exceptions.RayActorError:
            return
        api.sleep(0.2)
    raise AssertionError("an actor of a removed placement group still answers after 10 s")


def _use(pg: Any, shape: _Shape, draws: Random) -> None:
    """Tasks in chosen bundles, an actor in one; removal must kill the actor."""
    from shoal.runtime.api.placement_group import placement_group_table
    from shoal.runtime.api.scheduling_strategies import PlacementGroupSchedulingStrategy

    import shoal
    from shoal import exceptions

    task = shoal.remote(max_retries=1)(booked_task)
    refs = []
    for _ in range(shape.tasks):
        index = draws.randrange(pg.bundle_count)
        capacity = pg.bundle_specs[index]["CPU"]
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)
        refs.append(task.options(num_cpus=capacity, scheduling_strategy=strategy).remote(
            pg.id.hex(), index, capacity, capacity, 0.05 + draws.random() * 0.3))
    member = shoal.remote(Member).options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=draws.randrange(pg.bundle_count))).remote()
    row = placement_group_table(pg)
    assert row["state"] != "CREATED" or len(row["bundles_to_node_id"]) == pg.bundle_count, row
    for ref in refs:
        try:
            shoal.get(ref)
        except exceptions.RayError:
            continue  # its worker or node died, or the group lost the bundle meanwhile
    try:
        shoal.get(member.node.remote())
    except exceptions.RayError:
        pass  # its node died: it may come back once the bundle is rescheduled
    pg.member = member  # removed with the group below; checked then


class PlacementGroupsWorkload(SettlingWorkload):
    """Runs ``placement_groups_program`` and checks the cluster settles clean afterwards."""

    name = "placement_groups"

    def __init__(self, rng: Random) -> None:
        self._program_rng = Random(rng.getrandbits(64))
        super().__init__(rng, lambda: None)
        self._bookings: _Bookings | None = None

    def setup(self, sim: ClusterSim) -> None:
        global _BOOKINGS
        self._main = placement_groups_program(self._program_rng, len(sim.node_ids),
                                              sim.config.until_s)
        self._bookings = _BOOKINGS = _Bookings(sim)
        super().setup(sim)

    def stats(self) -> dict[str, Any]:
        result = self.thread.result if self.thread is not None and self.thread.finished else None
        return {"bundle_tasks": self._bookings.tasks if self._bookings else 0,
                "groups_created": (result or {}).get("created", 0)}

    def extra_leaks(self) -> list[str]:
        gcs = self.gcs_kernel()
        if gcs is None:
            return ["the GCS is down"]
        groups = gcs.placement_groups
        out = [f"placement group {row.pg_id!r} is still {row.state.value}"
               for row in groups.rows if row.state.value != "REMOVED"]
        if groups.releases:
            out.append(f"the GCS is still giving back bundles {groups.releases}")
        return out + [f"actor {row.actor_id} is still {row.phase.value}"
                      for row in gcs.actors.rows if row.phase.value != "DEAD"]
