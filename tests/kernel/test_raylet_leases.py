"""Example tests of the raylet's lease manager: whole effect lists, input by input."""

from __future__ import annotations

from random import Random

import pytest
from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.gcs import gcs_address
from shoal.kernel.gcs.protocol import (
    Heartbeat,
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    RegisterNode,
)
from shoal.kernel.gcs.resource_protocol import (
    NodeResources,
    ResourceReport,
    ResourceViewUpdate,
)
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
    TimerFired,
)
from shoal.kernel.raylet import Raylet, RayletConfig
from shoal.kernel.raylet.leases import LeaseConfig, RequestPhase
from shoal.kernel.raylet.membership import HEARTBEAT_TIMER, REGISTER_TIMER
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    KillWorker,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
    StartWorker,
    WorkerBlocked,
    WorkerExited,
    WorkerUnblocked,
)
from shoal.kernel.raylet.workers import IDLE_SWEEP_TIMER, WorkerPhase, WorkerPoolConfig
from shoal.kernel.task_spec import NodeAffinity

N1, N2, N3, N4 = NodeId("n1"), NodeId("n2"), NodeId("n3"), NodeId("n4")
GCS = gcs_address(NodeId("head"))
OWNER = Address(node=N2, component="driver")  # a remote owner
T0 = seconds(100)
REGISTER_TIMEOUT = seconds(30)  # WorkerPoolConfig's default
CPU1 = {"CPU": 1.0}


# --- helpers -------------------------------------------------------------------


def info(node: NodeId, incarnation: int = 1, state: str = "alive",
         resources: dict[str, float] | None = None) -> NodeInfo:
    return NodeInfo(node_id=node, incarnation=incarnation, state=state,  # type: ignore[arg-type]
                    resources=resources if resources is not None else {"CPU": 4.0})


def table(version: int, *nodes: NodeInfo) -> Received:
    return Received(src=GCS, msg=NodeTableUpdate(
        from_version=0, to_version=version, full=True, nodes=nodes))


def view(version: int, *rows: tuple[NodeId, dict[str, float], dict[str, float]]) -> Received:
    entries = tuple(NodeResources(node_id=n, incarnation=1, total=t, available=a)
                    for n, t, a in rows)
    return Received(src=GCS, msg=ResourceViewUpdate(
        epoch=1, from_version=0, to_version=version, full=True, entries=entries))


def make_raylet(resources: dict[str, float] | None = None, *, seed: int = 0,
                nodes: tuple[NodeInfo, ...] = (), leases: LeaseConfig | None = None,
                workers: WorkerPoolConfig | None = None) -> Raylet:
    config = RayletConfig(
        gcs=GCS, resources=resources if resources is not None else {"CPU": 1.0},
        leases=leases or LeaseConfig(), workers=workers or WorkerPoolConfig())
    raylet = Raylet(N1, config, seed=seed)
    raylet.handle(Started(), now=T0)
    raylet.handle(Received(src=GCS, msg=NodeRegistered(
        node_id=N1, incarnation=1, boot=1, attempt=1)), now=T0)
    raylet.handle(table(1, info(N1, resources=config.resources), info(N2), *nodes), now=T0)
    raylet.check_invariants()
    return raylet


def step(raylet: Raylet, event: Msg, now: int = T0) -> list[Msg]:
    effects = raylet.handle(event, now=now)  # type: ignore[arg-type]
    raylet.check_invariants()
    return effects


def wid(n: int) -> WorkerId:
    return WorkerId(f"n1.b1.w{n}")


def worker(n: int) -> Address:
    return Address(node=N1, component="worker", worker=wid(n))


def request(request_id: int, shape: dict[str, float] | None = None, *, owner: Address = OWNER,
            affinity: NodeAffinity | None = None, spilled: bool = False) -> Received:
    return Received(src=owner, msg=RequestWorkerLease(
        request_id=request_id, shape=CPU1 if shape is None else shape, affinity=affinity,
        spilled=spilled))


def register(n: int) -> Received:
    return Received(src=worker(n), msg=RegisterWorker(worker_id=wid(n)))


