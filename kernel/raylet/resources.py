"""Resource arithmetic of one node, the raylet's copy of the cluster view, and its reports.

Theory of operation
-------------------
Amounts are floats on the wire (``{"CPU": 0.5}``) but fixed-point integers
inside the raylet: ``UNITS_PER_RESOURCE`` units per unit of resource (Ray's
``FixedPoint`` uses the same 1/10000 grain). Sums and differences of integers
are exact, so ``available + held == total`` holds to the unit however many
fractional leases come and go; a fraction finer than the grain is rounded to
the nearest unit when a request arrives.

``LocalResources`` is the node's ledger: ``total`` (from ``RayletConfig``),
``available``, and what each holder (a lease id) holds. ``acquire`` takes a
shape that fits, ``release`` gives a holder's share back. ``lend``/``reclaim``
move one resource of a holder (the CPU of a blocked worker) back to the pool
and take it again; ``reclaim`` may drive ``available`` below zero: a worker
that unblocks gets its CPU back even on a full node (Ray oversubscribes then).
Misuse (acquiring what does not fit, releasing an unknown holder) is a bug in
the caller and raises ``ResourceError``.

``ClusterView`` is the raylet's copy of the GCS's resource view, applied from
``ResourceViewUpdate`` in version order within one GCS epoch (a full snapshot
replaces it). Spillback picks a node from it: ``ranked_available`` orders the
nodes that have a shape free now, ``ranked_total`` those whose total fits;
both put the node with the most free capacity relative to its total first
(the least free fraction over its resources), ties broken by node id.
``reserve`` takes a spilled shape off the copy at once, so a burst of
requests does not all spill to the same node before its next report.

The copy also remembers the workers of other nodes that departed (the last
``DEPARTED_MAX``): leases and requests they owned here are orphans.

``ResourceReporter`` decides, on each heartbeat tick, whether to send a
``ResourceReport``: when what the GCS holds for this node (its total, all free,
on registration; the last acknowledged report after that) differs from the
ledger, when workers departed since the last acknowledged report, when the
raylet has requests a fresher view could place elsewhere, or every
``report_refresh_ticks`` ticks regardless (which also repairs the view of a GCS
that restarted and forgot). An idle node is quiet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.kernel.errors import InvariantViolation, KernelError
from shoal.kernel.gcs.protocol import NodeInfo, Resources
from shoal.kernel.gcs.resource_protocol import NodeResources, ResourceReport, ResourceViewUpdate
from shoal.kernel.ids import NodeId, WorkerId
from shoal.kernel.messages import Address

UNITS_PER_RESOURCE = 10_000
BUNDLE_HOLDER_PREFIX = "bundle:"  # ledger holders that are placement-group bundles, not leases
AMOUNT_MAX = 2**40
DEPARTED_MAX = 4096
Units = dict[str, int]


class ResourceError(KernelError):
    """The raylet asked its ledger for something impossible (a bug in the raylet)."""


# --- arithmetic -------------------------------------------------------------


def shape_problem(shape: Mapping[str, object]) -> str:
    """Why ``shape`` cannot be a resource request, or ``""`` when it can."""
    for name, amount in shape.items():
        if not isinstance(name, str) or not name:
            return f"resource name {name!r} is not a non-empty string"
        if not isinstance(amount, (int, float)) or isinstance(amount, bool):
            return f"resource {name!r} has amount {amount!r}, which is not a number"
        if not math.isfinite(amount) or amount < 0 or amount > AMOUNT_MAX:
            return f"resource {name!r} has amount {amount!r}; expected 0 <= amount <= 2**40"
    return ""


def to_units(resources: Mapping[str, float]) -> Units:
    """Fixed-point units of a validated resource map, by name; zero amounts are dropped."""
    units: Units = {}
    for name in sorted(resources):  # one pass: this runs for every row of every view update
        amount = round(resources[name] * UNITS_PER_RESOURCE)
        if amount:
            units[name] = amount
    return units


def from_units(units: Mapping[str, int], *, clamp: bool = False) -> Resources:
    """Floats of a units map (``clamp``: negative amounts become zero)."""
    return {name: (max(amount, 0) if clamp else amount) / UNITS_PER_RESOURCE
            for name, amount in units.items()}


def fits(need: Mapping[str, int], have: Mapping[str, int]) -> bool:
    return all(have.get(name, 0) >= amount for name, amount in need.items())


def describe(units: Mapping[str, int]) -> str:
    """``{CPU: 2, GPU: 0.5}``: a units map for error messages."""
    parts = [f"{name}: {amount / UNITS_PER_RESOURCE:g}" for name, amount in units.items()]
    return "{" + ", ".join(parts) + "}"


def free_fraction(total: Mapping[str, int], available: Mapping[str, int]) -> float:
    """The least free share over a node's resources (1.0: idle, 0.0: something is full)."""
    shares = [max(available.get(name, 0), 0) / amount
              for name, amount in total.items() if amount > 0]
    return min(shares, default=1.0)


# --- the node's ledger --------------------------------------------------------


