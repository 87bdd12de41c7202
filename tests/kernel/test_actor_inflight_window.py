"""Core worker actors: calls past ``inflight_max`` are pushed as answers open the window.

(A regression: a call that finished did not push the calls queued behind a full
window, so with more than ``inflight_max`` calls out to one actor the rest stayed
queued for ever.)
"""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.actor_protocol import (
    ActorCallSubmitted,
    ActorCreationRequested,
    ActorTaskDone,
    PushActorTask,
)
from shoal.kernel.core_worker.actors import ActorCallerConfig
from shoal.kernel.core_worker.core_worker import CoreWorkerConfig
from shoal.kernel.core_worker.protocol import ObjectResult, RefsChanged
from shoal.kernel.gcs.actor_protocol import (
    ActorInfo,
    ActorRegistered,
    ActorSpec,
    ActorTableUpdate,
    MethodMeta,
)
from shoal.kernel.ids import ActorId, ObjectId, TaskId
from shoal.kernel.messages import Address, CancelTimer, Received, Send, SetTimer, Started
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec

S = 1_000_000_000
DRIVER = Address(node="n0", component="driver")  # type: ignore[arg-type]
RAYLET = Address(node="n0", component="raylet")  # type: ignore[arg-type]
GCS = Address(node="n0", component="gcs")  # type: ignore[arg-type]
W1 = Address(node="n1", component="worker", worker="w1")  # type: ignore[arg-type]
A1 = ActorId("a1")


def _call(task_id: str) -> TaskSpec:
    return TaskSpec(task_id=TaskId(task_id), job_id="j", name="C.f", owner=DRIVER,
                    function_id="f", args=(), resources={})


def _push(spec: TaskSpec, seq: int, processed: int) -> PushActorTask:
    return PushActorTask(actor_id=A1, num_restarts=0, caller="0.1", seq=seq,
                         processed=processed, spec=spec, resolved=())


def _done(task_id: str) -> Received:
    result = ObjectResult(object_id=ObjectId(f"{task_id}.r0"), value=Payload(data=b"1"))
    return Received(src=W1, msg=ActorTaskDone(actor_id=A1, task_id=TaskId(task_id), attempt=0,
                                              results=(result,)))


def _driver(inflight_max: int) -> CoreWorker:
    config = CoreWorkerConfig(actors=ActorCallerConfig(inflight_max=inflight_max))
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS, config=config)
    core.handle(Started(), now=0)
    handle = ObjectRefInfo(object_id=ObjectId("a1.h"), owner=DRIVER)
    core.handle(RefsChanged(deltas=((handle, 1),)), now=0)
    creation = TaskSpec(task_id=TaskId("t0"), job_id="j", name="C.__init__", owner=DRIVER,
                        function_id="cls", args=(), resources={})
    spec = ActorSpec(actor_id=A1, creation=creation, class_name="C", placement={},
                     methods=(MethodMeta(name="f"),))
    core.handle(ActorCreationRequested(call_id=1, spec=spec, function=b"cls"), now=0)
    pending = ActorInfo(actor_id=A1, state="PENDING", version=1)
    core.handle(Received(src=GCS, msg=ActorRegistered(request_id=1, actor_id=A1,
                                                        info=pending)), now=1)
    return core


def test_an_answer_pushes_the_call_waiting_for_room_in_the_window() -> None:
    core = _driver(inflight_max=1)
    calls = [_call(f"t{i}") for i in range(1, 4)]
    for spec in calls:
        ref = ObjectRefInfo(object_id=ObjectId(f"{spec.task_id}.r0"), owner=DRIVER)
        core.handle(RefsChanged(deltas=((ref, 1),)), now=2)
        assert core.handle(ActorCallSubmitted(actor_id=A1, spec=spec), now=2) == []
    alive = ActorInfo(actor_id=A1, state="ALIVE", version=2, num_restarts=0, worker=W1,
                      node_id=W1.node)
    assert core.handle(Received(src=GCS, msg=ActorTableUpdate(actors=(alive,))), now=3) == [
        Send(dst=W1, msg=_push(calls[0], 0, processed=0)),
        SetTimer(key="actor.push.t1", at_ns=3 + S),
    ]
    assert core.handle(_done("t1"), now=4) == [
        CancelTimer(key="actor.push.t1"),
        Send(dst=W1, msg=_push(calls[1], 1, processed=1)),
        SetTimer(key="actor.push.t2", at_ns=4 + S),
    ]
    assert core.handle(_done("t2"), now=5) == [
        CancelTimer(key="actor.push.t2"),
        Send(dst=W1, msg=_push(calls[2], 2, processed=2)),
        SetTimer(key="actor.push.t3", at_ns=5 + S),
    ]
    assert core.handle(_done("t3"), now=6) == [CancelTimer(key="actor.push.t3")]
    core.check_invariants()
