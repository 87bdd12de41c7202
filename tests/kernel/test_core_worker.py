"""CoreWorker kernel: whole-effect-list tests of submission, leases, execution, objects."""

from __future__ import annotations

import msgspec
import pytest

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.protocol import (
    CancelRequested,
    CancelTask,
    ExecuteTask,
    GetCompleted,
    GetObject,
    GetRequested,
    ObjectError,
    ObjectPut,
    ObjectResult,
    ObjectStatus,
    PushTask,
    RefsChanged,
    TaskDone,
    TaskExecuted,
    TaskRunning,
    TaskSubmitted,
)
from shoal.kernel.gcs.protocol import SubscribeNodes
from shoal.kernel.messages import Address, CancelTimer, Received, Send, SetTimer, Started, TimerFired
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseSpillback,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
    WorkerBlocked,
    WorkerUnblocked,
)
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskArg, TaskSpec

S = 1_000_000_000
DRIVER = Address(node="n0", component="driver")
RAYLET = Address(node="n0", component="raylet")
RAYLET1 = Address(node="n1", component="raylet")
GCS = Address(node="n0", component="gcs")
WORKER = Address(node="n0", component="worker", worker="w1")


def spec(task_id: str = "t1", *, args: tuple[TaskArg, ...] = (), retries: int = 3,
         returns: int = 1) -> TaskSpec:
    return TaskSpec(task_id=task_id, job_id="j", name="f", owner=DRIVER, function_id="fn",
                    args=args, num_returns=returns, max_retries=retries)


def value(data: bytes) -> Payload:
    return Payload(data=data)


