"""Executor side of a worker: run pushed tasks one at a time, answer exactly once.

Theory of operation
-------------------
``PushTask`` from an owner is keyed by ``(task_id, attempt)``. A push of the
task now running, or of one queued here (an owner pipelines pushes to a lease
whose tasks are short), is answered ``TaskRunning``; of a task already
finished, with the cached ``TaskDone`` (the first answer may have been lost);
otherwise it is queued. The head of the queue is ``RESOLVING``
while its ref arguments are fetched (the owner sends inline values along, so
usually there is nothing to fetch), then ``RUNNING`` once the host is asked to
``ExecuteTask``. ``TaskExecuted`` from the host finishes it: the worker answers
``TaskDone``, registering the owner as a borrower of refs this worker owns that
the results contain, and starts the next queued task.

``CancelTask``: a queued or resolving task is answered ``task_cancelled`` at once;
a running one is interrupted by the host (``InterruptTask``). The core worker
cancels the running task's children (``recursive``) before that.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

from shoal.kernel.core_worker.arguments import arg_value, resolve_args
from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import (
    CancelTask,
    ExecuteTask,
    InterruptTask,
    LocalObject,
    ObjectError,
    ObjectResult,
    PushTask,
    TaskDone,
    TaskExecuted,
    TaskRunning,
)
from shoal.kernel.core_worker.stream_protocol import StreamItemAck, StreamItemProduced
from shoal.kernel.core_worker.streams import StreamOutbox
from shoal.kernel.ids import Nanos, ObjectId, TaskId
from shoal.kernel.messages import Address, Msg, Send
from shoal.kernel.raylet.object_protocol import PinObject
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec

DONE_CACHE_MAX = 256


class ExecPhase(Enum):
    RESOLVING = "resolving"
    RUNNING = "running"


@dataclass(slots=True, eq=False)
class _Execution:
    push: PushTask
    owner: Address
    phase: ExecPhase = ExecPhase.RESOLVING
    args: list[Payload | LocalObject | None] = field(default_factory=list)
    waiting: dict[ObjectId, list[int]] = field(default_factory=dict)
    counted: list[ObjectRefInfo] = field(default_factory=list)  # ref args pinned here
    cancelled: bool = False
    outbox: StreamOutbox | None = None  # a streaming task's items in flight (streams.py)

    @property
    def key(self) -> tuple[TaskId, int]:
        return (self.push.spec.task_id, self.push.spec.attempt)


class Executor:
    """Runs tasks pushed to this worker. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, objects: ObjectTable) -> None:
        self._me = me
        self._objects = objects
        self._queue: deque[tuple[PushTask, Address]] = deque()
        self._current: _Execution | None = None
        self._done: OrderedDict[tuple[TaskId, int], tuple[Address, TaskDone]] = OrderedDict()
        self._functions: dict[str, bytes] = {}
        self.executed = 0

    @property
    def current_task(self) -> TaskSpec | None:
        return self._current.push.spec if self._current else None

    @property
    def running_task_id(self) -> TaskId | None:
        """The task whose user code runs now (tasks it submits are its children)."""
        run = self._current
        return run.push.spec.task_id if run is not None and run.phase is ExecPhase.RUNNING else None

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def on_push(self, src: Address, msg: PushTask, now: Nanos) -> list[Msg]:
        key = (msg.spec.task_id, msg.spec.attempt)
        cached = self._done.get(key)
        if cached is not None:
            return [Send(dst=cached[0], msg=cached[1])]
        if (self._current is not None and self._current.key == key) or any(
                (p.spec.task_id, p.spec.attempt) == key for p, _ in self._queue):
            # Running, or queued behind another (a pipelined push): either way it is here.
            return [Send(dst=src, msg=TaskRunning(task_id=key[0], attempt=key[1]))]
        if msg.function:
            self._functions[msg.spec.function_id] = msg.function
        self._queue.append((msg, src))
        return self._start_next(now)

    def _start_next(self, now: Nanos) -> list[Msg]:
        if self._current is not None or not self._queue:
            return []
        push, owner = self._queue.popleft()
        run = _Execution(push=push, owner=owner)
        self._current = run
        resolution, effects = resolve_args(self._objects, push.spec.args, push.resolved, now)
        run.args, run.waiting, run.counted = resolution.args, resolution.waiting, resolution.counted
        if resolution.error is not None:
            return effects + self._fail(run, resolution.error)
        return effects + self._maybe_run(run)

    def on_object_done(self, object_id: ObjectId) -> list[Msg]:
        run = self._current
        if run is None or object_id not in run.waiting:
            return []
        result = self._objects.result(object_id)
        if result is None:
            return []  # went back to pending (its copies were lost): wait again
        if result.error is not None:
            return self._fail(run, result.error)
        if not self._objects.readable(object_id):
            return self._objects.ensure_local(object_id)
        for index in run.waiting.pop(object_id):
            run.args[index] = arg_value(result)
        return self._maybe_run(run)

    def _maybe_run(self, run: _Execution) -> list[Msg]:
        if run.waiting or run.phase is ExecPhase.RUNNING:
            return []
        spec = run.push.spec
        function = self._functions.get(spec.function_id)
        if function is None:
            return self._fail(run, ObjectError(kind="task_error", message=(
                f"worker {self._me}: the code of function {spec.name} ({spec.function_id}) "
                "never arrived with its task; this is a bug in shoal")))
        run.phase = ExecPhase.RUNNING
        if spec.streaming:
            run.outbox = StreamOutbox(owner=run.owner, task_id=spec.task_id, attempt=spec.attempt)
        args = tuple(a if a is not None else Payload(data=b"") for a in run.args)
        return [ExecuteTask(spec=spec, args=args, function=function)]

    def _pin_stored(self, results: tuple[ObjectResult, ...], owner: Address) -> list[Msg]:
        """Pins this node's primary copies of stored returns for their owner."""
        raylet = Address(node=self._me.node, component="raylet")
        return [Send(dst=raylet, msg=PinObject(object_id=r.object_id, owner=owner, size=r.size))
                for r in results if r.stored and r.error is None]

    def on_executed(self, msg: TaskExecuted, now: Nanos) -> list[Msg]:
        run = self._current
        if run is None or run.key != (msg.task_id, msg.attempt):
            return []  # not the task we run: stale
        effects = hand_off_results(self._objects, msg.results, run.owner, msg.task_id, now)
        done = TaskDone(task_id=msg.task_id, attempt=msg.attempt, results=msg.results,
                        retryable_error=msg.retryable_error, borrowed=msg.borrowed,
                        stream_count=msg.stream_count)
        effects += self._pin_stored(msg.results, run.owner)
        if run.outbox is not None and not run.outbox.drained:
            run.outbox.final = done  # answered once the owner has every item
            return effects
        return effects + self._complete(run, done, now)

    # --- streaming tasks (issue 5, streams.py) ----------------------------------

    def on_stream_item(self, msg: StreamItemProduced, now: Nanos) -> list[Msg]:
        """The running streaming task yielded an item: on to the owner at once."""
        run = self._current
        if run is None or run.outbox is None or run.key != (msg.task_id, msg.attempt):
            return []  # not the task we run: stale
        effects = hand_off_results(self._objects, (msg.result,), run.owner, msg.task_id, now)
        effects += self._pin_stored((msg.result,), run.owner)
        return effects + run.outbox.send(msg, now)

    def on_stream_ack(self, msg: StreamItemAck, now: Nanos) -> list[Msg]:
        run = self._current
        if run is None or run.outbox is None or run.key != (msg.task_id, msg.attempt):
            return []  # a duplicate ack, or of an attempt that ended
        effects = run.outbox.ack(msg.index)
        final = run.outbox.final
        if final is not None and run.outbox.drained:
            effects += self._complete(run, final, now)
        return effects

    def on_stream_timer(self, task_id: TaskId, now: Nanos) -> list[Msg]:
        run = self._current
        if run is None or run.outbox is None or run.push.spec.task_id != task_id:
            return []
        return run.outbox.on_timer(now)

    def _fail(self, run: _Execution, error: ObjectError) -> list[Msg]:
        spec = run.push.spec
        results = tuple(ObjectResult(object_id=oid, error=error) for oid in spec.return_ids)
        done = TaskDone(task_id=spec.task_id, attempt=spec.attempt, results=results)
        return self._complete(run, done, 0)

    def _complete(self, run: _Execution, done: TaskDone, now: Nanos) -> list[Msg]:
        self._current = None
        self.executed += 1
        self._done[run.key] = (run.owner, done)
        while len(self._done) > DONE_CACHE_MAX:
            self._done.popitem(last=False)
        effects: list[Msg] = [Send(dst=run.owner, msg=done)]
        for ref in run.counted:
            effects += self._objects.change_tasks(ref, -1)
        return effects + self._start_next(now)

    def on_cancel(self, src: Address, msg: CancelTask) -> list[Msg]:
        run = self._current
        if run is not None and run.push.spec.task_id == msg.task_id:
            if run.phase is ExecPhase.RUNNING:
                if run.cancelled:
                    return []  # a re-sent cancel: interrupted already
                run.cancelled = True
                return [InterruptTask(task_id=msg.task_id, force=msg.force)]
            return self._fail(run, _cancelled(run.push.spec))
        for entry in list(self._queue):
            if entry[0].spec.task_id == msg.task_id:
                self._queue.remove(entry)
                spec = entry[0].spec
                results = tuple(ObjectResult(object_id=oid, error=_cancelled(spec))
                                for oid in spec.return_ids)
                return [Send(dst=entry[1], msg=TaskDone(
                    task_id=spec.task_id, attempt=spec.attempt, results=results))]
        return []


def hand_off_results(objects: ObjectTable, results: tuple[ObjectResult, ...], receiver: Address,
                     task_id: TaskId, now: Nanos) -> list[Msg]:
    """Refs nested in a task's results go to ``receiver``: it becomes a borrower of those
    this worker owns, and is registered with the owner of the others (borrower
    forwarding) before this worker lets go of them."""
    effects: list[Msg] = []
    for result in results:
        for inner in result.value.contained if result.value else ():
            if inner.owner == objects.me:
                objects.add_borrower(inner.object_id, receiver)
            else:
                effects += objects.hand_off(inner, receiver, task_id, now)
    return effects


def _cancelled(spec: TaskSpec) -> ObjectError:
    return ObjectError(kind="task_cancelled", message=(
        f"task {spec.name} ({spec.task_id}) was cancelled before it finished; "
        "its results will never be available"))

