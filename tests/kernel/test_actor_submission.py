"""Core worker actors: whole-effect-list tests of the caller side and the actor's worker."""

from __future__ import annotations

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.actor_protocol import (
    ActorCallRefused,
    ActorCallSubmitted,
    ActorCreationRequested,
    ActorInstanceCreated,
    ActorKillRequested,
    ActorLookupRequested,
    ActorRequestCompleted,
    ActorTaskAck,
    ActorTaskDone,
    ActorTaskExecuted,
    ActorTaskRejected,
    CreateActorInstance,
    ExecuteActorTask,
    PushActorTask,
)
from shoal.kernel.core_worker.protocol import (
    GetCompleted,
    GetObject,
    GetRequested,
    ObjectError,
    ObjectResult,
    ObjectStatus,
    RefsChanged,
)
from shoal.kernel.gcs.actor_protocol import (
    ActorCreated,
    ActorCreating,
    ActorDeathCause,
    ActorHandleInfo,
    ActorInfo,
    ActorRegistered,
    ActorSpec,
    ActorTableUpdate,
    ActorVersion,
    CreateActor,
    GetNamedActor,
    KillActor,
    KillActorReply,
    MethodMeta,
    NamedActorReply,
    PollActors,
    RegisterActor,
)
from shoal.kernel.ids import ActorId, TaskId
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Send,
    SetTimer,
    Started,
    TimerFired,
)
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskArg, TaskSpec

S = 1_000_000_000
DRIVER = Address(node="n0", component="driver")
RAYLET = Address(node="n0", component="raylet")
GCS = Address(node="n0", component="gcs")
W1 = Address(node="n1", component="worker", worker="w1")
W2 = Address(node="n2", component="worker", worker="w2")
OTHER = Address(node="n2", component="worker", worker="w9")
A1 = ActorId("a1")


def actor_spec(*, max_restarts: int = 1, max_concurrency: int = 1,
               args: tuple[TaskArg, ...] = ()) -> ActorSpec:
    creation = TaskSpec(task_id="t0", job_id="j", name="C.__init__", owner=DRIVER,
                        function_id="cls", args=args, resources={})
    return ActorSpec(actor_id=A1, creation=creation, class_name="C", placement={"CPU": 1.0},
                     max_restarts=max_restarts, max_concurrency=max_concurrency,
                     methods=(MethodMeta(name="f"),))


def call(task_id: str, retries: int = 0, owner: Address = DRIVER) -> TaskSpec:
    return TaskSpec(task_id=TaskId(task_id), job_id="j", name="C.f", owner=owner,
                    function_id="f", args=(), resources={}, max_retries=retries)


def ref(task_id: str, owner: Address = DRIVER) -> ObjectRefInfo:
    return ObjectRefInfo(object_id=f"{task_id}.r0", owner=owner)  # type: ignore[arg-type]


def table(*infos: ActorInfo) -> Received:
    return Received(src=GCS, msg=ActorTableUpdate(actors=infos))


def alive(version: int, worker: Address = W1, restarts: int = 0) -> ActorInfo:
    return ActorInfo(actor_id=A1, state="ALIVE", version=version, num_restarts=restarts,
                     worker=worker, node_id=worker.node)  # type: ignore[arg-type]


def push(spec: TaskSpec, seq: int, *, processed: int = 0, restarts: int = 0,
         session: str = "0.1") -> PushActorTask:
    return PushActorTask(actor_id=A1, num_restarts=restarts, caller=session, seq=seq,
                         processed=processed, spec=spec, resolved=())


