"""Streaming generator tasks (issue 5): the owner's stream table and the executor's outbox.

Theory of operation
-------------------
A streaming task (``TaskSpec.streaming``) has one ordinary return, its *head*
(``return_object_id(task, 0)``): the API's ``ObjectRefGenerator`` holds a ref
to it, and it completes when the task ends. The values the generator yields
are *items*: item ``i`` is object ``stream_item_id(task, i)``, owned by the
caller like any return.

Executor side (``StreamOutbox``, one per running streaming task): each
``StreamItemProduced`` from the host becomes a ``StreamItem`` to the owner,
kept until the owner's ``StreamItemAck`` and re-sent every
``STREAM_RESEND_NS`` meanwhile (one timer per task). The task's ``TaskDone``
(carrying ``stream_count``, the number of items yielded) waits until every
item is acknowledged, so when the owner sees ``TaskDone`` it has them all.

Owner side (``StreamTable``, one stream per streaming task it submitted):

* ``StreamItem``: acknowledged always; recorded once per index (the network
  duplicates and reorders, and a retried attempt re-yields the same items: the
  generator is assumed deterministic, as in Ray). Recording stores the item in
  the object table and takes one local count on it, *held* for the consumer.
* The task ends (``on_task_finished``, from the submitter): on success the
  stream has ``stream_count`` items; on failure (the task raised, its worker
  died with no retries left, it was cancelled) the first index not received
  becomes an item holding the task's error, and the stream ends after it.
  Items past the end (from an earlier attempt) are let go.
* ``StreamNextRequested`` for index ``i``: answered at once if item ``i`` is
  here (its held count passes to the consumer's ``ObjectRef``, which adopts it
  instead of counting itself), or with end-of-stream when ``i`` is past the
  end; else it waits (until item ``i`` or the end comes, or its timeout).
* The head is freed once the generator is dropped and the task ended: every
  item still held is let go and the stream forgotten. A late ``StreamItem``
  for a forgotten stream is only acknowledged.

Invariants: held items are received; no item at or past the end is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import ObjectError, ObjectResult, TaskDone
from shoal.kernel.core_worker.stream_protocol import (
    StreamItem,
    StreamItemAck,
    StreamItemProduced,
    StreamNextCompleted,
    StreamNextRequested,
)
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.ids import NANOS_PER_MILLI, Count, Nanos, ObjectId, TaskId
from shoal.kernel.messages import Address, CancelTimer, Msg, Rejected, Send, SetTimer
from shoal.kernel.task_spec import ObjectRefInfo, producing_task, return_object_id

NEXT_TIMER_PREFIX = "stream.next."  # owner: the timeout of a waiting StreamNextRequested
RESEND_TIMER_PREFIX = "stream.resend."  # executor: re-send unacknowledged items
STREAM_RESEND_NS = 1000 * NANOS_PER_MILLI
STREAM_ITEMS_MAX = 2**31  # an item index at or past this is a bad peer's


def stream_head_id(task_id: TaskId) -> ObjectId:
    """The head object of a streaming task: its one ordinary return."""
    return return_object_id(task_id, 0)


def stream_item_id(task_id: TaskId, index: int) -> ObjectId:
    """The object of item ``index`` (from 0) of a streaming task."""
    return return_object_id(task_id, index + 1)


# --- owner side ---------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Stream:
    task_id: TaskId
    received: dict[int, None] = field(default_factory=dict)
    held: dict[int, None] = field(default_factory=dict)  # counted once for the consumer
    end: int | None = None  # the number of items, once the task ended
    waiters: dict[int, list[int]] = field(default_factory=dict)  # index -> call ids


class StreamTable:
    """The streams this process owns. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, objects: ObjectTable) -> None:
        self._me = me
        self._objects = objects
        self._streams: dict[TaskId, _Stream] = {}
        self._calls: dict[int, tuple[TaskId, int]] = {}  # waiting next calls
        self._timed: dict[int, None] = {}  # those of them with a timeout timer

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def open(self, task_id: TaskId) -> None:
        """A streaming task was submitted: its items may come from now on."""
        self._streams.setdefault(task_id, _Stream(task_id=task_id))

    def on_item(self, src: Address, msg: StreamItem) -> list[Msg]:
        problem = _item_problem(msg)
        if problem:
            return [Send(dst=src, msg=Rejected(request_type="StreamItem", reason=(
                f"core worker {self._me}: {problem}")))]
        ack = Send(dst=src, msg=StreamItemAck(task_id=msg.task_id, attempt=msg.attempt,
                                              index=msg.index))
        stream = self._streams.get(msg.task_id)
        if stream is None or msg.index in stream.received or (
                stream.end is not None and msg.index >= stream.end):
            return [ack]  # a duplicate, late, or for a generator already dropped
        for inner in msg.result.value.contained if msg.result.value else ():
            if inner.owner == src:  # the worker counted us as its borrower (executor.py)
                self._objects.ensure(inner)
                self._objects.mark_registered_borrower(inner.object_id)
        effects = self._record(stream, msg.index, msg.result)
        return effects + [ack] + self._wake(stream, msg.index)

    def _record(self, stream: _Stream, index: int, result: ObjectResult) -> list[Msg]:
        object_id = stream_item_id(stream.task_id, index)
        stream.received[index] = None
        stream.held[index] = None
        self._objects.add_owned_pending(object_id)
        effects = self._objects.change_local(ObjectRefInfo(object_id=object_id, owner=self._me), +1)
        return effects + self._objects.store(result)

    def on_task_finished(self, task_id: TaskId, head: ObjectResult,
                         count: int | None) -> list[Msg]:
        """The task ended for good (``head`` is its outcome; ``count`` the items it
        yielded, when it reported them); fixes the end of the stream."""
        stream = self._streams.get(task_id)
        if stream is None or stream.end is not None:
            return []
        first_missing = next(i for i in range(len(stream.received) + 1)
                             if i not in stream.received)
        effects: list[Msg] = []
        if head.error is None and count is not None and first_missing >= count:
            stream.end = count
        else:
            error = head.error or ObjectError(kind="object_lost", message=(
                f"item {first_missing} of streaming task {task_id} never reached its owner "
                "although the task reported it"))
            stream.end = first_missing + 1
            item_id = stream_item_id(task_id, first_missing)
            effects += self._record(stream, first_missing,
                                    ObjectResult(object_id=item_id, error=error))
        for index in [i for i in stream.held if i >= stream.end]:
            effects += self._let_go(stream, index)
        for index in list(stream.waiters):
            effects += self._wake(stream, index)
        return effects

    def on_next(self, msg: StreamNextRequested, now: Nanos) -> list[Msg]:
        stream = self._streams.get(msg.task_id)
        if stream is None or (stream.end is not None and msg.index >= stream.end):
            return [StreamNextCompleted(call_id=msg.call_id)]  # past the end (or not a stream)
        if msg.index in stream.received:
            return self._hand_over(stream, msg.index, msg.call_id)
        stream.waiters.setdefault(msg.index, []).append(msg.call_id)
        self._calls[msg.call_id] = (msg.task_id, msg.index)
        if msg.timeout_ns is None:
            return []
        self._timed[msg.call_id] = None
        return [SetTimer(key=f"{NEXT_TIMER_PREFIX}{msg.call_id}", at_ns=now + msg.timeout_ns)]

    def on_timer(self, call_id: int) -> list[Msg]:
        waiting = self._calls.pop(call_id, None)
        self._timed.pop(call_id, None)
        if waiting is None:
            return []
        stream = self._streams.get(waiting[0])
        calls = stream.waiters.get(waiting[1], []) if stream is not None else []
        if call_id in calls:
            calls.remove(call_id)
            if not calls and stream is not None:
                del stream.waiters[waiting[1]]
        return [StreamNextCompleted(call_id=call_id, timed_out=True)]

    def _wake(self, stream: _Stream, index: int) -> list[Msg]:
        """Answers the calls waiting for item ``index`` if it is here or past the end."""
        past_end = stream.end is not None and index >= stream.end
        if index not in stream.received and not past_end:
            return []
        effects: list[Msg] = []
        for call_id in stream.waiters.pop(index, []):
            self._calls.pop(call_id, None)
            if call_id in self._timed:
                del self._timed[call_id]
                effects.append(CancelTimer(key=f"{NEXT_TIMER_PREFIX}{call_id}"))
            if past_end:
                effects.append(StreamNextCompleted(call_id=call_id))
            else:
                effects += self._hand_over(stream, index, call_id)
        return effects

    def _hand_over(self, stream: _Stream, index: int, call_id: int) -> list[Msg]:
        """The consumer gets item ``index`` with one local count it adopts: the held one,
        or (asked again) a new one, if the item still exists."""
        info = ObjectRefInfo(object_id=stream_item_id(stream.task_id, index), owner=self._me)
        effects: list[Msg] = []
        if index in stream.held:
            del stream.held[index]  # the held count passes to the consumer
        elif info.object_id in self._objects:
            effects += self._objects.change_local(info, +1)
        return effects + [StreamNextCompleted(call_id=call_id, ref=info)]

    def _let_go(self, stream: _Stream, index: int) -> list[Msg]:
        del stream.held[index]
        info = ObjectRefInfo(object_id=stream_item_id(stream.task_id, index), owner=self._me)
        return self._objects.change_local(info, -1)

    def on_object_freed(self, object_id: ObjectId) -> list[Msg]:
        """The head was freed (generator dropped, task ended): let go of the stream."""
        task_id = producing_task(object_id)
        stream = self._streams.get(task_id) if task_id is not None else None
        if stream is None or object_id != stream_head_id(stream.task_id):
            return []
        effects: list[Msg] = []
        for index in list(stream.held):
            effects += self._let_go(stream, index)
        for calls in stream.waiters.values():
            for call_id in calls:  # nobody can wait on a dropped generator; answer anyway
                self._calls.pop(call_id, None)
                self._timed.pop(call_id, None)
                effects.append(StreamNextCompleted(call_id=call_id))
        del self._streams[stream.task_id]
        return effects

    def check_invariants(self) -> None:
        for stream in self._streams.values():
            for index in stream.held:
                if index not in stream.received:
                    raise InvariantViolation(
                        f"core_worker: stream {stream.task_id!r} holds item {index}, "
                        "which never arrived")
                if stream.end is not None and index >= stream.end:
                    raise InvariantViolation(
                        f"core_worker: stream {stream.task_id!r} holds item {index} past "
                        f"its end {stream.end}")


