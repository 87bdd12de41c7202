"""User values to ``Payload`` and back, tracking the object refs nested inside.

``serialize(value)`` pickles with cloudpickle at protocol 5 (so lambdas, local
functions and classes from ``__main__`` travel by value). While it runs, every
``ObjectRef`` that gets pickled (``ObjectRef.__reduce__``) records itself into
the innermost active recorder of this thread; the recorded refs become
``Payload.contained``, so the receiver knows what it now borrows and the owner
keeps those objects alive while the payload does. Values of a few exact atomic
types go through plain ``pickle``, which is several times faster for them.

``deserialize(payload)`` unpickles (cloudpickle output is plain pickle data).
Each ``ObjectRef`` rebuilt on the way registers with the current worker context
(``ref_added``) and is noted by any active ``collecting_refs()`` block, which
the executor uses to find refs a task still holds after it returns.

Out-of-band buffers. A host whose worker context has a ``buffer_codec`` (see
``BufferCodec``; the production host's writes into the node's shared-memory
store) gets large contiguous buffers (numpy arrays...) out of band: pickle
hands them over without copying, and ``codec.encode`` lays the pickle stream
and the buffers out wherever the host wants them (one copy, straight into the
store), returning the bytes-like ``Payload.data``. ``deserialize`` asks the
codec to ``decode`` such data back into the stream and views of the buffers, so
arrays come back zero-copy (and read-only, from read-only memory). Without a
codec (the simulator) buffers stay in band and a ``Payload`` is one ``bytes``.

``serialize_error``/``deserialize_error`` carry a task's exception as a pickled
``RayTaskError`` (falling back to a description when the exception itself
cannot be pickled or unpickled).
"""

from __future__ import annotations

import pickle
import threading
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final, Protocol

import cloudpickle  # type: ignore[import-untyped]
from shoal.kernel.task_spec import ObjectRefInfo, Payload
from shoal.runtime.api.context import current_context
from shoal.runtime.api.exceptions import RaySystemError, RayTaskError

__all__ = [
    "BufferCodec",
    "collecting_refs",
    "deserialize",
    "deserialize_error",
    "serialize",
    "serialize_error",
]

PROTOCOL: Final = 5
_ATOMIC_TYPES: Final = frozenset({type(None), bool, int, float, complex, str, bytes})

_local = threading.local()
_collecting: ContextVar[list[weakref.ref[Any]] | None] = ContextVar("shoal_collecting_refs",
                                                                   default=None)


class BufferCodec(Protocol):
    """How a host lays out values with out-of-band buffers (a worker context's optional
    ``buffer_codec`` attribute)."""

    out_of_band_min_bytes: int
    """Contiguous buffers at least this large go out of band; smaller ones stay in band."""

    def encode(self, inband: bytes, buffers: list[memoryview]) -> Any:
        """Lays out a pickle stream and its out-of-band buffers; returns ``Payload.data``
        (bytes-like). May raise (e.g. ``ObjectStoreFullError``)."""
        ...

    def decode(self, data: Any) -> tuple[Any, list[Any]] | None:
        """The pickle stream and buffers of data made by ``encode``; None for plain pickle."""
        ...


def _codec() -> BufferCodec | None:
    codec: BufferCodec | None = getattr(current_context(), "buffer_codec", None)
    return codec


def _pickling_stack() -> list[list[ObjectRefInfo]]:
    stack: list[list[ObjectRefInfo]] | None = getattr(_local, "pickling", None)
    if stack is None:
        stack = _local.pickling = []
    return stack


def record_pickled_ref(info: ObjectRefInfo) -> None:
    """Called by ``ObjectRef.__reduce__``: notes ``info`` in the active ``serialize``."""
    stack: list[list[ObjectRefInfo]] | None = getattr(_local, "pickling", None)
    if stack:
        stack[-1].append(info)


def note_rebuilt_ref(ref: Any) -> None:
    """Called when an ``ObjectRef`` is unpickled: notes it in active ``collecting_refs``."""
    found = _collecting.get()
    if found is not None:
        found.append(weakref.ref(ref))


@contextmanager
def collecting_refs() -> Iterator[list[weakref.ref[Any]]]:
    """Collects weak references to every ``ObjectRef`` unpickled in this thread meanwhile.

    The innermost block collects. It is a context variable, not a thread-local: the
    calls of an async actor interleave on one thread, each in its own asyncio task
    (with its own copy of the context), and each collects only its own refs.
    """
    found: list[weakref.ref[Any]] = []
    previous = _collecting.get()
    _collecting.set(found)
    try:
        yield found
    finally:
        _collecting.set(previous)  # not reset(token): see executor.execute_async


