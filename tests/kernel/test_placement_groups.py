"""GCS placement group manager: whole-effect-list tests of placement, two-phase reservation,
rollback, rescheduling, removal and recovery; and the placement policy."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from shoal.kernel.errors import InvalidTransition
from shoal.kernel.gcs.placement_group_policy import place_bundles
from shoal.kernel.gcs.placement_group_protocol import (
    BundlesCommitted,
    BundleSpec,
    BundlesPrepared,
    BundlesReleased,
    CommitBundles,
    CreatePlacementGroup,
    GetPlacementGroup,
    PlacementGroupReply,
    PlacementGroupSpec,
    PrepareBundles,
    ReleaseBundles,
    RemovePlacementGroup,
    bundle_resources,
    group_shape,
)
from shoal.kernel.gcs.placement_group_records import (
    PG_RELEASES_TABLE,
    PGS_TABLE,
    PgManagerConfig,
    PgRecord,
    PgState,
    check_move,
    state_diagram,
)
from shoal.kernel.gcs.placement_groups import PlacementGroupManager
from shoal.kernel.gcs.protocol import NodeInfo
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Send,
    SetTimer,
    StoreDelete,
    StorePut,
)

S = 1_000_000_000
DRIVER = Address(node="n0", component="driver")
R1 = Address(node="n1", component="raylet")
R2 = Address(node="n2", component="raylet")
R3 = Address(node="n3", component="raylet")


class Facts:
    """A node table and resource view the test controls."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.available: dict[str, dict[str, float]] = {}
        for node_id, cpus in (("n1", 2.0), ("n2", 4.0)):
            self.join(node_id, cpus)

    def join(self, node_id: str, cpus: float, incarnation: int = 1) -> None:
        self.nodes[node_id] = NodeInfo(node_id=NodeId(node_id), incarnation=incarnation,
                                       state="alive", resources={"CPU": cpus})
        self.available[node_id] = {"CPU": cpus}

    def kill(self, node_id: str) -> None:
        self.nodes[node_id] = msgspec.structs.replace(self.nodes[node_id], state="dead")

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return self.nodes.get(node_id)

    def live_nodes(self) -> list[NodeResources]:
        return [NodeResources(node_id=n.node_id, incarnation=n.incarnation, total=n.resources,
                              available=self.available[n.node_id])
                for n in self.nodes.values() if n.state == "alive"]


def pg_spec(pg_id: str = "g1", bundles: tuple[dict[str, float], ...] = ({"CPU": 1.0},),
            strategy: str = "PACK", name: str = "") -> PlacementGroupSpec:
    return PlacementGroupSpec(pg_id=pg_id, bundles=bundles, strategy=strategy,  # type: ignore[arg-type]
                              name=name, namespace="ns" if name else "", creator=DRIVER)


def plain(effects: list[Msg]) -> list[Any]:
    """Durable writes shown as (table, key, state/stage@version) for reading."""
    out: list[Any] = []
    for effect in effects:
        if isinstance(effect, StorePut) and effect.table == PGS_TABLE:
            rec = msgspec.msgpack.decode(effect.value, type=PgRecord)
            out.append(("put", effect.key.decode(), f"{rec.state}/{rec.stage}@{rec.version}"))
        elif isinstance(effect, StorePut) and effect.table == PG_RELEASES_TABLE:
            out.append(("releasing", effect.key.decode()))
        elif isinstance(effect, StoreDelete):
            out.append(("delete", effect.table, effect.key.decode()))
        elif isinstance(effect, Send) and isinstance(effect.msg, PlacementGroupReply):
            out.append(("reply", effect.msg.request_id,
                        tuple((g.state, g.bundle_nodes) for g in effect.msg.groups),
                        effect.msg.error))
        else:
            out.append(effect)
    return out


def create(m: PlacementGroupManager, spec: PlacementGroupSpec, request_id: int = 7) -> list[Any]:
    return plain(m.on_request(DRIVER, CreatePlacementGroup(request_id=request_id, spec=spec), 0))


def prepare(pg: str, attempt: int, *bundles: tuple[int, float]) -> PrepareBundles:
    return PrepareBundles(pg_id=pg, attempt=attempt, bundles=tuple(
        BundleSpec(index=i, shape={"CPU": cpu}) for i, cpu in bundles))


@pytest.fixture
def facts() -> Facts:
    return Facts()


@pytest.fixture
def m(facts: Facts) -> PlacementGroupManager:
    return PlacementGroupManager(PgManagerConfig(), facts)


