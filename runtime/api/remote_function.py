"""``@remote`` functions: turning ``f.remote(*args, **kwargs)`` into a ``TaskSpec``.

``remote`` works both bare (``@remote``) and with options
(``@remote(num_cpus=2)``). On a function it returns a ``RemoteFunction``; on a
class, an ``ActorClass`` (``actor.py``).

``f.remote(...)`` checks the arguments against the function's signature, then
builds the spec: a task id from the context's counter; the function pickled
once (lazily, at the first call, so globals defined after the decorator are
captured) and named by its sha256; every argument serialized in place, except
an ``ObjectRef`` at the top level (positional or keyword), which becomes
``TaskArg(ref=...)`` for the kernel to resolve to its value before the task
runs. Keyword arguments go last, named by ``kwarg_names``. A value bigger than
the inline limit is ``put`` first and passed by ref, as Ray does.

It then creates the return refs (counted by the context), submits the task,
and returns one ``ObjectRef`` (``num_returns=1``), a list of them
(``num_returns > 1``), or None (``num_returns=0``), as Ray does. A generator
function (unless given an integer ``num_returns``) or ``num_returns="streaming"``
makes a streaming task: ``.remote()`` returns an ``ObjectRefGenerator``
(``generator.py``, issue 5).
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
from shoal.kernel.task_spec import INLINE_BYTES_MAX, TaskArg, TaskSpec
from shoal.runtime.api.context import WorkerContext, get_context
from shoal.runtime.api.executor import current_task_spec
from shoal.runtime.api.object_ref import ObjectRef
from shoal.runtime.api.options import (
    TASK_OPTIONS,
    TaskOptions,
    merge_options,
    resolve_task_options,
    validate_task_options,
)
from shoal.runtime.api.serialization import serialize

__all__ = ["RemoteFunction", "make_remote", "remote"]

BOUND_SHAPES_MAX = 64
_REMOTE_ARGS_ERROR = (
    "The @remote decorator must be applied either with no arguments and no parentheses, "
    "for example '@shoal.remote', or it must be applied using some of the arguments in "
    "the list {valid}, for example '@shoal.remote(num_returns=2, "
    "resources={{\"CustomResource\": 1}})'.")


class _PickledFunction:
    """A function's cloudpickled bytes and their sha256, computed once, on first use."""

    __slots__ = ("_data", "_function", "_function_id", "_lock")

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._function_id = ""

    def get(self, function_name: str) -> tuple[bytes, str]:
        with self._lock:
            if self._data is None:
                try:
                    data = bytes(cloudpickle.dumps(self._function, protocol=5))
                except Exception as exc:
                    raise TypeError(
                        f"Could not serialize the function {function_name} for a task: "
                        f"{type(exc).__name__}: {exc}. A remote function must be picklable, "
                        "with everything it refers to: create locks, sockets and clients "
                        "inside it instead of capturing them.") from exc
                self._function_id = hashlib.sha256(data).hexdigest()
                self._data = data
            return self._data, self._function_id


