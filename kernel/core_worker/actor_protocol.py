"""Messages of actor calls between core workers, and the core worker's actor host interface.

Caller -> actor worker: ``PushActorTask`` carries one call with the caller's
sequence number for this actor incarnation (``seq``, from 0 per
``(caller, num_restarts)``), and ``processed``: every call below it has been
answered, so the worker may forget those answers. The worker answers
``ActorTaskAck`` once it has the call (queued or running), ``ActorTaskDone``
when it ran, and ``ActorTaskRejected`` if it does not host that incarnation of
that actor (the caller's view of the actor is stale: it asks the GCS again).
Pushes are retransmitted until answered; the worker dedupes by ``seq``.

Cancel (``shoal.cancel`` of a call's ref): a call still queued at the caller
(no ``seq`` yet) fails at once with ``task_cancelled`` and is never sent. A
call already pushed is pushed again with ``cancelled=True`` (and so are its
retransmits, so a lost cancel is repaired like a lost push). The worker
answers a cancelled call it has not started with ``task_cancelled`` at once,
or when its ``seq`` comes up if earlier calls are still missing: its ``seq``
is consumed either way, so it never blocks the calls behind it. A call
already running is not interrupted (Ray: cancelling a running call of a sync
or threaded actor is a no-op), except on an *async* actor (the host said
``is_async`` in ``ActorInstanceCreated``): there the kernel asks the host to
``InterruptActorTask``, and the host cancels the call's coroutine, which then
reports ``task_cancelled`` through ``ActorTaskExecuted`` as usual.
``force=True`` is refused by the API for actor calls (use ``shoal.kill``).

Retries on exceptions: a call whose method raised reports ``retryable_error``
when its spec says ``retry_exceptions`` (and the exception is allowed); the
caller then pushes it again as a new call (next ``seq``, ``attempt`` + 1)
while ``max_task_retries`` allows (-1: always), sharing that budget with
retries after restarts.

Host interface. Inputs from user code: ``ActorCreationRequested`` (register a
new actor, answered ``ActorRequestCompleted``), ``ActorCallSubmitted`` (a
method call; refused at once with ``ActorCallRefused`` past
``max_pending_calls``), ``ActorLookupRequested`` (``get_actor``),
``ActorKillRequested``; and from the host running an actor:
``ActorInstanceCreated`` (the constructor returned or raised) and
``ActorTaskExecuted`` (a method returned or raised). Effects: the answers,
``CreateActorInstance``/``ExecuteActorTask`` to run user code, and
``InterruptActorTask`` to cancel a running call of an async actor.
"""

from __future__ import annotations

from shoal.kernel.core_worker.protocol import LocalObject, ObjectResult
from shoal.kernel.gcs.actor_protocol import ActorDeathCause, ActorHandleInfo, ActorInfo, ActorSpec
from shoal.kernel.ids import ActorId, Count, ObjectId, Seq, TaskId
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo, Payload, RetryCount, TaskSpec

ACTOR_ERROR_KINDS = ("actor_died", "actor_unavailable", "pending_calls_exceeded")


def handle_object_id(actor_id: ActorId) -> ObjectId:
    """The object that stands for an actor's handles in its owner's reference counts."""
    return ObjectId(f"{actor_id}.h")


def handle_actor_id(object_id: ObjectId) -> ActorId | None:
    """The actor whose handle object this is, or None for any other object."""
    return ActorId(object_id[:-2]) if object_id.endswith(".h") else None


# --- caller <-> actor worker ---------------------------------------------------


class PushActorTask(Msg):
    actor_id: ActorId
    num_restarts: Count
    caller: str  # the caller's session for this actor: sequence numbers count per session
    seq: Seq
    processed: Seq  # every call below this seq has been answered
    spec: TaskSpec
    resolved: tuple[Payload | None, ...] = ()  # per arg: the caller's inline value of a ref arg
    cancelled: bool = False  # the caller cancelled this call: answer task_cancelled if not started


class ActorTaskAck(Msg):
    task_id: TaskId
    attempt: Count


class ActorTaskDone(Msg):
    actor_id: ActorId
    task_id: TaskId
    attempt: Count
    results: tuple[ObjectResult, ...]
    borrowed: tuple[ObjectRefInfo, ...] = ()
    retryable_error: bool = False  # the method raised an exception its spec retries
    stream_count: Count = 0  # a streaming call: the items it yielded (streams.py)


class ActorTaskRejected(Msg):
    actor_id: ActorId
    num_restarts: Count
    task_id: TaskId
    reason: str


# --- host inputs -----------------------------------------------------------------


class ActorCreationRequested(Msg):
    """Register and create a new actor this process owns (answered when registered)."""

    call_id: Seq
    spec: ActorSpec
    function: bytes
    get_if_exists: bool = False


class ActorCallSubmitted(Msg):
    """A method call on an actor; ``spec.function_id`` is the method's name."""

    actor_id: ActorId
    spec: TaskSpec
    max_task_retries: RetryCount = 0
    max_pending_calls: int = -1


class ActorLookupRequested(Msg):
    call_id: Seq
    name: str
    namespace: str


class ActorKillRequested(Msg):
    call_id: Seq
    actor_id: ActorId
    no_restart: bool = True


class ActorInstanceCreated(Msg):
    actor_id: ActorId
    num_restarts: Count
    error: ActorDeathCause | None = None
    # The host runs this actor's calls as coroutines: cancelling a running call then
    # makes the kernel emit ``InterruptActorTask`` (never for sync or threaded actors).
    is_async: bool = False


class ActorTaskExecuted(Msg):
    actor_id: ActorId
    task_id: TaskId
    attempt: Count
    results: tuple[ObjectResult, ...]
    borrowed: tuple[ObjectRefInfo, ...] = ()
    retryable_error: bool = False  # as ``TaskExecuted.retryable_error``
    stream_count: Count = 0  # as ``TaskExecuted.stream_count``


# --- host effects ----------------------------------------------------------------


class ActorRequestCompleted(Msg):
    """The answer to a creation, lookup or kill: a handle's facts, or ``error``.

    For a creation, ``created`` says this process created (and owns) the actor;
    ``handle`` is set without ``created`` when ``get_if_exists`` found another.
    """

    call_id: Seq
    handle: ActorHandleInfo | None = None
    info: ActorInfo | None = None
    created: bool = False
    error: str = ""


class ActorCallRefused(Msg):
    """The call was refused when submitted (its returns also hold this error)."""

    task_id: TaskId
    message: str


class CreateActorInstance(Msg):
    """Instantiate the actor's class with the resolved constructor ``args``."""

    spec: ActorSpec
    num_restarts: Count
    args: tuple[Payload | LocalObject, ...]
    function: bytes


class ExecuteActorTask(Msg):
    """Run method ``spec.function_id`` of the hosted actor with resolved ``args``."""

    actor_id: ActorId
    spec: TaskSpec
    args: tuple[Payload | LocalObject, ...]


class InterruptActorTask(Msg):
    """Cancel the running call ``task_id`` of the hosted *async* actor.

    Only emitted for an actor whose ``ActorInstanceCreated`` said ``is_async``.
    The host cancels the call's coroutine (``asyncio.Task.cancel``); the call
    then ends as usual with ``ActorTaskExecuted``, its results holding a
    ``task_cancelled`` error (or its value, if it finished first).
    """

    actor_id: ActorId
    task_id: TaskId


ACTOR_CALL_WIRE_TYPES: tuple[type[Msg], ...] = (
    PushActorTask, ActorTaskAck, ActorTaskDone, ActorTaskRejected,
)
