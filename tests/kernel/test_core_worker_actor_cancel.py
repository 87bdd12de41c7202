"""Core worker actors: cancel of actor calls and retries on exceptions (whole effect lists)."""

from __future__ import annotations

import msgspec
from shoal.kernel.core_worker.actor_protocol import (
    ActorInstanceCreated,
    ActorTaskAck,
    ActorTaskDone,
    ActorTaskExecuted,
    ExecuteActorTask,
    InterruptActorTask,
    PushActorTask,
)
from shoal.kernel.core_worker.protocol import (
    CancelRequested,
    GetCompleted,
    GetRequested,
    ObjectError,
    ObjectResult,
)
from shoal.kernel.gcs.actor_protocol import ActorInfo
from shoal.kernel.ids import TaskId
from shoal.kernel.messages import CancelTimer, Msg, Received, Send, SetTimer, TimerFired
from shoal.kernel.task_spec import Payload, TaskSpec

from tests.kernel.test_actor_submission import (
    A1,
    DRIVER,
    W1,
    S,
    alive,
    call,
    driver_with_actor,
    hosting,
    push,
    ref,
    submit,
    table,
)


def cancelled_by_caller(task_id: str) -> ObjectResult:
    return ObjectResult(object_id=f"{task_id}.r0", error=ObjectError(  # type: ignore[arg-type]
        kind="task_cancelled", message=(
            f"actor call C.f ({task_id}) was cancelled before it started; its results "
            "will never be available")))


def cancelled_push(spec: TaskSpec, seq: int, processed: int = 0) -> PushActorTask:
    return msgspec.structs.replace(push(spec, seq, processed=processed), cancelled=True)


def ack(task_id: str, attempt: int = 0) -> Send:
    return Send(dst=DRIVER, msg=ActorTaskAck(task_id=TaskId(task_id), attempt=attempt))


def answer(task_id: str, *results: ObjectResult, retryable: bool = False) -> Send:
    return Send(dst=DRIVER, msg=ActorTaskDone(actor_id=A1, task_id=TaskId(task_id), attempt=0,
                                              results=results, retryable_error=retryable))


def value(task_id: str, data: bytes = b"1") -> ObjectResult:
    return ObjectResult(object_id=f"{task_id}.r0", value=Payload(data=data))  # type: ignore[arg-type]


def executed(task_id: str, *results: ObjectResult, retryable: bool = False) -> ActorTaskExecuted:
    return ActorTaskExecuted(actor_id=A1, task_id=TaskId(task_id), attempt=0, results=results,
                             retryable_error=retryable)


# --- caller side -------------------------------------------------------------------


def test_cancel_of_a_queued_call_fails_it_at_once_and_it_takes_no_sequence_number() -> None:
    core = driver_with_actor()
    first, second = call("t1"), call("t2")
    submit(core, first)
    submit(core, second)
    assert core.handle(GetRequested(call_id=7, refs=(ref("t1"),)), now=3) == []
    assert core.handle(CancelRequested(object_id=ref("t1").object_id), now=4) == [
        CancelTimer(key="actor.push.t1"),
        GetCompleted(call_id=7, results=(cancelled_by_caller("t1"),)),
    ]
    assert core.handle(CancelRequested(object_id=ref("t1").object_id), now=5) == [], (
        "cancelling twice is a no-op")
    assert core.handle(table(alive(3)), now=6) == [
        Send(dst=W1, msg=push(second, 0)), SetTimer(key="actor.push.t2", at_ns=6 + S),
    ], "the call behind it gets seq 0: nothing waits for the cancelled one"
    core.check_invariants()


def test_cancel_of_a_pushed_call_pushes_it_again_marked_and_takes_the_workers_answer() -> None:
    core = driver_with_actor()
    first = call("t1")
    submit(core, first)
    core.handle(table(alive(3)), now=3)
    assert core.handle(CancelRequested(object_id=ref("t1").object_id), now=4) == [
        Send(dst=W1, msg=cancelled_push(first, 0)), SetTimer(key="actor.push.t1", at_ns=4 + S),
    ]
    assert core.handle(CancelRequested(object_id=ref("t1").object_id), now=5) == [], (
        "cancelling twice is a no-op")
    assert core.handle(TimerFired_push("t1"), now=4 + S) == [
        Send(dst=W1, msg=cancelled_push(first, 0)),
        SetTimer(key="actor.push.t1", at_ns=4 + 2 * S),
    ], "retransmits carry the cancel too, so a lost cancel is repaired"
    done = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0,
                         results=(cancelled_by_caller("t1"),))
    assert core.handle(Received(src=W1, msg=done), now=6) == [CancelTimer(key="actor.push.t1")]
    assert core.handle(GetRequested(call_id=8, refs=(ref("t1"),)), now=7) == [
        GetCompleted(call_id=8, results=(cancelled_by_caller("t1"),))]
    core.check_invariants()


def test_a_cancelled_call_out_to_a_restarting_actor_is_failed_not_retried() -> None:
    core = driver_with_actor()
    first = call("t1", retries=3)
    submit(core, first, retries=3)
    core.handle(table(alive(3)), now=3)
    core.handle(CancelRequested(object_id=ref("t1").object_id), now=4)
    restarting = ActorInfo(actor_id=A1, state="RESTARTING", version=4, num_restarts=1)
    assert core.handle(table(restarting), now=5) == [
        CancelTimer(key="actor.push.t1"),
    ]
    assert core.handle(GetRequested(call_id=9, refs=(ref("t1"),)), now=6) == [
        GetCompleted(call_id=9, results=(cancelled_by_caller("t1"),))]
    assert core.actors.pending_calls == 0


def TimerFired_push(task_id: str) -> Msg:
    return TimerFired(key=f"actor.push.{task_id}")


