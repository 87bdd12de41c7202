"""The GCS's cluster resource view: what every live node has, and has free.

Theory of operation
-------------------
One entry per live node, keyed by node id, holding the incarnation it belongs
to, the node's total and available resources, and the ``seq`` of the newest
report applied. Entries follow the node table (``sync_nodes``, called by the
GCS whenever the table's version moves): a node that becomes alive, or alive
under a new incarnation, gets a fresh entry with everything available (a
raylet that joins holds nothing; one that rejoins has killed its workers); a
node that dies or leaves is removed. There is no lifecycle beyond
present/absent, so no phase table.

``ResourceReport`` from the raylet of a live entry's incarnation replaces the
entry's numbers when its ``seq`` is newer than the last applied; a report from
another incarnation or an unknown node is stale and ignored (the node table
settles who is alive). Every accepted report is answered with a
``ResourceViewUpdate`` carrying the entries changed since the version the
report says its raylet has, and ``ack_seq``.

Departed workers: a report's ``departed`` worker ids (its node's workers that
ended) are remembered, up to ``departed_max`` of them, each under the version
that brought it, and handed to every raylet in later updates, so a raylet can
reclaim what a dead worker of another node owned. They bump the version like an
entry change (logged under the reporting node).

Versions: every change (entry added, updated, removed) bumps ``version`` and
appends the node id to a bounded change log, like the node table's. A delta
older than the log, from another ``epoch``, from version 0, or from a version
the GCS has not reached becomes a full snapshot. The view is soft state: it is
never persisted; a restarted GCS starts a new epoch (its start time plus one)
and rebuilds the entries from its recovered node table.

Invariants (``check_invariants``): the change log is contiguous and ends at
``version``; no entry is ahead of ``version``; the entries are exactly the live
rows of the node table, each under the row's incarnation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.protocol import NodeInfo, Resources
from shoal.kernel.gcs.resource_protocol import (
    NodeResources,
    ResourceReport,
    ResourceViewUpdate,
)
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import Address, Msg, Rejected, Send


class ResourceViewConfig(msgspec.Struct, frozen=True, kw_only=True):
    change_log_max: int = 4096
    departed_max: int = 4096  # departed workers remembered for raylets that lag


@dataclass(slots=True, eq=False)
class _Entry:
    node_id: NodeId
    incarnation: int
    total: Resources
    available: Resources
    seq: int
    version: int

    def row(self) -> NodeResources:
        return NodeResources(node_id=self.node_id, incarnation=self.incarnation,
                             total=self.total, available=self.available)


def resource_problem(resources: Mapping[str, float]) -> str:
    """Why ``resources`` is not a valid resource map, or ``""`` when it is."""
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            return f"resource name {name!r} is not a non-empty string"
        if not isinstance(amount, (int, float)) or isinstance(amount, bool):
            return f"resource {name!r} has amount {amount!r}, which is not a number"
        if not math.isfinite(amount) or amount < 0 or amount > 2**40:
            return f"resource {name!r} has amount {amount!r}; expected 0 <= amount <= 2**40"
    return ""


class ClusterResources:
    """The GCS's resource view: a sub-machine driven by ``Gcs.handle``."""

    def __init__(self, config: ResourceViewConfig) -> None:
        self._config = config
        self._entries: dict[NodeId, _Entry] = {}
        self.epoch = 1
        self.version = 0
        self._log_base = 0
        self._log: list[NodeId] = []
        self._departed: dict[Address, int] = {}  # worker -> version that brought it, in order
        self._rows_cache: tuple[NodeResources, ...] = ()
        self._rows_at_version = -1  # the version ``_rows_cache`` was built at

    # --- introspection ---------------------------------------------------

    @property
    def rows(self) -> tuple[NodeResources, ...]:
        # Every change to what a row shows commits a new version (epochs only start,
        # with a new process), so the tuple built for a version stays right until the next.
        if self._rows_at_version != self.version:
            self._rows_cache = tuple(entry.row() for entry in self._entries.values())
            self._rows_at_version = self.version
        return self._rows_cache

    def row(self, node_id: NodeId) -> NodeResources | None:
        entry = self._entries.get(node_id)
        return entry.row() if entry else None

    def is_departed(self, worker: Address) -> bool:
        """Whether a raylet reported this worker process ended (as far back as remembered)."""
        return worker in self._departed

    # --- inputs ----------------------------------------------------------

    def on_started(self, now: Nanos) -> None:
        """A new GCS process: versions from here on belong to a new epoch."""
        self.epoch = max(now, 0) + 1

    def sync_nodes(self, rows: Iterable[NodeInfo]) -> None:
        """Follows the node table: seeds entries of new live incarnations, drops the dead."""
        alive: dict[NodeId, NodeInfo] = {}
        for info in rows:
            if info.state == "alive":
                alive[info.node_id] = info
        for node_id in [n for n, e in self._entries.items()
                        if n not in alive or alive[n].incarnation != e.incarnation]:
            del self._entries[node_id]
            self._commit(node_id)
        for node_id, info in alive.items():
            if node_id not in self._entries:
                self._entries[node_id] = _Entry(
                    node_id=node_id, incarnation=info.incarnation, total=dict(info.resources),
                    available=dict(info.resources), seq=0, version=0)
                self._commit(node_id)

    def on_report(self, src: Address, msg: ResourceReport) -> list[Msg]:
        """Applies a raylet's report if it is current and newer; answers with a delta."""
        problem = self._report_problem(src, msg)
        if problem:
            return [Send(dst=src, msg=Rejected(request_type="ResourceReport", reason=(
                f"gcs: resource report from {src} refused: {problem}")))]
        entry = self._entries.get(msg.node_id)
        if entry is None or entry.incarnation != msg.incarnation:
            return []  # from an incarnation the node table no longer (or not yet) has alive
        if msg.seq > entry.seq:
            entry.seq = msg.seq
            if (entry.total, entry.available) != (msg.total, msg.available):
                entry.total, entry.available = dict(msg.total), dict(msg.available)
                self._commit(msg.node_id)
        self._add_departed(msg)
        update = self._delta(msg.view_epoch, msg.view_version, msg.seq)
        return [Send(dst=src, msg=update)]

    @staticmethod
    def _report_problem(src: Address, msg: ResourceReport) -> str:
        if src.component != "raylet" or src.node != msg.node_id:
            return f"only the raylet of node {msg.node_id!r} may report its resources"
        return resource_problem(msg.total) or resource_problem(msg.available)

    def _add_departed(self, msg: ResourceReport) -> None:
        workers = [Address(node=msg.node_id, component="worker", worker=w) for w in msg.departed]
        new = [w for w in dict.fromkeys(workers) if w not in self._departed]
        if not new:
            return
        self._commit(msg.node_id)
        for worker in new:
            self._departed[worker] = self.version
        while len(self._departed) > self._config.departed_max:
            del self._departed[next(iter(self._departed))]

    def _departed_since(self, known: int) -> tuple[Address, ...]:
        since: list[Address] = []
        for worker in reversed(self._departed):
            if self._departed[worker] <= known:
                break
            since.append(worker)
        return tuple(reversed(since))

    # --- versions --------------------------------------------------------

    def _commit(self, node_id: NodeId) -> None:
        self.version += 1
        entry = self._entries.get(node_id)
        if entry is not None:
            entry.version = self.version
        self._log.append(node_id)
        if len(self._log) > self._config.change_log_max:
            drop = len(self._log) // 2
            del self._log[:drop]
            self._log_base += drop

    def _delta(self, epoch: int, known: int, ack_seq: int) -> ResourceViewUpdate:
        if epoch != self.epoch or known == 0 or known > self.version or known < self._log_base:
            return ResourceViewUpdate(
                epoch=self.epoch, from_version=0, to_version=self.version, full=True,
                entries=self.rows, departed=tuple(self._departed), ack_seq=ack_seq)
        changed = dict.fromkeys(self._log[known - self._log_base:])
        entries = tuple(self._entries[n].row() for n in changed if n in self._entries)
        removed = tuple(n for n in changed if n not in self._entries)
        return ResourceViewUpdate(
            epoch=self.epoch, from_version=known, to_version=self.version, full=False,
            entries=entries, removed=removed, departed=self._departed_since(known),
            ack_seq=ack_seq)

    # --- invariants ------------------------------------------------------

    def check_invariants(self, rows: Iterable[NodeInfo]) -> None:
        """Raises ``InvariantViolation`` unless the view matches the node table ``rows``."""
        if self._log_base + len(self._log) != self.version:
            raise InvariantViolation(
                f"gcs resources: change log covers up to {self._log_base + len(self._log)}, "
                f"but the view is at version {self.version}")
        alive = {info.node_id: info.incarnation for info in rows if info.state == "alive"}
        held = {node_id: entry.incarnation for node_id, entry in self._entries.items()}
        if alive != held:
            raise InvariantViolation(
                f"gcs resources: the view holds {sorted(held.items())}, but the live "
                f"incarnations are {sorted(alive.items())}")
        for entry in self._entries.values():
            if entry.version > self.version:
                raise InvariantViolation(
                    f"gcs resources: node {entry.node_id!r} is ahead of the view")
        versions = list(self._departed.values())
        if versions != sorted(versions) or (versions and versions[-1] > self.version) or len(
                versions) > self._config.departed_max:
            raise InvariantViolation("gcs resources: the departed workers are out of order")
