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
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from shoal.kernel.ids import NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address, Component
from shoal.kernel.task_spec import ObjectRefInfo, producing_task
from shoal.runtime.api.context import WorkerContext, current_context
from shoal.runtime.api.serialization import note_rebuilt_ref, record_pickled_ref

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

    def future(self) -> Any:
        """A ``concurrent.futures.Future`` for the value: not supported yet."""
        # TODO(#5): futures and ``await ref`` once hosts can call back on completion.
        raise NotImplementedError(
            "ObjectRef.future() is not supported yet (issue #5); use shoal.get(ref) or "
            "shoal.wait([ref]) instead")

    def __await__(self) -> Generator[Any, None, Any]:
        # TODO(#5): awaitable refs for async actors and asyncio drivers.
        raise NotImplementedError(
            "awaiting an ObjectRef is not supported yet (issue #5); use shoal.get(ref) instead")

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