class RemoteFunction:
    """A function decorated with ``@remote``: call ``.remote()`` to run it as a task."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any],
                 pickled: _PickledFunction | None = None) -> None:
        self._function = function
        module = getattr(function, "__module__", None) or "__main__"
        qualname = getattr(function, "__qualname__", None) or getattr(
            function, "__name__", type(function).__name__)
        self._function_name = f"{module}.{qualname}"
        self._default_options = dict(options)
        self._resolved: TaskOptions = resolve_task_options(
            self._default_options, generator=inspect.isgeneratorfunction(function))
        self._pickled = pickled if pickled is not None else _PickledFunction(function)
        self._bound_shapes: dict[object, None] = {}  # argument shapes known to bind
        try:
            self._signature: inspect.Signature | None = inspect.signature(function)
        except (TypeError, ValueError):  # builtins and some C callables have none
            self._signature = None
        self.__name__ = getattr(function, "__name__", qualname)
        self.__qualname__ = qualname
        self.__module__ = module
        self.__doc__ = getattr(function, "__doc__", None)

    def __repr__(self) -> str:
        return f"RemoteFunction({self._function_name})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A task that calls another remote function carries it by value: send the
        # function and its options, not the lock and cache of this process.
        return (RemoteFunction, (self._function, self._default_options))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Remote functions cannot be called directly. Instead of running "
            f"'{self._function_name}()', try '{self._function_name}.remote()'.")

    def options(self, **options: Any) -> RemoteFunction:
        """A copy of this remote function with ``options`` layered over its own."""
        validate_task_options(options, in_options=True)
        return RemoteFunction(self._function, merge_options(self._default_options, options),
                              self._pickled)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submits one task; returns its ``ObjectRef``, a list of them, or None."""
        return self._remote(args, kwargs)

    def _remote(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ctx = get_context()
        if self._signature is not None:
            # Whether arguments bind depends only on their count and keyword names.
            shape = (len(args), tuple(kwargs)) if kwargs else len(args)
            if shape not in self._bound_shapes:
                try:
                    self._signature.bind(*args, **kwargs)
                except TypeError as exc:
                    raise TypeError(f"{self._function_name}.remote(): {exc}") from None
                if len(self._bound_shapes) < BOUND_SHAPES_MAX:
                    self._bound_shapes[shape] = None
        function, function_id = self._pickled.get(self._function_name)
        resolved = self._resolved
        name = resolved.name or self._function_name
        keep_alive: list[ObjectRef] = []  # refs to put arguments, until the spec is submitted
        task_args = [self._arg(ctx, value, f"argument {i} of task {name}", keep_alive)
                     for i, value in enumerate(args)]
        task_args += [self._arg(ctx, value, f"argument {key!r} of task {name}", keep_alive)
                      for key, value in kwargs.items()]
        parent = current_task_spec()
        spec = TaskSpec(
            task_id=ctx.next_task_id(), job_id=ctx.job_id, name=name, owner=ctx.address,
            function_id=function_id, args=tuple(task_args), kwarg_names=tuple(kwargs),
            num_returns=resolved.num_returns, resources=dict(resolved.resources),
            max_retries=resolved.max_retries, retry_exceptions=resolved.retry_exceptions,
            retry_exception_allowlist=resolved.retry_exception_allowlist,
            depth=(parent.depth + 1) if parent is not None else 1, affinity=resolved.affinity,
            streaming=resolved.streaming)
        # The refs exist (and are counted) before the task does: see context.py.
        refs = [ObjectRef(object_id, ctx.address) for object_id in spec.return_ids]
        ctx.submit_task(spec, function)
        del keep_alive
        if spec.streaming:
            from shoal.runtime.api.generator import ObjectRefGenerator  # issue 5

            return ObjectRefGenerator(refs[0], ctx)
        if spec.num_returns == 1:
            return refs[0]
        return refs if refs else None

    @staticmethod
    def _arg(ctx: WorkerContext, value: Any, what: str, keep_alive: list[ObjectRef]) -> TaskArg:
        if isinstance(value, ObjectRef):
            return TaskArg(ref=value.info)
        payload = serialize(value, what=what)
        if len(payload.data) <= INLINE_BYTES_MAX:
            return TaskArg(value=payload)
        ref = ObjectRef(ctx.next_object_id(), ctx.address)
        ctx.put_object(ref.object_id, payload)
        keep_alive.append(ref)
        return TaskArg(ref=ref.info)


def make_remote(target: Any, options: dict[str, Any]) -> Any:
    """Wraps a function (a ``RemoteFunction``) or a class (an ``ActorClass``) with
    validated ``options``."""
    if inspect.isclass(target):
        from shoal.runtime.api.actor import ActorClass  # actor.py builds on this module
        from shoal.runtime.api.options import validate_actor_options

        validate_actor_options(options, in_options=False)
        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(
            f"@remote must be applied to a function or a class, not {type(target).__name__}")
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise ValueError(
            "'async def' should not be used for remote tasks: async functions are not "
            "supported as tasks yet; make it a plain def, or call asyncio.run(...) inside it")
    validate_task_options(options, in_options=False)
    return RemoteFunction(target, options)


def remote(*args: Any, **kwargs: Any) -> Any:
    """Defines a remote function or an actor class, as Ray's ``@ray.remote``.

    Usable bare, ``@remote``, or with options, ``@remote(num_cpus=2, max_retries=0)``.

    Raises:
        TypeError: called with something else than one function, or only options.
        ValueError: an unknown option or a bad value (see ``options.py``).
    """
    if len(args) == 1 and not kwargs and callable(args[0]):
        return make_remote(args[0], {})
    if args or not kwargs:
        raise TypeError(_REMOTE_ARGS_ERROR.format(valid=list(TASK_OPTIONS)))

    def decorator(target: Any) -> Any:
        return make_remote(target, kwargs)

    return decorator
