"""A driver that dies ends its job, in the simulator: a second driver creates a
non-detached actor, a detached actor and a placement group, and crashes; its raylet
reports the exit, and the GCS kills the actor it owned and removes its group, while
the detached actor lives on."""

from __future__ import annotations

from random import Random
from typing import Any

import pytest
from shoal.runtime.api.placement_group import placement_group
from shoal.sim import RunConfig, api, run_simulation
from shoal.sim.program import ProgramWorkload

import shoal


@shoal.remote(num_cpus=0.25)  # nodes have at least 1 CPU (drawn from the seed)
class Holder:
    def ping(self) -> str:
        return "pong"


def _second_job(state: dict[str, Any]) -> None:
    restarts = state.get("max_restarts", 0)  # under crash faults: outlive injected crashes
    options = {"max_restarts": restarts, "max_task_retries": restarts}
    temporary = Holder.options(name="temporary", **options).remote()
    kept = Holder.options(name="kept", lifetime="detached", **options).remote()
    group = placement_group([{"CPU": 0.5}])
    assert group.wait(30)
    assert shoal.get([temporary.ping.remote(), kept.ping.remote()]) == ["pong", "pong"]
    state["group"] = group.id.hex()
    state["ready"] = True
    api.sleep(1000.0)  # until its process is killed


def _main(state: dict[str, Any]) -> dict[str, Any]:
    while sum(1 for n in shoal.nodes() if n["Alive"]) < 1:
        api.sleep(0.5)
    total = shoal.cluster_resources()["CPU"]
    driver = api.start_driver(lambda: _second_job(state), name="job2")
    while "ready" not in state:
        api.sleep(0.5)
    api.sleep(2.0)  # the resource view catches up with the job's holdings
    state["held"] = total - shoal.available_resources().get("CPU", 0.0)
    api.kill_driver(driver)
    api.sleep(5.0)  # its raylet's report reaches the GCS; the view catches up again
    state["freed"] = total - shoal.available_resources().get("CPU", 0.0)
    assert shoal.get(shoal.get_actor("kept").ping.remote()) == "pong"
    with pytest.raises(ValueError, match="Failed to look up actor"):
        shoal.get_actor("temporary")
    return state


def _run(seed: int, faults: str = "none", *, nodes: int = 1,
         max_restarts: int = 0) -> tuple[ProgramWorkload, dict[str, Any]]:
    state: dict[str, Any] = {"max_restarts": max_restarts}
    workload = ProgramWorkload(Random(seed), lambda: _main(state))
    try:
        report = run_simulation(RunConfig(seed=seed, nodes=nodes, workload="program", until_s=120,
                                          faults=faults), workload)
    finally:
        workload.shutdown()
    assert workload.thread is not None and workload.thread.error is None, \
        repr(workload.thread.error if workload.thread else None)
    assert not report.violations, report.violations
    return workload, state


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_crashed_driver_takes_its_actor_and_group_but_not_the_detached_actor(
        seed: int) -> None:
    workload, state = _run(seed)
    gcs = workload._gcs_proc.kernel  # type: ignore[attr-defined]
    rows = {r.spec.name: r for r in gcs.actors.rows}
    assert rows["temporary"].phase.value == "DEAD"
    assert rows["temporary"].death.kind == "owner_died"
    assert "its driver n0/driver/job2 exited" in rows["temporary"].death.message
    assert rows["kept"].phase.value == "ALIVE"
    assert gcs.placement_groups.row(state["group"]).state.value == "REMOVED"
    assert [str(j.driver) for j in gcs.jobs.finished] == ["n0/driver/job2"]
    assert state["held"] == 1.0  # both actors and the group's bundle
    assert state["freed"] == 0.25  # only the detached actor
    raylet = workload._raylets["n0"].kernel  # type: ignore[attr-defined]
    assert raylet.drivers.pending == ()  # the GCS acknowledged the report


def test_the_job_end_survives_a_lossy_network() -> None:
    workload, state = _run(seed=4, faults="lossy")
    gcs = workload._gcs_proc.kernel  # type: ignore[attr-defined]
    rows = {r.spec.name: r for r in gcs.actors.rows}
    assert rows["temporary"].phase.value == "DEAD" and rows["kept"].phase.value == "ALIVE"
    assert gcs.placement_groups.row(state["group"]).state.value == "REMOVED"


@pytest.mark.parametrize("faults", ["crash", "chaos"])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_job_end_survives_crashes_of_raylets_gcs_and_workers(faults: str, seed: int) -> None:
    """Actors that restart forever: only the job's end may kill the temporary one."""
    workload, state = _run(seed, faults, nodes=2, max_restarts=-1)
    gcs = workload._gcs_proc.kernel  # type: ignore[attr-defined]
    rows = {r.spec.name: r for r in gcs.actors.rows}
    assert rows["temporary"].phase.value == "DEAD"
    assert rows["temporary"].death.kind == "owner_died"
    assert rows["kept"].phase.value != "DEAD"
    assert gcs.placement_groups.row(state["group"]).state.value == "REMOVED"
    assert [str(j.driver) for j in gcs.jobs.finished] == ["n0/driver/job2"]
