"""The cluster resource view: the GCS's soft-state table, the raylet's copy, and both wired."""

from __future__ import annotations

import msgspec
import pytest
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs import Gcs, GcsConfig
from shoal.kernel.gcs.protocol import NodeInfo, RegisterNode, UnregisterNode
from shoal.kernel.gcs.resource_protocol import (
    NodeResources,
    ResourceReport,
    ResourceViewUpdate,
)
from shoal.kernel.gcs.resources import ClusterResources, ResourceViewConfig
from shoal.kernel.ids import NodeId, WorkerId, seconds
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    StorePut,
    TimerFired,
)
from shoal.kernel.raylet import Raylet, RayletConfig
from shoal.kernel.raylet.membership import HEARTBEAT_TIMER
from shoal.kernel.raylet.protocol import (
    KillWorker,
    LeaseSpillback,
    RegisterWorker,
    RequestWorkerLease,
    StartWorker,
    WorkerExited,
)
from shoal.kernel.raylet.resources import ClusterView, LocalResources, ResourceError

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
R1, R2, R3 = (Address(node=n, component="raylet") for n in (N1, N2, N3))
GCS_ADDR = Address(node=NodeId("head"), component="gcs")
RES = {"CPU": 4.0}
T0 = seconds(100)


def recv(src: Address, msg: Msg) -> Received:
    return Received(src=src, msg=msg)


def row(node: NodeId, available: float = 4.0, incarnation: int = 1) -> NodeResources:
    return NodeResources(node_id=node, incarnation=incarnation, total=RES,
                         available={"CPU": available})


def report(node: NodeId, seq: int, available: float, *, incarnation: int = 1, epoch: int = 0,
           version: int = 0) -> ResourceReport:
    return ResourceReport(node_id=node, incarnation=incarnation, seq=seq, total=RES,
                          available={"CPU": available}, view_epoch=epoch, view_version=version)


def gcs_with(*nodes: NodeId, now: int = T0) -> Gcs:
    gcs = Gcs()
    gcs.handle(Started(), now=now)
    for node in nodes:
        gcs.handle(recv(Address(node=node, component="raylet"), RegisterNode(
            node_id=node, boot=1, attempt=1, resources=RES)), now=now)
    gcs.check_invariants()
    return gcs


def step(gcs: Gcs, src: Address, msg: Msg, now: int = T0) -> list[Msg]:
    effects = gcs.handle(recv(src, msg), now=now)
    gcs.check_invariants()
    return effects


EPOCH = T0 + 1  # the epoch of a GCS started at T0


# --- the GCS's view --------------------------------------------------------------


def test_registration_seeds_an_entry_with_everything_available() -> None:
    gcs = gcs_with(N1, N2)
    assert gcs.resources.rows == (row(N1), row(N2))
    assert gcs.resources.version == 2
    assert gcs.resources.epoch == EPOCH


def test_a_report_updates_the_entry_and_is_answered_with_the_changes_since_its_version() -> None:
    gcs = gcs_with(N1, N2)
    assert step(gcs, R1, report(N1, 1, 1.0)) == [Send(dst=R1, msg=ResourceViewUpdate(
        epoch=EPOCH, from_version=0, to_version=3, full=True, entries=(row(N1, 1.0), row(N2)),
        ack_seq=1))]
    assert step(gcs, R2, report(N2, 1, 3.0, epoch=EPOCH, version=2)) == [
        Send(dst=R2, msg=ResourceViewUpdate(
            epoch=EPOCH, from_version=2, to_version=4, full=False,
            entries=(row(N1, 1.0), row(N2, 3.0)), ack_seq=1))]
    # Up to date and unchanged: an empty delta that acknowledges the report.
    assert step(gcs, R2, report(N2, 2, 3.0, epoch=EPOCH, version=4)) == [
        Send(dst=R2, msg=ResourceViewUpdate(
            epoch=EPOCH, from_version=4, to_version=4, full=False, ack_seq=2))]


def test_an_older_report_does_not_overwrite_a_newer_one() -> None:
    gcs = gcs_with(N1)
    step(gcs, R1, report(N1, 5, 1.0))
    effects = step(gcs, R1, report(N1, 4, 3.0, epoch=EPOCH, version=2))
    assert gcs.resources.row(N1) == row(N1, 1.0)
    assert effects == [Send(dst=R1, msg=ResourceViewUpdate(
        epoch=EPOCH, from_version=2, to_version=2, full=False, ack_seq=4))]


