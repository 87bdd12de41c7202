"""The node's object table: which stored objects this node holds, pins, and pulls.

Theory of operation
-------------------
Values above the inline limit live in each node's shared-memory store; the
kernel only tracks them. An entry is ``LOCAL`` (its bytes are in this node's
store) or ``PULLING`` (being fetched from another node).

* ``PinObject`` from a local core worker records the primary copy of a new
  object for its owner; it stays until the owner's ``FreeObjects``.
* ``PullObject`` from a local core worker: a local object is answered
  ``ObjectLocal`` at once. Otherwise the entry starts ``PULLING``: the raylet
  asks one listed location (``RequestObject``) for the chunks it lacks and
  writes each arriving ``ObjectChunk`` into the store (``WriteObjectChunk``). When
  every chunk has arrived the entry is ``LOCAL`` and every waiter hears
  ``ObjectLocal``. A pull makes no progress for ``pull_retry_ns``: ask the next
  location for what is still missing. A location that answers ``ObjectMissing``
  or whose node is dead is dropped; with none left, waiters hear
  ``ObjectUnavailable`` (their owner decides: reconstruct or report it lost).
* ``RequestObject`` from another raylet: a local object is sent
  (``SendObjectChunks``), else ``ObjectMissing``.
* ``ObjectEvicted`` (host input): the store dropped a secondary copy to make
  room; the entry is forgotten, so the next ``PullObject`` fetches it again,
  and the owner hears ``ObjectLocationRemoved`` (else it would tell readers on
  this node that the object is here). A puller sent here before the owner knew
  is answered ``ObjectMissing`` and moves on to the next location.
* ``FreeObjects`` drops the copy (``DeleteObject``). A pull of a freed object
  still in flight finishes into the store and is dropped when nobody waits.

Chunks are idempotent: a duplicate is ignored, so loss, duplication and
reordering of chunks are all repaired by re-requesting what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import msgspec

from shoal.kernel.errors import InvariantViolation
from shoal.kernel.ids import NANOS_PER_MILLI, Nanos, NodeId, ObjectId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer
from shoal.kernel.raylet.object_protocol import (
    CHUNK_BYTES,
    DeleteObject,
    FreeObjects,
    ObjectChunk,
    ObjectLocal,
    ObjectLocationAdded,
    ObjectLocationRemoved,
    ObjectMissing,
    ObjectUnavailable,
    PinObject,
    PullObject,
    RequestObject,
    SendObjectChunks,
    WriteObjectChunk,
)

PULL_TIMER_PREFIX = "raylet.pull."


class ObjectsConfig(msgspec.Struct, frozen=True, kw_only=True):
    chunk_bytes: int = CHUNK_BYTES
    pull_retry_ns: Nanos = 500 * NANOS_PER_MILLI
    objects_max: int = 1_000_000


class EntryPhase(Enum):
    PULLING = "pulling"
    LOCAL = "local"


@dataclass(slots=True, eq=False)
class _Entry:
    object_id: ObjectId
    size: int
    phase: EntryPhase
    owner: Address | None = None
    pinned: bool = False
    locations: list[NodeId] = field(default_factory=list)
    received: dict[int, None] = field(default_factory=dict)
    waiters: dict[Address, None] = field(default_factory=dict)
    freed: bool = False


def raylet_of(node_id: NodeId) -> Address:
    return Address(node=node_id, component="raylet")


class ObjectTable:
    """Stored objects of one node. A sub-machine of ``Raylet``."""

    def __init__(self, node_id: NodeId, config: ObjectsConfig) -> None:
        self._node_id = node_id
        self._config = config
        self._entries: dict[ObjectId, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def is_local(self, object_id: ObjectId) -> bool:
        entry = self._entries.get(object_id)
        return entry is not None and entry.phase is EntryPhase.LOCAL

    def pinned_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.pinned)

    def _chunk_count(self, size: int) -> int:
        return max(1, -(-size // self._config.chunk_bytes))

    # --- local core workers ------------------------------------------------

    def on_pin(self, msg: PinObject) -> list[Msg]:
        entry = self._entries.get(msg.object_id)
        if entry is None:
            entry = self._entries[msg.object_id] = _Entry(
                object_id=msg.object_id, size=msg.size, phase=EntryPhase.LOCAL)
        entry.owner, entry.pinned = msg.owner, True
        return []

    def on_pull(self, src: Address, msg: PullObject, now: Nanos) -> list[Msg]:
        entry = self._entries.get(msg.object_id)
        if entry is not None and entry.phase is EntryPhase.LOCAL:
            return [Send(dst=src, msg=ObjectLocal(object_id=msg.object_id))]
        if entry is None:
            if len(self._entries) >= self._config.objects_max:
                return [Send(dst=src, msg=ObjectUnavailable(object_id=msg.object_id, reason=(
                    f"raylet {self._node_id}: object table full ({len(self._entries)} "
                    "objects); free objects before fetching more")))]
            entry = self._entries[msg.object_id] = _Entry(
                object_id=msg.object_id, size=msg.size, phase=EntryPhase.PULLING, owner=msg.owner)
        entry.waiters[src] = None
        for node in msg.locations:
            if node != self._node_id and node not in entry.locations:
                entry.locations.append(node)
        return self._request_missing(entry, now)

    def on_free(self, msg: FreeObjects) -> list[Msg]:
        effects: list[Msg] = []
        for object_id in msg.object_ids:
            entry = self._entries.get(object_id)
            if entry is None:
                continue
            if entry.phase is EntryPhase.PULLING and entry.waiters:
                entry.freed, entry.pinned = True, False
                continue
            del self._entries[object_id]
            effects += [CancelTimer(key=PULL_TIMER_PREFIX + object_id), DeleteObject(object_id=object_id)]
        return effects

    def on_evicted(self, object_id: ObjectId) -> list[Msg]:
        entry = self._entries.get(object_id)
        if entry is None or entry.phase is not EntryPhase.LOCAL or entry.pinned:
            return []  # a pinned (primary) copy is spilled, never evicted
        del self._entries[object_id]
        if entry.owner is None or entry.freed:
            return []
        return [Send(dst=entry.owner, msg=ObjectLocationRemoved(
            object_id=object_id, node_id=self._node_id))]

    # --- other raylets ---------------------------------------------------

    def on_request(self, src: Address, msg: RequestObject) -> list[Msg]:
        entry = self._entries.get(msg.object_id)
        if entry is None or entry.phase is not EntryPhase.LOCAL:
            return [Send(dst=src, msg=ObjectMissing(object_id=msg.object_id))]
        chunks = msg.chunks or tuple(range(self._chunk_count(entry.size)))
        return [SendObjectChunks(dst=src, object_id=msg.object_id, chunks=chunks,
                                 chunk_bytes=self._config.chunk_bytes)]

    def on_chunk(self, msg: ObjectChunk, now: Nanos) -> list[Msg]:
        entry = self._entries.get(msg.object_id)
        if entry is None or entry.phase is not EntryPhase.PULLING or msg.index in entry.received:
            return []  # not wanted, or a duplicate
        entry.received[msg.index] = None
        effects: list[Msg] = [WriteObjectChunk(
            object_id=msg.object_id, offset=msg.index * self._config.chunk_bytes,
            total_size=msg.size, data=msg.data)]
        if len(entry.received) < msg.chunk_count:
            # Progress: the retry waits for pull_retry_ns without a chunk, not from the
            # request (a transfer longer than that would re-request, and so resend, the rest).
            return effects + [SetTimer(key=PULL_TIMER_PREFIX + entry.object_id,
                                       at_ns=now + self._config.pull_retry_ns)]
        entry.phase = EntryPhase.LOCAL
        entry.received.clear()
        effects.append(CancelTimer(key=PULL_TIMER_PREFIX + entry.object_id))
        if entry.owner is not None and not entry.freed:
            effects.append(Send(dst=entry.owner, msg=ObjectLocationAdded(
                object_id=entry.object_id, node_id=self._node_id)))
        effects += [Send(dst=w, msg=ObjectLocal(object_id=entry.object_id)) for w in entry.waiters]
        entry.waiters.clear()
        if entry.freed:
            del self._entries[entry.object_id]
            effects.append(DeleteObject(object_id=entry.object_id))
        return effects

    def on_missing(self, src: Address, msg: ObjectMissing, now: Nanos) -> list[Msg]:
        entry = self._entries.get(msg.object_id)
        if entry is None or entry.phase is not EntryPhase.PULLING:
            return []
        if src.node in entry.locations:
            entry.locations.remove(src.node)
        return self._request_missing(entry, now)

    def on_pull_timer(self, object_id: ObjectId, now: Nanos) -> list[Msg]:
        entry = self._entries.get(object_id)
        if entry is None or entry.phase is not EntryPhase.PULLING:
            return []
        if len(entry.locations) > 1:  # try the next location: this one may be slow or gone
            entry.locations.append(entry.locations.pop(0))
        return self._request_missing(entry, now)

    def on_nodes_dead(self, dead: dict[NodeId, None], now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        for entry in list(self._entries.values()):
            if entry.phase is EntryPhase.PULLING and any(n in dead for n in entry.locations):
                entry.locations = [n for n in entry.locations if n not in dead]
                effects += self._request_missing(entry, now)
        return effects

    def _request_missing(self, entry: _Entry, now: Nanos) -> list[Msg]:
        if not entry.locations:
            return self._give_up(entry, "no node that held a copy could provide it")
        missing = tuple(i for i in range(self._chunk_count(entry.size)) if i not in entry.received)
        return [
            Send(dst=raylet_of(entry.locations[0]), msg=RequestObject(
                object_id=entry.object_id, chunks=missing if entry.received else ())),
            SetTimer(key=PULL_TIMER_PREFIX + entry.object_id, at_ns=now + self._config.pull_retry_ns),
        ]

    def _give_up(self, entry: _Entry, why: str) -> list[Msg]:
        del self._entries[entry.object_id]
        reason = f"raylet {self._node_id}: could not pull object {entry.object_id}: {why}"
        effects: list[Msg] = [CancelTimer(key=PULL_TIMER_PREFIX + entry.object_id)]
        if entry.received:
            effects.append(DeleteObject(object_id=entry.object_id))
        return effects + [Send(dst=w, msg=ObjectUnavailable(object_id=entry.object_id, reason=reason))
                          for w in entry.waiters]

    def fate_share(self) -> list[Msg]:
        """The node was declared dead: its copies are presumed lost by the cluster."""
        effects: list[Msg] = [DeleteObject(object_id=oid) for oid in self._entries]
        effects += [CancelTimer(key=PULL_TIMER_PREFIX + oid) for oid in self._entries]
        self._entries.clear()
        return effects

    def quiescence_problems(self) -> list[str]:
        pinned = [oid for oid, e in self._entries.items() if e.pinned]
        pulling = [oid for oid, e in self._entries.items() if e.phase is EntryPhase.PULLING]
        out = [f"object {oid} is still pinned" for oid in pinned[:3]]
        return out + [f"object {oid} is still being pulled" for oid in pulling[:3]]

    def check_invariants(self) -> None:
        for oid, entry in self._entries.items():
            if entry.object_id != oid:
                raise InvariantViolation(f"raylet objects: {oid!r} filed under another id")
            if entry.phase is EntryPhase.LOCAL and (entry.waiters or entry.received):
                raise InvariantViolation(
                    f"raylet objects: local object {oid!r} still has pull state")
