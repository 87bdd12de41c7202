"""Owner-side task submission: dependencies, worker leases, pushes, retries, cancels.

Theory of operation
-------------------
A submitted task is ``WAITING_ARGS`` until every top-level ref argument is done
(owned ones complete here; borrowed ones are fetched from their owners), then
``QUEUED`` under its *scheduling key* (resource shape + affinity). Each key has
its queue, its outstanding ``RequestWorkerLease``s (at most
``lease_requests_max`` and never more than queued tasks) and its leases. A
granted lease runs one task at a time: the owner ``PushTask``s it (``PUSHED``)
with the inline values of its ref arguments, and the worker answers
``TaskDone``. Pipelining: a lease whose last task took at most
``pipeline_fast_ns`` (measured here, from its push or the previous answer to
its answer) has up to ``pipeline_depth`` tasks pushed at once, queued at the
worker, so the worker starts the next one without waiting for a round trip
(short tasks are bound by that latency, not by CPU). One slow task turns it
off again, so a long task delays at most the tasks already queued behind it.
A worker answers a re-push of a task it holds queued ``TaskRunning``, like
one it runs, so queued tasks never look silent. An idle lease takes the next task of its key; with none left it
lingers for ``lease_linger_ns`` (``HOST_LINGER_NS`` in both hosts: a driver calling ``get(f.remote())`` in a loop
submits the next task within a millisecond: it then runs on the same worker,
with no lease request and return between them), and is then returned
(``ReturnWorker``, retransmitted until ``ReturnWorkerAck``).

Loss and failure: lease requests and pushes are retransmitted on timers (the
raylet and the worker dedupe). A worker that answers nothing for
``worker_silent_max`` re-pushes, whose raylet reports ``LeasedWorkerDied``, or
whose node dies, takes its task back to ``QUEUED`` with the next attempt while
retries remain (``max_retries``; -1 is forever), else the task's returns fail
with ``worker_crashed``. A task whose user code raised is retried only under
``retry_exceptions``. A spillback re-aims the request at the named raylet.

Cancel: a waiting or queued task fails at once with ``task_cancelled``; a pushed
one gets ``CancelTask`` (carrying ``recursive``: its worker then cancels the
tasks it submitted), re-sent with each re-push until the task ends, and is
never retried.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import msgspec
from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import (
    CancelTask,
    ObjectError,
    ObjectResult,
    PushTask,
    TaskDone,
    TaskRunning,
)
from shoal.kernel.core_worker.streams import StreamTable
from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.ids import Nanos, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    LeaseCheck,
    LeaseCheckReply,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
)
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec, producing_task

LEASE_TIMER_PREFIX = "lease.retry."
PUSH_TIMER_PREFIX = "task.push."
RETURN_TIMER_PREFIX = "lease.return."
LINGER_TIMER_PREFIX = "lease.linger."
REQUESTS_LINGER_TIMER = f"{LINGER_TIMER_PREFIX}*requests"  # (no lease id starts with *)
HOST_PIPELINE_DEPTH = 4  # tasks in flight per lease whose tasks are short, in both hosts
HOST_LINGER_NS = 5_000_000  # what the hosts run with (the kernel's default, 0, keeps unit
# tests' effect lists short: a lease is returned in the same step it goes idle)

SchedulingKey = tuple[tuple[tuple[str, float], ...], str, bool]


class TaskPhase(Enum):
    WAITING_ARGS = "waiting_args"
    QUEUED = "queued"
    PUSHED = "pushed"


_TRANSITIONS: dict[tuple[TaskPhase, TaskPhase], str] = {
    (TaskPhase.WAITING_ARGS, TaskPhase.QUEUED): "arguments ready",
    (TaskPhase.QUEUED, TaskPhase.PUSHED): "pushed to a leased worker",
    (TaskPhase.PUSHED, TaskPhase.QUEUED): "retrying after a failure",
}


class SubmitterConfig(msgspec.Struct, frozen=True, kw_only=True):
    lease_retry_ns: Nanos = 1_000_000_000
    push_retry_ns: Nanos = 1_000_000_000
    worker_silent_max: int = 10
    lease_requests_max: int = 10
    lease_linger_ns: Nanos = 0  # an idle lease waits this long for work (hosts: HOST_LINGER_NS)
    pipeline_depth: int = 1  # tasks in flight per fast lease (hosts: HOST_PIPELINE_DEPTH)
    pipeline_fast_ns: Nanos = 2_000_000


@dataclass(slots=True, eq=False)
class _Task:
    spec: TaskSpec
    function: bytes
    key: SchedulingKey
    phase: TaskPhase = TaskPhase.WAITING_ARGS
    waiting: dict[ObjectId, None] = field(default_factory=dict)
    lease_id: str = ""
    retries_left: int = 0
    cancelled: bool = False
    cancel: CancelTask | None = None  # sent to its worker; re-sent with each re-push
    silent_pushes: int = 0


@dataclass(slots=True, eq=False)
class _Lineage:
    """A finished task kept so its stored returns can be rebuilt if their copies are lost.

    While kept, its arguments stay referenced (a rebuild needs them)."""

    spec: TaskSpec
    function: bytes
    retries_left: int


@dataclass(slots=True, eq=False)
class _Lease:
    lease_id: str
    worker: Address
    raylet: Address
    key: SchedulingKey
    tasks: dict[TaskId, Nanos] = field(default_factory=dict)  # in flight, by push time
    functions: dict[str, None] = field(default_factory=dict)
    returning: bool = False
    idle_until: Nanos | None = None  # lingering: returned then unless it takes a task
    fast: bool = False  # its last task was short: it may have several in flight
    last_done: Nanos = 0


@dataclass(slots=True, eq=False)
class _Request:
    request_id: int
    key: SchedulingKey
    raylet: Address
    spilled: bool = False


@dataclass(slots=True, eq=False)
class _KeyState:
    queue: deque[TaskId] = field(default_factory=deque)
    requests: dict[int, None] = field(default_factory=dict)
    leases: dict[str, None] = field(default_factory=dict)
    idle_since: Nanos | None = None  # its queue emptied with lease requests out


def scheduling_key(spec: TaskSpec) -> SchedulingKey:
    affinity = spec.affinity
    return (spec.shape_key(), affinity.node_id if affinity else "", bool(affinity and affinity.soft))


class Submitter:
    """The tasks this process owns, and its leases. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, raylet: Address, objects: ObjectTable,
                 config: SubmitterConfig, streams: StreamTable | None = None) -> None:
        self._me = me
        self._streams = streams or StreamTable(me, objects)  # streaming tasks (issue 5)
        self._raylet = raylet
        self._objects = objects
        self._config = config
        self._tasks: dict[TaskId, _Task] = {}
        self._by_return: dict[ObjectId, TaskId] = {}
        self._waiting_on: dict[ObjectId, dict[TaskId, None]] = {}
        self._keys: dict[SchedulingKey, _KeyState] = {}
        self._leases: dict[str, _Lease] = {}
        self._returning: dict[str, _Lease] = {}
        self._requests: dict[int, _Request] = {}
        self._lineage: dict[TaskId, _Lineage] = {}
        self._next_request = 1
        self.finished = 0

    # --- introspection ---------------------------------------------------

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    @property
    def lease_count(self) -> int:
        return len(self._leases) + len(self._returning)

    def task_of(self, object_id: ObjectId) -> TaskId | None:
        return self._by_return.get(object_id)

    # --- submission and dependencies -------------------------------------

    def submit(self, spec: TaskSpec, function: bytes, now: Nanos) -> list[Msg]:
        if spec.task_id in self._tasks:
            return []  # a duplicate submission
        task = _Task(spec=spec, function=function, key=scheduling_key(spec),
                     retries_left=spec.max_retries)
        self._tasks[spec.task_id] = task
        for object_id in spec.return_ids:
            self._objects.add_owned_pending(object_id)
            self._by_return[object_id] = spec.task_id
        effects: list[Msg] = []
        for info in _arg_refs(spec):
            effects += self._objects.change_tasks(info, +1)
        for arg in spec.args:
            if arg.ref is not None and self._objects.result(arg.ref.object_id) is None:
                task.waiting[arg.ref.object_id] = None
                self._waiting_on.setdefault(arg.ref.object_id, {})[spec.task_id] = None
                effects += self._objects.fetch(arg.ref, now)
        if not task.waiting:
            effects += self._args_ready(task, now)
        return effects

    def on_object_done(self, object_id: ObjectId, now: Nanos) -> list[Msg]:
        waiting = self._waiting_on.pop(object_id, None)
        effects: list[Msg] = []
        for task_id in waiting or ():
            task = self._tasks.get(task_id)
            if task is None or task.phase is not TaskPhase.WAITING_ARGS:
                continue
            task.waiting.pop(object_id, None)
            if not task.waiting:
                effects += self._args_ready(task, now)
        return effects

    def _args_ready(self, task: _Task, now: Nanos) -> list[Msg]:
        for arg in task.spec.args:
            result = self._objects.result(arg.ref.object_id) if arg.ref else None
            if result is not None and result.error is not None:
                return self._finish(task, [ObjectResult(object_id=oid, error=result.error)
                                           for oid in task.spec.return_ids])
        if task.cancelled:
            return self._finish(task, _errors(task.spec, "task_cancelled", _cancel_message(task)))
        self._move(task, TaskPhase.QUEUED)
        self._keys.setdefault(task.key, _KeyState()).queue.append(task.spec.task_id)
        return self._pump(task.key, now)

    # --- leases ----------------------------------------------------------

    def _pump(self, key: SchedulingKey, now: Nanos) -> list[Msg]:
        state = self._keys.get(key)
        if state is None:
            return []
        effects: list[Msg] = []
        for lease_id in list(state.leases):
            lease = self._leases[lease_id]
            if not lease.tasks or lease.fast:
                effects += self._next_on_lease(lease, now)
        wanted = min(len(state.queue), self._config.lease_requests_max)
        while len(state.requests) < wanted:
            effects += self._request_lease(key, state, now)
        self._forget_key_if_empty(key)
        return effects

    def _request_lease(self, key: SchedulingKey, state: _KeyState, now: Nanos) -> list[Msg]:
        request = _Request(request_id=self._next_request, key=key, raylet=self._raylet)
        self._next_request += 1
        self._requests[request.request_id] = request
        state.requests[request.request_id] = None
        return self._send_request(request, now)

    def _send_request(self, request: _Request, now: Nanos) -> list[Msg]:
        shape, node, soft = request.key
        from shoal.kernel.task_spec import NodeAffinity  # local: keeps the key a plain tuple

        affinity = NodeAffinity(node_id=NodeId(node), soft=soft) if node else None
        msg = RequestWorkerLease(request_id=request.request_id, shape=dict(shape),
                                 affinity=affinity, spilled=request.spilled)
        return [
            Send(dst=request.raylet, msg=msg),
            SetTimer(key=f"{LEASE_TIMER_PREFIX}{request.request_id}",
                     at_ns=now + self._config.lease_retry_ns),
        ]

    def on_lease_timer(self, request_id: int, now: Nanos) -> list[Msg]:
        request = self._requests.get(request_id)
        return self._send_request(request, now) if request is not None else []

    def on_lease_granted(self, src: Address, msg: LeaseGranted, now: Nanos) -> list[Msg]:
        request = self._requests.get(msg.request_id)
        if request is None:
            if msg.lease_id in self._leases or msg.lease_id in self._returning:
                return []  # a duplicate grant of a lease we hold
            # A grant we no longer want (the request was satisfied or withdrawn): give it back.
            lease = _Lease(lease_id=msg.lease_id, worker=msg.worker, raylet=src, key=((), "", False))
            return self._return(lease, now)
        effects: list[Msg] = [CancelTimer(key=f"{LEASE_TIMER_PREFIX}{msg.request_id}")]
        if request.raylet != src:
            # From a raylet the request moved away from (a spillback, or its node was
            # thought dead): the lease serves the request as well as any, and that raylet
            # now counts the request as ended (it would ignore it if it came back there):
            # take the lease, and withdraw the request where it waits now.
            effects.append(Send(dst=request.raylet, msg=CancelLeaseRequest(
                request_id=msg.request_id)))
        del self._requests[msg.request_id]
        state = self._keys.setdefault(request.key, _KeyState())
        state.requests.pop(msg.request_id, None)
        lease = _Lease(lease_id=msg.lease_id, worker=msg.worker, raylet=src, key=request.key)
        self._leases[lease.lease_id] = lease
        state.leases[lease.lease_id] = None
        return effects + self._next_on_lease(lease, now) + self._pump(request.key, now)

    def on_spillback(self, src: Address, msg: LeaseSpillback, now: Nanos) -> list[Msg]:
        request = self._requests.get(msg.request_id)
        if request is None or request.raylet != src:
            return []
        request.raylet = Address(node=msg.node_id, component="raylet")
        request.spilled = True
        return self._send_request(request, now)

    def on_lease_rejected(self, src: Address, msg: LeaseRejected, now: Nanos) -> list[Msg]:
        request = self._requests.get(msg.request_id)
        if request is None or request.raylet != src:
            return []
        del self._requests[msg.request_id]
        effects: list[Msg] = [CancelTimer(key=f"{LEASE_TIMER_PREFIX}{msg.request_id}")]
        state = self._keys.get(request.key)
        if state is not None:
            state.requests.pop(msg.request_id, None)
            while state.queue:
                task = self._tasks[state.queue.popleft()]
                effects += self._finish(task, _errors(task.spec, "infeasible", (
                    f"task {task.spec.name} ({task.spec.task_id}) cannot be scheduled: "
                    f"{msg.reason}")))
        return effects + self._pump(request.key, now)

    def _next_on_lease(self, lease: _Lease, now: Nanos) -> list[Msg]:
        """Pushes queued tasks of its key to the lease, up to its pipeline's depth."""
        state = self._keys.get(lease.key)
        depth = self._config.pipeline_depth if lease.fast else 1
        effects: list[Msg] = []
        while state is not None and state.queue and len(lease.tasks) < depth:
            task = self._tasks.get(state.queue.popleft())
            if task is None or task.phase is not TaskPhase.QUEUED:
                continue
            self._move(task, TaskPhase.PUSHED)
            task.lease_id, task.silent_pushes = lease.lease_id, 0
            lease.tasks[task.spec.task_id] = now
            lease.idle_until = None
            effects += self._push(task, lease, now)
        return effects  # none: idle, returned by settle unless work for it shows up

    def settle(self, now: Nanos) -> list[Msg]:
        """At the end of each input: gives back idle leases and withdraws lease requests
        of keys with no queued task, so nothing is held for work that is gone (after
        ``lease_linger_ns`` of idleness, for both)."""
        effects: list[Msg] = []
        linger = self._config.lease_linger_ns
        for lease in [lz for lz in self._leases.values() if not lz.tasks]:
            state = self._keys.get(lease.key)
            if state is not None and state.queue:
                continue
            if linger <= 0 or (lease.idle_until is not None and now >= lease.idle_until):
                effects += self._return(lease, now)
                self._forget_key_if_empty(lease.key)
            elif lease.idle_until is None:
                lease.idle_until = now + linger
                effects.append(SetTimer(key=f"{LINGER_TIMER_PREFIX}{lease.lease_id}",
                                        at_ns=lease.idle_until))
        for key, state in list(self._keys.items()):
            if state.queue or not state.requests:
                state.idle_since = None
                continue
            if linger > 0 and (state.idle_since is None or now < state.idle_since + linger):
                # Its lease requests linger too: a driver that submits batches would
                # otherwise withdraw and re-send them for every batch.
                if state.idle_since is None:
                    state.idle_since = now
                    effects.append(SetTimer(key=REQUESTS_LINGER_TIMER, at_ns=now + linger))
                continue
            for request_id in list(state.requests):
                request = self._requests.pop(request_id)
                del state.requests[request_id]
                effects += [
                    CancelTimer(key=f"{LEASE_TIMER_PREFIX}{request_id}"),
                    Send(dst=request.raylet, msg=CancelLeaseRequest(request_id=request_id)),
                ]
            self._forget_key_if_empty(key)
        return effects

    def _forget_key_if_empty(self, key: SchedulingKey) -> None:
        state = self._keys.get(key)
        if state is not None and not state.queue and not state.requests and not state.leases:
            del self._keys[key]

    def _return(self, lease: _Lease, now: Nanos, failed: bool = False) -> list[Msg]:
        if lease.lease_id in self._leases:
            del self._leases[lease.lease_id]
            state = self._keys.get(lease.key)
            if state is not None:
                state.leases.pop(lease.lease_id, None)
        lease.returning = True
        self._returning[lease.lease_id] = lease
        return [
            Send(dst=lease.raylet, msg=ReturnWorker(lease_id=lease.lease_id, worker_failed=failed)),
            SetTimer(key=f"{RETURN_TIMER_PREFIX}{lease.lease_id}",
                     at_ns=now + self._config.lease_retry_ns),
        ]

    def lease_check_reply(self, src: Address, msg: LeaseCheck) -> LeaseCheckReply:
        """Which of these leases this owner still holds or waits for (a returning one is
        let go). A lease whose grant was lost still answers a request we wait for."""
        held: list[str] = []
        released: list[str] = []
        for lease_id, request_id in zip(msg.lease_ids, msg.request_ids, strict=False):
            request = self._requests.get(request_id)
            waiting = request is not None and request.raylet == src
            (held if lease_id in self._leases or waiting else released).append(lease_id)
        return LeaseCheckReply(held=tuple(held), released=tuple(released))

    def on_linger_timer(self, lease_id: str, now: Nanos) -> list[Msg]:
        """A lingering lease's time is up: ``settle`` (after this input) returns it if it
        is still idle; one that took a task meanwhile lingers again when it is idle."""
        return []

    def on_return_timer(self, lease_id: str, now: Nanos) -> list[Msg]:
        lease = self._returning.pop(lease_id, None)
        return self._return(lease, now) if lease is not None else []

    def on_return_ack(self, msg: ReturnWorkerAck) -> list[Msg]:
        if self._returning.pop(msg.lease_id, None) is None:
            return []
        return [CancelTimer(key=f"{RETURN_TIMER_PREFIX}{msg.lease_id}")]

    # --- pushing and results ---------------------------------------------

    def _push(self, task: _Task, lease: _Lease, now: Nanos) -> list[Msg]:
        spec = task.spec
        # The code goes with every push until the worker has answered a task of it: a
        # pipelined push must not count on an earlier one that may be lost or overtaken.
        function = b"" if spec.function_id in lease.functions else task.function
        resolved: list[Payload | None] = []
        for arg in spec.args:
            result = self._objects.result(arg.ref.object_id) if arg.ref else None
            inline = result is not None and not result.stored and result.error is None
            resolved.append(result.value if inline and result is not None else None)
        msg = PushTask(lease_id=lease.lease_id, spec=spec, function=function,
                       resolved=tuple(resolved))
        return [Send(dst=lease.worker, msg=msg),
                SetTimer(key=f"{PUSH_TIMER_PREFIX}{spec.task_id}", at_ns=now + self._config.push_retry_ns)]

    def on_push_timer(self, task_id: TaskId, now: Nanos) -> list[Msg]:
        task = self._tasks.get(task_id)
        lease = self._leases.get(task.lease_id) if task is not None else None
        if task is None or lease is None or task.phase is not TaskPhase.PUSHED:
            return []
        task.silent_pushes += 1
        if task.silent_pushes > self._config.worker_silent_max:
            cause = f"the worker answered nothing for {task.silent_pushes} pushes"
            return self._lease_lost(lease, cause, now, tell_raylet=True)
        lease.functions.pop(task.spec.function_id, None)  # the first push may have been lost
        resend = [Send(dst=lease.worker, msg=task.cancel)] if task.cancel is not None else []
        return resend + self._push(task, lease, now)  # (the cancel may have been lost too)

    def on_task_running(self, msg: TaskRunning) -> list[Msg]:
        task = self._tasks.get(msg.task_id)
        if task is not None and task.spec.attempt == msg.attempt:
            task.silent_pushes = 0
        return []

    def on_task_done(self, src: Address, msg: TaskDone, now: Nanos) -> list[Msg]:
        task = self._tasks.get(msg.task_id)
        if task is None or task.phase is not TaskPhase.PUSHED or task.spec.attempt != msg.attempt:
            return []  # a duplicate, or from an attempt we gave up on
        lease = self._leases.get(task.lease_id)
        effects: list[Msg] = [CancelTimer(key=f"{PUSH_TIMER_PREFIX}{task.spec.task_id}")]
        if lease is not None:
            self._note_done(lease, task.spec.task_id, now)
            lease.functions[task.spec.function_id] = None  # the worker has its code now
        failed = any(r.error is not None for r in msg.results)
        if failed and msg.retryable_error and task.retries_left != 0 and not task.cancelled:
            effects += self._retry(task, now)
        else:
            for info in msg.borrowed:  # the worker keeps these: register it with their owners
                effects += self._objects.hand_off(info, src, task.spec.task_id, now)
            for result in msg.results:
                for inner in result.value.contained if result.value else ():
                    if inner.owner == src:
                        self._objects.ensure(inner)
                        self._objects.mark_registered_borrower(inner.object_id)
            effects += self._finish(task, list(msg.results), msg.stream_count)
        if lease is not None and lease.lease_id in self._leases:
            effects += self._next_on_lease(lease, now)
        return effects

    def _note_done(self, lease: _Lease, task_id: TaskId, now: Nanos) -> None:
        """A task of the lease answered: was it short (from its push, or from the answer
        before it if it was queued behind that one)?"""
        pushed = lease.tasks.pop(task_id, now)
        lease.fast = now - max(pushed, lease.last_done) <= self._config.pipeline_fast_ns
        lease.last_done = now

    def on_worker_died(self, msg: LeasedWorkerDied, now: Nanos) -> list[Msg]:
        lease = self._leases.get(msg.lease_id)
        if lease is None:
            self._returning.pop(msg.lease_id, None)
            return [CancelTimer(key=f"{RETURN_TIMER_PREFIX}{msg.lease_id}")]
        return self._lease_lost(lease, msg.cause, now, tell_raylet=False)

    def on_nodes_dead(self, dead: set[NodeId], now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        for lease in [lz for lz in self._leases.values() if lz.worker.node in dead]:
            effects += self._lease_lost(lease, f"node {lease.worker.node} died", now, tell_raylet=False)
        for lease_id in [i for i, lz in self._returning.items() if lz.raylet.node in dead]:
            del self._returning[lease_id]
            effects.append(CancelTimer(key=f"{RETURN_TIMER_PREFIX}{lease_id}"))
        for request in self._requests.values():
            if request.raylet.node in dead:
                request.raylet, request.spilled = self._raylet, False
                effects += self._send_request(request, now)
        return effects

    def _lease_lost(self, lease: _Lease, cause: str, now: Nanos, *, tell_raylet: bool) -> list[Msg]:
        del self._leases[lease.lease_id]
        state = self._keys.get(lease.key)
        if state is not None:
            state.leases.pop(lease.lease_id, None)
        effects: list[Msg] = []
        if tell_raylet:
            effects += self._return(lease, now, failed=True)
        for task_id in lease.tasks:  # in push order: retried in that order
            task = self._tasks.get(task_id)
            if task is not None and task.phase is TaskPhase.PUSHED:
                effects += self._task_lost(task, cause, now)
        return effects + self._pump(lease.key, now)

    def _task_lost(self, task: _Task, cause: str, now: Nanos) -> list[Msg]:
        effects: list[Msg] = [CancelTimer(key=f"{PUSH_TIMER_PREFIX}{task.spec.task_id}")]
        if task.cancelled:
            return effects + self._finish(task, _errors(task.spec, "task_cancelled",
                                                        _cancel_message(task)))
        if task.retries_left != 0:
            return effects + self._retry(task, now)
        return effects + self._finish(task, _errors(task.spec, "worker_crashed", (
            f"task {task.spec.name} ({task.spec.task_id}) failed: the worker running it "
            f"died ({cause}) and its retries are used up "
            f"(max_retries={task.spec.max_retries}); raise max_retries to retry more")))

    def _retry(self, task: _Task, now: Nanos) -> list[Msg]:
        if task.retries_left > 0:
            task.retries_left -= 1
        task.spec = msgspec.structs.replace(task.spec, attempt=task.spec.attempt + 1)
        task.lease_id = ""
        self._move(task, TaskPhase.QUEUED)
        self._keys.setdefault(task.key, _KeyState()).queue.append(task.spec.task_id)
        return self._pump(task.key, now)

    def _finish(self, task: _Task, results: list[ObjectResult],
                stream_count: int | None = None) -> list[Msg]:
        spec = task.spec
        self._tasks.pop(spec.task_id, None)
        self.finished += 1
        effects: list[Msg] = []
        if spec.streaming and results:  # the end of its stream, before its head completes
            effects += self._streams.on_task_finished(spec.task_id, results[0], stream_count)
        for object_id in spec.return_ids:
            self._by_return.pop(object_id, None)
        if any(r.stored and r.error is None for r in results):
            self._lineage[spec.task_id] = _Lineage(spec, task.function, task.retries_left)
        for result in results:
            effects += self._objects.store(result)
        if spec.task_id not in self._lineage:
            for info in _arg_refs(spec):
                effects += self._objects.change_tasks(info, -1)
        return effects

    # --- lineage reconstruction ------------------------------------------

    def forget_lineage(self, object_id: ObjectId) -> list[Msg]:
        """Drops a task's lineage once none of its returns is referenced any more."""
        task_id = producing_task(object_id)
        lineage = self._lineage.get(task_id) if task_id else None
        if lineage is None or any(oid in self._objects for oid in lineage.spec.return_ids):
            return []
        del self._lineage[lineage.spec.task_id]
        return [e for info in _arg_refs(lineage.spec) for e in self._objects.change_tasks(info, -1)]

    def reconstruct(self, object_id: ObjectId, now: Nanos) -> list[Msg] | None:
        """Re-runs the task that returned a lost object; None when it cannot be rebuilt."""
        task_id = producing_task(object_id)
        if task_id is not None and task_id in self._tasks and object_id in self._by_return:
            return []  # already running again (a streaming task's lost item is not rebuilt)
        lineage = self._lineage.get(task_id) if task_id else None
        if lineage is None or lineage.retries_left == 0:
            return None
        del self._lineage[lineage.spec.task_id]
        spec = msgspec.structs.replace(lineage.spec, attempt=lineage.spec.attempt + 1)
        for oid in spec.return_ids:
            self._objects.reset_pending(oid)
        effects = self.submit(spec, lineage.function, now)
        task = self._tasks.get(spec.task_id)
        if task is not None:
            task.retries_left = lineage.retries_left - 1 if lineage.retries_left > 0 else -1
        # The rebuild counts its arguments again; drop the lineage's own counts.
        return effects + [e for info in _arg_refs(spec) for e in self._objects.change_tasks(info, -1)]

    # --- cancel ----------------------------------------------------------

    def cancel(self, object_id: ObjectId, force: bool, recursive: bool = True) -> list[Msg]:
        task_id = self._by_return.get(object_id)
        return self.cancel_task(task_id, force, recursive) if task_id is not None else []

    def is_pending(self, task_id: TaskId) -> bool:
        return task_id in self._tasks

    def cancel_task(self, task_id: TaskId, force: bool, recursive: bool = True) -> list[Msg]:
        """Cancels a task this process owns (nothing if it finished already)."""
        task = self._tasks.get(task_id)
        if task is None or task.cancelled:
            return []
        task.cancelled = True
        if task.phase is TaskPhase.QUEUED:
            state = self._keys.get(task.key)
            if state is not None and task.spec.task_id in state.queue:
                state.queue.remove(task.spec.task_id)
            return self._finish(task, _errors(task.spec, "task_cancelled", _cancel_message(task)))
        if task.phase is TaskPhase.PUSHED:
            lease = self._leases.get(task.lease_id)
            if lease is not None:
                task.cancel = CancelTask(task_id=task.spec.task_id, force=force,
                                         recursive=recursive)
                return [Send(dst=lease.worker, msg=task.cancel)]
        return []  # waiting for args: fails with task_cancelled when they are ready

    # --- phases and checks -----------------------------------------------

    def _move(self, task: _Task, to: TaskPhase) -> None:
        if (task.phase, to) not in _TRANSITIONS:
            raise InvalidTransition("core_worker", f"move task to {to.value}", task.spec.task_id,
                                    task.phase.value, " or ".join(
                                        f.value for f, t in _TRANSITIONS if t is to))
        task.phase = to

    def check_invariants(self) -> None:
        for lease in self._leases.values():
            if len(lease.tasks) > max(1, self._config.pipeline_depth):
                raise InvariantViolation(
                    f"core_worker: lease {lease.lease_id!r} has {len(lease.tasks)} tasks in "
                    f"flight, over the pipeline depth {self._config.pipeline_depth}")
            for task_id in lease.tasks:
                task = self._tasks.get(task_id)
                if task is None or task.lease_id != lease.lease_id:
                    raise InvariantViolation(
                        f"core_worker: lease {lease.lease_id!r} runs {task_id!r}, "
                        "which is not pushed to it")
        for request_id, request in self._requests.items():
            state = self._keys.get(request.key)
            if state is None or request_id not in state.requests:
                raise InvariantViolation(f"core_worker: lease request {request_id} has no key")


def _arg_refs(spec: TaskSpec) -> list[ObjectRefInfo]:
    refs: list[ObjectRefInfo] = []
    for arg in spec.args:
        if arg.ref is not None:
            refs.append(arg.ref)
        elif arg.value is not None:
            refs.extend(arg.value.contained)
    return refs


def _errors(spec: TaskSpec, kind: str, message: str) -> list[ObjectResult]:
    error = ObjectError(kind=kind, message=message)  # type: ignore[arg-type]
    return [ObjectResult(object_id=oid, error=error) for oid in spec.return_ids]


def _cancel_message(task: _Task) -> str:
    return (f"task {task.spec.name} ({task.spec.task_id}) was cancelled before it finished; "
            "its results will never be available")
