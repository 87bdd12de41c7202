"""Task specifications and object payloads: what a task is, as every kernel sees it.

The API layer builds a ``TaskSpec`` (ids come from the submitting process's
counters, so ``.remote()`` returns its refs without a round trip); the owner's
core worker schedules it, the raylet reads its resource shape, and the executing
worker runs it. User values travel as opaque serialized bytes (``Payload``):
kernels never unpickle user data, they only route it. A payload lists the
object refs nested inside it, so the receiver knows what it now borrows.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shoal.kernel.gcs.protocol import Resources
from shoal.kernel.ids import Count, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address

INLINE_BYTES_MAX = 100 * 1024  # values above this live in the node's object store

RetryCount = Annotated[int, msgspec.Meta(ge=-1, le=2**31)]  # -1: retry forever


class ObjectRefInfo(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """An object ref as it travels: the object and the address of its owner."""

    object_id: ObjectId
    owner: Address


class Payload(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A serialized value plus the refs nested in it."""

    data: bytes
    contained: tuple[ObjectRefInfo, ...] = ()


class TaskArg(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One positional argument: a value inline, or a top-level ref to resolve first."""

    value: Payload | None = None
    ref: ObjectRefInfo | None = None


class NodeAffinity(msgspec.Struct, frozen=True, kw_only=True):
    node_id: NodeId
    soft: bool = False


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to run (and re-run) one task."""

    task_id: TaskId
    job_id: str
    name: str
    owner: Address
    function_id: str
    args: tuple[TaskArg, ...]
    kwarg_names: tuple[str, ...] = ()  # the last len(kwarg_names) args are keyword args
    num_returns: Count = 1
    resources: Resources = msgspec.field(default_factory=lambda: {"CPU": 1.0})
    max_retries: RetryCount = 3
    retry_exceptions: bool = False
    retry_exception_allowlist: bytes = b""  # pickled exception classes, opaque to kernels
    attempt: Count = 0
    depth: Count = 0
    affinity: NodeAffinity | None = None
    # A generator task whose values stream to the owner as yielded (issue 5): its one
    # return is the stream's head; its items are objects of their own (streams.py).
    streaming: bool = False
    concurrency_group: str = ""  # an actor call's concurrency group ("": the default one)

    @property
    def return_ids(self) -> tuple[ObjectId, ...]:
        return tuple(return_object_id(self.task_id, i) for i in range(self.num_returns))

    def shape_key(self) -> tuple[tuple[str, float], ...]:
        """The resource shape leases are keyed by (tasks of one shape share a lease)."""
        return tuple(sorted(self.resources.items()))


def return_object_id(task_id: TaskId, index: int) -> ObjectId:
    return ObjectId(f"{task_id}.r{index}")


def producing_task(object_id: ObjectId) -> TaskId | None:
    """The task whose return this object is, or None for ``put`` objects."""
    head, sep, tail = object_id.rpartition(".r")
    return TaskId(head) if sep and tail.isdigit() else None
