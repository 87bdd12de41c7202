"""Messages of placement groups, and the names of the resources a bundle turns into.

Clients (drivers and workers, through their GCS client) -> GCS:
  ``CreatePlacementGroup`` (idempotent by ``spec.pg_id``), ``RemovePlacementGroup``
  (idempotent), ``GetPlacementGroup`` (by id, or by name in a namespace),
  ``ListPlacementGroups`` and ``WaitPlacementGroupReady``; each is answered with
  one ``PlacementGroupReply`` carrying the rows asked for
  (``PlacementGroupInfo``) or an ``error``. ``WaitPlacementGroupReady`` (Ray's
  ``WaitPlacementGroupUntilReady``: ``pg.wait()`` runs no task) is answered
  when the group is ``CREATED`` (at once if it is), with the row still pending
  (or no row: the group was never created) once ``timeout_ns`` passed on the
  GCS's clock (the caller asks again for longer waits), or with an ``error`` if
  the group is removed. A wait may arrive before its group's creation.

GCS <-> raylets, the two-phase reservation (Ray's prepare/commit): the GCS
sends ``PrepareBundles`` (the bundles of one group that go to that node, under
the group's placement ``attempt``); the raylet reserves them all or none from
its general pool and answers ``BundlesPrepared(ok=...)``. Once every node of
the attempt said yes, the GCS sends ``CommitBundles``, answered
``BundlesCommitted``: the reserved resources then appear on the node as
group resources (below) that tasks and actors of the group ask for. A partial
placement is rolled back with ``ReleaseBundles`` (also how a removed group
gives its bundles back), answered ``BundlesReleased``. Every message is safe
to retransmit; the GCS retransmits until answered.

Resource names (Ray's naming idea): bundle ``i`` of group ``g`` with
``{"CPU": 2}`` becomes ``CPU_group_i_g: 2`` (this bundle) and
``CPU_group_g: 2`` (any bundle of the group on that node; summed over them),
plus markers ``bundle_group_i_g`` and ``bundle_group_g`` of
``BUNDLE_MARKER_UNITS`` each, so that a task asking no resources can still be
pinned into a bundle. ``group_shape`` rewrites a task's resources that way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec
from shoal.kernel.gcs.protocol import Resources
from shoal.kernel.ids import Count, NodeId, Seq
from shoal.kernel.messages import Address, Msg

PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
STRATEGIES: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
PlacementGroupState = Literal["PENDING", "CREATED", "RESCHEDULING", "REMOVED"]
BundleIndex = Annotated[int, msgspec.Meta(ge=0, le=2**20)]
BUNDLE_MARKER = "bundle"
BUNDLE_MARKER_UNITS = 1000.0  # each bundle's marker capacity (Ray's 1000)
MARKER_REQUEST = 0.001  # what one task asks of a marker


class PlacementGroupSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the creator asked for. ``creator`` is the core worker that created it."""

    pg_id: str
    bundles: tuple[Resources, ...]
    strategy: PlacementStrategy = "PACK"
    name: str = ""
    namespace: str = ""
    detached: bool = False
    creator: Address | None = None


class PlacementGroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the placement group table, as clients see it."""

    pg_id: str
    state: PlacementGroupState
    bundles: tuple[Resources, ...]
    strategy: PlacementStrategy
    name: str = ""
    namespace: str = ""
    detached: bool = False
    bundle_nodes: tuple[NodeId | None, ...] = ()  # where each bundle is (None: unplaced)
    version: Seq = 0
    reason: str = ""  # why it is still pending, when it is


# --- clients -> GCS ------------------------------------------------------------


class CreatePlacementGroup(Msg):
    request_id: Seq
    spec: PlacementGroupSpec


class RemovePlacementGroup(Msg):
    request_id: Seq
    pg_id: str


class GetPlacementGroup(Msg):
    """By ``pg_id`` when given, else by ``(namespace, name)`` among groups not removed."""

    request_id: Seq
    pg_id: str = ""
    name: str = ""
    namespace: str = ""


class ListPlacementGroups(Msg):
    request_id: Seq


class WaitPlacementGroupReady(Msg):
    """Answer once group ``pg_id`` is ``CREATED``, or after ``timeout_ns`` with its row as
    it is (at most ``WAIT_TIMEOUT_MAX_NS``: longer waits ask again)."""

    request_id: Seq
    pg_id: str
    timeout_ns: Annotated[int, msgspec.Meta(ge=0, le=2**62)] = 0


WAIT_TIMEOUT_MAX_NS = 60 * 1_000_000_000  # the longest one wait request parks at the GCS


class PlacementGroupReply(Msg):
    request_id: Seq
    groups: tuple[PlacementGroupInfo, ...] = ()
    error: str = ""


PlacementGroupRequest = (CreatePlacementGroup | RemovePlacementGroup | GetPlacementGroup
                         | ListPlacementGroups | WaitPlacementGroupReady)


# --- GCS <-> raylets -------------------------------------------------------------


class BundleSpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    index: BundleIndex
    shape: Resources


class PrepareBundles(Msg):
    pg_id: str
    attempt: Count
    bundles: tuple[BundleSpec, ...]


class BundlesPrepared(Msg):
    pg_id: str
    attempt: Count
    ok: bool
    reason: str = ""


class CommitBundles(Msg):
    pg_id: str
    attempt: Count
    indexes: tuple[BundleIndex, ...]


class BundlesCommitted(Msg):
    """``ok=False``: the raylet holds no prepared bundles of that attempt (it lost them)."""

    pg_id: str
    attempt: Count
    ok: bool = True


class ReleaseBundles(Msg):
    """Give back the group's bundles ``indexes`` (all when empty) held under ``attempt``
    or an older one."""

    pg_id: str
    attempt: Count
    indexes: tuple[BundleIndex, ...] = ()
    reason: str = ""


class BundlesReleased(Msg):
    """Answers ``ReleaseBundles``; echoes its ``attempt`` and ``indexes``."""

    pg_id: str
    attempt: Count
    indexes: tuple[BundleIndex, ...] = ()


PLACEMENT_GROUP_WIRE_TYPES: tuple[type[Msg], ...] = (
    CreatePlacementGroup, RemovePlacementGroup, GetPlacementGroup, ListPlacementGroups,
    WaitPlacementGroupReady, PlacementGroupReply, PrepareBundles, BundlesPrepared, CommitBundles,
    BundlesCommitted, ReleaseBundles, BundlesReleased,
)


# --- resource names ----------------------------------------------------------------


def indexed_name(resource: str, index: int, pg_id: str) -> str:
    return f"{resource}_group_{index}_{pg_id}"


def wildcard_name(resource: str, pg_id: str) -> str:
    return f"{resource}_group_{pg_id}"


def group_marker(pg_id: str) -> str:
    """The resource every task of the group asks a little of."""
    return wildcard_name(BUNDLE_MARKER, pg_id)


def bundle_resources(pg_id: str, index: int, shape: Mapping[str, float]) -> dict[str, float]:
    """What a committed bundle adds to its node (the wildcard names summed by the caller)."""
    added: dict[str, float] = {}
    for name, amount in sorted(shape.items()):
        if amount > 0:
            added[indexed_name(name, index, pg_id)] = amount
            added[wildcard_name(name, pg_id)] = amount
    added[indexed_name(BUNDLE_MARKER, index, pg_id)] = BUNDLE_MARKER_UNITS
    added[group_marker(pg_id)] = BUNDLE_MARKER_UNITS
    return added


def group_shape(resources: Mapping[str, float], pg_id: str, index: int) -> dict[str, float]:
    """A task's resources rewritten to be taken from the group (bundle ``index``; -1: any)."""
    shape: dict[str, float] = {}
    for name, amount in sorted(resources.items()):
        if amount <= 0:
            continue
        shape[wildcard_name(name, pg_id)] = amount
        if index >= 0:
            shape[indexed_name(name, index, pg_id)] = amount
    shape[group_marker(pg_id)] = MARKER_REQUEST
    if index >= 0:
        shape[indexed_name(BUNDLE_MARKER, index, pg_id)] = MARKER_REQUEST
    return shape


def in_group(resources: Mapping[str, float], pg_id: str) -> bool:
    """Whether a shape made by ``group_shape`` belongs to group ``pg_id``."""
    return group_marker(pg_id) in resources


def spec_problem(spec: PlacementGroupSpec) -> str:
    """Why a client's spec cannot be a placement group, or ``""`` when it can."""
    if not spec.pg_id or "_" in spec.pg_id:
        return f"placement group id {spec.pg_id!r} must be non-empty and hold no '_'"
    if not spec.bundles:
        return "it has no bundles; give at least one, e.g. [{'CPU': 1}]"
    for index, bundle in enumerate(spec.bundles):
        if not bundle or all(amount == 0 for amount in bundle.values()):
            return f"bundle {index} {dict(bundle)!r} is empty; every bundle must ask something"
        for name in bundle:
            if not name or "_group_" in name:
                return f"bundle {index} names resource {name!r}, which is not allowed"
    return ""
