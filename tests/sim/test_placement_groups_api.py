"""Placement groups through the public API, in the simulator: creation per strategy, tasks and
actors in bundles, removal (actors die with a clear cause), pending groups, names, the
table, rescheduling after a node dies, and bad input."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from shoal.runtime.api.exceptions import RayActorError
from shoal.runtime.api.placement_group import (
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from shoal.runtime.api.scheduling_strategies import PlacementGroupSchedulingStrategy
from shoal.sim import Simulation
from shoal.sim import api as sim_api

import shoal


@shoal.remote(num_cpus=0.5)
def where() -> str:
    return shoal.get_runtime_context().get_node_id()


def in_bundle(pg: Any, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


def all_nodes_up(count: int) -> None:
    """The program starts as nodes join: wait until ``count`` are alive (a soft strategy
    would otherwise rightly use the nodes there are)."""
    while sum(1 for n in shoal.nodes() if n["Alive"]) < count:
        sim_api.sleep(0.5)


def run(main: Any, *, seed: int = 1, nodes: int = 3, faults: str = "none") -> Any:
    def program() -> Any:
        all_nodes_up(nodes)
        return main()

    result = Simulation(seed=seed, nodes=nodes, faults=faults, until=120).run(program)
    assert result.error is None, f"seed {seed}: {result.error!r}"
    assert not result.violations, f"seed {seed}: {result.violations}"
    return result.value


@pytest.mark.parametrize("strategy,distinct", [
    ("STRICT_SPREAD", {3}), ("STRICT_PACK", {1}), ("PACK", {1, 2}), ("SPREAD", {3})])
def test_tasks_run_on_the_nodes_of_their_bundles(strategy: str, distinct: set[int]) -> None:
    """Nodes have 1 to 8 CPUs (drawn from the seed): half-CPU bundles fit on any."""
    def main() -> tuple[dict[int, str], list[str]]:
        pg = placement_group([{"CPU": 0.5}] * 3, strategy=strategy)
        assert pg.wait(30)
        nodes = placement_group_table(pg)["bundles_to_node_id"]
        ran = shoal.get([where.options(scheduling_strategy=in_bundle(pg, i)).remote()
                         for i in range(3)])
        remove_placement_group(pg)
        return nodes, ran

    nodes, ran = run(main)
    assert ran == [nodes[0], nodes[1], nodes[2]]
    assert len(set(ran)) in distinct


def test_a_bundle_is_never_double_booked() -> None:
    """Two one-CPU tasks in a one-CPU bundle run one after the other, never together."""
    @shoal.remote(num_cpus=1)
    def span() -> tuple[float, float]:
        start = sim_api.now()
        sim_api.sleep(1.0)
        return start, sim_api.now()

    def main() -> list[tuple[float, float]]:
        pg = placement_group([{"CPU": 1}])
        assert pg.wait(30)
        spans = shoal.get([span.options(placement_group=pg).remote() for _ in range(3)])
        remove_placement_group(pg)
        return sorted(spans)

    spans = run(main, nodes=1)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end


def test_removal_kills_the_actors_of_the_group_with_a_clear_cause() -> None:
    @shoal.remote
    class Counter:
        def node(self) -> str:
            return shoal.get_runtime_context().get_node_id()

    def main() -> tuple[str, str]:
        pg = placement_group([{"CPU": 1}], name="grp")
        assert pg.wait(30)
        actor = Counter.options(scheduling_strategy=in_bundle(pg, 0)).remote()
        node = shoal.get(actor.node.remote())
        remove_placement_group(pg)
        with pytest.raises(RayActorError) as info:
            shoal.get(actor.node.remote())
        return node, str(info.value)

    node, error = run(main)
    assert node.startswith("n")
    assert "was killed because its placement group" in error and "was removed" in error


def test_a_group_that_fits_nowhere_stays_pending_and_names_resolve() -> None:
    def main() -> tuple[bool, str, str, bool]:
        big = placement_group([{"CPU": 1000}], name="big")
        waited = big.wait(2)
        row = placement_group_table(big)
        same = get_placement_group("big") == big
        remove_placement_group(big)
        with pytest.raises(ValueError, match="Failed to look up placement group"):
            get_placement_group("big")
        return waited, row["state"], row["stats"]["scheduling_state"], same

    waited, state, why, same = run(main)
    assert (waited, state, same) == (False, "PENDING", True)
    assert "fits on no live node" in why


@shoal.remote(num_cpus=0)
def remove_after(groups: list[Any], seconds: float) -> None:
    sim_api.sleep(seconds)
    for pg in groups:
        remove_placement_group(pg)


def test_wait_asks_the_gcs_and_is_answered_on_creation_timeout_or_removal() -> None:
    """``pg.wait`` runs no task: a pending group's wait returns True the moment room
    frees (here: a task removes the groups holding every CPU), False after its timeout,
    and raises for a removed group."""
    def main() -> tuple[Any, ...]:
        # One group per node, as big as the node (largest first, so each finds its node).
        cpus = sorted((n["Resources"]["CPU"] for n in shoal.nodes() if n["Alive"]), reverse=True)
        hogs = [placement_group([{"CPU": c}]) for c in cpus]
        assert all(hog.wait(30) for hog in hogs)
        later = placement_group([{"CPU": 1}])
        started = sim_api.now()
        early = later.wait(1.5), later.wait(0)
        timed_out_after = sim_api.now() - started
        remove_after.remote(hogs, 2.0)
        started = sim_api.now()
        ready = later.wait(30)
        ready_after = sim_api.now() - started
        remove_placement_group(later)
        with pytest.raises(ValueError, match="was removed, so it will never be ready"):
            later.wait(5)
        return early, timed_out_after, ready, ready_after

    early, timed_out_after, ready, ready_after = run(main)
    assert early == (False, False)
    assert 1.5 <= timed_out_after < 2.5, timed_out_after
    assert ready and 2.0 <= ready_after < 5.0, ready_after


def test_pipelined_creates_and_removals_are_seen_by_the_next_request() -> None:
    """Unnamed creates and removals do not wait for the GCS, yet the process's next
    request sees them: the table lists a group just created and shows a group just
    removed as removed, and a name freed by a removal can be taken at once."""
    def main() -> tuple[list[str], list[str], bool]:
        groups = [placement_group([{"CPU": 0.1}]) for _ in range(5)]
        listed = [placement_group_table(pg)["state"] for pg in groups]
        named = placement_group([{"CPU": 0.1}], name="again")
        for pg in [*groups, named]:
            remove_placement_group(pg)
        removed = [placement_group_table(pg)["state"] for pg in groups]
        reused = placement_group([{"CPU": 0.1}], name="again")
        ok = reused.wait(30)
        remove_placement_group(reused)
        return listed, removed, ok

    listed, removed, ok = run(main)
    assert set(listed) <= {"PENDING", "CREATED"} and len(listed) == 5
    assert removed == ["REMOVED"] * 5 and ok


def test_a_taken_name_and_bad_bundles_are_refused() -> None:
    def main() -> list[str]:
        errors = []
        pg = placement_group([{"CPU": 1}], name="web")
        for bad in (lambda: placement_group([{"CPU": 1}], name="web"),
                    lambda: placement_group([]),
                    lambda: placement_group([{"CPU": 0}]),
                    lambda: placement_group([{"CPU": 1}], strategy="TIGHT"),
                    lambda: where.options(scheduling_strategy=in_bundle(pg, 5)).remote()):
            with pytest.raises(ValueError) as info:
                bad()
            errors.append(str(info.value))
        pg.wait(30)
        remove_placement_group(pg)
        return errors

    errors = run(main)
    assert "belongs to placement group" in errors[0]
    assert "non-empty list" in errors[1] and "asks for nothing" in errors[2]
    assert "Invalid placement group strategy" in errors[3] and "out of range" in errors[4]


def test_bundles_on_a_dead_node_are_rescheduled() -> None:
    def main() -> tuple[str, str, str]:
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
        assert pg.wait(30)
        before = placement_group_table(pg)["bundles_to_node_id"]
        victim = before[1] if before[1] != shoal.get_runtime_context().get_node_id() else before[0]
        sim_api.kill_node(victim, restart_after=1000.0)
        for _ in range(60):
            sim_api.sleep(1.0)
            row = placement_group_table(pg)
            if row["state"] == "CREATED" and victim not in row["bundles_to_node_id"].values():
                break
        after = placement_group_table(pg)
        index = 1 if before[1] == victim else 0
        ran = shoal.get(where.options(scheduling_strategy=in_bundle(pg, index)).remote())
        remove_placement_group(pg)
        return victim, after["bundles_to_node_id"][index], ran

    victim, moved_to, ran = run(main, nodes=4)
    assert moved_to != victim and ran == moved_to


@pytest.mark.parametrize("seed", range(12))
def test_groups_and_tasks_under_chaos(seed: int) -> None:
    def main() -> list[str]:
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert pg.wait(100)
        ran = shoal.get([where.options(scheduling_strategy=in_bundle(pg, i)).remote()
                         for i in range(2)])
        remove_placement_group(pg)
        return ran

    ran = run(main, seed=seed, faults="lossy")
    assert len(set(ran)) == 2, f"seed {seed}"


def test_a_task_knows_its_current_placement_group() -> None:
    from shoal.util import get_current_placement_group

    @shoal.remote(num_cpus=0.5)
    def current() -> str | None:
        pg = get_current_placement_group()
        return pg.id.hex() if pg is not None else None

    def main() -> tuple[str | None, str | None, str]:
        pg = placement_group([{"CPU": 0.5}])
        assert pg.wait(30)
        inside = shoal.get(current.options(scheduling_strategy=in_bundle(pg, 0)).remote())
        outside = shoal.get(current.remote())
        remove_placement_group(pg)
        return inside, outside, pg.id.hex()

    inside, outside, pg_id = run(main)
    assert (inside, outside) == (pg_id, None)


def test_a_task_running_in_a_removed_group_fails_with_a_clear_error() -> None:
    @shoal.remote(num_cpus=0.5)
    def long_task() -> str:
        sim_api.sleep(30.0)
        return "finished"

    def main() -> str:
        pg = placement_group([{"CPU": 0.5}])
        assert pg.wait(30)
        ref = long_task.options(scheduling_strategy=in_bundle(pg, 0)).remote()
        sim_api.sleep(1.0)  # it runs now
        remove_placement_group(pg)
        with pytest.raises(shoal.exceptions.RayError) as info:
            shoal.get(ref)
        late = where.options(scheduling_strategy=in_bundle(pg, 0)).remote()
        with pytest.raises(shoal.exceptions.RayError, match="was removed"):
            shoal.get(late)
        return str(info.value)

    assert "placement group" in run(main)
