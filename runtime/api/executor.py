"""Running one task's user code in the executing worker, host-agnostic.

The host calls ``execute(spec, args, function, ctx)`` when its core worker asks
it to (``ExecuteTask``), in the thread where user code runs, and hands the
returned ``TaskExecuted`` back to the kernel. ``execute`` blocks for as long as
the task runs; it binds ``ctx`` to the calling thread meanwhile (so ``get``,
``put`` and ``.remote()`` inside the task use it) and records the running spec
(``current_task_spec()``, which gives nested tasks their depth).

Steps: load the function (cached by ``function_id``, at most ``FUNCTIONS_MAX``
of them), deserialize the arguments (top-level refs arrive already resolved to
their values' payloads, in the same positions; the last ``len(kwarg_names)``
are keyword arguments), call, split the result into ``num_returns`` values
(the result is ignored for ``num_returns=0``; a count that does not match fails
the task with a ``ValueError``), and serialize each return.

Any ``Exception`` (from user code, argument loading or return serialization)
fails every return with ``ObjectError(kind="task_error")`` whose ``data`` is the
pickled ``RayTaskError``; ``retryable_error`` is set when the spec retries
exceptions and the exception is in its allowlist (or there is none). A
``TaskCancelledError`` (or ``KeyboardInterrupt``) that the host raised in the
task fails it with ``kind="task_cancelled"``, never retried. Other
``BaseException``s (``SystemExit``, the simulator's ``SimulationExit``) are not
caught: the host decides what they mean.

Streaming tasks (``spec.streaming``, issue 5): the function must return a
generator; each value it yields is serialized and handed to the host at once
with ``ctx.report_stream_item`` (item ``i`` is object ``stream_item_id(task,
i)``), and the task's one return (its stream's head) is None, or the error
that ended it; ``stream_count`` says how many items were yielded.

``execute_async`` is the same for a coroutine function (an async actor's
method): awaited on the calling thread's event loop, it runs the call as one
asyncio task among others. What belongs to one call (the bound context, the
running spec, the refs it unpickled) lives in ``contextvars``, which each
asyncio task copies, so calls that interleave at their ``await``s never see
each other's; on a plain thread a context variable behaves as a thread-local.
A call cancelled through its asyncio task (``CancelledError``) fails as
``task_cancelled``, like an interrupted task.

``borrowed``: the refs unpickled while the task ran (from its arguments or from
values it fetched) that are still alive when it returns, except those this
worker owns; the owner then counts this worker as a borrower of them.
"""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final

from shoal.kernel.core_worker.protocol import ErrorKind, ObjectError, ObjectResult, TaskExecuted
from shoal.kernel.core_worker.streams import stream_item_id
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec
from shoal.runtime.api.context import WorkerContext, bind_thread_context
from shoal.runtime.api.exceptions import RaySystemError, TaskCancelledError
from shoal.runtime.api.serialization import (
    collecting_refs,
    deserialize,
    serialize,
    serialize_error,
)

__all__ = ["FUNCTIONS_MAX", "current_task_spec", "execute", "execute_async", "load_function"]

FUNCTIONS_MAX: Final = 1024  # deserialized functions kept per process, least recent dropped
_THIS_FILE: Final = __file__

_functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
_functions_lock = threading.Lock()
_running_spec: ContextVar[TaskSpec | None] = ContextVar("shoal_running_spec", default=None)
_CANCELLED: Final = (TaskCancelledError, KeyboardInterrupt, asyncio.CancelledError)


def current_task_spec() -> TaskSpec | None:
    """The spec of the task the calling thread (or asyncio task) runs, or None (a driver)."""
    return _running_spec.get()


def load_function(function_id: str, function: bytes) -> Callable[..., Any]:
    """The function with this id: from the cache, else unpickled from ``function``.

    Raises:
        RaySystemError: the function is not cached and ``function`` is empty.
    """
    with _functions_lock:
        cached = _functions.get(function_id)
        if cached is not None:
            _functions.move_to_end(function_id)
            return cached
    if not function:
        raise RaySystemError(
            f"the code of function {function_id} never reached this worker; this is a bug "
            "in shoal")
    loaded = pickle.loads(function)
    with _functions_lock:
        _functions[function_id] = loaded
        while len(_functions) > FUNCTIONS_MAX:
            _functions.popitem(last=False)
    return loaded  # type: ignore[no-any-return]


