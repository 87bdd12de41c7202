"""Actor classes, handles and methods: ``@remote`` on a class, as Ray's actors.

``ActorClass.remote(*args)`` builds the actor's ``ActorSpec`` (the actor id
from the context's task counter, the class pickled once, the constructor's
arguments serialized as a task's are, Ray's resource defaults from
``options.py``), makes the *handle ref* (an ``ObjectRef`` to the actor's handle
object, owned by the creator: it is how the creator's core worker counts the
handles, here and in every process a handle is passed to), and registers the
actor through the context, which waits for the GCS to answer. It returns an
``ActorHandle``: for a name already taken it raises ``ValueError``, unless
``get_if_exists=True``, which returns a handle to the actor holding the name.

``handle.method.remote(*args)`` builds a ``TaskSpec`` for the call
(``function_id`` is the method's name, ``resources`` empty: an actor's calls use
what the actor holds) and submits it through the context; the context may
refuse it at once with ``PendingCallsLimitExceeded``. A handle pickles to its
actor's identity and handle ref, so handles pass to tasks and other actors.

On the actor's worker the host calls ``create_instance`` (the constructor,
once per incarnation) and ``execute_method`` (each call), both through the
task executor, so return values, errors and borrowed refs behave as for tasks.

Async actors (issue #4/#5): a class with an ``async def`` method
(``is_async_class``) gets ``max_concurrency=1000`` unless set; its host runs
every call, sync methods included, on one asyncio event loop with
``execute_method_async`` (awaited in an asyncio task per call), so calls
interleave at their ``await``s and may ``await`` object refs.

Not supported yet: concurrency groups, async generator methods.
Named actors are not stopped when their handles are dropped (they live until
killed, or until their owner dies unless detached), and neither are handles
from ``get_actor``, which do not count.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
from shoal.kernel.core_worker.actor_protocol import (
    ActorInstanceCreated,
    ActorRequestCompleted,
    ActorTaskExecuted,
    handle_object_id,
)
from shoal.kernel.gcs.actor_protocol import ActorDeathCause, ActorHandleInfo, ActorSpec, MethodMeta
from shoal.kernel.ids import ActorId
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import Payload, TaskSpec
from shoal.runtime.api.context import ActorContext, WorkerContext, get_context
from shoal.runtime.api.executor import current_task_spec, execute, execute_async, load_function
from shoal.runtime.api.object_ref import ObjectRef
from shoal.runtime.api.options import (
    merge_options,
    resolve_actor_options,
    validate_actor_options,
)
from shoal.runtime.api.remote_function import RemoteFunction

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorMethod",
    "create_instance",
    "execute_method",
    "execute_method_async",
    "get_actor",
    "is_async_class",
    "kill",
]

_METHOD_CALL_OPTIONS = ("num_returns", "max_task_retries", "name", "retry_exceptions",
                        "concurrency_group")


def _retry_fields(value: Any, where: str) -> tuple[bool, bytes]:
    from shoal.runtime.api.api import retry_exception_fields  # lazily: no import cycle

    return retry_exception_fields(value, where)


def _note_actor_call_refs(refs: list[ObjectRef]) -> None:
    from shoal.runtime.api.api import note_actor_call_refs

    note_actor_call_refs(refs)


def _methods_of(cls: type) -> tuple[MethodMeta, ...]:
    metas: list[MethodMeta] = []
    for name, member in inspect.getmembers(cls, predicate=inspect.isfunction):
        if name.startswith("__") and name != "__call__":
            continue
        num_returns = getattr(member, "__ray_num_returns__", None)
        # A generator method streams unless given an integer num_returns (issue 5).
        streaming = num_returns == "streaming" or (
            num_returns is None and inspect.isgeneratorfunction(member))
        num_returns = 1 if streaming or num_returns is None else num_returns
        opts = getattr(member, "__shoal_method_options__", {})  # retry options (api.method)
        retry, allowlist = _retry_fields(opts.get("retry_exceptions", False), f"method {name}")
        metas.append(MethodMeta(name=name, num_returns=int(num_returns), streaming=streaming,
                                retry_exceptions=retry,
                                retry_exception_allowlist=allowlist,
                                max_task_retries=opts.get("max_task_retries"),
                                concurrency_group=opts.get("concurrency_group") or ""))
    return tuple(metas)


def is_async_class(cls: type) -> bool:
    """Whether ``cls`` makes an async actor: it has an ``async def`` method (as in Ray)."""
    return any(inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
               for _, member in inspect.getmembers(cls, predicate=inspect.isfunction))


class ActorClass:
    """A class decorated with ``@remote``: ``.remote()`` creates an actor."""

    def __init__(self, cls: type, options: dict[str, Any],
                 pickled: tuple[bytes, str] | None = None) -> None:
        self._cls = cls
        self._default_options = dict(options)
        self._pickled = pickled
        self._methods = _methods_of(cls)
        self._is_async = is_async_class(cls)
        self._class_name = f"{cls.__module__}.{cls.__qualname__}"
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __repr__(self) -> str:
        return f"ActorClass({self._class_name})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Actors cannot be instantiated directly. Instead of "
            f"'{self.__name__}()', use '{self.__name__}.remote()'.")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorClass, (self._cls, self._default_options))

    def options(self, **options: Any) -> ActorClass:
        """A copy of this actor class with ``options`` layered over its own."""
        validate_actor_options(options, in_options=True)
        return ActorClass(self._cls, merge_options(self._default_options, options), self._pickled)

    def _pickle(self) -> tuple[bytes, str]:
        if self._pickled is None:
            try:
                data = _pickle_class(self._cls)
            except Exception as exc:
                raise TypeError(
                    f"Could not serialize the actor class {self._class_name}: "
                    f"{type(exc).__name__}: {exc}. An actor class must be picklable, with "
                    "everything it refers to: create locks, sockets and clients in __init__ "
                    "instead of capturing them.") from exc
            self._pickled = (data, hashlib.sha256(data).hexdigest())
        return self._pickled

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Creates the actor; returns its handle once the GCS has registered it.

        Raises:
            ValueError: its name is taken (without ``get_if_exists``), or the
                cluster refused it.
        """
        ctx = get_context()
        try:
            inspect.signature(self._cls).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self._class_name}.remote(): {exc}") from None
        except ValueError:
            pass  # no signature to check against
        resolved = resolve_actor_options(self._default_options, is_async=self._is_async)
        function, class_id = self._pickle()
        task_id = ctx.next_task_id()
        actor_id = ActorId(f"{task_id}.a")
        keep_alive: list[ObjectRef] = []
        what = f"the constructor of actor {self._class_name}"
        task_args = [RemoteFunction._arg(ctx, v, f"argument {i} of {what}", keep_alive)
                     for i, v in enumerate(args)]
        task_args += [RemoteFunction._arg(ctx, v, f"argument {k!r} of {what}", keep_alive)
                      for k, v in kwargs.items()]
        parent = current_task_spec()
        creation = TaskSpec(
            task_id=task_id, job_id=ctx.job_id, name=f"{self._class_name}.__init__",
            owner=ctx.address, function_id=class_id, args=tuple(task_args),
            kwarg_names=tuple(kwargs), num_returns=1, resources=dict(resolved.resources),
            max_retries=0, depth=(parent.depth + 1) if parent is not None else 1,
            affinity=resolved.affinity)
        namespace = resolved.namespace if resolved.namespace is not None else _namespace(ctx)
        spec = ActorSpec(
            actor_id=actor_id, creation=creation, class_name=self._class_name,
            placement=dict(resolved.placement), name=resolved.name,
            namespace=namespace if resolved.name else "", detached=resolved.detached,
            max_restarts=resolved.max_restarts, max_task_retries=resolved.max_task_retries,
            max_concurrency=resolved.max_concurrency,
            max_pending_calls=resolved.max_pending_calls, methods=self._methods,
            concurrency_groups=dict(resolved.concurrency_groups))
        handle_ref = ObjectRef(handle_object_id(actor_id), ctx.address)  # counted first
        done = _create(ctx, spec, function, resolved.get_if_exists)
        del keep_alive
        if done.error:
            raise ValueError(done.error)
        if done.created:
            info = ActorHandleInfo(
                actor_id=actor_id, class_name=self._class_name, owner=ctx.address,
                name=spec.name, namespace=spec.namespace,
                max_task_retries=spec.max_task_retries,
                max_pending_calls=spec.max_pending_calls, methods=self._methods,
                concurrency_groups=tuple(spec.concurrency_groups))
            return ActorHandle(info, handle_ref)
        assert done.handle is not None
        return ActorHandle(done.handle, None)


