"""Streaming generator tasks (issue 5): whole-effect-list tests of the owner's stream
table and the executor's outbox (kernel/core_worker/streams.py)."""

from __future__ import annotations

import msgspec
from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.protocol import (
    ExecuteTask,
    ObjectError,
    ObjectResult,
    PushTask,
    RefsChanged,
    TaskDone,
    TaskExecuted,
    TaskSubmitted,
)
from shoal.kernel.core_worker.stream_protocol import (
    StreamItem,
    StreamItemAck,
    StreamItemProduced,
    StreamNextCompleted,
    StreamNextRequested,
)
from shoal.kernel.core_worker.streams import stream_head_id, stream_item_id
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    TimerFired,
)
from shoal.kernel.raylet.protocol import (
    LeasedWorkerDied,
    LeaseGranted,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
)
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec
from shoal.kernel.wire import Envelope, decode, encode

S = 1_000_000_000
DRIVER = Address(node="n0", component="driver")
RAYLET = Address(node="n0", component="raylet")
GCS = Address(node="n0", component="gcs")
WORKER = Address(node="n0", component="worker", worker="w1")
WORKER2 = Address(node="n0", component="worker", worker="w2")


def stream_spec(retries: int = 3, attempt: int = 0) -> TaskSpec:
    return TaskSpec(task_id="t1", job_id="j", name="gen", owner=DRIVER, function_id="fn",
                    args=(), num_returns=1, max_retries=retries, streaming=True, attempt=attempt)


def item(index: int, data: bytes = b"", attempt: int = 0) -> StreamItem:
    result = ObjectResult(object_id=stream_item_id("t1", index),
                          value=Payload(data=data or f"v{index}".encode()))
    return StreamItem(task_id="t1", attempt=attempt, index=index, result=result)


def ref(index: int) -> ObjectRefInfo:
    return ObjectRefInfo(object_id=stream_item_id("t1", index), owner=DRIVER)


HEAD = ObjectRefInfo(object_id=stream_head_id("t1"), owner=DRIVER)


def ack(index: int, attempt: int = 0, dst: Address = WORKER) -> Send:
    return Send(dst=dst, msg=StreamItemAck(task_id="t1", attempt=attempt, index=index))


def owner_with_pushed_stream(retries: int = 3) -> CoreWorker:
    """A driver that submitted streaming task t1 (holding its generator's head ref) and
    pushed it to WORKER on lease L1."""
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS)
    core.handle(Started(), now=0)
    core.handle(RefsChanged(deltas=((HEAD, 1),)), now=0)
    core.handle(TaskSubmitted(spec=stream_spec(retries), function=b"code"), now=0)
    effects = core.handle(Received(src=RAYLET, msg=LeaseGranted(
        request_id=1, lease_id="L1", worker=WORKER, node_id="n0")), now=0)
    assert Send(dst=WORKER, msg=PushTask(lease_id="L1", spec=stream_spec(retries),
                                         function=b"code", resolved=())) in effects
    return core


def done(count: int, *, error: ObjectError | None = None, attempt: int = 0) -> TaskDone:
    head = (ObjectResult(object_id=stream_head_id("t1"), error=error) if error else
            ObjectResult(object_id=stream_head_id("t1"), value=Payload(data=b"N")))
    return TaskDone(task_id="t1", attempt=attempt, results=(head,), stream_count=count)


# --- owner side -------------------------------------------------------------------


def test_item_is_acked_and_handed_to_a_waiting_consumer_before_the_task_ends() -> None:
    core = owner_with_pushed_stream()
    assert core.handle(StreamNextRequested(call_id=1, task_id="t1", index=0), now=1) == []
    assert core.handle(Received(src=WORKER, msg=item(0)), now=2) == [
        ack(0), StreamNextCompleted(call_id=1, ref=ref(0))]
    assert core.submitter.is_pending("t1"), "the task still runs"
    # The held count passed to the consumer: dropping its ref frees the item.
    assert stream_item_id("t1", 0) in core.objects
    core.handle(RefsChanged(deltas=((ref(0), -1),)), now=3)
    assert stream_item_id("t1", 0) not in core.objects


