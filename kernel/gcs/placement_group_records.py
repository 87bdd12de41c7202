"""The GCS placement group manager's rows, their legal moves, and bundles being released.

A row (``PgRow``) is one group. ``state`` is Ray's: ``PENDING`` until every
bundle was committed once, ``CREATED``, ``RESCHEDULING`` after bundles of a
created group were lost with their node, ``REMOVED`` for good; moves only along
``TRANSITIONS``. While not removed, ``stage`` says what the current placement
``attempt`` is doing: ``UNPLACED`` (bundles wait for room), ``PREPARING``
(``PrepareBundles`` out to ``waiting`` nodes), ``COMMITTING`` (``CommitBundles``
out), ``NONE`` (every bundle committed). ``nodes[i]`` is where bundle ``i`` is
(or is being reserved), with that node's incarnation; ``committed[i]`` whether
it is committed there.

``Releases`` holds bundles the GCS is giving back (a rolled-back attempt, a
removed group, a refused commit): one entry per (group, node), written
durably under ``PG_RELEASES_TABLE`` and retransmitted every ``retry_ns`` until
``BundlesReleased``, or until that node incarnation is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import msgspec
from shoal.kernel.errors import InvalidTransition
from shoal.kernel.gcs.placement_group_protocol import (
    PlacementGroupInfo,
    PlacementGroupSpec,
    ReleaseBundles,
)
from shoal.kernel.ids import NANOS_PER_SECOND, Nanos, NodeId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer, StoreDelete, StorePut

PGS_TABLE = "placement_groups"
PG_RELEASES_TABLE = "pg_releases"
PG_TIMER_PREFIX = "gcs.pg."
RELEASE_TIMER_PREFIX = PG_TIMER_PREFIX + "release."


class PgState(Enum):
    PENDING = "PENDING"
    CREATED = "CREATED"
    RESCHEDULING = "RESCHEDULING"
    REMOVED = "REMOVED"


class PgStage(Enum):
    NONE = "none"
    UNPLACED = "unplaced"
    PREPARING = "preparing"
    COMMITTING = "committing"


TRANSITIONS: dict[tuple[PgState | None, PgState], str] = {
    (None, PgState.PENDING): "created by a client",
    (PgState.PENDING, PgState.CREATED): "every bundle committed",
    (PgState.PENDING, PgState.REMOVED): "removed before it was placed",
    (PgState.CREATED, PgState.RESCHEDULING): "a node holding bundles died",
    (PgState.CREATED, PgState.REMOVED): "removed",
    (PgState.RESCHEDULING, PgState.CREATED): "the lost bundles committed again",
    (PgState.RESCHEDULING, PgState.REMOVED): "removed while rescheduling",
}


class PgManagerConfig(msgspec.Struct, frozen=True, kw_only=True):
    retry_ns: Nanos = NANOS_PER_SECOND // 2  # prepare/commit/release retransmits
    place_retry_ns: Nanos = NANOS_PER_SECOND  # placing pending groups again
    groups_max: int = 100_000  # groups not removed
    removed_max: int = 1000  # removed rows kept for lookups
    waiters_max: int = 100_000  # parked WaitPlacementGroupReady requests


class PgRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The durable form of a row."""

    spec: PlacementGroupSpec
    state: str
    stage: str
    attempt: int
    version: int
    nodes: tuple[NodeId | None, ...]
    incarnations: tuple[int, ...]
    committed: tuple[bool, ...]
    attempt_nodes: tuple[tuple[NodeId, tuple[int, ...]], ...]
    waiting: tuple[NodeId, ...]
    reason: str


@dataclass(slots=True, eq=False)
class PgRow:
    spec: PlacementGroupSpec
    state: PgState
    nodes: list[NodeId | None]
    incarnations: list[int]
    committed: list[bool]
    stage: PgStage = PgStage.UNPLACED
    attempt: int = 0
    version: int = 0
    attempt_nodes: dict[NodeId, tuple[int, ...]] = field(default_factory=dict)
    waiting: dict[NodeId, None] = field(default_factory=dict)
    reason: str = ""

    @classmethod
    def new(cls, spec: PlacementGroupSpec) -> PgRow:
        count = len(spec.bundles)
        return cls(spec=spec, state=PgState.PENDING, nodes=[None] * count,
                   incarnations=[0] * count, committed=[False] * count)

    @property
    def pg_id(self) -> str:
        return self.spec.pg_id

    def info(self) -> PlacementGroupInfo:
        spec = self.spec
        return PlacementGroupInfo(
            pg_id=spec.pg_id, state=self.state.value, bundles=spec.bundles,
            strategy=spec.strategy, name=spec.name, namespace=spec.namespace,
            detached=spec.detached,
            bundle_nodes=tuple(n if c else None for n, c in zip(self.nodes, self.committed)),
            version=self.version, reason=self.reason)

    def held_nodes(self) -> list[NodeId]:
        """Nodes holding (or asked to hold) bundles of this group, in bundle order."""
        held = [n for n in self.nodes if n is not None]
        return list(dict.fromkeys([*held, *self.attempt_nodes]))

    def record(self) -> PgRecord:
        return PgRecord(
            spec=self.spec, state=self.state.value, stage=self.stage.value,
            attempt=self.attempt, version=self.version, nodes=tuple(self.nodes),
            incarnations=tuple(self.incarnations), committed=tuple(self.committed),
            attempt_nodes=tuple(self.attempt_nodes.items()), waiting=tuple(self.waiting),
            reason=self.reason)

    @classmethod
    def from_record(cls, rec: PgRecord) -> PgRow:
        return cls(
            spec=rec.spec, state=PgState(rec.state), nodes=list(rec.nodes),
            incarnations=list(rec.incarnations), committed=list(rec.committed),
            stage=PgStage(rec.stage), attempt=rec.attempt, version=rec.version,
            attempt_nodes=dict(rec.attempt_nodes), waiting=dict.fromkeys(rec.waiting),
            reason=rec.reason)


