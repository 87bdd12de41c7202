"""Streaming generators in the simulator (issue 5): ``StreamingContext`` of ``SimWorkerContext``.

* ``stream_next`` (the owner's consumer): ``StreamNextRequested`` to the core
  worker, then the calling user thread hands the baton back until
  ``StreamNextCompleted`` (``TaskHost`` routes it to ``complete``, which
  resolves the call's future with the effect itself).
* ``report_stream_item`` (the worker's task thread, per yielded value): a value
  above the inline limit goes to the node's store, as a return does, then
  ``StreamItemProduced`` goes to the worker's core worker, after the thread's
  pending ref changes.
* ``stream_next_future`` (``async for``): blocks like ``stream_next`` and
  returns a done future, which is deterministic.
* A consumer interrupted while it waits (its task was cancelled) abandons the
  call: an item answered to it later comes with a count nobody adopts, which
  ``give_back_abandoned`` returns, so the item does not leak.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING

from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.core_worker.stream_protocol import (
    StreamItemProduced,
    StreamNextCompleted,
    StreamNextRequested,
)
from shoal.kernel.ids import NodeId, TaskId
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo, TaskSpec

if TYPE_CHECKING:
    from shoal.sim.baton import SimFuture
    from shoal.sim.task_host import TaskHost


class StreamContextMixin:
    """The ``StreamingContext`` methods of ``SimWorkerContext`` (see the module docstring)."""

    if TYPE_CHECKING:  # provided by SimWorkerContext
        _host: TaskHost
        node_id: NodeId

        def _inject(self, event: Msg) -> None: ...
        def _new_call(self) -> tuple[int, SimFuture]: ...
        def ref_removed(self, ref: ObjectRefInfo) -> None: ...
        def flush_refs(self) -> None: ...

    _abandoned_streams: dict[int, None]

    def stream_next(self, task_id: TaskId, index: int,
                    timeout_s: float | None) -> ObjectRefInfo | None:
        call_id, future = self._new_call()
        timeout_ns = None if timeout_s is None else max(0, int(timeout_s * 1e9))
        self._inject(StreamNextRequested(call_id=call_id, task_id=task_id, index=index,
                                         timeout_ns=timeout_ns))
        try:
            answer: StreamNextCompleted = self._host.baton.block(future)
        except BaseException:
            self._abandoned().setdefault(call_id, None)  # interrupted (or its process died)
            raise
        if answer.timed_out:
            from shoal.runtime.api.exceptions import GetTimeoutError

            raise GetTimeoutError(
                f"item {index} of generator task {task_id} was not produced within "
                f"{timeout_s} s")
        return answer.ref

    def stream_next_future(self, task_id: TaskId, index: int,
                           timeout_s: float | None) -> Future[ObjectRefInfo | None]:
        future: Future[ObjectRefInfo | None] = Future()
        try:
            future.set_result(self.stream_next(task_id, index, timeout_s))
        except Exception as error:  # noqa: BLE001 - the awaiting caller gets it
            future.set_exception(error)
        return future

    def _abandoned(self) -> dict[int, None]:
        if not hasattr(self, "_abandoned_streams"):
            self._abandoned_streams = {}
        return self._abandoned_streams

    def give_back_abandoned(self, answer: StreamNextCompleted) -> bool:
        """True if ``answer`` is for a call its consumer abandoned (its item's count,
        if any, is given back to the core worker)."""
        abandoned = self._abandoned()
        if answer.call_id not in abandoned:
            return False
        del abandoned[answer.call_id]
        if answer.ref is not None:
            self.ref_removed(answer.ref)
            self.flush_refs()
        return True

    def report_stream_item(self, spec: TaskSpec, index: int, result: ObjectResult) -> None:
        stored = self._host._store_large(self.node_id, result)
        self._inject(StreamItemProduced(task_id=spec.task_id, attempt=spec.attempt,
                                        index=index, result=stored))
