"""An async actor's event loop in a worker process: its calls as asyncio tasks on one thread.

Theory of operation
-------------------
An actor class with an ``async def`` method (``actor.is_async_class``) is an
async actor. Its worker (``runtime/actor_worker.py``) starts one
``AsyncActorLoop`` once the constructor has made the instance, before the
kernel can start any call (the kernel hears ``ActorInstanceCreated`` only
after). Then every ``ExecuteActorTask`` of the actor, sync methods included
(as in Ray), comes here instead of to the main thread or the thread pool:

* ``submit`` (trio thread) hands the call to the loop with
  ``call_soon_threadsafe``; the loop starts one asyncio task per call, in the
  order the kernel started them, so calls from one caller start in submission
  order. The kernel starts at most ``max_concurrency`` calls at once (1000 by
  default for async actors), so that many tasks may be suspended at their
  ``await``s while others run.
* Each task reads the call's arguments (zero-copy from the node's store),
  awaits ``actor.execute_method_async`` (context, running spec and collected
  refs are per task, in ``contextvars``), stores large returns, and posts
  ``ActorTaskExecuted`` to the kernel. ``await ref`` inside a method goes
  through ``ProdWorkerContext.get_objects_future``: the loop keeps running
  other calls until the trio thread completes the future.
* ``cancel(task_id)`` cancels a running call's asyncio task: the method sees
  ``CancelledError`` at its current ``await`` and the call fails as
  ``task_cancelled``.
* A ``BaseException`` that is not an ``Exception`` (``SystemExit``...) escaping
  a call goes to ``on_fatal``, which ends the worker as from a task.
* ``stop`` ends the loop when the worker process ends; the thread is a daemon,
  so a call stuck in user code does not keep the process alive.

Blocking API calls (``shoal.get``) inside a coroutine block the whole loop, as
in Ray: ``await`` refs instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from shoal.kernel.core_worker.actor_protocol import ActorTaskExecuted, ExecuteActorTask
from shoal.kernel.core_worker.protocol import ErrorKind, ObjectError, ObjectResult
from shoal.kernel.ids import TaskId
from shoal.runtime.api.actor import execute_method_async, is_async_class
from shoal.runtime.api.exceptions import ObjectLostError, ObjectStoreFullError, RaySystemError
from shoal.runtime.driver import ProdWorkerContext

_UNREADABLE = (ObjectLostError, ObjectStoreFullError, RaySystemError)
STOP_JOIN_S = 2.0  # how long stop() waits for the loop's thread


def _ignore_fatal(exc: BaseException) -> None:
    raise exc


class AsyncActorLoop:
    """The asyncio loop of one async actor (see the module docstring).

    Args:
        ctx: The worker's context.
        instance: The actor instance whose methods run on the loop.
        on_fatal: Called (from the loop's thread) with a ``BaseException`` that is not
            an ``Exception`` escaping a call.
    """

    def __init__(self, ctx: ProdWorkerContext, instance: Any,
                 on_fatal: Callable[[BaseException], None] = _ignore_fatal) -> None:
        self._ctx = ctx
        self._instance = instance
        self._on_fatal = on_fatal
        self._loop = asyncio.new_event_loop()
        self._calls: dict[TaskId, asyncio.Task[None]] = {}
        self._log = structlog.get_logger("shoal.runtime.async_actor").bind(
            address=str(ctx.address))
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name="shoal-actor-asyncio")
        self._thread.start()

    @classmethod
    def for_instance(cls, ctx: ProdWorkerContext, instance: Any,
                     on_fatal: Callable[[BaseException], None] = _ignore_fatal,
                     ) -> AsyncActorLoop | None:
        """A started loop if ``instance`` is an async actor's (None otherwise, or if the
        constructor failed and there is no instance)."""
        if instance is None or not is_async_class(type(instance)):
            return None
        return cls(ctx, instance, on_fatal)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    # --- any thread ------------------------------------------------------------------------

    def submit(self, effect: ExecuteActorTask) -> None:
        """Starts one call on the loop (the trio thread calls this)."""
        self._loop.call_soon_threadsafe(self._start, effect)

    def cancel(self, task_id: TaskId) -> bool:
        """Cancels the call ``task_id`` if it is running here; False if it is not."""
        task = self._calls.get(task_id)
        if task is None:
            return False
        self._loop.call_soon_threadsafe(task.cancel)
        return True

    def stop(self) -> None:
        """Stops the loop and waits (boundedly) for its thread."""
        if self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._loop.stop)
        except RuntimeError:  # closed meanwhile
            return
        if threading.current_thread() is not self._thread:
            self._thread.join(STOP_JOIN_S)

    # --- the loop's thread -----------------------------------------------------------------

    def _start(self, effect: ExecuteActorTask) -> None:
        task_id = effect.spec.task_id
        task = self._loop.create_task(self._run_call(effect), name=f"shoal-call-{task_id}")
        self._calls[task_id] = task
        task.add_done_callback(lambda _: self._calls.pop(task_id, None))

    async def _run_call(self, effect: ExecuteActorTask) -> None:
        ctx, spec = self._ctx, effect.spec
        returned: list[object] = []  # the return values, alive until the kernel has them
        try:
            try:
                args = tuple(ctx.objects.read_arg(arg) for arg in effect.args)
            except _UNREADABLE as exc:
                executed = _unreadable(effect, exc)
            else:
                executed = await execute_method_async(self._instance, effect.actor_id, spec,
                                                      args, ctx, keep_alive=returned)
                del args  # the arguments' views of the store: their leases can end
                executed = msgspec.structs.replace(executed, results=tuple(
                    ctx.objects.store_result(r, spec) for r in executed.results))
        except Exception as exc:  # noqa: BLE001 - a host bug: fail the call, never hang it
            self._log.exception("async_actor.call_failed", task=spec.task_id)
            executed = _failed(effect, "task_error", f"the worker could not run actor call "
                               f"{spec.name} ({spec.task_id}): {type(exc).__name__}: {exc}")
        except BaseException as exc:  # SystemExit and friends end the worker
            self._on_fatal(exc)
            raise
        ctx.post_input(executed)
        del returned  # refs in the return values: released only after the results


def _unreadable(effect: ExecuteActorTask, exc: BaseException) -> ActorTaskExecuted:
    spec = effect.spec
    return _failed(effect, "object_lost", (
        f"actor call {spec.name} ({spec.task_id}): an argument could not be read from the "
        f"node's object store: {exc}"))


def _failed(effect: ExecuteActorTask, kind: ErrorKind, message: str) -> ActorTaskExecuted:
    spec = effect.spec
    error = ObjectError(kind=kind, message=message)
    return ActorTaskExecuted(actor_id=effect.actor_id, task_id=spec.task_id,
                             attempt=spec.attempt, results=tuple(
                                 ObjectResult(object_id=oid, error=error)
                                 for oid in spec.return_ids))