class LocalResources:
    """Total, available and held resources of this node, in units."""

    def __init__(self, total: Mapping[str, float]) -> None:
        self.total: Units = to_units(total)
        self.available: Units = dict(self.total)
        self._held: dict[str, Units] = {}

    @property
    def holders(self) -> tuple[str, ...]:
        return tuple(self._held)

    def held(self, holder: str) -> Units:
        return dict(self._held.get(holder, {}))

    def fits_now(self, need: Mapping[str, int]) -> bool:
        return fits(need, self.available)

    def fits_total(self, need: Mapping[str, int]) -> bool:
        return fits(need, self.total)

    def acquire(self, holder: str, need: Mapping[str, int]) -> None:
        if holder in self._held:
            raise ResourceError(
                f"raylet resources: cannot acquire {describe(need)} for {holder!r}: "
                f"it already holds {describe(self._held[holder])}")
        if not self.fits_now(need):
            raise ResourceError(
                f"raylet resources: cannot acquire {describe(need)} for {holder!r}: "
                f"only {describe(self.available)} available")
        for name, amount in need.items():
            self.available[name] -= amount
        self._held[holder] = dict(need)

    def release(self, holder: str) -> Units:
        held = self._held.pop(holder, None)
        if held is None:
            raise ResourceError(f"raylet resources: cannot release {holder!r}: it holds nothing")
        for name, amount in held.items():
            self.available[name] += amount
        return held

    def add_capacity(self, units: Mapping[str, int]) -> None:
        """Placement groups: a committed bundle's resources join the node (total and free)."""
        for name, amount in units.items():
            self.total[name] = self.total.get(name, 0) + amount
            self.available[name] = self.available.get(name, 0) + amount

    def remove_capacity(self, units: Mapping[str, int]) -> None:
        """Placement groups: a released bundle's resources leave the node; nobody may hold
        them (the caller ended their leases first). Names that reach zero are dropped."""
        for name, amount in units.items():
            if self.available.get(name, 0) < amount:
                raise ResourceError(
                    f"raylet resources: cannot remove {amount} of {name!r}: only "
                    f"{self.available.get(name, 0)} of it is free")
        for name, amount in units.items():
            self.total[name] -= amount
            self.available[name] -= amount
            if self.total[name] == 0:
                del self.total[name], self.available[name]

    def lend(self, holder: str, name: str) -> int:
        """Moves the holder's share of ``name`` back to the pool; returns the amount moved."""
        held = self._require(holder, "lend")
        amount = held.pop(name, 0)
        if amount:
            self.available[name] += amount
        return amount

    def reclaim(self, holder: str, name: str, amount: int) -> None:
        """Gives the holder ``amount`` of ``name`` again, even if that oversubscribes."""
        held = self._require(holder, "reclaim")
        if amount:
            held[name] = held.get(name, 0) + amount
            self.available[name] -= amount

    def _require(self, holder: str, action: str) -> Units:
        held = self._held.get(holder)
        if held is None:
            raise ResourceError(f"raylet resources: cannot {action} for {holder!r}: "
                                "it holds nothing")
        return held

    def check_invariants(self) -> None:
        if not self._held and self.available == self.total:
            return  # nothing held: all is available (the common case, checked cheaply)
        held_sums: Units = {}
        for holder, shares in self._held.items():
            for name, amount in shares.items():
                if name not in self.total or amount < 0:
                    raise InvariantViolation(
                        f"raylet resources: {holder!r} holds {amount} of {name!r}")
                held_sums[name] = held_sums.get(name, 0) + amount
        for name, total in self.total.items():
            held = held_sums.get(name, 0)
            if self.available.get(name, 0) + held != total:
                raise InvariantViolation(
                    f"raylet resources: {name} available {self.available.get(name, 0)} + held "
                    f"{held} != total {total} (units of 1/{UNITS_PER_RESOURCE})")
        if set(self.available) != set(self.total):
            raise InvariantViolation("raylet resources: available and total name different "
                                     "resources")


# --- the cluster view ---------------------------------------------------------


@dataclass(slots=True, eq=False)
class _ViewEntry:
    incarnation: int
    total: Units
    available: Units