def test_items_out_of_order_and_duplicated_are_recorded_once() -> None:
    core = owner_with_pushed_stream()
    assert core.handle(Received(src=WORKER, msg=item(1)), now=1) == [ack(1)]
    assert core.handle(Received(src=WORKER, msg=item(1)), now=2) == [ack(1)], "duplicate"
    assert core.handle(StreamNextRequested(call_id=1, task_id="t1", index=0,
                                           timeout_ns=S), now=3) == [
        SetTimer(key="stream.next.1", at_ns=3 + S)]
    assert core.handle(Received(src=WORKER, msg=item(0)), now=4) == [
        ack(0), CancelTimer(key="stream.next.1"), StreamNextCompleted(call_id=1, ref=ref(0))]
    assert core.handle(StreamNextRequested(call_id=2, task_id="t1", index=1), now=5) == [
        StreamNextCompleted(call_id=2, ref=ref(1))]


def test_stream_ends_at_the_reported_count_and_late_items_are_only_acked() -> None:
    core = owner_with_pushed_stream()
    core.handle(Received(src=WORKER, msg=item(0)), now=1)
    assert core.handle(StreamNextRequested(call_id=1, task_id="t1", index=1), now=2) == []
    assert core.handle(Received(src=WORKER, msg=done(1)), now=3) == [
        CancelTimer(key="task.push.t1"),
        StreamNextCompleted(call_id=1),  # index 1 is past the end: StopIteration
        Send(dst=RAYLET, msg=ReturnWorker(lease_id="L1")),
        SetTimer(key="lease.return.L1", at_ns=3 + S),
    ]
    assert core.handle(Received(src=WORKER, msg=item(0)), now=4) == [ack(0)]
    assert core.handle(StreamNextRequested(call_id=2, task_id="t1", index=0), now=5) == [
        StreamNextCompleted(call_id=2, ref=ref(0))]
    assert core.handle(StreamNextRequested(call_id=3, task_id="t1", index=1), now=6) == [
        StreamNextCompleted(call_id=3)]


def test_error_after_k_items_becomes_item_k() -> None:
    core = owner_with_pushed_stream()
    core.handle(Received(src=WORKER, msg=item(0)), now=1)
    core.handle(Received(src=WORKER, msg=item(1)), now=1)
    error = ObjectError(kind="task_error", message="gen raised ValueError: boom")
    core.handle(Received(src=WORKER, msg=done(2, error=error)), now=2)
    assert core.handle(StreamNextRequested(call_id=1, task_id="t1", index=2), now=3) == [
        StreamNextCompleted(call_id=1, ref=ref(2))]
    assert core.objects.result(stream_item_id("t1", 2)) == ObjectResult(
        object_id=stream_item_id("t1", 2), error=error)
    assert core.handle(StreamNextRequested(call_id=2, task_id="t1", index=3), now=4) == [
        StreamNextCompleted(call_id=2)]


def test_next_times_out_and_a_later_item_is_kept_for_the_next_call() -> None:
    core = owner_with_pushed_stream()
    core.handle(StreamNextRequested(call_id=1, task_id="t1", index=0, timeout_ns=S), now=0)
    assert core.handle(TimerFired(key="stream.next.1"), now=S) == [
        StreamNextCompleted(call_id=1, timed_out=True)]
    assert core.handle(Received(src=WORKER, msg=item(0)), now=S + 1) == [ack(0)]
    assert core.handle(StreamNextRequested(call_id=2, task_id="t1", index=0), now=S + 2) == [
        StreamNextCompleted(call_id=2, ref=ref(0))]


