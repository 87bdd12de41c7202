"""Running a user's shoal program inside the simulator.

``Simulation(seed=..., nodes=..., faults=...).run(main)`` builds a simulated
cluster (the GCS and a raylet per node, under the membership checkers), adds a
driver process (a ``CoreWorker``) on the head node, and runs ``main`` as
baton-threaded user code at virtual time zero. Inside ``main`` the public API
works unmodified: ``shoal.remote``, ``.remote()``, ``shoal.get/put/wait/cancel``
go through the driver's core worker; raylets start simulated worker processes
that run task bodies in baton threads of their own. ``shoal.sim.api`` adds
shoal's clock (``now``, ``sleep``), the node table and the internal KV.

Faults follow the seed's plan during the safety phase; the run ends as soon as
``main`` returns. If ``main`` is still blocked when the faults heal, it has
``liveness`` virtual seconds more to finish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

from shoal.kernel.gcs import gcs_address
from shoal.kernel.messages import Address
from shoal.sim.baton import Baton, UserThread
from shoal.sim.harness import ClusterSim, RunConfig, RunResult, run_simulation
from shoal.sim.task_host import TaskHost
from shoal.sim.workloads.membership import MembershipWorkload


class ProgramWorkload(MembershipWorkload):
    """The membership cluster plus a driver running the user's ``main``."""

    name = "program"

    def __init__(self, rng: Random, main: Callable[[], Any]) -> None:
        super().__init__(rng)
        self._main = main
        self.thread: UserThread | None = None
        self.host: TaskHost | None = None
        self.baton: Baton | None = None
        self.driver: Address | None = None

    def setup(self, sim: ClusterSim) -> None:
        super().setup(sim)
        head = sim.node_ids[0]
        self.driver = Address(node=head, component="driver")
        self.baton = Baton(sim.engine)
        self.host = TaskHost(sim, self.baton, gcs_address(head))
        self.host.add_core_worker(self.driver)
        sim.engine.start(self.driver)
        self.thread = self.host.spawn(self.driver, self._main, name="driver")
        self.baton.on_finished.append(self._on_thread_finished)

    def _on_thread_finished(self, thread: UserThread) -> None:
        if thread is self.thread:
            self.on_main_finished()

    def on_main_finished(self) -> None:
        """The run ends when ``main`` returns (workloads may check more first)."""
        assert self._sim is not None
        self._sim.engine.stop()

    def crash_targets(self) -> list[Address]:
        targets = super().crash_targets()
        # A "*" worker is resolved when the fault fires: some live worker of that node.
        return targets + [Address(node=n, component="worker", worker="*")
                          for n in self._raylets]

    def done(self) -> bool:
        return self.thread is not None and self.thread.finished

    def pending(self) -> str:
        return "the program's main() has not returned"

    def shutdown(self) -> None:
        if self.baton is not None:
            self.baton.shutdown()


@dataclass(slots=True)
class SimulationResult:
    """What ``Simulation.run`` returns: the program's value and the run's report."""

    value: Any
    error: BaseException | None
    report: RunResult

    @property
    def violations(self) -> list[str]:
        return self.report.violations

    @property
    def trace_hash(self) -> str:
        return self.report.trace_hash


class Simulation:
    """A whole simulated cluster in this process, on virtual time, from one seed."""

    def __init__(
        self, seed: int = 0, nodes: int = 4, faults: str = "none",
        until: float = 300.0, liveness: float = 300.0,
    ) -> None:
        from shoal.sim.faults import PROFILES

        if faults not in PROFILES:
            raise ValueError(
                f"unknown fault profile {faults!r}; choose one of: {', '.join(PROFILES)}")
        if nodes < 1:
            raise ValueError(f"a simulation needs at least 1 node, got nodes={nodes}")
        self.config = RunConfig(seed=seed, nodes=nodes, workload="program", faults=faults,
                                until_s=until, liveness_s=liveness)

    def run(self, main: Callable[[], Any]) -> SimulationResult:
        """Runs ``main`` on the simulated cluster; returns its value and the run's report."""
        workload = ProgramWorkload(Random(self.config.seed ^ 0x5EED), main)
        try:
            report = run_simulation(self.config, workload)
        finally:
            workload.shutdown()
        thread = workload.thread
        error = thread.error if thread else None
        if error is not None:
            report.violations.append(f"the program raised {type(error).__name__}: {error}")
        return SimulationResult(value=thread.result if thread else None, error=error,
                                report=report)