def check_move(pg_id: str, frm: PgState | None, to: PgState) -> None:
    """Raises ``InvalidTransition`` unless ``frm -> to`` is a legal move."""
    if (frm, to) not in TRANSITIONS:
        expected = " or ".join(str(f.value if f else "new") for f, t in TRANSITIONS if t is to)
        raise InvalidTransition("gcs placement groups", f"move group to {to.value}", pg_id,
                                frm.value if frm else "new", expected)


def state_diagram() -> str:
    """The lifecycle as Mermaid text, generated from ``TRANSITIONS`` (for the docs)."""
    lines = ["stateDiagram-v2"]
    for (frm, to), why in TRANSITIONS.items():
        lines.append(f"    {frm.value if frm else '[*]'} --> {to.value}: {why}")
    return "\n".join(lines)


class _Release(msgspec.Struct, frozen=True, kw_only=True):
    pg_id: str
    node_id: NodeId
    incarnation: int
    attempt: int
    indexes: tuple[int, ...]  # () : every bundle of the group there
    reason: str


def _merge(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    return () if not old or not new else tuple(sorted(set(old) | set(new)))


class Releases:
    """Bundles being given back, durable until the raylet acknowledges."""

    def __init__(self, retry_ns: Nanos, recovered: Mapping[bytes, bytes] | None) -> None:
        self._retry_ns = retry_ns
        self._entries: dict[str, _Release] = {}
        decoder = msgspec.msgpack.Decoder(_Release)
        for key in sorted(recovered or {}):
            self._entries[key.decode()] = decoder.decode((recovered or {})[key])

    @staticmethod
    def _key(pg_id: str, node_id: NodeId) -> str:
        return f"{pg_id}@{node_id}"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[tuple[str, NodeId, int], ...]:
        """(group, node, incarnation) of every release in flight."""
        return tuple((e.pg_id, e.node_id, e.incarnation) for e in self._entries.values())

    def start(self, pg_id: str, node_id: NodeId, incarnation: int, attempt: int,
              indexes: tuple[int, ...], reason: str, now: Nanos) -> list[Msg]:
        key = self._key(pg_id, node_id)
        old = self._entries.get(key)
        if old is not None and old.incarnation == incarnation:
            merged = _merge(old.indexes, indexes)
            if old.attempt >= attempt and merged == old.indexes:
                return []  # already giving back at least as much
            attempt, indexes = max(attempt, old.attempt), merged
        entry = _Release(pg_id=pg_id, node_id=node_id, incarnation=incarnation, attempt=attempt,
                         indexes=indexes, reason=reason)
        self._entries[key] = entry
        put = StorePut(table=PG_RELEASES_TABLE, key=key.encode(),
                       value=msgspec.msgpack.encode(entry))
        return [put, *self.send(key, now)]

    def send(self, key: str, now: Nanos) -> list[Msg]:
        entry = self._entries.get(key)
        if entry is None:
            return []
        msg = ReleaseBundles(pg_id=entry.pg_id, attempt=entry.attempt, indexes=entry.indexes,
                             reason=entry.reason)
        return [Send(dst=Address(node=entry.node_id, component="raylet"), msg=msg),
                SetTimer(key=f"{RELEASE_TIMER_PREFIX}{key}", at_ns=now + self._retry_ns)]

    def resend_all(self, now: Nanos) -> list[Msg]:
        return [e for key in list(self._entries) for e in self.send(key, now)]

    def acknowledged(self, pg_id: str, node_id: NodeId, attempt: int,
                     indexes: tuple[int, ...]) -> list[Msg]:
        key = self._key(pg_id, node_id)
        entry = self._entries.get(key)
        if entry is None or entry.attempt > attempt or _merge(entry.indexes, indexes) != indexes:
            return []  # a late answer to an older, smaller release: a bigger one is in flight
        return self.forget(key)

    def forget(self, key: str) -> list[Msg]:
        if self._entries.pop(key, None) is None:
            return []
        return [CancelTimer(key=f"{RELEASE_TIMER_PREFIX}{key}"),
                StoreDelete(table=PG_RELEASES_TABLE, key=key.encode())]
