"""Actor concurrency groups in the actor's worker (whole effect lists)."""

from __future__ import annotations

import msgspec
from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.actor_protocol import (
    ActorInstanceCreated,
    ActorTaskDone,
    ActorTaskExecuted,
    ExecuteActorTask,
)
from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.gcs.actor_protocol import CreateActor
from shoal.kernel.ids import TaskId
from shoal.kernel.messages import Address, Received, Send, Started
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskArg, TaskSpec

from tests.kernel.test_actor_submission import A1, DRIVER, GCS, W1, actor_spec, push


def grouped_host() -> CoreWorker:
    """Hosts actor a1: default group of 1, group "io" of 2."""
    core = CoreWorker(W1, raylet=Address(node="n1", component="raylet"), gcs=GCS)
    core.handle(Started(), now=0)
    spec = msgspec.structs.replace(actor_spec(), concurrency_groups={"io": 2})
    core.handle(Received(src=GCS, msg=CreateActor(spec=spec, function=b"cls", num_restarts=0,
                                                  lease_id="L1")), now=1)
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    return core


def call(task_id: str, group: str = "", args: tuple[TaskArg, ...] = ()) -> TaskSpec:
    return TaskSpec(task_id=TaskId(task_id), job_id="j", name="C.f", owner=DRIVER,
                    function_id="f", args=args, resources={}, concurrency_group=group)


def runs(spec: TaskSpec) -> ExecuteActorTask:
    return ExecuteActorTask(actor_id=A1, spec=spec, args=())


def finish(core: CoreWorker, task_id: str) -> list[object]:
    result = ObjectResult(object_id=f"{task_id}.r0", value=Payload(data=b"1"))  # type: ignore[arg-type]
    effects = core.handle(ActorTaskExecuted(actor_id=A1, task_id=TaskId(task_id), attempt=0,
                                            results=(result,)), now=5)
    assert effects[0] == Send(dst=DRIVER, msg=ActorTaskDone(
        actor_id=A1, task_id=TaskId(task_id), attempt=0, results=(result,)))
    core.check_invariants()
    return effects[1:]


def test_each_group_has_its_own_limit_and_queue() -> None:
    core = grouped_host()
    specs = [call("d1"), call("d2"), call("i1", "io"), call("i2", "io"), call("i3", "io")]
    started = []
    for seq, spec in enumerate(specs):
        started += core.handle(Received(src=DRIVER, msg=push(spec, seq)), now=3)
    assert started == [runs(specs[0]), runs(specs[2]), runs(specs[3])], (
        "d2 waits for d1 (default group of 1); i1 and i2 run beside it (io group of 2)")
    core.check_invariants()
    assert finish(core, "i1") == [runs(specs[4])], "io has room again: its next call"
    assert finish(core, "d1") == [runs(specs[1])]
    assert finish(core, "i2") == [] and finish(core, "i3") == [] and finish(core, "d2") == []


def test_a_group_waiting_for_arguments_does_not_hold_back_another() -> None:
    core = grouped_host()
    missing = ObjectRefInfo(object_id="p1", owner=DRIVER)  # type: ignore[arg-type]
    waiting = call("i1", "io", args=(TaskArg(ref=missing),))
    effects = core.handle(Received(src=DRIVER, msg=push(waiting, 0)), now=3)
    assert not any(isinstance(e, ExecuteActorTask) for e in effects), "its argument is fetched"
    other = call("d1")
    assert core.handle(Received(src=DRIVER, msg=push(other, 1)), now=3) == [runs(other)]


def test_a_group_the_actor_does_not_define_runs_in_the_default_group() -> None:
    core = grouped_host()
    first, second = call("d1"), call("x1", "nope")
    core.handle(Received(src=DRIVER, msg=push(first, 0)), now=3)
    assert core.handle(Received(src=DRIVER, msg=push(second, 1)), now=3) == []
    assert finish(core, "d1") == [runs(second)]
