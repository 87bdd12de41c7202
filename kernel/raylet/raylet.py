"""The raylet: one per node.

Theory of operation
-------------------
Responsibilities arrive as sub-machines behind one ``handle`` entry:

* ``NodeMembership`` (``membership.py``): joining the cluster, heartbeats,
  rejoining under a new incarnation after being declared dead, and the node
  table view pushed by the GCS.
* ``LeaseManager`` (``leases.py``): lease requests, the scheduling policy
  (local first, spillback, infeasible requests kept), the node's resource
  ledger and its ``WorkerPool`` (``workers.py``).
* ``BundleTable`` (``bundles.py``): placement group bundles reserved here in two
  phases for the GCS; their resources join the lease ledger when committed.
* ``ObjectTable`` (``objects.py``): objects above the inline limit held in this
  node's store: primary copies pinned for their owners, pulls from other nodes
  in chunks, frees.
* ``DriverExits`` (``drivers.py``): local drivers that exited, reported to the
  GCS until acknowledged (the GCS ends their jobs); the leases such a driver
  held here end at once.
* ``ClusterView`` and ``ResourceReporter`` (``resources.py``): the copy of the
  GCS's resource view that spillback reads, and the ``ResourceReport`` sent
  beside the heartbeat when the GCS's idea of this node is out of date, when a
  pending request wants a fresher view, or every ``report_refresh_ticks``.

The raylet glues them: a node-table or resource-view change lets the lease
manager reclaim leases of dead owners and re-place pending requests; being
declared dead (membership going from alive back to registering) makes it
fate-share: every worker killed, every lease ended.

Inputs: ``Started``, ``Received``, ``TimerFired``, and the host's
``WorkerExited``, ``DriverExited`` and ``ObjectEvicted``. Effects: ``Send``, ``SetTimer``, ``CancelTimer``, and the
host requests ``StartWorker``/``KillWorker``. Messages the raylet does not
serve are answered with ``Rejected``; a ``Rejected`` from a peer is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random

import msgspec

from shoal.kernel.buggify import DISABLED, Buggify
from shoal.kernel.dispatch import handler_for
from shoal.kernel.gcs.protocol import (
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    Resources,
)
from shoal.kernel.gcs.job_protocol import DriverExitAck
from shoal.kernel.gcs.resource_protocol import ResourceViewUpdate
from shoal.kernel.ids import Nanos, NodeId, ObjectId
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, Started, TimerFired
from shoal.kernel.gcs.placement_group_protocol import (  # placement groups
    CommitBundles,
    PrepareBundles,
    ReleaseBundles,
)
from shoal.kernel.raylet.bundles import BundleTable
from shoal.kernel.raylet.drivers import DriverExits
from shoal.kernel.raylet.lease_checks import LEASE_CHECK_TIMER, LeaseCheckConfig, LeaseChecker
from shoal.kernel.raylet.leases import LeaseConfig, LeaseManager
from shoal.kernel.raylet.object_protocol import (
    FreeObjects,
    ObjectChunk,
    ObjectEvicted,
    ObjectMissing,
    PinObject,
    PullObject,
    RequestObject,
)
from shoal.kernel.raylet.objects import PULL_TIMER_PREFIX, ObjectsConfig, ObjectTable
from shoal.kernel.raylet.membership import (
    HEARTBEAT_TIMER,
    REGISTER_TIMER,
    MemberConfig,
    MemberPhase,
    NodeMembership,
)
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    DriverExited,
    LeaseCheckReply,
    LeaseRejected,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
    WorkerBlocked,
    WorkerExited,
    WorkerUnblocked,
)
from shoal.kernel.raylet.resources import ClusterView, ResourceReporter
from shoal.kernel.raylet.workers import (
    IDLE_SWEEP_TIMER,
    WORKER_START_TIMER_PREFIX,
    WorkerPoolConfig,
)

RayletInput = Started | Received | TimerFired | WorkerExited | DriverExited | ObjectEvicted


class RayletConfig(msgspec.Struct, frozen=True, kw_only=True):
    gcs: Address
    resources: Resources = msgspec.field(default_factory=lambda: {"CPU": 1.0})
    endpoint: str = ""
    membership: MemberConfig = msgspec.field(default_factory=MemberConfig)
    workers: WorkerPoolConfig = msgspec.field(default_factory=WorkerPoolConfig)
    leases: LeaseConfig = msgspec.field(default_factory=LeaseConfig)
    objects: ObjectsConfig = msgspec.field(default_factory=ObjectsConfig)
    lease_checks: LeaseCheckConfig = msgspec.field(default_factory=LeaseCheckConfig)


class Raylet:
    """The raylet kernel. ``handle`` is its only entry point."""

    def __init__(
        self,
        node_id: NodeId,
        config: RayletConfig,
        *,
        boot: int = 1,
        seed: int = 0,
        buggify: Buggify = DISABLED,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.address = Address(node=node_id, component="raylet")
        self.membership = NodeMembership(
            node_id, config.gcs, boot=boot, resources=config.resources,
            endpoint=config.endpoint, config=config.membership, buggify=buggify,
        )
        self.cluster = ClusterView()
        self.leases = LeaseManager(
            node_id, boot=boot, resources=config.resources, config=config.leases,
            pool_config=config.workers, nodes=self.membership.view, cluster=self.cluster,
            rng=Random(seed),
        )
        self.bundles = BundleTable(node_id, config.gcs, self.leases)  # placement groups
        self.reporter = ResourceReporter(node_id, config.leases.report_refresh_ticks)
        self.objects = ObjectTable(node_id, config.objects)
        self.lease_checker = LeaseChecker(config.lease_checks)
        self.drivers = DriverExits(node_id, config.gcs)
        self._indexes_untouched = False  # this step left leases, objects and bundles alone
        self._dead_nodes: dict[NodeId, None] = {}

    @property
    def phase(self) -> MemberPhase:
        return self.membership.phase

    @property
    def incarnation(self) -> int:
        return self.membership.incarnation

    @property
    def node_view(self) -> dict[NodeId, NodeInfo]:
        return self.membership.view.nodes

    def handle(self, event: RayletInput, *, now: Nanos) -> list[Msg]:
        """Feeds one input to the raylet and returns the effects, in order."""
        # Timers (half the inputs) and messages (most of the rest) are told apart by exact
        # type, the rest through a table (kernel/dispatch.py), not by ``match``: each class
        # pattern is an isinstance call, slow for msgspec classes (their metaclass is
        # not ``type``).
        event_type = type(event)
        is_timer = event_type is TimerFired
        self._indexes_untouched = is_timer and event.key == HEARTBEAT_TIMER
        if is_timer:
            return self._on_timer(event.key, now)
        if event_type is Received:
            return self._on_received(event.src, event.msg, now)
        handler = handler_for(_INPUTS, event_type)
        return handler(self, event, now) if handler is not None else []

    def _on_driver_exited(self, event: DriverExited, now: Nanos) -> list[Msg]:
        if not self.drivers.is_local_driver(event.driver):
            return []
        why = f"its lease's owner, driver {event.driver}, exited: {event.cause}"
        return (self.drivers.on_exited(event.driver, event.cause)
                + self.leases.on_owner_exited(event.driver, why, now))

    def _on_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key == HEARTBEAT_TIMER:
            return self._on_heartbeat_timer(now)
        if key == REGISTER_TIMER:
            return self.membership.on_register_timer(now)
        if key.startswith(WORKER_START_TIMER_PREFIX) or key == IDLE_SWEEP_TIMER:
            return self.leases.on_timer(key, now)
        if key == LEASE_CHECK_TIMER:
            return self._on_lease_check_timer(now)
        if key.startswith(PULL_TIMER_PREFIX):
            return self.objects.on_pull_timer(ObjectId(key[len(PULL_TIMER_PREFIX):]), now)
        return []

    def _on_lease_check_timer(self, now: Nanos) -> list[Msg]:
        effects, silent = self.lease_checker.on_timer(self.leases.granted(), now)
        self._indexes_untouched = not silent  # a check round that reclaims nothing only reads
        for lease_id in silent:
            effects += self.leases.reclaim(lease_id, (
                f"its owner answered no lease check for "
                f"{self.config.lease_checks.misses_max} rounds"), now)
        return effects

    def _on_received(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        handler = _RECEIVERS.get(type(msg)) or handler_for(_RECEIVERS, type(msg))
        return handler(self, src, msg, now) if handler is not None else self._reject(src, msg)

    def _reject(self, src: Address, msg: Msg) -> list[Msg]:
        reason = (f"raylet {self.node_id!r}: does not serve {type(msg).__name__} messages; "
                  "send it to the component that owns it")
        return [Send(dst=src, msg=Rejected(request_type=type(msg).__name__, reason=reason))]

    def _on_lease_request(self, src: Address, msg: RequestWorkerLease, now: Nanos) -> list[Msg]:
        refusal = self.bundles.refusal(msg.shape)  # placement groups
        if refusal:
            return [Send(dst=src, msg=LeaseRejected(request_id=msg.request_id, reason=(
                f"raylet {self.node_id!r} refused lease request {msg.request_id} of "
                f"{src}: {refusal}")))]
        if self.drivers.exited(src):
            return []  # sent before its driver exited, delivered after: nobody to grant
        return self.leases.on_request(src, msg, now)

    def _on_view_update(self, src: Address, msg: ResourceViewUpdate, now: Nanos) -> list[Msg]:
        if src != self.config.gcs:
            return self._reject(src, msg)  # only the GCS publishes the resource view
        self.reporter.on_update(msg)
        return self.leases.on_view_changed(now) if self.cluster.apply(msg) else []

    def _on_driver_exit_ack(self, src: Address, msg: DriverExitAck, now: Nanos) -> list[Msg]:
        return self.drivers.on_ack(msg) if src == self.config.gcs else self._reject(src, msg)

    def _on_lease_check_reply(self, msg: LeaseCheckReply, now: Nanos) -> list[Msg]:
        return [e for lease_id in self.lease_checker.on_reply(msg)
                for e in self.leases.release(lease_id, now)]

    def _on_membership(self, msg: Msg, now: Nanos) -> list[Msg]:
        membership = self.membership
        phase, incarnation = membership.phase, membership.incarnation
        version = membership.view.version
        match msg:
            case NodeTableUpdate():
                effects = membership.on_table_update(msg)
            case NodeRegistered():
                effects = membership.on_registered(msg, now)
            case NodeDeclaredDead():
                effects = membership.on_declared_dead(msg, now)
            case _:
                return []
        if phase is not MemberPhase.ALIVE and membership.phase is MemberPhase.ALIVE:
            self.reporter.on_registered(membership.incarnation, self.leases.ledger)
        if phase is MemberPhase.ALIVE and membership.phase is not MemberPhase.ALIVE:
            cause = (f"node {self.node_id!r} was declared dead (incarnation {incarnation}); "
                     "its raylet killed its workers to rejoin the cluster")
            effects += self.leases.fate_share(cause, now)
            effects += self.bundles.fate_share(now)
            effects += self.objects.fate_share()
        if membership.view.version != version:
            effects += self.leases.on_view_changed(now)
            effects += self._on_nodes_changed(now)
        return effects

    def _on_nodes_changed(self, now: Nanos) -> list[Msg]:
        newly_dead: dict[NodeId, None] = {}
        dead_nodes = self._dead_nodes
        for info in self.membership.view.nodes.values():  # one pass: runs on every change
            if info.state == "alive":
                dead_nodes.pop(info.node_id, None)  # rejoined under a new incarnation
            elif info.state == "dead" and info.node_id not in dead_nodes:
                newly_dead[info.node_id] = None
        dead_nodes.update(newly_dead)
        return self.objects.on_nodes_dead(newly_dead, now) if newly_dead else []

    def _on_heartbeat_timer(self, now: Nanos) -> list[Msg]:
        effects = self.membership.on_heartbeat_timer(now)
        if not effects:
            return effects  # not alive: no heartbeat, no report
        effects += self.drivers.on_heartbeat()
        pool = self.leases.pool
        departed = (pool.departed_total, pool.departed_after(self.reporter.departed_acked))
        report = self.reporter.on_tick(self.membership.incarnation, self.leases.ledger,
                                       self.cluster, self.leases.needs_view(), departed)
        if report is not None:
            effects.append(Send(dst=self.config.gcs, msg=report))
        return effects

    def quiescence_problems(self) -> list[str]:
        """Leases, requests, resources, workers or objects still held; [] when all is back."""
        return (self.leases.quiescence_problems() + self.objects.quiescence_problems()
                + self.bundles.quiescence_problems())

    def check_invariants(self) -> None:
        """Raises ``InvariantViolation`` if the raylet's indexes disagree.

        A heartbeat tick only reads the lease ledger (for the resource report), and
        a lease-check round that reclaims nothing only reads the granted leases, so
        after either the lease, object and bundle indexes are as last checked: skip
        them, as these timers are most of a raylet's steps."""
        self.membership.check_invariants()
        self.drivers.check_invariants()
        if self._indexes_untouched:
            return
        self.leases.check_invariants()
        self.objects.check_invariants()
        self.bundles.check_invariants()


