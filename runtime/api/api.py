"""The public functions: ``get``, ``put``, ``wait``, ``cancel``, the runtime context...

Each one checks its arguments the way Ray does (same exception types, messages
that say what to do), then makes one call on the current ``WorkerContext``.

``init``/``shutdown``/``is_initialized``: inside a simulation (a context bound
to the thread) ``init`` is a no-op, so unmodified Ray programs that start with
``ray.init()`` run under the simulator. Elsewhere ``init`` starts or joins a
cluster through the host starter the production host registers with
``set_host_starter``; until it exists, ``init`` says so.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle
from shoal.kernel.ids import ObjectId
from shoal.kernel.task_spec import ObjectRefInfo
from shoal.runtime.api.context import (
    WorkerContext,
    current_context,
    get_context,
    global_context,
    set_global_context,
    thread_context,
)
from shoal.runtime.api.exceptions import GetTimeoutError, RaySystemError
from shoal.runtime.api.executor import current_task_spec
from shoal.runtime.api.object_ref import ObjectRef, value_of_result
from shoal.runtime.api.serialization import serialize

__all__ = [
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "set_host_starter",
    "shutdown",
    "wait",
]


HostStarter = Callable[..., tuple[WorkerContext, Callable[[], None]]]
"""``starter(address, **init_kwargs) -> (context, stop)``: starts or joins a cluster."""

_host_starter: HostStarter | None = None
_host_stop: Callable[[], None] | None = None
_init_lock = threading.Lock()


# --- objects -----------------------------------------------------------------


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
        raise TypeError(f"'timeout' must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number or None, got {timeout}")


def get(object_refs: ObjectRef | list[ObjectRef], *, timeout: float | None = None) -> Any:
    """Blocks until the objects are ready and returns their values.

    Args:
        object_refs: one ``ObjectRef`` or a list of them.
        timeout: seconds to wait at most; None waits forever.

    Returns:
        The value, or a list of values in the order of ``object_refs``.

    Raises:
        GetTimeoutError: not every object was ready within ``timeout``.
        RayTaskError: a task failed; the error is also an instance of the
            exception the task raised (``except ValueError`` catches it).
        RayError: an object was lost, its worker crashed, it was cancelled...
    """
    single = isinstance(object_refs, ObjectRef)
    refs: Any = [object_refs] if single else object_refs
    if not isinstance(refs, list):
        raise ValueError(  # noqa: TRY004 - Ray raises ValueError here
            f"Invalid type of object refs, {type(object_refs)}, is given. 'object_refs' must "
            "either be an ObjectRef or a list of ObjectRefs.")
    for ref in refs:
        if not isinstance(ref, ObjectRef):
            raise TypeError(
                f"Attempting to call `get` on the value {ref!r}, which is not an ObjectRef.")
    _check_timeout(timeout)
    if not refs:
        return []
    ctx = get_context()
    unique = _unique_infos(refs)
    results = ctx.get_objects(list(unique.values()), None if timeout is None else float(timeout))
    by_id = {result.object_id: result for result in results}
    missing = [oid for oid in unique if oid not in by_id]
    if missing:
        raise RaySystemError(f"the host answered get() without object {missing[0]}")
    late = [oid for oid in unique
            if (e := by_id[oid].error) is not None and e.kind == "get_timeout"]
    if late:
        raise GetTimeoutError(
            f"Get timed out: {len(late)} of {len(unique)} object(s) not ready after "
            f"{timeout} s (the first: {late[0]}). Raise the timeout, or use shoal.wait() "
            "to take the objects that are ready.")
    values = [value_of_result(by_id[ref.object_id], ref.info) for ref in refs]
    return values[0] if single else values


def _unique_infos(refs: list[ObjectRef]) -> dict[ObjectId, ObjectRefInfo]:
    unique: dict[ObjectId, ObjectRefInfo] = {}
    for ref in refs:
        unique.setdefault(ref.object_id, ref.info)
    return unique


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Stores ``value`` in the object store and returns a ref to it.

    Raises:
        TypeError: ``value`` is an ``ObjectRef``, or cannot be pickled.
        ObjectStoreFullError: the value does not fit in the object store.
    """
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
            "you can wrap the ObjectRef in a list and call 'put' on it.")
    if _owner is not None:
        raise NotImplementedError(
            "put(_owner=...) is not supported yet: objects are owned by the process that "
            "puts them; put the value from inside the actor that should own it instead")
    ctx = get_context()
    payload = serialize(value, what="the put value")
    ref = ObjectRef(ctx.next_object_id(), ctx.address)  # counted before it exists: context.py
    ctx.put_object(ref.object_id, payload)
    return ref


