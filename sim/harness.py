"""One simulated run: a workload on a cluster, under a seed's faults, checked throughout.

``run_simulation(RunConfig(...))`` builds the engine, lets the workload add its
processes, draws the seed's ``FaultPlan`` and schedules it, then runs two phases:

* **safety** (``until_s`` of virtual time): faults on; every kernel's
  ``check_invariants`` after every step, and the workload's checkers observe
  every step. The first violation stops the run.
* **liveness** (up to ``liveness_s``): every fault healed, crashed processes
  restarted, BUGGIFY off; the workload must report ``done()`` within the budget,
  or the run reports a liveness violation saying what is still pending.

All randomness comes from ``Random(seed)``: the network, the fault plan, each
process's BUGGIFY source and the workload each get their own stream, derived in
a fixed order, so changing one consumer does not shift the others' draws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol

from shoal.kernel.buggify import Buggify
from shoal.kernel.ids import NANOS_PER_SECOND, NodeId
from shoal.kernel.messages import Address
from shoal.sim.engine import Engine, KernelFactory, SimProcess, SimulationCrash
from shoal.sim.faults import PROFILES, FaultEvent, FaultPlan, draw_plan
from shoal.sim.network import LinkModel, Network
from shoal.sim.trace import Trace

LIVENESS_POLL_NS = NANOS_PER_SECOND // 10


class Workload(Protocol):
    """What a workload provides to the harness (see ``shoal.sim.workloads``)."""

    def setup(self, sim: ClusterSim) -> None: ...
    def crash_targets(self) -> list[Address]: ...
    def done(self) -> bool: ...
    def pending(self) -> str: ...


@dataclass(slots=True)
class RunConfig:
    seed: int
    nodes: int = 4
    workload: str = "membership"
    faults: str = "none"
    until_s: float = 30.0
    liveness_s: float = 60.0
    check: bool = True

    def replay_command(self) -> str:
        return (f"shoal sim run --seed {self.seed} --nodes {self.nodes} "
                f"--workload {self.workload} --faults {self.faults} --until {self.until_s:g}")


@dataclass(slots=True)
class RunResult:
    config: RunConfig
    trace_hash: str
    events: int
    sim_seconds: float
    wall_seconds: float
    violations: list[str]
    trace_excerpt: list[str]
    plan: dict[str, object]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.config.seed, "nodes": self.config.nodes,
            "workload": self.config.workload, "faults": self.config.faults,
            "trace_hash": self.trace_hash, "events": self.events,
            "sim_seconds": round(self.sim_seconds, 6),
            "wall_seconds": round(self.wall_seconds, 6),
            "violations": list(self.violations), "plan": self.plan, "stats": self.stats,
            "replay": self.config.replay_command(),
        }


class ClusterSim:
    """The handle a workload uses to build its cluster and report violations."""

    def __init__(self, config: RunConfig, engine: Engine, rng: Random, buggify_on: bool):
        self.config = config
        self.engine = engine
        self.rng = rng
        self._buggify_on = buggify_on
        self.buggify_sources: list[Buggify] = []
        self.node_ids: list[NodeId] = [NodeId(f"n{i}") for i in range(config.nodes)]
        self.violations: list[str] = []
        self.trace_excerpt: list[str] = []

    @property
    def now(self) -> int:
        return self.engine.now

    def add_process(self, address: Address, factory: KernelFactory) -> SimProcess:
        buggify = Buggify(self.rng.getrandbits(64), enabled=self._buggify_on)
        self.buggify_sources.append(buggify)
        return self.engine.add_process(address, factory, buggify)

    def violation(self, message: str) -> None:
        """Records a broken invariant and stops the run at this step."""
        stamped = f"t={self.engine.now / NANOS_PER_SECOND:.6f}s: {message}"
        if not self.violations:
            self.trace_excerpt = self.engine.trace.recent_lines()
        self.violations.append(stamped)
        self.engine.stop()


def run_simulation(config: RunConfig, workload: Workload | None = None) -> RunResult:
    """Runs one seeded simulation and returns what happened."""
    from shoal.sim.workloads import make_workload

    started = time.perf_counter()
    made_here = workload is None  # then its threads end here: none outlives the run
    profile = PROFILES[config.faults]
    root = Random(config.seed)
    net_rng, fault_rng, bug_rng, work_rng = (Random(root.getrandbits(64)) for _ in range(4))
    engine = Engine(root, Network(rng=net_rng, model=LinkModel()), Trace(), check=config.check)
    workload = workload or make_workload(config.workload, work_rng)
    safety_ns = int(config.until_s * NANOS_PER_SECOND)
    plan = FaultPlan(profile=profile.name)
    sim = ClusterSim(config, engine, bug_rng, buggify_on=profile.buggify)
    try:
        workload.setup(sim)
        plan = draw_plan(profile, fault_rng, nodes=sim.node_ids,
                         crash_targets=workload.crash_targets(), safety_ns=safety_ns)
        for source in sim.buggify_sources:
            source.enabled = plan.buggify
        _schedule_plan(sim, plan)
        engine.run_until(safety_ns)
        if not sim.violations:
            _run_liveness(sim, workload, config)
    except SimulationCrash as crash:
        sim.violation(f"crash: {crash}")
    result = RunResult(
        config=config, trace_hash=engine.trace.digest, events=engine.trace.events,
        sim_seconds=engine.now / NANOS_PER_SECOND,
        wall_seconds=time.perf_counter() - started, violations=sim.violations,
        trace_excerpt=sim.trace_excerpt, plan=plan.summary(),
        stats={"network": _network_stats(engine.network),
               **(workload.stats() if hasattr(workload, "stats") else {})},
    )
    if made_here and hasattr(workload, "shutdown"):
        workload.shutdown()  # after the digest: unwinding user threads adds nothing to it
    return result


def _network_stats(network: Network) -> dict[str, int]:
    s = network.stats
    return {"sent": s.sent, "dropped_loss": s.dropped_loss,
            "dropped_partition": s.dropped_partition, "duplicated": s.duplicated}


def _schedule_plan(sim: ClusterSim, plan: FaultPlan) -> None:
    engine, network = sim.engine, sim.engine.network
    network.model.loss_p, network.model.dup_p = plan.loss_p, plan.dup_p
    network.model.reorder_p = plan.reorder_p
    for index, event in enumerate(plan.events):
        engine.call_at(event.at_ns, _fault_starter(sim, index, event))


def _fault_starter(sim: ClusterSim, index: int, event: FaultEvent) -> Any:
    engine, network = sim.engine, sim.engine.network

    def begin() -> None:
        engine.trace.note(engine.now, f"fault.{event.kind}", event)
        end_at = engine.now + event.duration_ns
        if event.kind == "partition":
            network.partitions[index] = dict(event.sides)
            engine.call_at(end_at, lambda: network.partitions.pop(index, None))
        elif event.kind == "clog" and event.link is not None:
            network.clogged_until[event.link] = max(
                network.clogged_until.get(event.link, 0), end_at)
        elif event.kind == "crash" and event.target is not None:
            target = _resolve_target(engine, event.target)
            if target is None:
                return
            engine.crash(target)
            if engine.processes[target].restartable:
                engine.call_at(end_at, lambda: engine.start(target))

    return begin


def _resolve_target(engine: Engine, target: Address) -> Address | None:
    """A ``worker="*"`` target names some live worker of that node, drawn now."""
    if target.worker != "*":
        return target
    live = [a for a, p in engine.processes.items()
            if a.node == target.node and a.component == target.component and p.alive]
    return live[engine.rng.randrange(len(live))] if live else None


def _run_liveness(sim: ClusterSim, workload: Workload, config: RunConfig) -> None:
    engine = sim.engine
    if workload.done():
        return
    engine.network.heal()
    for source in sim.buggify_sources:
        source.enabled = False
    engine.trace.note(engine.now, "heal")
    for address, proc in list(engine.processes.items()):
        if not proc.alive and proc.restartable:
            engine.start(address)
    deadline = engine.now + int(config.liveness_s * NANOS_PER_SECOND)
    while not engine.stopped:
        if workload.done():
            return
        if engine.now >= deadline:
            sim.violation(
                f"liveness: work still pending {config.liveness_s:g}s after every fault "
                f"healed: {workload.pending()}")
            return
        engine.run_until(engine.now + LIVENESS_POLL_NS)
