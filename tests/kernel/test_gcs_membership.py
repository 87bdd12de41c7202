"""Example tests of the GCS's node membership: whole effect lists, input by input."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shoal.kernel.gcs import HEALTH_CHECK_TIMER, Gcs, GcsConfig, MembershipConfig
from shoal.kernel.gcs.membership import NODES_TABLE, NodeRecord
from shoal.kernel.gcs.protocol import (
    Heartbeat,
    KvGet,
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    RegisterNode,
    SubscribeNodes,
    UnregisterNode,
)
from shoal.kernel.ids import NodeId, millis, seconds
from shoal.kernel.messages import (
    Address,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    StoreDelete,
    StorePut,
    TimerFired,
)

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
R1, R2, R3 = (Address(node=n, component="raylet") for n in (N1, N2, N3))
DRIVER = Address(node=NodeId("head"), component="driver")
RES = {"CPU": 4.0}
T0 = seconds(100)
TIMEOUT = seconds(5)  # MembershipConfig's default heartbeat_timeout_ns
INTERVAL = millis(500)  # MembershipConfig's default health_check_interval_ns
MISSED_5S = "missed heartbeats for 5.000s (timeout 5.000s)"


# --- helpers ---------------------------------------------------------------


def recv(src: Address, msg: Msg) -> Received:
    return Received(src=src, msg=msg)


def register(node: NodeId, boot: int = 1, attempt: int = 1) -> RegisterNode:
    return RegisterNode(node_id=node, boot=boot, attempt=attempt, resources=RES)


def registered(node: NodeId, incarnation: int, boot: int = 1, attempt: int = 1) -> NodeRegistered:
    return NodeRegistered(node_id=node, incarnation=incarnation, boot=boot, attempt=attempt)


def info(node: NodeId, incarnation: int = 1, state: str = "alive", cause: str = "") -> NodeInfo:
    return NodeInfo(node_id=node, incarnation=incarnation, state=state,  # type: ignore[arg-type]
                    resources=RES, death_cause=cause)


def put(node: NodeId, *, incarnation: int, version: int, state: str = "alive",
        boot: int = 1, attempt: int = 1, cause: str = "") -> StorePut:
    record = NodeRecord(
        node_id=node, incarnation=incarnation, phase=state, resources=RES, endpoint="",
        boot=boot, attempt=attempt, death_cause=cause, version=version,
    )
    return StorePut(table=NODES_TABLE, key=node.encode(), value=msgspec.msgpack.encode(record))


def full(to_version: int, *nodes: NodeInfo) -> NodeTableUpdate:
    return NodeTableUpdate(from_version=0, to_version=to_version, full=True, nodes=nodes)


def delta(from_version: int, to_version: int, *nodes: NodeInfo) -> NodeTableUpdate:
    return NodeTableUpdate(from_version=from_version, to_version=to_version, full=False,
                           nodes=nodes)


def health_check(gcs: Gcs, now: int) -> list[Msg]:
    return gcs.handle(TimerFired(key=HEALTH_CHECK_TIMER), now=now)


def rearm(now: int) -> SetTimer:
    return SetTimer(key=HEALTH_CHECK_TIMER, at_ns=now + INTERVAL)


def gcs_with(*nodes: NodeId, now: int = T0) -> Gcs:
    """A started GCS with ``nodes`` registered (boot 1, attempt 1) in order at ``now``."""
    gcs = Gcs()
    gcs.handle(Started(), now=now)
    for node in nodes:
        gcs.handle(recv(Address(node=node, component="raylet"), register(node)), now=now)
    gcs.check_invariants()
    return gcs


# --- registration ----------------------------------------------------------


def test_started_arms_the_health_check() -> None:
    gcs = Gcs()
    assert gcs.handle(Started(), now=T0) == [rearm(T0)]


def test_first_registration_persists_answers_and_pushes_the_full_table() -> None:
    gcs = gcs_with()
    assert gcs.handle(recv(R1, register(N1)), now=T0) == [
        put(N1, incarnation=1, version=1),
        Send(dst=R1, msg=registered(N1, 1)),
        Send(dst=R1, msg=full(1, info(N1))),
    ]
    assert gcs.node_table == (info(N1),)
    assert gcs.nodes.version == 1
    gcs.check_invariants()


def test_second_registration_pushes_a_delta_to_the_first_and_the_table_to_the_second() -> None:
    gcs = gcs_with(N1)
    assert gcs.handle(recv(R2, register(N2)), now=T0) == [
        put(N2, incarnation=1, version=2),
        Send(dst=R2, msg=registered(N2, 1)),
        Send(dst=R1, msg=delta(1, 2, info(N2))),
        Send(dst=R2, msg=full(2, info(N1), info(N2))),
    ]
    gcs.check_invariants()


def test_duplicate_registration_is_answered_again_and_changes_nothing() -> None:
    gcs = gcs_with(N1)
    assert gcs.handle(recv(R1, register(N1)), now=T0 + 1) == [
        Send(dst=R1, msg=registered(N1, 1)),
    ]
    assert gcs.nodes.version == 1
    assert gcs.node_table == (info(N1),)


def test_stale_registration_is_ignored() -> None:
    gcs = gcs_with(N1)
    gcs.handle(recv(R1, register(N1, boot=2, attempt=3)), now=T0)
    version = gcs.nodes.version
    assert gcs.handle(recv(R1, register(N1, boot=2, attempt=2)), now=T0) == []
    assert gcs.handle(recv(R1, register(N1, boot=1, attempt=9)), now=T0) == []
    assert gcs.nodes.version == version
    assert gcs.node_table == (info(N1, incarnation=2),)


def test_new_boot_while_alive_kills_the_old_incarnation_and_starts_the_next() -> None:
    gcs = gcs_with(N1, N2)
    cause = "replaced by a new registration (boot 2, attempt 1)"
    assert gcs.handle(recv(R1, register(N1, boot=2)), now=T0 + 1) == [
        put(N1, incarnation=1, version=3, state="dead", cause=cause),
        put(N1, incarnation=2, version=4, boot=2),
        Send(dst=R1, msg=registered(N1, 2, boot=2)),
        Send(dst=R2, msg=delta(2, 4, info(N1, incarnation=2))),
        Send(dst=R1, msg=full(4, info(N1, incarnation=2), info(N2))),
    ]
    assert gcs.nodes.info(N1) == info(N1, incarnation=2)
    gcs.check_invariants()


def test_new_attempt_while_alive_also_starts_the_next_incarnation() -> None:
    gcs = gcs_with(N1)
    cause = "replaced by a new registration (boot 1, attempt 2)"
    assert gcs.handle(recv(R1, register(N1, attempt=2)), now=T0) == [
        put(N1, incarnation=1, version=2, state="dead", cause=cause),
        put(N1, incarnation=2, version=3, attempt=2),
        Send(dst=R1, msg=registered(N1, 2, attempt=2)),
        Send(dst=R1, msg=full(3, info(N1, incarnation=2))),
    ]


# --- heartbeats and failure detection --------------------------------------


def test_heartbeat_refreshes_liveness() -> None:
    gcs = gcs_with(N1)
    beat = Heartbeat(node_id=N1, incarnation=1, view_version=1)
    assert gcs.handle(recv(R1, beat), now=T0 + seconds(4)) == []
    # Without the beat N1 would be dead at T0 + 5s; with it, at T0 + 9s and not sooner.
    assert health_check(gcs, T0 + TIMEOUT) == [rearm(T0 + TIMEOUT)]
    now = T0 + seconds(9) - 1
    assert health_check(gcs, now) == [rearm(now)]
    assert gcs.nodes.info(N1) == info(N1)
    now = T0 + seconds(9)
    assert health_check(gcs, now) == [
        put(N1, incarnation=1, version=2, state="dead", cause=MISSED_5S),
        rearm(now),
    ]


def test_silent_node_is_declared_dead_at_the_timeout_and_not_one_ns_sooner() -> None:
    gcs = gcs_with(N1)
    now = T0 + TIMEOUT - 1
    assert health_check(gcs, now) == [rearm(now)]
    assert gcs.nodes.info(N1) == info(N1)
    now = T0 + TIMEOUT
    assert health_check(gcs, now) == [
        put(N1, incarnation=1, version=2, state="dead", cause=MISSED_5S),
        rearm(now),
    ]
    assert gcs.nodes.info(N1) == info(N1, state="dead", cause=MISSED_5S)
    gcs.check_invariants()


def test_every_live_subscriber_gets_the_delta_about_the_dead_node() -> None:
    gcs = gcs_with(N1)
    gcs.handle(recv(R2, register(N2)), now=T0 + seconds(1))
    gcs.handle(recv(R3, register(N3)), now=T0 + seconds(1))
    assert gcs.handle(recv(DRIVER, SubscribeNodes(known_version=0)), now=T0 + seconds(1)) == [
        Send(dst=DRIVER, msg=full(3, info(N1), info(N2), info(N3))),
    ]
    now = T0 + seconds(5)
    dead = info(N1, state="dead", cause=MISSED_5S)
    assert health_check(gcs, now) == [
        put(N1, incarnation=1, version=4, state="dead", cause=MISSED_5S),
        Send(dst=R2, msg=delta(3, 4, dead)),
        Send(dst=R3, msg=delta(3, 4, dead)),
        Send(dst=DRIVER, msg=delta(3, 4, dead)),
        rearm(now),
    ]
    gcs.check_invariants()


def test_two_nodes_dying_in_one_sweep_share_one_delta() -> None:
    gcs = gcs_with(N1, N2)
    gcs.handle(recv(R3, register(N3)), now=T0 + seconds(3))
    now = T0 + seconds(6)
    d1 = info(N1, state="dead", cause="missed heartbeats for 6.000s (timeout 5.000s)")
    d2 = info(N2, state="dead", cause="missed heartbeats for 6.000s (timeout 5.000s)")
    assert health_check(gcs, now) == [
        put(N1, incarnation=1, version=4, state="dead", cause=d1.death_cause),
        put(N2, incarnation=1, version=5, state="dead", cause=d2.death_cause),
        Send(dst=R3, msg=delta(3, 5, d1, d2)),
        rearm(now),
    ]


def test_heartbeat_from_a_dead_incarnation_is_told_so_and_does_not_revive_it() -> None:
    gcs = gcs_with(N1)
    health_check(gcs, T0 + TIMEOUT)
    now = T0 + TIMEOUT + 1
    beat = Heartbeat(node_id=N1, incarnation=1, view_version=1)
    assert gcs.handle(recv(R1, beat), now=now) == [
        Send(dst=R1, msg=NodeDeclaredDead(node_id=N1, incarnation=1, cause=MISSED_5S)),
    ]
    assert gcs.nodes.info(N1) == info(N1, state="dead", cause=MISSED_5S)
    assert gcs.nodes.version == 2
    assert health_check(gcs, now) == [rearm(now)]
    gcs.check_invariants()


def test_duplicate_registration_of_a_dead_incarnation_is_told_it_is_dead() -> None:
    gcs = gcs_with(N1)
    health_check(gcs, T0 + TIMEOUT)
    assert gcs.handle(recv(R1, register(N1)), now=T0 + TIMEOUT) == [
        Send(dst=R1, msg=NodeDeclaredDead(
            node_id=N1, incarnation=1, cause=MISSED_5S, attempt=1)),
    ]
    assert gcs.nodes.info(N1) == info(N1, state="dead", cause=MISSED_5S)


def test_heartbeat_from_a_superseded_incarnation_is_told_so() -> None:
    gcs = gcs_with(N1)
    gcs.handle(recv(R1, register(N1, attempt=2)), now=T0)
    beat = Heartbeat(node_id=N1, incarnation=1, view_version=3)
    assert gcs.handle(recv(R1, beat), now=T0) == [Send(dst=R1, msg=NodeDeclaredDead(
        node_id=N1, incarnation=1, cause="superseded by incarnation 2"))]
    assert gcs.nodes.info(N1) == info(N1, incarnation=2)


def test_rejoin_with_the_next_attempt_gets_the_next_incarnation() -> None:
    gcs = gcs_with(N1, N2)
    gcs.handle(recv(R2, Heartbeat(node_id=N2, incarnation=1, view_version=2)), now=T0 + 4)
    health_check(gcs, T0 + TIMEOUT)  # N1 dies (version 3), N2 was heard later
    now = T0 + TIMEOUT + 7
    assert gcs.handle(recv(R1, register(N1, attempt=2)), now=now) == [
        put(N1, incarnation=2, version=4, attempt=2),
        Send(dst=R1, msg=registered(N1, 2, attempt=2)),
        Send(dst=R2, msg=delta(3, 4, info(N1, incarnation=2))),
        Send(dst=R1, msg=full(4, info(N1, incarnation=2), info(N2))),
    ]
    # The new incarnation gets a full timeout from its registration; N2 does not.
    missed = "missed heartbeats for 10.000s (timeout 5.000s)"
    assert health_check(gcs, now + TIMEOUT - 1) == [
        put(N2, incarnation=1, version=5, state="dead", cause=missed),
        Send(dst=R1, msg=delta(4, 5, info(N2, state="dead", cause=missed))),
        rearm(now + TIMEOUT - 1),
    ]
    assert gcs.nodes.info(N1) == info(N1, incarnation=2)
    gcs.check_invariants()


def test_heartbeat_naming_a_future_incarnation_is_rejected_not_raised() -> None:
    gcs = gcs_with(N1)
    beat = Heartbeat(node_id=N1, incarnation=5, view_version=1)
    assert gcs.handle(recv(R1, beat), now=T0 + seconds(4)) == [Send(dst=R1, msg=Rejected(
        request_type="Heartbeat",
        reason=("gcs: heartbeat from node 'n1' names incarnation 5, but the GCS only issued "
                "up to 1; the node must register before it heartbeats"),
    ))]
    # It did not count as a beat of incarnation 1.
    assert health_check(gcs, T0 + TIMEOUT) == [
        put(N1, incarnation=1, version=2, state="dead", cause=MISSED_5S),
        rearm(T0 + TIMEOUT),
    ]


def test_heartbeat_from_an_unknown_node_is_told_to_register() -> None:
    gcs = gcs_with()
    beat = Heartbeat(node_id=N1, incarnation=3, view_version=0)
    assert gcs.handle(recv(R1, beat), now=T0) == [Send(dst=R1, msg=NodeDeclaredDead(
        node_id=N1, incarnation=3, cause="the GCS does not know this node; register again"))]
    assert gcs.node_table == ()


def test_heartbeat_behind_the_table_is_repaired_with_a_delta_push() -> None:
    gcs = gcs_with(N1, N2, N3)  # R1 was pushed up to version 3
    assert gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=1)),
                      now=T0) == [Send(dst=R1, msg=delta(1, 3, info(N2), info(N3)))]
    assert gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=2)),
                      now=T0) == [Send(dst=R1, msg=delta(2, 3, info(N3)))]
    assert gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=0)),
                      now=T0) == [Send(dst=R1, msg=full(3, info(N1), info(N2), info(N3)))]
    assert gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=3)),
                      now=T0) == []
    gcs.check_invariants()


def test_heartbeat_ahead_of_the_table_is_accepted_without_a_push() -> None:
    gcs = gcs_with(N1)
    beat = Heartbeat(node_id=N1, incarnation=1, view_version=7)
    assert gcs.handle(recv(R1, beat), now=T0 + seconds(4)) == []
    assert health_check(gcs, T0 + TIMEOUT) == [rearm(T0 + TIMEOUT)]
    gcs.check_invariants()


def test_deltas_older_than_the_change_log_become_full_snapshots() -> None:
    config = GcsConfig(membership=MembershipConfig(change_log_max=1))
    gcs = Gcs(config)
    gcs.handle(Started(), now=T0)
    for node in (N1, N2, N3):
        gcs.handle(recv(Address(node=node, component="raylet"), register(node)), now=T0)
    gcs.check_invariants()
    everyone = (info(N1), info(N2), info(N3))
    assert gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=1)),
                      now=T0) == [Send(dst=R1, msg=full(3, *everyone))]
    assert gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=2)),
                      now=T0) == [Send(dst=R1, msg=delta(2, 3, info(N3)))]


# --- node-table subscriptions ----------------------------------------------


def test_poller_gets_the_full_table_then_deltas() -> None:
    gcs = gcs_with(N1)
    assert gcs.handle(recv(DRIVER, SubscribeNodes(known_version=0)), now=T0) == [
        Send(dst=DRIVER, msg=full(1, info(N1))),
    ]
    assert gcs.handle(recv(R2, register(N2)), now=T0) == [
        put(N2, incarnation=1, version=2),
        Send(dst=R2, msg=registered(N2, 1)),
        Send(dst=R1, msg=delta(1, 2, info(N2))),
        Send(dst=R2, msg=full(2, info(N1), info(N2))),
        Send(dst=DRIVER, msg=delta(1, 2, info(N2))),
    ]
    assert gcs.handle(recv(DRIVER, SubscribeNodes(known_version=2)), now=T0) == []
    # A poll that reports a lost push is repaired from the version it reports.
    assert gcs.handle(recv(DRIVER, SubscribeNodes(known_version=1)), now=T0) == [
        Send(dst=DRIVER, msg=delta(1, 2, info(N2))),
    ]


def test_poller_on_an_empty_table_gets_an_empty_snapshot() -> None:
    gcs = gcs_with()
    assert gcs.handle(recv(DRIVER, SubscribeNodes(known_version=0)), now=T0) == [
        Send(dst=DRIVER, msg=full(0)),
    ]


def test_poller_that_stops_polling_is_dropped_after_the_subscriber_timeout() -> None:
    gcs = gcs_with()
    gcs.handle(recv(DRIVER, SubscribeNodes(known_version=0)), now=T0)
    now = T0 + seconds(30)
    assert health_check(gcs, now) == [rearm(now)]  # exactly at the timeout: kept
    gcs.handle(recv(R1, register(N1)), now=now)
    assert gcs.handle(recv(DRIVER, SubscribeNodes(known_version=1)), now=now) == []
    now = T0 + seconds(61)
    assert health_check(gcs, now) == [
        put(N1, incarnation=1, version=2, state="dead",
            cause="missed heartbeats for 31.000s (timeout 5.000s)"),
        rearm(now),  # the poller, silent for 31 s, was dropped first
    ]


# --- unregistration --------------------------------------------------------


def test_unregister_marks_the_node_dead_and_tells_the_others() -> None:
    gcs = gcs_with(N1, N2)
    drained = "drained: the node left"
    assert gcs.handle(recv(R1, UnregisterNode(node_id=N1, incarnation=1)), now=T0) == [
        put(N1, incarnation=1, version=3, state="dead", cause=drained),
        Send(dst=R2, msg=delta(2, 3, info(N1, state="dead", cause=drained))),
    ]
    assert gcs.handle(recv(R1, UnregisterNode(node_id=N1, incarnation=1)), now=T0) == []
    assert gcs.handle(recv(R2, UnregisterNode(node_id=N2, incarnation=4)), now=T0) == []
    assert gcs.handle(recv(R3, UnregisterNode(node_id=N3, incarnation=1)), now=T0) == []
    gcs.check_invariants()


# --- restart -----------------------------------------------------------------


def record(store: dict[str, dict[bytes, bytes]], effects: list[Msg]) -> list[Msg]:
    for effect in effects:
        match effect:
            case StorePut():
                store.setdefault(effect.table, {})[effect.key] = effect.value
            case StoreDelete():
                store.get(effect.table, {}).pop(effect.key, None)
    return effects


def test_restart_recovers_the_table_and_gives_live_nodes_a_fresh_timeout() -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    gcs = Gcs()
    record(store, gcs.handle(Started(), now=T0))
    for node, src in ((N1, R1), (N2, R2), (N3, R3)):
        record(store, gcs.handle(recv(src, register(node)), now=T0))
    record(store, gcs.handle(recv(R3, UnregisterNode(node_id=N3, incarnation=1)), now=T0))
    record(store, gcs.handle(recv(R2, register(N2, attempt=2)), now=T0 + seconds(1)))
    table, version = gcs.node_table, gcs.nodes.version
    assert version == 6

    restart = T0 + seconds(60)  # every live node is long overdue by now
    gcs = Gcs(recovered=store)
    assert gcs.node_table == tuple(sorted(table, key=lambda row: row.node_id))
    assert gcs.nodes.version == version
    assert gcs.handle(Started(), now=restart) == [rearm(restart)]
    gcs.check_invariants()

    assert health_check(gcs, restart + TIMEOUT - 1) == [rearm(restart + TIMEOUT - 1)]
    now = restart + TIMEOUT
    assert health_check(gcs, now) == [
        put(N1, incarnation=1, version=7, state="dead", cause=MISSED_5S),
        put(N2, incarnation=2, version=8, state="dead", attempt=2, cause=MISSED_5S),
        rearm(now),
    ]
    gcs.check_invariants()


def test_restarted_gcs_pushes_its_live_raylets_a_full_snapshot_on_the_next_change() -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    gcs = Gcs()
    for node, src in ((N1, R1), (N2, R2)):
        record(store, gcs.handle(recv(src, register(node)), now=T0))
    gcs = Gcs(recovered=store)
    gcs.handle(Started(), now=T0 + 1)
    assert gcs.handle(recv(R3, register(N3)), now=T0 + 1) == [
        put(N3, incarnation=1, version=3),
        Send(dst=R3, msg=registered(N3, 1)),
        Send(dst=R1, msg=full(3, info(N1), info(N2), info(N3))),
        Send(dst=R2, msg=full(3, info(N1), info(N2), info(N3))),
        Send(dst=R3, msg=full(3, info(N1), info(N2), info(N3))),
    ]
    # A heartbeat at the current version settles R1's known version: deltas again.
    gcs.handle(recv(R1, Heartbeat(node_id=N1, incarnation=1, view_version=3)), now=T0 + 2)
    drained = info(N2, state="dead", cause="drained: the node left")
    assert gcs.handle(recv(R2, UnregisterNode(node_id=N2, incarnation=1)), now=T0 + 3) == [
        put(N2, incarnation=1, version=4, state="dead", cause=drained.death_cause),
        Send(dst=R1, msg=delta(3, 4, drained)),
        Send(dst=R3, msg=delta(3, 4, drained)),
    ]
    gcs.check_invariants()


def test_restarted_gcs_keeps_incarnations_growing() -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    gcs = Gcs()
    record(store, gcs.handle(recv(R1, register(N1)), now=T0))
    record(store, gcs.handle(recv(R1, register(N1, attempt=2)), now=T0))
    gcs = Gcs(recovered=store)
    gcs.handle(Started(), now=T0)
    assert gcs.handle(recv(R1, register(N1, attempt=2)), now=T0) == [
        Send(dst=R1, msg=registered(N1, 2, attempt=2)),
    ]
    assert gcs.handle(recv(R1, register(N1, attempt=1)), now=T0) == []
    effects = gcs.handle(recv(R1, register(N1, boot=2)), now=T0)
    assert Send(dst=R1, msg=registered(N1, 3, boot=2)) in effects


# --- bad peer input ----------------------------------------------------------


def test_a_message_the_gcs_does_not_serve_is_rejected() -> None:
    gcs = gcs_with()
    msg = NodeRegistered(node_id=N1, incarnation=1, boot=1, attempt=1)
    assert gcs.handle(recv(R1, msg), now=T0) == [Send(dst=R1, msg=Rejected(
        request_type="NodeRegistered",
        reason="gcs: does not serve NodeRegistered messages; send it to the component that owns it",
    ))]


def test_a_rejection_from_a_peer_and_a_stale_timer_are_dropped() -> None:
    gcs = gcs_with(N1)
    assert gcs.handle(recv(R1, Rejected(request_type="X", reason="no")), now=T0) == []
    assert gcs.handle(TimerFired(key="gcs.some_timer_from_before_a_restart"), now=T0) == []


_nodes = st.sampled_from([N1, N2, N3])
_small = st.integers(min_value=0, max_value=4)
_peer_msgs: st.SearchStrategy[Msg] = st.one_of(
    st.builds(RegisterNode, node_id=_nodes, boot=_small, attempt=_small,
              resources=st.just(RES)),
    st.builds(Heartbeat, node_id=_nodes, incarnation=_small, view_version=_small),
    st.builds(UnregisterNode, node_id=_nodes, incarnation=_small),
    st.builds(SubscribeNodes, known_version=st.integers(min_value=0, max_value=12)),
    st.builds(NodeDeclaredDead, node_id=_nodes, incarnation=_small, cause=st.just("x")),
    st.builds(KvGet, request_id=_small, namespace=st.just(""), key=st.binary(max_size=4)),
)
_inputs = st.one_of(
    st.tuples(st.sampled_from([R1, R2, R3, DRIVER]), _peer_msgs).map(lambda p: recv(*p)),
    st.just(TimerFired(key=HEALTH_CHECK_TIMER)),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(_inputs, st.integers(0, seconds(3))), max_size=30))
def test_no_sequence_of_peer_inputs_makes_the_gcs_raise(steps: list[tuple[Msg, int]]) -> None:
    gcs = Gcs()
    now = T0
    gcs.handle(Started(), now=now)
    for event, dt in steps:
        now += dt
        gcs.handle(event, now=now)  # type: ignore[arg-type]
        gcs.check_invariants()


def test_error_messages_pin_the_component_prefix() -> None:
    # The GCS's node rows only move along _TRANSITIONS, and no input reaches an
    # illegal move; the format of the error they would raise is pinned here.
    from shoal.kernel.errors import InvalidTransition
    from shoal.kernel.gcs.membership import NodeDirectory, NodePhase, _Row

    row = _Row(node_id=N1, incarnation=1, phase=NodePhase.DEAD, resources=RES, endpoint="",
               boot=1, attempt=1, death_cause="", version=1, last_heartbeat_ns=0)
    with pytest.raises(InvalidTransition,
                       match=r"^gcs: cannot move node to dead 'n1' in phase dead; expected alive$"):
        NodeDirectory._check_move(NodePhase.DEAD, NodePhase.DEAD, row)