def driver() -> CoreWorker:
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS)
    assert core.handle(Started(), now=0) == [
        Send(dst=GCS, msg=SubscribeNodes(known_version=0)),
        SetTimer(key="gcs_client.poll", at_ns=S // 2),
    ]
    return core


def granted(core: CoreWorker, request_id: int = 1, lease: str = "L1") -> list[object]:
    return core.handle(Received(src=RAYLET, msg=LeaseGranted(
        request_id=request_id, lease_id=lease, worker=WORKER, node_id="n0")), now=0)


def test_submit_requests_a_lease_and_pushes_on_grant() -> None:
    core = driver()
    task = spec()
    assert core.handle(TaskSubmitted(spec=task, function=b"code"), now=0) == [
        Send(dst=RAYLET, msg=RequestWorkerLease(request_id=1, shape={"CPU": 1.0})),
        SetTimer(key="lease.retry.1", at_ns=S),
    ]
    assert granted(core) == [
        CancelTimer(key="lease.retry.1"),
        Send(dst=WORKER, msg=PushTask(lease_id="L1", spec=task, function=b"code", resolved=())),
        SetTimer(key="task.push.t1", at_ns=S),
    ]


def test_task_done_stores_result_wakes_get_and_returns_the_lease() -> None:
    core = driver()
    core.handle(TaskSubmitted(spec=spec(), function=b"code"), now=0)
    granted(core)
    ref = ObjectRefInfo(object_id="t1.r0", owner=DRIVER)
    core.handle(RefsChanged(deltas=((ref, 1),)), now=0)
    assert core.handle(GetRequested(call_id=7, refs=(ref,)), now=0) == []
    result = ObjectResult(object_id="t1.r0", value=value(b"49"))
    done = TaskDone(task_id="t1", attempt=0, results=(result,))
    assert core.handle(Received(src=WORKER, msg=done), now=5) == [
        CancelTimer(key="task.push.t1"),
        GetCompleted(call_id=7, results=(result,)),
        Send(dst=RAYLET, msg=ReturnWorker(lease_id="L1")),
        SetTimer(key="lease.return.L1", at_ns=5 + S),
    ]
    assert core.handle(Received(src=WORKER, msg=done), now=6) == [], "a duplicate is a no-op"
    assert core.handle(Received(src=RAYLET, msg=ReturnWorkerAck(lease_id="L1")), now=7) == [
        CancelTimer(key="lease.return.L1")]
    assert core.submitter.lease_count == 0 and core.submitter.pending_tasks == 0
    core.handle(RefsChanged(deltas=((ref, -1),)), now=8)
    assert len(core.objects) == 0, "freed once the last reference is gone"


def test_lease_is_reused_for_the_next_task_of_the_same_shape() -> None:
    core = driver()
    first, second = spec("t1"), spec("t2")
    core.handle(TaskSubmitted(spec=first, function=b"code"), now=0)
    core.handle(TaskSubmitted(spec=second, function=b"code"), now=0)
    granted(core)
    done = TaskDone(task_id="t1", attempt=0,
                    results=(ObjectResult(object_id="t1.r0", value=value(b"1")),))
    effects = core.handle(Received(src=WORKER, msg=done), now=1)
    assert Send(dst=WORKER, msg=PushTask(lease_id="L1", spec=second, function=b"",
                                         resolved=())) in effects
    assert not any(isinstance(e, Send) and isinstance(e.msg, ReturnWorker) for e in effects)


def test_worker_death_retries_with_next_attempt_then_fails_when_retries_run_out() -> None:
    core = driver()
    task = spec(retries=1)
    core.handle(TaskSubmitted(spec=task, function=b"code"), now=0)
    granted(core)
    died = LeasedWorkerDied(lease_id="L1", worker=WORKER, cause="killed")
    effects = core.handle(Received(src=RAYLET, msg=died), now=1)
    assert effects[0] == CancelTimer(key="task.push.t1")
    assert isinstance(effects[1], Send) and isinstance(effects[1].msg, RequestWorkerLease)
    granted(core, request_id=2, lease="L2")
    ref = ObjectRefInfo(object_id="t1.r0", owner=DRIVER)
    core.handle(RefsChanged(deltas=((ref, 1),)), now=1)
    core.handle(GetRequested(call_id=1, refs=(ref,)), now=1)
    effects = core.handle(Received(src=RAYLET, msg=LeasedWorkerDied(
        lease_id="L2", worker=WORKER, cause="killed again")), now=2)
    completed = [e for e in effects if isinstance(e, GetCompleted)]
    assert len(completed) == 1
    error = completed[0].results[0].error
    assert error is not None and error.kind == "worker_crashed"
    assert "killed again" in error.message and "max_retries=1" in error.message


def test_spillback_reaims_the_request() -> None:
    core = driver()
    core.handle(TaskSubmitted(spec=spec(), function=b"code"), now=0)
    assert core.handle(Received(src=RAYLET, msg=LeaseSpillback(request_id=1, node_id="n1")),
                       now=3) == [
        Send(dst=RAYLET1, msg=RequestWorkerLease(request_id=1, shape={"CPU": 1.0}, spilled=True)),
        SetTimer(key="lease.retry.1", at_ns=3 + S),
    ]


def test_a_grant_from_the_raylet_a_request_left_is_used_and_the_request_withdrawn() -> None:
    core = driver()
    task = spec()
    core.handle(TaskSubmitted(spec=task, function=b"code"), now=0)
    core.handle(Received(src=RAYLET, msg=LeaseSpillback(request_id=1, node_id="n1")), now=3)
    # The first raylet grants after all: it counts the request as ended from now on, so
    # the lease is taken (not given back) and the request withdrawn where it went.
    assert core.handle(Received(src=RAYLET, msg=LeaseGranted(
        request_id=1, lease_id="L1", worker=WORKER, node_id="n0")), now=4) == [
        CancelTimer(key="lease.retry.1"),
        Send(dst=RAYLET1, msg=CancelLeaseRequest(request_id=1)),
        Send(dst=WORKER, msg=PushTask(lease_id="L1", spec=task, function=b"code", resolved=())),
        SetTimer(key="task.push.t1", at_ns=4 + S),
    ]
    core.check_invariants()


def test_dependent_task_waits_for_its_argument_and_gets_it_inline() -> None:
    core = driver()
    first = spec("t1")
    arg = ObjectRefInfo(object_id="t1.r0", owner=DRIVER)
    second = spec("t2", args=(TaskArg(ref=arg),))
    core.handle(TaskSubmitted(spec=first, function=b"code"), now=0)
    effects = core.handle(TaskSubmitted(spec=second, function=b"code"), now=0)
    assert effects == [], "waits for t1 before asking for a lease"
    granted(core)
    done = TaskDone(task_id="t1", attempt=0,
                    results=(ObjectResult(object_id="t1.r0", value=value(b"9")),))
    effects = core.handle(Received(src=WORKER, msg=done), now=1)
    pushes = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, PushTask)]
    assert pushes == [PushTask(lease_id="L1", spec=second, function=b"",
                               resolved=(value(b"9"),))]