def give_back(lease: int, owner: Address = OWNER, failed: bool = False) -> Received:
    return Received(src=owner, msg=ReturnWorker(lease_id=f"n1.b1.l{lease}", worker_failed=failed))


def start(n: int, now: int = T0) -> list[Msg]:
    return [StartWorker(worker_id=wid(n)),
            SetTimer(key=f"raylet.worker_start:{wid(n)}", at_ns=now + REGISTER_TIMEOUT)]


def up(n: int) -> CancelTimer:
    return CancelTimer(key=f"raylet.worker_start:{wid(n)}")


def granted(request_id: int, lease: int, n: int, owner: Address = OWNER) -> Send:
    return Send(dst=owner, msg=LeaseGranted(
        request_id=request_id, lease_id=f"n1.b1.l{lease}", worker=worker(n), node_id=N1))


def ack(lease: int, owner: Address = OWNER) -> Send:
    return Send(dst=owner, msg=ReturnWorkerAck(lease_id=f"n1.b1.l{lease}"))


def spill(request_id: int, node: NodeId, owner: Address = OWNER) -> Send:
    return Send(dst=owner, msg=LeaseSpillback(request_id=request_id, node_id=node))


def rejected(request_id: int, why: str, owner: Address = OWNER) -> Send:
    return Send(dst=owner, msg=LeaseRejected(request_id=request_id, reason=(
        f"raylet 'n1' refused lease request {request_id} of {owner}: {why}")))


def leased(raylet: Raylet, request_id: int = 1, n: int = 1, lease: int = 1,
           shape: dict[str, float] | None = None, owner: Address = OWNER) -> None:
    """Drives a request to a grant on a freshly started worker ``n``."""
    assert step(raylet, request(request_id, shape, owner=owner)) == start(n)
    assert step(raylet, register(n)) == [up(n), granted(request_id, lease, n, owner)]


def available(raylet: Raylet) -> dict[str, float]:
    return {k: v / 10_000 for k, v in raylet.leases.ledger.available.items()}


# --- grant, reuse, return ---------------------------------------------------------


def test_a_fitting_request_starts_a_worker_and_is_granted_when_it_registers() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1)) == start(1)
    assert raylet.leases.phase_of(OWNER, 1) is RequestPhase.WAITING
    assert available(raylet) == {"CPU": 0.0}  # held while the worker starts
    assert step(raylet, register(1)) == [up(1), granted(1, 1, 1)]
    assert raylet.leases.phase_of(OWNER, 1) is RequestPhase.GRANTED


def test_return_is_acked_frees_the_resources_and_the_idle_worker_is_reused() -> None:
    raylet = make_raylet()
    leased(raylet)
    assert step(raylet, give_back(1)) == [ack(1)]
    assert available(raylet) == {"CPU": 1.0}
    assert raylet.quiescence_problems() == []
    assert step(raylet, give_back(1)) == [ack(1)]  # a retransmit: acked again
    assert step(raylet, give_back(99)) == [ack(99)]  # unknown: nothing to return
    assert step(raylet, request(2)) == [granted(2, 2, 1)]  # the idle worker, at once


def test_a_return_from_someone_else_is_rejected() -> None:
    raylet = make_raylet()
    leased(raylet)
    thief = Address(node=N3, component="driver")
    assert step(raylet, give_back(1, owner=thief)) == [Send(dst=thief, msg=Rejected(
        request_type="ReturnWorker",
        reason="raylet 'n1': lease 'n1.b1.l1' is held by n2/driver, not n3/driver; "
               "only its owner may return it"))]


def test_a_worker_returned_as_failed_is_killed() -> None:
    raylet = make_raylet()
    leased(raylet)
    assert step(raylet, give_back(1, failed=True)) == [
        ack(1), KillWorker(worker_id=wid(1), reason="its owner returned it as failed")]
    assert available(raylet) == {"CPU": 1.0}
    assert step(raylet, Received(src=OWNER, msg=WorkerExited(
        worker_id=wid(1), cause="killed"))) == [Send(dst=OWNER, msg=Rejected(
            request_type="WorkerExited",
            reason="raylet 'n1': does not serve WorkerExited messages; send it to the "
                   "component that owns it"))]
    assert step(raylet, WorkerExited(worker_id=wid(1), cause="killed")) == []  # stale


