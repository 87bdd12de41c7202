"""Streaming generators on the production host (issue 5): ``StreamingContext`` of
``ProdWorkerContext``.

Theory of operation
-------------------
``ProdStreams`` is a mixin of ``ProdWorkerContext`` (``runtime/driver.py``),
built on its plumbing:

* ``stream_next`` (the owner's consumer, any user thread): queues
  ``StreamNextRequested`` under a fresh ``call_id`` (after the thread's pending
  ref changes, as every input) and waits on a waiter of the context's table;
  the trio thread resolves it with the kernel's ``StreamNextCompleted``
  (``complete`` routes it by ``call_id``). A timeout is the kernel's.
* ``stream_next_future`` (``async for``): the same with a waiter that completes
  a ``concurrent.futures.Future`` instead of waking a thread, so the awaiting
  event loop keeps running.
* An item answered to a caller that gave up meanwhile (its blocked thread was
  interrupted, its awaiting task cancelled) comes with a count nobody adopts:
  it is given back (``ref_removed``), so the item does not leak.
* ``report_stream_item`` (a worker's task thread, per yielded value): a value
  above the inline limit is sealed in the node's shared-memory store first
  (``ProcessObjects.store_result``, as for returns; one that cannot be stored
  becomes an error item), then ``StreamItemProduced`` is queued to the kernel,
  which sends it to the owner at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.core_worker.stream_protocol import (
    StreamItemProduced,
    StreamNextCompleted,
    StreamNextRequested,
)
from shoal.kernel.ids import TaskId
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo, TaskSpec
from shoal.runtime.api.exceptions import GetTimeoutError

if TYPE_CHECKING:
    from shoal.runtime.process_objects import ProcessObjects


class _StreamFutureWaiter:
    """A waiter of the context's table that completes a future with the item's ref."""

    __slots__ = ("call_id", "future", "give_back", "timeout_s")

    def __init__(self, call_id: int, timeout_s: float | None,
                 give_back: Callable[[ObjectRefInfo], None]) -> None:
        self.call_id = call_id
        self.timeout_s = timeout_s
        self.give_back = give_back  # releases the count of an item nobody will adopt
        self.future: Future[ObjectRefInfo | None] = Future()

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        """The kernel answered (``value``: the ``StreamNextCompleted``) or the call
        failed (``error``). Trio thread (or the thread that saw the daemon go)."""
        if not self.future.set_running_or_notify_cancel():
            if isinstance(value, StreamNextCompleted) and value.ref is not None:
                self.give_back(value.ref)  # its consumer cancelled it
            return
        if error is not None:
            self.future.set_exception(error)
            return
        try:
            self.future.set_result(_item_of(value, self.timeout_s))
        except GetTimeoutError as timeout:
            self.future.set_exception(timeout)


def _item_of(answer: StreamNextCompleted, timeout_s: float | None) -> ObjectRefInfo | None:
    if answer.timed_out:
        raise GetTimeoutError(f"the next item of a generator task was not produced within "
                              f"{timeout_s} s")
    return answer.ref


class ProdStreams:
    """The ``StreamingContext`` methods of ``ProdWorkerContext`` (see the module docstring)."""

    if TYPE_CHECKING:  # provided by ProdWorkerContext
        _lock: threading.Lock
        _waiters: dict[int, Any]
        _call_ids: Any
        objects: ProcessObjects

        def _post(self, event: Msg | None) -> None: ...
        def _check_alive(self) -> None: ...
        def _new_waiter(self) -> Any: ...
        def _block(self, waiter: Any) -> Any: ...
        def ref_removed(self, ref: ObjectRefInfo) -> None: ...

    def stream_next(self, task_id: TaskId, index: int,
                    timeout_s: float | None) -> ObjectRefInfo | None:
        waiter = self._new_waiter()
        self._post(_request(waiter.call_id, task_id, index, timeout_s))
        return _item_of(self._block(waiter), timeout_s)

    def stream_next_future(self, task_id: TaskId, index: int,
                           timeout_s: float | None) -> Future[ObjectRefInfo | None]:
        self._check_alive()
        waiter = _StreamFutureWaiter(next(self._call_ids), timeout_s, self.ref_removed)
        with self._lock:
            self._waiters[waiter.call_id] = waiter
        self._post(_request(waiter.call_id, task_id, index, timeout_s))
        return waiter.future

    def report_stream_item(self, spec: TaskSpec, index: int, result: ObjectResult) -> None:
        stored = self.objects.store_result(result, spec)
        self._post(StreamItemProduced(task_id=spec.task_id, attempt=spec.attempt, index=index,
                                      result=stored))


def _request(call_id: int, task_id: TaskId, index: int,
             timeout_s: float | None) -> StreamNextRequested:
    timeout_ns = None if timeout_s is None else max(0, int(timeout_s * 1e9))
    return StreamNextRequested(call_id=call_id, task_id=task_id, index=index,
                               timeout_ns=timeout_ns)
