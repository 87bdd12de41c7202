"""The simulator's host side of actors: instances in worker processes, calls in threads.

``SimActorHost`` carries out the actor effects of core workers:

* ``CreateActorInstance``: the constructor runs in a baton thread of the
  worker process; the instance is kept for the process's life (a crash drops
  it) and ``ActorInstanceCreated`` goes back to the kernel.
* ``ExecuteActorTask``: each call runs in a baton thread of the actor's
  process: an idle one of the process's *runners* (threads that loop taking
  calls, so a call does not pay for a new thread), or a new runner. The kernel
  starts at most ``max_concurrency`` calls at once, so that many runners may
  interleave at their blocking calls. ``ActorTaskExecuted`` goes back; returns
  above the inline limit go to the node's store, as for tasks.
* Async actors (a class with ``async def`` methods): each process hosting one
  runs a ``SimEventLoop`` (``sim/async_loop.py``: asyncio on virtual time) in
  one baton thread, and each call is an asyncio task of that loop running
  ``actor.execute_method_async``; calls interleave at their ``await``s (an
  ``await ref`` gets its object through ``get_objects_future`` without blocking
  the loop), up to the ``max_concurrency`` the kernel allows. When the process
  dies the loop's thread unwinds and closes the coroutines still running, in
  the order they started, so their ``finally`` blocks run deterministically.
  ``InterruptActorTask`` (a running call cancelled) cancels the call's asyncio
  task: ``CancelledError`` at its current ``await``.
* ``ActorRequestCompleted``/``ActorCallRefused``: wake (or fail) the user
  thread waiting on a creation, lookup or kill, or refuse a call at once.

``ActorContextMixin`` gives ``SimWorkerContext`` the actor half of the
``WorkerContext`` interface (see ``runtime/api/context.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from shoal.kernel.core_worker.actor_protocol import (
    ActorCallRefused,
    ActorCallSubmitted,
    ActorCreationRequested,
    ActorKillRequested,
    ActorLookupRequested,
    ActorRequestCompleted,
    CreateActorInstance,
    ExecuteActorTask,
    InterruptActorTask,
)
from shoal.kernel.gcs.actor_protocol import ActorSpec
from shoal.kernel.ids import ActorId, TaskId
from shoal.kernel.messages import Address, Msg
from shoal.kernel.task_spec import TaskSpec
from shoal.sim.async_loop import SimEventLoop
from shoal.sim.baton import SimFuture

if TYPE_CHECKING:
    from shoal.sim.engine import SimProcess
    from shoal.sim.task_host import TaskHost


@dataclass(slots=True, eq=False)
class _Runner:
    """A baton thread of an actor's process that runs one call after another."""

    wake: SimFuture = field(default_factory=SimFuture)
    job: Callable[[], None] | None = None