def driver_with_actor(max_restarts: int = 1) -> CoreWorker:
    """A driver that created (and registered) actor a1, holding one handle to it."""
    core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS)
    core.handle(Started(), now=0)
    handle = ObjectRefInfo(object_id="a1.h", owner=DRIVER)  # type: ignore[arg-type]
    core.handle(RefsChanged(deltas=((handle, 1),)), now=0)
    spec = actor_spec(max_restarts=max_restarts)
    assert core.handle(ActorCreationRequested(call_id=1, spec=spec, function=b"cls"), now=0) == [
        Send(dst=GCS, msg=RegisterActor(request_id=1, spec=spec, function=b"cls")),
        SetTimer(key="actor.request.1", at_ns=S // 5),
    ]
    pending = ActorInfo(actor_id=A1, state="PENDING", version=1)
    reply = ActorRegistered(request_id=1, actor_id=A1, info=pending)
    assert core.handle(Received(src=GCS, msg=reply), now=1) == [
        CancelTimer(key="actor.request.1"),
        SetTimer(key="actor.poll", at_ns=1 + S // 2),
        ActorRequestCompleted(call_id=1, info=pending, created=True),
    ]
    return core


def submit(core: CoreWorker, spec: TaskSpec, retries: int = 0, now: int = 2,
           pending_max: int = -1) -> list[Msg]:
    core.handle(RefsChanged(deltas=((ref(spec.task_id), 1),)), now=now)
    return core.handle(ActorCallSubmitted(actor_id=A1, spec=spec, max_task_retries=retries,
                                          max_pending_calls=pending_max), now=now)


def test_calls_wait_while_pending_and_go_in_order_once_alive() -> None:
    core = driver_with_actor()
    first, second = call("t1"), call("t2")
    assert submit(core, first) == [] and submit(core, second) == []
    assert core.handle(table(alive(3)), now=3) == [
        Send(dst=W1, msg=push(first, 0)), SetTimer(key="actor.push.t1", at_ns=3 + S),
        Send(dst=W1, msg=push(second, 1)), SetTimer(key="actor.push.t2", at_ns=3 + S),
    ]
    assert core.handle(TimerFired(key="actor.push.t1"), now=3 + S) == [
        Send(dst=W1, msg=push(first, 0)), SetTimer(key="actor.push.t1", at_ns=3 + 2 * S)]
    result = ObjectResult(object_id="t1.r0", value=Payload(data=b"1"))  # type: ignore[arg-type]
    done = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0, results=(result,))
    assert core.handle(Received(src=W1, msg=done), now=4) == [CancelTimer(key="actor.push.t1")]
    assert core.handle(Received(src=W1, msg=done), now=5) == [], "a duplicate is a no-op"
    assert core.handle(GetRequested(call_id=9, refs=(ref("t1"),)), now=6) == [
        GetCompleted(call_id=9, results=(result,))]
    third = call("t3")
    assert submit(core, third, now=7) == [
        Send(dst=W1, msg=push(third, 2, processed=1)), SetTimer(key="actor.push.t3", at_ns=7 + S)]
    core.check_invariants()


def test_a_restart_retries_calls_that_may_be_retried_and_fails_the_others() -> None:
    core = driver_with_actor()
    once, again = call("t1"), call("t2", retries=1)
    submit(core, once)
    submit(core, again, retries=1)
    core.handle(table(alive(3)), now=3)
    restarting = ActorInfo(actor_id=A1, state="RESTARTING", version=4, num_restarts=1)
    assert core.handle(table(restarting), now=4) == [
        CancelTimer(key="actor.push.t1"), CancelTimer(key="actor.push.t2")]
    failed = core.objects.result(ref("t1").object_id)
    assert failed is not None and failed.error is not None and failed.error.kind == "actor_died"
    assert "max_task_retries" in failed.error.message
    retried = TaskSpec(**{**{f: getattr(again, f) for f in again.__struct_fields__},
                          "attempt": 1})
    assert core.handle(table(alive(6, worker=W2, restarts=1)), now=6) == [
        Send(dst=W2, msg=push(retried, 0, restarts=1)), SetTimer(key="actor.push.t2", at_ns=6 + S)]
    assert core.actors.known_incarnation(A1) == 1 and core.actors.known_restarts(A1) == 1


def test_death_fails_pending_calls_and_later_calls_at_once() -> None:
    core = driver_with_actor()
    submit(core, call("t1"))
    cause = ActorDeathCause(kind="killed", message="it was killed")
    dead = ActorInfo(actor_id=A1, state="DEAD", version=5, death=cause)
    assert core.handle(table(dead), now=5) == [CancelTimer(key="actor.push.t1")]
    submit(core, call("t2"), now=6)
    for task in ("t1", "t2"):
        result = core.objects.result(ref(task).object_id)
        assert result is not None and result.error == ObjectError(
            kind="actor_died", message="it was killed")
    assert core.actors.pending_calls == 0
    core.handle(TimerFired(key="actor.poll"), now=S)
    assert core.handle(TimerFired(key="actor.poll"), now=2 * S) == [], "nothing left to watch"


def test_max_pending_calls_refuses_at_once() -> None:
    core = driver_with_actor()
    submit(core, call("t1"), pending_max=1)
    effects = submit(core, call("t2"), pending_max=1)
    assert len(effects) == 1 and isinstance(effects[0], ActorCallRefused)
    assert effects[0].task_id == "t2" and "max_pending_calls=1" in effects[0].message
    result = core.objects.result(ref("t2").object_id)
    assert result is not None and result.error is not None
    assert result.error.kind == "pending_calls_exceeded"


def test_dropping_every_handle_stops_the_actor_once_its_calls_are_done() -> None:
    core = driver_with_actor()
    submit(core, call("t1"))
    handle = ObjectRefInfo(object_id="a1.h", owner=DRIVER)  # type: ignore[arg-type]
    assert core.handle(RefsChanged(deltas=((handle, -1),)), now=3) == [], "a call is pending"
    core.handle(table(alive(3)), now=3)
    result = ObjectResult(object_id="t1.r0", value=Payload(data=b"1"))  # type: ignore[arg-type]
    done = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0, results=(result,))
    assert core.handle(Received(src=W1, msg=done), now=4) == [
        CancelTimer(key="actor.push.t1"),
        Send(dst=GCS, msg=KillActor(request_id=2, actor_id=A1, out_of_scope=True)),
        SetTimer(key="actor.request.2", at_ns=4 + S // 5),
    ]


def test_rejected_push_polls_the_gcs_and_lookups_and_kills_wait_for_it() -> None:
    core = driver_with_actor()
    submit(core, call("t1"))
    core.handle(table(alive(3)), now=3)
    stale = ActorTaskRejected(actor_id=A1, num_restarts=0, task_id=TaskId("t1"), reason="x")
    assert core.handle(Received(src=W1, msg=stale), now=4) == [
        Send(dst=GCS, msg=PollActors(known=(ActorVersion(actor_id=A1, version=3),)))]
    assert core.handle(ActorLookupRequested(call_id=7, name="c", namespace="ns"), now=5) == [
        Send(dst=GCS, msg=GetNamedActor(request_id=2, name="c", namespace="ns")),
        SetTimer(key="actor.request.2", at_ns=5 + S // 5)]
    handle = ActorHandleInfo(actor_id=A1, class_name="C", owner=DRIVER)
    assert core.handle(Received(src=GCS, msg=NamedActorReply(request_id=2, handle=handle)),
                       now=6) == [CancelTimer(key="actor.request.2"),
                                  ActorRequestCompleted(call_id=7, handle=handle)]
    assert core.handle(ActorKillRequested(call_id=8, actor_id=A1), now=7) == [
        CancelTimer(key="actor.push.t1"),
        Send(dst=GCS, msg=KillActor(request_id=3, actor_id=A1)),
        SetTimer(key="actor.request.3", at_ns=7 + S // 5)]
    killed = core.objects.result(ref("t1").object_id)
    assert killed is not None and killed.error is not None and killed.error.kind == "actor_died"
    reply = KillActorReply(request_id=3, actor_id=A1, found=True)
    assert core.handle(Received(src=GCS, msg=reply), now=8) == [
        CancelTimer(key="actor.request.3"), ActorRequestCompleted(call_id=8)]


# --- the actor's worker ----------------------------------------------------------


def hosting(max_concurrency: int = 1, args: tuple[TaskArg, ...] = ()) -> CoreWorker:
    core = CoreWorker(W1, raylet=Address(node="n1", component="raylet"), gcs=GCS)
    core.handle(Started(), now=0)
    spec = actor_spec(max_concurrency=max_concurrency, args=args)
    create = CreateActor(spec=spec, function=b"cls", num_restarts=0, lease_id="L1")
    effects = core.handle(Received(src=GCS, msg=create), now=1)
    if not args:
        assert effects == [
            Send(dst=GCS, msg=ActorCreating(actor_id=A1, num_restarts=0)),
            CreateActorInstance(spec=spec, num_restarts=0, args=(), function=b"cls"),
        ]
    return core


def test_the_worker_creates_the_actor_once_and_answers_retransmits() -> None:
    core = hosting()
    create = CreateActor(spec=actor_spec(), function=b"cls", num_restarts=0, lease_id="L1")
    assert core.handle(Received(src=GCS, msg=create), now=2) == [
        Send(dst=GCS, msg=ActorCreating(actor_id=A1, num_restarts=0))]
    assert core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=3) == [
        Send(dst=GCS, msg=ActorCreated(actor_id=A1, num_restarts=0))]
    assert core.handle(Received(src=GCS, msg=create), now=4) == [
        Send(dst=GCS, msg=ActorCreated(actor_id=A1, num_restarts=0))]
    other = CreateActor(spec=actor_spec(), function=b"cls", num_restarts=1, lease_id="L2")
    refused = core.handle(Received(src=GCS, msg=other), now=5)
    assert len(refused) == 1 and "hosts one actor for its whole life" in str(refused[0])


def test_calls_run_in_sequence_order_whatever_order_they_arrive_in() -> None:
    core = hosting()
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    first, second = call("t1"), call("t2")
    ack2 = Send(dst=DRIVER, msg=ActorTaskAck(task_id=TaskId("t2"), attempt=0))
    assert core.handle(Received(src=DRIVER, msg=push(second, 1)), now=3) == [], (
        "a first push is not acked: its answer will follow")
    assert core.handle(Received(src=DRIVER, msg=push(first, 0)), now=4) == [
        ExecuteActorTask(actor_id=A1, spec=first, args=())]
    assert core.handle(Received(src=DRIVER, msg=push(second, 1)), now=5) == [ack2], (
        "a retransmit of a pending call is acked")
    result = ObjectResult(object_id="t1.r0", value=Payload(data=b"1"))  # type: ignore[arg-type]
    done = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0, results=(result,))
    assert core.handle(ActorTaskExecuted(actor_id=A1, task_id=TaskId("t1"), attempt=0,
                                         results=(result,)), now=6) == [
        Send(dst=DRIVER, msg=done), ExecuteActorTask(actor_id=A1, spec=second, args=())]
    assert core.handle(Received(src=DRIVER, msg=push(first, 0)), now=7) == [
        Send(dst=DRIVER, msg=done)], "a retransmit of a finished call gets its answer again"
    assert core.handle(Received(src=DRIVER, msg=push(first, 0, processed=1)), now=8) == [], (
        "once the caller has the answer it is forgotten")
    other_session = push(call("t7"), 0, session="9.1")
    assert core.handle(Received(src=OTHER, msg=other_session), now=9) == [], (
        "another caller's first call waits for the running one (max_concurrency=1)")
    stale = push(call("t8"), 0, restarts=3)
    effects = core.handle(Received(src=DRIVER, msg=stale), now=10)
    assert len(effects) == 1 and isinstance(effects[0].msg, ActorTaskRejected)  # type: ignore[attr-defined]


def test_max_concurrency_lets_calls_run_together() -> None:
    core = hosting(max_concurrency=2)
    core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0), now=2)
    started = []
    for seq, task in enumerate(("t1", "t2", "t3")):
        started += [e for e in core.handle(Received(src=DRIVER, msg=push(call(task), seq)),
                                           now=3) if isinstance(e, ExecuteActorTask)]
    assert [e.spec.task_id for e in started] == ["t1", "t2"]
    core.check_invariants()


def test_a_failed_constructor_fails_every_call() -> None:
    core = hosting()
    cause = ActorDeathCause(kind="creation_failed", message="boom", data=b"e")
    assert core.handle(ActorInstanceCreated(actor_id=A1, num_restarts=0, error=cause), now=2) == [
        Send(dst=GCS, msg=ActorCreated(actor_id=A1, num_restarts=0, error=cause))]
    error = ObjectError(kind="actor_died", message="boom", data=b"e")
    done = ActorTaskDone(actor_id=A1, task_id=TaskId("t1"), attempt=0, results=(
        ObjectResult(object_id="t1.r0", error=error),))  # type: ignore[arg-type]
    assert core.handle(Received(src=DRIVER, msg=push(call("t1"), 0)), now=3) == [
        Send(dst=DRIVER, msg=done)]


def test_constructor_ref_arguments_are_fetched_from_their_owner_first() -> None:
    arg = ObjectRefInfo(object_id="p1", owner=DRIVER)  # type: ignore[arg-type]
    core = hosting(args=(TaskArg(ref=arg),))
    assert core.actor_host.phase.value == "constructing"
    value = Payload(data=b"v")
    effects = core.handle(Received(src=DRIVER, msg=ObjectStatus(result=ObjectResult(
        object_id="p1", value=value))), now=2)  # type: ignore[arg-type]
    assert CreateActorInstance(spec=actor_spec(args=(TaskArg(ref=arg),)), num_restarts=0,
                               args=(value,), function=b"cls") in effects
    assert GetObject(object_id="p1") not in [getattr(e, "msg", None) for e in effects]  # type: ignore[arg-type]
