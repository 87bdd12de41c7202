"""The process side of a core worker: a trio thread, and the API's ``WorkerContext``.

Theory of operation
-------------------
A driver (the user's process) and a worker each run one ``CoreWorker`` kernel.
``CoreWorkerRuntime`` runs it on a ``KernelLoop`` in a background thread with
its own trio run, connected to the node daemon's Unix socket
(``runtime/local_transport.py``). Every ``Send`` goes to ``DirectLinks``
(``runtime/direct_link.py``): to a worker of this node over a direct link
(opened on the first send; a worker also listens for links itself), anything
else to the daemon, which routes it; every envelope addressed to this process,
from a link or the daemon, becomes a ``Received`` input (in per-peer order). If the connection closes, the daemon is gone: ``on_lost``
says so (the driver fails its blocked calls, a worker exits).

``ProdWorkerContext`` is the ``WorkerContext`` the API layer calls from user
threads (``runtime/api/context.py`` has the threading contract):

* ``submit_task``, ``put_object``, ``cancel_task`` and the ``KvCallRequested``
  of ``kv_call`` append inputs to the loop's cross-thread queue; the loop takes
  everything queued once per round, so a burst of calls costs one wakeup of
  trio, not one per call.
* ``ref_added``/``ref_removed`` only append ``(ref, +-1)`` to a deque (lock-free,
  safe from a GC pass in any thread, at exit too). Before any other input is
  queued, the deque is folded into one ``RefsChanged`` ahead of it, under the
  context's lock, so the kernel sees one thread's calls in the order they were
  made; the loop also folds the deque every ``REFS_FLUSH_S`` for refs dropped
  with no call after them.
* ``get_objects``/``wait_objects`` first try to answer in the calling thread:
  values this process already holds inline (done, no error) are read from the
  kernel's object table without a trip through trio (``runtime/direct_reads.py``
  says why that read is safe); anything else goes to the kernel as below.
* ``get_objects``/``wait_objects``/``kv_call`` queue a request with a fresh
  ``call_id`` and wait on a ``threading.Event``, set by the trio thread when the
  kernel emits ``GetCompleted``/``WaitCompleted``/``CallCompleted`` for it.
  Timeouts are the kernel's (``timeout_ns``); the host never guesses.
* ``nodes()`` and friends read the kernel's node view inside the trio thread.
* Values above the inline limit go through ``objects`` (``runtime/process_objects.py``,
  also the API's ``buffer_codec``): ``put_object`` seals them in the node's
  shared-memory store before ``ObjectPut(stored=True)`` reaches the kernel, and
  ``get_objects`` reads stored results from it zero-copy, in the calling thread.

Tasks run by a worker are tracked per thread (``begin_task``/``end_task``):
``current_task`` is the calling thread's, so each thread of a threaded actor
sees its own call. A running task can be interrupted (``InterruptTask``,
``interrupt_task``): the error is raised in its thread at its current or next
blocking call, as in the simulator.

Actors: the ``ActorContext`` methods are in the ``ProdActorContext`` mixin
(``runtime/actor_context.py``); ``on_caller_effect`` carries out the effects a
driver and a worker share (answers to blocking calls, refused actor calls).
"""

from __future__ import annotations

import functools
import itertools
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
import trio
from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.core_worker import host_config
from shoal.kernel.core_worker.actor_protocol import ActorCallRefused, ActorRequestCompleted
from shoal.kernel.core_worker.protocol import (
    CancelRequested,
    GetCompleted,
    GetRequested,
    ObjectPut,
    ObjectResult,
    RefsChanged,
    TaskSubmitted,
    WaitCompleted,
    WaitRequested,
)
from shoal.kernel.gcs.protocol import KvRequest
from shoal.kernel.gcs_client import CallCompleted, KvCallRequested
from shoal.kernel.ids import ActorId, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address, Msg, Received, Started
from shoal.kernel.task_spec import INLINE_BYTES_MAX, ObjectRefInfo, Payload, TaskSpec
from shoal.kernel.wire import Envelope
from shoal.runtime.actor_context import ProdActorContext
from shoal.runtime.pg_context import ProdPlacementGroupContext  # placement groups
from shoal.runtime.async_objects import ProdAsyncObjects
from shoal.runtime.stream_context import ProdStreams  # streaming generators (issue 5)
from shoal.kernel.core_worker.stream_protocol import StreamNextCompleted
from shoal.runtime.api.exceptions import RaySystemError
from shoal.runtime.direct_link import DirectLinks
from shoal.runtime.direct_reads import LocalReads
from shoal.runtime.kernel_host import KernelLoop, UnhandledEffect
from shoal.runtime.local_transport import (
    Connection,
    HelloReply,
    connect_local,
)
from shoal.runtime.process_objects import ProcessObjects

