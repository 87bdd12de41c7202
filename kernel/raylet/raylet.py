"""The raylet: one per node.

Theory of operation
-------------------
Responsibilities arrive as sub-machines behind one ``handle`` entry. Today:

* ``NodeMembership`` (``membership.py``): joining the cluster, heartbeats,
  rejoining under a new incarnation after being declared dead, and the node
  table view pushed by the GCS.

Inputs: ``Started``, ``Received``, ``TimerFired``. Effects: ``Send``,
``SetTimer``, ``CancelTimer``. Messages the raylet does not serve are answered
with ``Rejected``; a ``Rejected`` from a peer is dropped (nothing to undo yet).
"""

from __future__ import annotations

import msgspec

from shoal.kernel.buggify import DISABLED, Buggify
from shoal.kernel.gcs.protocol import (
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    Resources,
)
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, Started, TimerFired
from shoal.kernel.raylet.membership import (
    HEARTBEAT_TIMER,
    REGISTER_TIMER,
    MemberConfig,
    MemberPhase,
    NodeMembership,
)

RayletInput = Started | Received | TimerFired


class RayletConfig(msgspec.Struct, frozen=True, kw_only=True):
    gcs: Address
    resources: Resources = msgspec.field(default_factory=lambda: {"CPU": 1.0})
    endpoint: str = ""
    membership: MemberConfig = msgspec.field(default_factory=MemberConfig)


class Raylet:
    """The raylet kernel. ``handle`` is its only entry point."""

    def __init__(
        self,
        node_id: NodeId,
        config: RayletConfig,
        *,
        boot: int = 1,
        buggify: Buggify = DISABLED,
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.address = Address(node=node_id, component="raylet")
        self.membership = NodeMembership(
            node_id, config.gcs, boot=boot, resources=config.resources,
            endpoint=config.endpoint, config=config.membership, buggify=buggify,
        )

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
        match event:
            case Received():
                return self._on_received(event.src, event.msg, now)
            case TimerFired(key=key) if key == HEARTBEAT_TIMER:
                return self.membership.on_heartbeat_timer(now)
            case TimerFired(key=key) if key == REGISTER_TIMER:
                return self.membership.on_register_timer(now)
            case Started():
                return self.membership.on_started(now)
        return []

    def _on_received(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        match msg:
            case NodeTableUpdate():
                return self.membership.on_table_update(msg)
            case NodeRegistered():
                return self.membership.on_registered(msg, now)
            case NodeDeclaredDead():
                return self.membership.on_declared_dead(msg, now)
            case Rejected():
                return []
        reason = (f"raylet {self.node_id!r}: does not serve {type(msg).__name__} messages; "
                  "send it to the component that owns it")
        return [Send(dst=src, msg=Rejected(request_type=type(msg).__name__, reason=reason))]

    def check_invariants(self) -> None:
        """Raises ``InvariantViolation`` if the raylet's indexes disagree."""
        self.membership.check_invariants()