def _item_problem(msg: StreamItem) -> str:
    if msg.index >= STREAM_ITEMS_MAX:
        return f"item index {msg.index} of stream {msg.task_id} is out of range"
    if msg.result.object_id != stream_item_id(msg.task_id, msg.index):
        return (f"item {msg.index} of stream {msg.task_id} names object "
                f"{msg.result.object_id}, expected {stream_item_id(msg.task_id, msg.index)}")
    return ""


# --- executor side ------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class StreamOutbox:
    """The items of one running streaming task not yet acknowledged by its owner, and
    the ``TaskDone`` that waits for them."""

    owner: Address
    task_id: TaskId
    attempt: Count
    unacked: dict[int, StreamItem] = field(default_factory=dict)
    final: TaskDone | None = None
    timer_armed: bool = False

    @property
    def timer_key(self) -> str:
        return f"{RESEND_TIMER_PREFIX}{self.task_id}"

    @property
    def drained(self) -> bool:
        return not self.unacked

    def send(self, produced: StreamItemProduced, now: Nanos) -> list[Msg]:
        item = StreamItem(task_id=produced.task_id, attempt=produced.attempt,
                          index=produced.index, result=produced.result)
        self.unacked[item.index] = item
        effects: list[Msg] = [Send(dst=self.owner, msg=item)]
        if not self.timer_armed:
            self.timer_armed = True
            effects.append(SetTimer(key=self.timer_key, at_ns=now + STREAM_RESEND_NS))
        return effects

    def ack(self, index: int) -> list[Msg]:
        if self.unacked.pop(index, None) is None or self.unacked or not self.timer_armed:
            return []
        self.timer_armed = False
        return [CancelTimer(key=self.timer_key)]

    def on_timer(self, now: Nanos) -> list[Msg]:
        if not self.unacked:
            self.timer_armed = False
            return []
        effects: list[Msg] = [Send(dst=self.owner, msg=item) for item in self.unacked.values()]
        return effects + [SetTimer(key=self.timer_key, at_ns=now + STREAM_RESEND_NS)]
