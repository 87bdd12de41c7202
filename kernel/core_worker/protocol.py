"""Messages between core workers (owners, executors, borrowers) and their host interface.

Owner -> executor: ``PushTask`` runs one task on a leased worker; the worker
answers ``TaskDone``. Both sides tolerate loss: the owner re-pushes on a timer,
and the worker dedupes by ``(task_id, attempt)``, answering a re-push of a
finished task with its cached ``TaskDone``. ``CancelTask`` interrupts a task;
with ``recursive`` the worker also cancels the tasks the running task
submitted (it owns them), whose workers do the same in turn.

Object resolution: anyone holding a ref asks its owner with ``GetObject``; the
owner answers ``ObjectStatus`` once the object exists (inline bytes, the nodes
that hold it, or an error). A borrower tells the owner it no longer holds a ref
with ``RefReleased``.

Borrower forwarding (see objects.py): when a ref owned by a third process
changes hands through a task (returned in its results, or kept by its worker
after it), the passer asks the new holder to ``RegisterBorrow``; the holder
sends ``AddBorrower`` to the owner and, once ``BorrowerAdded``, answers the
passer ``BorrowRegistered``, and only then does the passer let go.

Host interface: the inputs are requests from user code (submit, put, get, wait,
ref counts, cancel) and reports of user code having run (``TaskExecuted``);
the effects are answers to user code (``GetCompleted``...) and requests to run
user code (``ExecuteTask``, ``InterruptTask``).
"""

from __future__ import annotations

from typing import Literal

from shoal.kernel.ids import Count, NodeId, ObjectId, Seq, TaskId, TimeNs
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec

ErrorKind = Literal[
    "task_error",  # the user's function raised; ``data`` holds the pickled exception
    "worker_crashed",
    "task_cancelled",
    "object_lost",
    "owner_died",
    "get_timeout",
    "node_died",
    "infeasible",
    # actor calls (issue #4): the actor is dead (``data``: the pickled constructor
    # error, if it raised), cannot be reached, or has too many calls pending.
    "actor_died",
    "actor_unavailable",
    "pending_calls_exceeded",
]


class ObjectError(Msg):
    """Why an object has no value; the API turns it into the matching exception."""

    kind: ErrorKind
    message: str
    data: bytes = b""  # the pickled user exception for ``task_error``


class ObjectResult(Msg):
    """One object's outcome as the owner reports it.

    Small values travel inline in ``value``. A value above the inline limit is
    ``stored``: its bytes live in the object stores of ``locations`` (``size``
    bytes), and ``value`` carries only the refs nested in it (empty data).
    """

    object_id: ObjectId
    value: Payload | None = None
    error: ObjectError | None = None
    stored: bool = False
    locations: tuple[NodeId, ...] = ()
    size: Count = 0


class LocalObject(Msg):
    """An argument of ``ExecuteTask`` to read from this node's object store."""

    object_id: ObjectId
    contained: tuple[ObjectRefInfo, ...] = ()


# --- owner <-> executor ----------------------------------------------------


class PushTask(Msg):
    lease_id: str
    spec: TaskSpec
    function: bytes = b""  # sent with the first task of a function on a lease
    resolved: tuple[Payload | None, ...] = ()  # per arg: the owner's inline value of a ref arg


class TaskRunning(Msg):
    """The worker is still running this task (its answer to a re-push)."""

    task_id: TaskId
    attempt: Count


class TaskDone(Msg):
    task_id: TaskId
    attempt: Count
    results: tuple[ObjectResult, ...]
    retryable_error: bool = False  # the error may be retried under retry_exceptions
    borrowed: tuple[ObjectRefInfo, ...] = ()  # refs the worker still holds for the owner
    stream_count: Count = 0  # streaming tasks: the items yielded (streams.py)


class CancelTask(Msg):
    task_id: TaskId
    force: bool = False
    recursive: bool = True  # also cancel the tasks it submitted while running (Ray's default)