class ClusterView:
    """The raylet's copy of the GCS resource view."""

    def __init__(self) -> None:
        self.epoch = 0
        self.version = 0
        self.entries: dict[NodeId, _ViewEntry] = {}
        self.departed: dict[Address, None] = {}
        # Each node's last applied row and its units: most rows of an update are the same
        # as last time, and comparing a row is cheaper than converting it.
        self._converted: dict[NodeId, tuple[NodeResources, Units, Units]] = {}

    def apply(self, update: ResourceViewUpdate) -> bool:
        """Applies ``update`` if it is next in order (or a newer snapshot); returns whether."""
        same_epoch = update.epoch == self.epoch
        if update.full:
            if same_epoch and update.to_version < self.version:
                return False
            self.entries = {}
        elif not (same_epoch and update.from_version <= self.version < update.to_version):
            return False
        converted = self._converted
        if update.full:  # forget rows of nodes the snapshot no longer has
            self._converted = converted = {row.node_id: converted[row.node_id]
                                           for row in update.entries if row.node_id in converted}
        for node_id in update.removed:
            self.entries.pop(node_id, None)
            converted.pop(node_id, None)
        entries = self.entries
        for row in update.entries:
            last = converted.get(row.node_id)
            if last is None or last[0] != row:
                last = converted[row.node_id] = (row, to_units(row.total),
                                                 to_units(row.available))
            else:
                entry = entries.get(row.node_id)
                if (entry is not None and entry.total is last[1]
                        and entry.incarnation == row.incarnation
                        and entry.available == last[2]):
                    continue  # the entry already says exactly what this row says
            # ``total`` is only read; ``available`` is a copy, as ``reserve`` changes it.
            entries[row.node_id] = _ViewEntry(
                incarnation=row.incarnation, total=last[1], available=dict(last[2]))
        for worker in update.departed:
            self.departed[worker] = None
        while len(self.departed) > DEPARTED_MAX:
            del self.departed[next(iter(self.departed))]
        self.epoch, self.version = update.epoch, update.to_version
        return True

    def reserve(self, node_id: NodeId, need: Mapping[str, int]) -> None:
        """Takes ``need`` off the node's available (until its next update says otherwise)."""
        entry = self.entries.get(node_id)
        if entry is not None:
            for name, amount in need.items():
                entry.available[name] = max(entry.available.get(name, 0) - amount, 0)

    def ranked_available(self, need: Mapping[str, int],
                         candidates: Iterable[NodeId]) -> list[NodeId]:
        """Candidates with ``need`` free now, most free first, ties by node id."""
        scored = []
        for node_id in candidates:
            entry = self.entries.get(node_id)
            if entry is not None and fits(need, entry.available):
                scored.append((-free_fraction(entry.total, entry.available), node_id))
        return [node_id for _, node_id in sorted(scored)]

    def ranked_total(self, need: Mapping[str, int],
                     candidates: Iterable[NodeInfo]) -> list[NodeId]:
        """Candidates whose total fits ``need``, most free first, ties by node id.

        The total is the node table's, with what the view adds (the resources of
        placement group bundles committed there)."""
        scored = []
        for info in candidates:
            entry = self.entries.get(info.node_id)
            total = to_units(info.resources)
            if entry is not None:  # placement groups: committed bundles add resources
                total = {**total, **entry.total}
            if not fits(need, total):
                continue
            free = free_fraction(entry.total, entry.available) if entry else 1.0
            scored.append((-free, info.node_id))
        return [node_id for _, node_id in sorted(scored)]


# --- reports ------------------------------------------------------------------


class ResourceReporter:
    """Decides when this node reports its resources to the GCS, and what it sends."""

    def __init__(self, node_id: NodeId, refresh_ticks: int) -> None:
        self.node_id = node_id
        self._refresh_ticks = max(refresh_ticks, 1)
        self._seq = 0
        self._ticks = 0
        self._gcs_holds: tuple[int, Resources] | None = None  # (incarnation, available)
        self._sent: tuple[int, int, Resources, int] | None = None  # ... and departed_total
        self._departed_acked = 0  # how many departed workers the GCS has heard of
        # The last ledger ``available`` converted to floats, and the result: most ticks
        # find it unchanged, and comparing two small dicts is cheaper than converting.
        self._available_units: Units = {}
        self._available: Resources = {}

    @property
    def seq(self) -> int:
        return self._seq

    def on_registered(self, incarnation: int, ledger: LocalResources) -> None:
        """The GCS seeds a new incarnation's entry with everything available."""
        self._gcs_holds = (incarnation, from_units(ledger.total))
        self._ticks = 0

    def on_tick(self, incarnation: int, ledger: LocalResources, view: ClusterView,
                wants_view: bool, departed: tuple[int, tuple[WorkerId, ...]]
                ) -> ResourceReport | None:
        """The report to send on this tick, or None when there is no need.

        ``departed`` is ``(total, ids)``: how many workers ever departed, and the
        ids of those after the ones the GCS acknowledged.
        """
        self._ticks += 1
        if ledger.available != self._available_units:
            self._available_units = dict(ledger.available)
            self._available = from_units(ledger.available, clamp=True)
        available = self._available
        current = (incarnation, available)
        departed_total, departed_ids = departed
        if (current == self._gcs_holds and not wants_view and departed_total == self._departed_acked
                and self._ticks < self._refresh_ticks):
            return None
        self._seq += 1
        self._ticks = 0
        self._sent = (self._seq, incarnation, available, departed_total)
        return ResourceReport(
            node_id=self.node_id, incarnation=incarnation, seq=self._seq,
            total=from_units(ledger.total), available=available,
            view_epoch=view.epoch, view_version=view.version, departed=departed_ids)

    @property
    def departed_acked(self) -> int:
        return self._departed_acked

    def on_update(self, update: ResourceViewUpdate) -> None:
        """An answer acknowledges the report it names: the GCS now holds what it said."""
        if self._sent is not None and update.ack_seq == self._sent[0]:
            self._gcs_holds = (self._sent[1], self._sent[2])
            self._departed_acked = max(self._departed_acked, self._sent[3])