def test_failed_argument_fails_the_dependent_task_with_the_same_error() -> None:
    core = driver()
    arg = ObjectRefInfo(object_id="t1.r0", owner=DRIVER)
    core.handle(TaskSubmitted(spec=spec("t1"), function=b"code"), now=0)
    core.handle(TaskSubmitted(spec=spec("t2", args=(TaskArg(ref=arg),)), function=b"c"), now=0)
    granted(core)
    error = ObjectError(kind="task_error", message="boom", data=b"pickled")
    ref2 = ObjectRefInfo(object_id="t2.r0", owner=DRIVER)
    core.handle(RefsChanged(deltas=((ref2, 1),)), now=0)
    core.handle(GetRequested(call_id=3, refs=(ref2,)), now=0)
    effects = core.handle(Received(src=WORKER, msg=TaskDone(
        task_id="t1", attempt=0, results=(ObjectResult(object_id="t1.r0", error=error),))), now=1)
    assert GetCompleted(call_id=3, results=(ObjectResult(object_id="t2.r0", error=error),)) in effects


def test_get_times_out_with_a_documented_error() -> None:
    core = driver()
    core.handle(TaskSubmitted(spec=spec(), function=b"code"), now=0)
    ref = ObjectRefInfo(object_id="t1.r0", owner=DRIVER)
    assert core.handle(GetRequested(call_id=1, refs=(ref,), timeout_ns=S), now=0) == [
        SetTimer(key="call.timeout.1", at_ns=S)]
    (completed,) = core.handle(TimerFired(key="call.timeout.1"), now=S)
    assert isinstance(completed, GetCompleted)
    assert completed.results[0].error is not None
    assert completed.results[0].error.kind == "get_timeout"


def test_put_then_get_returns_the_value_and_owner_answers_borrowers() -> None:
    core = driver()
    ref = ObjectRefInfo(object_id="p1", owner=DRIVER)
    core.handle(RefsChanged(deltas=((ref, 1),)), now=0)
    assert core.handle(ObjectPut(object_id="p1", value=value(b"v")), now=0) == []
    result = ObjectResult(object_id="p1", value=value(b"v"))
    assert core.handle(GetRequested(call_id=1, refs=(ref,)), now=0) == [
        GetCompleted(call_id=1, results=(result,))]
    assert core.handle(Received(src=WORKER, msg=GetObject(object_id="p1")), now=0) == [
        Send(dst=WORKER, msg=ObjectStatus(result=result))]
    core.handle(RefsChanged(deltas=((ref, -1),)), now=0)
    (lost,) = core.handle(Received(src=WORKER, msg=GetObject(object_id="p1")), now=0)
    assert isinstance(lost, Send) and isinstance(lost.msg, ObjectStatus)
    assert lost.msg.result.error is not None and lost.msg.result.error.kind == "object_lost"


def test_cancel_of_a_queued_task_fails_it_and_of_a_pushed_task_interrupts_it() -> None:
    core = driver()
    core.handle(TaskSubmitted(spec=spec("t1"), function=b"code"), now=0)
    effects = core.handle(CancelRequested(object_id="t1.r0"), now=0)
    assert effects == [  # nothing left to run: the lease request is withdrawn
        CancelTimer(key="lease.retry.1"),
        Send(dst=RAYLET, msg=CancelLeaseRequest(request_id=1)),
    ]
    assert core.submitter.pending_tasks == 0
    core.handle(TaskSubmitted(spec=spec("t2"), function=b"code"), now=0)
    granted(core, request_id=2)
    assert core.handle(CancelRequested(object_id="t2.r0", force=False), now=0) == [
        Send(dst=WORKER, msg=CancelTask(task_id="t2"))]


# --- executor side ----------------------------------------------------------


def worker() -> CoreWorker:
    core = CoreWorker(WORKER, raylet=RAYLET, gcs=GCS)
    effects = core.handle(Started(), now=0)
    assert effects[-1] == Send(dst=RAYLET, msg=RegisterWorker(worker_id="w1"))
    return core


def test_executor_runs_pushed_task_and_answers_exactly_once() -> None:
    core = worker()
    task = spec(args=(TaskArg(value=value(b"3")),))
    push = PushTask(lease_id="L1", spec=task, function=b"code")
    assert core.handle(Received(src=DRIVER, msg=push), now=0) == [
        ExecuteTask(spec=task, args=(value(b"3"),), function=b"code")]
    assert core.handle(Received(src=DRIVER, msg=push), now=1) == [
        Send(dst=DRIVER, msg=TaskRunning(task_id="t1", attempt=0))]
    result = ObjectResult(object_id="t1.r0", value=value(b"9"))
    done = TaskDone(task_id="t1", attempt=0, results=(result,))
    assert core.handle(TaskExecuted(task_id="t1", attempt=0, results=(result,)), now=2) == [
        Send(dst=DRIVER, msg=done)]
    assert core.handle(Received(src=DRIVER, msg=push), now=3) == [Send(dst=DRIVER, msg=done)]


