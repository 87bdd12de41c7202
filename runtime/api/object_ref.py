"""``ObjectRef``: a handle to an object that a task returns or ``put`` stores.

A ref names its object and the object's owner (the core worker that created
it, which keeps its value and its reference counts). Each instance counts as
one local reference in the process that holds it: creating one calls
``ctx.ref_added`` on the current worker context, and collecting it calls
``ctx.ref_removed`` on that same context (safe at interpreter exit and when no
context exists: then nothing is counted either way).

Pickling a ref (as an argument, inside a return value, inside a ``put``)
records it into the active ``serialize`` call, so the payload lists it in
``contained``; unpickling rebuilds a ref that registers in the receiving
process, which thereby borrows the object.

Awaiting (issue #5): ``await ref`` and ``ref.future()`` ask the context's
``get_objects_future`` hook (``AsyncObjectsContext``, see
``runtime/api/context.py``) for the object without blocking the caller's event
loop. ``await ref`` wraps that future for the running asyncio loop and turns the
result into the value (or raises the object's error, as ``get`` does) in the
awaiting task; ``ref.future()`` returns a ``concurrent.futures.Future`` whose
value is read and deserialized in the thread that first asks for it, never in
the host's loop thread that completes it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from concurrent.futures import CancelledError, Future
from typing import Any

from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.ids import NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address, Component
from shoal.kernel.task_spec import ObjectRefInfo, producing_task
from shoal.runtime.api.context import (
    AsyncObjectsContext,
    WorkerContext,
    current_context,
    get_context,
)
from shoal.runtime.api.exceptions import RaySystemError, RayTaskError, error_for
from shoal.runtime.api.serialization import deserialize, note_rebuilt_ref, record_pickled_ref

__all__ = ["ObjectRef"]


class ObjectRef:
    """A reference to an object in the cluster (Ray's ``ObjectRef``).

    Args:
        object_id: the object's id.
        owner: the address of the core worker that owns the object.
    """

    __slots__ = ("__weakref__", "_ctx", "_info")

    def __init__(self, object_id: ObjectId | str, owner: Address) -> None:
        self._ctx: WorkerContext | None = None
        self._info = ObjectRefInfo(object_id=ObjectId(object_id), owner=owner)
        ctx = current_context()
        if ctx is not None:
            ctx.ref_added(self._info)
            self._ctx = ctx  # only once counted, so __del__ never removes what was not added

    @classmethod
    def from_info(cls, info: ObjectRefInfo) -> ObjectRef:
        """A new ref (counted like any other) for an ``ObjectRefInfo``."""
        return cls(info.object_id, info.owner)

    @classmethod
    def adopt(cls, info: ObjectRefInfo, ctx: WorkerContext) -> ObjectRef:
        """A ref for an object the kernel already counted once for it (a streaming
        generator's item, issue 5): it does not count itself again, and releases that
        count through ``ctx`` when collected."""
        ref = cls.__new__(cls)
        ref._info = info
        ref._ctx = ctx
        return ref

    # --- identity ----------------------------------------------------------

    @property
    def info(self) -> ObjectRefInfo:
        """The ref as it travels in task specs and payloads."""
        return self._info

    @property
    def object_id(self) -> ObjectId:
        return self._info.object_id

    def hex(self) -> str:
        """The object id as text (shoal ids are readable strings, not hex digests)."""
        return str(self._info.object_id)

    def binary(self) -> bytes:
        """The object id as bytes."""
        return str(self._info.object_id).encode()

    def task_id(self) -> TaskId | None:
        """The task that returns this object, or None for an object made by ``put``."""
        return producing_task(self._info.object_id)

    def owner_address(self) -> Address:
        """The core worker that owns the object."""
        return self._info.owner

    def is_nil(self) -> bool:
        return not self._info.object_id

    # --- futures -----------------------------------------------------------

    def future(self) -> Future[Any]:
        """A ``concurrent.futures.Future`` of the object's value.

        Its ``result()`` returns the value, or raises what ``get`` would raise.
        Wrap it with ``asyncio.wrap_future`` to await it on any event loop.
        """
        return _ValueFuture(self, _request(self._info))

    def __await__(self) -> Generator[Any, None, Any]:
        """``await ref`` in asyncio code: the value, without blocking the event loop."""
        return _await_value(self, _request(self._info)).__await__()

    # --- value semantics ---------------------------------------------------

    def __repr__(self) -> str:
        return f"ObjectRef({self._info.object_id})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectRef):
            return NotImplemented
        return self._info.object_id == other._info.object_id

    def __hash__(self) -> int:
        return hash(self._info.object_id)

    def __reduce__(self) -> tuple[Any, ...]:
        info = self._info
        record_pickled_ref(info)
        owner = info.owner
        return (_rebuild_object_ref,
                (str(info.object_id), str(owner.node), owner.component, owner.worker))

    def __del__(self) -> None:
        # Any thread, any time, even at interpreter exit: never raise from here.
        try:
            ctx = self._ctx
        except AttributeError:  # __init__ failed before the slot was set
            return
        if ctx is None:
            return
        self._ctx = None
        try:
            ctx.ref_removed(self._info)
        except Exception:  # noqa: BLE001, S110 - __del__ must never raise
            pass


def _rebuild_object_ref(object_id: str, node: str, component: Component,
                        worker: str) -> ObjectRef:
    """Unpickles a ref: a new instance, counted in this process (it now borrows the object)."""
    ref = ObjectRef(ObjectId(object_id),
                    Address(node=NodeId(node), component=component, worker=worker))
    note_rebuilt_ref(ref)
    return ref


# --- awaiting --------------------------------------------------------------------

Reader = Callable[[], list[ObjectResult]]


def _request(info: ObjectRefInfo) -> Future[Reader]:
    ctx = get_context()
    if not isinstance(ctx, AsyncObjectsContext):
        raise NotImplementedError(
            f"this host ({type(ctx).__name__}) cannot await object refs yet; use "
            "shoal.get(ref) instead")
    return ctx.get_objects_future([info], None)


async def _await_value(ref: ObjectRef, source: Future[Reader]) -> Any:
    if source.done():  # the host answered at once (the simulator may): no loop needed
        read = source.result()
    else:
        read = await asyncio.wrap_future(source)
    return _value_of(read(), ref.info)  # ``ref`` kept alive (referenced) until here


def _value_of(results: list[ObjectResult], info: ObjectRefInfo) -> Any:
    """The value of the one result, or the error ``get`` raises for it."""
    if len(results) != 1 or results[0].object_id != info.object_id:
        raise RaySystemError(f"the host answered an await of {info.object_id} with "
                             f"{[r.object_id for r in results]}")
    return value_of_result(results[0], info)


def value_of_result(result: ObjectResult, info: ObjectRefInfo) -> Any:
    """An object's value, or the error ``get`` raises for it (``RayTaskError`` also an
    instance of the task's exception)."""
    if result.error is not None:
        error: BaseException | None = error_for(result, info.owner)
        if isinstance(error, RayTaskError):
            error = error.as_instanceof_cause()
        try:
            raise error  # type: ignore[misc]
        finally:
            # A local holding the raised error makes a cycle (error -> traceback ->
            # this frame -> error) that keeps the caller's frame, and every ObjectRef
            # in it, alive until a garbage collection: refs would not be released
            # when the program drops them.
            error = None
    try:
        return deserialize(result.value)  # type: ignore[arg-type]
    except RaySystemError as exc:
        raise RaySystemError(f"object {info.object_id}: {exc.client_exc}") from exc.__cause__


class _ValueFuture(Future):  # type: ignore[type-arg]
    """The future of ``ref.future()``: done when the host has the object; its value is
    read and deserialized once, in the first thread that asks (never the host's loop)."""

    def __init__(self, ref: ObjectRef, source: Future[Reader]) -> None:
        super().__init__()
        self._ref = ref  # the object stays referenced while its future lives
        self._convert_lock = threading.Lock()
        self._outcome: tuple[Any, BaseException | None] | None = None
        self._source = source
        source.add_done_callback(self._arrived)

    def _arrived(self, source: Future[Reader]) -> None:
        if not self.set_running_or_notify_cancel():
            return  # cancelled by its user meanwhile
        error = source.exception() if not source.cancelled() else RaySystemError(
            f"the host gave up waiting for object {self._ref.object_id}")
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(source.result())

    def _converted(self, read: Reader) -> tuple[Any, BaseException | None]:
        with self._convert_lock:
            if self._outcome is None:
                try:
                    self._outcome = (_value_of(read(), self._ref.info), None)
                except Exception as exc:  # noqa: BLE001 - kept for every later reader
                    self._outcome = (None, exc)
            return self._outcome

    def _wait_for_source(self, timeout: float | None) -> None:
        # Wait the host's way: the simulator's future hands the baton back instead of
        # blocking the one thread that may run. Once it is done, so is this one (its
        # callback ran) or about to be (the completing thread is running it).
        if not self.done():
            try:
                self._source.exception(timeout)
            except CancelledError:
                pass

    def result(self, timeout: float | None = None) -> Any:
        self._wait_for_source(timeout)
        value, error = self._converted(super().result(timeout))
        if error is not None:
            raise error
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_for_source(timeout)
        error = super().exception(timeout)
        if error is not None:
            return error
        return self._converted(super().result())[1]
