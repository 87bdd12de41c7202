"""The actor a worker process hosts: its constructor and its calls, on the user's threads.

Theory of operation
-------------------
The worker's core worker (``kernel/core_worker/actor_executor.py``) decides
what runs and when; ``ActorRunner`` only carries out its two actor effects,
as the simulator's ``SimActorHost`` does (``sim/actor_host.py``):

* ``CreateActorInstance``: the constructor runs in the worker's MAIN thread
  (the one that runs tasks), through the API's ``actor.create_instance``, with
  its arguments read from the node's store where they are stored. The instance
  is kept for the life of the process (one incarnation per process: a restart
  is a new worker), and ``ActorInstanceCreated`` goes back to the kernel.
  ``current_actor_id``/``current_actor_restarts`` of the context are set first,
  so the constructor sees them too.
* ``ExecuteActorTask``: one method call, through ``actor.execute_method``.
  ``_execute_call`` is the one place that chooses where a call runs: the main
  thread for ``max_concurrency == 1`` (calls then run one after another, in the
  order the kernel started them), else a pool of ``max_concurrency`` threads
  (the kernel starts at most that many calls at once, so none waits for a
  thread). An async actor's calls all go to its event loop thread instead
  (``runtime/async_actor_loop.py``), started once the constructor has run.
  Return values above the inline limit are sealed in the node's store, as a
  task's are; ``ActorTaskExecuted`` goes back to the kernel.

Each call is tracked by the context per thread (``begin_task``/``end_task``):
``get_runtime_context().get_task_id()`` inside a method names that call, and
an interrupt (``InterruptTask``) reaches the thread running it.

A ``BaseException`` other than ``Exception`` (``SystemExit``...) escaping a
call in a pool thread is re-raised in the main thread, where it ends the
worker as it would have from a task (the actor's raylet and the GCS then see
the worker die).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from shoal.kernel.core_worker.actor_protocol import (
    ActorInstanceCreated,
    ActorTaskExecuted,
    CreateActorInstance,
    ExecuteActorTask,
    InterruptActorTask,
)
from shoal.kernel.core_worker.protocol import LocalObject, ObjectError, ObjectResult
from shoal.kernel.gcs.actor_protocol import ActorDeathCause
from shoal.kernel.task_spec import Payload, TaskSpec
from shoal.runtime.api.actor import create_instance, execute_method
from shoal.runtime.api.exceptions import ObjectLostError, ObjectStoreFullError, RaySystemError
from shoal.runtime.async_actor_loop import AsyncActorLoop
from shoal.runtime.driver import ProdWorkerContext

Job = Callable[[], None]
_UNREADABLE = (ObjectLostError, ObjectStoreFullError, RaySystemError)


class ActorRunner:
    """Runs the hosted actor's constructor and calls (see the module docstring).

    Args:
        ctx: The worker's context.
        on_main: Queues a job for the worker's main thread (any thread may call it).
    """

    def __init__(self, ctx: ProdWorkerContext, on_main: Callable[[Job], None]) -> None:
        self._ctx = ctx
        self._on_main = on_main
        self._instance: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._async_loop: AsyncActorLoop | None = None  # an async actor's event loop

    # --- the trio thread: effects of the core worker -------------------------------------

    def on_create(self, effect: CreateActorInstance) -> None:
        # Calls of each concurrency group run beside the default group's (the kernel caps each).
        concurrency = effect.spec.max_concurrency + sum(effect.spec.concurrency_groups.values())
        if concurrency > 1 and self._pool is None:  # before any call can be started
            self._pool = ThreadPoolExecutor(max_workers=concurrency,
                                            thread_name_prefix="shoal-actor")
        self._on_main(lambda: self._create(effect))

    def on_execute(self, effect: ExecuteActorTask) -> None:
        self._execute_call(effect)

    def on_interrupt(self, effect: InterruptActorTask) -> None:
        """Cancels a running call of an async actor (the kernel sends none for others)."""
        if self._async_loop is not None:
            self._async_loop.cancel(effect.task_id)

    def _execute_call(self, effect: ExecuteActorTask) -> None:
        """Where one call runs: the main thread, or a thread of the actor's pool.

        The dispatch point for new kinds of actors (async methods: a coroutine on
        an asyncio loop thread).
        """
        if self._async_loop is not None:  # async actor: a coroutine on its event loop
            self._async_loop.submit(effect)
            return
        pool = self._pool
        if pool is None:
            self._on_main(lambda: self._run_call(effect))
        else:
            pool.submit(self._in_pool, lambda: self._run_call(effect))

    def _in_pool(self, job: Job) -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - the pool would swallow it
            self._on_main(functools.partial(_reraise, exc))

    def shutdown(self) -> None:
        """Stops the pool from taking more calls (the process is ending)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._async_loop is not None:
            self._async_loop.stop()

    # --- user threads ------------------------------------------------------------------

    def _create(self, effect: CreateActorInstance) -> None:
        ctx, spec = self._ctx, effect.spec
        ctx.current_actor_id = spec.actor_id
        ctx.current_actor_restarts = effect.num_restarts
        ctx.job_id = spec.creation.job_id
        ctx.begin_task(spec.creation)
        try:
            try:
                args = self._read_args(effect.args)
            except _UNREADABLE as exc:
                report = ActorInstanceCreated(
                    actor_id=spec.actor_id, num_restarts=effect.num_restarts,
                    error=ActorDeathCause(kind="creation_failed", message=(
                        f"actor {spec.actor_id} ({spec.class_name}) died: an argument of its "
                        f"constructor could not be read from the node's object store: {exc}")))
            else:
                self._instance, report = create_instance(spec, effect.num_restarts, args,
                                                         effect.function, ctx)
                self._async_loop = AsyncActorLoop.for_instance(  # before any call starts
                    ctx, self._instance,
                    lambda exc: self._on_main(functools.partial(_reraise, exc)))
                del args  # the arguments' views of the store: their leases can end
        finally:
            ctx.end_task()
        ctx.post_input(report)

    def _run_call(self, effect: ExecuteActorTask) -> None:
        ctx, spec = self._ctx, effect.spec
        ctx.begin_task(spec)
        returned: list[object] = []  # the return values, alive until the kernel has them
        try:
            try:
                args = self._read_args(effect.args)
            except _UNREADABLE as exc:
                executed = _unreadable(effect, exc)
            else:
                executed = execute_method(self._instance, effect.actor_id, spec, args, ctx,
                                          keep_alive=returned)
                del args
                executed = msgspec.structs.replace(executed, results=tuple(
                    ctx.objects.store_result(r, spec) for r in executed.results))
        finally:
            ctx.end_task()
        ctx.post_input(executed)
        del returned  # refs in the return values: released only after the results

    def _read_args(self, args: tuple[Payload | LocalObject, ...]) -> tuple[Payload, ...]:
        return tuple(self._ctx.objects.read_arg(arg) for arg in args)


def _reraise(exc: BaseException) -> None:
    raise exc


def _unreadable(effect: ExecuteActorTask, exc: BaseException) -> ActorTaskExecuted:
    spec: TaskSpec = effect.spec
    error = ObjectError(kind="object_lost", message=(
        f"actor call {spec.name} ({spec.task_id}): an argument could not be read from the "
        f"node's object store: {exc}"))
    return ActorTaskExecuted(actor_id=effect.actor_id, task_id=spec.task_id,
                             attempt=spec.attempt, results=tuple(
                                 ObjectResult(object_id=oid, error=error)
                                 for oid in spec.return_ids))
