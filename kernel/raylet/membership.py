"""The raylet's side of membership: join, heartbeat, rejoin; and its node-table view.

Theory of operation
-------------------
Phases: ``REGISTERING`` (a ``RegisterNode`` is outstanding and retried on a
timer), ``ALIVE`` (heartbeats every interval), ``LEFT`` (unregistered for good).
A registration carries ``(boot, attempt)``: the host gives ``boot`` (it grows
with every process start), and ``attempt`` grows with every rejoin in one boot,
so the GCS can tell a retransmit from a new incarnation. When the GCS answers a
heartbeat with ``NodeDeclaredDead`` for the current incarnation, the node goes
back to ``REGISTERING`` with the next attempt. While ``REGISTERING``, a
``NodeDeclaredDead`` naming the current attempt means the GCS registered this
attempt (the reply was lost) and has already declared it dead, so the node moves
on to the next attempt too. ``NodeRegistered`` is accepted only
for this process's ``(boot, attempt)``: a late reply to a previous process of the
same node must not hand this one its incarnation.

``NodeView`` applies ``NodeTableUpdate`` pushes in version order: a delta is
applied only when it starts at or before the applied version and ends after it;
a gap waits for the repair that the next heartbeat triggers.
"""

from __future__ import annotations

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
    UnregisterNode,
)
from shoal.kernel.ids import NANOS_PER_SECOND, Nanos, NodeId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer

REGISTER_TIMER = "raylet.register_retry"
HEARTBEAT_TIMER = "raylet.heartbeat"


class MemberPhase(Enum):
    REGISTERING = "registering"
    ALIVE = "alive"
    LEFT = "left"


_TRANSITIONS: dict[tuple[MemberPhase, MemberPhase], str] = {
    (MemberPhase.REGISTERING, MemberPhase.ALIVE): "registered",
    (MemberPhase.ALIVE, MemberPhase.REGISTERING): "declared dead; rejoining",
    (MemberPhase.ALIVE, MemberPhase.LEFT): "left the cluster",
    (MemberPhase.REGISTERING, MemberPhase.LEFT): "left before registering",
}


class MemberConfig(msgspec.Struct, frozen=True, kw_only=True):
    heartbeat_interval_ns: Nanos = NANOS_PER_SECOND
    register_retry_ns: Nanos = NANOS_PER_SECOND


class NodeView:
    """A subscriber's copy of the node table, applied in version order."""

    __slots__ = ("version", "nodes")

    def __init__(self) -> None:
        self.version = 0
        self.nodes: dict[NodeId, NodeInfo] = {}

    def apply(self, update: NodeTableUpdate) -> bool:
        """Applies ``update`` if it is next in order; returns whether it did."""
        if update.full:
            if update.to_version < self.version:
                return False
            self.nodes = {info.node_id: info for info in update.nodes}
        elif not update.from_version <= self.version < update.to_version:
            return False
        else:
            for info in update.nodes:
                self.nodes[info.node_id] = info
        self.version = update.to_version
        return True

    def alive(self) -> list[NodeInfo]:
        return [info for info in self.nodes.values() if info.state == "alive"]


@dataclass(slots=True, eq=False)
class _Registration:
    phase: MemberPhase
    attempt: int
    incarnation: int


