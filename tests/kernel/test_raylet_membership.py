"""Example tests of the raylet's membership sub-machine and its node-table view."""

from __future__ import annotations

import pytest
from shoal.kernel.errors import InvalidTransition
from shoal.kernel.gcs import gcs_address
from shoal.kernel.gcs.protocol import (
    Heartbeat,
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    RegisterNode,
    UnregisterNode,
)
from shoal.kernel.ids import NodeId, seconds
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    TimerFired,
)
from shoal.kernel.raylet import MemberPhase, NodeView, Raylet, RayletConfig
from shoal.kernel.raylet.membership import HEARTBEAT_TIMER, REGISTER_TIMER

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
GCS = gcs_address(NodeId("head"))
CONFIG = RayletConfig(gcs=GCS, resources={"CPU": 2.0}, endpoint="10.0.0.1:7000")
T0 = seconds(100)
SECOND = seconds(1)  # MemberConfig's default heartbeat interval and register retry


def from_gcs(msg: Msg) -> Received:
    return Received(src=GCS, msg=msg)


def register_msg(attempt: int = 1, boot: int = 1) -> Send:
    return Send(dst=GCS, msg=RegisterNode(
        node_id=N1, boot=boot, attempt=attempt, resources={"CPU": 2.0},
        endpoint="10.0.0.1:7000"))


def registering(now: int, attempt: int = 1, boot: int = 1) -> list[Msg]:
    return [register_msg(attempt, boot), SetTimer(key=REGISTER_TIMER, at_ns=now + SECOND)]


def registered(incarnation: int, attempt: int = 1, boot: int = 1) -> Received:
    return from_gcs(NodeRegistered(
        node_id=N1, incarnation=incarnation, boot=boot, attempt=attempt))


def declared_dead(incarnation: int, attempt: int = 0) -> Received:
    return from_gcs(NodeDeclaredDead(
        node_id=N1, incarnation=incarnation, cause="missed heartbeats", attempt=attempt))


def alive_raylet(incarnation: int = 1, now: int = T0, boot: int = 1) -> Raylet:
    raylet = Raylet(N1, CONFIG, boot=boot)
    raylet.handle(Started(), now=now)
    raylet.handle(registered(incarnation, boot=boot), now=now)
    assert raylet.phase is MemberPhase.ALIVE
    raylet.check_invariants()
    return raylet


def info(node: NodeId, incarnation: int = 1, state: str = "alive") -> NodeInfo:
    return NodeInfo(node_id=node, incarnation=incarnation, state=state,  # type: ignore[arg-type]
                    resources={"CPU": 1.0})


def delta(from_version: int, to_version: int, *nodes: NodeInfo) -> NodeTableUpdate:
    return NodeTableUpdate(
        from_version=from_version, to_version=to_version, full=False, nodes=nodes)


def full(to_version: int, *nodes: NodeInfo) -> NodeTableUpdate:
    return NodeTableUpdate(from_version=0, to_version=to_version, full=True, nodes=nodes)


# --- registration ----------------------------------------------------------


def test_registers_on_start() -> None:
    raylet = Raylet(N1, CONFIG, boot=3)
    assert raylet.handle(Started(), now=T0) == registering(T0, boot=3) + [
        SetTimer(key="raylet.lease_check", at_ns=T0 + 2 * SECOND)]
    assert raylet.phase is MemberPhase.REGISTERING
    assert raylet.incarnation == 0


def test_retries_registration_on_the_timer() -> None:
    raylet = Raylet(N1, CONFIG)
    raylet.handle(Started(), now=T0)
    now = T0 + SECOND
    assert raylet.handle(TimerFired(key=REGISTER_TIMER), now=now) == registering(now)
    assert raylet.handle(TimerFired(key=REGISTER_TIMER), now=now + SECOND) == registering(
        now + SECOND)


def test_registered_goes_alive_and_starts_heartbeating() -> None:
    raylet = Raylet(N1, CONFIG)
    raylet.handle(Started(), now=T0)
    now = T0 + 5
    assert raylet.handle(registered(4), now=now) == [
        CancelTimer(key=REGISTER_TIMER),
        SetTimer(key=HEARTBEAT_TIMER, at_ns=now + SECOND),
    ]
    assert raylet.phase is MemberPhase.ALIVE
    assert raylet.incarnation == 4
    raylet.check_invariants()