def _pickle_class(cls: type) -> bytes:
    """``cloudpickle`` bytes of ``cls`` that depend only on the class.

    cloudpickle tags a class it pickles by value with a random tracker id (so an
    unpickling process keeps one class object per class); a content hash in its
    place keeps that and makes the bytes, the class id and so the simulator's
    trace the same from run to run.
    """
    tracker = getattr(getattr(cloudpickle, "cloudpickle", None), "_DYNAMIC_CLASS_TRACKER_BY_CLASS",
                      None)
    by_id = getattr(getattr(cloudpickle, "cloudpickle", None), "_DYNAMIC_CLASS_TRACKER_BY_ID", None)
    lock = getattr(getattr(cloudpickle, "cloudpickle", None), "_DYNAMIC_CLASS_TRACKER_LOCK", None)
    if tracker is None or by_id is None or lock is None:
        return bytes(cloudpickle.dumps(cls, protocol=5))
    with lock:  # cloudpickle takes this lock itself: never pickle while holding it
        fresh = tracker.get(cls) is None
        if fresh:
            tracker[cls] = "shoal-class"
    if fresh:
        draft = bytes(cloudpickle.dumps(cls, protocol=5))
        tracker_id = "shoal-" + hashlib.sha256(draft).hexdigest()[:32]
        with lock:
            tracker[cls] = tracker_id
            by_id.setdefault(tracker_id, cls)
    return bytes(cloudpickle.dumps(cls, protocol=5))


