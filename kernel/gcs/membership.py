"""Node membership: registration, heartbeats, failure detection, node-table pub/sub.

Theory of operation
-------------------
Each node has one row, keyed by node id, whose phase is ``ALIVE`` or ``DEAD``
and whose ``incarnation`` counts how many times it has joined. A raylet
registers with ``(boot, attempt)``: ``boot`` grows each time its process starts,
``attempt`` each time it rejoins within one boot. The GCS orders registrations by
that pair: an older pair is a stale retransmit (ignored), the same pair is a
duplicate (answered again), a newer pair starts a new incarnation (killing the
old one first if it was still alive).

A heartbeat refreshes ``last_heartbeat_ns`` of the matching live incarnation
only. Heartbeats from an incarnation that is dead or superseded are answered with
``NodeDeclaredDead`` so the node rejoins, and never revive the row. A sweep timer
declares dead every live node whose last heartbeat is ``heartbeat_timeout_ns``
old, so a node is never declared dead sooner than that after it was last heard.

Every change bumps ``version`` and appends ``(version, node_id)`` to a bounded
change log. Subscribers (live raylets, plus components that poll with
``SubscribeNodes``) are pushed the rows changed since the version they are known
to have; a raylet's heartbeat reports the version it has applied, so a lost push
is repaired at the next beat. Deltas older than the log become full snapshots.

Durable state: each row is written with ``StorePut("nodes", ...)``. A restarted GCS
rebuilds the rows from the store, gives every live node a fresh deadline,
re-subscribes every live node's raylet (its next push is a full snapshot), and
resumes ``version`` from the highest row version.

Invariants (``check_invariants``): the change log is contiguous and ends at
``version``; no row has a version above ``version``; only live rows are
deadline-tracked; every subscriber's known version is at most ``version``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import msgspec

from shoal.kernel.buggify import Buggify
from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.gcs.protocol import (
    Heartbeat,
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    RegisterNode,
    Resources,
    SubscribeNodes,
    UnregisterNode,
)
from shoal.kernel.ids import NANOS_PER_SECOND, Nanos, NodeId
from shoal.kernel.messages import Address, Msg, Rejected, Send, StorePut

NODES_TABLE = "nodes"


class NodePhase(Enum):
    ALIVE = "alive"
    DEAD = "dead"


# The legal moves of a row. A move not listed here is a bug in this module.
_TRANSITIONS: dict[tuple[NodePhase | None, NodePhase], str] = {
    (None, NodePhase.ALIVE): "first registration",
    (NodePhase.ALIVE, NodePhase.DEAD): "declared dead",
    (NodePhase.DEAD, NodePhase.ALIVE): "rejoined under a new incarnation",
}


class MembershipConfig(msgspec.Struct, frozen=True, kw_only=True):
    heartbeat_timeout_ns: Nanos = 5 * NANOS_PER_SECOND
    health_check_interval_ns: Nanos = NANOS_PER_SECOND // 2
    subscriber_timeout_ns: Nanos = 30 * NANOS_PER_SECOND
    change_log_max: int = 4096


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """The durable form of a row."""

    node_id: NodeId
    incarnation: int
    phase: str
    resources: Resources
    endpoint: str
    boot: int
    attempt: int
    death_cause: str
    version: int


@dataclass(slots=True, eq=False)
class _Row:
    node_id: NodeId
    incarnation: int
    phase: NodePhase
    resources: Resources
    endpoint: str
    boot: int
    attempt: int
    death_cause: str
    version: int
    last_heartbeat_ns: Nanos
    # The NodeInfo built at ``info_version``: every change to what it shows commits a
    # new version, and rows are published far more often than they change.
    info_cache: NodeInfo | None = None
    info_version: int = -1

    def info(self) -> NodeInfo:
        if self.info_cache is None or self.info_version != self.version:
            self.info_cache = NodeInfo(
                node_id=self.node_id,
                incarnation=self.incarnation,
                state=self.phase.value,
                resources=self.resources,
                endpoint=self.endpoint,
                death_cause=self.death_cause,
            )
            self.info_version = self.version
        return self.info_cache

    def record(self) -> NodeRecord:
        return NodeRecord(
            node_id=self.node_id, incarnation=self.incarnation, phase=self.phase.value,
            resources=self.resources, endpoint=self.endpoint, boot=self.boot,
            attempt=self.attempt, death_cause=self.death_cause, version=self.version,
        )


@dataclass(slots=True, eq=False)
class _Subscriber:
    known_version: int
    last_seen_ns: Nanos


def raylet_address(node_id: NodeId) -> Address:
    return Address(node=node_id, component="raylet")


class NodeDirectory:
    """The GCS's node table: a sub-machine driven by ``Gcs.handle``."""

    def __init__(
        self,
        config: MembershipConfig,
        buggify: Buggify,
        recovered: Mapping[bytes, bytes] | None = None,
    ) -> None:
        self._config = config
        self._buggify = buggify
        self._rows: dict[NodeId, _Row] = {}
        self._pollers: dict[Address, _Subscriber] = {}
        self._raylet_known: dict[NodeId, int] = {}
        self.version = 0
        self._rows_cache: tuple[NodeInfo, ...] = ()
        self._rows_at_version = -1  # the version ``_rows_cache`` was built at
        self._recover(recovered or {})
        self._log_base = self.version
        self._log: list[NodeId] = []

    # --- introspection ---------------------------------------------------

    @property
    def rows_by_id(self) -> dict[NodeId, _Row]:
        return self._rows

    @property
    def rows(self) -> tuple[NodeInfo, ...]:
        # Every change to what a NodeInfo shows commits a new version, so the tuple
        # built for a version stays right until the next; the GCS reads it often.
        if self._rows_at_version != self.version:
            self._rows_cache = tuple(row.info() for row in self._rows.values())
            self._rows_at_version = self.version
        return self._rows_cache

    def info(self, node_id: NodeId) -> NodeInfo | None:
        row = self._rows.get(node_id)
        return row.info() if row else None

    # --- recovery --------------------------------------------------------

    def _recover(self, recovered: Mapping[bytes, bytes]) -> None:
        decoder = msgspec.msgpack.Decoder(NodeRecord)
        for key in sorted(recovered):
            rec = decoder.decode(recovered[key])
            self._rows[rec.node_id] = _Row(
                node_id=rec.node_id, incarnation=rec.incarnation, phase=NodePhase(rec.phase),
                resources=rec.resources, endpoint=rec.endpoint, boot=rec.boot,
                attempt=rec.attempt, death_cause=rec.death_cause, version=rec.version,
                last_heartbeat_ns=-1,
            )
            self.version = max(self.version, rec.version)
            if rec.phase == NodePhase.ALIVE.value:
                self._raylet_known[rec.node_id] = 0  # unknown until its next heartbeat

    def on_started(self, now: Nanos) -> None:
        """Gives every recovered live node a full timeout from the restart."""
        for row in self._rows.values():
            if row.last_heartbeat_ns < 0:
                row.last_heartbeat_ns = now

    # --- registration ----------------------------------------------------

    def on_register(self, src: Address, msg: RegisterNode, now: Nanos) -> list[Msg]:
        row = self._rows.get(msg.node_id)
        effects: list[Msg]
        if row is None:
            row, effects = self._create(msg, now)
            return self._after_change(effects + [self._registered(src, row)])
        key, row_key = (msg.boot, msg.attempt), (row.boot, row.attempt)
        if key < row_key:
            return []  # a retransmit from before the node's latest registration
        if key == row_key:
            if row.phase is NodePhase.ALIVE:
                return [self._registered(src, row)]
            return [Send(dst=src, msg=NodeDeclaredDead(
                node_id=row.node_id, incarnation=row.incarnation, cause=row.death_cause,
                attempt=row.attempt))]
        effects = []
        if row.phase is NodePhase.ALIVE:
            cause = f"replaced by a new registration (boot {msg.boot}, attempt {msg.attempt})"
            effects += self._move(row, NodePhase.DEAD, cause)
        effects += self._rejoin(row, msg, now)
        return self._after_change(effects + [self._registered(src, row)])

    def _create(self, msg: RegisterNode, now: Nanos) -> tuple[_Row, list[Msg]]:
        row = _Row(
            node_id=msg.node_id, incarnation=1, phase=NodePhase.ALIVE,
            resources=dict(msg.resources), endpoint=msg.endpoint, boot=msg.boot,
            attempt=msg.attempt, death_cause="", version=0, last_heartbeat_ns=now,
        )
        self._check_move(None, NodePhase.ALIVE, row)
        self._rows[msg.node_id] = row
        self._raylet_known[msg.node_id] = 0
        return row, self._commit(row)

    def _rejoin(self, row: _Row, msg: RegisterNode, now: Nanos) -> list[Msg]:
        row.incarnation += 1
        row.death_cause = ""
        row.resources = dict(msg.resources)
        row.endpoint = msg.endpoint
        row.boot, row.attempt = msg.boot, msg.attempt
        row.last_heartbeat_ns = now
        self._raylet_known[row.node_id] = 0
        return self._move(row, NodePhase.ALIVE, "")

    def _registered(self, src: Address, row: _Row) -> Send:
        return Send(dst=src, msg=NodeRegistered(
            node_id=row.node_id, incarnation=row.incarnation, boot=row.boot,
            attempt=row.attempt))

    def on_unregister(self, src: Address, msg: UnregisterNode) -> list[Msg]:
        row = self._rows.get(msg.node_id)
        if row is None or row.incarnation != msg.incarnation or row.phase is NodePhase.DEAD:
            return []
        return self._after_change(self._move(row, NodePhase.DEAD, "drained: the node left"))

    # --- heartbeats and failure detection --------------------------------

    def on_heartbeat(self, src: Address, msg: Heartbeat, now: Nanos) -> list[Msg]:
        row = self._rows.get(msg.node_id)
        if row is None:
            return [Send(dst=src, msg=NodeDeclaredDead(
                node_id=msg.node_id, incarnation=msg.incarnation,
                cause="the GCS does not know this node; register again"))]
        if msg.incarnation > row.incarnation:
            return [Send(dst=src, msg=Rejected(request_type="Heartbeat", reason=(
                f"gcs: heartbeat from node {msg.node_id!r} names incarnation "
                f"{msg.incarnation}, but the GCS only issued up to {row.incarnation}; "
                "the node must register before it heartbeats")))]
        if msg.incarnation < row.incarnation or row.phase is NodePhase.DEAD:
            cause = row.death_cause if msg.incarnation == row.incarnation else (
                f"superseded by incarnation {row.incarnation}")
            return [Send(dst=src, msg=NodeDeclaredDead(
                node_id=row.node_id, incarnation=msg.incarnation, cause=cause))]
        row.last_heartbeat_ns = now
        if msg.view_version > self.version:
            return []  # from before a GCS restart lost nothing; the view catches up on change
        if msg.view_version < self.version:
            self._raylet_known[row.node_id] = self.version
            return self._push_to(src, msg.view_version)
        self._raylet_known[row.node_id] = msg.view_version
        return []

    def on_health_check(self, now: Nanos) -> list[Msg]:
        """Declares dead every live node that has been silent for the timeout."""
        timeout = self._config.heartbeat_timeout_ns
        effects: list[Msg] = []
        for row in self._rows.values():
            silent_ns = now - row.last_heartbeat_ns
            if row.phase is NodePhase.ALIVE and silent_ns >= timeout:
                cause = (f"missed heartbeats for {silent_ns / NANOS_PER_SECOND:.3f}s "
                         f"(timeout {timeout / NANOS_PER_SECOND:.3f}s)")
                effects += self._move(row, NodePhase.DEAD, cause)
        self._expire_pollers(now)
        return self._after_change(effects) if effects else []

    def _expire_pollers(self, now: Nanos) -> None:
        horizon = now - self._config.subscriber_timeout_ns
        for addr in [a for a, sub in self._pollers.items() if sub.last_seen_ns < horizon]:
            del self._pollers[addr]

    # --- node-table pub/sub ----------------------------------------------

    def on_subscribe(self, src: Address, msg: SubscribeNodes, now: Nanos) -> list[Msg]:
        known = min(msg.known_version, self.version)
        sub = self._pollers.get(src)
        if sub is None:
            sub = self._pollers[src] = _Subscriber(known_version=known, last_seen_ns=now)
        sub.known_version, sub.last_seen_ns = known, now
        if known < self.version or msg.known_version == 0:
            sub.known_version = self.version
            return self._push_to(src, known)
        return []

    def _after_change(self, effects: list[Msg]) -> list[Msg]:
        """Appends pushes of the rows changed since each subscriber's known version."""
        cache: dict[int, NodeTableUpdate] = {}
        for node_id, known in self._raylet_known.items():
            addr = raylet_address(node_id)
            if known < self.version and not self._buggify.fire("gcs.skip_push"):
                effects.append(Send(dst=addr, msg=self._delta(known, cache)))
                self._raylet_known[node_id] = self.version
        for addr, sub in self._pollers.items():
            if sub.known_version < self.version:
                effects.append(Send(dst=addr, msg=self._delta(sub.known_version, cache)))
                sub.known_version = self.version
        return effects

    def _push_to(self, dst: Address, known: int) -> list[Msg]:
        return [Send(dst=dst, msg=self._delta(known, {}))]

    def _delta(self, known: int, cache: dict[int, NodeTableUpdate]) -> NodeTableUpdate:
        update = cache.get(known)
        if update is not None:
            return update
        if known == 0 or known < self._log_base:
            rows = tuple(row.info() for row in self._rows.values())
            update = NodeTableUpdate(
                from_version=0, to_version=self.version, full=True, nodes=rows)
        else:
            changed = dict.fromkeys(self._log[known - self._log_base:])
            rows = tuple(self._rows[node_id].info() for node_id in changed)
            update = NodeTableUpdate(
                from_version=known, to_version=self.version, full=False, nodes=rows)
        cache[known] = update
        return update

    # --- phase moves -----------------------------------------------------

    def _move(self, row: _Row, to: NodePhase, cause: str) -> list[Msg]:
        self._check_move(row.phase, to, row)
        row.phase = to
        row.death_cause = cause
        if to is NodePhase.DEAD:
            self._raylet_known.pop(row.node_id, None)
        return self._commit(row)

    def _commit(self, row: _Row) -> list[Msg]:
        """Bumps the table version for a changed row, logs it, and persists it."""
        self.version += 1
        row.version = self.version
        self._log.append(row.node_id)
        if len(self._log) > self._config.change_log_max:
            drop = len(self._log) // 2
            del self._log[:drop]
            self._log_base += drop
        key = row.node_id.encode()
        return [StorePut(table=NODES_TABLE, key=key, value=msgspec.msgpack.encode(row.record()))]

    @staticmethod
    def _check_move(frm: NodePhase | None, to: NodePhase, row: _Row) -> None:
        if (frm, to) not in _TRANSITIONS:
            expected = " or ".join(
                str(f.value if f else "new") for f, t in _TRANSITIONS if t is to)
            raise InvalidTransition(
                "gcs", f"move node to {to.value}", row.node_id,
                frm.value if frm else "new", expected)

    def check_invariants(self) -> None:
        if self._log_base + len(self._log) != self.version:
            raise InvariantViolation(
                f"gcs: change log covers up to {self._log_base + len(self._log)}, "
                f"but the table is at version {self.version}")
        for row in self._rows.values():
            if row.version > self.version:
                raise InvariantViolation(f"gcs: node {row.node_id!r} is ahead of the table")
            alive = row.phase is NodePhase.ALIVE
            if (row.node_id in self._raylet_known) != alive:
                raise InvariantViolation(
                    f"gcs: node {row.node_id!r} is {row.phase.value} but its raylet "
                    f"{'is not' if alive else 'is still'} subscribed")
        for known in self._raylet_known.values():
            if known > self.version:
                raise InvariantViolation("gcs: a raylet is known to be ahead of the table")
