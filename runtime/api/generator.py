"""``ObjectRefGenerator``: the refs a streaming generator task yields, as they come (issue 5).

A remote generator function (or any remote function called with
``num_returns="streaming"``) returns an ``ObjectRefGenerator`` at once.
Iterating it (``for ref in gen``, ``next(gen)``, ``async for ref in gen``)
gives one ``ObjectRef`` per value the task yields, as soon as that value was
produced, in order; ``StopIteration`` after the last. If the task fails after
yielding ``k`` values (it raised, its worker died with no retries left, it was
cancelled), the first ``k`` refs resolve normally and the next one raises the
task's error on ``get``; then the iteration stops. This is Ray 2.x's behaviour.

How: the task has one ordinary return, its *head* object, which this generator
holds a ref to (so ``gen.completed()`` is that ref: ready when the task ended,
raising its error if it failed). Item ``i`` comes from the context's
``stream_next(task_id, i)`` (``StreamingContext``), which blocks until the
owner's core worker has it; its ref arrives counted once for this process and
is adopted (``ObjectRef.adopt``). Dropping the generator drops the head ref:
once the task has ended, the owner lets go of the items nobody took.

Like a Python generator, one ``ObjectRefGenerator`` is consumed by one caller
at a time: a ``next`` while another is in progress (from another thread, or an
overlapping ``__anext__``) raises ``RuntimeError``. It cannot be pickled (as
in Ray): pass the refs it yields instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any

from shoal.kernel.ids import TaskId
from shoal.kernel.task_spec import ObjectRefInfo
from shoal.runtime.api.context import StreamingContext, WorkerContext
from shoal.runtime.api.object_ref import ObjectRef

__all__ = ["ObjectRefGenerator"]


class ObjectRefGenerator(Iterator[ObjectRef], AsyncIterator[ObjectRef]):
    """The refs of a streaming generator task's values (Ray's ``ObjectRefGenerator``).

    Args:
        head: the ref of the task's head object (its one ordinary return).
        ctx: the context of the process that submitted the task (its owner).
    """

    def __init__(self, head: ObjectRef, ctx: WorkerContext) -> None:
        if not isinstance(ctx, StreamingContext):
            raise NotImplementedError(
                f"this host ({type(ctx).__name__}) cannot run streaming generator tasks yet; "
                "give the remote function an integer num_returns instead")
        self._head = head
        self._ctx: StreamingContext = ctx
        self._worker_ctx = ctx
        task_id = head.task_id()
        assert task_id is not None, "a generator's head is a task return"
        self._task_id: TaskId = task_id
        self._index = 0
        self._finished = False
        self._busy = threading.Lock()

    # --- iteration -----------------------------------------------------------------

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync(None)

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        """The next item's ref, waiting at most ``timeout_s`` seconds (None: forever).

        Raises:
            StopIteration: the stream ended.
            GetTimeoutError: ``timeout_s`` passed first (the item is still to come).
        """
        self._enter()
        try:
            if self._finished:
                raise StopIteration
            info = self._ctx.stream_next(self._task_id, self._index, timeout_s)
            return self._take(info, StopIteration)
        finally:
            self._busy.release()

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        """The next item's ref without blocking the event loop (``async for``)."""
        self._enter()
        try:
            if self._finished:
                raise StopAsyncIteration
            future = self._request_future()
            info = future.result() if future.done() else await asyncio.wrap_future(future)
            return self._take(info, StopAsyncIteration)
        finally:
            self._busy.release()

    def _request_future(self) -> Future[ObjectRefInfo | None]:
        ask = getattr(self._ctx, "stream_next_future", None)
        if ask is not None:
            return ask(self._task_id, self._index, None)  # type: ignore[no-any-return]
        future: Future[ObjectRefInfo | None] = Future()  # a host without the async hook
        future.set_result(self._ctx.stream_next(self._task_id, self._index, None))
        return future

    def _enter(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "this ObjectRefGenerator is already being iterated by another caller; "
                "consume a generator from one thread or task at a time")

    def _take(self, info: ObjectRefInfo | None, stop: type[Exception]) -> ObjectRef:
        if info is None:
            self._finished = True
            raise stop
        self._index += 1
        return ObjectRef.adopt(info, self._worker_ctx)

    # --- the task as a whole ---------------------------------------------------------

    def completed(self) -> ObjectRef:
        """A ref that is ready once the task ended; ``get`` on it raises the task's error
        if it failed (its value is None)."""
        return self._head

    def is_finished(self) -> bool:
        """Whether iteration reached the end of the stream."""
        return self._finished

    def task_id(self) -> TaskId:
        return self._task_id

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id}, next={self._index})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "an ObjectRefGenerator cannot be pickled or passed to another task (as in Ray); "
            "iterate it here and pass the ObjectRefs it yields instead")