def created(m: PlacementGroupManager, spec: PlacementGroupSpec) -> None:
    """Creates ``spec`` and answers every prepare and commit with yes."""
    create(m, spec)
    row = m.row(spec.pg_id)
    assert row is not None
    for node in list(row.waiting):
        m.on_prepared(Address(node=node, component="raylet"), BundlesPrepared(
            pg_id=spec.pg_id, attempt=row.attempt, ok=True), 0)
    for node in list(row.waiting):
        m.on_committed(Address(node=node, component="raylet"), BundlesCommitted(
            pg_id=spec.pg_id, attempt=row.attempt), 0)
    assert row.state is PgState.CREATED
    m.check_invariants()


def test_create_prepares_on_the_chosen_node_then_commits_then_is_created(
        m: PlacementGroupManager) -> None:
    # One durable write of the new row, already preparing.
    assert create(m, pg_spec(bundles=({"CPU": 1.0}, {"CPU": 1.0}))) == [
        ("put", "g1", "PENDING/preparing@1"),
        Send(dst=R2, msg=prepare("g1", 1, (0, 1.0), (1, 1.0))),
        SetTimer(key="gcs.pg.retry.g1", at_ns=S // 2),
        ("reply", 7, (("PENDING", (None, None)),), ""),
    ]
    assert plain(m.on_prepared(R2, BundlesPrepared(pg_id="g1", attempt=1, ok=True), 0)) == [
        ("put", "g1", "PENDING/committing@2"),
        Send(dst=R2, msg=CommitBundles(pg_id="g1", attempt=1, indexes=(0, 1))),
        SetTimer(key="gcs.pg.retry.g1", at_ns=S // 2),
    ]
    assert plain(m.on_committed(R2, BundlesCommitted(pg_id="g1", attempt=1), 0)) == [
        CancelTimer(key="gcs.pg.retry.g1"),
        ("put", "g1", "CREATED/none@3"),
    ]
    get = GetPlacementGroup(request_id=9, pg_id="g1")
    assert plain(m.on_request(DRIVER, get, 0)) == [
        ("reply", 9, (("CREATED", ("n2", "n2")),), "")]
    # A duplicate commit answer is stale.
    assert m.on_committed(R2, BundlesCommitted(pg_id="g1", attempt=1), 0) == []


def test_create_is_idempotent_and_names_are_unique(m: PlacementGroupManager) -> None:
    create(m, pg_spec(name="web"))
    assert create(m, pg_spec(name="web"), request_id=8) == [
        ("reply", 8, (("PENDING", (None,)),), "")]
    out = create(m, pg_spec("g2", name="web"))
    assert out[0][0] == "reply" and "belongs to placement group 'g1'" in out[0][3]
    by_name = GetPlacementGroup(request_id=3, name="web", namespace="ns")
    assert plain(m.on_request(DRIVER, by_name, 0)) == [("reply", 3, (("PENDING", (None,)),), "")]


def test_a_bad_spec_is_refused_with_a_reason(m: PlacementGroupManager) -> None:
    out = create(m, pg_spec(bundles=()))
    assert out == [("reply", 7, (), ("gcs: cannot create placement group 'g1': it has no "
                                     "bundles; give at least one, e.g. [{'CPU': 1}]"))]
    assert "is empty" in create(m, pg_spec(bundles=({"CPU": 0.0},)))[0][3]


def test_a_refused_prepare_rolls_the_attempt_back_and_retries_on_the_timer(
        m: PlacementGroupManager, facts: Facts) -> None:
    create(m, pg_spec(bundles=({"CPU": 2.0}, {"CPU": 2.0}), strategy="STRICT_SPREAD"))
    row = m.row("g1")
    assert row is not None and sorted(row.waiting) == ["n1", "n2"]
    m.on_prepared(R1, BundlesPrepared(pg_id="g1", attempt=1, ok=True), 0)
    out = plain(m.on_prepared(R2, BundlesPrepared(pg_id="g1", attempt=1, ok=False,
                                                  reason="busy"), 0))
    assert out == [
        CancelTimer(key="gcs.pg.retry.g1"),
        ("releasing", "g1@n2"),
        Send(dst=R2, msg=ReleaseBundles(pg_id="g1", attempt=1, indexes=(0,),
                                        reason="placement attempt rolled back")),
        SetTimer(key="gcs.pg.release.g1@n2", at_ns=S // 2),
        ("releasing", "g1@n1"),
        Send(dst=R1, msg=ReleaseBundles(pg_id="g1", attempt=1, indexes=(1,),
                                        reason="placement attempt rolled back")),
        SetTimer(key="gcs.pg.release.g1@n1", at_ns=S // 2),
        ("put", "g1", "PENDING/unplaced@2"),
        SetTimer(key="gcs.pg.place", at_ns=S),
    ]
    assert row.reason == "node 'n2' refused: busy"
    # An answer to the rolled-back attempt is stale; the release is retransmitted until acked.
    assert m.on_prepared(R1, BundlesPrepared(pg_id="g1", attempt=1, ok=True), 0) == []
    assert m.on_timer("gcs.pg.release.g1@n1", S)[0] == Send(dst=R1, msg=ReleaseBundles(
        pg_id="g1", attempt=1, indexes=(1,), reason="placement attempt rolled back"))
    assert m.on_released(R1, BundlesReleased(pg_id="g1", attempt=1, indexes=(0,))) == []
    assert m.on_released(R1, BundlesReleased(pg_id="g1", attempt=1, indexes=(1,))) == [
        CancelTimer(key="gcs.pg.release.g1@n1"), StoreDelete(table=PG_RELEASES_TABLE,
                                                             key=b"g1@n1")]
    out = plain(m.on_timer("gcs.pg.place", S))
    assert out[0] == ("put", "g1", "PENDING/preparing@3") and row.attempt == 2


def test_infeasible_group_stays_pending_with_a_reason_until_a_node_joins(
        m: PlacementGroupManager, facts: Facts) -> None:
    assert create(m, pg_spec(bundles=({"CPU": 8.0},))) == [
        ("put", "g1", "PENDING/unplaced@1"),
        SetTimer(key="gcs.pg.place", at_ns=S),
        ("reply", 7, (("PENDING", (None,)),), ""),
    ]
    row = m.row("g1")
    assert row is not None and "fits on no live node" in row.reason
    facts.join("n3", 8.0)
    out = plain(m.on_cluster_changed(0))
    assert out[:2] == [("put", "g1", "PENDING/preparing@2"),
                       Send(dst=R3, msg=prepare("g1", 1, (0, 8.0)))]


def test_node_death_reschedules_only_the_lost_bundles(m: PlacementGroupManager,
                                                      facts: Facts) -> None:
    created(m, pg_spec(bundles=({"CPU": 1.0}, {"CPU": 1.0}), strategy="SPREAD"))
    row = m.row("g1")
    assert row is not None and row.nodes == ["n2", "n1"]
    facts.join("n3", 4.0)
    facts.kill("n1")
    out = plain(m.on_cluster_changed(0))
    assert out == [
        ("put", "g1", "RESCHEDULING/unplaced@4"),
        ("put", "g1", "RESCHEDULING/preparing@5"),
        Send(dst=R3, msg=prepare("g1", 2, (1, 1.0))),
        SetTimer(key="gcs.pg.retry.g1", at_ns=S // 2),
    ]
    m.on_prepared(R3, BundlesPrepared(pg_id="g1", attempt=2, ok=True), 0)
    m.on_committed(R3, BundlesCommitted(pg_id="g1", attempt=2), 0)
    assert row.state is PgState.CREATED and row.nodes == ["n2", "n3"]


def test_remove_releases_every_node_and_reports_the_group_for_its_actors(
        m: PlacementGroupManager) -> None:
    created(m, pg_spec(bundles=({"CPU": 2.0}, {"CPU": 2.0}), strategy="STRICT_SPREAD"))
    out = plain(m.on_request(DRIVER, RemovePlacementGroup(request_id=5, pg_id="g1"), 0))
    why = "placement group 'g1' was removed"
    assert out == [
        CancelTimer(key="gcs.pg.retry.g1"),
        ("releasing", "g1@n2"),
        Send(dst=R2, msg=ReleaseBundles(pg_id="g1", attempt=1, reason=why)),
        SetTimer(key="gcs.pg.release.g1@n2", at_ns=S // 2),
        ("releasing", "g1@n1"),
        Send(dst=R1, msg=ReleaseBundles(pg_id="g1", attempt=1, reason=why)),
        SetTimer(key="gcs.pg.release.g1@n1", at_ns=S // 2),
        ("put", "g1", "REMOVED/none@4"),
        ("reply", 5, (("REMOVED", (None, None)),), ""),
    ]
    assert m.removed_groups == ["g1"]
    again = plain(m.on_request(DRIVER, RemovePlacementGroup(request_id=6, pg_id="g1"), 0))
    assert again == [("reply", 6, (("REMOVED", (None, None)),), "")]
    missing = plain(m.on_request(DRIVER, RemovePlacementGroup(request_id=6, pg_id="zz"), 0))
    assert missing == [("reply", 6, (), "gcs: there is no placement group 'zz' to remove")]


def test_a_restarted_manager_recovers_rows_and_resends_what_was_in_flight(facts: Facts) -> None:
    store: dict[str, dict[bytes, bytes]] = {}

    def apply(effects: list[Msg]) -> None:
        for e in effects:
            if isinstance(e, StorePut):
                store.setdefault(e.table, {})[e.key] = e.value
            elif isinstance(e, StoreDelete):
                store.get(e.table, {}).pop(e.key, None)

    m = PlacementGroupManager(PgManagerConfig(), facts)
    apply(m.on_request(DRIVER, CreatePlacementGroup(request_id=1, spec=pg_spec()), 0))
    apply(m.on_prepared(R2, BundlesPrepared(pg_id="g1", attempt=1, ok=True), 0))
    again = PlacementGroupManager(PgManagerConfig(), facts, store)
    assert again.on_started(0) == [
        Send(dst=R2, msg=CommitBundles(pg_id="g1", attempt=1, indexes=(0,))),
        SetTimer(key="gcs.pg.retry.g1", at_ns=S // 2),
    ]
    again.check_invariants()


def test_moves_are_checked_and_the_diagram_lists_them() -> None:
    with pytest.raises(InvalidTransition, match=r"^gcs placement groups: cannot move group"):
        check_move("g1", PgState.REMOVED, PgState.CREATED)
    assert "CREATED --> RESCHEDULING" in state_diagram()


# --- the policy -------------------------------------------------------------------


def avail(**cpus: float) -> dict[NodeId, dict[str, float]]:
    return {NodeId(n): {"CPU": c} for n, c in cpus.items()}


@pytest.mark.parametrize("strategy,free,expected", [
    ("PACK", avail(a=4, b=4), {0: "a", 1: "a"}),
    ("PACK", avail(a=1, b=1), {0: "a", 1: "b"}),
    ("STRICT_PACK", avail(a=1, b=2), {0: "b", 1: "b"}),
    ("STRICT_PACK", avail(a=1, b=1), None),
    ("SPREAD", avail(a=4, b=4), {0: "a", 1: "b"}),
    ("SPREAD", avail(a=4, b=0), {0: "a", 1: "a"}),
    ("STRICT_SPREAD", avail(a=4, b=4), {0: "a", 1: "b"}),
    ("STRICT_SPREAD", avail(a=4, b=0), None),
])
def test_policy_places_per_strategy(strategy: str, free: dict[NodeId, dict[str, float]],
                                    expected: dict[int, str] | None) -> None:
    todo = [(0, {"CPU": 1.0}), (1, {"CPU": 1.0})]
    before = {n: dict(v) for n, v in free.items()}
    placement, reason = place_bundles(strategy, todo, [], free)
    assert placement == expected
    if expected is None:
        assert reason and free == before  # nothing debited
    else:
        used = sum(before[n]["CPU"] - free[n]["CPU"] for n in free)
        assert used == 2.0


def test_strict_spread_avoids_the_nodes_of_fixed_bundles() -> None:
    placement, _ = place_bundles("STRICT_SPREAD", [(1, {"CPU": 1.0})], [NodeId("a")],
                                 avail(a=4, b=1))
    assert placement == {1: "b"}


def test_group_shape_and_bundle_resources_name_the_same_resources() -> None:
    shape = group_shape({"CPU": 1.0}, "g1", 0)
    assert shape == {"CPU_group_g1": 1.0, "CPU_group_0_g1": 1.0, "bundle_group_g1": 0.001,
                     "bundle_group_0_g1": 0.001}
    added = bundle_resources("g1", 0, {"CPU": 2.0})
    assert set(shape) <= set(added)
    assert group_shape({}, "g1", -1) == {"bundle_group_g1": 0.001}


def test_a_node_that_rejoins_hears_of_removed_groups(m: PlacementGroupManager,
                                                     facts: Facts) -> None:
    created(m, pg_spec())
    m.on_cluster_changed(0)  # the manager learns the live incarnations
    m.on_request(DRIVER, RemovePlacementGroup(request_id=5, pg_id="g1"), 0)
    m.on_released(R1, BundlesReleased(pg_id="g1", attempt=1))
    m.on_released(R2, BundlesReleased(pg_id="g1", attempt=1))
    assert m.releases == ()
    facts.join("n1", 2.0, incarnation=2)  # n1 restarted: it may hold stale requests
    out = plain(m.on_cluster_changed(0))
    assert out == [
        ("releasing", "g1@n1"),
        Send(dst=R1, msg=ReleaseBundles(pg_id="g1", attempt=1,
                                        reason="placement group 'g1' was removed")),
        SetTimer(key="gcs.pg.release.g1@n1", at_ns=S // 2),
    ]
    assert m.on_cluster_changed(0) == []  # told once per incarnation