class NodeMembership:
    """Registration and heartbeats of one node: a sub-machine of ``Raylet``."""

    def __init__(
        self,
        node_id: NodeId,
        gcs: Address,
        *,
        boot: int,
        resources: Resources,
        endpoint: str,
        config: MemberConfig,
        buggify: Buggify,
    ) -> None:
        self.node_id = node_id
        self.gcs = gcs
        self.boot = boot
        self.resources = dict(resources)
        self.endpoint = endpoint
        self._config = config
        self._buggify = buggify
        self._reg = _Registration(phase=MemberPhase.REGISTERING, attempt=1, incarnation=0)
        self.view = NodeView()

    @property
    def phase(self) -> MemberPhase:
        return self._reg.phase

    @property
    def incarnation(self) -> int:
        return self._reg.incarnation

    def on_started(self, now: Nanos) -> list[Msg]:
        return self._register(now)

    def on_register_timer(self, now: Nanos) -> list[Msg]:
        if self._reg.phase is not MemberPhase.REGISTERING:
            return []  # registered since the timer was set
        return self._register(now)

    def on_heartbeat_timer(self, now: Nanos) -> list[Msg]:
        if self._reg.phase is not MemberPhase.ALIVE:
            return []
        effects: list[Msg] = [SetTimer(key=HEARTBEAT_TIMER, at_ns=now + self._interval())]
        if not self._buggify.fire("raylet.skip_heartbeat"):
            effects.append(Send(dst=self.gcs, msg=Heartbeat(
                node_id=self.node_id, incarnation=self._reg.incarnation,
                view_version=self.view.version)))
        return effects

    def on_registered(self, msg: NodeRegistered, now: Nanos) -> list[Msg]:
        reg = self._reg
        if reg.phase is not MemberPhase.REGISTERING or (msg.boot, msg.attempt) != (
                self.boot, reg.attempt):
            return []  # a duplicate, or an answer to an earlier attempt or process
        self._move(MemberPhase.ALIVE)
        reg.incarnation = msg.incarnation
        return [
            CancelTimer(key=REGISTER_TIMER),
            SetTimer(key=HEARTBEAT_TIMER, at_ns=now + self._interval()),
        ]

    def on_declared_dead(self, msg: NodeDeclaredDead, now: Nanos) -> list[Msg]:
        reg = self._reg
        if reg.phase is MemberPhase.REGISTERING and msg.attempt == reg.attempt:
            # The GCS answered this attempt's registration with a death: the incarnation
            # it gave the attempt (whose NodeRegistered we never saw) has since been
            # declared dead, and a retry with the same attempt would only be told so again.
            reg.attempt += 1
            return self._register(now)
        if reg.phase is not MemberPhase.ALIVE or msg.incarnation != reg.incarnation:
            return []  # about an incarnation we already left behind
        self._move(MemberPhase.REGISTERING)
        reg.attempt += 1
        return [CancelTimer(key=HEARTBEAT_TIMER), *self._register(now)]

    def on_table_update(self, msg: NodeTableUpdate) -> list[Msg]:
        self.view.apply(msg)
        return []

    def leave(self) -> list[Msg]:
        """Unregisters for good (a clean shutdown of the node)."""
        was_alive = self._reg.phase is MemberPhase.ALIVE
        self._move(MemberPhase.LEFT)
        effects: list[Msg] = [CancelTimer(key=HEARTBEAT_TIMER), CancelTimer(key=REGISTER_TIMER)]
        if was_alive:
            effects.append(Send(dst=self.gcs, msg=UnregisterNode(
                node_id=self.node_id, incarnation=self._reg.incarnation)))
        return effects

    def check_invariants(self) -> None:
        reg = self._reg
        if reg.attempt < 1:
            raise InvariantViolation(f"raylet {self.node_id!r}: attempt {reg.attempt} < 1")
        if reg.phase is MemberPhase.ALIVE and reg.incarnation < 1:
            raise InvariantViolation(f"raylet {self.node_id!r}: alive without an incarnation")

    def _register(self, now: Nanos) -> list[Msg]:
        msg = RegisterNode(
            node_id=self.node_id, boot=self.boot, attempt=self._reg.attempt,
            resources=self.resources, endpoint=self.endpoint,
        )
        return [
            Send(dst=self.gcs, msg=msg),
            SetTimer(key=REGISTER_TIMER, at_ns=now + self._config.register_retry_ns),
        ]

    def _interval(self) -> Nanos:
        interval = self._config.heartbeat_interval_ns
        if self._buggify.fire("raylet.late_heartbeat"):
            interval += interval // 2
        return interval

    def _move(self, to: MemberPhase) -> None:
        if (self._reg.phase, to) not in _TRANSITIONS:
            raise InvalidTransition(
                "raylet", f"move membership to {to.value}", self.node_id,
                self._reg.phase.value, " or ".join(
                    f.value for f, t in _TRANSITIONS if t is to))
        self._reg.phase = to
