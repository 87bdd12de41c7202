"""A worker process: ``python -m shoal.runtime.worker ...``, started by its node daemon.

Theory of operation
-------------------
Two threads. The background thread runs the worker's ``CoreWorker`` on trio
(``runtime/driver.py``'s ``CoreWorkerRuntime``), connected to the daemon's
socket. The MAIN thread runs user code, never the trio thread: it takes jobs
from a queue, one at a time. An ``ExecuteTask`` effect becomes a job that runs
the task through the API layer's ``executor.execute`` and hands the
``TaskExecuted`` back to the kernel (one crossing into trio per task, batched
with any ref changes).

Actors (``runtime/actor_worker.py``): ``CreateActorInstance`` runs the
constructor as a main-thread job; ``ExecuteActorTask`` runs a call on the main
thread, or on the actor's thread pool for ``max_concurrency > 1``. The actor's
worker is never reused: killing the actor ends the process (the GCS gives its
lease back as failed and the raylet kills it).

Objects (``runtime/process_objects.py``): ``LocalObject`` arguments are read
from the node's shared-memory store zero-copy before the task runs, and return
values above the inline limit (written into the store as they are serialized)
are sealed there as primary copies; the kernel gets them as
``ObjectResult(stored=True, locations=(node,), size)``.

``InterruptTask`` raises ``TaskCancelledError`` in the thread running the task
at its current or next blocking call (``get``/``wait``); with ``force`` the process
exits at once, and its raylet reports it dead to the task's owner.

The worker dies with its daemon: ``PR_SET_PDEATHSIG`` (SIGKILL) and, should
that not fire, the end of its socket connection (``os._exit``).

User modules: the driver's ``sys.path`` comes in ``SHOAL_DRIVER_SYS_PATH``
(JSON) and goes first, in the driver's order, so that functions pickled by
reference (defined in the driver's modules) load here as they did there.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import signal
import sys
from collections.abc import Callable

import msgspec
import structlog
from shoal.kernel.core_worker.actor_protocol import (
    CreateActorInstance,
    ExecuteActorTask,
    InterruptActorTask,
)
from shoal.kernel.core_worker.protocol import (
    ExecuteTask,
    InterruptTask,
    ObjectError,
    ObjectResult,
    TaskExecuted,
)
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg
from shoal.runtime.actor_worker import ActorRunner
from shoal.runtime.api.context import set_global_context
from shoal.runtime.api.exceptions import (
    ObjectLostError,
    ObjectStoreFullError,
    RaySystemError,
    TaskCancelledError,
)
from shoal.runtime.api.executor import execute
from shoal.runtime.driver import CoreWorkerRuntime, ProdWorkerContext
from shoal.runtime.kernel_host import configure_logging
from shoal.runtime.output_forwarding import WorkerOutputForwarder, install_in_worker
from shoal.runtime.processes import set_parent_death_signal

DRIVER_SYS_PATH_ENV = "SHOAL_DRIVER_SYS_PATH"


class WorkerHost:
    """The host of one worker process (see the module docstring)."""

    def __init__(self, *, socket_path: str, token: str, address: Address) -> None:
        self.address = address
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._log = structlog.get_logger("shoal.runtime.worker").bind(address=str(address))
        self.runtime = CoreWorkerRuntime(socket_path=socket_path, token=token, address=address,
                                         on_effect=self._on_effect, on_lost=self._on_lost)
        self.ctx = ProdWorkerContext(self.runtime, job_id="")
        self.actor = ActorRunner(self.ctx, self._jobs.put)

    def run(self) -> int:
        """Connects, then runs jobs on the calling (main) thread until told to stop."""
        self.runtime.start()
        set_global_context(self.ctx)
        ctx = self.ctx
        install_in_worker(WorkerOutputForwarder(
            self.address, current_task=lambda: ctx.current_task,
            in_actor=lambda: ctx.current_actor_id is not None, kv_call=ctx.kv_call,
            send=self.runtime.send_host))
        try:
            while (job := self._jobs.get()) is not None:
                job()
        finally:
            self.actor.shutdown()
        self.runtime.stop()
        return 0

    def _execute(self, item: ExecuteTask) -> None:
        ctx = self.ctx
        early = ctx.begin_task(item.spec)  # cancelled before it began: not run, cancelled
        returned: list[object] = []  # the return values, alive until the kernel has them
        ctx.job_id = item.spec.job_id
        try:
            try:
                args = tuple(ctx.objects.read_arg(arg) for arg in item.args)
            except (ObjectLostError, ObjectStoreFullError, RaySystemError) as exc:
                executed = _unreadable(item, exc)
            else:
                target = functools.partial(_raise, early) if early is not None else None
                executed = execute(item.spec, args, item.function, ctx, target=target,
                                   keep_alive=returned)
                del args  # the arguments' views of the store: their leases can end
                executed = msgspec.structs.replace(executed, results=tuple(
                    ctx.objects.store_result(r, item.spec) for r in executed.results))
        finally:
            ctx.end_task()
        ctx.post_input(executed)
        del returned  # refs in the return values: released only after the results

    # --- the trio thread -------------------------------------------------------

    def _on_effect(self, effect: Msg) -> None:
        match effect:
            case ExecuteTask():
                self.ctx.expect_task(effect.spec.task_id)  # an interrupt may come before it begins
                self._jobs.put(lambda: self._execute(effect))
            case CreateActorInstance():
                self.actor.on_create(effect)
            case ExecuteActorTask():
                self.actor.on_execute(effect)
            case InterruptActorTask():  # a running call of an async actor cancelled
                self.actor.on_interrupt(effect)
            case InterruptTask(force=True):
                self._log.warning("worker.force_cancelled", task=effect.task_id)
                os._exit(1)
            case InterruptTask():
                self.ctx.interrupt_task(effect.task_id, TaskCancelledError(
                    effect.task_id, f"task {effect.task_id} was cancelled while it ran"))
            case _:
                self.ctx.on_caller_effect(effect)  # answers to calls, refused actor calls

    def _on_lost(self, reason: str) -> None:
        self._log.warning("worker.daemon_lost", reason=reason)
        os._exit(1)  # a worker without its daemon has nothing left to do


def _raise(error: BaseException, *args: object, **kwargs: object) -> None:
    raise error


def _unreadable(item: ExecuteTask, exc: BaseException) -> TaskExecuted:
    error = ObjectError(kind="object_lost", message=(
        f"task {item.spec.name} ({item.spec.task_id}): an argument could not be read from "
        f"the node's object store: {exc}"))
    return TaskExecuted(task_id=item.spec.task_id, attempt=item.spec.attempt, results=tuple(
        ObjectResult(object_id=oid, error=error) for oid in item.spec.return_ids))


def _extend_sys_path() -> None:
    """Puts the driver's ``sys.path`` first, in its order, so imports resolve as there."""
    raw = os.environ.get(DRIVER_SYS_PATH_ENV, "")
    if not raw:
        return
    try:
        entries = [e for e in json.loads(raw) if isinstance(e, str) and e]
    except (ValueError, TypeError):
        return
    first = list(dict.fromkeys(entries))
    sys.path[:] = first + [p for p in sys.path if p not in first]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shoal.runtime.worker")
    p.add_argument("--socket", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--session-dir", default="")
    p.add_argument("--parent-pid", type=int, default=0)
    args = p.parse_args(argv)
    set_parent_death_signal(signal.SIGKILL, expected_parent=args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when workers stop
    configure_logging(level=os.environ.get("SHOAL_LOG_LEVEL", "WARNING"))
    _extend_sys_path()
    with open(args.token_file, encoding="ascii") as f:
        token = f.read().strip()
    address = Address(node=NodeId(args.node_id), component="worker", worker=args.worker_id)
    return WorkerHost(socket_path=args.socket, token=token, address=address).run()


if __name__ == "__main__":
    sys.exit(main())