def test_ignores_node_registered_for_another_attempt_or_boot() -> None:
    raylet = Raylet(N1, CONFIG, boot=2)
    raylet.handle(Started(), now=T0)
    assert raylet.handle(registered(1, attempt=2, boot=2), now=T0) == []
    assert raylet.handle(registered(1, attempt=1, boot=1), now=T0) == []  # previous process
    assert raylet.phase is MemberPhase.REGISTERING
    assert raylet.incarnation == 0


def test_ignores_a_duplicate_node_registered_once_alive() -> None:
    raylet = alive_raylet(incarnation=2)
    assert raylet.handle(registered(2), now=T0 + 1) == []
    assert raylet.handle(registered(7), now=T0 + 1) == []
    assert raylet.incarnation == 2


def test_a_late_register_timer_once_alive_does_nothing() -> None:
    raylet = alive_raylet()
    assert raylet.handle(TimerFired(key=REGISTER_TIMER), now=T0 + SECOND) == []


# --- heartbeats ------------------------------------------------------------


def test_heartbeats_on_the_timer_with_its_view_version() -> None:
    raylet = alive_raylet(incarnation=3)
    now = T0 + SECOND
    assert raylet.handle(TimerFired(key=HEARTBEAT_TIMER), now=now) == [
        SetTimer(key=HEARTBEAT_TIMER, at_ns=now + SECOND),
        Send(dst=GCS, msg=Heartbeat(node_id=N1, incarnation=3, view_version=0)),
    ]
    assert raylet.handle(from_gcs(full(5, info(N1, 3), info(N2))), now=now) == []
    now += SECOND
    assert raylet.handle(TimerFired(key=HEARTBEAT_TIMER), now=now) == [
        SetTimer(key=HEARTBEAT_TIMER, at_ns=now + SECOND),
        Send(dst=GCS, msg=Heartbeat(node_id=N1, incarnation=3, view_version=5)),
    ]


def test_no_heartbeat_while_registering() -> None:
    raylet = Raylet(N1, CONFIG)
    raylet.handle(Started(), now=T0)
    assert raylet.handle(TimerFired(key=HEARTBEAT_TIMER), now=T0 + SECOND) == []


# --- being declared dead ---------------------------------------------------


def test_declared_dead_for_its_incarnation_reregisters_with_the_next_attempt() -> None:
    raylet = alive_raylet(incarnation=3)
    now = T0 + seconds(6)
    assert raylet.handle(declared_dead(3), now=now) == [
        CancelTimer(key=HEARTBEAT_TIMER),
        *registering(now, attempt=2),
    ]
    assert raylet.phase is MemberPhase.REGISTERING
    # The answer for the new attempt brings it back under the next incarnation.
    assert raylet.handle(registered(4, attempt=2), now=now) == [
        CancelTimer(key=REGISTER_TIMER),
        SetTimer(key=HEARTBEAT_TIMER, at_ns=now + SECOND),
    ]
    assert raylet.incarnation == 4
    raylet.check_invariants()


def test_ignores_declared_dead_for_an_older_incarnation() -> None:
    raylet = alive_raylet(incarnation=3)
    assert raylet.handle(declared_dead(2), now=T0) == []
    assert raylet.phase is MemberPhase.ALIVE
    assert raylet.incarnation == 3


def test_ignores_a_duplicate_declared_dead_while_registering_again() -> None:
    raylet = alive_raylet(incarnation=3)
    raylet.handle(declared_dead(3), now=T0)
    assert raylet.handle(declared_dead(3), now=T0) == []
    assert raylet.handle(TimerFired(key=REGISTER_TIMER), now=T0 + SECOND) == registering(
        T0 + SECOND, attempt=2)


def test_registration_answered_with_a_death_moves_on_to_the_next_attempt() -> None:
    # The NodeRegistered for attempt 1 was lost; the GCS declared that incarnation
    # dead, and answers the retransmitted registration with the death. Retrying the
    # same attempt would be told the same forever.
    raylet = Raylet(N1, CONFIG)
    raylet.handle(Started(), now=T0)
    now = T0 + seconds(6)
    assert raylet.handle(declared_dead(1, attempt=1), now=now) == registering(now, attempt=2)
    assert raylet.handle(declared_dead(1, attempt=1), now=now) == []  # a duplicate
    assert raylet.handle(registered(2, attempt=2), now=now) == [
        CancelTimer(key=REGISTER_TIMER),
        SetTimer(key=HEARTBEAT_TIMER, at_ns=now + SECOND),
    ]
    assert raylet.incarnation == 2


def test_a_death_not_about_a_registration_is_ignored_while_registering() -> None:
    raylet = Raylet(N1, CONFIG)
    raylet.handle(Started(), now=T0)
    assert raylet.handle(declared_dead(1), now=T0) == []
    assert raylet.phase is MemberPhase.REGISTERING


