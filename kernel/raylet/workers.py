"""The raylet's worker pool: starting, registering, leasing and retiring worker processes.

Theory of operation
-------------------
A worker moves ``STARTING -> IDLE -> LEASED -> IDLE ... -> DEAD`` (see
``_TRANSITIONS``). ``start`` mints an id ``f"{node}.b{boot}.w{n}"`` (unique
across raylet restarts, since ``boot`` grows with every process start) and
emits ``StartWorker`` plus a registration deadline. The process registers with
``RegisterWorker`` from ``Address(node, "worker", worker_id)``; a worker that
has not registered by the deadline is killed (``KillWorker``) and forgotten, and
the lease manager starts a replacement if it still needs one. A dead worker is
removed from the pool at once (its resources are the lease manager's to free);
a later ``WorkerExited`` for it is stale.

Limits: the pool holds at most ``limit`` live workers: ``workers_max`` (default:
the node's CPU count, at least 1) plus one per blocked worker, so a worker
blocked in ``get`` does not keep the node from running the tasks it waits for.
Idle workers beyond the soft limit (``workers_max``) are killed once idle for
``idle_timeout_ns``, oldest idle first, by one sweep timer.

Blocked: a leased worker blocked in a ``get`` is flagged ``blocked`` (the lease
manager lends its CPU back); the flag clears when it unblocks or is returned.

Departed: the ids of registered workers that ended are kept in order (the last
``DEPARTED_MAX``), so the raylet can tell the GCS, and through it every other
raylet, that whatever those workers owned elsewhere is orphaned.

Idle workers are only killed when ``idle_timeout_ns`` is set: an idle worker may
still own objects and leases (Ray asks the worker, and it refuses to exit while
it owns anything); until the worker can answer such a request, killing idle
workers is opt-in.

Invariants (``check_invariants``): every worker is in a live phase; a worker is
LEASED exactly when it has a lease id; only leased workers are blocked; the
idle index lists exactly the idle workers; every starting worker's id was
minted by this pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import msgspec

from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.ids import NANOS_PER_SECOND, Nanos, NodeId, WorkerId
from shoal.kernel.messages import Address, CancelTimer, Msg, SetTimer
from shoal.kernel.raylet.protocol import KillWorker, StartWorker

WORKER_START_TIMER_PREFIX = "raylet.worker_start:"
IDLE_SWEEP_TIMER = "raylet.idle_sweep"
DEPARTED_MAX = 1024


class WorkerPoolConfig(msgspec.Struct, frozen=True, kw_only=True):
    workers_max: int = 0  # 0: the node's CPU count, at least 1
    register_timeout_ns: Nanos = 30 * NANOS_PER_SECOND
    idle_timeout_ns: Nanos = 0  # 0: never kill idle workers (see the module docstring)


class WorkerPhase(Enum):
    STARTING = "starting"
    IDLE = "idle"
    LEASED = "leased"
    DEAD = "dead"


_TRANSITIONS: dict[tuple[WorkerPhase | None, WorkerPhase], str] = {
    (None, WorkerPhase.STARTING): "started",
    (WorkerPhase.STARTING, WorkerPhase.IDLE): "registered",
    (WorkerPhase.IDLE, WorkerPhase.LEASED): "leased",
    (WorkerPhase.LEASED, WorkerPhase.IDLE): "returned",
    (WorkerPhase.STARTING, WorkerPhase.DEAD): "exited, or never registered",
    (WorkerPhase.IDLE, WorkerPhase.DEAD): "exited, or idle too long",
    (WorkerPhase.LEASED, WorkerPhase.DEAD): "exited, or killed with its lease",
}


@dataclass(slots=True, eq=False)
class Worker:
    worker_id: WorkerId
    phase: WorkerPhase
    since_ns: Nanos  # when it started (STARTING) or became idle (IDLE)
    lease_id: str = ""
    blocked: bool = False


class WorkerPool:
    """The workers of one raylet process: a sub-machine of the lease manager."""

    def __init__(self, node_id: NodeId, boot: int, config: WorkerPoolConfig, cpus: float) -> None:
        self.node_id = node_id
        self._prefix = f"{node_id}.b{boot}.w"
        self._next = 1
        self._config = config
        self.soft_limit = config.workers_max if config.workers_max > 0 else max(int(cpus), 1)
        self._workers: dict[WorkerId, Worker] = {}
        self._idle: dict[WorkerId, None] = {}  # oldest idle first
        self._sweep_at: Nanos | None = None
        self._departed: list[WorkerId] = []
        self.departed_total = 0  # registered workers ever removed; the list keeps the last few
        self.dedicated = 0  # actor workers, leased or on their way: each has a slot of its own

    # --- introspection ---------------------------------------------------

    def get(self, worker_id: WorkerId) -> Worker | None:
        return self._workers.get(worker_id)

    @property
    def workers(self) -> tuple[Worker, ...]:
        return tuple(self._workers.values())

    def count(self, phase: WorkerPhase) -> int:
        return sum(1 for w in self._workers.values() if w.phase is phase)

    @property
    def blocked_count(self) -> int:
        return sum(1 for w in self._workers.values() if w.blocked)

    @property
    def limit(self) -> int:
        return self.soft_limit + self.blocked_count + self.dedicated

    def free_slots(self) -> int:
        """How many more leases workers could serve: idle, on their way, or startable."""
        room = max(self.limit - len(self._workers), 0)
        return len(self._idle) + self.count(WorkerPhase.STARTING) + room

    def address(self, worker_id: WorkerId) -> Address:
        return Address(node=self.node_id, component="worker", worker=worker_id)

    # --- moves -----------------------------------------------------------

    def can_start(self) -> bool:
        return len(self._workers) < self.limit

    def start(self, now: Nanos) -> list[Msg]:
        worker_id = WorkerId(f"{self._prefix}{self._next}")
        self._next += 1
        worker = Worker(worker_id=worker_id, phase=WorkerPhase.STARTING, since_ns=now)
        self._check_move(worker, None, WorkerPhase.STARTING)
        self._workers[worker_id] = worker
        return [
            StartWorker(worker_id=worker_id),
            SetTimer(key=f"{WORKER_START_TIMER_PREFIX}{worker_id}",
                     at_ns=now + self._config.register_timeout_ns),
        ]

    def register(self, worker_id: WorkerId, now: Nanos) -> list[Msg]:
        """A starting worker is up; returns [] when that is stale or a duplicate."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.phase is not WorkerPhase.STARTING:
            return []
        self._to_idle(worker, now)
        return [CancelTimer(key=f"{WORKER_START_TIMER_PREFIX}{worker_id}")]

    def pop_idle(self, lease_id: str) -> WorkerId | None:
        """Leases the longest-idle worker to ``lease_id``; None when none is idle."""
        if not self._idle:
            return None
        worker = self._workers[next(iter(self._idle))]
        self._move(worker, WorkerPhase.LEASED)
        del self._idle[worker.worker_id]
        worker.lease_id = lease_id
        return worker.worker_id

    def unlease(self, worker_id: WorkerId, now: Nanos) -> None:
        worker = self._workers[worker_id]
        self._move(worker, WorkerPhase.IDLE)
        worker.lease_id, worker.blocked = "", False
        self._to_idle(worker, now, moved=True)

    def set_blocked(self, worker_id: WorkerId, blocked: bool) -> bool:
        """Flags a leased worker (un)blocked; False when it is not leased or already so."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.phase is not WorkerPhase.LEASED or worker.blocked == blocked:
            return False
        worker.blocked = blocked
        return True

    def kill(self, worker_id: WorkerId, reason: str, *, timer_fired: bool = False) -> list[Msg]:
        """Ends a live worker: ``KillWorker``, and it is gone from the pool."""
        worker = self._workers[worker_id]
        effects: list[Msg] = [KillWorker(worker_id=worker_id, reason=reason)]
        if worker.phase is WorkerPhase.STARTING and not timer_fired:
            effects.append(CancelTimer(key=f"{WORKER_START_TIMER_PREFIX}{worker_id}"))
        self.remove(worker)
        return effects

    def exited(self, worker_id: WorkerId) -> tuple[Worker | None, list[Msg]]:
        """The process ended: the (now dead) worker or None if unknown, and timers to cancel."""
        worker = self._workers.get(worker_id)
        if worker is None:
            return None, []
        was_starting = worker.phase is WorkerPhase.STARTING
        self.remove(worker)
        timer = f"{WORKER_START_TIMER_PREFIX}{worker_id}"
        return worker, [CancelTimer(key=timer)] if was_starting else []

    def departed_after(self, count: int) -> tuple[WorkerId, ...]:
        """Ids of the registered workers removed after the first ``count`` (as far as kept)."""
        if count >= self.departed_total:
            return ()  # asked on every heartbeat: most have nothing new
        skip = count - (self.departed_total - len(self._departed))
        return tuple(self._departed[max(skip, 0):])

    def remove(self, worker: Worker) -> None:
        """Forgets a worker; it keeps its ``lease_id`` so callers can free that lease."""
        if worker.phase is not WorkerPhase.STARTING:  # only registered ones can own anything
            self._departed.append(worker.worker_id)
            self.departed_total += 1
            if len(self._departed) > DEPARTED_MAX:
                del self._departed[0]
        self._move(worker, WorkerPhase.DEAD)
        del self._workers[worker.worker_id]
        self._idle.pop(worker.worker_id, None)

    # --- timers ----------------------------------------------------------

    def on_start_timeout(self, worker_id: WorkerId) -> list[Msg]:
        worker = self._workers.get(worker_id)
        if worker is None or worker.phase is not WorkerPhase.STARTING:
            return []  # registered or gone since the timer was set
        timeout_s = self._config.register_timeout_ns / NANOS_PER_SECOND
        return self.kill(worker_id, f"the worker did not register within {timeout_s:g}s",
                         timer_fired=True)

    def on_idle_sweep(self, now: Nanos) -> list[Msg]:
        """Kills the oldest idle workers past the idle timeout while over the soft limit."""
        self._sweep_at = None
        effects: list[Msg] = []
        horizon = now - self._config.idle_timeout_ns
        for worker_id in list(self._idle):
            if len(self._workers) <= self.soft_limit:
                break
            if self._workers[worker_id].since_ns <= horizon:
                timeout_s = self._config.idle_timeout_ns / NANOS_PER_SECOND
                effects += self.kill(worker_id, (
                    f"idle for {timeout_s:g}s with {len(self._workers)} workers, "
                    f"above the soft limit of {self.soft_limit}"))
        return effects + self.arm_sweep(now)

    def arm_sweep(self, now: Nanos) -> list[Msg]:
        """Sets the sweep timer if idle workers stand above the soft limit and none is set."""
        if (self._sweep_at is not None or not self._idle or self._config.idle_timeout_ns <= 0
                or len(self._workers) <= self.soft_limit):
            return []
        oldest = self._workers[next(iter(self._idle))].since_ns
        self._sweep_at = max(oldest + self._config.idle_timeout_ns, now)
        return [SetTimer(key=IDLE_SWEEP_TIMER, at_ns=self._sweep_at)]

    # --- phases ----------------------------------------------------------

    def _to_idle(self, worker: Worker, now: Nanos, *, moved: bool = False) -> None:
        if not moved:
            self._move(worker, WorkerPhase.IDLE)
        worker.since_ns = now
        self._idle[worker.worker_id] = None

    def _move(self, worker: Worker, to: WorkerPhase) -> None:
        self._check_move(worker, worker.phase, to)
        worker.phase = to

    @staticmethod
    def _check_move(worker: Worker, frm: WorkerPhase | None, to: WorkerPhase) -> None:
        if (frm, to) not in _TRANSITIONS:
            expected = " or ".join(
                str(f.value if f else "new") for f, t in _TRANSITIONS if t is to)
            raise InvalidTransition(
                "raylet workers", f"move worker to {to.value}", worker.worker_id,
                frm.value if frm else "new", expected)

    def check_invariants(self) -> None:
        if not self._workers and not self._idle:
            return  # no worker: nothing below can disagree (the common case on idle nodes)
        for worker in self._workers.values():
            name = f"raylet workers: worker {worker.worker_id!r}"
            if worker.phase is WorkerPhase.DEAD:
                raise InvariantViolation(f"{name} is dead but still in the pool")
            if (worker.phase is WorkerPhase.LEASED) != bool(worker.lease_id):
                raise InvariantViolation(
                    f"{name} is {worker.phase.value} with lease {worker.lease_id!r}")
            if worker.blocked and worker.phase is not WorkerPhase.LEASED:
                raise InvariantViolation(f"{name} is blocked but {worker.phase.value}")
            if not worker.worker_id.startswith(self._prefix):
                raise InvariantViolation(f"{name} was not started by this raylet process")
        idle = [w.worker_id for w in self._workers.values() if w.phase is WorkerPhase.IDLE]
        if sorted(idle) != sorted(self._idle):
            raise InvariantViolation(
                f"raylet workers: idle index {list(self._idle)} but idle workers {idle}")
