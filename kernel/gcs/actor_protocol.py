"""Messages of the GCS actor manager: registration, the actor table, creation, kill.

Registration (owner core worker -> GCS): ``RegisterActor`` carries the actor's
``ActorSpec`` and its pickled class; it is idempotent by ``actor_id`` and
answered ``ActorRegistered`` (the actor's current ``ActorInfo``, or, for a
name already taken, ``taken`` with the live holder's ``ActorHandleInfo``).

The actor table (GCS -> handle holders): a holder polls with ``PollActors``
(the versions it knows) and is subscribed by doing so; it is answered, and
pushed on every later change while its subscription lasts, an
``ActorTableUpdate`` with the ``ActorInfo`` rows newer than it knows. A lost
push is repaired by the next poll.

Lookups and kills (any core worker -> GCS): ``GetNamedActor`` ->
``NamedActorReply``; ``KillActor`` -> ``KillActorReply``. Both are safe to
retransmit (a kill of a dead actor changes nothing).

Creation (GCS <-> the leased worker): ``CreateActor`` asks the worker the GCS
leased to host incarnation ``num_restarts`` of the actor (retransmitted until
answered); the worker acknowledges with ``ActorCreating`` while the
constructor runs and answers ``ActorCreated`` (with the constructor's error, if
it raised) when it is done.

Nothing here imports the core worker: a death cause travels as
``ActorDeathCause``, which the core worker turns into the error of a call.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from shoal.kernel.gcs.protocol import Resources
from shoal.kernel.ids import ActorId, Count, NodeId, Seq
from shoal.kernel.messages import Address, Msg
from shoal.kernel.task_spec import RetryCount, TaskSpec

ActorState = Literal["PENDING", "ALIVE", "RESTARTING", "DEAD"]
DeathKind = Literal[
    "killed",  # shoal.kill()
    "out_of_scope",  # every handle was dropped
    "owner_died",  # the creator of a non-detached actor died
    "creation_failed",  # the constructor raised; ``data`` holds the pickled error
    "worker_died",  # its worker or node died and no restarts were left
    "unschedulable",  # it can never be placed
]
PendingMax = Annotated[int, msgspec.Meta(ge=-1, le=2**31)]  # -1: unlimited


class ActorDeathCause(msgspec.Struct, frozen=True, kw_only=True):
    """Why an actor is dead; ``message`` says what happened and what to do."""

    kind: DeathKind
    message: str
    data: bytes = b""


class MethodMeta(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One actor method as handles need it: its name and default ``num_returns``,
    and its ``@method`` retry options (``max_task_retries`` None: the actor's)."""

    name: str
    num_returns: Count = 1
    retry_exceptions: bool = False
    retry_exception_allowlist: bytes = b""  # pickled exception classes, opaque to kernels
    max_task_retries: RetryCount | None = None
    concurrency_group: str = ""  # ``@method(concurrency_group=...)``; "": the default
    streaming: bool = False  # a generator method: calls return an ObjectRefGenerator (issue 5)


class ActorSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to create (and re-create) an actor.

    ``creation`` is the constructor call: its ``function_id`` names the pickled
    class, its ``resources`` are held for the actor's lifetime, its ``owner`` is
    the creator. ``placement`` is the shape a node must have free to be chosen
    (Ray's default actor asks 1 CPU to be placed and holds none).
    """

    actor_id: ActorId
    creation: TaskSpec
    class_name: str
    placement: Resources = msgspec.field(default_factory=dict)
    name: str = ""
    namespace: str = ""
    detached: bool = False
    max_restarts: RetryCount = 0
    max_task_retries: RetryCount = 0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=2**20)] = 1
    max_pending_calls: PendingMax = -1
    methods: tuple[MethodMeta, ...] = ()
    # Named concurrency groups and how many of their calls may run at once; calls of
    # no group share ``max_concurrency``.
    concurrency_groups: dict[str, Annotated[int, msgspec.Meta(ge=1, le=2**20)]] = (
        msgspec.field(default_factory=dict))


class ActorHandleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a handle to an actor needs, as lookups return it."""

    actor_id: ActorId
    class_name: str
    owner: Address
    name: str = ""
    namespace: str = ""
    max_task_retries: RetryCount = 0
    max_pending_calls: PendingMax = -1
    methods: tuple[MethodMeta, ...] = ()
    concurrency_groups: tuple[str, ...] = ()  # the names callers may pick


class ActorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the actor table as published: where the actor is and how it is."""

    actor_id: ActorId
    state: ActorState
    version: Seq
    num_restarts: Count = 0
    worker: Address | None = None
    node_id: NodeId | None = None
    death: ActorDeathCause | None = None


class ActorVersion(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    actor_id: ActorId
    version: Seq


# --- owner -> GCS ------------------------------------------------------------


class RegisterActor(Msg):
    request_id: Seq
    spec: ActorSpec
    function: bytes  # the cloudpickled class, kept by the GCS for every (re)creation
    get_if_exists: bool = False


class ActorRegistered(Msg):
    """``info`` of the registered actor; or ``taken``: its name belongs to a live actor."""

    request_id: Seq
    actor_id: ActorId
    info: ActorInfo | None = None
    taken: ActorHandleInfo | None = None
    taken_info: ActorInfo | None = None
    error: str = ""


# --- handle holders <-> GCS --------------------------------------------------


class PollActors(Msg):
    """Subscribe to (and poll) these actors' rows, each from the version known."""

    known: tuple[ActorVersion, ...]


class ActorTableUpdate(Msg):
    actors: tuple[ActorInfo, ...]
    unknown: tuple[ActorId, ...] = ()  # polled ids the GCS has no record of


class GetNamedActor(Msg):
    request_id: Seq
    name: str
    namespace: str


class NamedActorReply(Msg):
    request_id: Seq
    handle: ActorHandleInfo | None = None
    info: ActorInfo | None = None


class KillActor(Msg):
    request_id: Seq
    actor_id: ActorId
    no_restart: bool = True
    out_of_scope: bool = False  # the owner saw every handle dropped (not a user's kill)


class KillActorReply(Msg):
    request_id: Seq
    actor_id: ActorId
    found: bool


# --- GCS <-> the actor's worker ----------------------------------------------


class CreateActor(Msg):
    spec: ActorSpec
    function: bytes
    num_restarts: Count
    lease_id: str


class ActorCreating(Msg):
    """The worker has the creation and its constructor is running."""

    actor_id: ActorId
    num_restarts: Count


class ActorCreated(Msg):
    """The constructor returned (``error`` is None) or raised."""

    actor_id: ActorId
    num_restarts: Count
    error: ActorDeathCause | None = None


ACTOR_WIRE_TYPES: tuple[type[Msg], ...] = (
    RegisterActor, ActorRegistered, PollActors, ActorTableUpdate, GetNamedActor,
    NamedActorReply, KillActor, KillActorReply, CreateActor, ActorCreating, ActorCreated,
)
