"""The worker-context interface: what a host provides to the API layer.

The API (``remote``, ``get``, ``put``, ``wait``, ``ObjectRef``...) never talks
to a kernel, a transport or an event loop. It talks to one ``WorkerContext``:
the process's link to its core worker, implemented by each host (the
simulator's baton-threaded host, the production trio host).

Which context a call uses: the one bound to the calling thread
(``bind_thread_context``; the simulator binds one per user thread, and
``executor.execute`` binds the one it is given while a task runs), else the
process-global one (``set_global_context``; ``shoal.init()`` sets it). With
neither, ``get_context()`` raises ``NotInitializedError``. The binding is a
``contextvars.ContextVar``: a new thread starts unbound, as with a thread-local,
and each asyncio task works on its own copy, so the coroutines of an async actor
sharing one thread each see the context (and the running call) they were given.

Threading contract (what a host author must know):

* Every method except ``ref_added``/``ref_removed`` is called from a user
  thread (the driver's thread, a task's thread, an actor's threads), never from
  the host's own loop thread. Several user threads may call at once (threaded
  actors), so the id counters must be thread-safe.
* ``get_objects`` and ``wait_objects`` block the calling thread until they have
  an answer (in the simulator: they hand the baton back to the loop). So may
  ``nodes``/``cluster_resources``/``available_resources`` and ``put_object``
  (which may raise ``ObjectStoreFullError``). ``submit_task`` and
  ``cancel_task`` are fire and forget: they must not wait for the kernel.
* ``ref_added``/``ref_removed`` run wherever an ``ObjectRef`` is created or
  garbage-collected: any thread, including the host's own loop thread (a GC
  pass can run anywhere) and during interpreter shutdown. They must only record
  the delta (e.g. append to a queue the loop drains) and never block, re-enter
  the kernel, or raise.
* For a new object, ``ref_added`` comes *before* the ``submit_task`` or
  ``put_object`` that creates it, from the same thread: the API builds the
  returned ``ObjectRef`` first. The host must hand the kernel the calls of one
  thread in the order they were made.
* Actors (issue #4; ``ActorContext``, which a host's context implements
  beside ``WorkerContext`` once it runs actors): ``create_actor``,
  ``get_named_actor`` and ``kill_actor`` block until the GCS has answered;
  ``submit_actor_task`` hands the call to the core worker and returns once it
  is accepted (it raises ``PendingCallsLimitExceeded`` when the core worker
  refuses it with ``ActorCallRefused``). The host runs the constructor and the
  methods with ``actor.create_instance`` and ``actor.execute_method`` on
  ``CreateActorInstance``/``ExecuteActorTask``, and sets ``current_actor_id``
  (and ``current_actor_restarts``) in the actor's process. For an async actor
  (``actor.is_async_class`` of the instance's class) it runs each call as a
  task of one asyncio event loop with ``actor.execute_method_async``: calls
  interleave at their ``await``s, up to the ``max_concurrency`` the kernel allows.
* Awaitable refs (issue #5; ``AsyncObjectsContext``, optional like
  ``ActorContext``): ``get_objects_future(refs, timeout_s)`` asks for objects
  like ``get_objects`` but returns a ``concurrent.futures.Future`` at once. It
  is called from user threads, including an asyncio event loop's thread, which
  it must not block: the host completes the future from its own loop thread
  when the kernel answers (``GetCompleted``). Its value is a *reader*: a
  function of no arguments returning what ``get_objects`` would have returned,
  which the API calls in the thread that consumes the value (reading a stored
  object may do I/O that must not run on the host's loop thread); a failure of
  the whole call is the future's exception. A host whose waiting is
  deterministic only when it blocks (the simulator) may block here and return
  a future that is already done, unless the caller runs on an event loop that
  the host drives itself.
* Streaming generators (issue 5; ``StreamingContext``, optional too): the
  owner's ``stream_next`` blocks like ``get_objects`` until item ``index`` of a
  stream exists or the stream ended; the item's ref comes back *already
  counted once* for the caller, who must wrap it with ``ObjectRef.adopt`` (not
  the constructor, which would count it again). On a worker, the API calls
  ``report_stream_item`` from the task's thread for each value the generator
  yields (fire and forget, in order with the thread's other inputs); the host
  stores a large value in the node's store first, as it does for returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

from shoal.kernel.core_worker.actor_protocol import ActorRequestCompleted
from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.gcs.actor_protocol import ActorSpec
from shoal.kernel.ids import ActorId, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec

__all__ = [
    "NOT_INITIALIZED",
    "ActorContext",
    "PlacementGroupContext",
    "AsyncObjectsContext",
    "StreamingContext",
    "NotInitializedError",
    "WorkerContext",
    "bind_thread_context",
    "current_context",
    "get_context",
    "global_context",
    "set_global_context",
    "thread_context",
    "using_context",
]

NOT_INITIALIZED = (
    "shoal is not initialized: call shoal.init() first "
    "(or run inside shoal.sim.Simulation)")


class NotInitializedError(RuntimeError):
    """An API call was made with no worker context bound to the thread or the process."""


@runtime_checkable
class WorkerContext(Protocol):
    """What a host provides to the API layer of one process (see the module docstring).

    Identity attributes may be plain attributes or properties.
    """

    @property
    def address(self) -> Address:
        """This process's core worker: the owner recorded in refs it creates."""
        ...

    @property
    def node_id(self) -> NodeId:
        """The node this process runs on."""
        ...

    @property
    def job_id(self) -> str:
        """The job of the driver this process works for."""
        ...

    @property
    def current_task_id(self) -> TaskId | None:
        """The task the calling thread is running; None on a driver."""
        ...

    @property
    def current_actor_id(self) -> ActorId | None:
        """The actor this process hosts; None outside an actor."""
        ...

    def next_task_id(self) -> TaskId:
        """A new task id, unique in the cluster, from a counter (deterministic)."""
        ...

    def next_object_id(self) -> ObjectId:
        """A new id for a ``put`` object, unique in the cluster, from a counter.

        It must not look like a task return (``<task id>.r<digits>``).
        """
        ...

    def submit_task(self, spec: TaskSpec, function: bytes) -> None:
        """Submits a task this process owns (``TaskSubmitted``); fire and forget.

        ``function`` is the cloudpickled function (the same bytes object for
        every call of one remote function); ``spec.function_id`` is its sha256.
        """
        ...

    def put_object(self, object_id: ObjectId, payload: Payload) -> None:
        """Stores a value this process owns (``ObjectPut``). May block; may raise
        ``ObjectStoreFullError``."""
        ...

    def get_objects(self, refs: list[ObjectRefInfo],
                    timeout_s: float | None) -> list[ObjectResult]:
        """Blocks until every object is done, or ``timeout_s`` passes.

        Args:
            refs: distinct refs (the API removes duplicates).
            timeout_s: None to wait forever; 0 to answer at once.

        Returns:
            One result per ref, in the order given; an object still pending at the
            deadline gets ``ObjectError(kind="get_timeout")`` (raising
            ``GetTimeoutError`` instead is also accepted).
        """
        ...

    def wait_objects(self, refs: list[ObjectRefInfo], num_returns: int,
                     timeout_s: float | None, fetch_local: bool) -> list[ObjectId]:
        """Blocks until ``num_returns`` of ``refs`` are done (a value or an error),
        or ``timeout_s`` passes; returns the ids of those done (any number: the API
        keeps the first ``num_returns`` in input order). ``refs`` are distinct."""
        ...

    def cancel_task(self, ref: ObjectRefInfo, force: bool, recursive: bool) -> None:
        """Cancels the task that creates ``ref`` (``CancelRequested``); fire and forget."""
        ...

    def ref_added(self, ref: ObjectRefInfo) -> None:
        """An ``ObjectRef`` instance was created in this process. Any thread; must not block."""
        ...

    def ref_removed(self, ref: ObjectRefInfo) -> None:
        """An ``ObjectRef`` instance was collected. Any thread, even at exit; must not block."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The node table, shaped like ``ray.nodes()`` (``NodeID``, ``Alive``, ``Resources``...)."""
        ...

    def cluster_resources(self) -> dict[str, float]:
        """Total resources of the alive nodes."""
        ...

    def available_resources(self) -> dict[str, float]:
        """Resources not in use right now."""
        ...