# --- queueing --------------------------------------------------------------------


def test_a_request_that_fits_the_total_queues_and_is_granted_fifo_as_resources_free() -> None:
    raylet = make_raylet()
    leased(raylet)
    assert step(raylet, request(2)) == []
    assert step(raylet, request(3)) == []
    assert raylet.leases.phase_of(OWNER, 2) is RequestPhase.QUEUED
    assert step(raylet, give_back(1)) == [ack(1), granted(2, 2, 1)]
    assert step(raylet, give_back(2)) == [ack(2), granted(3, 3, 1)]


def test_a_small_request_is_not_held_up_by_a_big_one_that_does_not_fit_yet() -> None:
    raylet = make_raylet({"CPU": 2.0})
    leased(raylet)
    assert step(raylet, request(2, {"CPU": 2.0})) == []  # waits for both CPUs
    assert step(raylet, request(3)) == start(2)
    assert step(raylet, register(2)) == [up(2), granted(3, 2, 2)]


def test_a_full_queue_rejects_with_a_reason() -> None:
    raylet = make_raylet(leases=LeaseConfig(lease_queue_max=1))
    leased(raylet)
    assert step(raylet, request(2)) == []
    assert step(raylet, request(3)) == [rejected(
        3, "its queue is full (1 pending requests); retry later, or raise lease_queue_max")]


def test_cancel_withdraws_a_queued_request_and_its_retransmit_is_ignored() -> None:
    raylet = make_raylet()
    leased(raylet)
    step(raylet, request(2))
    assert step(raylet, Received(src=OWNER, msg=CancelLeaseRequest(request_id=2))) == []
    assert raylet.leases.phase_of(OWNER, 2) is None
    assert step(raylet, request(2)) == []  # a late retransmit
    assert step(raylet, give_back(1)) == [ack(1)]
    assert raylet.quiescence_problems() == []


def test_cancel_of_a_granted_request_takes_the_worker_back() -> None:
    raylet = make_raylet()
    leased(raylet)
    assert step(raylet, Received(src=OWNER, msg=CancelLeaseRequest(request_id=1))) == []
    assert raylet.quiescence_problems() == []
    assert step(raylet, give_back(1)) == [ack(1)]


# --- duplicates ------------------------------------------------------------------


def test_duplicates_of_queued_granted_and_finished_requests() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1)) == start(1)
    assert step(raylet, request(1)) == []  # waiting for its worker: nothing yet
    step(raylet, register(1))
    assert step(raylet, request(1)) == [granted(1, 1, 1)]  # the same grant again
    step(raylet, give_back(1))
    assert step(raylet, request(1)) == []  # finished: ignored
    other = Address(node=N2, component="worker", worker="w9")
    assert step(raylet, request(1, owner=other)) == [granted(1, 2, 1, owner=other)]


# --- spillback -----------------------------------------------------------------------


def test_a_request_that_does_not_fit_now_spills_to_the_node_with_most_free_capacity() -> None:
    raylet = make_raylet(nodes=(info(N3),))
    assert step(raylet, view(2, (N2, {"CPU": 4.0}, {"CPU": 2.0}),
                             (N3, {"CPU": 4.0}, {"CPU": 3.0}))) == []
    leased(raylet)
    assert step(raylet, request(2)) == [spill(2, N3)]
    # The spill reserved one of N3's CPUs in the copy: now N2 and N3 tie, and N2 wins.
    assert step(raylet, request(3)) == [spill(3, N2)]
    assert step(raylet, request(4, {"CPU": 3.0})) == [spill(4, N3)]  # no room: most free total


def test_spillback_ties_break_by_node_id() -> None:
    raylet = make_raylet(nodes=(info(N3),))
    step(raylet, view(2, (N3, {"CPU": 4.0}, {"CPU": 4.0}), (N2, {"CPU": 4.0}, {"CPU": 4.0})))
    leased(raylet)
    assert step(raylet, request(2)) == [spill(2, N2)]