REFS_FLUSH_S = 0.05
STOP_FLUSH_S = 0.2
T = TypeVar("T")

HostEffect = Callable[[Msg], None]


class CoreWorkerRuntime:
    """A ``CoreWorker`` on a trio loop in a background thread, linked to its daemon."""

    def __init__(self, *, socket_path: str, token: str, address: Address,
                 on_effect: HostEffect, on_lost: Callable[[str], None], log: Any = None) -> None:
        self.socket_path = socket_path
        self.address = address
        self._token = token
        self._on_effect = on_effect
        self._on_lost = on_lost
        log = log or structlog.get_logger("shoal.runtime.core_worker")
        self._log = log.bind(address=str(address))
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f"shoal-trio-{address.component}")
        self._ready = threading.Event()
        self._view_ready = threading.Event()
        self._error: BaseException | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._conn: Connection | None = None
        self.links: DirectLinks | None = None  # direct links to other workers of the node
        self._stopping = False
        self.reply: HelloReply | None = None
        self.kernel: CoreWorker | None = None
        self.loop: KernelLoop | None = None
        self.periodic: list[Callable[[], None]] = []
        # Host messages (kernel/host_protocol.py) by type: taken before the kernel sees them.
        self.host_messages: dict[type[Msg], Callable[[Any], None]] = {}
        self.round_hooks: list[Callable[[], None]] = []  # after each round (trio thread)

    def start(self, timeout_s: float = 10.0) -> HelloReply:
        """Starts the thread and connects; returns the daemon's welcome.

        Raises:
            ConnectionError: the daemon refused or could not be reached.
        """
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise ConnectionError(f"no connection to the node daemon at {self.socket_path} "
                                  f"within {timeout_s}s")
        if self._error is not None:
            raise ConnectionError(f"cannot connect to the node daemon at {self.socket_path}: "
                                  f"{self._error}") from self._error
        assert self.reply is not None
        return self.reply

    @property
    def token(self) -> str:
        return self._token

    def post(self, events: list[Msg], *, run: bool = True) -> bool:
        """Hands inputs to the kernel from any thread; False once the loop is gone.

        Args:
            run: False only queues them (in order); ``run_posted`` then has them
                handled, in this thread if no kernel round runs elsewhere.
        """
        loop = self.loop
        if loop is None:
            return False
        return loop.post_from_thread([(self.address, event) for event in events], run=run)

    def run_posted(self, *, inline: bool = True) -> None:
        """Has what was posted handled (see ``KernelLoop.run_posted``). Hold no lock
        that a host effect takes: the round may run here and carry them out."""
        loop = self.loop
        if loop is not None:
            loop.run_posted(inline=inline)

    def run_in_loop(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` in the trio thread and returns its result (blocks the caller)."""
        if self._trio_token is None:
            raise RaySystemError("the core worker's loop is not running")
        try:
            return trio.from_thread.run_sync(fn, trio_token=self._trio_token)
        except trio.RunFinishedError:
            raise RaySystemError("the core worker's loop has stopped") from None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the loop (after a short flush of what it still has to send) and joins
        the thread; from any thread but the loop's."""
        self._stopping = True
        token, nursery = self._trio_token, self._nursery
        if token is not None and nursery is not None:
            try:
                token.run_sync_soon(nursery.start_soon, self._flush_and_stop)
            except (trio.RunFinishedError, RuntimeError):
                pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # --- the trio thread -------------------------------------------------------

    async def _flush_and_stop(self) -> None:
        with trio.move_on_after(STOP_FLUSH_S):
            while not self._flushed():
                await trio.sleep(0.001)
        assert self._cancel is not None
        self._cancel.cancel()

    def _flushed(self) -> bool:
        """The loop has handled what user threads posted, and the socket has written it."""
        conn, loop = self._conn, self.loop
        links = self.links
        return conn is None or conn.closed or (conn.idle and (loop is None or loop.idle)
                                               and (links is None or links.idle))

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001  # report, never die silently
            self._error = self._error or exc
            self._log.exception("core_worker.loop_crashed")
            self._ready.set()
            if not self._stopping:
                self._on_lost(f"the core worker's loop crashed: {exc!r}")

    async def _main(self) -> None:
        try:
            conn, reply = await connect_local(self.socket_path, token=self._token,
                                              address=self.address, log=self._log)
        except (OSError, ConnectionError) as exc:
            self._error = exc
            self._ready.set()
            return
        assert reply.raylet is not None and reply.gcs is not None
        self._conn, self.reply = conn, reply
        self.kernel = CoreWorker(self.address, raylet=reply.raylet, gcs=reply.gcs,
                                 config=host_config())
        # Inline rounds: a user thread that posts inputs runs the kernel itself when
        # the trio thread is idle, instead of waking it (one thread hop less per call).
        self.loop = KernelLoop(self._route, log=self._log, inline_rounds=True)
        conn.defer_writes_to(self.loop.round_flush)
        self.links = DirectLinks(me=self.address, token=self._token,
                                 session_dir=reply.session_dir, relay=conn.send,
                                 deliver=self._deliver, delivered=self.loop.run_now,
                                 round_flush=self.loop.round_flush, log=self._log)
        self.periodic.append(self.links.release_overdue)
        self.loop.add_kernel(self.address, self.kernel, on_effect=self._host_effect)
        self.loop.after_round.append(self._check_view)
        self.loop.after_round.extend(self.round_hooks)
        async with trio.open_nursery() as nursery:
            self._cancel, self._nursery = nursery.cancel_scope, nursery
            self._trio_token = trio.lowlevel.current_trio_token()
            await nursery.start(self.loop.run)
            await nursery.start(functools.partial(  # workers listen for their owners' links
                self.links.run, listen=self.address.component == "worker"))
            nursery.start_soon(conn.run_writer)
            nursery.start_soon(self._read, conn)
            nursery.start_soon(self._periodic)
            self.loop.post(self.address, Started())
            self._ready.set()
        await conn.aclose()

    def _check_view(self) -> None:
        if not self._view_ready.is_set() and self.kernel and self.kernel.gcs_client.view.version:
            self._view_ready.set()

    def wait_for_view(self, timeout_s: float) -> bool:
        """Waits until the kernel has its first node table from the GCS."""
        return self._view_ready.wait(timeout_s)

    def _route(self, src: Address, dst: Address, msg: Msg) -> None:
        assert self.links is not None  # a direct link to dst, else the daemon routes
        self.links.send(Envelope(src=src, dst=dst, msg=msg))

    def send_host(self, dst: Address, msg: Msg) -> None:
        """Sends a host message (no kernel involved); from any thread but the loop's."""
        token = self._trio_token
        if token is None or self._stopping:
            return
        try:
            token.run_sync_soon(self._route, self.address, dst, msg)
        except (trio.RunFinishedError, RuntimeError):
            pass  # the loop is gone: so is whoever would have read it

    def _deliver(self, envelope: Envelope) -> None:
        handler = self.host_messages.get(type(envelope.msg))
        if handler is not None:
            handler(envelope.msg)
            return
        assert self.loop is not None  # the links call loop.run_now after each batch
        self.loop.post(self.address, Received(src=envelope.src, msg=envelope.msg), wake=False)

    def _host_effect(self, address: Address, effect: Msg) -> None:
        self._on_effect(effect)

    async def _read(self, conn: Connection) -> None:
        reason = await conn.run_reader(self._on_batch, check_src=False)
        if not self._stopping:
            self._log.warning("core_worker.daemon_lost", reason=reason)
            self._on_lost(f"the connection to the node daemon ended ({reason})")
            assert self._cancel is not None
            self._cancel.cancel()

    def _on_batch(self, conn: Connection, envelopes: list[Envelope]) -> None:
        assert self.links is not None
        for envelope in envelopes:
            if envelope.dst == self.address:
                self.links.on_relayed(envelope)
        assert self.loop is not None
        self.loop.run_now()

    async def _periodic(self) -> None:
        while True:
            await trio.sleep(REFS_FLUSH_S)
            for fn in self.periodic:
                fn()


class _Waiter:
    """One blocking call's answer. A bare lock, held until the answer is in, is about a
    third of the cost of a ``threading.Event`` (a lock plus a condition) per call."""

    __slots__ = ("_done", "call_id", "error", "value")

    def __init__(self, call_id: int) -> None:
        self.call_id = call_id
        self._done = threading.Lock()
        self._done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        try:
            self._done.release()
        except RuntimeError:
            pass  # resolved already (an interrupt, then the answer): the last one stands

    def wait(self, timeout_s: float | None = None) -> bool:
        """Blocks until resolved, or ``timeout_s``; whether it was resolved."""
        if not self._done.acquire(timeout=-1 if timeout_s is None else timeout_s):
            return False
        self._done.release()  # stays resolved for later waits
        return True


def _timeout_ns(timeout_s: float | None) -> int | None:
    return None if timeout_s is None else max(0, int(timeout_s * 1e9))


class ProdWorkerContext(ProdActorContext, ProdAsyncObjects, ProdPlacementGroupContext,
                        ProdStreams, LocalReads):
    """The ``WorkerContext`` (and ``ActorContext``) of a driver or worker process (see the
    module docstring)."""

    def __init__(self, runtime: CoreWorkerRuntime, *, job_id: str) -> None:
        self._runtime = runtime
        self.address = runtime.address
        self.node_id = NodeId(runtime.address.node)
        self.job_id = job_id
        self.current_actor_id: ActorId | None = None
        self.current_actor_restarts = 0
        who = runtime.address.worker or runtime.address.component
        self._prefix = f"{runtime.address.node}.{who}.{os.getpid():x}{secrets.token_hex(2)}"
        self._task_ids = itertools.count(1)
        self._object_ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._refs: deque[tuple[ObjectRefInfo, int]] = deque()
        self._waiters: dict[int, _Waiter] = {}
        self._lost = ""
        self._running: dict[int, TaskSpec] = {}  # thread ident -> the task it runs (workers)
        self._blocked: dict[int, _Waiter] = {}  # task threads blocked in a call, by ident
        self._interrupts: dict[int, BaseException] = {}  # to raise in a task thread, by ident
        self._refused: dict[TaskId, str] = {}  # actor calls refused as submitted
        self._expected: dict[TaskId, BaseException | None] = {}  # handed over, not begun yet
        self._objects: ProcessObjects | None = None
        self._init_local_reads(runtime)
        runtime.periodic.append(self.flush_refs)
        runtime.periodic.append(self._flush_objects)

    @property
    def current_task(self) -> TaskSpec | None:
        """The task the calling thread runs; None outside tasks (a driver, an idle thread)."""
        return self._running.get(threading.get_ident())

    @property
    def current_task_id(self) -> TaskId | None:
        spec = self._running.get(threading.get_ident())
        return spec.task_id if spec is not None else None

    def expect_task(self, task_id: TaskId) -> None:
        """A task was handed to a user thread and begins soon: an interrupt that comes
        before it begins is kept for it (``begin_task``). Trio thread."""
        with self._lock:
            self._expected[task_id] = None

    def begin_task(self, spec: TaskSpec) -> BaseException | None:
        """The calling thread starts running ``spec``: it can be interrupted until ``end_task``.

        Returns:
            The interrupt that came while the task was expected, if any (the task was
            cancelled before it began: the caller should not run it).
        """
        ident = threading.get_ident()
        with self._lock:
            self._running[ident] = spec
            early = self._expected.pop(spec.task_id, None)
            if early is not None:
                self._interrupts[ident] = early
        return early

    def end_task(self) -> None:
        """The calling thread's task ended; an interrupt it did not raise is dropped."""
        ident = threading.get_ident()
        with self._lock:
            self._running.pop(ident, None)
            self._interrupts.pop(ident, None)

    # --- the node's object store ---------------------------------------------------

    @property
    def objects(self) -> ProcessObjects:
        """This process's side of the node's object store (once connected to the daemon)."""
        objects = self._objects
        if objects is None:
            reply = self._runtime.reply
            socket_path = reply.store_socket if reply is not None else ""
            with self._lock:
                if self._objects is None:
                    self._objects = ProcessObjects(socket_path, self._runtime.token,
                                                   self.node_id)
                objects = self._objects
        return objects

    @property
    def buffer_codec(self) -> ProcessObjects:
        """The API's ``BufferCodec``: large buffers go straight into the node's store."""
        return self.objects

    def _flush_objects(self) -> None:
        if self._objects is not None:
            self._objects.flush()

    # --- ids ---------------------------------------------------------------

    def next_task_id(self) -> TaskId:
        return TaskId(f"{self._prefix}.t{next(self._task_ids)}")

    def next_object_id(self) -> ObjectId:
        return ObjectId(f"{self._prefix}.p{next(self._object_ids)}")

    # --- inputs to the kernel ---------------------------------------------------

    def _post(self, event: Msg | None, *, inline: bool = True) -> None:
        """Hands ``event`` (after the ref changes recorded before it) to the kernel.

        Args:
            inline: run the kernel's round in this thread if it is free; False for
                inputs nobody waits on (a put), which trio then takes in batches.
        """
        with self._lock:  # ref changes and the event are queued in the order they happened
            events = self._take_refs()
            if event is not None:
                events.append(event)
            if not events:
                return
            if not self._runtime.post(events, run=False) and event is not None:
                raise RaySystemError(self._lost or "the core worker's loop is not running")
        self._runtime.run_posted(inline=inline)  # outside the lock: effects may take it

    def _take_refs(self) -> list[Msg]:
        refs = self._refs
        if not refs:
            return []
        # Keyed by the id string (its hash is cached; a struct's is recomputed each time).
        deltas: dict[ObjectId, int] = {}
        infos: dict[ObjectId, ObjectRefInfo] = {}
        pop = refs.popleft
        while refs:
            info, delta = pop()
            object_id = info.object_id
            if object_id in deltas:
                deltas[object_id] += delta
            else:
                deltas[object_id] = delta
                infos[object_id] = info
        changed = tuple((infos[oid], delta) for oid, delta in deltas.items() if delta)
        return [RefsChanged(deltas=changed)] if changed else []

    def post_input(self, event: Msg) -> None:
        """Hands one host input (a ``TaskExecuted``...) to the kernel, after the ref changes."""
        self._post(event)

    def flush_refs(self) -> None:
        """Hands the recorded ref changes to the kernel (any thread)."""
        if self._refs:
            self._post(None)

    def submit_task(self, spec: TaskSpec, function: bytes) -> None:
        self._check_alive()
        self._post(TaskSubmitted(spec=spec, function=function))

    def put_object(self, object_id: ObjectId, payload: Payload) -> None:
        self._check_alive()
        if len(payload.data) <= INLINE_BYTES_MAX:  # nobody waits on a put: trio batches them
            self._post(ObjectPut(object_id=object_id, value=payload), inline=False)
            return
        stored, size = self.objects.store(object_id, payload)  # sealed before the kernel hears
        self._post(ObjectPut(object_id=object_id, value=stored, stored=True, size=size))

    def cancel_task(self, ref: ObjectRefInfo, force: bool, recursive: bool) -> None:
        self._check_alive()
        self._post(CancelRequested(object_id=ref.object_id, force=force, recursive=recursive))

    def ref_added(self, ref: ObjectRefInfo) -> None:
        self._refs.append((ref, 1))

    def ref_removed(self, ref: ObjectRefInfo) -> None:
        self._refs.append((ref, -1))

    # --- blocking calls ------------------------------------------------------------

    def get_objects(self, refs: list[ObjectRefInfo], timeout_s: float | None) -> list[ObjectResult]:
        ready = self.ready_inline(refs)
        if ready is None and timeout_s is None:
            ready = self.get_here(refs)  # pending values owned here: wait for them here
        if ready is not None:
            return ready  # every value is in this process: no trip through the kernel
        waiter = self._new_waiter()
        self._post(GetRequested(call_id=waiter.call_id, refs=tuple(refs),
                                timeout_ns=_timeout_ns(timeout_s)))
        results: tuple[ObjectResult, ...] = self._block(waiter)
        return [self.objects.read_result(result) for result in results]

    def wait_objects(self, refs: list[ObjectRefInfo], num_returns: int,
                     timeout_s: float | None, fetch_local: bool) -> list[ObjectId]:
        ready = self.first_ready(refs, num_returns)
        if ready is None and timeout_s is None and self.may_wait_here(refs):
            ready = self.wait_here(refs, num_returns)
        if ready is not None:
            return ready
        waiter = self._new_waiter()
        self._post(WaitRequested(call_id=waiter.call_id, refs=tuple(refs),
                                 num_returns=num_returns, timeout_ns=_timeout_ns(timeout_s),
                                 fetch_local=fetch_local))
        return list(self._block(waiter))

    def kv_call(self, request: KvRequest) -> Any:
        """One internal-KV request through this process's GCS client; blocks."""
        waiter = self._new_waiter()
        self._post(KvCallRequested(call_id=waiter.call_id, request=request))
        return self._block(waiter)

    def _new_waiter(self) -> _Waiter:
        self._check_alive()
        waiter = _Waiter(next(self._call_ids))
        with self._lock:
            self._waiters[waiter.call_id] = waiter
        return waiter

    def _block(self, waiter: _Waiter) -> Any:
        ident = threading.get_ident()
        on_task_thread = ident in self._running
        try:
            if on_task_thread:
                with self._lock:
                    self._blocked[ident] = waiter
                    interrupt = self._interrupts.get(ident)
                    if interrupt is not None:
                        waiter.resolve(error=interrupt)
            waiter.wait()
        finally:
            with self._lock:
                self._waiters.pop(waiter.call_id, None)
                if on_task_thread:
                    self._blocked.pop(ident, None)
        if waiter.error is not None:
            if on_task_thread and waiter.error is self._interrupts.get(ident):
                with self._lock:
                    self._interrupts.pop(ident, None)  # raised once
            raise waiter.error
        return waiter.value

    def complete(self, effect: Msg) -> None:
        """A call finished in the kernel: wake its thread. Trio thread."""
        with self._lock:
            waiter = self._waiters.pop(getattr(effect, "call_id", -1), None)
        if waiter is None:
            if isinstance(effect, StreamNextCompleted) and effect.ref is not None:
                self.ref_removed(effect.ref)  # its caller gave up: nobody adopts the count
            return
        match effect:
            case GetCompleted():
                waiter.resolve(effect.results)
            case WaitCompleted():
                waiter.resolve(effect.ready)
            case CallCompleted() if effect.error:
                waiter.resolve(error=ValueError(effect.error))
            case CallCompleted():
                waiter.resolve(effect.value)
            case ActorRequestCompleted() | StreamNextCompleted():
                waiter.resolve(effect)

    def on_caller_effect(self, effect: Msg) -> None:
        """Carries out a host effect that any process's core worker may emit (the answer
        to a blocking call, a refused actor call). Trio thread.

        Raises:
            UnhandledEffect: not such an effect (a bug in the host).
        """
        match effect:
            case (GetCompleted() | WaitCompleted() | CallCompleted() | ActorRequestCompleted()
                  | StreamNextCompleted()):
                self.complete(effect)
            case ActorCallRefused():
                self.on_call_refused(effect)
            case _:
                raise UnhandledEffect(f"{self.address}: no handler for "
                                      f"{type(effect).__name__} effects")

    def interrupt_task(self, task_id: TaskId, error: BaseException) -> bool:
        """Raises ``error`` in the thread running ``task_id``, at its current or next
        blocking call; False if no thread runs it. Any thread."""
        with self._lock:
            ident = next((i for i, spec in self._running.items() if spec.task_id == task_id),
                         None)
            if ident is None:
                if task_id not in self._expected:
                    return False
                self._expected[task_id] = error  # it has not begun: begin_task sees it
                return True
            self._interrupts[ident] = error
            waiter = self._blocked.get(ident)
        if waiter is not None:
            waiter.resolve(error=error)
        return True

    def lost(self, reason: str) -> None:
        """The daemon is gone: every blocked and later call fails with ``reason``."""
        with self._lock:
            self._lost = reason
            waiters, self._waiters = list(self._waiters.values()), {}
            objects = self._objects
        self.wake_pollers()
        for waiter in waiters:
            waiter.resolve(error=RaySystemError(f"lost the cluster: {reason}"))
        if objects is not None:
            objects.close()

    def _check_alive(self) -> None:
        if self._lost:
            raise RaySystemError(f"lost the cluster: {self._lost}; call shoal.shutdown() and "
                                 "shoal.init() again")

    # --- cluster information -------------------------------------------------------

    def _node_rows(self) -> list[Any]:
        def read() -> list[Any]:
            kernel = self._runtime.kernel
            return list(kernel.gcs_client.nodes) if kernel is not None else []
        self._check_alive()
        return self._runtime.run_in_loop(read)

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": n.node_id, "Alive": n.state == "alive",
                 "Resources": dict(n.resources), "Incarnation": n.incarnation,
                 "NodeManagerAddress": n.endpoint.rsplit(":", 1)[0] if n.endpoint else "",
                 "DeathCause": n.death_cause} for n in self._node_rows()]

    def cluster_resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for node in self._node_rows():
            if node.state == "alive":
                for name, amount in node.resources.items():
                    total[name] = total.get(name, 0.0) + amount
        return total

    def available_resources(self) -> dict[str, float]:
        from shoal.runtime.api.resource_view import available_resources_via

        return available_resources_via(self.kv_call)
