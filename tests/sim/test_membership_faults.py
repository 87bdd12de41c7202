"""Membership under faults: scripted partitions and crashes, and every profile over seeds."""

from __future__ import annotations

from random import Random

import pytest

from shoal.kernel.gcs import Gcs
from shoal.kernel.ids import NodeId, seconds
from shoal.kernel.raylet import MemberPhase, Raylet
from shoal.sim import PROFILES, RunConfig, run_simulation
from shoal.sim.engine import Engine
from shoal.sim.faults import FaultEvent, FaultPlan
from shoal.sim.harness import ClusterSim, _schedule_plan
from shoal.sim.network import Network
from shoal.sim.trace import Trace
from shoal.sim.workloads.membership import MembershipWorkload


def _cluster(nodes: int = 4) -> tuple[ClusterSim, MembershipWorkload]:
    config = RunConfig(seed=7, nodes=nodes)
    engine = Engine(Random(1), Network(rng=Random(2)), Trace())
    sim = ClusterSim(config, engine, Random(3), buggify_on=False)
    workload = MembershipWorkload(Random(4))
    workload.setup(sim)
    return sim, workload


def _gcs(sim: ClusterSim) -> Gcs:
    kernel = sim.engine.processes[next(iter(sim.engine.processes))].kernel
    assert isinstance(kernel, Gcs)
    return kernel


def _raylet(sim: ClusterSim, node: str) -> Raylet:
    for address, proc in sim.engine.processes.items():
        if address.node == node and address.component == "raylet":
            assert isinstance(proc.kernel, Raylet)
            return proc.kernel
    raise KeyError(node)


def test_partitioned_node_is_declared_dead_then_rejoins_with_new_incarnation() -> None:
    sim, workload = _cluster(4)
    lonely = NodeId("n3")
    sides = tuple((NodeId(f"n{i}"), int(i == 3)) for i in range(4))
    plan = FaultPlan(profile="scripted", events=[
        FaultEvent(at_ns=seconds(5), kind="partition", duration_ns=seconds(10), sides=sides)])
    _schedule_plan(sim, plan)
    engine, gcs = sim.engine, _gcs(sim)
    engine.run_until(seconds(4))
    assert gcs.nodes.info(lonely).state == "alive"
    first_incarnation = gcs.nodes.info(lonely).incarnation

    timeout = gcs.config.membership.heartbeat_timeout_ns
    engine.run_until(seconds(5) + timeout - seconds(1))
    assert gcs.nodes.info(lonely).state == "alive", "declared dead before the timeout"
    engine.run_until(seconds(14))
    info = gcs.nodes.info(lonely)
    assert info.state == "dead" and info.death_cause.startswith("missed heartbeats")
    for node in ("n0", "n1", "n2"):  # every reachable subscriber learned it
        view = _raylet(sim, node).node_view[lonely]
        assert (view.state, view.incarnation) == ("dead", first_incarnation), node
    # The cut-off node still thinks it is alive: it cannot hear the GCS.
    assert _raylet(sim, "n3").phase is MemberPhase.ALIVE

    engine.run_until(seconds(25))  # healed at 15 s
    info = gcs.nodes.info(lonely)
    assert info.state == "alive" and info.incarnation == first_incarnation + 1
    assert _raylet(sim, "n3").incarnation == first_incarnation + 1
    for node in ("n0", "n1", "n2", "n3"):
        view = _raylet(sim, node).node_view[lonely]
        assert (view.state, view.incarnation) == ("alive", first_incarnation + 1), node
    assert workload.done() and not sim.violations


def test_gcs_crash_and_restart_keeps_the_node_table() -> None:
    sim, workload = _cluster(3)
    gcs_addr = next(iter(sim.engine.processes))
    plan = FaultPlan(profile="scripted", events=[
        FaultEvent(at_ns=seconds(3), kind="crash", duration_ns=seconds(2), target=gcs_addr)])
    _schedule_plan(sim, plan)
    sim.engine.run_until(seconds(4))
    assert not sim.engine.processes[gcs_addr].alive
    sim.engine.run_until(seconds(12))
    gcs = _gcs(sim)
    assert [info.incarnation for info in gcs.node_table] == [1, 1, 1], (
        "a GCS restart shorter than the timeout must not kill any node")
    assert all(info.state == "alive" for info in gcs.node_table)
    assert workload.done() and not sim.violations


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_holds_its_invariants_over_many_seeds(profile: str) -> None:
    for seed in range(100):
        result = run_simulation(RunConfig(seed=seed, nodes=5, faults=profile, until_s=30))
        assert not result.violations, (
            f"seed {seed}: {result.violations}\nreplay: {result.config.replay_command()}\n"
            + "\n".join(result.trace_excerpt))


def test_faults_really_happen_under_chaos() -> None:
    kinds: dict[str, int] = {}
    dropped = 0
    for seed in range(30):
        result = run_simulation(RunConfig(seed=seed, nodes=5, faults="chaos"))
        for kind, count in result.plan["events"].items():  # type: ignore[union-attr]
            kinds[kind] = kinds.get(kind, 0) + count
        network = result.stats["network"]
        dropped += network["dropped_loss"] + network["dropped_partition"]
    assert {"partition", "crash", "clog"} <= set(kinds), kinds
    assert dropped > 0


def test_a_broken_invariant_is_reported_with_trace_and_replay() -> None:
    class Strict(MembershipWorkload):
        def done(self) -> bool:
            return False  # never satisfied: the liveness phase must report it

        def pending(self) -> str:
            return "a condition that never holds"

    result = run_simulation(RunConfig(seed=5, nodes=3, until_s=5, liveness_s=2),
                            Strict(Random(0)))
    assert len(result.violations) == 1
    assert "liveness" in result.violations[0] and "never holds" in result.violations[0]
    assert result.trace_excerpt, "the trace before the violation is shown"
    assert result.config.replay_command().startswith("shoal sim run --seed 5 --nodes 3")
