"""Placement groups (Ray's ``ray.util.placement_group``): reserve bundles of resources
across nodes, then run tasks and actors in them.

``placement_group(bundles, strategy, name, lifetime)`` asks the GCS to create a
group and returns a ``PlacementGroup`` at once (the group may still be
pending). ``pg.ready()`` is an ``ObjectRef`` that resolves (to the group) once
every bundle is reserved: like Ray, it is a tiny zero-CPU task per bundle,
scheduled into that bundle, so it can only run where the bundle exists.
``pg.wait(timeout_seconds)`` runs no task (as in Ray): it asks the GCS to
answer when the group is created (``WaitPlacementGroupReady``), in slices of
at most ``WAIT_TIMEOUT_MAX_NS``, the timeout measured on the GCS's clock.
``remove_placement_group`` frees the bundles (the GCS kills the group's
actors; the raylets end its leases).

A task or actor runs in a group with
``options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i))`` (or
the older ``placement_group=pg, placement_group_bundle_index=i``): its
resource request is rewritten to the group's resources (``group_shape``:
``CPU`` becomes ``CPU_group_<i>_<id>``...), which only the bundle's node has.

The GCS is reached through the context's ``placement_group_send`` (documented
in ``context.py``), which hosts implement over their GCS client; creating an
unnamed group and removing one do not wait for the GCS's answer, which is read
before this process's next request about groups (``placement_group_calls.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from shoal.kernel.gcs.placement_group_protocol import (
    STRATEGIES,
    WAIT_TIMEOUT_MAX_NS,
    CreatePlacementGroup,
    GetPlacementGroup,
    ListPlacementGroups,
    PlacementGroupInfo,
    PlacementGroupReply,
    PlacementGroupRequest,
    PlacementGroupSpec,
    RemovePlacementGroup,
    WaitPlacementGroupReady,
    group_shape,
)
from shoal.kernel.ids import seconds
from shoal.runtime.api.context import get_context
from shoal.runtime.api.placement_group_calls import calls_of
from shoal.runtime.api.scheduling_strategies import PlacementGroupSchedulingStrategy

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]


class PlacementGroupID:
    """A placement group's id (``.hex()`` gives it as a string, as Ray's does)."""

    __slots__ = ("_id",)

    def __init__(self, pg_id: str) -> None:
        self._id = pg_id

    def hex(self) -> str:
        return self._id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._id})"


class PlacementGroup:
    """A handle to a placement group: its id and bundles. Picklable; pass it to tasks."""

    def __init__(self, pg_id: str, bundles: list[dict[str, float]], strategy: str = "PACK"
                 ) -> None:
        self.id = PlacementGroupID(pg_id)
        self.bundle_specs = [dict(b) for b in bundles]
        self.strategy = strategy
        self._ready_ref: Any = None

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    @property
    def is_empty(self) -> bool:
        return not self.bundle_specs

    def ready(self) -> Any:
        """An ``ObjectRef`` that resolves to this group once every bundle is reserved."""
        if self._ready_ref is None:
            self._ready_ref = _ready_ref(self)
        return self._ready_ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Waits up to ``timeout_seconds`` for the group to be created; returns whether it is.

        Raises:
            ValueError: the group was removed (it will never be ready), or is unknown.
            TypeError: ``timeout_seconds`` is not a non-negative number.
        """
        if (isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int | float)
                or not timeout_seconds >= 0):
            raise TypeError(f"PlacementGroup.wait(timeout_seconds=...) takes a non-negative "
                            f"number of seconds, got {timeout_seconds!r}")
        left_ns = seconds(float(min(timeout_seconds, 2.0**40)))
        while True:
            slice_ns = min(left_ns, WAIT_TIMEOUT_MAX_NS)
            reply = _call(WaitPlacementGroupReady(request_id=0, pg_id=self.id.hex(),
                                                  timeout_ns=slice_ns))
            if reply.groups and reply.groups[0].state == "CREATED":
                return True
            left_ns -= slice_ns
            if left_ns <= 0:
                return False

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroup, (self.id.hex(), self.bundle_specs, self.strategy))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self.bundle_specs})"


