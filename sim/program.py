"""Running a user's shoal program inside the simulator.

``Simulation(seed=..., nodes=..., faults=...).run(main)`` builds a simulated
cluster (the GCS and a raylet per node, under the membership checkers), adds a
driver process on the head node, and runs ``main`` as baton-threaded user code
at virtual time zero. Faults follow the seed's plan during the safety phase; the
run ends as soon as ``main`` returns. If ``main`` is still blocked when the
faults heal, it has ``liveness`` virtual seconds more to finish.

Inside ``main``, the functions of ``shoal.sim.api`` (``now``, ``sleep``,
``nodes``, the internal KV) block on shoal's clock and kernels, never on the
wall clock, so a program replays exactly from its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Any

from shoal.kernel.buggify import Buggify
from shoal.kernel.gcs import gcs_address
from shoal.kernel.gcs_client import CallCompleted, GcsClient, KvCallRequested
from shoal.kernel.gcs.protocol import KvRequest
from shoal.kernel.messages import Address
from shoal.sim.baton import Baton, SimFuture, UserThread
from shoal.sim.engine import SimProcess, Store
from shoal.sim.harness import ClusterSim, RunConfig, RunResult, run_simulation
from shoal.sim.workloads.membership import MembershipWorkload


class ProgramContext:
    """What the API functions reach from a user thread: the driver and its calls."""

    def __init__(self, sim: ClusterSim, baton: Baton, driver: Address) -> None:
        self.sim = sim
        self.baton = baton
        self.driver = driver
        self._calls: dict[int, SimFuture] = {}
        self._next_call = 1

    def driver_kernel(self) -> GcsClient:
        kernel = self.sim.engine.processes[self.driver].kernel
        assert isinstance(kernel, GcsClient)
        return kernel

    def kv_call(self, request: KvRequest) -> Any:
        """Sends one KV request through the driver's GCS client and blocks for the answer."""
        call_id = self._next_call
        self._next_call += 1
        future = self._calls[call_id] = SimFuture()
        event = KvCallRequested(call_id=call_id, request=request)
        self.sim.engine.call_at(self.sim.now, lambda: self._inject(event, future))
        return self.baton.block(future)

    def _inject(self, event: KvCallRequested, future: SimFuture) -> None:
        if not self.sim.engine.inject(self.driver, event):
            self.baton.resolve(future, error=RuntimeError("the driver process is not running"))

    def on_completed(self, proc: SimProcess, effect: Any) -> None:
        assert isinstance(effect, CallCompleted)
        future = self._calls.pop(effect.call_id, None)
        if future is None:
            return
        if effect.error:
            self.baton.resolve(future, error=ValueError(effect.error))
        else:
            self.baton.resolve(future, value=effect.value)


class ProgramWorkload(MembershipWorkload):
    """The membership cluster plus a driver running the user's ``main``."""

    name = "program"

    def __init__(self, rng: Random, main: Callable[[], Any]) -> None:
        super().__init__(rng)
        self._main = main
        self.thread: UserThread | None = None
        self.context: ProgramContext | None = None

    def setup(self, sim: ClusterSim) -> None:
        super().setup(sim)
        head = sim.node_ids[0]
        driver = Address(node=head, component="driver")
        gcs = gcs_address(head)

        def build(boot: int, store: Store, buggify: Buggify) -> GcsClient:
            return GcsClient(gcs)

        sim.add_process(driver, build)
        baton = Baton(sim.engine)
        self.context = ProgramContext(sim, baton, driver)
        sim.engine.effect_handlers[CallCompleted] = self.context.on_completed
        baton.on_finished.append(lambda thread: sim.engine.stop())
        sim.engine.start(driver)
        self.thread = baton.spawn(self._run_main, name="driver")

    def _run_main(self) -> Any:
        from shoal.sim import api

        api._bind(self.context)
        return self._main()

    def done(self) -> bool:
        return self.thread is not None and self.thread.finished

    def pending(self) -> str:
        return "the program's main() has not returned"


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
            if workload.context is not None:
                workload.context.baton.shutdown()
        thread = workload.thread
        error = thread.error if thread else None
        if error is not None:
            report.violations.append(
                f"the program raised {type(error).__name__}: {error}")
        return SimulationResult(value=thread.result if thread else None, error=error,
                                report=report)