def test_retry_after_worker_death_does_not_duplicate_items() -> None:
    core = owner_with_pushed_stream()
    core.handle(Received(src=WORKER, msg=item(0)), now=1)
    effects = core.handle(Received(src=RAYLET, msg=LeasedWorkerDied(
        lease_id="L1", worker=WORKER, cause="killed")), now=2)
    assert isinstance(effects[1], Send) and isinstance(effects[1].msg, RequestWorkerLease)
    effects = core.handle(Received(src=RAYLET, msg=LeaseGranted(
        request_id=2, lease_id="L2", worker=WORKER2, node_id="n0")), now=3)
    assert Send(dst=WORKER2, msg=PushTask(lease_id="L2", spec=stream_spec(attempt=1),
                                          function=b"code", resolved=())) in effects
    # The new attempt re-yields item 0: acked, not recorded again.
    assert core.handle(Received(src=WORKER2, msg=item(0, attempt=1)), now=4) == [
        ack(0, attempt=1, dst=WORKER2)]
    assert core.handle(Received(src=WORKER2, msg=item(1, attempt=1)), now=5) == [
        ack(1, attempt=1, dst=WORKER2)]
    core.handle(Received(src=WORKER2, msg=done(2, attempt=1)), now=6)
    answers = [core.handle(StreamNextRequested(call_id=i, task_id="t1", index=i), now=7)
               for i in range(3)]
    assert answers == [[StreamNextCompleted(call_id=0, ref=ref(0))],
                       [StreamNextCompleted(call_id=1, ref=ref(1))],
                       [StreamNextCompleted(call_id=2)]]


def test_worker_death_with_no_retries_ends_the_stream_with_the_crash() -> None:
    core = owner_with_pushed_stream(retries=0)
    core.handle(Received(src=WORKER, msg=item(0)), now=1)
    core.handle(StreamNextRequested(call_id=1, task_id="t1", index=1), now=1)
    effects = core.handle(Received(src=RAYLET, msg=LeasedWorkerDied(
        lease_id="L1", worker=WORKER, cause="killed")), now=2)
    assert StreamNextCompleted(call_id=1, ref=ref(1)) in effects
    error = core.objects.result(stream_item_id("t1", 1)).error  # type: ignore[union-attr]
    assert error is not None and error.kind == "worker_crashed"


def test_dropping_the_generator_lets_go_of_unconsumed_items() -> None:
    core = owner_with_pushed_stream()
    for index in range(3):
        core.handle(Received(src=WORKER, msg=item(index)), now=1)
    core.handle(StreamNextRequested(call_id=1, task_id="t1", index=0), now=2)  # consumed
    core.handle(RefsChanged(deltas=((HEAD, -1),)), now=3)  # generator dropped mid-stream
    assert stream_item_id("t1", 1) in core.objects, "held until the task ends"
    core.handle(Received(src=WORKER, msg=done(3)), now=4)
    assert [oid for oid in core.objects.owned_ids()] == [stream_item_id("t1", 0)]
    assert core.streams.open_streams == 0
    assert core.handle(Received(src=WORKER, msg=item(2)), now=5) == [ack(2)], "late: acked"
    core.handle(RefsChanged(deltas=((ref(0), -1),)), now=6)
    assert len(core.objects) == 0


def test_bad_item_from_a_peer_is_rejected() -> None:
    core = owner_with_pushed_stream()
    bad = msgspec.structs.replace(item(0), index=5)  # names item 0's object
    effects = core.handle(Received(src=WORKER, msg=bad), now=1)
    assert len(effects) == 1 and isinstance(effects[0], Send)
    assert isinstance(effects[0].msg, Rejected) and "expected t1.r6" in effects[0].msg.reason
    core.check_invariants()


# --- executor side ----------------------------------------------------------------


def worker_running_stream() -> CoreWorker:
    core = CoreWorker(WORKER, raylet=RAYLET, gcs=GCS)
    assert core.handle(Started(), now=0)[-1] == Send(dst=RAYLET, msg=RegisterWorker(worker_id="w1"))
    push = PushTask(lease_id="L1", spec=stream_spec(), function=b"code")
    assert core.handle(Received(src=DRIVER, msg=push), now=0) == [
        ExecuteTask(spec=stream_spec(), args=(), function=b"code")]
    return core


def produced(index: int) -> StreamItemProduced:
    msg = item(index)
    return StreamItemProduced(task_id="t1", attempt=0, index=index, result=msg.result)