def execute(spec: TaskSpec, args: tuple[Payload, ...], function: bytes,
            ctx: WorkerContext, *, target: Callable[..., Any] | None = None,
            keep_alive: list[Any] | None = None) -> TaskExecuted:
    """Runs one task's user code in the calling thread and reports its outcome.

    Args:
        spec: the task.
        args: one payload per ``spec.args`` entry, refs already resolved.
        function: the cloudpickled function (may be empty once cached).
        ctx: the worker context user code in this task should use.
        target: what to call instead of the function ``spec`` names (an actor's
            bound method, or its constructor); ``function`` is then unused.
        keep_alive: if given, the return values are appended to it, for the host to
            keep until it has handed the ``TaskExecuted`` to its kernel: refs this
            worker owns nested in them must stay counted until the kernel has made
            the owner their borrower (else dropping them first frees them).

    Returns:
        The ``TaskExecuted`` input for the worker's core worker.
    """
    previous_ctx = bind_thread_context(ctx)
    token = _running_spec.set(spec)
    try:
        with collecting_refs() as rebuilt:
            count = 0
            if spec.streaming:
                results, retryable, count = _run_streaming(spec, args, function, target, ctx)
            else:
                results, retryable = _run(spec, args, function, target, keep_alive)
        borrowed = _still_held(rebuilt, ctx.address)
    finally:
        _running_spec.reset(token)
        bind_thread_context(previous_ctx)
    return TaskExecuted(task_id=spec.task_id, attempt=spec.attempt, results=results,
                        retryable_error=retryable, borrowed=borrowed, stream_count=count)


async def execute_async(spec: TaskSpec, args: tuple[Payload, ...], ctx: WorkerContext, *,
                        target: Callable[..., Any],
                        keep_alive: list[Any] | None = None) -> TaskExecuted:
    """``execute`` for a target that may return an awaitable (an ``async def`` method).

    Awaited in an asyncio task (which has its own copy of the context variables),
    it binds ``ctx`` and the running spec for this call only; a plain result (a
    sync method of an async actor) is taken as is.
    """
    previous_ctx = bind_thread_context(ctx)
    previous_spec = _running_spec.get()
    _running_spec.set(spec)
    try:
        with collecting_refs() as rebuilt:
            try:
                outputs = _call(spec, args, b"", target)
                if inspect.isawaitable(outputs):
                    outputs = await outputs
                results, retryable = _returns(spec, outputs, keep_alive), False
            except _CANCELLED as exc:
                results, retryable = _cancelled(spec, exc), False
            except Exception as exc:  # noqa: BLE001 - user code may raise anything
                results, retryable = _errored(spec, exc)
        borrowed = _still_held(rebuilt, ctx.address)
    finally:
        # set, not reset(token): a coroutine closed when its process dies unwinds
        # outside its task's context, where a token of that context is refused.
        _running_spec.set(previous_spec)
        bind_thread_context(previous_ctx)
    return TaskExecuted(task_id=spec.task_id, attempt=spec.attempt, results=results,
                        retryable_error=retryable, borrowed=borrowed)


def _run(spec: TaskSpec, args: tuple[Payload, ...], function: bytes,
         target: Callable[..., Any] | None = None, keep_alive: list[Any] | None = None,
         ) -> tuple[tuple[ObjectResult, ...], bool]:
    try:
        return _returns(spec, _call(spec, args, function, target), keep_alive), False
    except _CANCELLED as exc:
        return _cancelled(spec, exc), False
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        return _errored(spec, exc)


def _run_streaming(spec: TaskSpec, args: tuple[Payload, ...], function: bytes,
                   target: Callable[..., Any] | None, ctx: WorkerContext,
                   ) -> tuple[tuple[ObjectResult, ...], bool, int]:
    """Runs a streaming task: reports each yielded value as it comes; returns the
    head's outcome, whether its error is retryable, and the number of items."""
    count = 0
    report = getattr(ctx, "report_stream_item", None)
    outputs: Any = None
    try:
        if report is None:
            raise RaySystemError(f"this host ({type(ctx).__name__}) cannot run streaming "
                                 "generator tasks yet")
        outputs = _call(spec, args, function, target)
        if not inspect.isgenerator(outputs):
            raise TypeError(
                f"task {spec.name} has num_returns='streaming' but returned a "
                f"{type(outputs).__name__}, not a generator: make it yield its values, or "
                "give it an integer num_returns")
        for value in outputs:
            payload = serialize(value, what=f"item {count} of generator task {spec.name}")
            report(spec, count, ObjectResult(object_id=stream_item_id(spec.task_id, count),
                                             value=payload))
            # Only now: refs in the value stay counted here until the kernel has the item
            # (and has made its owner a borrower of those this worker owns).
            del value
            count += 1
        head = ObjectResult(object_id=spec.return_ids[0], value=serialize(None))
        return (head,), False, count
    except _CANCELLED as exc:
        return _cancelled(spec, exc), False, count
    except Exception as exc:  # noqa: BLE001 - user code may raise anything
        results, retryable = _errored(spec, exc)
        return results, retryable, count
    finally:
        if inspect.isgenerator(outputs):
            outputs.close()  # its frame's locals (and their refs) go now


