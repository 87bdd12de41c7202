"""Hypothesis state machine: the owner's reference counting never frees a referenced object.

Rules drive one owner core worker with random interleavings of: creating and
dropping local refs, submitting tasks that take objects as arguments (top level
or nested in a value), tasks finishing (possibly returning refs nested in their
values), puts, borrowers registering and releasing, and borrowers registering
themselves (``AddBorrower``, as a holder that a ref was forwarded to does) and
releasing, with old registrations delivered again late (network duplicates).
After every step:

* an object that the model says is referenced is still in the owner's table;
* ``check_invariants`` holds.
At the end, once every ref is dropped and every task finished, the table is empty.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.kernel.core_worker import CoreWorker
from shoal.kernel.core_worker.protocol import (
    AddBorrower,
    BorrowerAdded,
    ObjectPut,
    ObjectResult,
    RefReleased,
    RefsChanged,
    TaskDone,
    TaskSubmitted,
)
from shoal.kernel.messages import Address, Received, Send, Started
from shoal.kernel.raylet.protocol import LeaseGranted
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskArg, TaskSpec

DRIVER = Address(node="n0", component="driver")
RAYLET = Address(node="n0", component="raylet")
GCS = Address(node="n0", component="gcs")
BORROWER = Address(node="n1", component="worker", worker="b")
HOLDERS = tuple(Address(node="n2", component="worker", worker=f"h{i}") for i in range(3))


class RefCounting(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = CoreWorker(DRIVER, raylet=RAYLET, gcs=GCS)
        self.core.handle(Started(), now=0)
        self.local: dict[str, int] = {}  # object -> live ObjectRefs in the model
        self.pending: dict[str, TaskSpec] = {}  # task -> spec, not finished
        self.pushed: dict[str, str] = {}  # task -> worker name
        self.task_args: dict[str, list[str]] = {}  # pending task -> objects it takes
        self.contains: dict[str, list[str]] = {}  # object -> refs nested in its value
        self.next_id = 1
        self.next_lease = 1
        self.registered: dict[tuple[Address, str], int] = {}  # (holder, object) -> epoch
        self.registrations: list[tuple[Address, str, int]] = []  # every AddBorrower sent
        self.epoch = 0

    def _info(self, object_id: str) -> ObjectRefInfo:
        return ObjectRefInfo(object_id=object_id, owner=DRIVER)

    def _mint(self, prefix: str) -> str:
        self.next_id += 1
        return f"{prefix}{self.next_id}"

    @rule(nested=st.booleans())
    def put(self, nested: bool) -> None:
        object_id = self._mint("p")
        contained = tuple(self._info(o) for o in list(self.local)[:1]) if nested else ()
        self._add_ref(object_id)
        self.contains[object_id] = [c.object_id for c in contained]
        self.core.handle(ObjectPut(object_id=object_id, value=Payload(
            data=b"v", contained=contained)), now=0)

    @rule(use=st.integers(0, 3), nested=st.booleans())
    def submit(self, use: int, nested: bool) -> None:
        task_id = self._mint("t")
        args: list[TaskArg] = []
        held = list(self.local)
        if held:
            chosen = held[use % len(held)]
            arg = (TaskArg(value=Payload(data=b"x", contained=(self._info(chosen),)))
                   if nested else TaskArg(ref=self._info(chosen)))
            args.append(arg)
            self.task_args[task_id] = [chosen]
        spec = TaskSpec(task_id=task_id, job_id="j", name="f", owner=DRIVER, function_id="fn",
                        args=tuple(args), max_retries=0)
        self._add_ref(spec.return_ids[0])
        self.core.handle(TaskSubmitted(spec=spec, function=b"f"), now=0)
        self.pending[task_id] = spec

    @precondition(lambda self: bool(self.pending))
    @rule(index=st.integers(0, 50), nest=st.booleans())
    def task_finishes(self, index: int, nest: bool) -> None:
        task_id = list(self.pending)[index % len(self.pending)]
        spec = self.pending[task_id]
        worker = Address(node="n0", component="worker", worker=f"w{task_id}")
        self.next_lease += 1
        lease = f"L{self.next_lease}"
        # Grant every outstanding request; the task may or may not be pushed to it.
        for request_id in list(self.core.submitter._requests):  # noqa: SLF001
            self.core.handle(Received(src=RAYLET, msg=LeaseGranted(
                request_id=request_id, lease_id=f"{lease}.{request_id}", worker=worker,
                node_id="n0")), now=0)
        task = self.core.submitter._tasks.get(task_id)  # noqa: SLF001
        if task is None or not task.lease_id:
            return  # waiting for its arguments, or no lease yet
        # A task's value can only hold refs to objects older than the task: cycles of refs
        # are never collected (as in Ray) and are no test of the counting.
        others = [o for o in self.local if _age(o) < _age(task_id)]
        contained = tuple(self._info(o) for o in others[:1]) if nest else ()
        result = ObjectResult(object_id=spec.return_ids[0], value=Payload(
            data=b"r", contained=contained))
        self.core.handle(Received(src=Address(node="n0", component="worker", worker="x"),
                                  msg=TaskDone(task_id=task_id, attempt=0, results=(result,))),
                         now=0)
        if self.core.submitter._tasks.get(task_id) is None:  # noqa: SLF001
            del self.pending[task_id]
            self.task_args.pop(task_id, None)
            self.contains[spec.return_ids[0]] = [c.object_id for c in contained]

    @precondition(lambda self: bool(self.local))
    @rule(index=st.integers(0, 50))
    def drop_ref(self, index: int) -> None:
        object_id = list(self.local)[index % len(self.local)]
        self.local[object_id] -= 1
        if not self.local[object_id]:
            del self.local[object_id]
        self.core.handle(RefsChanged(deltas=((self._info(object_id), -1),)), now=0)

    @precondition(lambda self: bool(self.local))
    @rule(index=st.integers(0, 50))
    def borrower_takes_and_releases(self, index: int) -> None:
        object_id = list(self.local)[index % len(self.local)]
        self.core.objects.add_borrower(object_id, BORROWER)
        self.core.handle(Received(src=BORROWER, msg=RefReleased(object_id=object_id)), now=0)

    @precondition(lambda self: bool(self.local))
    @rule(index=st.integers(0, 50), who=st.integers(0, len(HOLDERS) - 1))
    def holder_registers(self, index: int, who: int) -> None:
        """A ref was forwarded to a holder (its passer holds the object meanwhile)."""
        object_id = list(self.local)[index % len(self.local)]
        holder = HOLDERS[who]
        if (holder, object_id) in self.registered:
            return
        self.epoch += 1
        self.registered[(holder, object_id)] = self.epoch
        self.registrations.append((holder, object_id, self.epoch))
        add = AddBorrower(object_id=object_id, epoch=self.epoch)  # type: ignore[arg-type]
        assert self.core.handle(Received(src=holder, msg=add), now=0) == [
            Send(dst=holder, msg=BorrowerAdded(object_id=object_id, epoch=self.epoch))]  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.registered))
    @rule(index=st.integers(0, 50))
    def holder_releases(self, index: int) -> None:
        holder, object_id = list(self.registered)[index % len(self.registered)]
        epoch = self.registered.pop((holder, object_id))
        self.core.handle(Received(src=holder, msg=RefReleased(
            object_id=object_id, epoch=epoch)), now=0)  # type: ignore[arg-type]

    @precondition(lambda self: bool(self.registrations))
    @rule(index=st.integers(0, 50))
    def an_old_registration_arrives_again(self, index: int) -> None:
        """A duplicate: counted already, or ended by a release (then it must not count)."""
        holder, object_id, epoch = self.registrations[index % len(self.registrations)]
        self.core.handle(Received(src=holder, msg=AddBorrower(
            object_id=object_id, epoch=epoch)), now=0)  # type: ignore[arg-type]
        row = self.core.objects._refs.get(object_id)  # noqa: SLF001
        counted = row is not None and holder in row.borrowers
        assert counted == ((holder, object_id) in self.registered), (
            f"{holder} counted={counted} as a borrower of {object_id} after a late duplicate")

    def _add_ref(self, object_id: str) -> None:
        self.local[object_id] = self.local.get(object_id, 0) + 1
        self.core.handle(RefsChanged(deltas=((self._info(object_id), 1),)), now=0)

    def _referenced(self) -> set[str]:
        """Held locally, an argument of a pending task, or nested in a referenced value."""
        live = set(self.local) | {o for objs in self.task_args.values() for o in objs}
        live |= {object_id for _, object_id in self.registered}
        live |= {spec.return_ids[0] for spec in self.pending.values()}
        frontier = list(live)
        while frontier:
            for inner in self.contains.get(frontier.pop(), []):
                if inner not in live:
                    live.add(inner)
                    frontier.append(inner)
        return live

    @invariant()
    def referenced_objects_are_never_freed(self) -> None:
        for object_id in sorted(self._referenced()):
            assert object_id in self.core.objects, f"{object_id} freed while referenced"
        self.core.check_invariants()

    def teardown(self) -> None:
        for (holder, object_id), epoch in list(self.registered.items()):
            self.core.handle(Received(src=holder, msg=RefReleased(
                object_id=object_id, epoch=epoch)), now=0)  # type: ignore[arg-type]
        for object_id, count in list(self.local.items()):
            self.core.handle(RefsChanged(deltas=((self._info(object_id), -count),)), now=0)
        if not self.pending:
            assert len(self.core.objects) == 0, (
                f"objects left with no reference: {self.core.objects.owned_ids()}")


def _age(name: str) -> int:
    return int(name.split(".")[0].lstrip("pt"))


TestRefCounting = RefCounting.TestCase
TestRefCounting.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