@runtime_checkable
class ActorContext(Protocol):
    """The actor half of a host's context (issue #4), apart so a host that does not
    run actors yet still is a ``WorkerContext``; the API then says so when asked for
    an actor. See the module docstring for the threading contract."""

    def create_actor(self, spec: ActorSpec, function: bytes,
                     get_if_exists: bool) -> ActorRequestCompleted:
        """Registers a new actor this process owns (``ActorCreationRequested``); blocks
        until the GCS answered. ``created`` says it was registered; otherwise ``handle``
        names the live actor holding its name (``get_if_exists``), or ``error`` says why
        not. The handle ref (``handle_object_id``) was counted just before."""
        ...

    def submit_actor_task(self, actor_id: ActorId, spec: TaskSpec, max_task_retries: int,
                          max_pending_calls: int) -> None:
        """Submits one method call (``ActorCallSubmitted``).

        Raises:
            PendingCallsLimitExceeded: the core worker refused it (``ActorCallRefused``).
        """
        ...

    def get_named_actor(self, name: str, namespace: str) -> ActorRequestCompleted:
        """Looks a live named actor up at the GCS (``ActorLookupRequested``); blocks."""
        ...

    def kill_actor(self, actor_id: ActorId, no_restart: bool) -> None:
        """Asks the GCS to kill the actor (``ActorKillRequested``); blocks until it did."""
        ...