_RUNS_ACTORS: dict[type, bool] = {}  # by context class: a Protocol isinstance costs ~5 µs


def _actors(ctx: WorkerContext) -> ActorContext:
    """The actor half of the context; a host that does not run actors yet says so."""
    runs_actors = _RUNS_ACTORS.get(type(ctx))
    if runs_actors is None:
        runs_actors = _RUNS_ACTORS[type(ctx)] = isinstance(ctx, ActorContext)
    if not runs_actors:
        raise NotImplementedError(
            f"this host ({type(ctx).__name__}) does not run actors yet; run the program on "
            "the simulator (shoal.sim.Simulation) to use actors")
    return ctx


def _create(ctx: WorkerContext, spec: ActorSpec, function: bytes,
            get_if_exists: bool) -> ActorRequestCompleted:
    return _actors(ctx).create_actor(spec, function, get_if_exists)


def _namespace(ctx: WorkerContext) -> str:
    namespace = getattr(ctx, "namespace", None)
    return str(namespace) if namespace else f"anonymous:{ctx.job_id}"


class ActorHandle:
    """A handle to an actor: call its methods with ``handle.method.remote(...)``."""

    def __init__(self, info: ActorHandleInfo, handle_ref: ObjectRef | None) -> None:
        self._info = info
        self._handle_ref = handle_ref
        self._method_metas = {meta.name: meta for meta in info.methods}

    @property
    def _actor_id(self) -> ActorId:
        return self._info.actor_id

    def __repr__(self) -> str:
        return f"Actor({self._info.class_name}, {self._info.actor_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._info.actor_id == self._info.actor_id

    def __hash__(self) -> int:
        return hash(self._info.actor_id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._info, self._handle_ref))

    def __getattr__(self, name: str) -> ActorMethod:
        metas = self.__dict__.get("_method_metas")
        if metas is None or name not in metas:
            raise AttributeError(f"'ActorHandle' object has no attribute '{name}'")
        return ActorMethod(self, metas[name], {})


