"""Actor side of a worker: host one actor, run its constructor, then its calls in order.

Theory of operation
-------------------
A worker hosts at most one actor incarnation, the one the GCS leased it for:
``CreateActor`` (from the GCS) moves the host from ``EMPTY`` to
``CONSTRUCTING``: the constructor's ref arguments are fetched, then the host
is asked to instantiate the class (``CreateActorInstance``). Its report
(``ActorInstanceCreated``) makes the actor ``READY``, or ``FAILED`` if the
constructor raised; either way the GCS is answered ``ActorCreated``
(retransmits of ``CreateActor`` are answered ``ActorCreating`` meanwhile, and
the cached ``ActorCreated`` after). A ``CreateActor`` for another actor or
incarnation is refused.

Concurrency groups (Ray's ``concurrency_groups``): each call belongs to the
group its spec names (``concurrency_group``, if the actor defines it) or to
the default group. Each group has its own queue and limit (the default group's
is ``max_concurrency``), so a group at its limit, or whose head waits for its
arguments, never holds back the calls of another group; within a group calls
start in acceptance order.

Calls: ``PushActorTask`` names the caller's session and its sequence number.
Sessions are keyed by the caller's address and the session it names. Each
session has an ``expected`` number: the call bearing it is *accepted*
(then the buffered ones that follow it), later ones wait in a buffer, earlier
ones are retransmits (answered from the session's record of answers, or
``ActorTaskAck`` while they are pending; a first push gets no ack, which would
be one more message per call for a caller that only needs the answer). Accepted calls line up in one queue
in acceptance order; the head starts (``ExecuteActorTask``) once its ref
arguments are here and fewer than ``max_concurrency`` calls run, so calls of
one caller start in submission order (and, with ``max_concurrency=1``, run
one after another in that order). ``ActorTaskExecuted`` answers the caller
``ActorTaskDone``, kept in the session's record until the caller's
``processed`` mark passes it. A ``FAILED`` actor answers every call with the
constructor's error. A push for an actor or incarnation not hosted here is
answered ``ActorTaskRejected`` (the caller's view is stale).

Cancel: a push marked ``cancelled`` for a call not yet started answers it
``task_cancelled`` without running it: at once if it was accepted (it leaves
the queue), else when its ``seq`` is accepted (the sequence still advances
past it, so it never blocks later calls). A running call is left to finish,
unless the host runs this actor's calls as coroutines (``is_async``): then
the host is asked to ``InterruptActorTask``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

from shoal.kernel.core_worker.actor_protocol import (
    ActorInstanceCreated,
    ActorTaskAck,
    ActorTaskDone,
    ActorTaskExecuted,
    ActorTaskRejected,
    CreateActorInstance,
    ExecuteActorTask,
    InterruptActorTask,
    PushActorTask,
)
from shoal.kernel.core_worker.arguments import arg_value, resolve_args
from shoal.kernel.core_worker.executor import hand_off_results
from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import LocalObject, ObjectError, ObjectResult
from shoal.kernel.core_worker.stream_protocol import StreamItemAck, StreamItemProduced
from shoal.kernel.core_worker.streams import StreamOutbox
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.actor_protocol import (
    ActorCreated,
    ActorCreating,
    ActorDeathCause,
    ActorSpec,
    CreateActor,
)
from shoal.kernel.ids import Nanos, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address, Msg, Rejected, Send
from shoal.kernel.raylet.object_protocol import PinObject
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec

SESSIONS_MAX = 4096  # caller sessions remembered, least recently active dropped


class HostPhase(Enum):
    EMPTY = "empty"
    CONSTRUCTING = "constructing"
    READY = "ready"
    FAILED = "failed"


@dataclass(slots=True, eq=False)
class _Run:
    """One call (or the constructor) while its arguments resolve and it runs."""

    spec: TaskSpec
    caller: Address
    session: tuple[Address, str] = (Address(node=NodeId(""), component="worker"), "")
    seq: int = -1
    resolved: tuple[Payload | None, ...] = ()
    args: list[Payload | LocalObject | None] = field(default_factory=list)
    waiting: dict[ObjectId, list[int]] = field(default_factory=dict)
    counted: list[ObjectRefInfo] = field(default_factory=list)
    error: ObjectError | None = None
    started: bool = False
    outbox: StreamOutbox | None = None  # a generator method's items in flight (issue 5)
    final: ActorTaskExecuted | None = None  # its report, answered once every item is acked


@dataclass(slots=True, eq=False)
class _Session:
    expected: int = 0
    buffered: dict[int, tuple[PushActorTask, Address]] = field(default_factory=dict)
    answers: dict[int, ActorTaskDone] = field(default_factory=dict)


class ActorHost:
    """The actor this worker hosts, if any. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, objects: ObjectTable) -> None:
        self._me = me
        self._objects = objects
        self.phase = HostPhase.EMPTY
        self.spec: ActorSpec | None = None
        self.num_restarts = 0
        self._gcs: Address | None = None
        self._function = b""
        self._created: ActorCreated | None = None
        self._ctor: _Run | None = None
        self._sessions: OrderedDict[tuple[Address, str], _Session] = OrderedDict()
        self._ready: dict[str, deque[_Run]] = {}  # per concurrency group ("": default)
        self._running: dict[TaskId, _Run] = {}
        self._flushing: dict[TaskId, _Run] = {}  # ran; items not all acked yet (issue 5)
        self._running_in: dict[str, int] = {}  # calls running per concurrency group
        self._is_async = False  # the host runs calls as coroutines (it can interrupt them)
        self.executed = 0

    @property
    def busy(self) -> bool:
        return bool(self._running) or any(self._ready.values())

    def _group(self, spec: TaskSpec) -> str:
        groups = self.spec.concurrency_groups if self.spec is not None else {}
        return spec.concurrency_group if spec.concurrency_group in groups else ""

    def _limit(self, group: str) -> int:
        assert self.spec is not None
        return self.spec.concurrency_groups[group] if group else self.spec.max_concurrency

    def _queued(self) -> list[_Run]:
        return [run for queue in self._ready.values() for run in queue]

    @property
    def running_calls(self) -> int:
        return len(self._running)

    # --- creation --------------------------------------------------------------

    def on_create(self, src: Address, msg: CreateActor, now: Nanos) -> list[Msg]:
        spec = self.spec
        if spec is not None:
            if spec.actor_id != msg.spec.actor_id or self.num_restarts != msg.num_restarts:
                return [Send(dst=src, msg=Rejected(request_type="CreateActor", reason=(
                    f"worker {self._me} already hosts actor {spec.actor_id} (incarnation "
                    f"{self.num_restarts}); a worker hosts one actor for its whole life")))]
            if self._created is not None:
                return [Send(dst=src, msg=self._created)]
            return [Send(dst=src, msg=ActorCreating(actor_id=spec.actor_id,
                                                    num_restarts=self.num_restarts))]
        if src.component != "gcs" or self._me.component != "worker":
            return [Send(dst=src, msg=Rejected(request_type="CreateActor", reason=(
                f"{self._me}: only the GCS may place an actor, and only on a worker")))]
        self.spec, self.num_restarts, self._gcs = msg.spec, msg.num_restarts, src
        self._function = msg.function
        self.phase = HostPhase.CONSTRUCTING
        self._ctor = _Run(spec=msg.spec.creation, caller=src)
        ack = Send(dst=src, msg=ActorCreating(actor_id=msg.spec.actor_id,
                                              num_restarts=msg.num_restarts))
        return [ack, *self._resolve(self._ctor, now), *self._maybe_construct()]

    def _maybe_construct(self) -> list[Msg]:
        run = self._ctor
        if run is None or run.waiting or run.started:
            return []
        assert self.spec is not None
        if run.error is not None:
            cause = ActorDeathCause(kind="creation_failed", message=(
                f"actor {self.spec.actor_id} ({self.spec.class_name}) could not be created: "
                f"an argument of its constructor failed: {run.error.message}"),
                data=run.error.data)
            return self.on_instance_created(ActorInstanceCreated(
                actor_id=self.spec.actor_id, num_restarts=self.num_restarts, error=cause))
        run.started = True
        return [CreateActorInstance(spec=self.spec, num_restarts=self.num_restarts,
                                    args=_args(run), function=self._function)]

    def on_instance_created(self, msg: ActorInstanceCreated) -> list[Msg]:
        spec, gcs = self.spec, self._gcs
        if spec is None or gcs is None or msg.actor_id != spec.actor_id or (
                msg.num_restarts != self.num_restarts or self._created is not None):
            return []  # not the actor we host: stale
        effects = self._release(self._ctor) if self._ctor is not None else []
        self._ctor = None
        self._is_async = msg.is_async
        self.phase = HostPhase.FAILED if msg.error is not None else HostPhase.READY
        self._created = ActorCreated(actor_id=spec.actor_id, num_restarts=self.num_restarts,
                                     error=msg.error)
        return effects + [Send(dst=gcs, msg=self._created), *self._start_ready()]

    # --- calls -------------------------------------------------------------------

    def on_push(self, src: Address, msg: PushActorTask, now: Nanos) -> list[Msg]:
        spec = self.spec
        if spec is None or spec.actor_id != msg.actor_id or self.num_restarts != msg.num_restarts:
            hosted = f"actor {spec.actor_id} incarnation {self.num_restarts}" if spec else "none"
            return [Send(dst=src, msg=ActorTaskRejected(
                actor_id=msg.actor_id, num_restarts=msg.num_restarts, task_id=msg.spec.task_id,
                reason=f"worker {self._me} hosts {hosted}, not incarnation "
                       f"{msg.num_restarts} of actor {msg.actor_id}"))]
        session = self._session((src, msg.caller))
        for seq in [s for s in session.answers if s < msg.processed]:
            del session.answers[seq]
        answer = session.answers.get(msg.seq)
        if answer is not None:
            return [Send(dst=src, msg=answer)]
        ack = Send(dst=src, msg=ActorTaskAck(task_id=msg.spec.task_id, attempt=msg.spec.attempt))
        if msg.seq < session.expected:
            if msg.seq < msg.processed:
                return []  # answered long ago
            return [ack, *self._cancel_accepted(msg)] if msg.cancelled else [ack]
        if msg.seq in session.buffered and not msg.cancelled:
            return [ack]  # waiting here for the calls before it
        session.buffered[msg.seq] = (msg, src)  # (a cancelled re-push replaces the first)
        effects: list[Msg] = []  # a first push is not acked: its answer follows
        while session.expected in session.buffered:
            push, caller = session.buffered.pop(session.expected)
            session.expected += 1
            run = _Run(spec=push.spec, caller=caller, session=(caller, push.caller), seq=push.seq,
                       resolved=push.resolved)
            if push.cancelled:
                effects += self._answer(run, _cancelled_results(run.spec))
                continue
            self._ready.setdefault(self._group(run.spec), deque()).append(run)
            effects += self._resolve(run, now)
        return effects + self._start_ready()

    def _cancel_accepted(self, msg: PushActorTask) -> list[Msg]:
        """Cancels an accepted call: answered at once if not started; a running one is
        interrupted only on an async actor (a sync method is never interrupted)."""
        task_id = msg.spec.task_id
        if task_id in self._running:
            if self._is_async and self.spec is not None:
                return [InterruptActorTask(actor_id=self.spec.actor_id, task_id=task_id)]
            return []
        for run in self._queued():
            if run.spec.task_id == task_id:
                self._ready[self._group(run.spec)].remove(run)
                return self._answer(run, _cancelled_results(run.spec)) + self._start_ready()
        return []  # answered already

    def _session(self, caller: tuple[Address, str]) -> _Session:
        session = self._sessions.get(caller)
        if session is None:
            session = self._sessions[caller] = _Session()
            while len(self._sessions) > SESSIONS_MAX:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(caller)
        return session

    def _start_ready(self) -> list[Msg]:
        if self.phase is HostPhase.FAILED:
            effects: list[Msg] = []
            for run in self._queued():
                effects += self._answer_failed(run)
            self._ready.clear()
            return effects
        if self.phase is not HostPhase.READY or self.spec is None:
            return []
        effects = []
        for group, queue in self._ready.items():
            effects += self._start_group(group, queue)
        return effects

    def _start_group(self, group: str, queue: deque[_Run]) -> list[Msg]:
        """Starts the calls at the head of one group's queue, up to its limit."""
        assert self.spec is not None
        effects: list[Msg] = []
        while queue and self._running_in.get(group, 0) < self._limit(group):
            run = queue[0]
            if run.waiting:
                break  # calls start in order: wait for the head's arguments
            queue.popleft()
            if run.error is not None:
                effects += self._answer(run, tuple(
                    ObjectResult(object_id=oid, error=run.error) for oid in run.spec.return_ids))
                continue
            run.started = True
            if run.spec.streaming:
                run.outbox = StreamOutbox(owner=run.caller, task_id=run.spec.task_id,
                                          attempt=run.spec.attempt)
            self._running[run.spec.task_id] = run
            self._running_in[group] = self._running_in.get(group, 0) + 1
            effects.append(ExecuteActorTask(actor_id=self.spec.actor_id, spec=run.spec,
                                            args=_args(run)))
        return effects

    def _answer_failed(self, run: _Run) -> list[Msg]:
        assert self._created is not None and self._created.error is not None
        cause = self._created.error
        error = ObjectError(kind="actor_died", message=cause.message, data=cause.data)
        return self._answer(run, tuple(ObjectResult(object_id=oid, error=error)
                                       for oid in run.spec.return_ids))

    def on_executed(self, msg: ActorTaskExecuted, now: Nanos) -> list[Msg]:
        run = self._running.get(msg.task_id)
        if run is None or self.spec is None or msg.actor_id != self.spec.actor_id:
            return []  # not a call running here: stale
        del self._running[msg.task_id]
        group = self._group(run.spec)
        self._running_in[group] -= 1
        effects = hand_off_results(self._objects, msg.results, run.caller, msg.task_id, now)
        raylet = Address(node=self._me.node, component="raylet")
        effects += [
            Send(dst=raylet, msg=PinObject(object_id=r.object_id, owner=run.caller, size=r.size))
            for r in msg.results if getattr(r, "stored", False) and r.error is None]
        if run.outbox is not None and not run.outbox.drained:
            run.final = msg  # answered once the caller has every item
            self._flushing[msg.task_id] = run
            return effects + self._start_ready()
        effects += self._answer(run, msg.results, msg.borrowed, msg.retryable_error,
                                msg.stream_count)
        return effects + self._start_ready()

    # --- generator methods (issue 5, streams.py) -----------------------------------

    def _streaming_run(self, task_id: TaskId, attempt: int) -> _Run | None:
        run = self._running.get(task_id) or self._flushing.get(task_id)
        if run is None or run.outbox is None or run.spec.attempt != attempt:
            return None
        return run

    def on_stream_item(self, msg: StreamItemProduced, now: Nanos) -> list[Msg]:
        run = self._streaming_run(msg.task_id, msg.attempt)
        if run is None or run.outbox is None or msg.task_id not in self._running:
            return []  # not a call running here: stale
        effects = hand_off_results(self._objects, (msg.result,), run.caller, msg.task_id, now)
        if msg.result.stored and msg.result.error is None:
            raylet = Address(node=self._me.node, component="raylet")
            effects.append(Send(dst=raylet, msg=PinObject(
                object_id=msg.result.object_id, owner=run.caller, size=msg.result.size)))
        return effects + run.outbox.send(msg, now)

    def on_stream_ack(self, msg: StreamItemAck) -> list[Msg]:
        run = self._streaming_run(msg.task_id, msg.attempt)
        if run is None or run.outbox is None:
            return []  # a duplicate ack, or of a call that ended
        effects = run.outbox.ack(msg.index)
        final = run.final
        if final is not None and run.outbox.drained:
            del self._flushing[msg.task_id]
            effects += self._answer(run, final.results, final.borrowed, final.retryable_error,
                                    final.stream_count)
        return effects

    def on_stream_timer(self, task_id: TaskId, now: Nanos) -> list[Msg]:
        run = self._running.get(task_id) or self._flushing.get(task_id)
        return run.outbox.on_timer(now) if run is not None and run.outbox is not None else []

    def _answer(self, run: _Run, results: tuple[ObjectResult, ...],
                borrowed: tuple[ObjectRefInfo, ...] = (), retryable: bool = False,
                stream_count: int = 0) -> list[Msg]:
        assert self.spec is not None
        self.executed += 1
        done = ActorTaskDone(actor_id=self.spec.actor_id, task_id=run.spec.task_id,
                             attempt=run.spec.attempt, results=results, borrowed=borrowed,
                             retryable_error=retryable, stream_count=stream_count)
        session = self._sessions.get(run.session)
        if session is not None:
            session.answers[run.seq] = done
        return [Send(dst=run.caller, msg=done), *self._release(run)]

    # --- arguments -------------------------------------------------------------------

    def _resolve(self, run: _Run, now: Nanos) -> list[Msg]:
        resolution, effects = resolve_args(self._objects, run.spec.args, run.resolved, now)
        run.args, run.waiting, run.counted = resolution.args, resolution.waiting, resolution.counted
        run.error = run.error or resolution.error
        return effects

    def on_object_done(self, object_id: ObjectId) -> list[Msg]:
        runs = [r for r in ([self._ctor] if self._ctor else []) + self._queued()
                if object_id in r.waiting]
        if not runs:
            return []
        result = self._objects.result(object_id)
        if result is None:
            return []  # back to pending (its copies were lost): wait again
        if result.error is None and not self._objects.readable(object_id):
            return self._objects.ensure_local(object_id)
        for run in runs:
            indexes = run.waiting.pop(object_id)
            if result.error is not None:
                run.error = run.error or result.error
            for index in indexes:
                run.args[index] = arg_value(result)
        return self._maybe_construct() + self._start_ready()

    def _release(self, run: _Run) -> list[Msg]:
        effects: list[Msg] = []
        for ref in run.counted:
            effects += self._objects.change_tasks(ref, -1)
        run.counted = []
        return effects

    def check_invariants(self) -> None:
        if (self.spec is None) != (self.phase is HostPhase.EMPTY):
            raise InvariantViolation(
                f"core_worker actor host: phase {self.phase.value} with spec {self.spec!r}")
        if self.spec is None:
            if self._running:
                raise InvariantViolation("core_worker actor host: calls run with no actor")
            return
        for group, running in self._running_in.items():
            if running > self._limit(group) or running < 0:
                raise InvariantViolation(
                    f"core_worker actor host: {running} calls of concurrency group "
                    f"{group or 'default'!r} run at once, its limit {self._limit(group)}")
        if sum(self._running_in.values()) != len(self._running):
            raise InvariantViolation("core_worker actor host: running calls miscounted by group")


def _cancelled_results(spec: TaskSpec) -> tuple[ObjectResult, ...]:
    error = ObjectError(kind="task_cancelled", message=(
        f"actor call {spec.name} ({spec.task_id}) was cancelled before it started; "
        "its results will never be available"))
    return tuple(ObjectResult(object_id=oid, error=error) for oid in spec.return_ids)


def _args(run: _Run) -> tuple[Payload | LocalObject, ...]:
    return tuple(a if a is not None else Payload(data=b"") for a in run.args)