class CancelForwarded(Msg):
    """Holder -> owner: ``shoal.cancel`` was called on a borrowed ref; the owner cancels
    the task (or actor call) that returns ``object_id`` as if it had been asked itself.
    Best effort, as Ray's cancel: not retransmitted."""

    object_id: ObjectId
    force: bool = False
    recursive: bool = True


# --- object resolution -----------------------------------------------------


class GetObject(Msg):
    object_id: ObjectId


class ObjectStatus(Msg):
    result: ObjectResult
    locations: tuple[NodeId, ...] = ()


class RefReleased(Msg):
    object_id: ObjectId
    epoch: Count = 0  # the borrower's registration it ends (0: one the owner made itself)


# --- borrower forwarding: a ref handed on to a holder the owner does not know ----


class RegisterBorrow(Msg):
    """Passer -> new holder: you now hold ``ref`` (it came with task ``task_id``'s
    results or stayed with you after it); register with its owner, then confirm.
    The passer keeps its own hold on the object until ``BorrowRegistered``."""

    handoff_id: Seq
    ref: ObjectRefInfo
    task_id: TaskId


class BorrowRegistered(Msg):
    """New holder -> passer: the owner counts me (or I no longer hold it)."""

    handoff_id: Seq


class AddBorrower(Msg):
    """Holder -> owner: count me as a borrower of ``object_id`` (registration ``epoch``)."""

    object_id: ObjectId
    epoch: Count


class BorrowerAdded(Msg):
    """Owner -> holder: registration ``epoch`` is counted (or the object is gone)."""

    object_id: ObjectId
    epoch: Count


# --- host inputs: requests from user code ------------------------------------


class TaskSubmitted(Msg):
    spec: TaskSpec
    function: bytes = b""  # the pickled function, pushed with its first task on each lease


class ObjectPut(Msg):
    """User code put a value: inline in ``value``, or (``stored``) already written to
    this node's object store by the host, ``size`` bytes, with ``value`` holding
    only its nested refs."""

    object_id: ObjectId
    value: Payload
    stored: bool = False
    size: Count = 0


class GetRequested(Msg):
    call_id: Seq
    refs: tuple[ObjectRefInfo, ...]
    timeout_ns: TimeNs | None = None


class WaitRequested(Msg):
    call_id: Seq
    refs: tuple[ObjectRefInfo, ...]
    num_returns: Count
    timeout_ns: TimeNs | None = None
    fetch_local: bool = True


class RefsChanged(Msg):
    """Local ObjectRef instances were created (+1) or dropped (-1), per object."""

    deltas: tuple[tuple[ObjectRefInfo, int], ...]


class CancelRequested(Msg):
    """``shoal.cancel``: cancel the task (or actor call) that returns ``object_id``.

    ``recursive`` also cancels the tasks that task submitted while it ran (its
    worker owns them), transitively. ``force`` is for tasks only (the API refuses
    it for actor calls)."""

    object_id: ObjectId
    force: bool = False
    recursive: bool = True


class TaskExecuted(Msg):
    """The host ran a task's user code; ``results`` are the return values or errors."""

    task_id: TaskId
    attempt: Count
    results: tuple[ObjectResult, ...]
    retryable_error: bool = False
    borrowed: tuple[ObjectRefInfo, ...] = ()
    stream_count: Count = 0  # streaming tasks: the items the generator yielded


# --- host effects: answers to user code --------------------------------------


class GetCompleted(Msg):
    call_id: Seq
    results: tuple[ObjectResult, ...]


class WaitCompleted(Msg):
    call_id: Seq
    ready: tuple[ObjectId, ...]


class ExecuteTask(Msg):
    """Run the user function of ``spec`` with resolved top-level ``args``."""

    spec: TaskSpec
    args: tuple[Payload | LocalObject, ...]
    function: bytes


class InterruptTask(Msg):
    """Raise ``TaskCancelledError`` in the running task (or kill the worker if ``force``)."""

    task_id: TaskId
    force: bool