# --- leaving -----------------------------------------------------------------


def test_leave_unregisters_and_a_second_leave_is_a_bug() -> None:
    raylet = alive_raylet(incarnation=2)
    assert raylet.membership.leave() == [
        CancelTimer(key=HEARTBEAT_TIMER),
        CancelTimer(key=REGISTER_TIMER),
        Send(dst=GCS, msg=UnregisterNode(node_id=N1, incarnation=2)),
    ]
    assert raylet.phase is MemberPhase.LEFT
    assert raylet.handle(TimerFired(key=HEARTBEAT_TIMER), now=T0) == []
    assert raylet.handle(registered(3), now=T0) == []
    assert raylet.handle(declared_dead(2), now=T0) == []
    with pytest.raises(InvalidTransition, match=(
            r"^raylet: cannot move membership to left 'n1' in phase left; "
            r"expected alive or registering$")):
        raylet.membership.leave()


def test_leave_before_registering_sends_nothing() -> None:
    raylet = Raylet(N1, CONFIG)
    raylet.handle(Started(), now=T0)
    assert raylet.membership.leave() == [
        CancelTimer(key=HEARTBEAT_TIMER),
        CancelTimer(key=REGISTER_TIMER),
    ]


# --- other messages ------------------------------------------------------------


def test_a_message_the_raylet_does_not_serve_is_rejected() -> None:
    raylet = alive_raylet()
    peer = Address(node=N2, component="raylet")
    msg = Heartbeat(node_id=N2, incarnation=1, view_version=0)
    assert raylet.handle(Received(src=peer, msg=msg), now=T0) == [Send(dst=peer, msg=Rejected(
        request_type="Heartbeat",
        reason="raylet 'n1': does not serve Heartbeat messages; send it to the component "
               "that owns it",
    ))]
    assert raylet.handle(from_gcs(Rejected(request_type="Heartbeat", reason="no")),
                         now=T0) == []
    assert raylet.handle(TimerFired(key="unknown"), now=T0) == []


def test_table_updates_reach_the_view_through_handle() -> None:
    raylet = alive_raylet()
    assert raylet.handle(from_gcs(full(2, info(N1), info(N2))), now=T0) == []
    assert raylet.handle(from_gcs(delta(2, 3, info(N2, state="dead"))), now=T0) == []
    assert raylet.node_view == {N1: info(N1), N2: info(N2, state="dead")}
    assert raylet.membership.view.version == 3


# --- NodeView --------------------------------------------------------------


def test_view_applies_deltas_in_order() -> None:
    view = NodeView()
    assert view.apply(delta(0, 1, info(N1)))
    assert view.apply(delta(1, 3, info(N2), info(N3)))
    assert view.apply(delta(3, 4, info(N1, state="dead")))
    assert view.version == 4
    assert view.nodes == {N1: info(N1, state="dead"), N2: info(N2), N3: info(N3)}
    assert view.alive() == [info(N2), info(N3)]


def test_view_waits_out_a_gap() -> None:
    view = NodeView()
    view.apply(delta(0, 1, info(N1)))
    assert not view.apply(delta(2, 3, info(N3)))
    assert view.version == 1
    assert view.nodes == {N1: info(N1)}


def test_view_ignores_stale_and_duplicate_deltas() -> None:
    view = NodeView()
    view.apply(delta(0, 3, info(N1), info(N2)))
    assert not view.apply(delta(0, 3, info(N1), info(N2)))  # a duplicate
    assert not view.apply(delta(1, 2, info(N2, state="dead")))  # stale
    assert view.version == 3
    assert view.nodes == {N1: info(N1), N2: info(N2)}


def test_view_applies_an_overlapping_delta() -> None:
    view = NodeView()
    view.apply(delta(0, 2, info(N1), info(N2)))
    assert view.apply(delta(1, 3, info(N2, 2), info(N3)))
    assert view.version == 3
    assert view.nodes == {N1: info(N1), N2: info(N2, 2), N3: info(N3)}


def test_view_full_snapshots_replace_the_table_unless_older() -> None:
    view = NodeView()
    view.apply(delta(0, 2, info(N1), info(N2)))
    assert view.apply(full(5, info(N3)))
    assert view.nodes == {N3: info(N3)}
    assert view.version == 5
    assert not view.apply(full(4, info(N1)))
    assert view.apply(full(5, info(N3, 2)))  # the same version again: harmless
    assert view.nodes == {N3: info(N3, 2)}
    assert view.apply(delta(5, 6, info(N1)))
    assert view.version == 6
