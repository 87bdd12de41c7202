"""The simulator's host for core workers: worker processes, task threads, API contexts.

This module is the simulated counterpart of the production worker host. It
carries out the effects of raylets and core workers that concern processes
and user code:

* ``StartWorker``/``KillWorker`` (raylet): a worker process (a ``CoreWorker``
  kernel) starts after ``worker_start_ns``; a killed or crashed worker's user
  threads are unwound and its raylet is told ``WorkerExited``. A crashed raylet
  takes its workers down with it. A crashed driver's raylet is told
  ``DriverExited`` (its job ends); ``start_driver`` adds more drivers.
* ``ExecuteTask`` (core worker): the task's user code runs in a new baton
  thread, through the host-agnostic executor of the API layer; its outcome is
  fed back as ``TaskExecuted``. ``InterruptTask`` raises ``TaskCancelledError``
  at the task's next blocking call (or kills the worker when forced).
* ``GetCompleted``/``WaitCompleted``/``CallCompleted``: wake the user thread
  that waits for them, or complete the future of a ``get_objects_future``.

``SimWorkerContext`` is the ``WorkerContext`` of one simulated process: what
``shoal.remote``, ``shoal.get`` and friends call. User threads hold the baton
while they call it, so it hands inputs to its kernel synchronously.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shoal.kernel.buggify import Buggify
from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.core_worker import host_config
from shoal.kernel.core_worker.protocol import (
    CancelRequested,
    LocalObject,
    ExecuteTask,
    GetCompleted,
    GetRequested,
    InterruptTask,
    ObjectPut,
    ObjectResult,
    RefsChanged,
    TaskExecuted,
    TaskSubmitted,
    WaitCompleted,
    WaitRequested,
)
from shoal.kernel.gcs_client import CallCompleted, KvCallRequested
from shoal.kernel.ids import NANOS_PER_MILLI, ActorId, NodeId, ObjectId, TaskId, WorkerId
from shoal.kernel.messages import Address, Msg
from shoal.kernel.raylet.object_protocol import (
    DeleteObject,
    ObjectChunk,
    ObjectMissing,
    SendObjectChunks,
    WriteObjectChunk,
)
from shoal.kernel.raylet.protocol import DriverExited, KillWorker, StartWorker, WorkerExited
from shoal.kernel.task_spec import (
    INLINE_BYTES_MAX,
    ObjectRefInfo,
    Payload,
    TaskSpec,
    producing_task,
)
from shoal.sim.actor_host import ActorContextMixin, SimActorHost  # actors (issue #4)
from shoal.sim.pg_host import PlacementGroupContextMixin  # placement groups
from shoal.sim.stream_host import StreamContextMixin  # streaming generators (issue 5)
from shoal.kernel.core_worker.stream_protocol import StreamNextCompleted
from shoal.sim.baton import Baton, SimFuture, UserThread
from shoal.sim.engine import SimProcess, Store
from shoal.sim.harness import ClusterSim

WORKER_START_NS = 10 * NANOS_PER_MILLI
JOB_ID = "job1"


@dataclass(slots=True, eq=False)
class _ProcessState:
    address: Address
    context: SimWorkerContext
    threads: dict[UserThread, None] = field(default_factory=dict)
    running: dict[TaskId, UserThread] = field(default_factory=dict)


class TaskHost:
    """Drives worker processes and user code of a simulated cluster."""

    def __init__(self, sim: ClusterSim, baton: Baton, gcs: Address) -> None:
        self.sim = sim
        self.engine = sim.engine
        self.baton = baton
        self.gcs = gcs
        self._states: dict[Address, _ProcessState] = {}
        handlers = self.engine.effect_handlers
        handlers[StartWorker] = self._on_start_worker
        handlers[KillWorker] = self._on_kill_worker
        handlers[ExecuteTask] = self._on_execute
        handlers[InterruptTask] = self._on_interrupt
        handlers[SendObjectChunks] = self._on_send_chunks
        handlers[WriteObjectChunk] = self._on_write_chunk
        handlers[DeleteObject] = self._on_delete_object
        handlers[GetCompleted] = self._on_completed
        handlers[WaitCompleted] = self._on_completed
        handlers[CallCompleted] = self._on_completed
        handlers[StreamNextCompleted] = self._on_completed  # streaming generators (issue 5)
        self._thread_states: dict[UserThread, _ProcessState] = {}
        # Each node's object store: the bytes of values above the inline limit.
        self.stores: dict[NodeId, dict[ObjectId, bytes]] = {}
        self._partial: dict[tuple[NodeId, ObjectId], bytearray] = {}
        self.engine.crash_hooks.append(self._on_crash)
        baton.before_block.append(self._flush_refs_of)
        baton.on_finished.append(self._forget_thread)
        self.actors = SimActorHost(self)  # actors (issue #4): instances, calls, answers

    # --- processes ---------------------------------------------------------

    def add_core_worker(self, address: Address) -> SimProcess:
        raylet = Address(node=address.node, component="raylet")

        def build(boot: int, store: Store, buggify: Buggify) -> CoreWorker:
            return CoreWorker(address, raylet=raylet, gcs=self.gcs, config=host_config())

        proc = self.sim.add_process(address, build)
        proc.restartable = address.component != "worker"  # its raylet starts new ones
        self._states[address] = _ProcessState(address, SimWorkerContext(self, address))
        return proc

    def context(self, address: Address) -> SimWorkerContext:
        return self._states[address].context

    def kernel(self, address: Address) -> CoreWorker | None:
        proc = self.engine.processes.get(address)
        kernel = proc.kernel if proc is not None else None
        return kernel if isinstance(kernel, CoreWorker) else None

    def core_workers(self) -> list[tuple[Address, CoreWorker]]:
        out = []
        for address in self._states:
            kernel = self.kernel(address)
            if kernel is not None:
                out.append((address, kernel))
        return out

    def kill_worker_running(self, object_id: ObjectId) -> bool:
        """Crashes the worker executing the task that returns ``object_id`` (tests, chaos)."""
        task_id = producing_task(object_id)
        for address, core in self.core_workers():
            current = core.executor.current_task
            if address.component == "worker" and current is not None and current.task_id == task_id:
                self.engine.call_at(self.engine.now, lambda a=address: self.engine.crash(a))
                return True
        return False

    def start_driver(self, address: Address, fn: Any) -> UserThread:
        """Starts another driver process at ``address`` running ``fn`` (tests: a second job).

        It is not restarted after a crash: a driver that died ended its job for good."""
        proc = self.add_core_worker(address)
        proc.restartable = False
        self.engine.start(address)
        return self.spawn(address, fn, name=f"driver {address.worker}")

    def _on_start_worker(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, StartWorker)
        address = Address(node=proc.address.node, component="worker", worker=effect.worker_id)
        if address not in self._states:
            self.add_core_worker(address)
        self.engine.call_at(self.engine.now + WORKER_START_NS, lambda: self.engine.start(address))

    def _on_kill_worker(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, KillWorker)
        address = Address(node=proc.address.node, component="worker", worker=effect.worker_id)
        self.engine.call_at(self.engine.now, lambda: self.engine.crash(address))

    def _on_crash(self, address: Address) -> None:
        """A process died: unwind its user threads, tell its raylet, take children down."""
        state = self._states.get(address)
        if state is not None:
            for thread in list(state.threads):
                self.baton.kill(thread)
                self._thread_states.pop(thread, None)
            state.threads.clear()
            state.running.clear()
            state.context.reset()
        if address.component == "worker":
            raylet = Address(node=address.node, component="raylet")
            exited = WorkerExited(worker_id=WorkerId(address.worker), cause="worker process died")
            self.engine.call_at(self.engine.now + NANOS_PER_MILLI,
                                lambda: self.engine.inject(raylet, exited))
        elif address.component == "driver":
            raylet = Address(node=address.node, component="raylet")
            gone = DriverExited(driver=address, cause="driver process died")
            self.engine.call_at(self.engine.now + NANOS_PER_MILLI,
                                lambda: self.engine.inject(raylet, gone))
        elif address.component == "raylet":
            # The store lives in the raylet's process: its objects die with it.
            self.stores.pop(address.node, None)
            for key in [k for k in self._partial if k[0] == address.node]:
                del self._partial[key]
            for other, proc in self.engine.processes.items():
                if other.node == address.node and other.component == "worker" and proc.alive:
                    self.engine.crash(other)

    # --- the node object stores ------------------------------------------------

    def store_put(self, node: NodeId, object_id: ObjectId, data: bytes) -> None:
        self.stores.setdefault(node, {})[object_id] = data

    def store_read(self, node: NodeId, object_id: ObjectId) -> bytes:
        data = self.stores.get(node, {}).get(object_id)
        if data is None:
            from shoal.runtime.api.exceptions import ObjectLostError

            raise ObjectLostError(
                f"object {object_id} is not in the object store of node {node} any more")
        return data

    def _on_send_chunks(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, SendObjectChunks)
        data = self.stores.get(proc.address.node, {}).get(effect.object_id)
        if data is None:
            self.engine.send(proc.address, effect.dst, ObjectMissing(object_id=effect.object_id))
            return
        step = effect.chunk_bytes
        count = max(1, -(-len(data) // step))
        for index in effect.chunks:
            if index < count:
                chunk = ObjectChunk(object_id=effect.object_id, index=index, chunk_count=count,
                                    size=len(data), data=data[index * step:(index + 1) * step])
                self.engine.send(proc.address, effect.dst, chunk)

    def _on_write_chunk(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, WriteObjectChunk)
        key = (proc.address.node, effect.object_id)
        buffer = self._partial.get(key)
        if buffer is None:
            buffer = self._partial[key] = bytearray(effect.total_size)
        buffer[effect.offset:effect.offset + len(effect.data)] = effect.data
        raylet = proc.kernel
        if raylet is not None and raylet.objects.is_local(effect.object_id):  # type: ignore[attr-defined]
            self.store_put(proc.address.node, effect.object_id, bytes(self._partial.pop(key)))

    def _on_delete_object(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, DeleteObject)
        self.stores.get(proc.address.node, {}).pop(effect.object_id, None)
        self._partial.pop((proc.address.node, effect.object_id), None)

    def _store_large(self, node: NodeId, result: ObjectResult) -> ObjectResult:
        """A return value above the inline limit goes to this node's store."""
        value = result.value
        if value is None or len(value.data) <= INLINE_BYTES_MAX:
            return result
        self.store_put(node, result.object_id, value.data)
        return ObjectResult(object_id=result.object_id, value=Payload(data=b"", contained=value.contained),
                            stored=True, locations=(node,), size=len(value.data))

    def _read_stored(self, node: NodeId, result: ObjectResult) -> ObjectResult:
        if not result.stored or result.error is not None:
            return result
        contained = result.value.contained if result.value is not None else ()
        data = self.store_read(node, result.object_id)
        return ObjectResult(object_id=result.object_id, value=Payload(data=data, contained=contained))

    # --- user code -----------------------------------------------------------

    def spawn(self, address: Address, fn: Any, name: str, task_id: TaskId | None = None) -> UserThread:
        state = self._states[address]

        def body() -> Any:
            from shoal.runtime.api.context import bind_thread_context
            from shoal.sim import api

            bind_thread_context(state.context)
            api._bind(state.context)
            try:
                return fn()
            finally:
                state.context.flush_refs()

        thread = self.baton.spawn(body, name=name)
        state.threads[thread] = None
        self._thread_states[thread] = state
        if task_id is not None:
            state.running[task_id] = thread
        return thread

    def _on_execute(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, ExecuteTask)
        address, boot = proc.address, proc.boot
        state = self._states[address]
        spec = effect.spec

        def run() -> None:
            from shoal.runtime.api.executor import execute

            state.context.current_task = spec
            try:
                args = tuple(self._arg_payload(address.node, a) for a in effect.args)
                returned: list[Any] = []  # alive until the kernel has the results
                executed = execute(spec, args, effect.function, state.context,
                                   keep_alive=returned)
            finally:
                state.context.current_task = None
            executed = msgspec.structs.replace(executed, results=tuple(
                self._store_large(address.node, r) for r in executed.results))
            state.context.flush_refs()
            state.running.pop(spec.task_id, None)
            if proc.boot == boot:
                self.engine.inject(address, executed)
            del returned  # released after the results (flushed when the thread ends)

        self.spawn(address, run, name=f"{address}:{spec.name}", task_id=spec.task_id)

    def _arg_payload(self, node: NodeId, arg: Payload | LocalObject) -> Payload:
        if isinstance(arg, LocalObject):
            return Payload(data=self.store_read(node, arg.object_id), contained=arg.contained)
        return arg

    def _on_interrupt(self, proc: SimProcess, effect: Msg) -> None:
        assert isinstance(effect, InterruptTask)
        if effect.force:
            self.engine.call_at(self.engine.now, lambda: self.engine.crash(proc.address))
            return
        thread = self._states[proc.address].running.get(effect.task_id)
        if thread is not None:
            from shoal.runtime.api.exceptions import TaskCancelledError

            self.baton.interrupt(thread, TaskCancelledError(
                f"task {effect.task_id} was cancelled while it ran"))

    def _on_completed(self, proc: SimProcess, effect: Msg) -> None:
        state = self._states.get(proc.address)
        if state is not None:
            state.context.complete(effect)

    def _flush_refs_of(self, thread: UserThread) -> None:
        state = self._thread_states.get(thread)
        if state is not None:
            state.context.flush_refs()

    def _forget_thread(self, thread: UserThread) -> None:
        state = self._thread_states.pop(thread, None)
        if state is not None:
            state.threads.pop(thread, None)


