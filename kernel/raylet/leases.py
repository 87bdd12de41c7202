"""Worker leases: the raylet's queue of lease requests and its scheduling policy.

Theory of operation
-------------------
An owner (a core worker) asks for a worker that holds a resource shape with
``RequestWorkerLease``; requests are keyed by ``(owner address, request_id)``.
A new request is placed by this policy (Ray's hybrid policy, local first):

1. Affinity. Hard affinity to another node: ``LeaseSpillback`` to it if the
   node table shows it alive, else ``LeaseRejected`` naming the node. Soft
   affinity to another node: spill to it if it is alive and its total fits,
   else ignore the affinity. Affinity to this node: queue here if the total
   fits; hard affinity that can never fit is rejected, soft is ignored.
2. The shape fits what is available here now: queue it here; the dispatcher
   grants it at once (starting a worker if none is idle).
3. Not ``spilled`` yet, and another live node has the shape available in the
   cluster view: ``LeaseSpillback`` to the best one (``ClusterView`` ranks by
   free capacity relative to total, ties by node id; with
   ``spillback_top_k > 1`` the instance's seeded ``Random`` picks among the
   top few, so that a burst does not herd onto one node).
4. The shape fits this node's total: queue here, granted as resources free.
5. Some other live node's total fits: spill to the best of those.
6. Otherwise it is ``INFEASIBLE`` and kept; infeasible requests, and queued
   ones that a spill could serve sooner, are placed again whenever the node
   table or the cluster view changes.

Request lifecycle (``_TRANSITIONS``): ``QUEUED -> WAITING`` when the dispatcher
takes its resources (held under a fresh lease id) because a worker is idle, on
its way, or may be started; ``WAITING -> GRANTED`` when a worker is leased to it
(``LeaseGranted``); anything ``-> DONE`` when it is returned
(``ReturnWorker``, answered ``ReturnWorkerAck``), cancelled, its worker dies
(``LeasedWorkerDied`` to the owner) or its owner dies. ``WAITING -> QUEUED``
when the node fate-shares. Dispatch is first come, first served among the
requests that fit (a large request does not block smaller ones behind it).

Duplicates: a retransmit of a granted request gets the same ``LeaseGranted``;
of a pending one, nothing; of one that ended here, nothing (a bounded record
of ``finished_max`` keys). A spilled or rejected request leaves no state: its
retransmit is simply placed again. ``ReturnWorker`` of an unknown lease is
acknowledged (it ended already, or belonged to an earlier raylet process).

Failures: a worker that exits ends its lease (``LeasedWorkerDied`` to the
owner) and every lease and request *owned by* it: their workers are killed and
their resources freed, transitively. Requests whose owner's node the node table
shows dead (or back under a newer incarnation), or whose owner the cluster view
lists as a departed worker of another node, are reclaimed the same way; a
request from such an owner is ignored. When
the node is declared dead, ``fate_share`` kills every worker and ends every
lease (owners are told); pending requests stay.

Invariants (``check_invariants``): the ledger balances; its holders are exactly
the waiting and granted lease ids; leased workers and granted leases map one to
one; no lease names a dead worker; indexes agree with phases; queues and the
finished record stay within their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from random import Random

import msgspec

from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.gcs.protocol import NodeInfo, Resources
from shoal.kernel.ids import Nanos, NodeId, WorkerId
from shoal.kernel.messages import Address, Msg, Rejected, Send
from shoal.kernel.raylet.membership import NodeView
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    KillWorker,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
    WorkerExited,
)
from shoal.kernel.raylet.resources import (
    BUNDLE_HOLDER_PREFIX,
    ClusterView,
    LocalResources,
    Units,
    describe,
    fits,
    shape_problem,
    to_units,
)
from shoal.kernel.raylet.workers import (
    IDLE_SWEEP_TIMER,
    WORKER_START_TIMER_PREFIX,
    WorkerPhase,
    WorkerPool,
    WorkerPoolConfig,
)
from shoal.kernel.task_spec import NodeAffinity

Key = tuple[Address, int]
_OWNERS = ("worker", "driver", "gcs")  # the GCS leases workers for actors (issue #4)


class LeaseConfig(msgspec.Struct, frozen=True, kw_only=True):
    lease_queue_max: int = 1024  # pending (queued, infeasible, waiting) requests
    finished_max: int = 4096  # keys of ended requests remembered to ignore retransmits
    spillback_top_k: int = 1  # >1: pick at random among the best k spillback targets
    report_refresh_ticks: int = 10  # report resources at least every this many heartbeats


class RequestPhase(Enum):
    QUEUED = "queued"
    INFEASIBLE = "infeasible"
    WAITING = "waiting"
    GRANTED = "granted"
    DONE = "done"


_TRANSITIONS: dict[tuple[RequestPhase | None, RequestPhase], str] = {
    (None, RequestPhase.QUEUED): "queued here",
    (None, RequestPhase.INFEASIBLE): "fits no known node",
    (RequestPhase.INFEASIBLE, RequestPhase.QUEUED): "fits here now (a bundle was committed)",
    (RequestPhase.QUEUED, RequestPhase.WAITING): "resources taken; a worker is on its way",
    (RequestPhase.WAITING, RequestPhase.GRANTED): "a worker is leased",
    (RequestPhase.WAITING, RequestPhase.QUEUED): "the node fate-shared; resources given back",
    (RequestPhase.QUEUED, RequestPhase.DONE): "spilled, cancelled, or its owner died",
    (RequestPhase.INFEASIBLE, RequestPhase.DONE): "spilled, cancelled, or its owner died",
    (RequestPhase.WAITING, RequestPhase.DONE): "cancelled, or its owner died",
    (RequestPhase.GRANTED, RequestPhase.DONE): "returned, or its worker or owner died",
}


class _Verdict(Enum):
    LOCAL = "local"
    SPILL = "spill"
    REJECT = "reject"
    INFEASIBLE = "infeasible"


@dataclass(slots=True, eq=False)
class _Request:
    owner: Address
    request_id: int
    shape: Resources
    need: Units
    affinity: NodeAffinity | None
    spilled: bool
    owner_incarnation: int
    phase: RequestPhase | None = None
    lease_id: str = ""
    worker_id: str = ""
    lent_cpu: int = 0

    @property
    def key(self) -> Key:
        return (self.owner, self.request_id)


# (worker id, its lease id or "", cause, tell the lease's owner)
_Death = tuple[str, str, str, bool]


class LeaseManager:
    """Lease requests, leases and the worker pool of one raylet: a sub-machine of ``Raylet``."""

    def __init__(
        self,
        node_id: NodeId,
        *,
        boot: int,
        resources: Resources,
        config: LeaseConfig,
        pool_config: WorkerPoolConfig,
        nodes: NodeView,
        cluster: ClusterView,
        rng: Random,
    ) -> None:
        self.node_id = node_id
        self._config = config
        self.ledger = LocalResources(resources)
        self.pool = WorkerPool(node_id, boot, pool_config, cpus=resources.get("CPU", 0.0))
        self._nodes = nodes
        self._cluster = cluster
        self._rng = rng
        self._lease_prefix = f"{node_id}.b{boot}.l"
        self._next_lease = 1
        self._requests: dict[Key, _Request] = {}  # every live request, in arrival order
        self._pending: dict[Key, _Request] = {}  # queued, infeasible and waiting
        self._leases: dict[str, _Request] = {}  # granted, by lease id
        self._finished: dict[Key, None] = {}  # ended here: retransmits are ignored

    # --- introspection ---------------------------------------------------

    def phase_of(self, owner: Address, request_id: int) -> RequestPhase | None:
        request = self._requests.get((owner, request_id))
        return request.phase if request else None

    @property
    def lease_ids(self) -> tuple[str, ...]:
        return tuple(self._leases)

    def needs_view(self) -> bool:
        """Whether a fresher cluster view could place some pending request elsewhere."""
        if not self._pending:
            return False  # asked on every heartbeat: most have nothing pending
        return any(r.phase is RequestPhase.INFEASIBLE or self._spillable(r)
                   for r in self._pending.values())

    def quiescence_problems(self) -> list[str]:
        """What is still held or pending; empty once everything has been given back."""
        problems = [f"lease {r.lease_id!r} of {r.owner} on worker {r.worker_id!r} is still held"
                    for r in self._leases.values()]
        problems += [f"request {r.request_id} of {r.owner} is still {r.phase.value}"
                     for r in self._pending.values() if r.phase is not None]
        if self.ledger.available != self.ledger.total:
            problems.append(f"only {describe(self.ledger.available)} of "
                            f"{describe(self.ledger.total)} is available")
        starting = self.pool.count(WorkerPhase.STARTING)
        if starting:
            problems.append(f"{starting} workers are still starting")
        return problems

    # --- owner messages ----------------------------------------------------

    def on_request(self, src: Address, msg: RequestWorkerLease, now: Nanos) -> list[Msg]:
        key = (src, msg.request_id)
        live = self._requests.get(key)
        if live is not None:
            return [self._granted(live)] if live.phase is RequestPhase.GRANTED else []
        if key in self._finished:
            if src.component == "gcs":  # actors (issue #4): the GCS leases anew on this answer
                return [self._reject(src, msg.request_id, "the request already ended here")]
            return []  # a late retransmit of a request that ended here
        problem = self._request_problem(src, msg)
        if problem:
            return [self._reject(src, msg.request_id, problem)]
        owner_node = self._nodes.nodes.get(src.node)
        if src.component != "gcs" and (src in self._cluster.departed or (
                src.node != self.node_id and owner_node is not None and owner_node.state == "dead")):
            return []  # from an owner known dead; a live one retries once we know better
        request = _Request(
            owner=src, request_id=msg.request_id, shape=dict(msg.shape), need=to_units(msg.shape),
            affinity=msg.affinity, spilled=msg.spilled,
            owner_incarnation=owner_node.incarnation if owner_node else 0)  # 0: not known yet
        return self._place_new(request) + self._dispatch(now)

    def _request_problem(self, src: Address, msg: RequestWorkerLease) -> str:
        if src.component not in _OWNERS:
            return f"only core workers may lease workers, not the {src.component} at {src}"
        problem = shape_problem(msg.shape)
        return f"its shape {msg.shape!r} is malformed: {problem}" if problem else ""

    def on_cancel(self, src: Address, msg: CancelLeaseRequest, now: Nanos) -> list[Msg]:
        request = self._requests.get((src, msg.request_id))
        if request is None:
            return []
        if request.phase is RequestPhase.GRANTED:
            self._end_and_idle(request, now)  # the owner gave up on the grant
        else:
            self._finish(request)
        return self._dispatch(now)

    def on_return(self, src: Address, msg: ReturnWorker, now: Nanos) -> list[Msg]:
        request = self._leases.get(msg.lease_id)
        ack = Send(dst=src, msg=ReturnWorkerAck(lease_id=msg.lease_id))
        if request is None:
            return [ack]  # returned already, or granted by an earlier raylet process
        if request.owner != src:
            return [Send(dst=src, msg=Rejected(request_type="ReturnWorker", reason=(
                f"raylet {self.node_id!r}: lease {msg.lease_id!r} is held by "
                f"{request.owner}, not {src}; only its owner may return it")))]
        if not msg.worker_failed:
            self._end_and_idle(request, now)
            return [ack, *self._dispatch(now)]
        worker_id, lease_id = request.worker_id, request.lease_id
        effects = self.pool.kill(WorkerId(worker_id), "its owner returned it as failed")
        cause = f"worker {worker_id!r} was returned as failed by its owner"
        effects += self._workers_died([(worker_id, lease_id, cause, False)])
        return [ack, *effects, *self._dispatch(now)]

    def _end_and_idle(self, request: _Request, now: Nanos) -> None:
        worker_id = WorkerId(request.worker_id)
        self._finish(request)
        self.pool.unlease(worker_id, now)

    # --- worker messages ---------------------------------------------------

    def on_register(self, src: Address, msg: RegisterWorker, now: Nanos) -> list[Msg]:
        problem = self._worker_problem(src, msg.worker_id)
        if not problem and self.pool.get(msg.worker_id) is None:
            problem = (f"worker {msg.worker_id!r} was not started by this raylet process, or "
                       "was given up on (it registered too late); the process should exit")
        if problem:
            return [Send(dst=src, msg=Rejected(request_type="RegisterWorker", reason=(
                f"raylet {self.node_id!r}: {problem}")))]
        effects = self.pool.register(msg.worker_id, now)
        return effects + self._dispatch(now) if effects else []

    def on_blocked(self, src: Address, worker_id: WorkerId, blocked: bool,
                   now: Nanos) -> list[Msg]:
        """A leased worker blocked in (or back from) a ``get``: lend its CPU, or take it back."""
        problem = self._worker_problem(src, worker_id)
        if problem:
            name = "WorkerBlocked" if blocked else "WorkerUnblocked"
            return [Send(dst=src, msg=Rejected(request_type=name, reason=(
                f"raylet {self.node_id!r}: {problem}")))]
        if not self.pool.set_blocked(worker_id, blocked):
            return []  # not leased, or already so: stale or duplicate
        worker = self.pool.get(worker_id)
        assert worker is not None
        request = self._leases[worker.lease_id]
        if blocked:
            request.lent_cpu = self.ledger.lend(request.lease_id, "CPU")
        else:
            self.ledger.reclaim(request.lease_id, "CPU", request.lent_cpu)
            request.lent_cpu = 0
        return self._dispatch(now)

    def _worker_problem(self, src: Address, worker_id: WorkerId) -> str:
        if src != self.pool.address(worker_id):
            return (f"a message about worker {worker_id!r} must come from that worker "
                    f"on this node, not from {src}")
        return ""

    # --- host inputs and timers ----------------------------------------------

    def on_worker_exited(self, msg: WorkerExited, now: Nanos) -> list[Msg]:
        worker, effects = self.pool.exited(msg.worker_id)
        if worker is None:
            return []  # killed by us already, or from an earlier raylet process
        cause = f"worker {msg.worker_id!r} exited: {msg.cause} (exit code {msg.exit_code})"
        effects += self._workers_died([(worker.worker_id, worker.lease_id, cause, True)])
        return effects + self._dispatch(now)

    def on_owner_exited(self, owner: Address, why: str, now: Nanos) -> list[Msg]:
        """A local owner that is not a worker of the pool (a driver) is gone: its requests
        end, and the workers it leased are killed with what they owned."""
        owned = [r for r in self._requests.values() if r.owner == owner]
        if not owned:
            return []
        deaths: list[_Death] = []
        effects = self._reclaim(owned, why, deaths)
        return effects + self._workers_died(deaths) + self._dispatch(now)

    def granted(self) -> list[tuple[str, Address, int]]:
        """Granted leases with their owners and request ids, in grant order."""
        return [(lease_id, r.owner, r.request_id) for lease_id, r in self._leases.items()]

    def release(self, lease_id: str, now: Nanos) -> list[Msg]:
        """The owner says it no longer holds the lease: the worker goes back to the pool."""
        request = self._leases.get(lease_id)
        if request is None:
            return []
        self._end_and_idle(request, now)
        return self._dispatch(now)

    def reclaim(self, lease_id: str, why: str, now: Nanos) -> list[Msg]:
        """The owner is gone: kill the lease's worker (and what it owned) and free it."""
        request = self._leases.get(lease_id)
        if request is None:
            return []
        deaths: list[_Death] = []
        effects = self._reclaim([request], why, deaths)
        return effects + self._workers_died(deaths) + self._dispatch(now)

    def on_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key.startswith(WORKER_START_TIMER_PREFIX):
            effects = self.pool.on_start_timeout(WorkerId(key[len(WORKER_START_TIMER_PREFIX):]))
        elif key == IDLE_SWEEP_TIMER:
            effects = self.pool.on_idle_sweep(now)
        else:
            return []
        deaths: list[_Death] = [(e.worker_id, "", e.reason, False)
                                for e in effects if isinstance(e, KillWorker)]
        if not deaths:
            return effects
        return effects + self._workers_died(deaths) + self._dispatch(now)

    def on_view_changed(self, now: Nanos) -> list[Msg]:
        """The node table or the cluster view moved: reclaim, re-place, dispatch."""
        return self._reclaim_dead_owners() + self._replace_pending() + self._dispatch(now)

    def fate_share(self, cause: str, now: Nanos) -> list[Msg]:
        """This node's incarnation was declared dead: kill every worker, end every lease."""
        effects: list[Msg] = []
        deaths: list[_Death] = []
        for worker in self.pool.workers:
            effects += self.pool.kill(worker.worker_id, cause)
            deaths.append((worker.worker_id, worker.lease_id, cause, True))
        effects += self._workers_died(deaths)
        for request in self._pending.values():
            if request.phase is RequestPhase.WAITING:
                self.ledger.release(request.lease_id)
                request.lease_id = ""
                self._move(request, RequestPhase.QUEUED)
        return effects + self._dispatch(now)

    # --- placement -----------------------------------------------------------

    def _place_new(self, request: _Request) -> list[Msg]:
        verdict, detail = self._decide(request)
        if verdict is _Verdict.SPILL:
            return [self._spill(request, NodeId(detail))]
        if verdict is _Verdict.REJECT:
            return [self._reject(request.owner, request.request_id, detail)]
        if len(self._pending) >= self._config.lease_queue_max:
            return [self._reject(request.owner, request.request_id, (
                f"its queue is full ({self._config.lease_queue_max} pending requests); "
                "retry later, or raise lease_queue_max"))]
        phase = RequestPhase.QUEUED if verdict is _Verdict.LOCAL else RequestPhase.INFEASIBLE
        self._move(request, phase)
        self._requests[request.key] = request
        self._pending[request.key] = request
        return []

    def _replace_pending(self) -> list[Msg]:
        """Places infeasible requests, and queued ones a spill could serve sooner, again."""
        effects: list[Msg] = []
        for request in list(self._pending.values()):
            if request.phase is RequestPhase.INFEASIBLE or self._spillable(request):
                verdict, detail = self._decide(request)
                if verdict is _Verdict.SPILL:
                    self._finish(request, record=False)
                    effects.append(self._spill(request, NodeId(detail)))
                elif verdict is _Verdict.LOCAL and request.phase is RequestPhase.INFEASIBLE:
                    self._move(request, RequestPhase.QUEUED)  # placement groups: capacity grew
        return effects

    def evict_holding(self, resource: str, why: str, now: Nanos) -> list[Msg]:
        """Placement groups: ends every request and lease asking for ``resource`` (a bundle
        going away): granted ones' workers are killed (their owners told), pending ones are
        refused, so nothing is left holding or waiting for it."""
        effects: list[Msg] = []
        deaths: list[_Death] = []
        for request in [r for r in self._requests.values() if resource in r.need]:
            if request.phase is RequestPhase.GRANTED:
                effects += self.pool.kill(WorkerId(request.worker_id), why)
                deaths.append((request.worker_id, request.lease_id, why, True))
            else:
                self._finish(request)
                effects.append(self._reject(request.owner, request.request_id, why))
        return effects + self._workers_died(deaths)

    def _spillable(self, request: _Request) -> bool:
        affinity = request.affinity
        return (request.phase is RequestPhase.QUEUED and not request.spilled
                and not (affinity is not None and affinity.node_id == self.node_id)
                and not self.ledger.fits_now(request.need))

    def _decide(self, request: _Request) -> tuple[_Verdict, str]:
        verdict = self._decide_affinity(request)
        if verdict is not None:
            return verdict
        need = request.need
        if self.ledger.fits_now(need):
            return _Verdict.LOCAL, ""
        if not request.spilled:
            ranked = self._cluster.ranked_available(need, [i.node_id for i in self._others()])
            if ranked:
                return _Verdict.SPILL, self._pick(ranked)
        if self.ledger.fits_total(need):
            return _Verdict.LOCAL, ""
        ranked = self._cluster.ranked_total(need, self._others())
        if ranked:
            return _Verdict.SPILL, self._pick(ranked)
        return _Verdict.INFEASIBLE, ""

    def _decide_affinity(self, request: _Request) -> tuple[_Verdict, str] | None:
        affinity = request.affinity
        if affinity is None:
            return None
        target = affinity.node_id
        if target == self.node_id:
            if self.ledger.fits_total(request.need):
                return _Verdict.LOCAL, ""
            if affinity.soft:
                return None
            return _Verdict.REJECT, (
                f"it has hard affinity to this node, whose total "
                f"{describe(self.ledger.total)} can never hold {describe(request.need)}; "
                "ask for less, or make the affinity soft")
        info = self._nodes.nodes.get(target)
        alive = info is not None and info.state == "alive"
        if not affinity.soft:
            if alive:
                return _Verdict.SPILL, target
            state = "dead" if info is not None else "not in the cluster"
            return _Verdict.REJECT, (
                f"it has hard affinity to node {target!r}, which is {state}; "
                "make the affinity soft to let it run elsewhere")
        if info is not None and alive and fits(request.need, to_units(info.resources)):
            return _Verdict.SPILL, target
        return None  # soft affinity to a node that is dead, unknown or too small: ignored

    def _others(self) -> list[NodeInfo]:
        return [info for info in self._nodes.nodes.values()
                if info.state == "alive" and info.node_id != self.node_id]

    def _pick(self, ranked: list[NodeId]) -> str:
        top = min(max(self._config.spillback_top_k, 1), len(ranked))
        return ranked[self._rng.randrange(top)] if top > 1 else ranked[0]

    def _spill(self, request: _Request, node_id: NodeId) -> Send:
        self._cluster.reserve(node_id, request.need)
        return Send(dst=request.owner, msg=LeaseSpillback(
            request_id=request.request_id, node_id=node_id))

    def _reject(self, owner: Address, request_id: int, why: str) -> Send:
        return Send(dst=owner, msg=LeaseRejected(request_id=request_id, reason=(
            f"raylet {self.node_id!r} refused lease request {request_id} of {owner}: {why}")))

    # --- dispatch ------------------------------------------------------------

    def _dispatch(self, now: Nanos) -> list[Msg]:
        """Takes resources for queued requests while workers can serve them, then leases."""
        waiting = [r for r in self._pending.values() if r.phase is RequestPhase.WAITING]
        # Actor workers (leased to the GCS) are dedicated: each brings its own pool slot,
        # so actors never starve tasks of workers (Ray starts workers for actors as needed).
        self.pool.dedicated = sum(1 for r in self._requests.values() if r.owner.component == "gcs"
                                  and r.phase in (RequestPhase.WAITING, RequestPhase.GRANTED))
        slots = self.pool.free_slots() - len(waiting)
        for request in list(self._pending.values()):
            dedicated = request.owner.component == "gcs"
            if slots <= 0 and not dedicated:
                continue
            if request.phase is RequestPhase.QUEUED and self.ledger.fits_now(request.need):
                request.lease_id = f"{self._lease_prefix}{self._next_lease}"
                self._next_lease += 1
                self.ledger.acquire(request.lease_id, request.need)
                self._move(request, RequestPhase.WAITING)
                waiting.append(request)
                if dedicated:
                    self.pool.dedicated += 1
                else:
                    slots -= 1
        effects: list[Msg] = []
        for request in waiting:
            worker_id = self.pool.pop_idle(request.lease_id)
            if worker_id is None:
                break
            request.worker_id = worker_id
            self._move(request, RequestPhase.GRANTED)
            del self._pending[request.key]
            self._leases[request.lease_id] = request
            effects.append(self._granted(request))
        unserved = sum(1 for r in waiting if r.phase is RequestPhase.WAITING)
        unserved -= self.pool.count(WorkerPhase.STARTING)
        while unserved > 0 and self.pool.can_start():
            effects += self.pool.start(now)
            unserved -= 1
        return effects + self.pool.arm_sweep(now)

    def _granted(self, request: _Request) -> Send:
        return Send(dst=request.owner, msg=LeaseGranted(
            request_id=request.request_id, lease_id=request.lease_id,
            worker=self.pool.address(WorkerId(request.worker_id)), node_id=self.node_id))

    # --- endings -------------------------------------------------------------

    def _finish(self, request: _Request, *, record: bool = True) -> None:
        """Ends a live request: frees what it holds and forgets it (remembering its key)."""
        if request.phase in (RequestPhase.WAITING, RequestPhase.GRANTED):
            self.ledger.release(request.lease_id)
        del self._requests[request.key]
        self._pending.pop(request.key, None)
        self._leases.pop(request.lease_id, None)
        self._move(request, RequestPhase.DONE)
        if record:
            self._finished[request.key] = None
            if len(self._finished) > self._config.finished_max:
                del self._finished[next(iter(self._finished))]

    def _workers_died(self, deaths: list[_Death]) -> list[Msg]:
        """Ends the leases of dead workers, then everything those workers owned, transitively."""
        effects: list[Msg] = []
        while deaths:
            worker_id, lease_id, cause, tell = deaths.pop(0)
            request = self._leases.get(lease_id) if lease_id else None
            if request is not None:
                self._finish(request)
                if tell and self._owner_may_live(request.owner):
                    effects.append(Send(dst=request.owner, msg=LeasedWorkerDied(
                        lease_id=lease_id, worker=self.pool.address(WorkerId(worker_id)),
                        cause=cause)))
            owner = self.pool.address(WorkerId(worker_id))
            owned = [r for r in self._requests.values() if r.owner == owner]
            why = f"its lease's owner, worker {worker_id!r}, died"
            effects += self._reclaim(owned, why, deaths)
        return effects

    def _reclaim(self, requests: list[_Request], why: str, deaths: list[_Death]) -> list[Msg]:
        """Ends requests whose owner is gone; granted ones' workers are killed (and queued
        in ``deaths`` so that what they owned goes too)."""
        effects: list[Msg] = []
        for request in requests:
            if request.phase is not RequestPhase.GRANTED:
                self._finish(request)
            elif self.pool.get(WorkerId(request.worker_id)) is not None:
                effects += self.pool.kill(WorkerId(request.worker_id), why)
                deaths.append((request.worker_id, request.lease_id, why, False))
            # else: its worker is dead already and queued in ``deaths``
        return effects

    def _reclaim_dead_owners(self) -> list[Msg]:
        doomed = [r for r in self._requests.values() if self._owner_node_gone(r)]
        if not doomed:
            return []
        deaths: list[_Death] = []
        effects = self._reclaim(doomed, "its lease's owner died on another node", deaths)
        return effects + self._workers_died(deaths)

    def _owner_node_gone(self, request: _Request) -> bool:
        if request.owner.node == self.node_id:
            return False  # local owners die with their workers, or with this node
        if request.owner.component == "gcs":
            return False  # actor leases: the GCS outlives its node's raylet, and restarts
        if request.owner in self._cluster.departed:
            return True
        info = self._nodes.nodes.get(request.owner.node)
        if info is None:
            return False
        if request.owner_incarnation == 0:
            # Asked before this raylet knew the owner's node (say, just after a restart):
            # the incarnation seen first is the owner's, unless that one is dead already.
            request.owner_incarnation = info.incarnation
        if info.state == "dead":
            return info.incarnation >= request.owner_incarnation
        return info.incarnation > request.owner_incarnation

    def _owner_may_live(self, owner: Address) -> bool:
        local_worker = owner.node == self.node_id and owner.component == "worker"
        return not local_worker or self.pool.get(WorkerId(owner.worker)) is not None

    # --- phases and invariants -------------------------------------------------

    def _move(self, request: _Request, to: RequestPhase) -> None:
        if (request.phase, to) not in _TRANSITIONS:
            expected = " or ".join(
                str(f.value if f else "new") for f, t in _TRANSITIONS if t is to)
            raise InvalidTransition(
                "raylet leases", f"move request to {to.value}", request.key,
                request.phase.value if request.phase else "new", expected)
        request.phase = to

    def check_invariants(self) -> None:
        """Raises ``InvariantViolation`` if the ledger, the pool and the requests disagree."""
        self.ledger.check_invariants()
        self.pool.check_invariants()
        if not self._requests and not self._pending and not self._leases:
            self._check_without_requests()  # the common idle case: the same checks, cheaper
            return
        self._check_indexes()
        holders = sorted(r.lease_id for r in self._requests.values()
                         if r.phase in (RequestPhase.WAITING, RequestPhase.GRANTED))
        if holders != sorted(h for h in self.ledger.holders
                             if not h.startswith(BUNDLE_HOLDER_PREFIX)):
            raise InvariantViolation(f"raylet leases: leases {holders} but resources held by "
                                     f"{sorted(self.ledger.holders)}")
        for request in self._leases.values():
            worker = self.pool.get(WorkerId(request.worker_id))
            if worker is None or worker.lease_id != request.lease_id:
                raise InvariantViolation(
                    f"raylet leases: lease {request.lease_id!r} names worker "
                    f"{request.worker_id!r}, which is {worker.phase.value if worker else 'dead'} "
                    f"with lease {worker.lease_id if worker else ''!r}")
            if request.lent_cpu and not worker.blocked:
                raise InvariantViolation(
                    f"raylet leases: lease {request.lease_id!r} lent CPU of an unblocked worker")
        for worker in self.pool.workers:
            if worker.phase is WorkerPhase.LEASED and worker.lease_id not in self._leases:
                raise InvariantViolation(f"raylet leases: worker {worker.worker_id!r} is leased "
                                         f"to {worker.lease_id!r}, which is no lease")

    def _check_without_requests(self) -> None:
        """``check_invariants`` with no request, pending entry or lease: what its checks
        come down to (empty indexes agree; nothing may hold resources but bundles, and
        no worker may be leased), without building the sets and sorted lists."""
        if len(self._finished) > self._config.finished_max:
            raise InvariantViolation("raylet leases: the finished record is out of bounds")
        if any(not h.startswith(BUNDLE_HOLDER_PREFIX) for h in self.ledger.holders):
            raise InvariantViolation(f"raylet leases: leases [] but resources held by "
                                     f"{sorted(self.ledger.holders)}")
        for worker in self.pool.workers:
            if worker.phase is WorkerPhase.LEASED:
                raise InvariantViolation(f"raylet leases: worker {worker.worker_id!r} is leased "
                                         f"to {worker.lease_id!r}, which is no lease")

    def _check_indexes(self) -> None:
        pending = {k for k, r in self._requests.items() if r.phase is not RequestPhase.GRANTED}
        granted = {r.lease_id for r in self._requests.values() if r.phase is RequestPhase.GRANTED}
        if pending != set(self._pending) or granted != set(self._leases):
            raise InvariantViolation("raylet leases: request indexes disagree with phases")
        if any(r.phase in (None, RequestPhase.DONE) for r in self._requests.values()):
            raise InvariantViolation("raylet leases: an ended request is still live")
        if len(self._pending) > self._config.lease_queue_max:
            raise InvariantViolation(
                f"raylet leases: {len(self._pending)} pending requests exceed "
                f"lease_queue_max {self._config.lease_queue_max}")
        if len(self._finished) > self._config.finished_max or not self._finished.keys().isdisjoint(
                self._requests):
            raise InvariantViolation("raylet leases: the finished record is out of bounds")
