"""User calls that wait for objects: ``get`` and ``wait``, with their timeouts.

Theory of operation
-------------------
A ``GetRequested`` names refs; the call completes (``GetCompleted``, results in
the order asked) when every object is done, or at its deadline with a
``get_timeout`` error for those still pending. A ``WaitRequested`` completes
when ``num_returns`` objects are done or at its deadline, with the ready ids in
the order asked. Borrowed objects are fetched from their owners as the call
starts. A worker blocked in a call tells its raylet (``WorkerBlocked``) so its
CPU can run other work, and ``WorkerUnblocked`` when no call blocks it any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import (
    GetCompleted,
    GetRequested,
    ObjectError,
    ObjectResult,
    WaitCompleted,
    WaitRequested,
)
from shoal.kernel.ids import Nanos, ObjectId, WorkerId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer
from shoal.kernel.raylet.protocol import WorkerBlocked, WorkerUnblocked
from shoal.kernel.task_spec import ObjectRefInfo

CALL_TIMER_PREFIX = "call.timeout."


@dataclass(slots=True, eq=False)
class _Call:
    call_id: int
    refs: tuple[ObjectRefInfo, ...]
    need: int  # how many must be done: all for get, num_returns for wait
    is_get: bool
    has_timer: bool
    fetch_local: bool = True  # done means readable here, not just finished somewhere
    done: dict[ObjectId, None] = field(default_factory=dict)


class CallTable:
    """Pending get/wait calls of one process. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, raylet: Address, objects: ObjectTable) -> None:
        self._me = me
        self._raylet = raylet
        self._objects = objects
        self._calls: dict[int, _Call] = {}
        self._by_object: dict[ObjectId, dict[int, None]] = {}
        self._blocked = False

    def __len__(self) -> int:
        return len(self._calls)

    def pinned_refs(self) -> list[ObjectRefInfo]:
        return [info for call in self._calls.values() for info in call.refs]

    def on_get(self, msg: GetRequested, now: Nanos) -> list[Msg]:
        call = _Call(call_id=msg.call_id, refs=msg.refs, need=len(msg.refs), is_get=True,
                     has_timer=msg.timeout_ns is not None)
        return self._start(call, msg.timeout_ns, now)

    def on_wait(self, msg: WaitRequested, now: Nanos) -> list[Msg]:
        call = _Call(call_id=msg.call_id, refs=msg.refs, need=min(msg.num_returns, len(msg.refs)),
                     is_get=False, has_timer=msg.timeout_ns is not None,
                     fetch_local=msg.fetch_local)
        return self._start(call, msg.timeout_ns, now)

    def _start(self, call: _Call, timeout_ns: int | None, now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        for info in call.refs:
            self._objects.ensure(info).tasks += 1  # pinned while the call waits
            effects += self._objects.fetch(info, now)
            if call.fetch_local:
                effects += self._objects.ensure_local(info.object_id)
        if self._done_count(call) >= call.need:
            return effects + self._finish(call, timed_out=False)
        self._calls[call.call_id] = call
        for info in call.refs:
            self._by_object.setdefault(info.object_id, {})[call.call_id] = None
        if timeout_ns is not None:
            effects.append(SetTimer(key=f"{CALL_TIMER_PREFIX}{call.call_id}", at_ns=now + timeout_ns))
        return effects + self._update_blocked()

    def on_object_done(self, object_id: ObjectId) -> list[Msg]:
        waiting = self._by_object.get(object_id)
        if not waiting:
            return []
        effects: list[Msg] = []
        if any(self._calls[c].fetch_local for c in waiting if c in self._calls):
            effects += self._objects.ensure_local(object_id)
        for call_id in list(waiting):
            call = self._calls.get(call_id)
            if call is None or not self._is_done(call, object_id):
                continue
            call.done[object_id] = None
            if len(call.done) >= call.need and self._still_done(call):
                effects += self._finish(call, timed_out=False)
        return effects + self._update_blocked()

    def on_timeout(self, call_id: int) -> list[Msg]:
        call = self._calls.get(call_id)
        if call is None:
            return []
        return self._finish(call, timed_out=True) + self._update_blocked()

    def fail_objects(self, results: list[ObjectResult]) -> list[Msg]:
        """Stores errors (owner died...) for borrowed objects and wakes their calls."""
        effects: list[Msg] = []
        for result in results:
            effects += self._objects.store(result)
            effects += self.on_object_done(result.object_id)
        return effects

    def _done_count(self, call: _Call) -> int:
        """How many of the call's objects are done; counted once, then kept up to date by
        ``on_object_done`` (so a get of n refs costs O(n), not O(n^2))."""
        if not call.done:
            for info in call.refs:
                if self._is_done(call, info.object_id):
                    call.done[info.object_id] = None
        return len(call.done)

    def _still_done(self, call: _Call) -> bool:
        """Forgets objects that went back to pending (lost, being rebuilt) since counted."""
        for object_id in [oid for oid in call.done if not self._is_done(call, oid)]:
            del call.done[object_id]
        return len(call.done) >= call.need

    def _is_done(self, call: _Call, object_id: ObjectId) -> bool:
        if call.fetch_local:
            return self._objects.readable(object_id)
        return self._objects.result(object_id) is not None

    def _finish(self, call: _Call, *, timed_out: bool) -> list[Msg]:
        self._calls.pop(call.call_id, None)
        for info in call.refs:
            waiting = self._by_object.get(info.object_id)
            if waiting is not None:
                waiting.pop(call.call_id, None)
                if not waiting:
                    del self._by_object[info.object_id]
        effects: list[Msg] = []
        if call.has_timer and not timed_out:
            effects.append(CancelTimer(key=f"{CALL_TIMER_PREFIX}{call.call_id}"))
        if call.is_get:
            results = tuple(self._result_or_timeout(info.object_id) for info in call.refs)
            effects.append(GetCompleted(call_id=call.call_id, results=results))
        else:
            ready = tuple(info.object_id for info in call.refs
                          if self._is_done(call, info.object_id))
            effects.append(WaitCompleted(call_id=call.call_id, ready=ready[: max(call.need, 0)]
                                         if not timed_out else ready))
        for info in call.refs:  # unpin after reading the results
            effects += self._objects.change_tasks(info, -1)
        return effects

    def _result_or_timeout(self, object_id: ObjectId) -> ObjectResult:
        result = self._objects.result(object_id)
        if result is not None and self._objects.readable(object_id):
            return result
        return ObjectResult(object_id=object_id, error=ObjectError(
            kind="get_timeout", message=(
                f"get timed out: object {object_id} was not ready within the timeout; "
                "raise the timeout, or use shoal.wait to poll")))

    def _update_blocked(self) -> list[Msg]:
        if self._me.component != "worker":
            return []
        blocked = any(call.is_get for call in self._calls.values())
        if blocked == self._blocked:
            return []
        self._blocked = blocked
        worker_id = WorkerId(self._me.worker)
        msg = WorkerBlocked(worker_id=worker_id) if blocked else WorkerUnblocked(worker_id=worker_id)
        return [Send(dst=self._raylet, msg=msg)]
