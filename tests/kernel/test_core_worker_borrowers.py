"""Borrower forwarding: a ref owned by a third process O changes hands through a task.

Three core workers (the owner O, a driver D, a worker W) talk through a small
in-test network that delivers messages in a seeded random order, duplicates some,
and fires the retransmit timers of object forwarding when nothing else is in flight.
Raylet messages are answered by a stub (every lease goes to the worker the test names).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.protocol import (
    AddBorrower,
    BorrowerAdded,
    BorrowRegistered,
    ExecuteTask,
    GetObject as GetObjectMsg,
    GetCompleted,
    GetRequested,
    ObjectPut,
    ObjectResult,
    RefReleased,
    RefsChanged,
    RegisterBorrow,
    TaskDone,
    TaskExecuted,
    TaskSubmitted,
)
from shoal.kernel.ids import TaskId
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
from shoal.kernel.raylet.protocol import (
    LeaseGranted,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
)
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskArg, TaskSpec

GCS = Address(node="n0", component="gcs")
O = Address(node="n1", component="worker", worker="o")
D = Address(node="n0", component="driver")
W = Address(node="n2", component="worker", worker="w")
X = ObjectRefInfo(object_id="x1", owner=O)  # type: ignore[arg-type]


def raylet_of(address: Address) -> Address:
    return Address(node=address.node, component="raylet")


@dataclass
class Net:
    rng: random.Random
    duplicate: float = 0.0
    cores: dict[Address, CoreWorker] = field(default_factory=dict)
    lease_to: dict[Address, Address] = field(default_factory=dict)  # submitter -> worker
    inflight: list[tuple[Address, Address, Msg]] = field(default_factory=list)
    timers: dict[tuple[Address, str], None] = field(default_factory=dict)
    host: dict[Address, list[Msg]] = field(default_factory=dict)
    leases: int = 0

    def add(self, address: Address) -> CoreWorker:
        core = CoreWorker(address, raylet=raylet_of(address), gcs=GCS)
        self.cores[address] = core
        self.host[address] = []
        self.feed(address, Started())
        return core

    def feed(self, address: Address, event: object) -> list[Msg]:
        effects = self.cores[address].handle(event, now=0)  # type: ignore[arg-type]
        self.cores[address].check_invariants()
        for effect in effects:
            self._carry(address, effect)
        return effects

    def _carry(self, src: Address, effect: Msg) -> None:
        match effect:
            case Send(dst=dst, msg=msg) if dst in self.cores:
                self.inflight.append((src, dst, msg))
            case Send(msg=RequestWorkerLease(request_id=request_id)):
                self.leases += 1
                worker = self.lease_to[src]
                grant = LeaseGranted(request_id=request_id, lease_id=f"L{self.leases}",
                                     worker=worker, node_id=worker.node)
                self.inflight.append((raylet_of(src), src, grant))
            case Send(msg=ReturnWorker(lease_id=lease_id)):
                self.inflight.append((raylet_of(src), src, ReturnWorkerAck(lease_id=lease_id)))
            case Send():
                pass  # to the GCS or a raylet: nothing here depends on it
            case SetTimer(key=key) if key.startswith("obj."):
                self.timers[(src, key)] = None
            case CancelTimer(key=key):
                self.timers.pop((src, key), None)
            case SetTimer():
                pass
            case _:
                self.host[src].append(effect)

    def run(self) -> None:
        """Delivers everything, in a random order, firing forwarding timers when idle."""
        for _ in range(10_000):
            if not self.inflight:
                if not self.timers:
                    return
                (address, key) = next(iter(self.timers))
                del self.timers[(address, key)]
                self.feed(address, TimerFired(key=key))
                continue
            src, dst, msg = self.inflight.pop(self.rng.randrange(len(self.inflight)))
            if self.rng.random() < self.duplicate:
                self.inflight.append((src, dst, msg))
            self.feed(dst, Received(src=src, msg=msg))
        raise AssertionError("the network never settled")

    def take_host(self, address: Address) -> list[Msg]:
        effects, self.host[address] = self.host[address], []
        return effects


def spec(task_id: str, owner: Address, *args: TaskArg) -> TaskSpec:
    return TaskSpec(task_id=TaskId(task_id), job_id="j", name="f", owner=owner,
                    function_id="fn", args=args, max_retries=0)


def result_holding(task_id: str, *refs: ObjectRefInfo) -> ObjectResult:
    return ObjectResult(object_id=f"{task_id}.r0",  # type: ignore[arg-type]
                        value=Payload(data=b"[ref]", contained=refs))


def ref_of(task_id: str, owner: Address) -> ObjectRefInfo:
    return ObjectRefInfo(object_id=f"{task_id}.r0", owner=owner)  # type: ignore[arg-type]


def submit(net: Net, owner: Address, task: TaskSpec, to: Address) -> None:
    net.lease_to[owner] = to
    net.feed(owner, RefsChanged(deltas=((ref_of(task.task_id, owner), 1),)))
    net.feed(owner, TaskSubmitted(spec=task, function=b"fn"))
    net.run()
    assert [e for e in net.take_host(to) if isinstance(e, ExecuteTask)] == [
        ExecuteTask(spec=task, args=tuple(a.value for a in task.args if a.value is not None),
                    function=b"fn")]


def get(net: Net, address: Address, info: ObjectRefInfo, call_id: int) -> ObjectResult:
    net.feed(address, GetRequested(call_id=call_id, refs=(info,)))
    net.run()
    done = [e for e in net.take_host(address) if isinstance(e, GetCompleted)]
    assert len(done) == 1
    return done[0].results[0]


def returned_by_third_owner_scenario(seed: int, duplicate: float) -> tuple[Net, ObjectResult]:
    """D runs task T1 on W; inside T1, W gets X from O (O's task T0 returns it, so O
    counts W) and returns X in T1's result, dropping its own refs. O drops its own
    ref. D keeps X (from T1's value) and gets it."""
    net = Net(rng=random.Random(seed), duplicate=duplicate)
    for address in (O, D, W):
        net.add(address)
    net.feed(O, RefsChanged(deltas=((X, 1),)))  # O's user code holds its ref (made first)
    net.feed(O, ObjectPut(object_id=X.object_id, value=Payload(data=b"X!")))
    submit(net, D, spec("T1", D), to=W)
    submit(net, W, spec("T0", W), to=O)  # inside T1: W's nested task runs on O
    net.feed(O, TaskExecuted(task_id=TaskId("T0"), attempt=0, results=(result_holding("T0", X),)))
    net.run()
    net.feed(W, RefsChanged(deltas=((X, 1),)))  # T1's code unpickled X from T0's value
    net.feed(W, RefsChanged(deltas=((ref_of("T0", W), -1), (X, -1))))  # ...and let go
    net.feed(W, TaskExecuted(task_id=TaskId("T1"), attempt=0, results=(result_holding("T1", X),)))
    net.feed(O, RefsChanged(deltas=((X, -1),)))  # the owner's own ref is gone
    net.run()
    net.feed(D, RefsChanged(deltas=((X, 1),)))  # D's code reads T1's value, keeps X
    net.feed(D, RefsChanged(deltas=((ref_of("T1", D), -1),)))
    net.run()
    return net, get(net, D, X, call_id=7)


@pytest.mark.parametrize("seed", range(30))
def test_a_ref_returned_through_a_task_stays_alive_for_its_new_holder(seed: int) -> None:
    net, got = returned_by_third_owner_scenario(seed, duplicate=0.2)
    assert got == ObjectResult(object_id=X.object_id, value=Payload(data=b"X!")), f"seed {seed}"
    assert net.cores[O].objects.is_owned(X.object_id)
    net.feed(D, RefsChanged(deltas=((X, -1),)))
    net.run()
    for address, core in net.cores.items():
        assert len(core.objects) == 0, f"seed {seed}: {address} still holds {core.objects.owned_ids()}"


@pytest.mark.parametrize("seed", range(30))
def test_a_ref_kept_by_a_worker_after_its_task_stays_alive_for_it(seed: int) -> None:
    """D got X from O, passes it to task T1 on W (nested), W keeps it; D and O drop theirs."""
    net = Net(rng=random.Random(seed), duplicate=0.2)
    for address in (O, D, W):
        net.add(address)
    net.feed(O, RefsChanged(deltas=((X, 1),)))
    net.feed(O, ObjectPut(object_id=X.object_id, value=Payload(data=b"X!")))
    submit(net, D, spec("T0", D), to=O)  # D's task on O returns X: O counts D
    net.feed(O, TaskExecuted(task_id=TaskId("T0"), attempt=0, results=(result_holding("T0", X),)))
    net.run()
    net.feed(D, RefsChanged(deltas=((X, 1), (ref_of("T0", D), -1))))
    nested = TaskArg(value=Payload(data=b"[x]", contained=(X,)))
    submit(net, D, spec("T1", D, nested), to=W)
    net.feed(W, RefsChanged(deltas=((X, 1),)))  # T1 unpickles X and keeps it (a global)
    net.feed(W, TaskExecuted(task_id=TaskId("T1"), attempt=0, results=(result_holding("T1"),),
                             borrowed=(X,)))
    net.run()
    net.feed(D, RefsChanged(deltas=((X, -1), (ref_of("T1", D), -1))))
    net.feed(O, RefsChanged(deltas=((X, -1),)))
    net.run()
    assert get(net, W, X, call_id=3) == ObjectResult(
        object_id=X.object_id, value=Payload(data=b"X!")), f"seed {seed}"
    net.feed(W, RefsChanged(deltas=((X, -1),)))
    net.run()
    for address, core in net.cores.items():
        assert len(core.objects) == 0, f"seed {seed}: {address} still holds {core.objects.owned_ids()}"


# --- single steps, whole effect lists ---------------------------------------------------


def test_a_worker_defers_releasing_a_registered_ref_until_its_task_handed_it_on() -> None:
    net = Net(rng=random.Random(0))
    for address in (O, D, W):
        net.add(address)
    net.feed(O, RefsChanged(deltas=((X, 1),)))
    net.feed(O, ObjectPut(object_id=X.object_id, value=Payload(data=b"X!")))
    submit(net, D, spec("T1", D), to=W)
    submit(net, W, spec("T0", W), to=O)
    net.feed(O, TaskExecuted(task_id=TaskId("T0"), attempt=0, results=(result_holding("T0", X),)))
    net.run()
    net.feed(W, RefsChanged(deltas=((X, 1),)))
    assert net.feed(W, RefsChanged(deltas=((ref_of("T0", W), -1), (X, -1)))) == [], (
        "T1 still runs: W's registered hold on X is kept (no RefReleased yet)")
    task_result = result_holding("T1", X)
    assert net.feed(W, TaskExecuted(task_id=TaskId("T1"), attempt=0, results=(task_result,))) == [
        Send(dst=D, msg=RegisterBorrow(handoff_id=1, ref=X, task_id=TaskId("T1"))),
        SetTimer(key="obj.handoff.1", at_ns=500_000_000),
        Send(dst=D, msg=TaskDone(task_id=TaskId("T1"), attempt=0, results=(task_result,))),
    ]
    w = net.cores[W]
    assert w.handle(Received(src=D, msg=BorrowRegistered(handoff_id=1)), now=1) == [
        CancelTimer(key="obj.handoff.1"),
        Send(dst=O, msg=RefReleased(object_id=X.object_id)),
    ], "D is counted by O now: W lets go"


def test_the_owner_ignores_a_late_duplicate_registration_a_release_already_ended() -> None:
    net = Net(rng=random.Random(0))
    o = net.add(O)
    o.handle(RefsChanged(deltas=((X, 1),)), now=0)
    o.handle(ObjectPut(object_id=X.object_id, value=Payload(data=b"X!")), now=0)
    assert o.handle(Received(src=D, msg=AddBorrower(object_id=X.object_id, epoch=3)), now=1) == [
        Send(dst=D, msg=BorrowerAdded(object_id=X.object_id, epoch=3))]
    assert o.handle(Received(src=D, msg=RefReleased(object_id=X.object_id, epoch=3)), now=2) == []
    assert o.handle(Received(src=D, msg=AddBorrower(object_id=X.object_id, epoch=3)), now=3) == [
        Send(dst=D, msg=BorrowerAdded(object_id=X.object_id, epoch=3))]
    assert o.handle(RefsChanged(deltas=((X, -1),)), now=4) == [], "D is not counted again"
    assert X.object_id not in o.objects


def test_a_holder_asked_before_the_results_arrive_waits_for_them() -> None:
    net = Net(rng=random.Random(0))
    d = net.add(D)
    net.lease_to[D] = W
    d.handle(TaskSubmitted(spec=spec("T1", D), function=b"fn"), now=0)
    ask = RegisterBorrow(handoff_id=4, ref=X, task_id=TaskId("T1"))
    assert d.handle(Received(src=W, msg=ask), now=1) == [], "T1's TaskDone has not come yet"


# --- owners that die -------------------------------------------------------------------


def _fetching_from(owner: Address) -> CoreWorker:
    from shoal.kernel.gcs.protocol import NodeInfo, NodeTableUpdate

    core = CoreWorker(W, raylet=raylet_of(W), gcs=GCS)
    core.handle(Started(), now=0)
    table = NodeTableUpdate(from_version=0, to_version=1, full=True, nodes=(
        NodeInfo(node_id=owner.node, incarnation=1, state="alive", resources={}),))
    core.handle(Received(src=GCS, msg=table), now=0)
    info = ObjectRefInfo(object_id="y1", owner=owner)  # type: ignore[arg-type]
    core.handle(RefsChanged(deltas=((info, 1),)), now=0)
    assert core.handle(GetRequested(call_id=1, refs=(info,)), now=0)[0] == Send(
        dst=owner, msg=GetObjectMsg(object_id="y1"))  # type: ignore[arg-type]
    return core


def _node_row(node: str, incarnation: int, state: str, version: int) -> Received:
    from shoal.kernel.gcs.protocol import NodeInfo, NodeTableUpdate

    return Received(src=GCS, msg=NodeTableUpdate(from_version=version - 1, to_version=version,
                                                 full=False, nodes=(NodeInfo(
        node_id=node, incarnation=incarnation, state=state, resources={}),)))  # type: ignore[arg-type]


def test_a_driver_outlives_its_nodes_raylet_restart_but_not_its_nodes_death() -> None:
    core = _fetching_from(D)
    assert [e for e in core.handle(_node_row("n0", 2, "alive", 2), now=1)
            if isinstance(e, GetCompleted)] == [], "a new incarnation: the driver lives on"
    failed = [e for e in core.handle(_node_row("n0", 2, "dead", 3), now=2)
              if isinstance(e, GetCompleted)]
    assert len(failed) == 1 and failed[0].results[0].error is not None
    assert failed[0].results[0].error.kind == "owner_died"


def test_a_worker_owner_dies_with_its_raylets_restart() -> None:
    owner = Address(node="n3", component="worker", worker="o3")
    core = _fetching_from(owner)
    failed = [e for e in core.handle(_node_row("n3", 2, "alive", 2), now=1)
              if isinstance(e, GetCompleted)]
    assert len(failed) == 1 and failed[0].results[0].error.kind == "owner_died"  # type: ignore[union-attr]