def _returns(spec: TaskSpec, outputs: Any,
             keep_alive: list[Any] | None = None) -> tuple[ObjectResult, ...]:
    values = _split(spec, outputs)
    if keep_alive is not None:
        keep_alive.append(values)
    return tuple(
        ObjectResult(object_id=object_id, value=serialize(
            value, what=f"return value {index} of task {spec.name}"))
        for index, (object_id, value) in enumerate(zip(spec.return_ids, values, strict=True)))


def _cancelled(spec: TaskSpec, exc: BaseException) -> tuple[ObjectResult, ...]:
    message = f"task {spec.name} ({spec.task_id}) was cancelled while it ran"
    return _failed(spec, "task_cancelled", message, exc)


def _errored(spec: TaskSpec, exc: Exception) -> tuple[tuple[ObjectResult, ...], bool]:
    message = f"task {spec.name} raised {type(exc).__name__}: {exc}"
    return _failed(spec, "task_error", message, exc), _retryable(spec, exc)


def _call(spec: TaskSpec, args: tuple[Payload, ...], function: bytes,
          target: Callable[..., Any] | None = None) -> Any:
    user_function = target if target is not None else load_function(spec.function_id, function)
    values = [deserialize(payload) for payload in args]
    split = len(values) - len(spec.kwarg_names)
    kwargs = dict(zip(spec.kwarg_names, values[split:], strict=True))
    positional = values[:split]
    del values
    return user_function(*positional, **kwargs)


def _split(spec: TaskSpec, outputs: Any) -> list[Any]:
    wanted = spec.num_returns
    if wanted == 0:
        return []
    if wanted == 1:
        return [outputs]
    if inspect.isgenerator(outputs):
        outputs = list(outputs)  # as in Ray: a generator may yield the num_returns values
    try:
        count = len(outputs)
    except TypeError:
        raise ValueError(
            f"Task {spec.name} returned a single {type(outputs).__name__}, but "
            f"num_returns={wanted}: return a list or tuple of {wanted} values") from None
    if count != wanted:
        raise ValueError(f"Task returned {count} objects, but num_returns={wanted}.")
    return list(outputs)


def _failed(spec: TaskSpec, kind: ErrorKind, message: str,
            exc: BaseException) -> tuple[ObjectResult, ...]:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and (
            tb.tb_frame.f_code.co_filename == _THIS_FILE):
        tb = tb.tb_next  # the user's frames are what matter, not ours
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if kind == "task_cancelled":
        cancelled = TaskCancelledError(spec.task_id, message)
        data = pickle.dumps(cancelled)
    else:
        data = serialize_error(exc, spec.name, text)
    if exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)  # drop the frames' locals (and their refs)
    error = ObjectError(kind=kind, message=message, data=data)
    return tuple(ObjectResult(object_id=object_id, error=error) for object_id in spec.return_ids)


def _retryable(spec: TaskSpec, exc: Exception) -> bool:
    if not spec.retry_exceptions:
        return False
    if not spec.retry_exception_allowlist:
        return True
    try:
        allowed = pickle.loads(spec.retry_exception_allowlist)
    except Exception:  # noqa: BLE001 - an unreadable allowlist retries nothing
        return False
    return isinstance(exc, tuple(allowed))


def _still_held(rebuilt: list[weakref.ref[Any]], me: Address) -> tuple[ObjectRefInfo, ...]:
    held: dict[str, ObjectRefInfo] = {}
    for weak in rebuilt:
        ref = weak()
        if ref is not None and ref.info.owner != me:
            held.setdefault(ref.info.object_id, ref.info)
    return tuple(held.values())