@runtime_checkable
class AsyncObjectsContext(Protocol):
    """The hook behind ``await ref`` and ``ref.future()`` (issue #5), apart so a host
    without it still is a ``WorkerContext``; see the module docstring."""

    def get_objects_future(self, refs: list[ObjectRefInfo], timeout_s: float | None,
                           ) -> Future[Callable[[], list[ObjectResult]]]:
        """Asks for ``refs`` (distinct) without waiting; see the module docstring.

        Returns:
            A future whose value reads the results, one per ref in the order given,
            as ``get_objects`` returns them.
        """
        ...


@runtime_checkable
class StreamingContext(Protocol):
    """The streaming-generator half of a host's context (issue 5, ``generator.py``);
    see the module docstring."""

    def stream_next(self, task_id: TaskId, index: int,
                    timeout_s: float | None) -> ObjectRefInfo | None:
        """Blocks until item ``index`` of the stream of ``task_id`` (owned here) exists.

        Returns:
            The item's ref, counted once for the caller (``ObjectRef.adopt`` it), or
            None when the stream ended before ``index``.

        Raises:
            GetTimeoutError: ``timeout_s`` passed first.
        """
        ...

    def report_stream_item(self, spec: TaskSpec, index: int, result: ObjectResult) -> None:
        """The streaming task the calling thread runs yielded item ``index`` (worker side)."""
        ...


@runtime_checkable
class PlacementGroupContext(Protocol):
    """The placement group half of a host's context (``placement_group.py``).

    Hosts implement it over their GCS client (``sim/pg_host.py``,
    ``runtime/pg_context.py``); a context without it makes the placement group
    API raise ``NotImplementedError``.
    """

    def placement_group_send(self, request: Any) -> Any:
        """Sends one placement group request like ``placement_group_call`` without
        waiting; returns a function that blocks until the ``PlacementGroupReply``
        comes and returns it (calling it again returns the same reply)."""
        ...

    def placement_group_call(self, request: Any) -> Any:
        """Sends one placement group request (``CreatePlacementGroup``,
        ``RemovePlacementGroup``, ``GetPlacementGroup``, ``ListPlacementGroups`` or
        ``WaitPlacementGroupReady``, whose ``request_id`` the GCS client overwrites) to
        the GCS; blocks until the ``PlacementGroupReply`` comes (retransmitting
        meanwhile) and returns it. A reply with ``error`` set is returned, not raised."""
        ...


_bound: ContextVar[WorkerContext | None] = ContextVar("shoal_worker_context", default=None)
_global: WorkerContext | None = None
_global_lock = threading.Lock()


def thread_context() -> WorkerContext | None:
    """The context bound to the calling thread (or asyncio task), if any."""
    return _bound.get()


def global_context() -> WorkerContext | None:
    """The process-global context set by ``shoal.init()``, if any."""
    return _global


def current_context() -> WorkerContext | None:
    """The calling thread's context, else the process-global one, else None."""
    ctx = _bound.get()
    return ctx if ctx is not None else _global


def get_context() -> WorkerContext:
    """The context API calls use.

    Raises:
        NotInitializedError: no context is bound to this thread or set for the process.
    """
    ctx = current_context()
    if ctx is None:
        raise NotInitializedError(NOT_INITIALIZED)
    return ctx


def bind_thread_context(ctx: WorkerContext | None) -> WorkerContext | None:
    """Binds ``ctx`` to the calling thread (None unbinds); returns the one bound before.

    Inside an asyncio task this binds it for that task only (its context is a copy).
    """
    previous = _bound.get()
    _bound.set(ctx)
    return previous


def set_global_context(ctx: WorkerContext | None) -> WorkerContext | None:
    """Sets the process-global context (None clears it); returns the one set before."""
    global _global
    with _global_lock:
        previous, _global = _global, ctx
    return previous


@contextmanager
def using_context(ctx: WorkerContext) -> Iterator[WorkerContext]:
    """Binds ``ctx`` to the calling thread for the ``with`` block, then restores."""
    previous = bind_thread_context(ctx)
    try:
        yield ctx
    finally:
        bind_thread_context(previous)