def _bundle_ready(pg: PlacementGroup, *_: Any) -> PlacementGroup:
    return pg


def _ready_ref(pg: PlacementGroup) -> Any:
    """Bundles 1.. each run a zero-CPU task; bundle 0's waits on theirs, then returns pg."""
    from shoal.runtime.api.remote_function import remote

    check = remote(num_cpus=0, max_retries=-1)(_bundle_ready)

    def in_bundle(index: int) -> Any:
        return check.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=index), name="placement_group.ready")

    others = [in_bundle(i).remote(None) for i in range(1, pg.bundle_count)]
    return in_bundle(0).remote(pg, *others)


def _call(request: PlacementGroupRequest) -> PlacementGroupReply:
    """One request, its reply waited for (raises ``ValueError`` on an error reply)."""
    return calls_of(get_context()).call(request)


def decode_reply(value: bytes) -> PlacementGroupReply:
    """The ``placement_group_send`` answer, from the GCS client's encoded reply."""
    return msgspec.msgpack.decode(value, type=PlacementGroupReply)


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list | tuple) or not bundles:
        raise ValueError(
            f"placement_group(bundles=...) needs a non-empty list of dicts, got {bundles!r}")
    checked = []
    for index, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping) or not bundle:
            raise ValueError(f"bundle {index} must be a non-empty dict like {{'CPU': 1}}, "
                             f"got {bundle!r}")
        for name, amount in bundle.items():
            if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(
                    amount, int | float) or amount < 0:
                raise ValueError(f"bundle {index} has {name!r}: {amount!r}; resource amounts "
                                 "must be non-negative numbers")
        if all(amount == 0 for amount in bundle.values()):
            raise ValueError(f"bundle {index} {dict(bundle)!r} asks for nothing; every bundle "
                             "must ask for some resource")
        checked.append({str(k): float(v) for k, v in bundle.items()})
    return checked


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node: float = 1.0,
                    _soft_target_node_id: str | None = None,
                    bundle_label_selector: list[dict[str, str]] | None = None,
                    ) -> PlacementGroup:
    """Asks the cluster to reserve ``bundles`` per ``strategy``; returns at once.

    A named group's creation is answered before this returns (the name may be taken);
    an unnamed group's answer is read with this process's next request about groups.

    Raises:
        ValueError: bad bundles, strategy or lifetime, or a name already in use.
    """
    checked = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}; expected one of "
                         f"{list(STRATEGIES)}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement_group(lifetime=...) must be None or 'detached', "
                         f"got {lifetime!r}")
    if bundle_label_selector:
        raise NotImplementedError("bundle_label_selector is not supported yet")
    ctx: Any = get_context()
    pg_id = "pg." + str(ctx.next_task_id()).replace("_", "-")
    spec = PlacementGroupSpec(pg_id=pg_id, bundles=tuple(checked), strategy=strategy,  # type: ignore[arg-type]
                              name=name or "", namespace=_namespace(ctx),
                              detached=lifetime == "detached", creator=ctx.address)
    request = CreatePlacementGroup(request_id=0, spec=spec)
    if name:
        _call(request)  # a name may be taken: Ray raises that here
    else:
        calls_of(ctx).pipeline(request)  # can only fail for the GCS's limit: raised later
    return PlacementGroup(pg_id, checked, strategy)