def test_spillback_ignores_nodes_dead_in_the_node_table() -> None:
    raylet = make_raylet(nodes=(info(N3, state="dead"),))
    step(raylet, view(2, (N2, {"CPU": 4.0}, {"CPU": 0.0}), (N3, {"CPU": 4.0}, {"CPU": 4.0})))
    leased(raylet)
    assert step(raylet, request(2)) == []  # queued here: it fits this node's total
    assert raylet.leases.phase_of(OWNER, 2) is RequestPhase.QUEUED


def test_a_spilled_request_queues_here_rather_than_spilling_again() -> None:
    raylet = make_raylet()
    step(raylet, view(2, (N2, {"CPU": 4.0}, {"CPU": 4.0})))
    leased(raylet)
    assert step(raylet, request(2, spilled=True)) == []
    assert raylet.leases.phase_of(OWNER, 2) is RequestPhase.QUEUED


def test_a_queued_request_spills_when_the_view_shows_room_elsewhere() -> None:
    raylet = make_raylet()
    leased(raylet)
    assert step(raylet, request(2)) == []
    assert step(raylet, view(2, (N2, {"CPU": 4.0}, {"CPU": 2.0}))) == [spill(2, N2)]
    assert raylet.leases.phase_of(OWNER, 2) is None


def test_a_shape_too_big_for_this_node_spills_to_a_node_whose_total_fits() -> None:
    raylet = make_raylet(nodes=(info(N3, resources={"CPU": 8.0}),))
    assert step(raylet, request(1, {"CPU": 6.0}, spilled=True)) == [spill(1, N3)]


def test_top_k_spillback_picks_at_random_from_the_seeded_rng() -> None:
    picks = set()
    for seed in range(8):
        raylet = make_raylet(seed=seed, nodes=(info(N3), info(N4)),
                             leases=LeaseConfig(spillback_top_k=3))
        step(raylet, view(2, *((n, {"CPU": 4.0}, {"CPU": 4.0}) for n in (N2, N3, N4))))
        leased(raylet)
        effects = step(raylet, request(2))
        again = make_raylet(seed=seed, nodes=(info(N3), info(N4)),
                            leases=LeaseConfig(spillback_top_k=3))
        step(again, view(2, *((n, {"CPU": 4.0}, {"CPU": 4.0}) for n in (N2, N3, N4))))
        leased(again)
        assert step(again, request(2)) == effects, f"seed {seed}: not deterministic"
        picks.add(Random(seed).randrange(3))
        assert effects == [spill(2, [N2, N3, N4][Random(seed).randrange(3)])]
    assert len(picks) > 1


# --- infeasible --------------------------------------------------------------------


def test_an_infeasible_request_is_kept_and_spills_when_a_node_that_fits_joins() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1, {"GPU": 1.0})) == []
    assert raylet.leases.phase_of(OWNER, 1) is RequestPhase.INFEASIBLE
    assert raylet.quiescence_problems() == ["request 1 of n2/driver is still infeasible"]
    gpu = info(N3, resources={"CPU": 4.0, "GPU": 2.0})
    assert step(raylet, Received(src=GCS, msg=NodeTableUpdate(
        from_version=1, to_version=2, full=False, nodes=(gpu,)))) == [spill(1, N3)]
    assert raylet.quiescence_problems() == []


def test_an_infeasible_request_reports_each_tick_for_a_fresher_view() -> None:
    raylet = make_raylet()
    step(raylet, request(1, {"GPU": 1.0}))
    effects = step(raylet, TimerFired(key=HEARTBEAT_TIMER), T0 + seconds(1))
    assert effects[-1] == Send(dst=GCS, msg=ResourceReport(
        node_id=N1, incarnation=1, seq=1, total={"CPU": 1.0}, available={"CPU": 1.0},
        view_epoch=0, view_version=0))


# --- affinity ------------------------------------------------------------------------


def test_hard_affinity_to_a_live_node_spills_to_it() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1, affinity=NodeAffinity(node_id=N2))) == [spill(1, N2)]


