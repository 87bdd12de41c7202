"""Messages of streaming generator tasks (issue 5): items, acks, and the host interface.

A streaming task (``TaskSpec.streaming``) reports each value its generator
yields as soon as it is produced, instead of all at once in ``TaskDone``:

* Executor -> owner: ``StreamItem`` carries item ``index``'s outcome (inline
  value, or a stored one's locations), retransmitted until the owner answers
  ``StreamItemAck``. The final ``TaskDone`` goes out only once every item of
  the attempt is acknowledged; it carries ``stream_count`` (see protocol.py).
* Worker host -> its core worker: ``StreamItemProduced`` (user code yielded
  item ``index``; a stored value is already in the node's store).
* Consumer (owner's user code) -> its core worker: ``StreamNextRequested`` asks
  for item ``index``; ``StreamNextCompleted`` answers with its ref (whose local
  count the kernel already took for the consumer: see streams.py), with the end
  of the stream, or with a timeout.
"""

from __future__ import annotations

from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.ids import Count, Seq, TaskId, TimeNs
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo

# --- executor <-> owner (wire) ---------------------------------------------------


class StreamItem(Msg):
    """Item ``index`` of streaming task ``task_id`` (attempt ``attempt``) was produced."""

    task_id: TaskId
    attempt: Count
    index: Count
    result: ObjectResult


class StreamItemAck(Msg):
    """Owner -> executor: item ``index`` is recorded (or not wanted any more)."""

    task_id: TaskId
    attempt: Count
    index: Count


STREAM_WIRE_TYPES: tuple[type[Msg], ...] = (StreamItem, StreamItemAck)


# --- host inputs ---------------------------------------------------------------------


class StreamItemProduced(Msg):
    """Worker host: the running streaming task yielded item ``index`` (``result``)."""

    task_id: TaskId
    attempt: Count
    index: Count
    result: ObjectResult


class StreamNextRequested(Msg):
    """Owner's user code: the ref of item ``index`` of stream ``task_id``, when it exists."""

    call_id: Seq
    task_id: TaskId
    index: Count
    timeout_ns: TimeNs | None = None


# --- host effects ---------------------------------------------------------------------


class StreamNextCompleted(Msg):
    """The answer to ``StreamNextRequested``: ``ref`` is the item (already counted
    once for the caller, who must adopt that count), or None at the end of the
    stream (``timed_out`` False) or when the wait timed out."""

    call_id: Seq
    ref: ObjectRefInfo | None = None
    timed_out: bool = False
