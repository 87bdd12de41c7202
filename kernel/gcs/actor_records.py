"""The GCS actor manager's rows: phases, legal moves, and their durable form.

A row (``ActorRow``) is one actor. Its ``phase`` is Ray's actor state
(``PENDING`` until the constructor first returns, ``ALIVE``, ``RESTARTING``
after its worker or node died with restarts left, ``DEAD`` for good), moved
only along ``TRANSITIONS``. While ``PENDING`` or ``RESTARTING`` its ``stage``
says how far its (re)creation got: ``UNPLACED`` (no node chosen yet, or none
fits), ``LEASING`` (a ``RequestWorkerLease`` is out to ``raylet``),
``CREATING`` (a worker is leased and ``CreateActor`` is out to it). An
``ALIVE`` row holds its lease and worker; a ``DEAD`` one holds nothing.

Every change is written whole as an ``ActorRecord`` (``StorePut`` under
``ACTORS_TABLE``), so a restarted GCS rebuilds each row as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import msgspec
from shoal.kernel.errors import InvalidTransition
from shoal.kernel.gcs.actor_protocol import (
    ActorDeathCause,
    ActorHandleInfo,
    ActorInfo,
    ActorSpec,
)
from shoal.kernel.gcs.protocol import NodeInfo
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import NANOS_PER_SECOND, ActorId, Nanos, NodeId
from shoal.kernel.messages import Address

ACTORS_TABLE = "actors"
ACTOR_LEASES_TABLE = "actor_leases"  # leases being given back: lease id -> raylet
ACTOR_META_TABLE = "actor_meta"  # b"requests": lease request ids reserved so far


class ActorPhase(Enum):
    PENDING = "PENDING"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


class Stage(Enum):
    NONE = "none"  # alive or dead: not being created
    UNPLACED = "unplaced"
    LEASING = "leasing"
    CREATING = "creating"


TRANSITIONS: dict[tuple[ActorPhase | None, ActorPhase], str] = {
    (None, ActorPhase.PENDING): "registered",
    (ActorPhase.PENDING, ActorPhase.ALIVE): "its constructor returned",
    (ActorPhase.PENDING, ActorPhase.DEAD): "killed, its owner died, or its constructor raised",
    (ActorPhase.ALIVE, ActorPhase.RESTARTING): "its worker or node died, restarts left",
    (ActorPhase.ALIVE, ActorPhase.DEAD): "killed, out of scope, or died with no restarts left",
    (ActorPhase.RESTARTING, ActorPhase.ALIVE): "its constructor returned again",
    (ActorPhase.RESTARTING, ActorPhase.DEAD): "killed, its owner died, or its constructor raised",
}


class ActorRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The durable form of a row."""

    spec: ActorSpec
    function: bytes
    phase: str
    stage: str
    version: int
    num_restarts: int
    owner_incarnation: int
    raylet: Address | None
    request_id: int
    lease_id: str
    worker: Address | None
    node_id: NodeId | None
    node_incarnation: int
    death: ActorDeathCause | None


@dataclass(slots=True, eq=False)
class ActorRow:
    spec: ActorSpec
    function: bytes
    phase: ActorPhase
    owner_incarnation: int
    version: int = 0
    num_restarts: int = 0
    stage: Stage = Stage.UNPLACED
    raylet: Address | None = None  # where the lease request or the lease is
    request_id: int = 0
    spilled: bool = False
    lease_id: str = ""
    worker: Address | None = None
    node_id: NodeId | None = None
    node_incarnation: int = 0
    death: ActorDeathCause | None = None
    silent: int = 0  # CreateActor retransmits the worker has not answered
    written: Stage | None = None  # the stage of the last durable write

    @property
    def actor_id(self) -> ActorId:
        return self.spec.actor_id

    def restarts_left(self) -> bool:
        limit = self.spec.max_restarts
        return limit < 0 or self.num_restarts < limit

    def info(self) -> ActorInfo:
        return ActorInfo(actor_id=self.actor_id, state=self.phase.value, version=self.version,
                         num_restarts=self.num_restarts,
                         worker=self.worker if self.phase is ActorPhase.ALIVE else None,
                         node_id=self.node_id if self.phase is ActorPhase.ALIVE else None,
                         death=self.death)

    def handle_info(self) -> ActorHandleInfo:
        spec = self.spec
        return ActorHandleInfo(
            actor_id=spec.actor_id, class_name=spec.class_name, owner=spec.creation.owner,
            name=spec.name, namespace=spec.namespace, max_task_retries=spec.max_task_retries,
            max_pending_calls=spec.max_pending_calls, methods=spec.methods,
            concurrency_groups=tuple(spec.concurrency_groups))

    def record(self) -> ActorRecord:
        return ActorRecord(
            spec=self.spec, function=self.function, phase=self.phase.value,
            stage=self.stage.value, version=self.version, num_restarts=self.num_restarts,
            owner_incarnation=self.owner_incarnation, raylet=self.raylet,
            request_id=self.request_id, lease_id=self.lease_id, worker=self.worker,
            node_id=self.node_id, node_incarnation=self.node_incarnation, death=self.death)

    @classmethod
    def from_record(cls, rec: ActorRecord) -> ActorRow:
        return cls(
            spec=rec.spec, function=rec.function, phase=ActorPhase(rec.phase),
            owner_incarnation=rec.owner_incarnation, version=rec.version,
            num_restarts=rec.num_restarts, stage=Stage(rec.stage), raylet=rec.raylet,
            request_id=rec.request_id, lease_id=rec.lease_id, worker=rec.worker,
            node_id=rec.node_id, node_incarnation=rec.node_incarnation, death=rec.death,
            written=Stage(rec.stage))


class ActorManagerConfig(msgspec.Struct, frozen=True, kw_only=True):
    lease_retry_ns: Nanos = NANOS_PER_SECOND
    create_retry_ns: Nanos = NANOS_PER_SECOND
    create_silent_max: int = 10
    place_retry_ns: Nanos = NANOS_PER_SECOND
    subscriber_timeout_ns: Nanos = 30 * NANOS_PER_SECOND
    actors_max: int = 100_000  # live (not dead) actors
    dead_max: int = 1000  # dead rows kept for lookups and late polls
    request_block: int = 1024  # lease request ids reserved per durable write


class ClusterFacts(Protocol):
    """What the actor manager reads of the rest of the GCS."""

    def node(self, node_id: NodeId) -> NodeInfo | None: ...
    def live_nodes(self) -> list[NodeResources]: ...
    def departed(self, worker: Address) -> bool: ...  # a worker that ended, a driver that exited


def check_move(row: ActorRow | None, actor_id: ActorId, frm: ActorPhase | None,
               to: ActorPhase) -> None:
    """Raises ``InvalidTransition`` unless ``frm -> to`` is a legal move."""
    if (frm, to) not in TRANSITIONS:
        expected = " or ".join(
            str(f.value if f else "new") for f, t in TRANSITIONS if t is to)
        raise InvalidTransition("gcs actors", f"move actor to {to.value}", actor_id,
                                frm.value if frm else "new", expected)


def state_diagram() -> str:
    """The lifecycle as Mermaid text, generated from ``TRANSITIONS`` (for the docs)."""
    lines = ["stateDiagram-v2"]
    for (frm, to), why in TRANSITIONS.items():
        lines.append(f"    {frm.value if frm else '[*]'} --> {to.value}: {why}")
    return "\n".join(lines)
