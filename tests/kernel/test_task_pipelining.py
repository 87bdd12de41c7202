"""Submitter pipelining: a lease whose tasks are short has several pushed at once."""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.core_worker import CoreWorkerConfig
from shoal.kernel.core_worker.executor import Executor
from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import (
    ObjectResult,
    PushTask,
    TaskDone,
    TaskRunning,
    TaskSubmitted,
)
from shoal.kernel.core_worker.submitter import SubmitterConfig
from shoal.kernel.messages import Address, Received, Send, Started
from shoal.kernel.raylet.protocol import LeasedWorkerDied, LeaseGranted
from shoal.kernel.task_spec import Payload, TaskSpec

MS = 1_000_000
DRIVER = Address(node="n0", component="driver")
RAYLET = Address(node="n0", component="raylet")
GCS = Address(node="n0", component="gcs")
WORKER = Address(node="n0", component="worker", worker="w1")


def spec(task_id: str) -> TaskSpec:
    return TaskSpec(task_id=task_id, job_id="j", name="f", owner=DRIVER, function_id="fn",
                    args=(), max_retries=3)


def pipelining_driver(depth: int = 3) -> CoreWorker:
    config = CoreWorkerConfig(submitter=SubmitterConfig(pipeline_depth=depth,
                                                        pipeline_fast_ns=2 * MS))
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS, config=config)
    core.handle(Started(), now=0)
    return core


def submit(core: CoreWorker, count: int) -> None:
    for i in range(1, count + 1):
        core.handle(TaskSubmitted(spec=spec(f"t{i}"), function=b"code"), now=0)


def pushed(effects: list[object]) -> list[str]:
    return [e.msg.spec.task_id for e in effects
            if isinstance(e, Send) and isinstance(e.msg, PushTask)]


def done(core: CoreWorker, task_id: str, now: int) -> list[object]:
    answer = TaskDone(task_id=task_id, attempt=0, results=(
        ObjectResult(object_id=f"{task_id}.r0", value=Payload(data=b"x")),))
    return core.handle(Received(src=WORKER, msg=answer), now=now)


def grant(core: CoreWorker) -> list[object]:
    return core.handle(Received(src=RAYLET, msg=LeaseGranted(
        request_id=1, lease_id="L1", worker=WORKER, node_id="n0")), now=0)


def test_a_new_lease_runs_one_task_then_pipelines_once_a_task_was_short() -> None:
    core = pipelining_driver(depth=3)
    submit(core, 6)
    assert pushed(grant(core)) == ["t1"]  # nothing known about its tasks yet
    # t1 answered within pipeline_fast_ns: up to three in flight from now on.
    assert pushed(done(core, "t1", now=1 * MS)) == ["t2", "t3", "t4"]
    core.check_invariants()
    assert pushed(done(core, "t2", now=2 * MS)) == ["t5"]
    assert pushed(done(core, "t3", now=3 * MS)) == ["t6"]


def test_a_slow_task_turns_pipelining_off_for_its_lease() -> None:
    core = pipelining_driver(depth=3)
    submit(core, 7)
    grant(core)
    assert pushed(done(core, "t1", now=1 * MS)) == ["t2", "t3", "t4"]
    # Slow tasks (50 ms each): one in flight at a time once those queued are done.
    assert pushed(done(core, "t2", now=51 * MS)) == []
    assert pushed(done(core, "t3", now=101 * MS)) == []
    assert pushed(done(core, "t4", now=151 * MS)) == ["t5"]
    assert pushed(done(core, "t5", now=201 * MS)) == ["t6"]
    # A short one turns it back on.
    assert pushed(done(core, "t6", now=202 * MS)) == ["t7"]
    assert core.submitter._leases["L1"].fast


def test_the_time_a_task_waited_behind_another_is_not_counted_as_its_own() -> None:
    core = pipelining_driver(depth=3)
    submit(core, 5)
    grant(core)
    done(core, "t1", now=1 * MS)  # t2..t4 pushed at 1 ms
    assert pushed(done(core, "t2", now=2 * MS)) == ["t5"]
    # t3 answered 1.5 ms after t2 although 3 ms after its push: still short.
    done(core, "t3", now=int(3.5 * MS))
    assert core.submitter._leases["L1"].fast


def test_a_lost_lease_retries_every_task_in_flight_in_order() -> None:
    core = pipelining_driver(depth=3)
    submit(core, 4)
    grant(core)
    done(core, "t1", now=1 * MS)  # t2, t3, t4 in flight on L1
    effects = core.handle(Received(src=RAYLET, msg=LeasedWorkerDied(
        lease_id="L1", worker=WORKER, cause="killed")), now=2 * MS)
    assert pushed(effects) == []  # no lease left: they wait for a new one
    assert list(next(iter(core.submitter._keys.values())).queue) == ["t2", "t3", "t4"]
    assert [core.submitter._tasks[t].spec.attempt for t in ("t2", "t3", "t4")] == [1, 1, 1]
    core.check_invariants()


def test_a_worker_answers_a_repush_of_a_queued_task_running() -> None:
    executor = Executor(WORKER, ObjectTable(WORKER, 1_000_000_000))
    first, second = (PushTask(lease_id="L1", spec=spec(t), function=b"code", resolved=())
                     for t in ("t1", "t2"))
    executor.on_push(DRIVER, first, now=0)
    assert executor.on_push(DRIVER, second, now=0) == []  # queued behind t1
    assert executor.on_push(DRIVER, second, now=1) == [
        Send(dst=DRIVER, msg=TaskRunning(task_id="t2", attempt=0))]