class ActorMethod:
    """One method of an actor: ``.remote(...)`` calls it, ``.options(...)`` adjusts it."""

    def __init__(self, handle: ActorHandle, meta: MethodMeta, options: dict[str, Any]) -> None:
        self._handle = handle
        self._meta = meta
        self._options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running "
            f"'object.{self._meta.name}()', try 'object.{self._meta.name}.remote()'.")

    def options(self, **options: Any) -> ActorMethod:
        for key, value in options.items():
            if key not in _METHOD_CALL_OPTIONS:
                raise ValueError(f"Invalid option keyword {key} for an actor method. Valid "
                                 f"ones are {list(_METHOD_CALL_OPTIONS)}.")
            if key == "num_returns" and value != "streaming" and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"num_returns must be a non-negative integer or 'streaming', "
                                 f"got {value!r}")
        return ActorMethod(self._handle, self._meta, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submits one call; returns its ``ObjectRef``, a list of them, or None."""
        ctx = get_context()
        info = self._handle._info
        wanted = self._options.get("num_returns")
        streaming = wanted == "streaming" or (wanted is None and self._meta.streaming)
        num_returns = 1 if streaming else int(self._meta.num_returns if wanted is None else wanted)
        meta = self._meta
        retries = int(self._options.get("max_task_retries", info.max_task_retries
                                        if meta.max_task_retries is None else meta.max_task_retries))
        name = self._options.get("name") or f"{info.class_name}.{self._meta.name}"
        retry_exc, allowlist = meta.retry_exceptions, meta.retry_exception_allowlist
        if "retry_exceptions" in self._options:
            retry_exc, allowlist = _retry_fields(self._options["retry_exceptions"], name)
        group = str(self._options.get("concurrency_group", meta.concurrency_group))
        if group and group not in info.concurrency_groups:
            raise ValueError(
                f"{name}: concurrency group {group!r} is not one of the actor's "
                f"({', '.join(map(repr, info.concurrency_groups)) or 'it defines none'}); "
                "declare it with @shoal.remote(concurrency_groups={...})")
        keep_alive: list[ObjectRef] = []
        task_args = [RemoteFunction._arg(ctx, v, f"argument {i} of {name}", keep_alive)
                     for i, v in enumerate(args)]
        task_args += [RemoteFunction._arg(ctx, v, f"argument {k!r} of {name}", keep_alive)
                      for k, v in kwargs.items()]
        parent = current_task_spec()
        spec = TaskSpec(
            task_id=ctx.next_task_id(), job_id=ctx.job_id, name=name, owner=ctx.address,
            function_id=self._meta.name, args=tuple(task_args), kwarg_names=tuple(kwargs),
            num_returns=num_returns, resources={}, max_retries=retries,
            retry_exceptions=retry_exc, retry_exception_allowlist=allowlist,
            concurrency_group=group,
            depth=(parent.depth + 1) if parent is not None else 1, streaming=streaming)
        refs = [ObjectRef(object_id, ctx.address) for object_id in spec.return_ids]
        _note_actor_call_refs(refs)  # cancel refuses force=True for them
        _actors(ctx).submit_actor_task(info.actor_id, spec, retries, info.max_pending_calls)
        del keep_alive
        if streaming:
            from shoal.runtime.api.generator import ObjectRefGenerator  # issue 5

            return ObjectRefGenerator(refs[0], ctx)
        if num_returns == 1:
            return refs[0]
        return refs if refs else None


# --- the actor's worker: what a host calls -------------------------------------


def create_instance(spec: ActorSpec, num_restarts: int, args: tuple[Payload, ...],
                    function: bytes, ctx: WorkerContext) -> tuple[Any, ActorInstanceCreated]:
    """Runs the actor's constructor in the calling thread.

    Returns:
        The instance (None if the constructor raised) and the report for the kernel.
    """
    holder: list[Any] = []

    def construct(*a: Any, **k: Any) -> None:
        cls = load_function(spec.creation.function_id, function)
        holder.append(cls(*a, **k))

    executed = execute(spec.creation, args, b"", ctx, target=construct)
    error = next((r.error for r in executed.results if r.error is not None), None)
    cause = None
    if error is not None or not holder:
        message = error.message if error is not None else "no instance was made"
        cause = ActorDeathCause(kind="creation_failed", message=(
            f"actor {spec.actor_id} ({spec.class_name}) died: its constructor failed: "
            f"{message}. Calls to it fail; fix __init__ and create a new actor"),
            data=error.data if error is not None else b"")
    instance = holder[0] if holder else None
    report = ActorInstanceCreated(  # is_async: the host runs calls as cancellable coroutines
        actor_id=spec.actor_id, num_restarts=num_restarts, error=cause,
        is_async=instance is not None and is_async_class(type(instance)))
    return instance, report


def execute_method(instance: Any, actor_id: ActorId, spec: TaskSpec, args: tuple[Payload, ...],
                   ctx: WorkerContext, *,
                   keep_alive: list[Any] | None = None) -> ActorTaskExecuted:
    """Runs one call of method ``spec.function_id`` on ``instance`` in the calling thread.

    ``keep_alive``: as ``execute``'s: the return values, for the host to drop only
    after the kernel has the results (a returned ref this worker owns stays alive
    until the caller is registered as its borrower).
    """
    executed = execute(spec, args, b"", ctx, target=_method(instance, actor_id, spec),
                       keep_alive=keep_alive)
    return ActorTaskExecuted(actor_id=actor_id, task_id=executed.task_id,
                             attempt=executed.attempt, results=executed.results,
                             borrowed=executed.borrowed, retryable_error=executed.retryable_error,
                             stream_count=executed.stream_count)


async def execute_method_async(instance: Any, actor_id: ActorId, spec: TaskSpec,
                               args: tuple[Payload, ...], ctx: WorkerContext, *,
                               keep_alive: list[Any] | None = None) -> ActorTaskExecuted:
    """Runs one call of an async actor: await it in its own asyncio task on the actor's loop.

    A coroutine method is awaited (other calls run meanwhile); a sync method runs
    at once, on the loop's thread, as in Ray. The report is ``execute_method``'s.
    """
    if spec.streaming:  # a sync generator method runs on the loop's thread, as in Ray
        return execute_method(instance, actor_id, spec, args, ctx, keep_alive=keep_alive)
    executed = await execute_async(spec, args, ctx, target=_method(instance, actor_id, spec),
                                   keep_alive=keep_alive)
    return ActorTaskExecuted(actor_id=actor_id, task_id=executed.task_id,
                             attempt=executed.attempt, results=executed.results,
                             borrowed=executed.borrowed, retryable_error=executed.retryable_error)


def _method(instance: Any, actor_id: ActorId, spec: TaskSpec) -> Any:
    method = getattr(instance, spec.function_id, None)
    if method is None:
        def missing(*a: Any, **k: Any) -> None:
            raise AttributeError(
                f"actor {actor_id} ({type(instance).__name__}) has no method "
                f"{spec.function_id!r}")
        method = missing
    return method


# --- public functions --------------------------------------------------------------


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kills an actor at once: running calls fail, its worker is stopped.

    With ``no_restart=False`` an actor that has restarts left restarts (its
    constructor runs again); otherwise it is dead for good.

    Raises:
        ValueError: ``actor`` is not an actor handle.
    """
    if not isinstance(actor, ActorHandle):
        raise ValueError(  # noqa: TRY004 - Ray raises ValueError here
            "shoal.kill() only supported for actors. For tasks, try shoal.cancel(). "
            f"Got: {type(actor)}.")
    ctx = get_context()
    _actors(ctx).kill_actor(actor._actor_id, bool(no_restart))


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """A handle to the live actor registered under ``name``.

    Raises:
        ValueError: no live actor has that name in that namespace.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError(f"namespace must be None or a string, got {type(namespace)}")
    ctx = get_context()
    space = namespace if namespace is not None else _namespace(ctx)
    done = _actors(ctx).get_named_actor(name, space)
    if done.handle is None or (done.info is not None and done.info.state == "DEAD"):
        raise ValueError(f"Failed to look up actor with name '{name}' in namespace "
                         f"'{space}': no live actor has that name there. Check the name and "
                         "namespace, and that the actor was created and not killed.")
    return ActorHandle(done.handle, None)


def owner_of(handle: ActorHandle) -> Address:
    """The core worker that created (owns) the actor."""
    return handle._info.owner
