"""Core worker: recursive cancel reaches the tasks a cancelled task submitted (whole effect lists).

The driver owns the parent task P, which runs on worker W1; P submits children
while it runs, which W1 owns. Cancelling P sends ``CancelTask`` to W1, whose core
worker cancels P's children itself (Ray forwards the cancel to the executing worker).
"""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.protocol import (
    CancelRequested,
    CancelTask,
    ExecuteTask,
    GetCompleted,
    GetRequested,
    InterruptTask,
    ObjectError,
    ObjectResult,
    PushTask,
    RefsChanged,
    TaskDone,
    TaskExecuted,
    TaskSubmitted,
)
from shoal.kernel.ids import TaskId
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Received,
    Send,
    SetTimer,
    Started,
    TimerFired,
)
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    LeaseGranted,
    RegisterWorker,
    RequestWorkerLease,
)
from shoal.kernel.task_spec import ObjectRefInfo, TaskSpec

S = 1_000_000_000
DRIVER = Address(node="n0", component="driver")
RAYLET = Address(node="n1", component="raylet")
GCS = Address(node="n0", component="gcs")
W1 = Address(node="n1", component="worker", worker="w1")
W2 = Address(node="n1", component="worker", worker="w2")


def spec(task_id: str, owner: Address) -> TaskSpec:
    return TaskSpec(task_id=TaskId(task_id), job_id="j", name="f", owner=owner,
                    function_id="fn", args=())


def cancelled(task_id: str) -> ObjectResult:
    return ObjectResult(object_id=f"{task_id}.r0", error=ObjectError(  # type: ignore[arg-type]
        kind="task_cancelled", message=(
            f"task f ({task_id}) was cancelled before it finished; its results will never "
            "be available")))


def running_parent() -> CoreWorker:
    """Worker W1 runs the driver's task P."""
    core = CoreWorker(W1, raylet=RAYLET, gcs=GCS)
    assert core.handle(Started(), now=0)[-1] == Send(dst=RAYLET, msg=RegisterWorker(worker_id="w1"))
    parent = spec("P", DRIVER)
    assert core.handle(Received(src=DRIVER, msg=PushTask(lease_id="L0", spec=parent,
                                                        function=b"code")), now=0) == [
        ExecuteTask(spec=parent, args=(), function=b"code")]
    return core


def submit_child(core: CoreWorker, task_id: str, now: int = 1) -> list[object]:
    child_ref = ObjectRefInfo(object_id=f"{task_id}.r0", owner=W1)  # type: ignore[arg-type]
    core.handle(RefsChanged(deltas=((child_ref, 1),)), now=now)
    return core.handle(TaskSubmitted(spec=spec(task_id, W1), function=b"code"), now=now)


def test_recursive_cancel_of_a_running_task_cancels_its_queued_and_pushed_children() -> None:
    core = running_parent()
    assert submit_child(core, "C1") == [
        Send(dst=RAYLET, msg=RequestWorkerLease(request_id=1, shape={"CPU": 1.0})),
        SetTimer(key="lease.retry.1", at_ns=1 + S)]
    core.handle(Received(src=RAYLET, msg=LeaseGranted(
        request_id=1, lease_id="L1", worker=W2, node_id="n1")), now=2)  # type: ignore[arg-type]
    submit_child(core, "C2", now=3)  # queued behind C1 (one lease per task at a time)
    assert core.handle(Received(src=DRIVER, msg=CancelTask(task_id=TaskId("P"))), now=4) == [
        Send(dst=W2, msg=CancelTask(task_id=TaskId("C1"))),
        InterruptTask(task_id=TaskId("P"), force=False),
        CancelTimer(key="lease.retry.2"),
        Send(dst=RAYLET, msg=CancelLeaseRequest(request_id=2)),
    ], "the pushed child's worker is told (and does the same for its own children); the " \
       "queued one fails here, and its lease request is withdrawn"
    c2 = ObjectRefInfo(object_id="C2.r0", owner=W1)  # type: ignore[arg-type]
    assert core.handle(GetRequested(call_id=5, refs=(c2,)), now=5) == [
        GetCompleted(call_id=5, results=(cancelled("C2"),))]
    core.check_invariants()


