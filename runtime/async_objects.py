"""Awaitable refs on the production host: ``get_objects_future`` of ``ProdWorkerContext``.

Theory of operation
-------------------
``await ref`` and ``ref.future()`` (``runtime/api/object_ref.py``) ask the
context for the object without blocking the caller: an asyncio event loop (an
async actor's, or a driver's ``asyncio.run``) keeps running other coroutines
meanwhile. ``ProdAsyncObjects`` is a mixin of ``ProdWorkerContext``
(``runtime/driver.py``) that implements the API's ``AsyncObjectsContext`` with
the context's plumbing:

* ``get_objects_future`` registers a ``_FutureWaiter`` under a fresh
  ``call_id`` in the context's waiter table, queues ``GetRequested`` (after the
  pending ref changes, as every input) and returns its
  ``concurrent.futures.Future`` at once.
* The trio thread completes it when the kernel emits ``GetCompleted`` (the
  context's ``complete`` resolves waiters by ``call_id``, whatever their kind),
  or fails it when the daemon is lost (``lost``). Its value is a *reader*:
  results of objects kept in the node's shared-memory store are read from it
  when the consumer calls the reader, in the consumer's thread, so the trio
  thread never touches the store for it. The API wraps the future with
  ``asyncio.wrap_future``, which hops back onto the awaiting loop.
* A future cancelled by its consumer (the awaiting asyncio task was cancelled)
  is left alone when the answer comes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from shoal.kernel.core_worker.protocol import GetRequested, ObjectResult
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo

if TYPE_CHECKING:
    from shoal.runtime.process_objects import ProcessObjects

Reader = Callable[[], list[ObjectResult]]


class _FutureWaiter:
    """A waiter of the context's table that completes a future instead of waking a thread."""

    __slots__ = ("_objects", "call_id", "future")

    def __init__(self, call_id: int, objects: Callable[[], ProcessObjects]) -> None:
        self.call_id = call_id
        self.future: Future[Reader] = Future()
        self._objects = objects

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        """The kernel answered (``value``: the ``GetCompleted`` results) or the call
        failed (``error``). Trio thread (or the thread that saw the daemon go)."""
        if not self.future.set_running_or_notify_cancel():
            return  # its consumer cancelled it
        if error is not None:
            self.future.set_exception(error)
            return
        results: tuple[ObjectResult, ...] = tuple(value)
        objects = self._objects

        def read() -> list[ObjectResult]:
            store = objects()
            return [store.read_result(result) for result in results]

        self.future.set_result(read)


class ProdAsyncObjects:
    """The ``AsyncObjectsContext`` method of ``ProdWorkerContext`` (see the module docstring)."""

    if TYPE_CHECKING:  # provided by ProdWorkerContext
        _lock: threading.Lock
        _waiters: dict[int, Any]
        _call_ids: Any
        objects: ProcessObjects

        def _post(self, event: Msg | None) -> None: ...
        def _check_alive(self) -> None: ...

    def get_objects_future(self, refs: list[ObjectRefInfo], timeout_s: float | None,
                           ) -> Future[Reader]:
        """Asks for ``refs`` without blocking; the future completes from the trio thread.

        Raises:
            RaySystemError: the cluster is lost.
        """
        self._check_alive()
        waiter = _FutureWaiter(next(self._call_ids), lambda: self.objects)
        with self._lock:
            self._waiters[waiter.call_id] = waiter
        timeout_ns = None if timeout_s is None else max(0, int(timeout_s * 1e9))
        self._post(GetRequested(call_id=waiter.call_id, refs=tuple(refs), timeout_ns=timeout_ns))
        return waiter.future