def _unique(infos: list[ObjectRefInfo]) -> tuple[ObjectRefInfo, ...]:
    seen: dict[str, ObjectRefInfo] = {}
    for info in infos:
        seen.setdefault(info.object_id, info)
    return tuple(seen.values())


def serialize(value: object, *, what: str = "the value") -> Payload:
    """Pickles ``value`` (protocol 5) and lists the object refs nested in it.

    Args:
        value: any picklable value.
        what: how to name ``value`` in an error message (``"argument 0 of task f"``).

    Raises:
        TypeError: ``value`` cannot be pickled (it holds a lock, a socket, a generator...).
    """
    if type(value) in _ATOMIC_TYPES:
        return Payload(data=pickle.dumps(value, protocol=PROTOCOL))
    found: list[ObjectRefInfo] = []
    codec = _codec()
    buffers: list[memoryview] = []
    stack = _pickling_stack()
    stack.append(found)
    try:
        if codec is None:
            data = cloudpickle.dumps(value, protocol=PROTOCOL)
        else:
            data = cloudpickle.dumps(value, protocol=PROTOCOL, buffer_callback=_out_of_band(
                buffers, codec.out_of_band_min_bytes))
    except Exception as exc:
        raise TypeError(
            f"Could not serialize {what} ({type(value).__name__}): {type(exc).__name__}: {exc}. "
            "Values sent to tasks, returned by them or put in the object store must be "
            "picklable: remove locks, sockets, open files and generators from them, or "
            "create those inside the task.") from exc
    finally:
        stack.pop()
    if buffers:
        assert codec is not None
        data = codec.encode(data, buffers)  # may raise ObjectStoreFullError: let it
    return Payload(data=data, contained=_unique(found))


def _out_of_band(buffers: list[memoryview], min_bytes: int) -> Any:
    def callback(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # not contiguous: in band
        if raw.nbytes < min_bytes:
            return True
        buffers.append(raw)
        return False  # out of band

    return callback


def deserialize(payload: Payload | bytes) -> Any:
    """Unpickles a payload; object refs in it register with the current context.

    Raises:
        RaySystemError: the bytes could not be unpickled here (e.g. a class that
            cannot be imported in this process).
    """
    data = payload.data if isinstance(payload, Payload) else payload
    codec = _codec()
    try:
        parts = codec.decode(data) if codec is not None else None
        if parts is None:
            return pickle.loads(data)
        inband, buffers = parts
        return pickle.loads(inband, buffers=buffers)
    except Exception as exc:
        raise RaySystemError(
            f"could not deserialize a value: {type(exc).__name__}: {exc}. Make sure every "
            "module and class it uses can be imported in this process.") from exc


def format_traceback(exc: BaseException, *, skip_frames: int = 0) -> str:
    """The traceback text of ``exc``, leaving out its first ``skip_frames`` frames."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is None or tb.tb_next is None:
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def serialize_error(exc: BaseException, task_name: str, traceback_str: str | None = None) -> bytes:
    """Pickles ``exc`` as the ``RayTaskError`` of task ``task_name``.

    A ``RayTaskError`` raised by a nested ``get`` is unwrapped to its original
    cause, so ``except ZeroDivisionError`` still catches a failure two tasks
    down; the nested traceback text is kept below this task's. An exception
    that cannot be pickled is replaced by a plain ``Exception`` describing it.
    """
    text = traceback_str if traceback_str is not None else format_traceback(exc)
    cause: BaseException | None = exc
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        text = f"{text}\nwhich was raised by the failed task {exc.function_name}:\n" \
               f"{exc.traceback_str}"
    error = RayTaskError(task_name, text, cause)
    try:
        return bytes(cloudpickle.dumps(error, protocol=PROTOCOL))
    except Exception as pickling_error:  # noqa: BLE001 - any pickling failure
        stand_in = Exception(
            f"{type(cause).__name__}: {cause} (the original exception could not be pickled: "
            f"{type(pickling_error).__name__}: {pickling_error})")
        return bytes(cloudpickle.dumps(RayTaskError(task_name, text, stand_in),
                                       protocol=PROTOCOL))


def deserialize_error(data: bytes) -> BaseException:
    """The exception pickled by ``serialize_error`` (a ``RaySystemError`` if it cannot load)."""
    try:
        loaded = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure
        return RaySystemError(
            f"a task's exception could not be unpickled here: {type(exc).__name__}: {exc}. "
            "Make sure the exception's class can be imported in this process.")
    if isinstance(loaded, BaseException):
        return loaded
    return RaySystemError(f"a task's error data held a {type(loaded).__name__}, not an exception")