class SimWorkerContext(ActorContextMixin, PlacementGroupContextMixin, StreamContextMixin):
    """The ``WorkerContext`` of one simulated process (driver or worker)."""

    def __init__(self, host: TaskHost, address: Address) -> None:
        self._host = host
        self.address = address
        self.node_id = NodeId(address.node)
        self.job_id = JOB_ID
        self.current_task: TaskSpec | None = None
        self.current_actor_id: ActorId | None = None
        self.current_actor_restarts = 0  # actors (issue #4)
        self.refused: dict[TaskId, str] = {}  # actor calls refused as submitted (issue #4)
        self._next_task = 1
        self._next_object = 1
        self._next_call = 1
        self._calls: dict[int, SimFuture] = {}
        self._object_futures: dict[int, Future[Callable[[], list[ObjectResult]]]] = {}
        self._ref_deltas: dict[ObjectRefInfo, int] = {}

    @property
    def current_task_id(self) -> TaskId | None:
        return self.current_task.task_id if self.current_task else None

    def reset(self) -> None:
        self._calls.clear()
        self._object_futures.clear()
        self._ref_deltas.clear()

    # --- ids ---------------------------------------------------------------

    def _prefix(self) -> str:
        proc = self._host.engine.processes[self.address]
        who = self.address.worker or self.address.component
        return f"{self.address.node}.{who}.b{proc.boot}"

    def next_task_id(self) -> TaskId:
        task_id = TaskId(f"{self._prefix()}.t{self._next_task}")
        self._next_task += 1
        return task_id

    def next_object_id(self) -> ObjectId:
        object_id = ObjectId(f"{self._prefix()}.p{self._next_object}")
        self._next_object += 1
        return object_id

    # --- inputs to the kernel ------------------------------------------------

    def _inject(self, event: Msg) -> None:
        self.flush_refs()
        self._host.engine.inject(self.address, event)

    def submit_task(self, spec: TaskSpec, function: bytes) -> None:
        self._inject(TaskSubmitted(spec=spec, function=function))

    def put_object(self, object_id: ObjectId, payload: Payload) -> None:
        if len(payload.data) <= INLINE_BYTES_MAX:
            self._inject(ObjectPut(object_id=object_id, value=payload))
            return
        self._host.store_put(self.node_id, object_id, payload.data)
        self._inject(ObjectPut(object_id=object_id, value=Payload(data=b"", contained=payload.contained),
                               stored=True, size=len(payload.data)))

    def get_objects(self, refs: list[ObjectRefInfo], timeout_s: float | None) -> list[ObjectResult]:
        call_id, future = self._new_call()
        timeout_ns = None if timeout_s is None else max(0, int(timeout_s * 1e9))
        self._inject(GetRequested(call_id=call_id, refs=tuple(refs), timeout_ns=timeout_ns))
        return list(self._host.baton.block(future))

    def get_objects_future(self, refs: list[ObjectRefInfo], timeout_s: float | None,
                           ) -> Future[Callable[[], list[ObjectResult]]]:
        """``await ref``/``ref.future()`` (issue #5): on an async actor's simulated event
        loop the future completes when the kernel answers, and the loop runs other calls
        meanwhile; anywhere else this blocks like ``get_objects`` and returns it done."""
        future: Future[Callable[[], list[ObjectResult]]] = _BatonFuture(self._host.baton)
        if not _on_sim_loop():
            results = self.get_objects(refs, timeout_s)
            future.set_result(lambda: results)
            return future
        call_id = self._next_call
        self._next_call += 1
        self._object_futures[call_id] = future
        timeout_ns = None if timeout_s is None else max(0, int(timeout_s * 1e9))
        self._inject(GetRequested(call_id=call_id, refs=tuple(refs), timeout_ns=timeout_ns))
        return future

    def wait_objects(self, refs: list[ObjectRefInfo], num_returns: int, timeout_s: float | None,
                     fetch_local: bool) -> list[ObjectId]:
        call_id, future = self._new_call()
        timeout_ns = None if timeout_s is None else max(0, int(timeout_s * 1e9))
        self._inject(WaitRequested(call_id=call_id, refs=tuple(refs), num_returns=num_returns,
                                   timeout_ns=timeout_ns, fetch_local=fetch_local))
        return list(self._host.baton.block(future))

    def cancel_task(self, ref: ObjectRefInfo, force: bool, recursive: bool) -> None:
        self._inject(CancelRequested(object_id=ref.object_id, force=force, recursive=recursive))

    def ref_added(self, ref: ObjectRefInfo) -> None:
        self._ref_deltas[ref] = self._ref_deltas.get(ref, 0) + 1

    def ref_removed(self, ref: ObjectRefInfo) -> None:
        self._ref_deltas[ref] = self._ref_deltas.get(ref, 0) - 1

    def flush_refs(self) -> None:
        if not self._ref_deltas:
            return
        deltas = tuple((ref, delta) for ref, delta in self._ref_deltas.items() if delta)
        self._ref_deltas.clear()
        if deltas and self._host.kernel(self.address) is not None:
            self._host.engine.inject(self.address, RefsChanged(deltas=deltas))

    @property
    def engine(self) -> Any:
        return self._host.engine

    @property
    def host(self) -> TaskHost:
        return self._host

    @property
    def baton(self) -> Baton:
        return self._host.baton

    def kv_call(self, request: Any) -> Any:
        """Sends one internal-KV request through this process's GCS client; blocks."""
        call_id, future = self._new_call()
        self._inject(KvCallRequested(call_id=call_id, request=request))
        return self._host.baton.block(future)

    def _new_call(self) -> tuple[int, SimFuture]:
        call_id = self._next_call
        self._next_call += 1
        future = self._calls[call_id] = SimFuture()
        return call_id, future

    def complete(self, effect: Msg) -> None:
        call_id = getattr(effect, "call_id", -1)
        waiting = self._object_futures.pop(call_id, None)
        if waiting is not None and isinstance(effect, GetCompleted):
            self._complete_object_future(waiting, effect)
            return
        future = self._calls.pop(call_id, None)
        if future is None:
            return
        if isinstance(effect, GetCompleted):
            try:
                results = [self._host._read_stored(self.node_id, r) for r in effect.results]
            except Exception as error:  # noqa: BLE001 - a copy vanished: the get fails with it
                self._host.baton.resolve(future, error=error)
                return
            self._host.baton.resolve(future, value=results)
        elif isinstance(effect, WaitCompleted):
            self._host.baton.resolve(future, value=effect.ready)
        elif isinstance(effect, StreamNextCompleted):  # streaming generators (issue 5)
            if not self.give_back_abandoned(effect):
                self._host.baton.resolve(future, value=effect)
        elif isinstance(effect, CallCompleted):
            if effect.error:
                self._host.baton.resolve(future, error=ValueError(effect.error))
            else:
                self._host.baton.resolve(future, value=effect.value)

    def _complete_object_future(self, future: Future[Callable[[], list[ObjectResult]]],
                                effect: GetCompleted) -> None:
        if not future.set_running_or_notify_cancel():
            return  # its awaiting task was cancelled
        try:
            results = [self._host._read_stored(self.node_id, r) for r in effect.results]
        except Exception as error:  # noqa: BLE001 - a copy vanished: the await fails with it
            future.set_exception(error)
            return
        future.set_result(lambda: results)  # wakes the loop through call_soon_threadsafe

    # --- cluster information -------------------------------------------------

    def _view(self) -> list[Any]:
        kernel = self._host.kernel(self.address)
        return kernel.gcs_client.nodes if kernel is not None else []

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": n.node_id, "Alive": n.state == "alive", "Resources": dict(n.resources),
                 "Incarnation": n.incarnation} for n in self._view()]

    def cluster_resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for node in self._view():
            if node.state == "alive":
                for name, amount in node.resources.items():
                    total[name] = total.get(name, 0.0) + amount
        return total

    def available_resources(self) -> dict[str, float]:
        from shoal.runtime.api.resource_view import available_resources_via

        return available_resources_via(self.kv_call)


class _BatonFuture(Future):  # type: ignore[type-arg]
    """A future the engine completes; waiting on it from a user thread hands the baton
    back (a plain ``Future.result()`` would block the one thread allowed to run, and so
    the whole simulation)."""

    def __init__(self, baton: Baton) -> None:
        super().__init__()
        self._baton = baton
        self._settled = SimFuture()
        self.add_done_callback(lambda _: baton.resolve(self._settled))

    def _wait(self) -> None:
        if not self.done():
            self._baton.block(self._settled)

    def result(self, timeout: float | None = None) -> Any:
        self._wait()  # on virtual time: a timeout here would be wall-clock, so none
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait()
        return super().exception(0)


def _on_sim_loop() -> bool:
    """Whether the caller runs on an async actor's ``SimEventLoop``."""
    from shoal.sim.async_loop import SimEventLoop

    try:
        return isinstance(asyncio.get_running_loop(), SimEventLoop)
    except RuntimeError:
        return False