def test_reports_from_another_incarnation_or_an_unknown_node_are_ignored() -> None:
    gcs = gcs_with(N1)
    assert step(gcs, R1, report(N1, 1, 0.0, incarnation=2)) == []
    assert step(gcs, R2, report(N2, 1, 0.0)) == []
    assert gcs.resources.row(N1) == row(N1)


def test_a_report_from_someone_else_or_with_bad_amounts_is_rejected() -> None:
    gcs = gcs_with(N1)
    assert step(gcs, R2, report(N1, 1, 0.0)) == [Send(dst=R2, msg=Rejected(
        request_type="ResourceReport",
        reason="gcs: resource report from n2/raylet refused: only the raylet of node 'n1' "
               "may report its resources"))]
    bad = ResourceReport(node_id=N1, incarnation=1, seq=1, total=RES,
                         available={"CPU": float("inf")})
    assert step(gcs, R1, bad) == [Send(dst=R1, msg=Rejected(
        request_type="ResourceReport",
        reason="gcs: resource report from n1/raylet refused: resource 'CPU' has amount inf; "
               "expected 0 <= amount <= 2**40"))]


def test_a_dead_node_is_removed_and_deltas_say_so() -> None:
    gcs = gcs_with(N1, N2)
    step(gcs, R2, UnregisterNode(node_id=N2, incarnation=1))
    assert gcs.resources.rows == (row(N1),)
    assert step(gcs, R1, report(N1, 1, 4.0, epoch=EPOCH, version=2)) == [
        Send(dst=R1, msg=ResourceViewUpdate(
            epoch=EPOCH, from_version=2, to_version=3, full=False, removed=(N2,), ack_seq=1))]


def test_a_node_missing_heartbeats_leaves_the_view_and_its_rejoin_reseeds_it() -> None:
    gcs = gcs_with(N1, N2)
    step(gcs, R2, report(N2, 1, 0.0))
    later = T0 + seconds(6)
    gcs.handle(recv(R1, report(N1, 1, 4.0)), now=later - seconds(1))  # not a heartbeat
    gcs.handle(TimerFired(key="gcs.health_check"), now=later)
    gcs.check_invariants()
    assert gcs.resources.row(N1) is None and gcs.resources.row(N2) is None
    gcs.handle(recv(R2, RegisterNode(node_id=N2, boot=1, attempt=2, resources=RES)), now=later)
    gcs.check_invariants()
    assert gcs.resources.rows == (row(N2, 4.0, incarnation=2),)


def test_another_epoch_or_a_version_beyond_the_log_gets_a_full_snapshot() -> None:
    gcs = Gcs(GcsConfig(resources=ResourceViewConfig(change_log_max=1)))
    gcs.handle(Started(), now=T0)
    for node in (N1, N2, N3):
        gcs.handle(recv(Address(node=node, component="raylet"), RegisterNode(
            node_id=node, boot=1, attempt=1, resources=RES)), now=T0)
    full = ResourceViewUpdate(epoch=EPOCH, from_version=0, to_version=3, full=True,
                              entries=(row(N1), row(N2), row(N3)), ack_seq=1)
    assert step(gcs, R1, report(N1, 1, 4.0, epoch=EPOCH, version=1)) == [
        Send(dst=R1, msg=full)]  # version 1 fell off the log
    assert step(gcs, R1, report(N1, 1, 4.0, epoch=5, version=3)) == [Send(dst=R1, msg=full)]
    assert step(gcs, R1, report(N1, 1, 4.0, epoch=EPOCH, version=9)) == [Send(dst=R1, msg=full)]


