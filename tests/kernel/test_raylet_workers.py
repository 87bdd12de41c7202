"""Example tests of the raylet's worker pool sub-machine."""

from __future__ import annotations

import pytest
from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.ids import NodeId, WorkerId, seconds
from shoal.kernel.messages import Address, CancelTimer, SetTimer
from shoal.kernel.raylet.protocol import KillWorker, StartWorker
from shoal.kernel.raylet.workers import (
    IDLE_SWEEP_TIMER,
    WorkerPhase,
    WorkerPool,
    WorkerPoolConfig,
)

N1 = NodeId("n1")
T0 = seconds(100)
CONFIG = WorkerPoolConfig(register_timeout_ns=seconds(10), idle_timeout_ns=seconds(2))


def wid(n: int, boot: int = 1) -> WorkerId:
    return WorkerId(f"n1.b{boot}.w{n}")


def timer(n: int) -> str:
    return f"raylet.worker_start:{wid(n)}"


def pool_of(cpus: float = 2.0, config: WorkerPoolConfig = CONFIG, boot: int = 1) -> WorkerPool:
    return WorkerPool(N1, boot, config, cpus=cpus)


def test_ids_are_minted_from_a_counter_and_name_the_boot() -> None:
    pool = pool_of(boot=3)
    assert pool.start(T0) == [StartWorker(worker_id=WorkerId("n1.b3.w1")),
                              SetTimer(key="raylet.worker_start:n1.b3.w1", at_ns=T0 + seconds(10))]
    assert pool.start(T0)[0] == StartWorker(worker_id=WorkerId("n1.b3.w2"))
    assert pool.address(WorkerId("n1.b3.w1")) == Address(
        node=N1, component="worker", worker="n1.b3.w1")


@pytest.mark.parametrize(("cpus", "workers_max", "limit"), [
    (4.0, 0, 4), (0.0, 0, 1), (0.5, 0, 1), (4.0, 2, 2),
])
def test_the_limit_defaults_to_the_cpu_count_and_at_least_one(
        cpus: float, workers_max: int, limit: int) -> None:
    pool = pool_of(cpus, WorkerPoolConfig(workers_max=workers_max))
    assert pool.soft_limit == pool.limit == limit


def test_lifecycle_starting_idle_leased_idle() -> None:
    pool = pool_of()
    pool.start(T0)
    assert pool.free_slots() == 2  # one on its way, one more may start
    assert pool.pop_idle("l1") is None
    assert pool.register(wid(1), T0) == [CancelTimer(key=timer(1))]
    assert pool.register(wid(1), T0) == []  # a duplicate
    assert pool.register(wid(9), T0) == []  # unknown
    assert pool.pop_idle("l1") == wid(1)
    worker = pool.get(wid(1))
    assert worker is not None and worker.phase is WorkerPhase.LEASED and worker.lease_id == "l1"
    pool.unlease(wid(1), T0 + 5)
    assert pool.get(wid(1)) == worker
    assert (worker.phase.value, worker.lease_id, worker.since_ns) == ("idle", "", T0 + 5)
    pool.check_invariants()


def test_blocked_workers_raise_the_limit() -> None:
    pool = pool_of(1.0)
    pool.start(T0)
    pool.register(wid(1), T0)
    assert not pool.can_start()
    assert not pool.set_blocked(wid(1), True)  # idle: nothing to block
    pool.pop_idle("l1")
    assert pool.set_blocked(wid(1), True)
    assert not pool.set_blocked(wid(1), True)
    assert pool.limit == 2 and pool.can_start()
    assert pool.set_blocked(wid(1), False)
    assert pool.limit == 1
    pool.set_blocked(wid(1), True)
    pool.unlease(wid(1), T0)
    assert pool.blocked_count == 0
    pool.check_invariants()


def test_a_worker_that_misses_its_registration_deadline_is_killed() -> None:
    pool = pool_of()
    pool.start(T0)
    assert pool.on_start_timeout(wid(1)) == [
        KillWorker(worker_id=wid(1), reason="the worker did not register within 10s")]
    assert pool.get(wid(1)) is None
    assert pool.on_start_timeout(wid(1)) == []


def test_exit_reports_the_dead_worker_with_its_lease() -> None:
    pool = pool_of()
    pool.start(T0)
    worker, effects = pool.exited(wid(1))
    assert worker is not None and worker.phase is WorkerPhase.DEAD
    assert effects == [CancelTimer(key=timer(1))]
    pool.start(T0)
    pool.register(wid(2), T0)
    pool.pop_idle("l7")
    worker, effects = pool.exited(wid(2))
    assert worker is not None and worker.lease_id == "l7" and effects == []
    assert pool.exited(wid(2)) == (None, [])


def test_kill_of_a_starting_worker_cancels_its_deadline() -> None:
    pool = pool_of()
    pool.start(T0)
    assert pool.kill(wid(1), "shutting down") == [
        KillWorker(worker_id=wid(1), reason="shutting down"), CancelTimer(key=timer(1))]


def test_idle_sweep_kills_the_oldest_idle_workers_above_the_soft_limit() -> None:
    pool = pool_of(1.0)
    pool.start(T0)
    pool.register(wid(1), T0)
    pool.pop_idle("l1")
    pool.set_blocked(wid(1), True)
    pool.start(T0)
    pool.register(wid(2), T0)
    assert pool.arm_sweep(T0) == [SetTimer(key=IDLE_SWEEP_TIMER, at_ns=T0 + seconds(2))]
    assert pool.arm_sweep(T0) == []  # armed already
    pool.unlease(wid(1), T0 + seconds(1))  # now two idle workers, soft limit one
    assert pool.on_idle_sweep(T0 + seconds(2)) == [
        KillWorker(worker_id=wid(2), reason="idle for 2s with 2 workers, above the soft limit "
                                            "of 1")]
    assert pool.arm_sweep(T0 + seconds(2)) == []  # at the soft limit now
    assert [w.worker_id for w in pool.workers] == [wid(1)]
    pool.check_invariants()


def test_idle_sweep_rearms_for_workers_not_idle_long_enough() -> None:
    pool = pool_of(1.0, WorkerPoolConfig(workers_max=1, idle_timeout_ns=seconds(2)))
    for n in (1, 2):
        pool.start(T0)
    pool.register(wid(1), T0)
    pool.register(wid(2), T0)
    assert pool.on_idle_sweep(T0 + seconds(1)) == [
        SetTimer(key=IDLE_SWEEP_TIMER, at_ns=T0 + seconds(2))]


def test_error_messages_pin_the_component_prefix() -> None:
    pool = pool_of()
    pool.start(T0)
    with pytest.raises(InvalidTransition, match=(
            r"^raylet workers: cannot move worker to leased 'n1.b1.w1' in phase starting; "
            r"expected idle$")):
        worker = pool.get(wid(1))
        assert worker is not None and pool.pop_idle("l1") is None
        pool._move(worker, WorkerPhase.LEASED)


def test_invariants_catch_a_leased_worker_without_a_lease() -> None:
    pool = pool_of()
    pool.start(T0)
    pool.register(wid(1), T0)
    pool.pop_idle("l1")
    worker = pool.get(wid(1))
    assert worker is not None
    worker.lease_id = ""
    with pytest.raises(InvariantViolation, match="is leased with lease ''"):
        pool.check_invariants()