def _namespace(ctx: Any) -> str:
    """The job's namespace, as named actors use it (anonymous jobs get their own)."""
    namespace = getattr(ctx, "namespace", None)
    return str(namespace) if namespace else f"anonymous:{ctx.job_id}"


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Frees the group's bundles; its actors die and its tasks' workers are killed.

    Returns without waiting for the GCS's answer (removal is idempotent there); this
    process's next request about groups is answered after the removal.

    Raises:
        TypeError: not a ``PlacementGroup``.
        ValueError: the group's creation failed (that is reported here if nothing
            asked about the group before).
    """
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() takes a PlacementGroup, got "
                        f"{type(placement_group).__name__}")
    request = RemovePlacementGroup(request_id=0, pg_id=placement_group.id.hex())
    calls_of(get_context()).pipeline(request)


def _handle(info: PlacementGroupInfo) -> PlacementGroup:
    return PlacementGroup(info.pg_id, [dict(b) for b in info.bundles], info.strategy)


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group with that name (in this job's namespace).

    Raises:
        ValueError: no group (that is not removed) has the name.
    """
    ctx: Any = get_context()
    reply = _call(GetPlacementGroup(request_id=0, name=placement_group_name,
                                    namespace=_namespace(ctx)))
    if not reply.groups or reply.groups[0].state == "REMOVED":
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return _handle(reply.groups[0])


def _table_row(info: PlacementGroupInfo) -> dict[str, Any]:
    return {
        "placement_group_id": info.pg_id,
        "name": info.name,
        "bundles": {i: dict(b) for i, b in enumerate(info.bundles)},
        "bundles_to_node_id": {i: n for i, n in enumerate(info.bundle_nodes) if n},
        "strategy": info.strategy,
        "state": info.state,
        "stats": {"scheduling_state": info.reason or info.state},
    }


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Ray's table: one row (a dict) for ``placement_group``, or every row by id."""
    if placement_group is not None:
        reply = _call(GetPlacementGroup(request_id=0, pg_id=placement_group.id.hex()))
        return _table_row(reply.groups[0]) if reply.groups else {}
    reply = _call(ListPlacementGroups(request_id=0))
    return {info.pg_id: _table_row(info) for info in reply.groups}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task runs in (None on a driver or outside any group)."""
    from shoal.runtime.api.executor import current_task_spec

    spec = current_task_spec()
    if spec is None:
        return None
    for name in spec.resources:
        if name.startswith("bundle_group_") and name.count("_") == 2:
            return PlacementGroup(name[len("bundle_group_"):], [])
    return None


# --- scheduling tasks and actors into groups -------------------------------------------


def _strategy_of(options: Mapping[str, Any]) -> tuple[PlacementGroup, int] | None:
    strategy = options.get("scheduling_strategy")
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg, index = strategy.placement_group, strategy.placement_group_bundle_index
    else:
        pg = options.get("placement_group")
        if pg in (None, "default"):
            return None
        index = options.get("placement_group_bundle_index")
        index = -1 if index is None else index
    if not isinstance(pg, PlacementGroup):
        raise TypeError(f"placement_group must be a PlacementGroup (from "
                        f"shoal.util.placement_group), got {type(pg).__name__}")
    # A handle from get_current_placement_group() does not know its bundles (count 0).
    if index < -1 or (pg.bundle_count and index >= pg.bundle_count):
        raise ValueError(f"placement_group_bundle_index {index} is out of range: the group "
                         f"has {pg.bundle_count} bundles (use -1 for any)")
    return pg, index


def in_placement_group(resources: dict[str, float], options: Mapping[str, Any]
                       ) -> dict[str, float]:
    """A task's resource request, rewritten into its placement group's, if it has one."""
    chosen = _strategy_of(options)
    if chosen is None:
        return resources
    pg, index = chosen
    return group_shape(resources, pg.id.hex(), index)


def actor_in_placement_group(held: dict[str, float], placement: dict[str, float],
                             options: Mapping[str, Any]) -> tuple[dict[str, float],
                                                                  dict[str, float]]:
    """An actor's held and placement shapes, rewritten into its group's, if it has one.

    Ray places a default actor with 1 CPU it does not hold; in a group, the bundle is
    the reservation already (and may hold less than 1 CPU, or none), so a default
    actor needs only to fit the bundle: that placement CPU is dropped there."""
    chosen = _strategy_of(options)
    if chosen is None:
        return held, placement
    pg, index = chosen
    if "CPU" not in held:
        placement = {k: v for k, v in placement.items() if k != "CPU"}
    return group_shape(held, pg.id.hex(), index), group_shape(placement, pg.id.hex(), index)
