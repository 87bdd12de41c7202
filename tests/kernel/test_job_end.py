"""A driver that exits ends its job: whole-effect-list tests of the raylet and the GCS.

The raylet reports a local driver's exit to the GCS (until acknowledged) and ends
the leases the driver held; the GCS records the job's end durably, kills the
driver's non-detached actors (owner died) and removes its non-detached placement
groups.
"""

from __future__ import annotations

from typing import Any

import msgspec
from shoal.kernel.gcs import Gcs, gcs_address
from shoal.kernel.gcs.actor_protocol import ActorSpec, RegisterActor
from shoal.kernel.gcs.actor_records import ACTORS_TABLE, ActorPhase, ActorRecord
from shoal.kernel.gcs.job_protocol import DriverExitAck, DriverExitReport
from shoal.kernel.gcs.jobs import JOBS_TABLE, JobRecord, JobTable, JobTableConfig
from shoal.kernel.gcs.placement_group_protocol import (
    CreatePlacementGroup,
    PlacementGroupSpec,
)
from shoal.kernel.gcs.placement_group_records import PGS_TABLE, PgRecord
from shoal.kernel.gcs.protocol import NodeInfo, NodeRegistered, NodeTableUpdate
from shoal.kernel.ids import ActorId, NodeId, WorkerId, seconds
from shoal.kernel.messages import (
    Address,
    CancelTimer,
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
from shoal.kernel.raylet import Raylet, RayletConfig
from shoal.kernel.raylet.membership import HEARTBEAT_TIMER
from shoal.kernel.raylet.protocol import (
    DriverExited,
    KillWorker,
    LeaseGranted,
    RegisterWorker,
    RequestWorkerLease,
    StartWorker,
)
from shoal.kernel.task_spec import TaskSpec

N0, N1 = NodeId("n0"), NodeId("n1")
GCS = gcs_address(N0)
R0 = Address(node=N0, component="raylet")
DRIVER = Address(node=N0, component="driver", worker="p1.aa")
OTHER_DRIVER = Address(node=N0, component="driver", worker="p2.bb")
T0 = seconds(100)


# --- the raylet ----------------------------------------------------------------


def make_raylet() -> Raylet:
    raylet = Raylet(N0, RayletConfig(gcs=GCS, resources={"CPU": 1.0}))
    raylet.handle(Started(), now=T0)
    raylet.handle(Received(src=GCS, msg=NodeRegistered(
        node_id=N0, incarnation=1, boot=1, attempt=1)), now=T0)
    raylet.handle(Received(src=GCS, msg=NodeTableUpdate(from_version=0, to_version=1, full=True, nodes=(
        NodeInfo(node_id=N0, incarnation=1, state="alive", resources={"CPU": 1.0}),))), now=T0)
    return raylet


def step(raylet: Raylet, event: Msg, now: int = T0) -> list[Msg]:
    effects = raylet.handle(event, now=now)  # type: ignore[arg-type]
    raylet.check_invariants()
    return effects


def reports(effects: list[Msg]) -> list[Address]:
    return [e.msg.driver for e in effects
            if isinstance(e, Send) and isinstance(e.msg, DriverExitReport)]


def test_the_raylet_reports_a_driver_exit_and_kills_the_workers_it_leased() -> None:
    raylet = make_raylet()
    worker_id = WorkerId("n0.b1.w1")
    lease_request = Received(src=DRIVER, msg=RequestWorkerLease(request_id=1, shape={"CPU": 1.0}))
    assert StartWorker(worker_id=worker_id) in step(raylet, lease_request)
    grant = step(raylet, Received(src=Address(node=N0, component="worker", worker=worker_id),
                                  msg=RegisterWorker(worker_id=worker_id)))
    assert [e.dst for e in grant if isinstance(e, Send) and isinstance(e.msg, LeaseGranted)] \
        == [DRIVER]
    why = f"its lease's owner, driver {DRIVER}, exited: connection closed"
    assert step(raylet, DriverExited(driver=DRIVER, cause="connection closed")) == [
        Send(dst=GCS, msg=DriverExitReport(driver=DRIVER, cause="connection closed")),
        KillWorker(worker_id=worker_id, reason=why),
    ]
    assert raylet.leases.granted() == []
    assert raylet.quiescence_problems() == []
    late = Received(src=DRIVER, msg=RequestWorkerLease(request_id=2, shape={"CPU": 1.0}))
    assert step(raylet, late) == []  # sent before the exit, delivered after: ignored
    assert raylet.quiescence_problems() == []


def test_the_report_is_retransmitted_on_heartbeats_until_the_gcs_acknowledges_it() -> None:
    raylet = make_raylet()
    assert step(raylet, DriverExited(driver=DRIVER, cause="gone")) == [
        Send(dst=GCS, msg=DriverExitReport(driver=DRIVER, cause="gone"))]
    assert step(raylet, DriverExited(driver=OTHER_DRIVER, cause="gone")) == [
        Send(dst=GCS, msg=DriverExitReport(driver=OTHER_DRIVER, cause="gone"))]
    beat = step(raylet, TimerFired(key=HEARTBEAT_TIMER), T0 + seconds(1))
    assert reports(beat) == [DRIVER, OTHER_DRIVER]
    assert step(raylet, Received(src=GCS, msg=DriverExitAck(driver=DRIVER))) == []
    assert step(raylet, Received(src=GCS, msg=DriverExitAck(driver=DRIVER))) == []  # duplicate
    assert reports(step(raylet, TimerFired(key=HEARTBEAT_TIMER), T0 + seconds(2))) \
        == [OTHER_DRIVER]
    assert raylet.drivers.pending == (OTHER_DRIVER,)


def test_the_raylet_ignores_exits_that_are_not_its_own_drivers() -> None:
    raylet = make_raylet()
    remote = Address(node=N1, component="driver", worker="p1")
    worker = Address(node=N0, component="worker", worker="w1")
    assert step(raylet, DriverExited(driver=remote, cause="x")) == []
    assert step(raylet, DriverExited(driver=worker, cause="x")) == []
    assert raylet.drivers.pending == ()
    stranger = Address(node=N1, component="raylet")
    [refusal] = step(raylet, Received(src=stranger, msg=DriverExitAck(driver=DRIVER)))
    assert isinstance(refusal, Send) and isinstance(refusal.msg, Rejected)


# --- the GCS -----------------------------------------------------------------------


def actor_spec(actor_id: str, *, owner: Address = DRIVER, detached: bool = False) -> ActorSpec:
    creation = TaskSpec(task_id=f"t.{actor_id}", job_id="j", name="C.__init__", owner=owner,
                        function_id="cls", args=(), resources={})
    return ActorSpec(actor_id=ActorId(actor_id), creation=creation, class_name="C",
                     placement={}, detached=detached)


def register_actor(gcs: Gcs, actor_id: str, **kw: Any) -> None:
    spec = actor_spec(actor_id, **kw)
    gcs.handle(Received(src=spec.creation.owner, msg=RegisterActor(
        request_id=1, spec=spec, function=b"")), now=0)


def create_group(gcs: Gcs, pg_id: str, *, creator: Address = DRIVER,
                 detached: bool = False) -> list[Msg]:
    return gcs.handle(Received(src=creator, msg=CreatePlacementGroup(
        request_id=2, spec=PlacementGroupSpec(pg_id=pg_id, bundles=({"CPU": 1.0},),
                                              detached=detached, creator=creator))), now=0)


def plain(effects: list[Msg]) -> list[Any]:
    """Durable writes shown as (table, key, state) for reading; other effects by type."""
    out: list[Any] = []
    for effect in effects:
        if isinstance(effect, StorePut) and effect.table == ACTORS_TABLE:
            out.append(("actor", effect.key.decode(),
                        msgspec.msgpack.decode(effect.value, type=ActorRecord).phase))
        elif isinstance(effect, StorePut) and effect.table == PGS_TABLE:
            out.append(("group", effect.key.decode(),
                        msgspec.msgpack.decode(effect.value, type=PgRecord).state))
        elif isinstance(effect, StorePut) and effect.table == JOBS_TABLE:
            record = msgspec.msgpack.decode(effect.value, type=JobRecord)
            out.append(("job", effect.key.decode(), record.cause, record.finished_ns))
        elif isinstance(effect, Send):
            out.append((type(effect.msg).__name__, effect.dst))
        else:
            out.append(effect)
    return out


def report(gcs: Gcs, driver: Address = DRIVER, src: Address = R0, now: int = 5) -> list[Msg]:
    effects = gcs.handle(Received(src=src, msg=DriverExitReport(driver=driver, cause="gone")),
                         now=now)
    gcs.check_invariants()
    return effects


def test_a_driver_exit_kills_its_actors_and_removes_its_groups_then_acks() -> None:
    gcs = Gcs()
    register_actor(gcs, "a1")
    register_actor(gcs, "a2", detached=True)
    register_actor(gcs, "a3", owner=OTHER_DRIVER)
    create_group(gcs, "g1")
    create_group(gcs, "g2", detached=True)
    create_group(gcs, "g3", creator=OTHER_DRIVER)
    assert plain(report(gcs)) == [
        ("job", "n0/driver/p1.aa", "gone", 5),
        ("actor", "a1", "DEAD"),
        ("ActorTableUpdate", DRIVER),  # the owner subscribed at registration
        CancelTimer(key="gcs.pg.retry.g1"),
        ("group", "g1", "REMOVED"),
        ("DriverExitAck", R0),  # last: once the job's end is written down
    ]
    row = gcs.actors.row(ActorId("a1"))
    assert row is not None and row.death is not None and row.death.kind == "owner_died"
    assert "its driver n0/driver/p1.aa exited" in row.death.message
    phases = [gcs.actors.row(ActorId(a)).phase for a in ("a2", "a3")]  # type: ignore[union-attr]
    assert phases == [ActorPhase.PENDING, ActorPhase.PENDING]
    states = [gcs.placement_groups.row(g).state.value for g in ("g1", "g2", "g3")]  # type: ignore[union-attr]
    assert states == ["REMOVED", "PENDING", "PENDING"]
    assert report(gcs, now=9) == [Send(dst=R0, msg=DriverExitAck(driver=DRIVER))]  # retransmit


def test_reports_that_do_not_add_up_are_rejected() -> None:
    gcs = Gcs()
    register_actor(gcs, "a1")
    remote_raylet = Address(node=N1, component="raylet")
    worker = Address(node=N0, component="worker", worker="w1")
    for src, driver, why in ((remote_raylet, DRIVER, "not on the reporting raylet's node"),
                             (worker, DRIVER, "only a raylet reports"),
                             (R0, worker, "is a worker, not a driver")):
        [refusal] = report(gcs, driver=driver, src=src)
        assert isinstance(refusal, Send) and refusal.dst == src
        assert isinstance(refusal.msg, Rejected) and why in refusal.msg.reason
    assert gcs.jobs.finished == ()
    assert gcs.actors.row(ActorId("a1")).phase is ActorPhase.PENDING  # type: ignore[union-attr]


def test_a_restarted_gcs_remembers_ended_jobs_and_late_creations_die_at_once() -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    for effect in report(Gcs()):
        if isinstance(effect, StorePut):
            store.setdefault(effect.table, {})[effect.key] = effect.value
    again = Gcs(recovered=store)
    assert [j.driver for j in again.jobs.finished] == [DRIVER]
    register_actor(again, "late")  # its registration trailed its driver's exit
    assert again.actors.row(ActorId("late")).phase is ActorPhase.DEAD  # type: ignore[union-attr]
    assert ("group", "g9", "REMOVED") in plain(create_group(again, "g9"))
    again.check_invariants()


def test_the_job_table_forgets_the_oldest_ended_jobs_beyond_its_bound() -> None:
    table = JobTable(JobTableConfig(finished_max=1))
    first, ended = table.record_exit(R0, DriverExitReport(driver=DRIVER, cause="a"), 1)
    assert ended and plain(first) == [("job", "n0/driver/p1.aa", "a", 1), ("DriverExitAck", R0)]
    second, ended = table.record_exit(R0, DriverExitReport(driver=OTHER_DRIVER, cause="b"), 2)
    assert ended and plain(second) == [("job", "n0/driver/p2.bb", "b", 2),
                                       StoreDelete(table=JOBS_TABLE, key=b"n0/driver/p1.aa"),
                                       ("DriverExitAck", R0)]
    assert not table.driver_exited(DRIVER) and table.driver_exited(OTHER_DRIVER)
    table.check_invariants()


def test_no_timer_is_left_behind_by_a_job_end() -> None:
    gcs = Gcs()
    create_group(gcs, "g1")
    effects = report(gcs)
    assert not [e for e in effects if isinstance(e, SetTimer)]