@pytest.mark.parametrize(("nodes", "state"), [
    ((info(N3, state="dead"),), "dead"),
    ((), "not in the cluster"),
])
def test_hard_affinity_to_a_dead_or_unknown_node_is_rejected_naming_it(
        nodes: tuple[NodeInfo, ...], state: str) -> None:
    raylet = make_raylet(nodes=nodes)
    assert step(raylet, request(1, affinity=NodeAffinity(node_id=N3))) == [rejected(
        1, f"it has hard affinity to node 'n3', which is {state}; make the affinity soft "
           "to let it run elsewhere")]


def test_soft_affinity_to_a_dead_node_is_ignored() -> None:
    raylet = make_raylet(nodes=(info(N3, state="dead"),))
    assert step(raylet, request(1, affinity=NodeAffinity(node_id=N3, soft=True))) == start(1)


def test_soft_affinity_to_a_live_node_that_fits_spills_to_it() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1, affinity=NodeAffinity(node_id=N2, soft=True))) == [
        spill(1, N2)]


def test_affinity_to_this_node_queues_here_even_when_others_are_free() -> None:
    raylet = make_raylet()
    step(raylet, view(2, (N2, {"CPU": 4.0}, {"CPU": 4.0})))
    leased(raylet)
    assert step(raylet, request(2, affinity=NodeAffinity(node_id=N1))) == []
    assert step(raylet, view(3, (N2, {"CPU": 4.0}, {"CPU": 4.0}))) == []  # not re-spilled
    assert raylet.leases.phase_of(OWNER, 2) is RequestPhase.QUEUED


def test_hard_affinity_to_this_node_that_can_never_fit_is_rejected() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1, {"CPU": 2.0}, affinity=NodeAffinity(node_id=N1))) == [
        rejected(1, "it has hard affinity to this node, whose total {CPU: 1} can never hold "
                    "{CPU: 2}; ask for less, or make the affinity soft")]


# --- bad peers -----------------------------------------------------------------------


def test_a_malformed_shape_is_rejected() -> None:
    raylet = make_raylet()
    assert step(raylet, request(1, {"CPU": -1.0})) == [rejected(
        1, "its shape {'CPU': -1.0} is malformed: resource 'CPU' has amount -1.0; "
           "expected 0 <= amount <= 2**40")]
    assert step(raylet, request(2, {"CPU": float("nan")})) == [rejected(
        2, "its shape {'CPU': nan} is malformed: resource 'CPU' has amount nan; "
           "expected 0 <= amount <= 2**40")]


def test_only_core_workers_may_lease() -> None:
    raylet = make_raylet()
    peer = Address(node=N2, component="raylet")
    assert step(raylet, request(1, owner=peer)) == [rejected(
        1, "only core workers may lease workers, not the raylet at n2/raylet", owner=peer)]


def test_a_request_from_a_node_known_dead_is_ignored() -> None:
    raylet = make_raylet(nodes=(info(N3, state="dead"),))
    ghost = Address(node=N3, component="driver")
    assert step(raylet, request(1, owner=ghost)) == []
    assert raylet.leases.phase_of(ghost, 1) is None


def test_worker_messages_must_come_from_that_worker() -> None:
    raylet = make_raylet()
    imposter = worker(2)
    assert step(raylet, Received(src=imposter, msg=RegisterWorker(worker_id=wid(1)))) == [
        Send(dst=imposter, msg=Rejected(request_type="RegisterWorker", reason=(
            "raylet 'n1': a message about worker 'n1.b1.w1' must come from that worker on "
            "this node, not from n1/worker/n1.b1.w2")))]
    assert step(raylet, register(7)) == [Send(dst=worker(7), msg=Rejected(
        request_type="RegisterWorker", reason=(
            "raylet 'n1': worker 'n1.b1.w7' was not started by this raylet process, or was "
            "given up on (it registered too late); the process should exit")))]


# --- worker death and owner death ------------------------------------------------------