def test_a_restarted_gcs_rebuilds_the_view_from_its_node_table_in_a_new_epoch() -> None:
    gcs = gcs_with(N1, N2)
    step(gcs, R1, report(N1, 1, 0.0))
    store: dict[str, dict[bytes, bytes]] = {}
    for effect in gcs.handle(recv(R3, RegisterNode(node_id=N3, boot=1, attempt=1,
                                                   resources=RES)), now=T0):
        if isinstance(effect, StorePut):
            store.setdefault(effect.table, {})[effect.key] = effect.value
    for node in (N1, N2):
        rec = gcs.nodes._rows[node].record()
        store.setdefault("nodes", {})[node.encode()] = msgspec.msgpack.encode(rec)
    again = Gcs(recovered=store)
    assert again.handle(Started(), now=T0 + seconds(9)) == [
        SetTimer(key="gcs.health_check", at_ns=T0 + seconds(9) + seconds(1) // 2)]
    again.check_invariants()
    assert again.resources.epoch == T0 + seconds(9) + 1
    assert again.resources.rows == (row(N1), row(N2), row(N3))  # everything free until told


def test_invariants_catch_a_view_that_drifted_from_the_node_table() -> None:
    view = ClusterResources(ResourceViewConfig())
    view.sync_nodes([NodeInfo(node_id=N1, incarnation=1, state="alive", resources=RES)])
    with pytest.raises(InvariantViolation, match=r"^gcs resources: the view holds \[\('n1', 1\)\]"):
        view.check_invariants([NodeInfo(node_id=N1, incarnation=2, state="alive", resources=RES)])


# --- the raylet's copy ---------------------------------------------------------------


def update(frm: int, to: int, *entries: NodeResources, full: bool = False, epoch: int = 1,
           removed: tuple[NodeId, ...] = ()) -> ResourceViewUpdate:
    return ResourceViewUpdate(epoch=epoch, from_version=frm, to_version=to, full=full,
                              entries=entries, removed=removed)


def test_the_copy_applies_deltas_in_order_and_waits_out_gaps() -> None:
    view = ClusterView()
    assert not view.apply(update(0, 2, row(N1)))  # a delta of an epoch it does not have
    assert view.apply(update(0, 2, row(N1), row(N2), full=True))
    assert not view.apply(update(3, 4, row(N3)))  # a gap
    assert view.apply(update(1, 3, row(N1, 1.0), removed=(N2,)))  # overlapping: fine
    assert not view.apply(update(0, 2, row(N1), full=True))  # an older snapshot
    assert (view.epoch, view.version) == (1, 3)
    assert {n: e.available for n, e in view.entries.items()} == {N1: {"CPU": 10_000}}
    assert view.apply(update(0, 1, row(N3), full=True, epoch=9))  # a new GCS epoch
    assert list(view.entries) == [N3] and (view.epoch, view.version) == (9, 1)


def test_ranking_prefers_the_most_free_relative_to_total_then_the_node_id() -> None:
    view = ClusterView()
    big = NodeResources(node_id=N3, incarnation=1, total={"CPU": 16.0},
                        available={"CPU": 6.0})
    view.apply(update(0, 1, row(N2, 2.0), row(N1, 2.0), big, full=True))
    assert view.ranked_available({"CPU": 20_000}, [N3, N2, N1]) == [N1, N2, N3]  # 6/16 < 2/4
    assert view.ranked_available({"CPU": 30_000}, [N3, N2, N1]) == [N3]
    view.reserve(N1, {"CPU": 10_000})
    assert view.ranked_available({"CPU": 10_000}, [N1, N2, N3]) == [N2, N3, N1]


def test_the_ledger_balances_lends_and_refuses_impossible_moves() -> None:
    ledger = LocalResources({"CPU": 1.5, "GPU": 1.0, "zero": 0.0})
    assert ledger.total == {"CPU": 15_000, "GPU": 10_000}
    ledger.acquire("l1", {"CPU": 10_000, "GPU": 10_000})
    with pytest.raises(ResourceError, match=r"^raylet resources: cannot acquire \{CPU: 1\} "
                                            r"for 'l2': only \{CPU: 0.5, GPU: 0\} available$"):
        ledger.acquire("l2", {"CPU": 10_000})
    assert ledger.lend("l1", "CPU") == 10_000
    ledger.acquire("l2", {"CPU": 15_000})
    ledger.reclaim("l1", "CPU", 10_000)
    assert ledger.available == {"CPU": -10_000, "GPU": 0}
    ledger.check_invariants()
    assert ledger.release("l1") == {"GPU": 10_000, "CPU": 10_000}
    with pytest.raises(ResourceError, match=r"^raylet resources: cannot release 'l1'"):
        ledger.release("l1")
    ledger.release("l2")
    assert ledger.available == ledger.total


def test_fractions_add_up_exactly() -> None:
    ledger = LocalResources({"CPU": 1.0})
    for n in range(10):
        ledger.acquire(f"l{n}", {"CPU": 1_000})  # 0.1 CPU each
    assert ledger.available == {"CPU": 0}
    for n in range(10):
        ledger.release(f"l{n}")
    assert ledger.available == {"CPU": 10_000}


# --- wired: one GCS, two raylets, reports carry the view ----------------------------------


class MiniCluster:
    """A GCS and raylets passing messages instantly, for end-to-end view checks."""

    def __init__(self, *nodes: tuple[NodeId, float]) -> None:
        self.now = T0
        self.gcs = Gcs()
        self.raylets = {n: Raylet(n, RayletConfig(gcs=GCS_ADDR, resources={"CPU": cpus}))
                        for n, cpus in nodes}
        self.outbox: list[Msg] = []
        self.deliver_all(self.gcs.handle(Started(), now=self.now), GCS_ADDR)
        for raylet in self.raylets.values():
            self.deliver_all(raylet.handle(Started(), now=self.now), raylet.address)
        self.outbox.clear()

    def deliver_all(self, effects: list[Msg], src: Address) -> None:
        pending = [(src, e) for e in effects]
        while pending:
            sender, effect = pending.pop(0)
            if not isinstance(effect, Send):
                if not isinstance(effect, (SetTimer, CancelTimer, StorePut)):
                    self.outbox.append(effect)  # host requests: StartWorker, KillWorker
                continue
            if effect.dst == GCS_ADDR:
                out = self.gcs.handle(recv(sender, effect.msg), now=self.now)
                self.gcs.check_invariants()
            elif effect.dst.component == "raylet":
                raylet = self.raylets[effect.dst.node]
                out = raylet.handle(recv(sender, effect.msg), now=self.now)
                raylet.check_invariants()
            else:
                self.outbox.append(effect)
                continue
            pending += [(effect.dst, e) for e in out]

    def tick(self) -> None:
        self.now += seconds(1)
        for raylet in self.raylets.values():
            self.deliver_all(raylet.handle(TimerFired(key=HEARTBEAT_TIMER), now=self.now),
                             raylet.address)


def test_a_busy_node_learns_of_a_free_one_through_its_reports_and_spills_to_it() -> None:
    cluster = MiniCluster((N1, 1.0), (N2, 2.0))
    r1 = cluster.raylets[N1]
    owner = Address(node=N1, component="driver")
    worker = Address(node=N1, component="worker", worker="n1.b1.w1")
    cluster.deliver_all([Send(dst=r1.address, msg=RequestWorkerLease(
        request_id=1, shape={"CPU": 1.0}))], owner)
    assert cluster.outbox == [StartWorker(worker_id=WorkerId("n1.b1.w1"))]
    cluster.deliver_all([Send(dst=r1.address, msg=RegisterWorker(worker_id=WorkerId("n1.b1.w1")))],
                        worker)
    cluster.outbox.clear()
    cluster.deliver_all([Send(dst=r1.address, msg=RequestWorkerLease(
        request_id=2, shape={"CPU": 1.0}))], owner)
    assert cluster.outbox == []  # queued: n1 has not heard of n2's resources yet
    cluster.tick()  # n1 reports (it is busy and has a request to place) and learns of n2
    assert cluster.outbox == [Send(dst=owner, msg=LeaseSpillback(request_id=2, node_id=N2))]
    assert cluster.gcs.resources.row(N1) == NodeResources(
        node_id=N1, incarnation=1, total={"CPU": 1.0}, available={"CPU": 0.0})


def test_idle_raylets_stay_quiet_and_the_view_still_converges() -> None:
    cluster = MiniCluster((N1, 1.0), (N2, 2.0), (N3, 3.0))
    for k in range(1, 11):
        before = cluster.gcs.resources.version
        cluster.tick()
        assert cluster.gcs.resources.version == before  # nothing changes while idle
        seqs = [r.reporter.seq for r in cluster.raylets.values()]
        assert seqs == ([1, 1, 1] if k == 10 else [0, 0, 0])  # one refresh, on the tenth tick
    for raylet in cluster.raylets.values():
        assert (raylet.cluster.epoch, raylet.cluster.version) == (
            cluster.gcs.resources.epoch, cluster.gcs.resources.version)
        assert sorted(raylet.cluster.entries) == [N1, N2, N3]


# --- departed workers ------------------------------------------------------------------


def worker_at(node: NodeId, worker: str) -> Address:
    return Address(node=node, component="worker", worker=worker)


def test_departed_workers_are_passed_on_to_every_raylet_once() -> None:
    gcs = gcs_with(N1, N2)
    gone = ResourceReport(node_id=N1, incarnation=1, seq=1, total=RES, available=RES,
                          view_epoch=EPOCH, view_version=2, departed=(WorkerId("w1"),))
    assert step(gcs, R1, gone) == [Send(dst=R1, msg=ResourceViewUpdate(
        epoch=EPOCH, from_version=2, to_version=3, full=False, entries=(row(N1),),
        departed=(worker_at(N1, "w1"),), ack_seq=1))]
    assert step(gcs, R1, gone) == [Send(dst=R1, msg=ResourceViewUpdate(  # a retransmit
        epoch=EPOCH, from_version=2, to_version=3, full=False, entries=(row(N1),),
        departed=(worker_at(N1, "w1"),), ack_seq=1))]
    assert gcs.resources.version == 3
    assert step(gcs, R2, report(N2, 1, 4.0, epoch=EPOCH, version=3)) == [
        Send(dst=R2, msg=ResourceViewUpdate(
            epoch=EPOCH, from_version=3, to_version=3, full=False, ack_seq=1))]
    assert step(gcs, R2, report(N2, 2, 4.0))[0].msg.departed == (  # type: ignore[attr-defined]
        worker_at(N1, "w1"),)  # a full snapshot carries every departed worker remembered


def test_the_gcs_remembers_only_the_last_departed_workers() -> None:
    gcs = Gcs(GcsConfig(resources=ResourceViewConfig(departed_max=2)))
    gcs.handle(Started(), now=T0)
    gcs.handle(recv(R1, RegisterNode(node_id=N1, boot=1, attempt=1, resources=RES)), now=T0)
    ids = tuple(WorkerId(f"w{n}") for n in range(3))
    effects = step(gcs, R1, ResourceReport(node_id=N1, incarnation=1, seq=1, total=RES,
                                           available=RES, departed=ids))
    assert effects[0].msg.departed == (  # type: ignore[attr-defined]
        worker_at(N1, "w1"), worker_at(N1, "w2"))


def test_a_raylet_reports_its_departed_workers_until_acknowledged() -> None:
    cluster = MiniCluster((N1, 1.0))
    r1 = cluster.raylets[N1]
    owner = Address(node=N1, component="driver")
    cluster.deliver_all([Send(dst=r1.address, msg=RequestWorkerLease(
        request_id=1, shape={"CPU": 1.0}))], owner)
    cluster.deliver_all([Send(dst=r1.address, msg=RegisterWorker(
        worker_id=WorkerId("n1.b1.w1")))], worker_at(N1, "n1.b1.w1"))
    cluster.deliver_all(r1.handle(WorkerExited(worker_id=WorkerId("n1.b1.w1"), cause="oom"),
                                  now=cluster.now), r1.address)
    report = r1.reporter.on_tick(1, r1.leases.ledger, r1.cluster, False,
                                 (r1.leases.pool.departed_total, r1.leases.pool.departed_after(0)))
    assert report is not None and report.departed == ("n1.b1.w1",)
    cluster.tick()  # the real tick: reported and acknowledged
    assert r1.reporter.departed_acked == 1
    assert cluster.gcs.resources._departed == {worker_at(N1, "n1.b1.w1"): 2}
    cluster.tick()
    assert r1.reporter.seq == 2  # quiet again (the probe above took seq 1)


def test_a_lease_owned_by_a_worker_that_died_on_another_node_is_reclaimed() -> None:
    cluster = MiniCluster((N1, 1.0), (N2, 1.0))
    r1, r2 = cluster.raylets[N1], cluster.raylets[N2]
    driver = Address(node=N1, component="driver")
    owner = worker_at(N1, "n1.b1.w1")
    cluster.deliver_all([Send(dst=r1.address, msg=RequestWorkerLease(
        request_id=1, shape={"CPU": 1.0}))], driver)
    cluster.deliver_all([Send(dst=r1.address, msg=RegisterWorker(
        worker_id=WorkerId("n1.b1.w1")))], owner)
    # The worker on n1 owns a nested task's lease on n2.
    cluster.deliver_all([Send(dst=r2.address, msg=RequestWorkerLease(
        request_id=1, shape={"CPU": 1.0}, spilled=True))], owner)
    cluster.deliver_all([Send(dst=r2.address, msg=RegisterWorker(
        worker_id=WorkerId("n2.b1.w1")))], worker_at(N2, "n2.b1.w1"))
    assert r2.leases.lease_ids == ("n2.b1.l1",)
    cluster.outbox.clear()
    cluster.deliver_all(r1.handle(WorkerExited(worker_id=WorkerId("n1.b1.w1"), cause="oom"),
                                  now=cluster.now), r1.address)
    cluster.tick()  # n1 reports the departure; n2 holds a lease, reports, and hears of it
    cluster.tick()
    assert KillWorker(worker_id=WorkerId("n2.b1.w1"),
                      reason="its lease's owner died on another node") in cluster.outbox
    assert r2.quiescence_problems() == []
    # A late duplicate of the dead owner's request is not served again.
    cluster.deliver_all([Send(dst=r2.address, msg=RequestWorkerLease(
        request_id=2, shape={"CPU": 1.0}, spilled=True))], owner)
    assert r2.leases.phase_of(owner, 2) is None