# The raylet's handlers by host input and by message class (kernel/dispatch.py: a dict
# probe on ``type(msg)`` instead of a ``match`` walking one isinstance per case).
# Timers and ``Received`` (nearly every input) are told apart before this table.
_INPUTS: dict[type, Callable[[Raylet, Msg, Nanos], list[Msg]]] = {
    Received: lambda raylet, event, now: raylet._on_received(event.src, event.msg, now),
    WorkerExited: lambda raylet, event, now: raylet.leases.on_worker_exited(event, now),
    DriverExited: lambda raylet, event, now: raylet._on_driver_exited(event, now),
    ObjectEvicted: lambda raylet, event, now: raylet.objects.on_evicted(event.object_id),
    Started: lambda raylet, event, now: (raylet.membership.on_started(now)
                                         + [raylet.lease_checker.arm(now)]),
}

_RECEIVERS: dict[type, Callable[[Raylet, Address, Msg, Nanos], list[Msg]]] = {
    RequestWorkerLease: lambda raylet, src, msg, now: raylet._on_lease_request(src, msg, now),
    ReturnWorker: lambda raylet, src, msg, now: raylet.leases.on_return(src, msg, now),
    ResourceViewUpdate: lambda raylet, src, msg, now: raylet._on_view_update(src, msg, now),
    **dict.fromkeys((NodeTableUpdate, NodeRegistered, NodeDeclaredDead),
                    lambda raylet, src, msg, now: raylet._on_membership(msg, now)),
    CancelLeaseRequest: lambda raylet, src, msg, now: raylet.leases.on_cancel(src, msg, now),
    RegisterWorker: lambda raylet, src, msg, now: raylet.leases.on_register(src, msg, now),
    WorkerBlocked: lambda raylet, src, msg, now: raylet.leases.on_blocked(
        src, msg.worker_id, True, now),
    WorkerUnblocked: lambda raylet, src, msg, now: raylet.leases.on_blocked(
        src, msg.worker_id, False, now),
    LeaseCheckReply: lambda raylet, src, msg, now: raylet._on_lease_check_reply(msg, now),
    **dict.fromkeys((PrepareBundles, CommitBundles, ReleaseBundles),  # placement groups
                    lambda raylet, src, msg, now: raylet.bundles.on_message(src, msg, now)),
    PullObject: lambda raylet, src, msg, now: raylet.objects.on_pull(src, msg, now),
    PinObject: lambda raylet, src, msg, now: raylet.objects.on_pin(msg),
    ObjectChunk: lambda raylet, src, msg, now: raylet.objects.on_chunk(msg, now),
    RequestObject: lambda raylet, src, msg, now: raylet.objects.on_request(src, msg),
    FreeObjects: lambda raylet, src, msg, now: raylet.objects.on_free(msg),
    ObjectMissing: lambda raylet, src, msg, now: raylet.objects.on_missing(src, msg, now),
    DriverExitAck: lambda raylet, src, msg, now: raylet._on_driver_exit_ack(src, msg, now),
    Rejected: lambda raylet, src, msg, now: [],
}