def test_a_leased_worker_that_exits_frees_its_lease_and_tells_the_owner() -> None:
    raylet = make_raylet()
    leased(raylet)
    step(raylet, request(2))  # queued behind it
    assert step(raylet, WorkerExited(worker_id=wid(1), cause="segfault", exit_code=139)) == [
        Send(dst=OWNER, msg=LeasedWorkerDied(
            lease_id="n1.b1.l1", worker=worker(1),
            cause="worker 'n1.b1.w1' exited: segfault (exit code 139)")),
        *start(2),  # the queued request takes the freed CPU
    ]
    assert step(raylet, register(2)) == [up(2), granted(2, 2, 2)]
    assert step(raylet, give_back(1)) == [ack(1)]  # the owner's late return


def test_a_dead_owner_worker_takes_its_leases_down_with_it() -> None:
    raylet = make_raylet({"CPU": 3.0})
    leased(raylet)  # OWNER leases w1
    leased(raylet, request_id=5, n=2, lease=2, owner=worker(1))  # w1 leases w2
    leased(raylet, request_id=1, n=3, lease=3, owner=worker(2))  # w2 leases w3
    step(raylet, request(6, owner=worker(1)))  # and w1 has a request queued
    assert step(raylet, WorkerExited(worker_id=wid(1), cause="oom")) == [
        Send(dst=OWNER, msg=LeasedWorkerDied(
            lease_id="n1.b1.l1", worker=worker(1), cause="worker 'n1.b1.w1' exited: oom "
                                                         "(exit code 0)")),
        KillWorker(worker_id=wid(2), reason="its lease's owner, worker 'n1.b1.w1', died"),
        KillWorker(worker_id=wid(3), reason="its lease's owner, worker 'n1.b1.w2', died"),
    ]
    assert raylet.quiescence_problems() == []
    assert raylet.leases.phase_of(worker(1), 6) is None


def test_leases_owned_from_a_node_that_died_are_reclaimed() -> None:
    raylet = make_raylet({"CPU": 2.0})
    leased(raylet)
    step(raylet, request(2, {"CPU": 2.0}))  # queued
    assert step(raylet, Received(src=GCS, msg=NodeTableUpdate(
        from_version=1, to_version=2, full=False, nodes=(info(N2, state="dead"),)))) == [
        KillWorker(worker_id=wid(1), reason="its lease's owner died on another node")]
    assert raylet.quiescence_problems() == []


def test_leases_owned_from_a_node_that_rejoined_are_reclaimed() -> None:
    raylet = make_raylet()
    leased(raylet)
    assert step(raylet, Received(src=GCS, msg=NodeTableUpdate(
        from_version=1, to_version=2, full=False, nodes=(info(N2, incarnation=2),)))) == [
        KillWorker(worker_id=wid(1), reason="its lease's owner died on another node")]


# --- blocked workers -------------------------------------------------------------------


def test_a_blocked_worker_lends_its_cpu_and_takes_it_back_when_unblocked() -> None:
    raylet = make_raylet()
    leased(raylet)
    step(raylet, request(2))  # a nested task, queued on the full node
    blocked = Received(src=worker(1), msg=WorkerBlocked(worker_id=wid(1)))
    assert step(raylet, blocked) == start(2)  # one extra worker for the blocked one
    assert step(raylet, blocked) == []  # duplicate
    assert step(raylet, register(2)) == [up(2), granted(2, 2, 2)]
    assert available(raylet) == {"CPU": 0.0}
    unblocked = Received(src=worker(1), msg=WorkerUnblocked(worker_id=wid(1)))
    assert step(raylet, unblocked) == []
    assert available(raylet) == {"CPU": -1.0}  # oversubscribed for a while
    assert step(raylet, unblocked) == []
    step(raylet, give_back(2))
    step(raylet, give_back(1))
    assert available(raylet) == {"CPU": 1.0}


def test_a_blocked_worker_returned_or_dead_gives_back_only_what_it_holds() -> None:
    raylet = make_raylet({"CPU": 1.0, "GPU": 1.0})
    leased(raylet, shape={"CPU": 1.0, "GPU": 1.0})
    step(raylet, Received(src=worker(1), msg=WorkerBlocked(worker_id=wid(1))))
    assert available(raylet) == {"CPU": 1.0, "GPU": 0.0}
    step(raylet, WorkerExited(worker_id=wid(1), cause="crash"))
    assert available(raylet) == {"CPU": 1.0, "GPU": 1.0}


