"""Placement group bundles on one raylet: the raylet's half of the two-phase reservation.

Theory of operation
-------------------
The GCS reserves a group's bundles on this node in two phases (messages:
``kernel/gcs/placement_group_protocol.py``):

* ``PrepareBundles(pg, attempt, bundles)``: all the bundles are taken from the
  node's general pool (each held in the lease ledger under the holder
  ``bundle:<pg>:<index>``), or none if they do not all fit what is free now;
  answered ``BundlesPrepared(ok)``. A bundle already held under the same
  attempt is kept (a retransmit); one held under an older attempt is released
  first; a prepare of an attempt older than what is held is stale and ignored.
* ``CommitBundles(pg, attempt, indexes)``: the prepared bundles' resources
  join the node as the group's resources (``bundle_resources``: ``CPU_group_i_pg``,
  ``CPU_group_pg``, markers), so that lease requests of the group fit here;
  answered ``BundlesCommitted`` (``ok=False`` if some bundle of that attempt is
  not held: this raylet lost it).
* ``ReleaseBundles(pg, attempt, indexes)``: fences the group at ``attempt``
  (a prepare of that attempt or older that arrives later, a network duplicate,
  is ignored: it would reserve for an attempt the GCS gave up). Bundles of that
  group held under ``attempt`` or older (the ``indexes``, or all) are given back: every lease
  and request using the group's resources here is ended first (workers killed,
  owners told, requests refused), then the group resources leave the node and
  the reserved resources return to the pool. Answered ``BundlesReleased``.

A release of the whole group (no ``indexes``) means the group was removed:
requests for it waiting here are refused, and so are later ones (the last
``REMOVED_MAX`` removed groups are remembered; ``refusal``).

Only the GCS may send these (others are answered ``Rejected``). When the node
fate-shares (declared dead) every bundle is dropped the same way: the GCS
reschedules them elsewhere.

A bundle's lifecycle: ``PREPARED -> COMMITTED``, and either ``-> released``
(forgotten). Invariants (``check_invariants``): the ledger holds exactly the
bundles' reservations; a committed bundle's resources are in the ledger's
total.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.placement_group_protocol import (
    BundlesCommitted,
    BundlesPrepared,
    BundlesReleased,
    CommitBundles,
    PrepareBundles,
    ReleaseBundles,
    bundle_resources,
    group_marker,
)
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import Address, Msg, Rejected, Send
from shoal.kernel.raylet.leases import LeaseManager
from shoal.kernel.raylet.resources import (
    BUNDLE_HOLDER_PREFIX,
    Units,
    describe,
    fits,
    shape_problem,
    to_units,
)

REMOVED_MAX = 4096  # removed groups remembered, to refuse their late requests


@dataclass(slots=True, eq=False)
class _Bundle:
    pg_id: str
    index: int
    attempt: int
    need: Units  # taken from the general pool
    committed: bool = False

    @property
    def holder(self) -> str:
        return f"{BUNDLE_HOLDER_PREFIX}{self.pg_id}:{self.index}"

    def added(self) -> Units:
        """What committing it added to the node's resources."""
        shape = {name: amount / 10_000 for name, amount in self.need.items()}
        return to_units(bundle_resources(self.pg_id, self.index, shape))


