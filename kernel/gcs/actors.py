"""The GCS actor manager: actor registration, placement, lifecycle, names, and the table.

Theory of operation
-------------------
An owner registers an actor (``RegisterActor``, idempotent by actor id); the
row starts ``PENDING`` (phases and stages: ``actor_records.py``). A named actor
takes ``(namespace, name)`` for as long as it is not dead; a second
registration of a taken name is answered ``taken`` with the holder, which the
owner uses for ``get_if_exists`` or turns into an error.

Placement follows Ray's GCS-based actor scheduling: the GCS picks a node from
its resource view (a live node with the actor's placement shape free now,
else one whose total fits; among those the one hosting fewest of its actors,
ties by node id; affinity first) and leases a worker there itself with
``RequestWorkerLease`` (shape: the resources the actor holds for its
lifetime). The raylet may spill the request elsewhere. On ``LeaseGranted`` the
GCS sends ``CreateActor`` to the worker (retransmitted until ``ActorCreating``
or ``ActorCreated``; ``create_silent_max`` unanswered retransmits mean the
worker is gone: its lease is returned as failed and placement starts over).
``ActorCreated`` makes the actor ``ALIVE``, or ``DEAD`` with the constructor's
error. A node that fits nowhere leaves the actor ``UNPLACED``; placement is
tried again on a timer and whenever the cluster changes.

Death and restart: the worker of a creating or alive actor is dead when its
raylet says so (``LeasedWorkerDied``), when the resource view lists it as a
departed worker, or when the node table shows its node dead or back under a
newer incarnation. A creating actor is then placed again (it never ran, so no
restart is counted). An alive one is ``RESTARTING`` (``num_restarts`` + 1, the
constructor runs again on a new worker) while restarts remain
(``max_restarts``; -1 forever), else ``DEAD``. A non-detached actor whose
owner died (a worker owner that departed, or whose node died or rejoined; a
driver owner whose exit its raylet reported: the job ended, see
``jobs.py``) is ``DEAD`` too.

``KillActor``: ``no_restart`` (or no restarts left) makes it ``DEAD``;
otherwise an alive actor's worker is killed and it restarts. ``out_of_scope``
kills (sent by the owner when every handle was dropped) spare named and
detached actors. A dead actor's lease is given back with ``worker_failed``, so
its raylet kills the process; ``ReturnWorker`` is retransmitted until
acknowledged, and remembered durably meanwhile.

The table: every change bumps the row's ``version`` (one counter for all
rows) and is pushed as ``ActorTableUpdate`` to the row's subscribers; a
holder subscribes by polling (``PollActors``) and is dropped after
``subscriber_timeout_ns`` without a poll. At most ``dead_max`` dead rows are
kept (oldest dropped); a poll for a dropped one is answered ``unknown``.

Durability: rows (``actors``), leases being returned (``actor_leases``) and
the block of lease request ids handed out (``actor_meta``) are written with
``StorePut`` before any message that depends on them. A restarted GCS
rebuilds them and, on ``Started``, resends what was in flight.

Invariants (``check_invariants``): names index exactly the live named rows;
the request index exactly the leasing rows; a row holds a lease exactly when
creating or alive; stages only while pending or restarting; no version above
the counter.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.actor_leases import (
    RETURN_TIMER_PREFIX,
    LeaseReturns,
    choose_node,
)
from shoal.kernel.gcs.actor_protocol import (
    ActorCreated,
    ActorCreating,
    ActorDeathCause,
    ActorRegistered,
    ActorTableUpdate,
    CreateActor,
    GetNamedActor,
    KillActor,
    KillActorReply,
    NamedActorReply,
    PollActors,
    RegisterActor,
)
from shoal.kernel.gcs.actor_records import (
    ACTOR_LEASES_TABLE,
    ACTOR_META_TABLE,
    ACTORS_TABLE,
    ActorManagerConfig,
    ActorPhase,
    ActorRecord,
    ActorRow,
    ClusterFacts,
    Stage,
    check_move,
)
from shoal.kernel.ids import ActorId, Nanos, NodeId
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Rejected,
    Send,
    SetTimer,
    StoreDelete,
    StorePut,
)
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    LeaseCheck,
    LeaseCheckReply,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RequestWorkerLease,
    ReturnWorkerAck,
)

ACTOR_TIMER_PREFIX = "gcs.actor."
_LEASE_TIMER = ACTOR_TIMER_PREFIX + "lease."
_CREATE_TIMER = ACTOR_TIMER_PREFIX + "create."
_PLACE_TIMER = ACTOR_TIMER_PREFIX + "place"
_REQUESTS_KEY = b"requests"


class ActorManager:
    """The GCS's actor table and lifecycle: a sub-machine driven by ``Gcs.handle``."""

    def __init__(self, config: ActorManagerConfig, cluster: ClusterFacts,
                 recovered: Mapping[str, Mapping[bytes, bytes]] | None = None) -> None:
        self._config = config
        self._cluster = cluster
        self._rows: dict[ActorId, ActorRow] = {}
        self._names: dict[tuple[str, str], ActorId] = {}
        self._by_request: dict[int, ActorId] = {}
        self._by_lease: dict[str, ActorId] = {}
        self._returning = LeaseReturns(config.lease_retry_ns, (recovered or {}).get(
            ACTOR_LEASES_TABLE))
        self._subs: dict[ActorId, dict[Address, Nanos]] = {}
        self._dead: dict[ActorId, None] = {}  # dead rows, oldest first
        self.version = 0
        self._next_request = 1
        self._reserved = 0  # request ids below this are durably reserved
        self._place_armed = False
        self._recover(recovered or {})

    # --- introspection ---------------------------------------------------

    def row(self, actor_id: ActorId) -> ActorRow | None:
        return self._rows.get(actor_id)

    @property
    def rows(self) -> tuple[ActorRow, ...]:
        return tuple(self._rows.values())

    @property
    def returning_leases(self) -> tuple[str, ...]:
        return self._returning.ids

    # --- recovery ----------------------------------------------------------

    def _recover(self, tables: Mapping[str, Mapping[bytes, bytes]]) -> None:
        decoder = msgspec.msgpack.Decoder(ActorRecord)
        records = tables.get(ACTORS_TABLE, {})
        rows = [ActorRow.from_record(decoder.decode(records[k])) for k in sorted(records)]
        for row in sorted(rows, key=lambda r: (r.version, r.actor_id)):
            self._rows[row.actor_id] = row
            self.version = max(self.version, row.version)
            self._index(row)
        meta = tables.get(ACTOR_META_TABLE, {})
        if _REQUESTS_KEY in meta:
            self._reserved = int(meta[_REQUESTS_KEY].decode())
            self._next_request = self._reserved + 1  # ids handed out before are never reused

    def _index(self, row: ActorRow) -> None:
        if row.phase is ActorPhase.DEAD:
            self._dead[row.actor_id] = None
            return
        if row.spec.name:
            self._names[(row.spec.namespace, row.spec.name)] = row.actor_id
        if row.stage is Stage.LEASING:
            self._by_request[row.request_id] = row.actor_id
        if row.lease_id:
            self._by_lease[row.lease_id] = row.actor_id

    def on_started(self, now: Nanos) -> list[Msg]:
        """Resends what was in flight when the previous GCS process stopped."""
        effects: list[Msg] = []
        for row in self._rows.values():
            if row.stage is Stage.LEASING:
                effects += self._send_lease_request(row, now)
            elif row.stage is Stage.CREATING:
                effects += self._send_create(row, now)
        return effects + self._returning.resend_all(now) + self._place_unplaced(now)

    # --- registration, lookups, kills --------------------------------------

    def on_register(self, src: Address, msg: RegisterActor, now: Nanos) -> list[Msg]:
        spec = msg.spec
        if src != spec.creation.owner:
            return [self._reject(src, msg, (
                f"actor {spec.actor_id!r} names {spec.creation.owner} as its owner, but "
                f"{src} registered it; only the owner may register an actor"))]
        row = self._rows.get(spec.actor_id)
        if row is not None:  # a retransmit: answer again
            return [Send(dst=src, msg=ActorRegistered(
                request_id=msg.request_id, actor_id=spec.actor_id, info=row.info()))]
        holder = self._names.get((spec.namespace, spec.name)) if spec.name else None
        if holder is not None:
            taken = self._rows[holder]
            return [Send(dst=src, msg=ActorRegistered(
                request_id=msg.request_id, actor_id=spec.actor_id, taken=taken.handle_info(),
                taken_info=taken.info()))]
        live = len(self._rows) - len(self._dead)
        if live >= self._config.actors_max:
            return [Send(dst=src, msg=ActorRegistered(
                request_id=msg.request_id, actor_id=spec.actor_id, error=(
                    f"gcs: cannot register actor {spec.actor_id!r}: {live} actors are "
                    f"alive or pending (actors_max={self._config.actors_max}); kill "
                    "actors you no longer need")))]
        return self._create_row(src, msg, now)

    def _create_row(self, src: Address, msg: RegisterActor, now: Nanos) -> list[Msg]:
        spec = msg.spec
        owner = self._cluster.node(spec.creation.owner.node)
        row = ActorRow(spec=spec, function=msg.function, phase=ActorPhase.PENDING,
                       owner_incarnation=owner.incarnation if owner else 0)
        check_move(None, row.actor_id, None, ActorPhase.PENDING)
        self._rows[row.actor_id] = row
        if spec.name:
            self._names[(spec.namespace, spec.name)] = row.actor_id
        effects = self._commit(row, now)
        if self._owner_dead(row):
            effects += self._to_dead(row, _owner_died(row), now)
        else:
            effects += self._place(row, now)
        self._subs[row.actor_id] = {src: now}  # the owner hears of every later change
        return effects + [Send(dst=src, msg=ActorRegistered(
            request_id=msg.request_id, actor_id=row.actor_id, info=row.info()))]

    @staticmethod
    def _reject(src: Address, msg: RegisterActor, reason: str) -> Send:
        return Send(dst=src, msg=Rejected(request_type="RegisterActor", reason=f"gcs: {reason}",
                                          request_id=msg.request_id))

    def on_get_named(self, src: Address, msg: GetNamedActor) -> list[Msg]:
        actor_id = self._names.get((msg.namespace, msg.name))
        row = self._rows.get(actor_id) if actor_id is not None else None
        reply = NamedActorReply(request_id=msg.request_id)
        if row is not None:
            reply = NamedActorReply(request_id=msg.request_id, handle=row.handle_info(),
                                    info=row.info())
        return [Send(dst=src, msg=reply)]

    def on_kill(self, src: Address, msg: KillActor, now: Nanos) -> list[Msg]:
        row = self._rows.get(msg.actor_id)
        reply = Send(dst=src, msg=KillActorReply(request_id=msg.request_id,
                                                 actor_id=msg.actor_id, found=row is not None))
        if row is None or row.phase is ActorPhase.DEAD:
            return [reply]
        if msg.out_of_scope:
            if row.spec.detached or row.spec.name or src != row.spec.creation.owner:
                return [reply]  # only the owner's handles count, and not for these
            cause = ActorDeathCause(kind="out_of_scope", message=(
                f"actor {row.actor_id} ({row.spec.class_name}) was stopped because every "
                "handle to it was dropped; keep a handle while you use the actor, or "
                "create it with lifetime='detached'"))
            return self._to_dead(row, cause, now) + [reply]
        if not msg.no_restart and row.phase is ActorPhase.ALIVE and row.restarts_left():
            return self._kill_worker(row, now) + self._restart(row, now) + [reply]
        if not msg.no_restart and row.phase is not ActorPhase.ALIVE and row.restarts_left():
            return [reply]  # being (re)created already: nothing to restart
        cause = ActorDeathCause(kind="killed", message=(
            f"actor {row.actor_id} ({row.spec.class_name}) was killed with shoal.kill() "
            f"by {src}; calls to it fail from now on. Create a new actor to go on"))
        return self._to_dead(row, cause, now) + [reply]

    def kill_holding(self, resource: str, why: str, now: Nanos) -> list[Msg]:
        """Placement groups: kills (for good) every actor not dead whose shape asks for
        ``resource`` (its group was removed); ``why`` is the death message's cause."""
        effects: list[Msg] = []
        for row in list(self._rows.values()):
            spec = row.spec
            if row.phase is ActorPhase.DEAD or (resource not in spec.creation.resources
                                                and resource not in spec.placement):
                continue
            effects += self._to_dead(row, ActorDeathCause(kind="killed", message=(
                f"actor {row.actor_id} ({spec.class_name}) was killed because {why}; "
                "create the actor again in a placement group that exists")), now)
        return effects

    # --- the table ----------------------------------------------------------

    def on_poll(self, src: Address, msg: PollActors, now: Nanos) -> list[Msg]:
        changed, unknown = [], []
        for known in msg.known:
            row = self._rows.get(known.actor_id)
            if row is None:
                unknown.append(known.actor_id)
                continue
            self._subs.setdefault(row.actor_id, {})[src] = now
            if row.version > known.version:
                changed.append(row.info())
        if not changed and not unknown:
            return []
        return [Send(dst=src, msg=ActorTableUpdate(actors=tuple(changed), unknown=tuple(unknown)))]

    def _commit(self, row: ActorRow, now: Nanos) -> list[Msg]:
        """Bumps the row's version, writes it durably, and pushes it to subscribers."""
        self.version += 1
        row.version, row.written = self.version, row.stage
        key = row.actor_id.encode()
        effects: list[Msg] = [StorePut(table=ACTORS_TABLE, key=key,
                                       value=msgspec.msgpack.encode(row.record()))]
        subs = self._subs.get(row.actor_id)
        if subs:
            horizon = now - self._config.subscriber_timeout_ns
            for dst in [a for a, seen in subs.items() if seen < horizon]:
                del subs[dst]
            update = ActorTableUpdate(actors=(row.info(),))
            effects += [Send(dst=dst, msg=update) for dst in subs]
        return effects

    # --- placement and creation -------------------------------------------

    def _place(self, row: ActorRow, now: Nanos) -> list[Msg]:
        node_id, dead_affinity = self._choose_node(row)
        if dead_affinity:
            return self._to_dead(row, ActorDeathCause(kind="unschedulable", message=(
                f"actor {row.actor_id} ({row.spec.class_name}) has hard affinity to node "
                f"{dead_affinity!r}, which is dead or not in the cluster; make the affinity "
                "soft to let it run elsewhere")), now)
        if node_id is None:
            row.stage, row.raylet = Stage.UNPLACED, None
            moved = row.written is not Stage.UNPLACED  # write it unless the store says so
            return (self._commit(row, now) if moved else []) + self._arm_place(now)
        effects: list[Msg] = []
        request_id = self._next_request
        self._next_request += 1
        if request_id > self._reserved:
            self._reserved = request_id + self._config.request_block
            effects.append(StorePut(table=ACTOR_META_TABLE, key=_REQUESTS_KEY,
                                    value=str(self._reserved).encode()))
        row.stage, row.request_id, row.spilled = Stage.LEASING, request_id, False
        row.raylet = Address(node=node_id, component="raylet")
        target = self._cluster.node(node_id)
        row.node_incarnation = target.incarnation if target is not None else 0
        self._by_request[request_id] = row.actor_id
        effects += self._commit(row, now)
        return effects + self._send_lease_request(row, now)

    def _choose_node(self, row: ActorRow) -> tuple[NodeId | None, str]:
        return choose_node(row, self._cluster.live_nodes(), self._rows.values())

    def _arm_place(self, now: Nanos) -> list[Msg]:
        if self._place_armed:
            return []
        self._place_armed = True
        return [SetTimer(key=_PLACE_TIMER, at_ns=now + self._config.place_retry_ns)]

    def _place_unplaced(self, now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        for row in [r for r in self._rows.values() if r.stage is Stage.UNPLACED
                    and r.phase is not ActorPhase.DEAD]:
            effects += self._place(row, now)
        return effects

    def _send_lease_request(self, row: ActorRow, now: Nanos) -> list[Msg]:
        assert row.raylet is not None
        creation = row.spec.creation
        msg = RequestWorkerLease(request_id=row.request_id, shape=dict(creation.resources),
                                 affinity=creation.affinity, spilled=row.spilled)
        return [Send(dst=row.raylet, msg=msg),
                SetTimer(key=f"{_LEASE_TIMER}{row.actor_id}",
                         at_ns=now + self._config.lease_retry_ns)]

    def on_lease_granted(self, src: Address, msg: LeaseGranted, now: Nanos) -> list[Msg]:
        actor_id = self._by_request.get(msg.request_id)
        row = self._rows.get(actor_id) if actor_id is not None else None
        wanted = row is not None and row.stage is Stage.LEASING and row.raylet == src
        if msg.lease_id in self._returning:
            if row is None or not wanted:
                return []  # a duplicate grant of a lease we are giving back
            # A lease check overtook this grant and we gave the lease back: lease anew.
            del self._by_request[msg.request_id]
            return [CancelTimer(key=f"{_LEASE_TIMER}{row.actor_id}"), *self._place(row, now)]
        if row is None or not wanted:
            if msg.lease_id in self._by_lease:
                return []  # a duplicate grant of a lease we hold
            return self._returning.start(msg.lease_id, src, now)  # not wanted any more
        del self._by_request[msg.request_id]
        node = self._cluster.node(msg.node_id)
        row.stage, row.lease_id, row.worker, row.silent = Stage.CREATING, msg.lease_id, msg.worker, 0
        row.node_id, row.node_incarnation = msg.node_id, node.incarnation if node else 0
        self._by_lease[msg.lease_id] = row.actor_id
        effects: list[Msg] = [CancelTimer(key=f"{_LEASE_TIMER}{row.actor_id}")]
        effects += self._commit(row, now)
        if self._worker_dead(row):  # granted by a raylet process known to be gone
            return effects + self._worker_died(row, "its worker died as it was leased", now)
        return effects + self._send_create(row, now)

    def on_spillback(self, src: Address, msg: LeaseSpillback, now: Nanos) -> list[Msg]:
        actor_id = self._by_request.get(msg.request_id)
        row = self._rows.get(actor_id) if actor_id is not None else None
        if row is None or row.stage is not Stage.LEASING or row.raylet != src:
            return []
        row.raylet, row.spilled = Address(node=msg.node_id, component="raylet"), True
        target = self._cluster.node(msg.node_id)
        row.node_incarnation = target.incarnation if target is not None else 0
        return self._send_lease_request(row, now)

    def on_lease_rejected(self, src: Address, msg: LeaseRejected, now: Nanos) -> list[Msg]:
        actor_id = self._by_request.get(msg.request_id)
        row = self._rows.get(actor_id) if actor_id is not None else None
        if row is None or row.stage is not Stage.LEASING or row.raylet != src:
            return []
        del self._by_request[msg.request_id]
        row.stage, row.raylet = Stage.UNPLACED, None  # placed again on the retry timer
        effects: list[Msg] = [CancelTimer(key=f"{_LEASE_TIMER}{row.actor_id}")]
        return effects + self._commit(row, now) + self._arm_place(now)

    def _send_create(self, row: ActorRow, now: Nanos) -> list[Msg]:
        assert row.worker is not None
        msg = CreateActor(spec=row.spec, function=row.function, num_restarts=row.num_restarts,
                          lease_id=row.lease_id)
        return [Send(dst=row.worker, msg=msg),
                SetTimer(key=f"{_CREATE_TIMER}{row.actor_id}",
                         at_ns=now + self._config.create_retry_ns)]

    def on_creating(self, src: Address, msg: ActorCreating) -> list[Msg]:
        row = self._rows.get(msg.actor_id)
        if row is not None and row.stage is Stage.CREATING and row.worker == src and (
                row.num_restarts == msg.num_restarts):
            row.silent = 0
        return []

    def on_created(self, src: Address, msg: ActorCreated, now: Nanos) -> list[Msg]:
        row = self._rows.get(msg.actor_id)
        if row is None or row.stage is not Stage.CREATING or row.worker != src or (
                row.num_restarts != msg.num_restarts):
            return []  # a duplicate, or from a worker we gave up on
        effects: list[Msg] = [CancelTimer(key=f"{_CREATE_TIMER}{row.actor_id}")]
        if msg.error is not None:
            return effects + self._to_dead(row, msg.error, now)
        check_move(row, row.actor_id, row.phase, ActorPhase.ALIVE)
        row.phase, row.stage = ActorPhase.ALIVE, Stage.NONE
        return effects + self._commit(row, now)

    # --- failures ------------------------------------------------------------

    def on_worker_died(self, msg: LeasedWorkerDied, now: Nanos) -> list[Msg]:
        if msg.lease_id in self._returning:
            return self._returning.forget(msg.lease_id)  # the worker is gone: nothing to return
        actor_id = self._by_lease.get(msg.lease_id)
        row = self._rows.get(actor_id) if actor_id is not None else None
        if row is None:
            return []
        return self._worker_died(row, msg.cause, now)

    def on_cluster_changed(self, now: Nanos) -> list[Msg]:
        """The node table or the resource view moved: find dead workers and owners."""
        effects: list[Msg] = []
        for row in list(self._rows.values()):
            if row.phase is ActorPhase.DEAD:
                continue
            if self._owner_dead(row):
                effects += self._to_dead(row, _owner_died(row), now)
            elif row.worker is not None and self._worker_dead(row):
                node = row.worker.node
                effects += self._worker_died(row, f"its worker {row.worker} or its node "
                                                  f"{node!r} died", now)
            elif row.stage is Stage.LEASING and row.raylet is not None and self._node_gone(
                    row.raylet.node, row.node_incarnation):
                effects += self._drop_lease(row) + self._place(row, now)  # lease elsewhere
        return effects + self._place_unplaced(now)

    def _worker_dead(self, row: ActorRow) -> bool:
        assert row.worker is not None and row.node_id is not None
        return self._cluster.departed(row.worker) or self._node_gone(row.node_id,
                                                                     row.node_incarnation)

    def _node_gone(self, node_id: NodeId, incarnation: int) -> bool:
        """Whether that incarnation of the node is dead (or superseded by a newer one)."""
        info = self._cluster.node(node_id)
        if info is None:
            return False
        return info.state == "dead" or info.incarnation > incarnation

    def _owner_dead(self, row: ActorRow) -> bool:
        owner = row.spec.creation.owner
        if row.spec.detached:
            return False  # detached actors outlive their owner
        if owner.component == "driver":
            return self._cluster.departed(owner)  # its job ended (a driver's exit is reported)
        if owner.component != "worker":
            return False
        if self._cluster.departed(owner):
            return True
        info = self._cluster.node(owner.node)
        return info is not None and (info.state == "dead"
                                     or info.incarnation > row.owner_incarnation)

    def _worker_died(self, row: ActorRow, cause: str, now: Nanos) -> list[Msg]:
        """The worker of a creating or alive row died: place again, restart, or die."""
        effects = self._drop_lease(row)
        if row.phase is not ActorPhase.ALIVE:
            return effects + self._place(row, now)  # it never ran: not a restart
        if row.restarts_left():
            return effects + self._restart(row, now)
        return effects + self._to_dead(row, ActorDeathCause(kind="worker_died", message=(
            f"actor {row.actor_id} ({row.spec.class_name}) died: {cause}, and it may not "
            f"restart (max_restarts={row.spec.max_restarts}, restarted {row.num_restarts} "
            "times); raise max_restarts to let it restart")), now)

    def _restart(self, row: ActorRow, now: Nanos) -> list[Msg]:
        check_move(row, row.actor_id, row.phase, ActorPhase.RESTARTING)
        row.phase = ActorPhase.RESTARTING
        row.num_restarts += 1
        row.worker, row.node_id = None, None
        return self._place(row, now)

    def _kill_worker(self, row: ActorRow, now: Nanos) -> list[Msg]:
        """Gives the row's lease back as failed, so its raylet kills the worker."""
        lease_id, raylet = row.lease_id, row.raylet
        effects = self._drop_lease(row)
        if lease_id and raylet is not None:
            effects += self._returning.start(lease_id, raylet, now)
        return effects

    def _drop_lease(self, row: ActorRow) -> list[Msg]:
        """Forgets the row's lease or lease request (without giving anything back)."""
        effects: list[Msg] = []
        if row.stage is Stage.LEASING:
            self._by_request.pop(row.request_id, None)
            effects.append(CancelTimer(key=f"{_LEASE_TIMER}{row.actor_id}"))
            if row.raylet is not None:
                effects.append(Send(dst=row.raylet, msg=CancelLeaseRequest(
                    request_id=row.request_id)))
        if row.stage is Stage.CREATING:
            effects.append(CancelTimer(key=f"{_CREATE_TIMER}{row.actor_id}"))
        if row.lease_id:
            self._by_lease.pop(row.lease_id, None)
        row.lease_id, row.worker, row.raylet = "", None, None
        row.stage = Stage.UNPLACED if row.phase is not ActorPhase.DEAD else Stage.NONE
        return effects

    def _to_dead(self, row: ActorRow, cause: ActorDeathCause, now: Nanos) -> list[Msg]:
        check_move(row, row.actor_id, row.phase, ActorPhase.DEAD)
        effects = self._kill_worker(row, now)
        row.phase, row.stage, row.death = ActorPhase.DEAD, Stage.NONE, cause
        row.node_id = None
        if row.spec.name and self._names.get((row.spec.namespace, row.spec.name)) == row.actor_id:
            del self._names[(row.spec.namespace, row.spec.name)]
        self._dead[row.actor_id] = None
        effects += self._commit(row, now)
        while len(self._dead) > self._config.dead_max:
            oldest = next(iter(self._dead))
            del self._dead[oldest]
            del self._rows[oldest]
            self._subs.pop(oldest, None)
            effects.append(StoreDelete(table=ACTORS_TABLE, key=oldest.encode()))
        return effects

    # --- giving leases back ----------------------------------------------------

    def on_lease_check(self, src: Address, msg: LeaseCheck, now: Nanos) -> list[Msg]:
        """A raylet asks which of its leases the GCS holds. One it does not know may still
        host an actor instance, so it is given back as failed (killed), never reused."""
        effects: list[Msg] = []
        for index, lease_id in enumerate(msg.lease_ids):
            if lease_id in self._by_lease or lease_id in self._returning:
                continue
            request_id = msg.request_ids[index] if index < len(msg.request_ids) else -1
            row = self._rows.get(self._by_request.get(request_id, ActorId("")))
            if row is not None and row.stage is Stage.LEASING and row.raylet == src:
                continue  # its grant was lost: the request's next retransmit is granted again
            effects += self._returning.start(lease_id, src, now)
        reply = LeaseCheckReply(held=tuple(msg.lease_ids), released=())
        return [Send(dst=src, msg=reply), *effects]

    def on_return_ack(self, msg: ReturnWorkerAck) -> list[Msg]:
        return self._returning.forget(msg.lease_id)

    # --- timers ------------------------------------------------------------------

    def on_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key == _PLACE_TIMER:
            self._place_armed = False
            return self._place_unplaced(now)
        if key.startswith(RETURN_TIMER_PREFIX):
            return self._returning.send(key[len(RETURN_TIMER_PREFIX):], now)
        if key.startswith(_LEASE_TIMER):
            row = self._rows.get(ActorId(key[len(_LEASE_TIMER):]))
            if row is not None and row.stage is Stage.LEASING:
                return self._send_lease_request(row, now)
            return []
        if key.startswith(_CREATE_TIMER):
            row = self._rows.get(ActorId(key[len(_CREATE_TIMER):]))
            if row is not None and row.stage is Stage.CREATING:
                return self._on_create_timer(row, now)
        return []

    def _on_create_timer(self, row: ActorRow, now: Nanos) -> list[Msg]:
        row.silent += 1
        if row.silent <= self._config.create_silent_max:
            return self._send_create(row, now)
        # The worker is gone or cut off: give its lease back as failed (so it is killed
        # if it lives) and place the actor again. A creating actor never ran: no restart.
        return self._kill_worker(row, now) + self._place(row, now)

    # --- invariants --------------------------------------------------------------

    def check_invariants(self) -> None:
        names = {(r.spec.namespace, r.spec.name): r.actor_id for r in self._rows.values()
                 if r.spec.name and r.phase is not ActorPhase.DEAD}
        if names != self._names:
            raise InvariantViolation(f"gcs actors: name index {sorted(self._names.items())} "
                                     f"but live named actors {sorted(names.items())}")
        leasing = {r.request_id: r.actor_id for r in self._rows.values()
                   if r.stage is Stage.LEASING}
        if leasing != self._by_request:
            raise InvariantViolation("gcs actors: the lease request index disagrees with stages")
        for row in self._rows.values():
            holds = row.stage is Stage.CREATING or row.phase is ActorPhase.ALIVE
            if bool(row.lease_id) != holds or (holds and self._by_lease.get(
                    row.lease_id) != row.actor_id):
                raise InvariantViolation(
                    f"gcs actors: actor {row.actor_id!r} is {row.phase.value}/"
                    f"{row.stage.value} with lease {row.lease_id!r}")
            creating = row.phase in (ActorPhase.PENDING, ActorPhase.RESTARTING)
            if creating == (row.stage is Stage.NONE) or row.version > self.version:
                raise InvariantViolation(
                    f"gcs actors: actor {row.actor_id!r} is {row.phase.value} at stage "
                    f"{row.stage.value}, version {row.version} of {self.version}")
        if self._next_request - 1 > self._reserved:
            raise InvariantViolation("gcs actors: lease request ids ran past the reserved block")


def _owner_died(row: ActorRow) -> ActorDeathCause:
    owner = row.spec.creation.owner
    if owner.component == "driver":
        return ActorDeathCause(kind="owner_died", message=(
            f"actor {row.actor_id} ({row.spec.class_name}) died because its job ended: its "
            f"driver {owner} exited; create it with lifetime='detached' to let it outlive "
            "the job"))
    return ActorDeathCause(kind="owner_died", message=(
        f"actor {row.actor_id} ({row.spec.class_name}) died because its owner {owner} (the "
        "process that created it) died; create it with lifetime='detached' to let it "
        "outlive its creator"))
