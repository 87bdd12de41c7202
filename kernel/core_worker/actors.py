"""Caller side of actors: handles, per-caller ordered calls, creation, lookups, kills.

Theory of operation
-------------------
This process keeps one ``_Actor`` entry per actor it calls or owns, with the
latest row of the GCS actor table it knows (``ActorInfo``). The entry is kept
fresh by polling the GCS (``PollActors``, which also subscribes it to pushes)
every ``poll_ns`` while it has calls pending, while it owns the actor and the
actor is not dead, or at once when a call finds it unknown or a worker says
the view is stale.

Calls: ``ActorCallSubmitted`` queues a call (refused past
``max_pending_calls``; failed at once if the actor is dead). While the actor is
``ALIVE`` the queue drains in submission order: each call gets the next
sequence number of this process's *session* with the actor's current
incarnation (``num_restarts``) and is pushed to its worker
(``PushActorTask``), retransmitted every ``push_retry_ns`` until answered; at
most ``inflight_max`` are out at once. The worker runs each session's calls in
sequence-number order, so calls from one caller run in submission order.

Restarts: when the GCS shows the actor ``RESTARTING``, or ``ALIVE`` under a
newer incarnation, calls pushed to the old incarnation and unanswered either
go back to the front of the queue (in order, ``attempt`` + 1) while
``max_task_retries`` allows (-1: always), or fail with ``actor_died``; calls
never pushed simply wait. Sequence numbers start again at 0 in the new
incarnation. ``DEAD`` fails every pending call with the death cause, and any
later call at once. An answer to a call still pending is taken whatever the
attempt it answers (the call ran); answers to finished calls are dropped.

Ownership: the creator registers the actor with the GCS
(``RegisterActor``, retransmitted until answered; the host waits for the
answer). It pins the constructor's ref arguments until the actor is dead
(restarts re-run the constructor) and holds the actor's *handle object*
(``handle_object_id``): every ``ActorHandle`` holds a ref to it, so the
object table counts the owner's handles and its borrowers like any object.
When that object is freed and no call of this process is pending, the
actor is out of scope: the owner asks the GCS to stop it (``KillActor`` with
``out_of_scope``; the GCS spares named and detached actors).

Cancel (``cancel``): a call still queued here fails at once with
``task_cancelled``; one already pushed is pushed again marked ``cancelled``
(its retransmits too), and the worker answers it ``task_cancelled`` unless it
already runs (see actor_protocol.py). A cancelled call is never retried.

Retries on exceptions: an answer with ``retryable_error`` (the method raised
and its spec has ``retry_exceptions``) sends the call back to the front of
the queue (``attempt`` + 1, a new ``seq``) while ``max_task_retries`` allows.

Lookups and kills (``GetNamedActor``, ``KillActor``) are GCS requests
retransmitted every ``request_retry_ns`` until answered. A kill this process
asks for with ``no_restart`` fails its own pending calls at once.

Bookkeeping at scale: per-input work is proportional to what changed.
``settle`` looks only at owned actors marked dirty (their handle object was
freed, or their last pending call finished); dead entries are trimmed from
an insertion-ordered index of dead actors; ``check_invariants`` checks a
bounded number of entries and calls per step, cycling through all of them.

Invariants (``check_invariants``): every call is indexed under its actor,
queued or in flight exactly once; in-flight calls carry distinct sequence
numbers below the entry's next one.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

import msgspec
from shoal.kernel.core_worker.actor_protocol import (
    ActorCallRefused,
    ActorCallSubmitted,
    ActorCreationRequested,
    ActorKillRequested,
    ActorLookupRequested,
    ActorRequestCompleted,
    ActorTaskAck,
    ActorTaskDone,
    ActorTaskRejected,
    PushActorTask,
    handle_actor_id,
    handle_object_id,
)
from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import ObjectError, ObjectResult
from shoal.kernel.core_worker.streams import StreamTable
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.actor_protocol import (
    ActorDeathCause,
    ActorInfo,
    ActorRegistered,
    ActorTableUpdate,
    ActorVersion,
    GetNamedActor,
    KillActor,
    KillActorReply,
    NamedActorReply,
    PollActors,
    RegisterActor,
)
from shoal.kernel.ids import NANOS_PER_MILLI, ActorId, Nanos, ObjectId, TaskId
from shoal.kernel.messages import Address, CancelTimer, Msg, Rejected, Send, SetTimer
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec

ACTOR_TIMER_PREFIX = "actor."
_PUSH_TIMER = ACTOR_TIMER_PREFIX + "push."
_REQUEST_TIMER = ACTOR_TIMER_PREFIX + "request."
_POLL_TIMER = ACTOR_TIMER_PREFIX + "poll"
_CHECK_BUDGET = 32  # entries (and calls) checked per check_invariants call
ACTOR_REQUEST_TYPES = ("RegisterActor", "GetNamedActor", "KillActor")

GcsRequest = RegisterActor | GetNamedActor | KillActor


class ActorCallerConfig(msgspec.Struct, frozen=True, kw_only=True):
    poll_ns: Nanos = 500 * NANOS_PER_MILLI
    push_retry_ns: Nanos = 1000 * NANOS_PER_MILLI
    request_retry_ns: Nanos = 200 * NANOS_PER_MILLI
    inflight_max: int = 1024  # calls out to one actor at once (the rest wait queued)
    dead_entries_max: int = 1024  # idle entries of dead actors remembered


@dataclass(slots=True, eq=False)
class _Call:
    spec: TaskSpec
    retries_left: int
    seq: int = -1  # in the current incarnation; -1 while queued
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class _Actor:
    actor_id: ActorId
    session: str  # this process's caller id for the actor: sequence numbers count per session
    info: ActorInfo | None = None
    incarnation: int = -1  # the num_restarts our sequence numbers belong to
    next_seq: int = 0
    queue: deque[TaskId] = field(default_factory=deque)
    inflight: dict[int, TaskId] = field(default_factory=dict)  # seq -> call, in seq order
    owned: bool = False
    gc: bool = False  # owned, neither named nor detached: stopped when out of scope
    registered: bool = False
    scope_killed: bool = False
    doomed: ActorDeathCause | None = None  # this process killed it; the GCS will confirm
    pinned: tuple[ObjectRefInfo, ...] = ()  # constructor ref args, pinned while it may restart

    @property
    def dead(self) -> bool:
        return self.info is not None and self.info.state == "DEAD"

    @property
    def death(self) -> ActorDeathCause | None:
        return self.info.death if self.info is not None and self.dead else self.doomed

    def pending(self) -> int:
        return len(self.queue) + len(self.inflight)


@dataclass(slots=True, eq=False)
class _Request:
    call_id: int | None  # the host call it answers (None: our own, e.g. out of scope)
    msg: GcsRequest


class ActorCaller:
    """Actors this process calls or owns. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, gcs: Address, objects: ObjectTable,
                 config: ActorCallerConfig, streams: StreamTable | None = None) -> None:
        self._me = me
        self._streams = streams or StreamTable(me, objects)  # generator methods (issue 5)
        self._gcs = gcs
        self._objects = objects
        self._config = config
        self._actors: OrderedDict[ActorId, _Actor] = OrderedDict()
        self._calls: dict[TaskId, tuple[ActorId, _Call]] = {}
        self._requests: dict[int, _Request] = {}
        self._next_request = 1
        self._next_session = 1
        self._session = "0"
        self._poll_armed = False
        self._gc_watch: dict[ActorId, None] = {}  # owned, collectable, registered, not dead
        self._gc_dirty: dict[ActorId, None] = {}  # watched actors settle must look at
        self._window_opened: dict[ActorId, None] = {}  # a call left a full window: pump
        self._dead: dict[ActorId, None] = {}  # dead entries, oldest first (to trim)
        self._check_actors: list[ActorId] = []
        self._check_calls: list[TaskId] = []

    # --- introspection ---------------------------------------------------

    @property
    def pending_calls(self) -> int:
        return len(self._calls)

    @property
    def pending_requests(self) -> int:
        return len(self._requests)

    def info(self, actor_id: ActorId) -> ActorInfo | None:
        entry = self._actors.get(actor_id)
        return entry.info if entry is not None else None

    def known_incarnation(self, actor_id: ActorId) -> int:
        """The num_restarts of the actor this process currently pushes calls to (-1: none)."""
        entry = self._actors.get(actor_id)
        return entry.incarnation if entry is not None else -1

    def known_restarts(self, actor_id: ActorId) -> int:
        """The highest ``num_restarts`` of the actor this process has heard of (0: none)."""
        entry = self._actors.get(actor_id)
        return entry.info.num_restarts if entry is not None and entry.info is not None else 0

    def on_started(self, now: Nanos) -> None:
        """A new process: its sessions must differ from any earlier process's at this address."""
        self._session = str(now)

    def _entry(self, actor_id: ActorId) -> _Actor:
        entry = self._actors.get(actor_id)
        if entry is None:
            entry = _Actor(actor_id=actor_id, session=f"{self._session}.{self._next_session}")
            self._next_session += 1
            self._actors[actor_id] = entry
        self._actors.move_to_end(actor_id)
        return entry

    # --- creation --------------------------------------------------------

    def on_create(self, msg: ActorCreationRequested, now: Nanos) -> list[Msg]:
        spec = msg.spec
        entry = self._entry(spec.actor_id)
        entry.owned = True
        entry.gc = not spec.detached and not spec.name
        entry.pinned = tuple(_arg_refs(spec.creation))
        effects: list[Msg] = []
        for info in entry.pinned:
            effects += self._objects.change_tasks(info, +1)
        hid = handle_object_id(spec.actor_id)
        self._objects.add_owned_pending(hid)
        effects += self._objects.store(ObjectResult(object_id=hid, value=Payload(data=b"")))
        request = RegisterActor(request_id=0, spec=spec, function=msg.function,
                                get_if_exists=msg.get_if_exists)
        return effects + self._request(msg.call_id, request, now)

    def _on_registered(self, request: _Request, msg: ActorRegistered, now: Nanos) -> list[Msg]:
        entry = self._actors.get(msg.actor_id)
        if msg.info is None or entry is None:  # the name is taken, or refused
            effects = self._disown(msg.actor_id)
            error = msg.error
            if msg.taken is not None and not (isinstance(request.msg, RegisterActor)
                                              and request.msg.get_if_exists):
                taken = msg.taken
                error = (f"The name {taken.name!r} (namespace={taken.namespace!r}) is already "
                         f"taken by actor {taken.actor_id} ({taken.class_name}); pick another "
                         "name, or pass get_if_exists=True to get a handle to that actor")
            return effects + self._complete(request, ActorRequestCompleted(
                call_id=0, handle=msg.taken if not error else None, info=msg.taken_info,
                error=error))
        entry.registered = True
        if entry.gc:
            self._gc_watch[entry.actor_id] = None
            self._gc_dirty[entry.actor_id] = None
        effects = self._apply(entry, msg.info, now) + self._arm_poll(now)
        return effects + self._complete(request, ActorRequestCompleted(
            call_id=0, info=msg.info, created=True))

    def _disown(self, actor_id: ActorId) -> list[Msg]:
        """Undoes an owned entry whose registration was refused."""
        entry = self._actors.pop(actor_id, None)
        effects: list[Msg] = []
        for info in entry.pinned if entry is not None else ():
            effects += self._objects.change_tasks(info, -1)
        return effects

    # --- lookups and kills ------------------------------------------------

    def on_lookup(self, msg: ActorLookupRequested, now: Nanos) -> list[Msg]:
        request = GetNamedActor(request_id=0, name=msg.name, namespace=msg.namespace)
        return self._request(msg.call_id, request, now)

    def on_kill(self, msg: ActorKillRequested, now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        entry = self._actors.get(msg.actor_id)
        if msg.no_restart and entry is not None and entry.death is None:
            entry.doomed = ActorDeathCause(kind="killed", message=(
                f"actor {msg.actor_id} was killed with shoal.kill() by this process; calls "
                "to it fail from now on. Create a new actor to go on"))
            effects += self._fail_all(entry, _died(entry.doomed))
        request = KillActor(request_id=0, actor_id=msg.actor_id, no_restart=msg.no_restart)
        return effects + self._request(msg.call_id, request, now)

    def _request(self, call_id: int | None, msg: GcsRequest, now: Nanos) -> list[Msg]:
        request_id = self._next_request
        self._next_request += 1
        self._requests[request_id] = _Request(
            call_id=call_id, msg=msgspec.structs.replace(msg, request_id=request_id))
        return self._send_request(request_id, now)

    def _send_request(self, request_id: int, now: Nanos) -> list[Msg]:
        request = self._requests[request_id]
        return [Send(dst=self._gcs, msg=request.msg),
                SetTimer(key=f"{_REQUEST_TIMER}{request_id}",
                         at_ns=now + self._config.request_retry_ns)]

    def on_gcs_reply(self, msg: Msg, now: Nanos) -> list[Msg]:
        """``ActorRegistered``, ``NamedActorReply``, ``KillActorReply`` or ``Rejected``."""
        request_id = getattr(msg, "request_id", 0)
        request = self._requests.pop(request_id, None)
        if request is None:
            return []  # a duplicate answer
        effects: list[Msg] = [CancelTimer(key=f"{_REQUEST_TIMER}{request_id}")]
        match msg:
            case ActorRegistered():
                return effects + self._on_registered(request, msg, now)
            case NamedActorReply():
                error = "" if msg.handle is not None else "not found"
                return effects + self._complete(request, ActorRequestCompleted(
                    call_id=0, handle=msg.handle, info=msg.info, error=error))
            case KillActorReply():
                error = "" if msg.found else "not found"
                return effects + self._complete(request, ActorRequestCompleted(
                    call_id=0, error=error))
            case Rejected():
                if isinstance(request.msg, RegisterActor):
                    effects += self._disown(request.msg.spec.actor_id)
                return effects + self._complete(request, ActorRequestCompleted(
                    call_id=0, error=msg.reason))
        return effects

    @staticmethod
    def _complete(request: _Request, done: ActorRequestCompleted) -> list[Msg]:
        if request.call_id is None:
            return []
        return [msgspec.structs.replace(done, call_id=request.call_id)]

    # --- calls ---------------------------------------------------------------

    def submit(self, msg: ActorCallSubmitted, now: Nanos) -> list[Msg]:
        spec = msg.spec
        if spec.task_id in self._calls:
            return []  # a duplicate submission
        entry = self._entry(msg.actor_id)
        for object_id in spec.return_ids:
            self._objects.add_owned_pending(object_id)
        limit = msg.max_pending_calls  # the handle's, as Ray counts it per caller
        if limit > 0 and entry.pending() >= limit:
            message = (f"actor {msg.actor_id}: {entry.pending()} calls from this process are "
                       f"pending, the limit max_pending_calls={limit}; wait for some to "
                       "finish (shoal.get or shoal.wait) before calling more, or raise it")
            error = ObjectError(kind="pending_calls_exceeded", message=message)
            effects: list[Msg] = [ActorCallRefused(task_id=spec.task_id, message=message)]
            return effects + self._store_all(spec, error)
        effects = []
        for info in _arg_refs(spec):
            effects += self._objects.change_tasks(info, +1)
        self._calls[spec.task_id] = (entry.actor_id, _Call(spec=spec,
                                                           retries_left=msg.max_task_retries))
        death = entry.death
        if death is not None:
            return effects + self._finish(spec.task_id, None, _died(death))
        entry.queue.append(spec.task_id)
        if entry.info is None:
            effects += self._poll(now)  # learn where it is now, not at the next tick
        return effects + self._arm_poll(now) + self._pump(entry, now)

    def _pump(self, entry: _Actor, now: Nanos) -> list[Msg]:
        info = entry.info
        if info is None or info.state != "ALIVE" or info.worker is None:
            return []
        effects: list[Msg] = []
        if info.num_restarts != entry.incarnation:
            effects += self._lose_incarnation(entry)
            entry.incarnation, entry.next_seq = info.num_restarts, 0
        while entry.queue and len(entry.inflight) < self._config.inflight_max:
            task_id = entry.queue.popleft()
            _, call = self._calls[task_id]
            call.seq = entry.next_seq
            entry.next_seq += 1
            entry.inflight[call.seq] = task_id
            effects += self._push(entry, call, now)
        return effects

    def _push(self, entry: _Actor, call: _Call, now: Nanos) -> list[Msg]:
        assert entry.info is not None and entry.info.worker is not None
        resolved: list[Payload | None] = []
        for arg in call.spec.args:
            result = self._objects.result(arg.ref.object_id) if arg.ref else None
            inline = result is not None and result.error is None and not getattr(
                result, "stored", False)
            resolved.append(result.value if inline and result is not None else None)
        msg = PushActorTask(
            actor_id=entry.actor_id, num_restarts=entry.incarnation, caller=entry.session,
            seq=call.seq, processed=next(iter(entry.inflight), entry.next_seq),  # lowest out
            spec=call.spec, resolved=tuple(resolved), cancelled=call.cancelled)
        return [Send(dst=entry.info.worker, msg=msg),
                SetTimer(key=f"{_PUSH_TIMER}{call.spec.task_id}",
                         at_ns=now + self._config.push_retry_ns)]

    def _lose_incarnation(self, entry: _Actor) -> list[Msg]:
        """Calls out to an incarnation that ended: back to the queue's front, or failed."""
        effects: list[Msg] = []
        retry: list[TaskId] = []
        for seq in sorted(entry.inflight):
            task_id = entry.inflight[seq]
            _, call = self._calls[task_id]
            call.seq = -1
            if call.cancelled:
                effects += self._finish(task_id, None, _cancelled(call.spec))
            elif call.retries_left != 0:
                effects.append(CancelTimer(key=f"{_PUSH_TIMER}{task_id}"))
                call.retries_left -= 1 if call.retries_left > 0 else 0
                call.spec = msgspec.structs.replace(call.spec, attempt=call.spec.attempt + 1)
                retry.append(task_id)
            else:
                effects += self._finish(task_id, None, ObjectError(kind="actor_died", message=(
                    f"actor {entry.actor_id}: its worker died (or it restarted) while call "
                    f"{call.spec.name} ({task_id}) was out to it, and the call may not be "
                    f"retried (max_task_retries={call.spec.max_retries}); set "
                    "max_task_retries to retry calls after a restart")))
        entry.inflight.clear()
        entry.queue.extendleft(reversed(retry))
        return effects

    def on_push_timer(self, task_id: TaskId, now: Nanos) -> list[Msg]:
        found = self._calls.get(task_id)
        if found is None or found[1].seq < 0:
            return []
        entry = self._actors[found[0]]
        return self._push(entry, found[1], now)

    def on_ack(self, msg: ActorTaskAck) -> list[Msg]:
        return []  # retransmits go on: the worker answers each from its record

    def on_rejected(self, msg: ActorTaskRejected, now: Nanos) -> list[Msg]:
        found = self._calls.get(msg.task_id)
        if found is None or found[1].seq < 0:
            return []
        return self._poll(now)  # our view of the actor is stale: ask the GCS now

    def on_done(self, src: Address, msg: ActorTaskDone, now: Nanos) -> list[Msg]:
        found = self._calls.get(msg.task_id)
        if found is None:
            return []  # a duplicate, or a call that finished otherwise
        call = found[1]
        failed = any(r.error is not None for r in msg.results)
        if failed and msg.retryable_error and call.retries_left != 0 and not call.cancelled:
            return self._retry_call(self._actors[found[0]], call, now)
        effects: list[Msg] = []
        for info in msg.borrowed:  # the actor keeps these: register it with their owners
            effects += self._objects.hand_off(info, src, msg.task_id, now)
        for result in msg.results:
            for inner in result.value.contained if result.value else ():
                if inner.owner == src:
                    self._objects.ensure(inner)
                    self._objects.mark_registered_borrower(inner.object_id)
        return effects + self._finish(msg.task_id, msg.results, None, msg.stream_count)

    def _retry_call(self, entry: _Actor, call: _Call, now: Nanos) -> list[Msg]:
        """The method raised an exception its spec retries: run the call again (new seq)."""
        task_id = call.spec.task_id
        if call.seq >= 0:
            entry.inflight.pop(call.seq, None)
        call.seq = -1
        call.retries_left -= 1 if call.retries_left > 0 else 0
        call.spec = msgspec.structs.replace(call.spec, attempt=call.spec.attempt + 1)
        entry.queue.appendleft(task_id)
        return [CancelTimer(key=f"{_PUSH_TIMER}{task_id}"), *self._pump(entry, now)]

    # --- cancel ------------------------------------------------------------------

    def owns_call(self, task_id: TaskId) -> bool:
        return task_id in self._calls

    def cancel(self, task_id: TaskId, now: Nanos) -> list[Msg]:
        """Cancels a pending call: a queued one fails now, a pushed one is re-pushed
        marked ``cancelled`` (the worker decides: it may already run)."""
        found = self._calls.get(task_id)
        if found is None or found[1].cancelled:
            return []  # finished already, or cancelled before
        actor_id, call = found
        call.cancelled = True
        if call.seq < 0:
            return self._finish(task_id, None, _cancelled(call.spec))
        return self._push(self._actors[actor_id], call, now)

    def _finish(self, task_id: TaskId, results: tuple[ObjectResult, ...] | None,
                error: ObjectError | None, stream_count: int | None = None) -> list[Msg]:
        actor_id, call = self._calls.pop(task_id)
        entry = self._actors.get(actor_id)
        effects: list[Msg] = [CancelTimer(key=f"{_PUSH_TIMER}{task_id}")]
        if call.spec.streaming:  # the end of its stream, before its head completes
            head = results[0] if results else ObjectResult(
                object_id=call.spec.return_ids[0], error=error)
            effects += self._streams.on_task_finished(task_id, head, stream_count)
        if entry is not None:
            if call.seq >= 0:
                entry.inflight.pop(call.seq, None)
                if entry.queue:  # calls wait for room in the window: settle pushes them
                    self._window_opened[actor_id] = None
            elif task_id in entry.queue:
                entry.queue.remove(task_id)
            if actor_id in self._gc_watch and not entry.pending():
                self._gc_dirty[actor_id] = None  # its last call: it may be out of scope now
        if results is not None:
            for result in results:
                effects += self._objects.store(result)
        elif error is not None:
            effects += self._store_all(call.spec, error)
        for info in _arg_refs(call.spec):
            effects += self._objects.change_tasks(info, -1)
        return effects

    def _store_all(self, spec: TaskSpec, error: ObjectError) -> list[Msg]:
        effects: list[Msg] = []
        for object_id in spec.return_ids:
            effects += self._objects.store(ObjectResult(object_id=object_id, error=error))
        return effects

    def _fail_all(self, entry: _Actor, error: ObjectError) -> list[Msg]:
        effects: list[Msg] = []
        for task_id in [*entry.inflight.values(), *entry.queue]:
            effects += self._finish(task_id, None, error)
        entry.inflight.clear()
        entry.queue.clear()
        return effects

    # --- the actor table --------------------------------------------------------

    def on_table_update(self, msg: ActorTableUpdate, now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        for info in msg.actors:
            entry = self._actors.get(info.actor_id)
            if entry is not None and info.version > _version(entry):
                effects += self._apply(entry, info, now)
        for actor_id in msg.unknown:
            entry = self._actors.get(actor_id)
            if entry is not None and (entry.registered or not entry.owned) and not entry.dead:
                cause = ActorDeathCause(kind="worker_died", message=(
                    f"actor {actor_id} is gone: the GCS has no record of it (it died long "
                    "ago and was forgotten)"))
                effects += self._apply(entry, ActorInfo(
                    actor_id=actor_id, state="DEAD", version=_version(entry) + 1,
                    death=cause), now)
        return effects

    def _apply(self, entry: _Actor, info: ActorInfo, now: Nanos) -> list[Msg]:
        entry.info = info
        if info.state == "DEAD":
            assert info.death is not None
            effects = self._fail_all(entry, _died(info.death))
            for pinned in entry.pinned:
                effects += self._objects.change_tasks(pinned, -1)
            entry.pinned = ()
            self._gc_watch.pop(entry.actor_id, None)
            self._gc_dirty.pop(entry.actor_id, None)
            self._dead[entry.actor_id] = None
            self._trim_dead()
            return effects
        if info.state == "RESTARTING" or (info.state == "ALIVE"
                                          and info.num_restarts != entry.incarnation):
            effects = self._lose_incarnation(entry)
            entry.incarnation = -1
            return effects + self._pump(entry, now)
        return self._pump(entry, now)

    def _poll(self, now: Nanos) -> list[Msg]:
        known = tuple(ActorVersion(actor_id=e.actor_id, version=_version(e))
                      for e in self._actors.values() if self._watching(e))
        if not known:
            return []
        return [Send(dst=self._gcs, msg=PollActors(known=known)), *self._arm_poll(now)]

    def _arm_poll(self, now: Nanos) -> list[Msg]:
        if self._poll_armed:
            return []
        self._poll_armed = True
        return [SetTimer(key=_POLL_TIMER, at_ns=now + self._config.poll_ns)]

    @staticmethod
    def _watching(entry: _Actor) -> bool:
        if entry.dead:
            return False
        return bool(entry.pending()) or (entry.owned and entry.registered)

    def _trim_dead(self) -> None:
        """Forgets the oldest dead entries past ``dead_entries_max`` (calls to a dead actor
        fail at once, so a dead entry never has pending calls)."""
        while len(self._dead) > self._config.dead_entries_max:
            actor_id = next(iter(self._dead))
            del self._dead[actor_id]
            entry = self._actors.get(actor_id)
            if entry is not None and entry.dead and not entry.pending():
                del self._actors[actor_id]

    def on_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key == _POLL_TIMER:
            self._poll_armed = False
            return self._poll(now)
        if key.startswith(_PUSH_TIMER):
            return self.on_push_timer(TaskId(key[len(_PUSH_TIMER):]), now)
        if key.startswith(_REQUEST_TIMER):
            request_id = int(key[len(_REQUEST_TIMER):])
            return self._send_request(request_id, now) if request_id in self._requests else []
        return []

    # --- end of each input ---------------------------------------------------------

    def on_object_freed(self, object_id: ObjectId) -> None:
        """An object was freed; if it is a watched actor's handle object, settle looks."""
        actor_id = handle_actor_id(object_id)
        if actor_id is not None and actor_id in self._gc_watch:
            self._gc_dirty[actor_id] = None

    def settle(self, now: Nanos) -> list[Msg]:
        """At the end of each input: stops owned actors whose every handle is gone.
        Only the actors marked dirty since the last input are looked at. Also pushes
        queued calls of actors whose in-flight window has room again."""
        effects: list[Msg] = []
        while self._window_opened:
            actor_id = next(iter(self._window_opened))
            del self._window_opened[actor_id]
            entry = self._actors.get(actor_id)
            if entry is not None:
                effects += self._pump(entry, now)
        while self._gc_dirty:
            actor_id = next(iter(self._gc_dirty))
            del self._gc_dirty[actor_id]
            entry = self._actors.get(actor_id)
            if entry is None or actor_id not in self._gc_watch:
                continue
            if entry.pending() or handle_object_id(actor_id) in self._objects:
                continue
            del self._gc_watch[actor_id]
            entry.scope_killed = True
            effects += self._request(None, KillActor(
                request_id=0, actor_id=actor_id, out_of_scope=True), now)
        return effects

    def check_invariants(self) -> None:
        """Sequence numbers stay below each entry's next one, and every call is indexed
        where its entry says. Runs after every step, so it checks at most
        ``_CHECK_BUDGET`` entries and calls per call, cycling through all of them."""
        if not self._actors and not self._calls:
            return  # nothing to check (the queues hold only ids of rows since removed)
        if not self._check_actors:
            self._check_actors = list(self._actors)
        for _ in range(min(_CHECK_BUDGET, len(self._check_actors))):
            entry = self._actors.get(self._check_actors.pop())
            if entry is not None:
                self._check_entry(entry)
        if not self._check_calls:
            self._check_calls = list(self._calls)
        for _ in range(min(_CHECK_BUDGET, len(self._check_calls))):
            task_id = self._check_calls.pop()
            found = self._calls.get(task_id)
            if found is None:
                continue
            entry = self._actors.get(found[0])
            seq = found[1].seq
            indexed = entry is not None and (entry.inflight.get(seq) == task_id if seq >= 0
                                             else len(entry.queue) > 16 or task_id in entry.queue)
            if not indexed:
                raise InvariantViolation(
                    f"core_worker actors: call {task_id!r} to {found[0]!r} (seq {seq}) is "
                    "neither queued nor in flight under its actor")

    def _check_entry(self, entry: _Actor) -> None:
        if entry.inflight and next(reversed(entry.inflight)) >= entry.next_seq:
            raise InvariantViolation(
                f"core_worker actors: a call to {entry.actor_id!r} is in flight with a "
                f"seq not below the next one, {entry.next_seq}")
        if len(entry.inflight) > 16:
            return
        for seq, task_id in entry.inflight.items():
            found = self._calls.get(task_id)
            if found is None or found[0] != entry.actor_id or found[1].seq != seq:
                raise InvariantViolation(
                    f"core_worker actors: call {task_id!r} is in flight to "
                    f"{entry.actor_id!r} as seq {seq} but not indexed so")


def _version(entry: _Actor) -> int:
    return entry.info.version if entry.info is not None else 0


def _cancelled(spec: TaskSpec) -> ObjectError:
    return ObjectError(kind="task_cancelled", message=(
        f"actor call {spec.name} ({spec.task_id}) was cancelled before it started; "
        "its results will never be available"))


def _died(cause: ActorDeathCause) -> ObjectError:
    return ObjectError(kind="actor_died", message=cause.message, data=cause.data)


def _arg_refs(spec: TaskSpec) -> list[ObjectRefInfo]:
    refs: list[ObjectRefInfo] = []
    for arg in spec.args:
        if arg.ref is not None:
            refs.append(arg.ref)
        elif arg.value is not None:
            refs.extend(arg.value.contained)
    return refs