# --- the actor's worker --------------------------------------------------------------


def test_worker_answers_an_accepted_queued_call_cancelled_and_runs_the_next() -> None:
    core = hosting()
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    first, second, third = call("t1"), call("t2"), call("t3")
    assert core.handle(Received(src=DRIVER, msg=push(first, 0)), now=3) == [
        ExecuteActorTask(actor_id=A1, spec=first, args=())]
    assert core.handle(Received(src=DRIVER, msg=push(second, 1)), now=3) == []
    assert core.handle(Received(src=DRIVER, msg=push(third, 2)), now=3) == []
    assert core.handle(Received(src=DRIVER, msg=cancelled_push(second, 1)), now=4) == [
        ack("t2"), answer("t2", cancelled_by_caller("t2"))]
    assert core.handle(Received(src=DRIVER, msg=cancelled_push(second, 1)), now=5) == [
        answer("t2", cancelled_by_caller("t2"))], "a retransmit gets the recorded answer"
    assert core.handle(executed("t1", value("t1")), now=6) == [
        answer("t1", value("t1")), ExecuteActorTask(actor_id=A1, spec=third, args=())]
    core.check_invariants()


def test_worker_skips_a_cancelled_call_that_arrives_before_the_calls_it_follows() -> None:
    core = hosting()
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    first, second, third = call("t1"), call("t2"), call("t3")
    assert core.handle(Received(src=DRIVER, msg=push(second, 1)), now=3) == []
    assert core.handle(Received(src=DRIVER, msg=cancelled_push(second, 1)), now=3) == [], (
        "it waits for seq 0, now marked cancelled")
    assert core.handle(Received(src=DRIVER, msg=push(third, 2)), now=3) == []
    assert core.handle(Received(src=DRIVER, msg=push(first, 0)), now=4) == [
        answer("t2", cancelled_by_caller("t2")),
        ExecuteActorTask(actor_id=A1, spec=first, args=()),
    ], "seq 1 is consumed (answered cancelled), so seq 2 is next in line"
    assert core.handle(executed("t1", value("t1")), now=5) == [
        answer("t1", value("t1")), ExecuteActorTask(actor_id=A1, spec=third, args=())]


def test_a_running_call_of_a_sync_actor_is_not_interrupted() -> None:
    core = hosting()
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    first = call("t1")
    core.handle(Received(src=DRIVER, msg=push(first, 0)), now=3)
    assert core.handle(Received(src=DRIVER, msg=cancelled_push(first, 0)), now=4) == [ack("t1")]
    assert core.handle(executed("t1", value("t1")), now=5) == [answer("t1", value("t1"))], (
        "it ran to the end: its value is the answer")


def test_a_running_call_of_an_async_actor_is_interrupted_by_the_host() -> None:
    core = hosting(max_concurrency=4)
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0, is_async=True), now=2)
    first = call("t1")
    core.handle(Received(src=DRIVER, msg=push(first, 0)), now=3)
    assert core.handle(Received(src=DRIVER, msg=cancelled_push(first, 0)), now=4) == [
        ack("t1"), InterruptActorTask(actor_id=A1, task_id=TaskId("t1"))]


# --- retries on exceptions -------------------------------------------------------------


def raised(task_id: str) -> ObjectResult:
    return ObjectResult(object_id=f"{task_id}.r0", error=ObjectError(  # type: ignore[arg-type]
        kind="task_error", message="C.f raised ValueError", data=b"exc"))


def test_worker_reports_a_retryable_exception_to_the_caller() -> None:
    core = hosting()
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    core.handle(Received(src=DRIVER, msg=push(call("t1"), 0)), now=3)
    assert core.handle(executed("t1", raised("t1"), retryable=True), now=4) == [
        answer("t1", raised("t1"), retryable=True)]


def test_a_retryable_exception_runs_the_call_again_until_retries_run_out() -> None:
    core = driver_with_actor()
    spec = call("t1", retries=1)
    submit(core, spec, retries=1)
    core.handle(table(alive(3)), now=3)
    failed = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0,
                           results=(raised("t1"),), retryable_error=True)
    again = msgspec.structs.replace(spec, attempt=1)
    assert core.handle(Received(src=W1, msg=failed), now=4) == [
        CancelTimer(key="actor.push.t1"),
        Send(dst=W1, msg=push(again, 1, processed=1)), SetTimer(key="actor.push.t1", at_ns=4 + S),
    ], "pushed again as a new call: the next seq, the next attempt"
    assert core.handle(Received(src=W1, msg=failed), now=5) == [
        CancelTimer(key="actor.push.t1")], "retries used up: the error is the result"
    assert core.handle(GetRequested(call_id=3, refs=(ref("t1"),)), now=6) == [
        GetCompleted(call_id=3, results=(raised("t1"),))]
    core.check_invariants()


def test_an_exception_not_marked_retryable_is_the_result_at_once() -> None:
    core = driver_with_actor()
    submit(core, call("t1", retries=5), retries=5)
    core.handle(table(alive(3)), now=3)
    failed = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0, results=(raised("t1"),))
    assert core.handle(Received(src=W1, msg=failed), now=4) == [CancelTimer(key="actor.push.t1")]
    assert core.actors.pending_calls == 0


def test_force_on_an_actor_call_is_treated_as_a_plain_cancel_by_the_kernel() -> None:
    """The API refuses force=True for actor calls; should one reach the kernel anyway, it
    never kills the actor's worker."""
    core = driver_with_actor()
    submit(core, call("t1"))
    assert core.handle(CancelRequested(object_id=ref("t1").object_id, force=True), now=4) == [
        CancelTimer(key="actor.push.t1")]
    assert core.actors.pending_calls == 0