def test_block_from_an_idle_worker_is_a_no_op() -> None:
    raylet = make_raylet()
    leased(raylet)
    step(raylet, give_back(1))
    assert step(raylet, Received(src=worker(1), msg=WorkerBlocked(worker_id=wid(1)))) == []
    assert raylet.leases.pool.limit == 1


# --- fate sharing --------------------------------------------------------------------------


def test_declared_dead_kills_every_worker_and_ends_every_lease_but_keeps_requests() -> None:
    raylet = make_raylet({"CPU": 2.0})
    leased(raylet)
    assert step(raylet, request(2)) == start(2)  # waiting for w2
    step(raylet, request(3, {"CPU": 2.0}))  # queued
    now = T0 + seconds(6)
    cause = ("node 'n1' was declared dead (incarnation 1); its raylet killed its workers "
             "to rejoin the cluster")
    assert step(raylet, Received(src=GCS, msg=NodeDeclaredDead(
        node_id=N1, incarnation=1, cause="missed heartbeats")), now) == [
        CancelTimer(key=HEARTBEAT_TIMER),
        Send(dst=GCS, msg=RegisterNode(node_id=N1, boot=1, attempt=2,
                                       resources={"CPU": 2.0})),
        SetTimer(key=REGISTER_TIMER, at_ns=now + seconds(1)),
        KillWorker(worker_id=wid(1), reason=cause),
        KillWorker(worker_id=wid(2), reason=cause),
        up(2),
        Send(dst=OWNER, msg=LeasedWorkerDied(lease_id="n1.b1.l1", worker=worker(1), cause=cause)),
        *start(3, now),  # request 2 waits for a worker again
    ]
    assert raylet.leases.phase_of(OWNER, 2) is RequestPhase.WAITING
    assert raylet.leases.phase_of(OWNER, 3) is RequestPhase.QUEUED
    assert step(raylet, register(2)) == [Send(dst=worker(2), msg=Rejected(
        request_type="RegisterWorker", reason=(
            "raylet 'n1': worker 'n1.b1.w2' was not started by this raylet process, or was "
            "given up on (it registered too late); the process should exit")))]


# --- worker pool timers ----------------------------------------------------------------------


def test_a_worker_that_never_registers_is_killed_and_replaced() -> None:
    raylet = make_raylet()
    step(raylet, request(1))
    now = T0 + REGISTER_TIMEOUT
    assert step(raylet, TimerFired(key=f"raylet.worker_start:{wid(1)}"), now) == [
        KillWorker(worker_id=wid(1), reason="the worker did not register within 30s"),
        *start(2, now),
    ]
    assert step(raylet, TimerFired(key=f"raylet.worker_start:{wid(1)}"), now) == []  # stale
    assert step(raylet, register(2), now) == [up(2), granted(1, 1, 2)]


def test_a_starting_worker_that_exits_is_replaced() -> None:
    raylet = make_raylet()
    step(raylet, request(1))
    assert step(raylet, WorkerExited(worker_id=wid(1), cause="bad env", exit_code=1)) == [
        up(1), *start(2)]


def test_idle_workers_are_kept_unless_an_idle_timeout_is_configured() -> None:
    raylet = make_raylet()
    leased(raylet)
    step(raylet, request(2))
    step(raylet, Received(src=worker(1), msg=WorkerBlocked(worker_id=wid(1))))
    step(raylet, register(2))
    assert step(raylet, give_back(2)) == [ack(2)]  # two workers, soft limit one: kept