def test_executor_fetches_a_borrowed_argument_from_its_owner() -> None:
    core = worker()
    arg = ObjectRefInfo(object_id="x.r0", owner=DRIVER)
    task = spec(args=(TaskArg(ref=arg),))
    assert core.handle(Received(src=DRIVER, msg=PushTask(lease_id="L1", spec=task,
                                                         function=b"code")), now=0) == [
        Send(dst=DRIVER, msg=GetObject(object_id="x.r0")),
        SetTimer(key="obj.fetch.x.r0", at_ns=S // 2),
    ]
    status = ObjectStatus(result=ObjectResult(object_id="x.r0", value=value(b"arg")))
    assert core.handle(Received(src=DRIVER, msg=status), now=1) == [
        CancelTimer(key="obj.fetch.x.r0"),
        ExecuteTask(spec=task, args=(value(b"arg"),), function=b"code"),
    ]


def test_worker_blocked_in_get_lends_its_cpu() -> None:
    core = worker()
    ref = ObjectRefInfo(object_id="y.r0", owner=DRIVER)
    effects = core.handle(GetRequested(call_id=1, refs=(ref,)), now=0)
    assert effects[-1] == Send(dst=RAYLET, msg=WorkerBlocked(worker_id="w1"))
    status = ObjectStatus(result=ObjectResult(object_id="y.r0", value=value(b"v")))
    effects = core.handle(Received(src=DRIVER, msg=status), now=1)
    assert effects[-1] == Send(dst=RAYLET, msg=WorkerUnblocked(worker_id="w1"))


def test_every_protocol_message_round_trips() -> None:
    for msg in (PushTask(lease_id="L", spec=spec(), function=b"f", resolved=(None,)),
                TaskDone(task_id="t", attempt=1, results=()),
                ObjectStatus(result=ObjectResult(object_id="o", error=ObjectError(
                    kind="object_lost", message="m")))):
        encoded = msgspec.msgpack.encode(msg)
        assert msgspec.msgpack.decode(encoded, type=type(msg)) == msg


@pytest.mark.parametrize("kind", ["task_error", "worker_crashed", "object_lost"])
def test_error_kinds_are_validated(kind: str) -> None:
    ObjectError(kind=kind, message="m")  # type: ignore[arg-type]


def test_an_idle_lease_lingers_for_the_next_task_then_is_returned() -> None:
    from shoal.kernel.core_worker.core_worker import host_config

    linger = host_config().submitter.lease_linger_ns
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS, config=host_config())
    core.handle(Started(), now=0)
    core.handle(TaskSubmitted(spec=spec("t1"), function=b"code"), now=0)
    granted(core)
    first = TaskDone(task_id="t1", attempt=0, results=(
        ObjectResult(object_id="t1.r0", value=value(b"1")),))
    assert core.handle(Received(src=WORKER, msg=first), now=10) == [
        CancelTimer(key="task.push.t1"),
        SetTimer(key="lease.linger.L1", at_ns=10 + linger),  # not returned yet
    ]
    # The next task arrives while the lease lingers: pushed to the same worker at once,
    # no lease request and no return in between.
    second = spec("t2")
    assert core.handle(TaskSubmitted(spec=second, function=b"code"), now=20) == [
        Send(dst=WORKER, msg=PushTask(lease_id="L1", spec=second, function=b"", resolved=())),
        SetTimer(key="task.push.t2", at_ns=20 + S),
    ]
    assert core.handle(TimerFired(key="lease.linger.L1"), now=10 + linger) == []  # busy
    done = TaskDone(task_id="t2", attempt=0, results=(
        ObjectResult(object_id="t2.r0", value=value(b"2")),))
    at = 30 + linger
    assert core.handle(Received(src=WORKER, msg=done), now=at) == [
        CancelTimer(key="task.push.t2"),
        SetTimer(key="lease.linger.L1", at_ns=at + linger),  # lingers again, afresh
    ]
    assert core.handle(TimerFired(key="lease.linger.L1"), now=at + linger) == [
        Send(dst=RAYLET, msg=ReturnWorker(lease_id="L1")),
        SetTimer(key="lease.return.L1", at_ns=at + linger + S),
    ]
