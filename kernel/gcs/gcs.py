"""The Global Control Service: one per cluster.

Theory of operation
-------------------
The GCS is a set of sub-machines behind one ``handle`` entry:

* ``NodeDirectory`` (``membership.py``): node registration, heartbeats, failure
  detection, and the node table pushed to subscribers.
* ``InternalKv`` (``kv.py``): the namespaced internal key-value store.
* ``ClusterResources`` (``resources.py``): the soft-state cluster resource view,
  following the node table; raylets report into it and get deltas back.
* ``ActorManager`` (``actors.py``): the actor table and lifecycle; it leases
  workers from raylets for actors, and rereads the node table and the
  resource view (dead nodes, departed workers) whenever either moves.
* ``PlacementGroupManager`` (``placement_groups.py``): placement groups,
  reserved on raylets in two phases, rescheduled when nodes die; the actors of
  a removed group are killed through the actor manager.
* ``JobTable`` (``jobs.py``): jobs whose driver exited, as raylets report
  them; such a driver's non-detached actors die (owner died) and its
  non-detached placement groups are removed.

Inputs: ``Started`` (process start: arm the health-check timer), ``Received``
(a protocol message from a peer), ``TimerFired``. Effects: ``Send``,
``SetTimer``, ``StorePut``/``StoreDelete`` for durable state. A message the GCS
does not serve is answered with ``Rejected``; the GCS never raises on peer input.

Durable state is handed back to the constructor on restart as
``recovered[table][key] = value``; the host keeps the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec
from shoal.kernel.buggify import DISABLED, Buggify
from shoal.kernel.dispatch import handler_for
from shoal.kernel.gcs.actor_protocol import (
    ActorCreated,
    ActorCreating,
    GetNamedActor,
    KillActor,
    PollActors,
    RegisterActor,
)
from shoal.kernel.gcs.actor_records import ActorManagerConfig
from shoal.kernel.gcs.actors import ACTOR_TIMER_PREFIX, ActorManager
from shoal.kernel.gcs.job_protocol import DriverExitReport
from shoal.kernel.gcs.jobs import JOBS_TABLE, JobTable, JobTableConfig
from shoal.kernel.gcs.kv import KV_TABLE, InternalKv, KvConfig
from shoal.kernel.gcs.membership import NODES_TABLE, MembershipConfig, NodeDirectory
from shoal.kernel.gcs.protocol import (
    Heartbeat,
    KvDelete,
    KvExists,
    KvGet,
    KvList,
    KvPut,
    NodeInfo,
    RegisterNode,
    SubscribeNodes,
    UnregisterNode,
)
from shoal.kernel.gcs.resource_protocol import (
    GetResourceView,
    NodeResources,
    ResourceReport,
    ResourceViewReply,
)
from shoal.kernel.gcs.resources import ClusterResources, ResourceViewConfig
from shoal.kernel.gcs.placement_group_protocol import (  # placement groups
    BundlesCommitted,
    BundlesPrepared,
    BundlesReleased,
    CreatePlacementGroup,
    GetPlacementGroup,
    ListPlacementGroups,
    RemovePlacementGroup,
    WaitPlacementGroupReady,
    group_marker,
)
from shoal.kernel.gcs.placement_group_records import PG_TIMER_PREFIX, PgManagerConfig
from shoal.kernel.gcs.placement_groups import PlacementGroupManager
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import (
    Address,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    TimerFired,
)
from shoal.kernel.raylet.protocol import (
    LeaseCheck,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    ReturnWorkerAck,
)

GcsInput = Started | Received | TimerFired
HEALTH_CHECK_TIMER = "gcs.health_check"


class GcsConfig(msgspec.Struct, frozen=True, kw_only=True):
    membership: MembershipConfig = msgspec.field(default_factory=MembershipConfig)
    kv: KvConfig = msgspec.field(default_factory=KvConfig)
    resources: ResourceViewConfig = msgspec.field(default_factory=ResourceViewConfig)
    actors: ActorManagerConfig = msgspec.field(default_factory=ActorManagerConfig)
    placement_groups: PgManagerConfig = msgspec.field(default_factory=PgManagerConfig)
    jobs: JobTableConfig = msgspec.field(default_factory=JobTableConfig)


class _ClusterFacts:
    """The node table, resource view and job table, as the actor manager reads them."""

    def __init__(self, nodes: NodeDirectory, resources: ClusterResources,
                 jobs: JobTable) -> None:
        self._nodes = nodes
        self._resources = resources
        self._jobs = jobs

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return self._nodes.info(node_id)

    def live_nodes(self) -> list[NodeResources]:
        return list(self._resources.rows)

    def departed(self, worker: Address) -> bool:
        """A worker that ended, or a driver that exited (its job ended)."""
        if worker.component == "driver":
            return self._jobs.driver_exited(worker)
        return self._resources.is_departed(worker)


def gcs_address(node_id: NodeId) -> Address:
    return Address(node=node_id, component="gcs")


class Gcs:
    """The GCS kernel. ``handle`` is its only entry point."""

    def __init__(
        self,
        config: GcsConfig | None = None,
        *,
        buggify: Buggify = DISABLED,
        recovered: Mapping[str, Mapping[bytes, bytes]] | None = None,
    ) -> None:
        self.config = config or GcsConfig()
        self._buggify = buggify
        tables = recovered or {}
        self.nodes = NodeDirectory(self.config.membership, buggify, tables.get(NODES_TABLE))
        self.kv = InternalKv(self.config.kv, tables.get(KV_TABLE))
        self._checks = 0
        self.resources = ClusterResources(self.config.resources)
        self.resources.sync_nodes(self.nodes.rows)
        self.jobs = JobTable(self.config.jobs, tables.get(JOBS_TABLE))
        facts = _ClusterFacts(self.nodes, self.resources, self.jobs)
        self.actors = ActorManager(self.config.actors, facts, tables)
        self.placement_groups = PlacementGroupManager(self.config.placement_groups, facts, tables)

    @property
    def node_table(self) -> tuple[NodeInfo, ...]:
        return self.nodes.rows

    def handle(self, event: GcsInput, *, now: Nanos) -> list[Msg]:
        """Feeds one input to the GCS and returns the effects, in the order to run them."""
        nodes, resources = self.nodes, self.resources
        table_version, view_version = nodes.version, resources.version
        if type(event) is Received:  # most inputs: skip the table of input classes
            effects = self._on_received(event.src, event.msg, now)
        else:
            effects = self._dispatch(event, now)
        if nodes.version != table_version:
            resources.sync_nodes(nodes.rows)
        if nodes.version != table_version or resources.version != view_version:
            effects += self.actors.on_cluster_changed(now)
            effects += self.placement_groups.on_cluster_changed(now)
        if self.placement_groups.removed_groups:
            effects = effects + self._kill_removed_groups_actors(now)
        return effects

    def _kill_removed_groups_actors(self, now: Nanos) -> list[Msg]:
        """Actors of a placement group die with it (Ray kills them on removal)."""
        removed, self.placement_groups.removed_groups = self.placement_groups.removed_groups, []
        return [e for pg_id in removed for e in self.actors.kill_holding(
            group_marker(pg_id), f"its placement group {pg_id!r} was removed", now)]

    def _dispatch(self, event: GcsInput, now: Nanos) -> list[Msg]:
        handler = _INPUTS.get(type(event)) or handler_for(_INPUTS, type(event))
        return handler(self, event, now) if handler is not None else []

    def _on_started(self, now: Nanos) -> list[Msg]:
        self.nodes.on_started(now)
        self.resources.on_started(now)
        return [self._arm_health_check(now), *self.actors.on_started(now),
                *self.placement_groups.on_started(now)]

    def _on_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key == HEALTH_CHECK_TIMER:
            return self.nodes.on_health_check(now) + [self._arm_health_check(now)]
        if key.startswith(ACTOR_TIMER_PREFIX):
            return self.actors.on_timer(key, now)
        if key.startswith(PG_TIMER_PREFIX):
            return self.placement_groups.on_timer(key, now)
        return []  # a timer from before a restart: stale

    def _arm_health_check(self, now: Nanos) -> SetTimer:
        interval = self.config.membership.health_check_interval_ns
        if self._buggify.fire("gcs.late_health_check"):
            interval *= 3  # a slow GCS may only detect failures later, never sooner
        return SetTimer(key=HEALTH_CHECK_TIMER, at_ns=now + interval)

    def _on_received(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        handler = _RECEIVERS.get(type(msg)) or handler_for(_RECEIVERS, type(msg))
        if handler is not None:
            return handler(self, src, msg, now)
        reason = (f"gcs: does not serve {type(msg).__name__} messages; "
                  "send it to the component that owns it")
        return [Send(dst=src, msg=Rejected(request_type=type(msg).__name__, reason=reason))]

    def _on_group_request(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        return self.placement_groups.on_request(src, msg, now) + self._late_group(msg, now)

    def _on_driver_exit(self, src: Address, msg: DriverExitReport, now: Nanos) -> list[Msg]:
        """A job ended: its non-detached actors die, its non-detached groups are removed."""
        effects, ended = self.jobs.record_exit(src, msg, now)
        if not ended:
            return effects
        ack = effects.pop()  # answered last, once what the job's end changed is written
        effects += self.actors.on_cluster_changed(now)  # rereads owners through ``departed``
        return effects + self.placement_groups.remove_created_by(msg.driver, now) + [ack]

    def _late_group(self, msg: Msg, now: Nanos) -> list[Msg]:
        """A group created by a driver whose exit arrived first goes at once."""
        if not isinstance(msg, CreatePlacementGroup) or msg.spec.creator is None:
            return []
        if not self.jobs.driver_exited(msg.spec.creator):
            return []
        return self.placement_groups.remove_created_by(msg.spec.creator, now)

    def check_invariants(self) -> None:
        """Raises ``InvariantViolation`` if the GCS's indexes disagree.

        The full check walks every node, so it runs once per ``len(nodes) // 2``
        calls: checking after every step then costs O(1) amortized, and a broken
        index is still caught within a few steps of breaking.
        """
        self._checks += 1
        if self._checks % max(1, len(self.nodes.rows_by_id) // 2):
            return
        self.nodes.check_invariants()
        self.resources.check_invariants(self.nodes.rows)
        self.actors.check_invariants()
        self.placement_groups.check_invariants()
        self.jobs.check_invariants()


# The GCS's handlers by input class and by message class (kernel/dispatch.py: a dict
# probe on ``type(msg)`` instead of a ``match`` walking one isinstance per case).
_GcsInputHandler = Callable[[Gcs, Msg, Nanos], list[Msg]]
_INPUTS: dict[type, _GcsInputHandler] = {
    Received: lambda gcs, event, now: gcs._on_received(event.src, event.msg, now),
    TimerFired: lambda gcs, event, now: gcs._on_timer(event.key, now),
    Started: lambda gcs, event, now: gcs._on_started(now),
}

_Receiver = Callable[[Gcs, Address, Msg, Nanos], list[Msg]]
_RECEIVERS: dict[type, _Receiver] = {
    Heartbeat: lambda gcs, src, msg, now: gcs.nodes.on_heartbeat(src, msg, now),
    RegisterNode: lambda gcs, src, msg, now: gcs.nodes.on_register(src, msg, now),
    SubscribeNodes: lambda gcs, src, msg, now: gcs.nodes.on_subscribe(src, msg, now),
    UnregisterNode: lambda gcs, src, msg, now: gcs.nodes.on_unregister(src, msg),
    **dict.fromkeys((KvPut, KvGet, KvDelete, KvList, KvExists),
                    lambda gcs, src, msg, now: gcs.kv.on_request(src, msg)),
    ResourceReport: lambda gcs, src, msg, now: gcs.resources.on_report(src, msg),
    GetResourceView: lambda gcs, src, msg, now: [Send(dst=src, msg=ResourceViewReply(
        request_id=msg.request_id, rows=gcs.resources.rows))],
    # --- actors (issue #4) ---
    RegisterActor: lambda gcs, src, msg, now: gcs.actors.on_register(src, msg, now),
    PollActors: lambda gcs, src, msg, now: gcs.actors.on_poll(src, msg, now),
    GetNamedActor: lambda gcs, src, msg, now: gcs.actors.on_get_named(src, msg),
    KillActor: lambda gcs, src, msg, now: gcs.actors.on_kill(src, msg, now),
    ActorCreating: lambda gcs, src, msg, now: gcs.actors.on_creating(src, msg),
    ActorCreated: lambda gcs, src, msg, now: gcs.actors.on_created(src, msg, now),
    # Raylets answer the leases the GCS holds for actors.
    LeaseGranted: lambda gcs, src, msg, now: gcs.actors.on_lease_granted(src, msg, now),
    LeaseSpillback: lambda gcs, src, msg, now: gcs.actors.on_spillback(src, msg, now),
    LeaseRejected: lambda gcs, src, msg, now: gcs.actors.on_lease_rejected(src, msg, now),
    LeasedWorkerDied: lambda gcs, src, msg, now: gcs.actors.on_worker_died(msg, now),
    ReturnWorkerAck: lambda gcs, src, msg, now: gcs.actors.on_return_ack(msg),
    LeaseCheck: lambda gcs, src, msg, now: gcs.actors.on_lease_check(src, msg, now),
    # --- placement groups ---
    **dict.fromkeys((CreatePlacementGroup, RemovePlacementGroup, GetPlacementGroup,
                     ListPlacementGroups, WaitPlacementGroupReady),
                    lambda gcs, src, msg, now: gcs._on_group_request(src, msg, now)),
    BundlesPrepared: lambda gcs, src, msg, now: gcs.placement_groups.on_prepared(src, msg, now),
    BundlesCommitted: lambda gcs, src, msg, now: gcs.placement_groups.on_committed(
        src, msg, now),
    BundlesReleased: lambda gcs, src, msg, now: gcs.placement_groups.on_released(src, msg),
    DriverExitReport: lambda gcs, src, msg, now: gcs._on_driver_exit(src, msg, now),
    Rejected: lambda gcs, src, msg, now: [],  # a peer refused something we sent; nothing to undo
}