def wait(
    object_refs: list[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Waits until ``num_returns`` of ``object_refs`` are ready (a value or an error).

    Args:
        object_refs: distinct refs.
        num_returns: how many to wait for (1 to ``len(object_refs)``).
        timeout: seconds to wait at most; None waits for ``num_returns`` objects.
        fetch_local: also wait for the values to be on this node (a hint).

    Returns:
        ``(ready, not_ready)``, each in the order of ``object_refs``; ``ready`` has
        at most ``num_returns`` refs (fewer if the timeout passed).
    """
    if isinstance(object_refs, ObjectRef):
        raise TypeError(
            "wait() expected a list of ObjectRef, got a single ObjectRef "
            f"{object_refs!r}; pass [ref] instead")
    if not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of ObjectRef, got {type(object_refs)}")
    _check_timeout(timeout)
    # One pass per step, each as cheap as Python allows: a loop of wait(num_returns=1)
    # over a shrinking list is quadratic in the refs (Ray's "wait 1k refs" row).
    try:
        infos = [ref._info for ref in object_refs]
    except AttributeError:
        bad = next(ref for ref in object_refs if not isinstance(ref, ObjectRef))
        raise TypeError(
            f"wait() expected a list of ObjectRef, got list containing {type(bad)}") from None
    if not infos:
        return [], []
    if len({info.object_id for info in infos}) != len(infos):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(infos):
        raise ValueError(
            "num_returns cannot be greater than the number of objects provided to wait "
            f"(num_returns={num_returns}, {len(infos)} refs).")
    ctx = get_context()
    done = ctx.wait_objects(infos, num_returns, None if timeout is None else float(timeout),
                            bool(fetch_local))
    if not done:
        return [], list(object_refs)
    wanted = dict.fromkeys(done)
    picked: list[int] = []
    for i, info in enumerate(infos):  # stops at the last one wanted (usually near the front)
        if info.object_id in wanted:
            picked.append(i)
            if len(picked) == num_returns:
                break
    ready = [object_refs[i] for i in picked]
    if len(picked) == 1:  # the common case: slicing around it beats a comprehension
        i = picked[0]
        return ready, object_refs[:i] + object_refs[i + 1:]
    chosen = set(picked)
    return ready, [ref for i, ref in enumerate(object_refs) if i not in chosen]


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancels the task or actor call that creates ``object_ref``.

    Its ``get`` then raises ``TaskCancelledError``. A running task is interrupted
    (``force`` kills its worker); with ``recursive`` (the default) the tasks it
    submitted are cancelled too. An actor call that has not started never runs;
    one already running is left to finish (it is interrupted only on an async
    actor, where its coroutine is cancelled).

    Raises:
        TypeError: ``object_ref`` is not an ``ObjectRef``.
        ValueError: ``force=True`` for an actor call (kill the actor instead).
    """
    from shoal.runtime.api.generator import ObjectRefGenerator  # issue 5

    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()  # its task: the stream ends with the cancel
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(
            "shoal.cancel() only supported for object refs. For actors, try shoal.kill(). "
            f"Got: {type(object_ref)}.")
    if force and object_ref in _actor_call_refs:
        raise ValueError(
            f"force=True is not supported for actor tasks (object ref {object_ref.object_id} "
            "is the result of an actor call); use shoal.kill(actor) to stop the actor, or "
            "cancel without force")
    get_context().cancel_task(object_ref.info, bool(force), bool(recursive))


# The refs returned by actor calls made in this process, while they live: ``cancel``
# refuses ``force`` for them (as Ray does). Weak, so it holds nothing alive.
_actor_call_refs: weakref.WeakSet[ObjectRef] = weakref.WeakSet()
_actor_call_refs_lock = threading.Lock()


def note_actor_call_refs(refs: list[ObjectRef]) -> None:
    """Records the refs an actor call returned (called by ``ActorMethod.remote``)."""
    with _actor_call_refs_lock:
        for ref in refs:
            _actor_call_refs.add(ref)


def retry_exception_fields(value: Any, where: str) -> tuple[bool, bytes]:
    """A ``retry_exceptions`` option (a bool, or a list of exception classes) as the
    ``TaskSpec`` fields ``retry_exceptions`` and ``retry_exception_allowlist``.

    Raises:
        TypeError: ``value`` is neither.
    """
    if isinstance(value, bool):
        return value, b""
    if isinstance(value, list | tuple) and all(
            isinstance(v, type) and issubclass(v, BaseException) for v in value):
        return bool(value), (cloudpickle.dumps(tuple(value), protocol=5) if value else b"")
    raise TypeError(
        f"{where}: retry_exceptions must be either a boolean or a list of exception "
        f"classes, got {value!r}")


# --- cluster -------------------------------------------------------------------


def nodes() -> list[dict[str, Any]]:
    """The nodes of the cluster, as ``ray.nodes()`` shapes them."""
    return list(get_context().nodes())


def cluster_resources() -> dict[str, float]:
    """The total resources of the alive nodes."""
    return dict(get_context().cluster_resources())


def available_resources() -> dict[str, float]:
    """The resources not in use right now."""
    return dict(get_context().available_resources())


class RuntimeContext:
    """What the calling worker knows about itself (Ray's ``RuntimeContext``)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx

    def get_job_id(self) -> str:
        return str(self._ctx.job_id)

    def get_node_id(self) -> str:
        return str(self._ctx.node_id)

    def get_task_id(self) -> str | None:
        """The running task's id; None on a driver."""
        spec = current_task_spec()  # per call: right in threaded and async actors too
        task_id = spec.task_id if spec is not None else self._ctx.current_task_id
        return None if task_id is None else str(task_id)

    def get_task_name(self) -> str | None:
        spec = current_task_spec()
        return spec.name if spec is not None else None

    def get_actor_id(self) -> str | None:
        """The actor's id; None outside an actor."""
        actor_id = self._ctx.current_actor_id
        return None if actor_id is None else str(actor_id)

    def get_worker_id(self) -> str:
        return str(self._ctx.address)

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    @property
    def actor_id(self) -> str | None:
        return self.get_actor_id()

    @property
    def namespace(self) -> str:
        return ""

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor has been restarted (its constructor ran more than once)."""
        return int(getattr(self._ctx, "current_actor_restarts", 0) or 0) > 0

    def get(self) -> dict[str, Any]:
        """The old dictionary form: job, node, and task or actor ids."""
        context: dict[str, Any] = {"job_id": self.get_job_id(), "node_id": self.get_node_id()}
        if self.get_task_id() is not None:
            context["task_id"] = self.get_task_id()
        if self.get_actor_id() is not None:
            context["actor_id"] = self.get_actor_id()
        return context


def get_runtime_context() -> RuntimeContext:
    """The calling worker's runtime context (job, node, task, actor ids)."""
    return RuntimeContext(get_context())


# --- actors (issue #4) ---------------------------------------------------------

_METHOD_OPTIONS = (
    "num_returns", "concurrency_group", "max_task_retries", "retry_exceptions",
    "_generator_backpressure_num_objects", "enable_task_events", "tensor_transport",
)


def method(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """Annotates an actor method with options (``@shoal.method(num_returns=2)``).

    The options are recorded on the function; actor classes read them.
    """
    if args or not kwargs:
        raise TypeError(
            "The @method decorator must be applied using at least one of the arguments in "
            f"the list {list(_METHOD_OPTIONS)}, for example '@shoal.method(num_returns=2)'.")
    for key in kwargs:
        if key not in _METHOD_OPTIONS:
            raise ValueError(
                f"Unexpected keyword argument to @method: '{key}'. The supported keyword "
                f"arguments are {list(_METHOD_OPTIONS)}")
    if "retry_exceptions" in kwargs:
        retry_exception_fields(kwargs["retry_exceptions"], "@method")  # fails early if bad
    group = kwargs.get("concurrency_group", "")
    if not isinstance(group, str):
        raise TypeError(f"@method: concurrency_group must be the name of one of the actor's "
                        f"concurrency_groups, got {group!r}")
    retries = kwargs.get("max_task_retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < -1:
        raise ValueError(f"@method: max_task_retries must be an integer >= -1 (-1: retry "
                         f"forever), got {retries!r}")

    def annotate(function: Any) -> Any:
        function.__shoal_method_options__ = dict(kwargs)
        if "num_returns" in kwargs:
            function.__ray_num_returns__ = kwargs["num_returns"]
        return function

    return annotate


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Kills an actor (see ``actor.kill``)."""
    from shoal.runtime.api.actor import kill as kill_actor

    kill_actor(actor, no_restart=no_restart)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """A handle to the live actor named ``name`` (see ``actor.get_actor``)."""
    from shoal.runtime.api.actor import get_actor as lookup

    return lookup(name, namespace)


# --- init / shutdown -------------------------------------------------------------


def set_host_starter(starter: HostStarter | None) -> None:
    """Registers how ``init()`` starts or joins a cluster (the production host does)."""
    global _host_starter
    _host_starter = starter


def init(address: str | None = None, *, ignore_reinit_error: bool = False,
         **kwargs: Any) -> dict[str, Any]:
    """Connects this process to a cluster (Ray's ``ray.init``).

    Inside a simulation it does nothing: the simulator has bound the cluster.

    Returns:
        A small description of the connection (``node_id``, ``address``, ``job_id``).

    Raises:
        RuntimeError: already initialized (unless ``ignore_reinit_error``).
        NotImplementedError: no production host is available yet.
    """
    global _host_stop
    bound = thread_context()
    if bound is not None:
        return _describe(bound)
    with _init_lock:
        existing = global_context()
        if existing is not None:
            if ignore_reinit_error:
                return _describe(existing)
            raise RuntimeError(
                "Maybe you called shoal.init twice by accident? This error can be suppressed "
                "by passing in 'ignore_reinit_error=True' or by calling 'shoal.shutdown()' "
                "prior to 'shoal.init()'.")
        if _host_starter is None:
            raise NotImplementedError(
                "shoal.init(): the production host is not built yet, so shoal cannot start or "
                "join a real cluster. Run the program on the simulator instead: "
                "shoal.sim.Simulation(seed=0).run(main), where main() uses the shoal API.")
        ctx, stop = _host_starter(address, **kwargs)
        set_global_context(ctx)
        _host_stop = stop
        return _describe(ctx)


def _describe(ctx: WorkerContext) -> dict[str, Any]:
    return {"node_id": str(ctx.node_id), "address": str(ctx.address), "job_id": str(ctx.job_id)}


def shutdown() -> None:
    """Disconnects from the cluster started or joined by ``init`` (no-op in a simulation)."""
    global _host_stop
    if thread_context() is not None:
        return
    with _init_lock:
        stop, _host_stop = _host_stop, None
        set_global_context(None)
    if stop is not None:
        stop()


def is_initialized() -> bool:
    """Whether API calls in this thread have a cluster to talk to."""
    return current_context() is not None