class BundleTable:
    """The bundles reserved on this node: a sub-machine of ``Raylet``."""

    def __init__(self, node_id: NodeId, gcs: Address, leases: LeaseManager) -> None:
        self.node_id = node_id
        self._gcs = gcs
        self._leases = leases
        self._bundles: dict[tuple[str, int], _Bundle] = {}
        self._removed: dict[str, None] = {}  # groups removed, oldest first (bounded)
        self._fences: dict[str, int] = {}  # per group: the newest attempt released (bounded)

    @property
    def bundles(self) -> tuple[tuple[str, int, int, bool], ...]:
        """(group, index, attempt, committed) of every bundle held here."""
        return tuple((b.pg_id, b.index, b.attempt, b.committed) for b in self._bundles.values())

    def on_message(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        if src != self._gcs:
            return [Send(dst=src, msg=Rejected(request_type=type(msg).__name__, reason=(
                f"raylet {self.node_id!r}: only the GCS reserves bundles, not {src}")))]
        match msg:
            case PrepareBundles():
                return self._on_prepare(src, msg, now)
            case CommitBundles():
                return self._on_commit(src, msg, now)
            case ReleaseBundles():
                self._fence(msg.pg_id, msg.attempt)
                why = (f"its placement group {msg.pg_id!r} gave back its bundles on node "
                       f"{self.node_id!r} ({msg.reason or 'released'})")
                effects = self._release(msg.pg_id, msg.attempt, msg.indexes, why, now)
                if not msg.indexes:  # the whole group: it was removed
                    effects += self._forget_group(msg.pg_id, why, now)
                return effects + [Send(dst=src, msg=BundlesReleased(
                    pg_id=msg.pg_id, attempt=msg.attempt, indexes=msg.indexes))]
        return []

    def _fence(self, pg_id: str, attempt: int) -> None:
        """Prepares of ``attempt`` or older arriving after its release are stale."""
        self._fences[pg_id] = max(attempt, self._fences.pop(pg_id, 0))  # moved to the end
        while len(self._fences) > REMOVED_MAX:
            del self._fences[next(iter(self._fences))]

    def _on_prepare(self, src: Address, msg: PrepareBundles, now: Nanos) -> list[Msg]:
        if msg.attempt <= self._fences.get(msg.pg_id, -1) or msg.pg_id in self._removed:
            return []  # a late duplicate of a prepare whose attempt was released already
        held = [self._bundles.get((msg.pg_id, b.index)) for b in msg.bundles]
        if any(b is not None and b.attempt > msg.attempt for b in held):
            return []  # a stale prepare: a newer attempt holds the bundle
        for bundle in msg.bundles:
            if not shape_problem(bundle.shape):
                continue
            return [self._prepared(src, msg, False, (
                f"bundle {bundle.index} has a malformed shape: {shape_problem(bundle.shape)}"))]
        older = tuple(b.index for b in held if b is not None and b.attempt < msg.attempt)
        effects = self._release(msg.pg_id, msg.attempt - 1, older, "replaced", now) if older else []
        todo = [b for b in msg.bundles if (msg.pg_id, b.index) not in self._bundles]
        total: Units = {}
        for bundle in todo:
            for name, amount in to_units(bundle.shape).items():
                total[name] = total.get(name, 0) + amount
        ledger = self._leases.ledger
        if not fits(total, ledger.available):
            return effects + [self._prepared(src, msg, False, (
                f"it has {describe(ledger.available)} free, and the bundles need "
                f"{describe(total)}"))]
        for bundle in todo:
            entry = _Bundle(pg_id=msg.pg_id, index=bundle.index, attempt=msg.attempt,
                            need=to_units(bundle.shape))
            ledger.acquire(entry.holder, entry.need)
            self._bundles[(msg.pg_id, bundle.index)] = entry
        return effects + [self._prepared(src, msg, True, "")]

    @staticmethod
    def _prepared(src: Address, msg: PrepareBundles, ok: bool, reason: str) -> Send:
        return Send(dst=src, msg=BundlesPrepared(pg_id=msg.pg_id, attempt=msg.attempt, ok=ok,
                                                 reason=reason))

    def _on_commit(self, src: Address, msg: CommitBundles, now: Nanos) -> list[Msg]:
        bundles = [self._bundles.get((msg.pg_id, index)) for index in msg.indexes]
        if any(b is None or b.attempt != msg.attempt for b in bundles):
            reply = BundlesCommitted(pg_id=msg.pg_id, attempt=msg.attempt, ok=False)
            return [Send(dst=src, msg=reply)]
        for bundle in bundles:
            assert bundle is not None
            if not bundle.committed:
                bundle.committed = True
                self._leases.ledger.add_capacity(bundle.added())
        reply = BundlesCommitted(pg_id=msg.pg_id, attempt=msg.attempt, ok=True)
        return [Send(dst=src, msg=reply), *self._leases.on_view_changed(now)]

    def _release(self, pg_id: str, attempt: int, indexes: tuple[int, ...], why: str,
                 now: Nanos) -> list[Msg]:
        doomed = [b for b in self._bundles.values() if b.pg_id == pg_id and b.attempt <= attempt
                  and (not indexes or b.index in indexes)]
        if not doomed:
            return []
        effects: list[Msg] = []
        if any(b.committed for b in doomed):
            # Ending every lease of the group here is simplest and safe: Ray kills the
            # group's tasks and actors when its bundles go.
            effects += self._leases.evict_holding(group_marker(pg_id), why, now)
        ledger = self._leases.ledger
        for bundle in doomed:
            if bundle.committed:
                ledger.remove_capacity(bundle.added())
            ledger.release(bundle.holder)
            del self._bundles[(bundle.pg_id, bundle.index)]
        return effects + self._leases.on_view_changed(now)

    def _forget_group(self, pg_id: str, why: str, now: Nanos) -> list[Msg]:
        """The group was removed: its requests waiting here are refused, now and later."""
        if pg_id not in self._removed:
            self._removed[pg_id] = None
            while len(self._removed) > REMOVED_MAX:
                del self._removed[next(iter(self._removed))]
        return self._leases.evict_holding(group_marker(pg_id), why, now)

    def refusal(self, shape: Mapping[str, float]) -> str:
        """Why a lease request for ``shape`` is refused here ("" when it is not): it asks
        for a placement group that was removed."""
        if not self._removed:
            return ""
        prefix = group_marker("")
        for name in shape:
            pg_id = name[len(prefix):] if name.startswith(prefix) else ""
            if pg_id in self._removed and group_marker(pg_id) == name:
                return (f"its placement group {pg_id!r} was removed; create a new group "
                        "to run it in one")
        return ""

    def fate_share(self, now: Nanos) -> list[Msg]:
        """The node was declared dead: every bundle is dropped (the GCS places them again)."""
        effects: list[Msg] = []
        for pg_id in list(dict.fromkeys(b.pg_id for b in self._bundles.values())):
            effects += self._release(pg_id, 2**32, (), (
                f"node {self.node_id!r} was declared dead and dropped its bundles"), now)
        return effects

    def quiescence_problems(self) -> list[str]:
        return [f"bundle {b.index} of placement group {b.pg_id!r} is still reserved"
                for b in self._bundles.values()]

    def check_invariants(self) -> None:
        ledger = self._leases.ledger
        bundle_holders = sorted(h for h in ledger.holders if h.startswith(BUNDLE_HOLDER_PREFIX))
        if bundle_holders != sorted(b.holder for b in self._bundles.values()):
            raise InvariantViolation(
                f"raylet bundles: the ledger holds {bundle_holders} but the table has "
                f"{sorted(b.holder for b in self._bundles.values())}")
        for bundle in self._bundles.values():
            if bundle.committed and not fits(bundle.added(), ledger.total):
                raise InvariantViolation(
                    f"raylet bundles: committed bundle {bundle.holder!r} is not in the total")
