"""The Global Control Service: one per cluster.

Theory of operation
-------------------
The GCS is a set of sub-machines behind one ``handle`` entry:

* ``NodeDirectory`` (``membership.py``): node registration, heartbeats, failure
  detection, and the node table pushed to subscribers.
* ``InternalKv`` (``kv.py``): the namespaced internal key-value store.
* ``ClusterResources`` (``resources.py``): the soft-state cluster resource view,
  following the node table; raylets report into it and get deltas back.

Inputs: ``Started`` (process start: arm the health-check timer), ``Received``
(a protocol message from a peer), ``TimerFired``. Effects: ``Send``,
``SetTimer``, ``StorePut``/``StoreDelete`` for durable state. A message the GCS
does not serve is answered with ``Rejected``; the GCS never raises on peer input.

Durable state is handed back to the constructor on restart as
``recovered[table][key] = value``; the host keeps the store.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from shoal.kernel.buggify import DISABLED, Buggify
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
from shoal.kernel.gcs.resource_protocol import ResourceReport
from shoal.kernel.gcs.resources import ClusterResources, ResourceViewConfig
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, SetTimer, Started, TimerFired

GcsInput = Started | Received | TimerFired
HEALTH_CHECK_TIMER = "gcs.health_check"


class GcsConfig(msgspec.Struct, frozen=True, kw_only=True):
    membership: MembershipConfig = msgspec.field(default_factory=MembershipConfig)
    kv: KvConfig = msgspec.field(default_factory=KvConfig)
    resources: ResourceViewConfig = msgspec.field(default_factory=ResourceViewConfig)


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
        self.resources = ClusterResources(self.config.resources)
        self.resources.sync_nodes(self.nodes.rows)

    @property
    def node_table(self) -> tuple[NodeInfo, ...]:
        return self.nodes.rows

    def handle(self, event: GcsInput, *, now: Nanos) -> list[Msg]:
        """Feeds one input to the GCS and returns the effects, in the order to run them."""
        table_version = self.nodes.version
        effects = self._dispatch(event, now)
        if self.nodes.version != table_version:
            self.resources.sync_nodes(self.nodes.rows)
        return effects

    def _dispatch(self, event: GcsInput, now: Nanos) -> list[Msg]:
        match event:
            case Received():
                return self._on_received(event.src, event.msg, now)
            case TimerFired(key=key) if key == HEALTH_CHECK_TIMER:
                return self.nodes.on_health_check(now) + [self._arm_health_check(now)]
            case Started():
                self.nodes.on_started(now)
                self.resources.on_started(now)
                return [self._arm_health_check(now)]
            case TimerFired():
                return []  # a timer from before a restart: stale
        return []

    def _arm_health_check(self, now: Nanos) -> SetTimer:
        interval = self.config.membership.health_check_interval_ns
        if self._buggify.fire("gcs.late_health_check"):
            interval *= 3  # a slow GCS may only detect failures later, never sooner
        return SetTimer(key=HEALTH_CHECK_TIMER, at_ns=now + interval)

    def _on_received(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        match msg:
            case Heartbeat():
                return self.nodes.on_heartbeat(src, msg, now)
            case RegisterNode():
                return self.nodes.on_register(src, msg, now)
            case SubscribeNodes():
                return self.nodes.on_subscribe(src, msg, now)
            case UnregisterNode():
                return self.nodes.on_unregister(src, msg)
            case KvPut() | KvGet() | KvDelete() | KvList() | KvExists():
                return self.kv.on_request(src, msg)
            case ResourceReport():
                return self.resources.on_report(src, msg)
            case Rejected():
                return []  # a peer refused something we sent; nothing to undo
        reason = (f"gcs: does not serve {type(msg).__name__} messages; "
                  "send it to the component that owns it")
        return [Send(dst=src, msg=Rejected(request_type=type(msg).__name__, reason=reason))]

    def check_invariants(self) -> None:
        """Raises ``InvariantViolation`` if the GCS's indexes disagree."""
        self.nodes.check_invariants()
        self.resources.check_invariants(self.nodes.rows)