@dataclass(slots=True, eq=False)
class _AsyncActor:
    """The event loop of an async actor's process and the calls running on it."""

    loop: SimEventLoop
    calls: dict[TaskId, asyncio.Task[None]] = field(default_factory=dict)

    def start(self, task_id: TaskId, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Starts a call on the loop (from the event loop's engine side, or any thread)."""
        def create() -> None:
            task = self.loop.create_task(call())
            self.calls[task_id] = task
            task.add_done_callback(lambda _: self.calls.pop(task_id, None))
        self.loop.call_soon_threadsafe(create)

    def cancel(self, task_id: TaskId) -> None:
        """Cancels the call's asyncio task, if it still runs (from the engine's side)."""
        task = self.calls.get(task_id)
        if task is not None:
            self.loop.call_soon_threadsafe(task.cancel)

    def run(self) -> None:
        """The body of the loop's baton thread: runs until the process dies."""
        try:
            self.loop.run_forever()
        finally:
            self._close_calls()

    def _close_calls(self) -> None:
        # The process died: unwind the suspended calls now, in start order (garbage
        # collection would do it later, at a moment that differs between runs).
        self.loop.set_exception_handler(lambda loop, context: None)  # no "destroyed" noise
        for task in list(self.calls.values()):
            try:
                task.get_coro().close()
            except BaseException:  # noqa: BLE001, S110 - a finally that blocks or raises
                pass
        self.calls.clear()
        self.loop.close()


class SimActorHost:
    """Actor instances of the simulated worker processes, and their effect handlers."""

    def __init__(self, host: TaskHost) -> None:
        self._host = host
        self.instances: dict[Address, Any] = {}
        self._idle: dict[Address, list[_Runner]] = {}
        self._async: dict[Address, _AsyncActor] = {}
        self.calls_executed = 0
        handlers = host.engine.effect_handlers
        handlers[CreateActorInstance] = self._on_create
        handlers[ExecuteActorTask] = self._on_execute
        handlers[InterruptActorTask] = self._on_interrupt
        handlers[ActorRequestCompleted] = self._on_request_completed
        handlers[ActorCallRefused] = self._on_refused
        host.engine.crash_hooks.append(self._on_crash)

    def _on_crash(self, address: Address) -> None:
        self.instances.pop(address, None)
        self._idle.pop(address, None)  # its runner threads were unwound with the process
        self._async.pop(address, None)  # and its loop's thread, which closed the calls

    def _on_create(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, CreateActorInstance)
        host, address, boot = self._host, proc.address, proc.boot
        context = host.context(address)
        spec = effect.spec

        def run() -> None:
            from shoal.runtime.api.actor import create_instance

            context.current_actor_id = spec.actor_id
            context.current_actor_restarts = effect.num_restarts
            context.current_task = spec.creation
            try:
                args = tuple(host._arg_payload(address.node, a) for a in effect.args)
                instance, report = create_instance(spec, effect.num_restarts, args,
                                                   effect.function, context)
            finally:
                context.current_task = None
            context.flush_refs()
            if proc.boot == boot:
                self.instances[address] = instance
                host.engine.inject(address, report)

        host.spawn(address, run, name=f"{address}:{spec.class_name}.__init__")

    def _on_execute(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, ExecuteActorTask)
        from shoal.runtime.api.actor import is_async_class

        instance = self.instances.get(address := proc.address)
        if instance is not None and is_async_class(type(instance)):
            self._execute_async(proc, effect, instance)
            return
        host, boot = self._host, proc.boot
        context = host.context(address)
        spec = effect.spec

        def run() -> None:
            from shoal.runtime.api.actor import execute_method

            args = tuple(host._arg_payload(address.node, a) for a in effect.args)
            returned: list[Any] = []  # alive until the kernel has the results
            executed = execute_method(instance, effect.actor_id, spec, args, context,
                                      keep_alive=returned)
            self._report(proc, boot, executed)
            del returned
            context.flush_refs()  # this runner lives on: release the returns' refs now

        idle = self._idle.setdefault(address, [])
        if idle:
            runner = idle.pop()
            runner.job = run
            self._host.baton.resolve(runner.wake)
        else:
            runner = _Runner(job=run)
            host.spawn(address, lambda: self._runner_loop(address, runner),
                       name=f"{address}:runner")

    def _execute_async(self, proc: SimProcess, effect: ExecuteActorTask, instance: Any) -> None:
        host, address, boot = self._host, proc.address, proc.boot
        context = host.context(address)
        actor = self._async.get(address)
        if actor is None:
            actor = self._async[address] = _AsyncActor(SimEventLoop(host.baton))
            host.spawn(address, actor.run, name=f"{address}:event-loop")

        async def call() -> None:
            from shoal.runtime.api.actor import execute_method_async

            args = tuple(host._arg_payload(address.node, a) for a in effect.args)
            returned: list[Any] = []  # alive until the kernel has the results
            executed = await execute_method_async(instance, effect.actor_id, effect.spec, args,
                                                  context, keep_alive=returned)
            self._report(proc, boot, executed)
            del returned
            context.flush_refs()

        actor.start(effect.spec.task_id, call)

    def _on_interrupt(self, proc: SimProcess, effect: Msg) -> None:
        """Cancels a running call of an async actor (``shoal.cancel``): ``CancelledError``
        at its current ``await``; it then reports ``task_cancelled`` (or its value)."""
        assert isinstance(effect, InterruptActorTask)
        actor = self._async.get(proc.address)
        if actor is not None:
            actor.cancel(effect.task_id)

    def _report(self, proc: SimProcess, boot: int, executed: Any) -> None:
        """A call finished: store large returns, and tell the kernel (same incarnation)."""
        host, address = self._host, proc.address
        executed = msgspec.structs.replace(executed, results=tuple(
            host._store_large(address.node, r) for r in executed.results))
        host.context(address).flush_refs()
        self.calls_executed += 1
        if proc.boot == boot:
            host.engine.inject(address, executed)

    def _runner_loop(self, address: Address, runner: _Runner) -> None:
        baton = self._host.baton
        while True:
            job, runner.job = runner.job, None
            if job is not None:
                job()
            runner.wake = SimFuture()
            self._idle.setdefault(address, []).append(runner)
            baton.block(runner.wake)

    def _on_request_completed(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, ActorRequestCompleted)
        context = self._host.context(proc.address)
        future = context._calls.pop(effect.call_id, None)
        if future is not None:
            self._host.baton.resolve(future, value=effect)

    def _on_refused(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, ActorCallRefused)
        self._host.context(proc.address).refused[effect.task_id] = effect.message


class ActorContextMixin:
    """The actor methods of ``SimWorkerContext`` (user threads hold the baton)."""

    current_actor_id: ActorId | None
    current_actor_restarts: int
    refused: dict[TaskId, str]

    def create_actor(self, spec: ActorSpec, function: bytes,
                     get_if_exists: bool) -> ActorRequestCompleted:
        """Registers a new actor this process owns; blocks until the GCS answered."""
        call_id, future = self._new_call()  # type: ignore[attr-defined]
        self._inject(ActorCreationRequested(  # type: ignore[attr-defined]
            call_id=call_id, spec=spec, function=function, get_if_exists=get_if_exists))
        done: ActorRequestCompleted = self.baton.block(future)  # type: ignore[attr-defined]
        return done

    def submit_actor_task(self, actor_id: ActorId, spec: TaskSpec, max_task_retries: int,
                          max_pending_calls: int) -> None:
        """Submits a call; raises ``PendingCallsLimitExceeded`` if the kernel refused it."""
        self._inject(ActorCallSubmitted(  # type: ignore[attr-defined]
            actor_id=actor_id, spec=spec, max_task_retries=max_task_retries,
            max_pending_calls=max_pending_calls))
        message = self.refused.pop(spec.task_id, None)
        if message is not None:
            from shoal.runtime.api.exceptions import PendingCallsLimitExceeded

            raise PendingCallsLimitExceeded(message)

    def get_named_actor(self, name: str, namespace: str) -> ActorRequestCompleted:
        call_id, future = self._new_call()  # type: ignore[attr-defined]
        self._inject(ActorLookupRequested(  # type: ignore[attr-defined]
            call_id=call_id, name=name, namespace=namespace))
        done: ActorRequestCompleted = self.baton.block(future)  # type: ignore[attr-defined]
        return done

    def kill_actor(self, actor_id: ActorId, no_restart: bool) -> None:
        call_id, future = self._new_call()  # type: ignore[attr-defined]
        self._inject(ActorKillRequested(  # type: ignore[attr-defined]
            call_id=call_id, actor_id=actor_id, no_restart=no_restart))
        self.baton.block(future)  # type: ignore[attr-defined]