def test_children_submitted_after_the_cancel_are_cancelled_as_they_arrive() -> None:
    core = running_parent()
    core.handle(Received(src=DRIVER, msg=CancelTask(task_id=TaskId("P"))), now=1)
    assert submit_child(core, "C1", now=2) == [
        Send(dst=RAYLET, msg=RequestWorkerLease(request_id=1, shape={"CPU": 1.0})),
        SetTimer(key="lease.retry.1", at_ns=2 + S),
        CancelTimer(key="lease.retry.1"),
        Send(dst=RAYLET, msg=CancelLeaseRequest(request_id=1)),
    ]
    assert core.submitter.pending_tasks == 0


def test_non_recursive_cancel_leaves_the_children_alone() -> None:
    core = running_parent()
    submit_child(core, "C1")
    assert core.handle(Received(src=DRIVER, msg=CancelTask(
        task_id=TaskId("P"), recursive=False)), now=4) == [
        InterruptTask(task_id=TaskId("P"), force=False)]
    assert core.submitter.pending_tasks == 1


def test_the_record_of_children_ends_with_the_task() -> None:
    core = running_parent()
    submit_child(core, "C1")
    result = ObjectResult(object_id="P.r0", error=cancelled("P").error)  # type: ignore[arg-type]
    assert core.handle(TaskExecuted(task_id=TaskId("P"), attempt=0, results=(result,)), now=2) == [
        Send(dst=DRIVER, msg=TaskDone(task_id=TaskId("P"), attempt=0, results=(result,)))]
    assert core.handle(Received(src=DRIVER, msg=CancelTask(task_id=TaskId("P"))), now=3) == [], (
        "a cancel that comes after the task ended touches nothing it submitted")
    assert core.submitter.pending_tasks == 1


def test_the_driver_forwards_recursive_to_the_executing_worker() -> None:
    core = CoreWorker(DRIVER, raylet=Address(node="n0", component="raylet"), gcs=GCS)
    core.handle(Started(), now=0)
    core.handle(TaskSubmitted(spec=spec("P", DRIVER), function=b"code"), now=0)
    core.handle(Received(src=Address(node="n0", component="raylet"), msg=LeaseGranted(
        request_id=1, lease_id="L1", worker=W1, node_id="n1")), now=0)  # type: ignore[arg-type]
    assert core.handle(CancelRequested(object_id="P.r0", recursive=False), now=1) == [  # type: ignore[arg-type]
        Send(dst=W1, msg=CancelTask(task_id=TaskId("P"), recursive=False))]


def test_a_lost_cancel_is_sent_again_with_each_re_push_and_interrupts_once() -> None:
    driver_raylet = Address(node="n0", component="raylet")
    core = CoreWorker(DRIVER, raylet=driver_raylet, gcs=GCS)
    core.handle(Started(), now=0)
    parent = spec("P", DRIVER)
    core.handle(TaskSubmitted(spec=parent, function=b"code"), now=0)
    core.handle(Received(src=driver_raylet, msg=LeaseGranted(
        request_id=1, lease_id="L1", worker=W1, node_id="n1")), now=0)  # type: ignore[arg-type]
    cancel = CancelTask(task_id=TaskId("P"))
    assert core.handle(CancelRequested(object_id="P.r0"), now=1) == [  # type: ignore[arg-type]
        Send(dst=W1, msg=cancel)]
    assert core.handle(TimerFired(key="task.push.P"), now=S) == [
        Send(dst=W1, msg=cancel),
        Send(dst=W1, msg=PushTask(lease_id="L1", spec=parent, function=b"code")),
        SetTimer(key="task.push.P", at_ns=2 * S),
    ]
    worker = running_parent()
    assert worker.handle(Received(src=DRIVER, msg=cancel), now=2) == [
        InterruptTask(task_id=TaskId("P"), force=False)]
    assert worker.handle(Received(src=DRIVER, msg=cancel), now=3) == [], "interrupted once"