def test_idle_workers_above_the_soft_limit_are_killed_after_the_idle_timeout() -> None:
    raylet = make_raylet(workers=WorkerPoolConfig(idle_timeout_ns=seconds(1)))
    leased(raylet)
    step(raylet, request(2))
    step(raylet, Received(src=worker(1), msg=WorkerBlocked(worker_id=wid(1))))
    step(raylet, register(2))
    later = T0 + seconds(5)
    assert step(raylet, give_back(2), later) == [
        ack(2), SetTimer(key=IDLE_SWEEP_TIMER, at_ns=later + seconds(1))]
    assert step(raylet, TimerFired(key=IDLE_SWEEP_TIMER), later + seconds(1)) == [
        KillWorker(worker_id=wid(2),
                   reason="idle for 1s with 2 workers, above the soft limit of 1")]
    step(raylet, give_back(1))
    assert raylet.quiescence_problems() == []


# --- resource reports ------------------------------------------------------------------------


def test_reports_go_beside_the_heartbeat_only_when_the_gcs_is_out_of_date() -> None:
    raylet = make_raylet()
    beat = Send(dst=GCS, msg=Heartbeat(node_id=N1, incarnation=1, view_version=1))

    def tick(k: int) -> list[Msg]:
        now = T0 + seconds(k)
        return step(raylet, TimerFired(key=HEARTBEAT_TIMER), now)

    assert tick(1) == [SetTimer(key=HEARTBEAT_TIMER, at_ns=T0 + seconds(2)), beat]
    leased(raylet)
    report = ResourceReport(node_id=N1, incarnation=1, seq=1, total={"CPU": 1.0},
                            available={"CPU": 0.0}, view_epoch=0, view_version=0)
    assert tick(2) == [SetTimer(key=HEARTBEAT_TIMER, at_ns=T0 + seconds(3)), beat,
                       Send(dst=GCS, msg=report)]
    assert tick(3)[-1].msg.seq == 2  # type: ignore[attr-defined]  # unacknowledged: again
    step(raylet, Received(src=GCS, msg=ResourceViewUpdate(
        epoch=7, from_version=0, to_version=1, full=True, ack_seq=2)))
    assert len(tick(4)) == 2  # acknowledged: quiet
    for k in range(5, 13):
        assert len(tick(k)) == 2
    assert tick(13)[-1].msg.view_epoch == 7  # type: ignore[attr-defined]  # refresh


def test_a_resource_view_update_not_from_the_gcs_is_refused() -> None:
    raylet = make_raylet()
    peer = Address(node=N2, component="raylet")
    update = ResourceViewUpdate(epoch=1, from_version=0, to_version=1, full=True)
    assert step(raylet, Received(src=peer, msg=update)) == [Send(dst=peer, msg=Rejected(
        request_type="ResourceViewUpdate",
        reason="raylet 'n1': does not serve ResourceViewUpdate messages; send it to the "
               "component that owns it"))]
    assert raylet.cluster.version == 0


def test_error_messages_pin_the_component_prefix() -> None:
    raylet = make_raylet()
    leased(raylet)
    request_1 = raylet.leases._leases["n1.b1.l1"]
    with pytest.raises(InvalidTransition, match=(
            r"^raylet leases: cannot move request to waiting \(Address.*, 1\) in phase "
            r"granted; expected queued$")):
        raylet.leases._move(request_1, RequestPhase.WAITING)


def test_the_check_of_a_raylet_with_no_requests_still_catches_a_broken_ledger_or_pool() -> None:
    # With no request, pending entry or lease the check takes a shorter path: it must
    # still see resources held by no lease and a worker leased to no lease.
    raylet = make_raylet()
    leased(raylet)
    step(raylet, give_back(1))  # idle again: one idle worker, nothing requested
    raylet.leases.ledger.acquire("n1.b1.l7", {"CPU": 1})
    with pytest.raises(InvariantViolation, match=r"^raylet leases: leases \[\] but resources"):
        raylet.check_invariants()
    raylet.leases.ledger.release("n1.b1.l7")
    raylet.check_invariants()
    (idle,) = raylet.leases.pool.workers
    idle.phase, idle.lease_id = WorkerPhase.LEASED, "n1.b1.l7"
    raylet.leases.pool._idle.pop(idle.worker_id)
    with pytest.raises(InvariantViolation, match=r"is leased to 'n1.b1.l7', which is no lease"):
        raylet.check_invariants()