def test_executor_sends_each_item_at_once_and_resends_until_acked() -> None:
    core = worker_running_stream()
    assert core.handle(produced(0), now=1) == [
        Send(dst=DRIVER, msg=item(0)), SetTimer(key="stream.resend.t1", at_ns=1 + S)]
    assert core.handle(produced(1), now=2) == [Send(dst=DRIVER, msg=item(1))]
    assert core.handle(Received(src=DRIVER, msg=StreamItemAck(
        task_id="t1", attempt=0, index=0)), now=3) == []
    assert core.handle(TimerFired(key="stream.resend.t1"), now=1 + S) == [
        Send(dst=DRIVER, msg=item(1)), SetTimer(key="stream.resend.t1", at_ns=1 + 2 * S)]
    assert core.handle(Received(src=DRIVER, msg=StreamItemAck(
        task_id="t1", attempt=0, index=1)), now=2 * S) == [CancelTimer(key="stream.resend.t1")]


def test_executor_answers_task_done_only_once_every_item_is_acked() -> None:
    core = worker_running_stream()
    core.handle(produced(0), now=1)
    head = done(1).results
    assert core.handle(TaskExecuted(task_id="t1", attempt=0, results=head, stream_count=1),
                       now=2) == [], "item 0 is not acknowledged yet"
    assert core.executor.busy
    assert core.handle(Received(src=DRIVER, msg=StreamItemAck(
        task_id="t1", attempt=0, index=0)), now=3) == [
        CancelTimer(key="stream.resend.t1"), Send(dst=DRIVER, msg=done(1))]
    assert not core.executor.busy
    assert core.handle(Received(src=DRIVER, msg=StreamItemAck(
        task_id="t1", attempt=0, index=0)), now=4) == [], "a duplicate ack"


def test_stream_messages_cross_the_wire() -> None:
    for msg in (item(3), StreamItemAck(task_id="t1", attempt=2, index=3), done(4)):
        envelope = Envelope(src=WORKER, dst=DRIVER, msg=msg)
        assert decode(encode(envelope)) == envelope


def test_a_lost_stored_item_of_a_running_stream_fails_as_lost() -> None:
    from shoal.kernel.raylet.object_protocol import ObjectLocationRemoved

    core = owner_with_pushed_stream()
    stored = ObjectResult(object_id=stream_item_id("t1", 0), value=Payload(data=b""),
                          stored=True, locations=("n0",), size=200_000)
    core.handle(Received(src=WORKER, msg=StreamItem(task_id="t1", attempt=0, index=0,
                                                    result=stored)), now=1)
    core.handle(Received(src=RAYLET, msg=ObjectLocationRemoved(
        object_id=stream_item_id("t1", 0), node_id="n0")), now=2)
    error = core.objects.result(stream_item_id("t1", 0)).error  # type: ignore[union-attr]
    assert error is not None and error.kind == "object_lost"
    assert core.submitter.is_pending("t1"), "the stream goes on"


# --- actor generator methods --------------------------------------------------------


def test_actor_host_streams_items_and_answers_after_the_last_ack() -> None:
    from shoal.kernel.core_worker.actor_protocol import (
        ActorInstanceCreated,
        ActorTaskDone,
        ActorTaskExecuted,
        ExecuteActorTask,
    )

    from tests.kernel.test_actor_submission import A1, hosting, push

    core = hosting()
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    spec = TaskSpec(task_id="t1", job_id="j", name="C.f", owner=DRIVER, function_id="f",
                    args=(), resources={}, max_retries=0, streaming=True)
    assert core.handle(Received(src=DRIVER, msg=push(spec, 0)), now=3) == [
        ExecuteActorTask(actor_id=A1, spec=spec, args=())]
    assert core.handle(produced(0), now=4) == [
        Send(dst=DRIVER, msg=item(0)), SetTimer(key="stream.resend.t1", at_ns=4 + S)]
    head = done(1).results
    assert core.handle(ActorTaskExecuted(actor_id=A1, task_id="t1", attempt=0, results=head,
                                         stream_count=1), now=5) == []
    answer = ActorTaskDone(actor_id=A1, task_id="t1", attempt=0, results=head, stream_count=1)
    assert core.handle(TimerFired(key="stream.resend.t1"), now=4 + S) == [
        Send(dst=DRIVER, msg=item(0)), SetTimer(key="stream.resend.t1", at_ns=4 + 2 * S)]
    assert core.handle(Received(src=DRIVER, msg=StreamItemAck(
        task_id="t1", attempt=0, index=0)), now=5 + S) == [
        CancelTimer(key="stream.resend.t1"), Send(dst=DRIVER, msg=answer)]
