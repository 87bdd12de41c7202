"""The core worker's object table: ownership, reference counts, values, and fetches.

Theory of operation
-------------------
Every object this process knows about has one ``_Ref`` row, keyed by object id.
A row is *owned* when this process is the object's owner (it submitted the task
that returns it, or ``put`` it), else *borrowed*.

An owned row is ``PENDING`` until its task finishes, then ``READY`` (with the
value, inline in this memory store) or ``FAILED`` (with the error). It stays
while anything references it:

* ``local``: live ``ObjectRef`` instances in this process (``RefsChanged``),
* ``tasks``: submitted tasks that take it as an argument (top level or nested),
* ``borrowers``: other processes that hold it past the task that gave it them,
* ``contained``: owned values that hold a ref to it inside them.

When all four are zero and it is not pending, the row is freed, and refs nested
in its value are released in turn. A borrowed row counts the same things
(without borrowers); when they reach zero it is dropped, and if the owner had
registered this process as a borrower, ``RefReleased`` tells it so.

Values of borrowed objects are fetched from the owner with ``GetObject``,
retried every ``fetch_retry_ns`` until an ``ObjectStatus`` arrives (or the
owner's node is declared dead: ``owner_died``). The owner answers a
``GetObject`` at once if the object is done, else when it completes; about an
object it has no row for, it answers ``object_lost`` (freed, or never existed).

Borrower forwarding. A borrowed row is *registered* when its owner counts
this process among its borrowers (the owner registered it when returning the
ref to it, or it registered itself): only then does dropping it send
``RefReleased``. A ref can change hands through a task without its owner O
being party to it: the task's worker W keeps a ref it was given (reported in
``borrowed``), or returns in its results a ref it holds. The passer (the
submitter for a kept ref, the worker for a returned one) then pins its own row
(``handoffs``) and sends the new holder ``RegisterBorrow`` (retransmitted until
answered). The holder registers itself with ``AddBorrower`` to O (its row is
pinned, ``registering``, until O's ``BorrowerAdded``) and then answers
``BorrowRegistered``; only then does the passer unpin. So O never loses count:
it adds the holder before the passer's own release can reach it. Each
registration carries the holder's *epoch* (a counter), echoed in its
``RefReleased``; O ignores an ``AddBorrower`` whose epoch a release already
ended (a duplicate delivered late), so duplicates cannot leak a borrower.
While a task or actor call runs here (``defer_releases``), the release of a
registered row is deferred until the task's results are handed off, so a
worker returning a ref it holds still holds it when it hands it on.

This table decides nothing about tasks; it reports completions to the core
worker, which wakes whoever waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import msgspec
from shoal.kernel.core_worker.protocol import (
    AddBorrower,
    BorrowerAdded,
    BorrowRegistered,
    GetObject,
    ObjectError,
    ObjectResult,
    ObjectStatus,
    RefReleased,
    RegisterBorrow,
)
from shoal.kernel.errors import InvalidTransition, InvariantViolation
from shoal.kernel.ids import Nanos, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer
from shoal.kernel.raylet.object_protocol import (
    FreeObjects,
    ObjectLocal,
    ObjectLocationAdded,
    ObjectLocationRemoved,
    ObjectUnavailable,
    PullObject,
)
from shoal.kernel.task_spec import ObjectRefInfo

FETCH_TIMER_PREFIX = "obj.fetch."
HANDOFF_TIMER_PREFIX = "obj.handoff."
REGISTER_TIMER_PREFIX = "obj.register."
# check_invariants checks every row whose checked fields (phase, result, counts) the
# steps since the last call changed, plus this many others in rotation (a safety net
# for a change made on a path that forgets to record it).
_SWEEP_BUDGET = 4
_TOUCHED_MAX = 4096  # past this (checks not being run), the next check checks every row


class ObjPhase(Enum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


_TRANSITIONS: dict[tuple[ObjPhase, ObjPhase], str] = {
    (ObjPhase.PENDING, ObjPhase.READY): "value stored",
    (ObjPhase.PENDING, ObjPhase.FAILED): "error stored",
    # Lineage reconstruction sends a lost object back to pending.
    (ObjPhase.READY, ObjPhase.PENDING): "reconstructing",
    (ObjPhase.FAILED, ObjPhase.PENDING): "retrying",
}


@dataclass(slots=True, eq=False)
class _Ref:
    object_id: ObjectId
    owner: Address
    owned: bool
    phase: ObjPhase = ObjPhase.PENDING
    result: ObjectResult | None = None
    local: int = 0
    tasks: int = 0
    contained: int = 0
    borrowers: dict[Address, None] = field(default_factory=dict)
    registered_borrower: bool = False  # borrowed: the owner counts us among its borrowers
    fetching: bool = False
    remote_waiters: dict[Address, None] = field(default_factory=dict)
    handoffs: int = 0  # passed on to holders not yet registered with the owner: kept
    registering: int = 0  # our AddBorrower's epoch, until the owner answers (0: none)
    epoch: int = 0  # the registration the owner counts (0: one the owner made)
    passers: dict[tuple[Address, int], None] = field(default_factory=dict)  # to answer
    released: dict[Address, int] = field(default_factory=dict)  # owned: epochs ended

    def referenced(self) -> bool:
        return bool(self.local or self.tasks or self.contained or self.borrowers
                    or self.handoffs or self.registering)


@dataclass(slots=True, eq=False)
class _Handoff:
    ref: ObjectRefInfo
    holder: Address
    task_id: TaskId


class ObjectTable:
    """Refs, counts and values of one process. A sub-machine of ``CoreWorker``."""

    def __init__(self, me: Address, fetch_retry_ns: Nanos, raylet: Address | None = None) -> None:
        self.me = me
        self._raylet = raylet or Address(node=me.node, component="raylet")
        self._fetch_retry_ns = fetch_retry_ns
        self._refs: dict[ObjectId, _Ref] = {}
        self._local: dict[ObjectId, None] = {}  # stored objects present in this node's store
        self._pulling: dict[ObjectId, None] = {}
        self.freed = 0
        # For the core worker to drain after each input: objects that became done (or
        # readable here), owned stored objects whose every copy is gone, and freed ids.
        self.completed: list[ObjectId] = []
        self.lost: list[ObjectId] = []
        self.freed_ids: list[ObjectId] = []
        self._check_queue: list[ObjectId] = []
        # Rows whose phase, result or counts changed since the last check_invariants.
        self._touched: dict[ObjectId, None] = {}
        self._check_all = False  # _touched overflowed: the next check checks every row
        self._handoffs: dict[int, _Handoff] = {}
        self._next_handoff = 1
        self._next_epoch = 1
        self.defer_releases = False  # a task runs here: see the module docstring
        self._deferred: dict[ObjectId, None] = {}

    # --- introspection ---------------------------------------------------

    def __contains__(self, object_id: ObjectId) -> bool:
        return object_id in self._refs

    def __len__(self) -> int:
        return len(self._refs)

    def result(self, object_id: ObjectId) -> ObjectResult | None:
        ref = self._refs.get(object_id)
        return ref.result if ref is not None and ref.phase is not ObjPhase.PENDING else None

    def readable(self, object_id: ObjectId) -> bool:
        """Done, and (for a stored object) present in this node's store."""
        result = self.result(object_id)
        if result is None:
            return False
        return (result.error is not None or not result.stored or object_id in self._local
                or self.me.node in result.locations)

    def ensure_local(self, object_id: ObjectId) -> list[Msg]:
        """Asks the local raylet to pull a stored object that is not here yet."""
        result = self.result(object_id)
        if (result is None or not result.stored or result.error is not None
                or object_id in self._local or object_id in self._pulling):
            return []
        if self.me.node in result.locations:
            self._local[object_id] = None
            return []
        self._pulling[object_id] = None
        owner = self._refs[object_id].owner
        return [Send(dst=self._raylet, msg=PullObject(
            object_id=object_id, owner=owner, locations=result.locations, size=result.size))]

    def on_object_local(self, msg: ObjectLocal) -> list[Msg]:
        if self._pulling.pop(msg.object_id, 0) == 0 or msg.object_id not in self._refs:
            return []  # not asked for, or freed meanwhile
        self._local[msg.object_id] = None
        self.completed.append(msg.object_id)
        return []

    def on_object_unavailable(self, msg: ObjectUnavailable, now: Nanos) -> list[Msg]:
        self._pulling.pop(msg.object_id, None)
        ref = self._refs.get(msg.object_id)
        if ref is None or ref.phase is not ObjPhase.READY:
            return []
        if ref.owned:
            self.lost.append(ref.object_id)
            return []
        # Ask the owner again after a pause: it may be rebuilding the object elsewhere.
        self._release_contained(ref)
        self._move(ref, ObjPhase.PENDING)
        ref.result, ref.fetching = None, True
        return [SetTimer(key=FETCH_TIMER_PREFIX + ref.object_id, at_ns=now + self._fetch_retry_ns)]

    def on_location_added(self, msg: ObjectLocationAdded) -> list[Msg]:
        ref = self._refs.get(msg.object_id)
        result = ref.result if ref is not None and ref.owned else None
        if result is None or not result.stored or msg.node_id in result.locations:
            return []
        ref.result = msgspec.structs.replace(result, locations=result.locations + (msg.node_id,))
        self._touch(ref.object_id)
        return []

    def on_location_removed(self, msg: ObjectLocationRemoved) -> list[Msg]:
        """A node evicted its secondary copy of an owned object: stop listing it."""
        ref = self._refs.get(msg.object_id)
        result = ref.result if ref is not None and ref.owned else None
        if result is None or not result.stored or msg.node_id not in result.locations:
            return []
        kept = tuple(n for n in result.locations if n != msg.node_id)
        ref.result = msgspec.structs.replace(result, locations=kept)
        self._touch(ref.object_id)
        if msg.node_id == self.me.node:
            self._local.pop(msg.object_id, None)
        if not kept:
            self.lost.append(msg.object_id)
        return []

    def drop_locations(self, dead: dict[NodeId, None]) -> None:
        """Owned stored objects forget copies on dead nodes; those left with none are lost."""
        for ref in self._refs.values():
            result = ref.result
            if not ref.owned or result is None or not result.stored:
                continue
            kept = tuple(n for n in result.locations if n not in dead)
            if kept != result.locations:
                ref.result = msgspec.structs.replace(result, locations=kept)
                self._touch(ref.object_id)
                if not kept:
                    self.lost.append(ref.object_id)

    def fail_lost(self, object_id: ObjectId, message: str) -> list[Msg]:
        """An owned object cannot be rebuilt: its value becomes an ``object_lost`` error."""
        ref = self._refs.get(object_id)
        if ref is None:
            return []
        self.reset_pending(object_id)
        return self.store(ObjectResult(object_id=object_id, error=ObjectError(
            kind="object_lost", message=message)))

    def owned_ids(self) -> list[ObjectId]:
        return [oid for oid, ref in self._refs.items() if ref.owned]

    def owner_of(self, object_id: ObjectId) -> Address | None:
        ref = self._refs.get(object_id)
        return ref.owner if ref else None

    def is_owned(self, object_id: ObjectId) -> bool:
        ref = self._refs.get(object_id)
        return ref is not None and ref.owned

    # --- rows ------------------------------------------------------------

    def ensure(self, info: ObjectRefInfo) -> _Ref:
        """The row of ``info``, made if new; recorded as touched (callers change it)."""
        ref = self._refs.get(info.object_id)
        if ref is None:
            owned = info.owner == self.me
            ref = _Ref(object_id=info.object_id, owner=info.owner, owned=owned)
            self._refs[info.object_id] = ref
        self._touch(info.object_id)
        return ref

    def _touch(self, object_id: ObjectId) -> None:
        """Records that a row's phase, result or counts changed, for check_invariants."""
        touched = self._touched
        touched[object_id] = None
        if len(touched) > _TOUCHED_MAX:
            touched.clear()
            self._check_all = True

    def add_owned_pending(self, object_id: ObjectId) -> None:
        self.ensure(ObjectRefInfo(object_id=object_id, owner=self.me))

    def store(self, result: ObjectResult) -> list[Msg]:
        """Stores the outcome of an object; answers remote waiters; frees if unreferenced."""
        ref = self._refs.get(result.object_id)
        if ref is None or ref.phase is not ObjPhase.PENDING:
            return []  # freed meanwhile, or a duplicate completion
        self._move(ref, ObjPhase.FAILED if result.error else ObjPhase.READY)
        ref.result = result
        ref.fetching = False
        self.completed.append(ref.object_id)
        effects: list[Msg] = [CancelTimer(key=FETCH_TIMER_PREFIX + ref.object_id)] if not ref.owned else []
        if ref.owned and result.value is not None:
            for inner in result.value.contained:
                self.ensure(inner).contained += 1
        for dst in ref.remote_waiters:
            effects.append(Send(dst=dst, msg=ObjectStatus(result=result)))
        ref.remote_waiters.clear()
        return effects + self._maybe_free(ref)

    def reset_pending(self, object_id: ObjectId) -> None:
        """Sends an owned object back to pending (its task is being retried)."""
        ref = self._refs.get(object_id)
        if ref is not None and ref.phase is not ObjPhase.PENDING:
            self._release_contained(ref)
            self._move(ref, ObjPhase.PENDING)
            ref.result = None
            self._local.pop(object_id, None)

    # --- counts ----------------------------------------------------------

    def change_local(self, info: ObjectRefInfo, delta: int) -> list[Msg]:
        ref = self._refs.get(info.object_id)
        if ref is None:
            if delta <= 0:
                return []  # a release of something already gone
            ref = self.ensure(info)
        ref.local = max(0, ref.local + delta)
        return self._maybe_free(ref)

    def change_tasks(self, info: ObjectRefInfo, delta: int) -> list[Msg]:
        ref = self.ensure(info) if delta > 0 else self._refs.get(info.object_id)
        if ref is None:
            return []
        ref.tasks = max(0, ref.tasks + delta)
        return self._maybe_free(ref)

    def add_borrower(self, object_id: ObjectId, borrower: Address) -> None:
        ref = self._refs.get(object_id)
        if ref is not None and ref.owned and borrower != self.me:
            ref.borrowers[borrower] = None

    def on_ref_released(self, src: Address, msg: RefReleased) -> list[Msg]:
        ref = self._refs.get(msg.object_id)
        if ref is None or not ref.owned:
            return []
        if msg.epoch > ref.released.get(src, 0):
            ref.released[src] = msg.epoch  # a late duplicate AddBorrower must not re-add it
        if src not in ref.borrowers:
            return []  # not a borrower we know of: stale or duplicate
        del ref.borrowers[src]
        return self._maybe_free(ref)

    def mark_registered_borrower(self, object_id: ObjectId) -> None:
        ref = self._refs.get(object_id)
        if ref is not None and not ref.owned:
            ref.registered_borrower = True

    def _maybe_free(self, ref: _Ref) -> list[Msg]:
        self._touch(ref.object_id)  # called after every change of a count
        if ref.referenced() or (ref.owned and ref.phase is ObjPhase.PENDING):
            return []
        if ref.fetching and not ref.owned:
            return []  # drop it when the fetch answers: a get may still want it
        if self.defer_releases and ref.registered_borrower:
            self._deferred[ref.object_id] = None  # the running task may hand it on
            return []
        del self._refs[ref.object_id]
        self._local.pop(ref.object_id, None)
        self._pulling.pop(ref.object_id, None)
        self.freed += 1
        self.freed_ids.append(ref.object_id)
        effects: list[Msg] = []
        result = ref.result
        if ref.owned and result is not None and result.stored:
            for node in result.locations:
                effects.append(Send(dst=Address(node=node, component="raylet"),
                                    msg=FreeObjects(object_ids=(ref.object_id,))))
        if not ref.owned and ref.registered_borrower:
            effects.append(Send(dst=ref.owner, msg=RefReleased(object_id=ref.object_id,
                                                               epoch=ref.epoch)))
        for dst in ref.remote_waiters:
            effects.append(Send(dst=dst, msg=ObjectStatus(result=_lost(ref.object_id))))
        return effects + self._release_contained(ref)

    def _release_contained(self, ref: _Ref) -> list[Msg]:
        if not ref.owned or ref.result is None or ref.result.value is None:
            return []
        effects: list[Msg] = []
        for inner in ref.result.value.contained:
            inner_ref = self._refs.get(inner.object_id)
            if inner_ref is not None:
                inner_ref.contained = max(0, inner_ref.contained - 1)
                effects += self._maybe_free(inner_ref)
        return effects

    # --- borrower forwarding (see the module docstring) ------------------

    def hand_off(self, info: ObjectRefInfo, holder: Address, task_id: TaskId,
                 now: Nanos) -> list[Msg]:
        """``holder`` now holds ``info`` (through task ``task_id``): keep our hold until
        it is registered with the owner. Nothing to do when it is the owner."""
        if holder == info.owner or holder == self.me:
            return []
        if info.owner == self.me and info.object_id not in self._refs:
            return []  # ours and gone: the holder's gets will say so
        self.ensure(info).handoffs += 1
        handoff_id = self._next_handoff
        self._next_handoff += 1
        self._handoffs[handoff_id] = _Handoff(ref=info, holder=holder, task_id=task_id)
        return self._send_handoff(handoff_id, now)

    def _send_handoff(self, handoff_id: int, now: Nanos) -> list[Msg]:
        handoff = self._handoffs[handoff_id]
        return [Send(dst=handoff.holder, msg=RegisterBorrow(
                    handoff_id=handoff_id, ref=handoff.ref, task_id=handoff.task_id)),
                SetTimer(key=f"{HANDOFF_TIMER_PREFIX}{handoff_id}",
                         at_ns=now + self._fetch_retry_ns)]

    def on_borrow_registered(self, msg: BorrowRegistered) -> list[Msg]:
        handoff = self._handoffs.pop(msg.handoff_id, None)
        if handoff is None:
            return []  # a duplicate answer
        effects: list[Msg] = [CancelTimer(key=f"{HANDOFF_TIMER_PREFIX}{msg.handoff_id}")]
        ref = self._refs.get(handoff.ref.object_id)
        if ref is not None:
            ref.handoffs = max(0, ref.handoffs - 1)
            effects += self._maybe_free(ref)
        return effects

    def on_register_borrow(self, src: Address, msg: RegisterBorrow, now: Nanos) -> list[Msg]:
        """A passer says we hold ``msg.ref``: register with its owner, then answer."""
        ref = self._refs.get(msg.ref.object_id)
        answer = Send(dst=src, msg=BorrowRegistered(handoff_id=msg.handoff_id))
        if ref is None or ref.owned or ref.registered_borrower:
            return [answer]  # not held any more, ours, or counted already
        ref.passers[(src, msg.handoff_id)] = None
        if ref.registering:
            return []  # answered when the owner is
        ref.registering = self._next_epoch
        self._next_epoch += 1
        return self._send_register(ref, now)

    def _send_register(self, ref: _Ref, now: Nanos) -> list[Msg]:
        return [Send(dst=ref.owner, msg=AddBorrower(object_id=ref.object_id,
                                                   epoch=ref.registering)),
                SetTimer(key=f"{REGISTER_TIMER_PREFIX}{ref.object_id}",
                         at_ns=now + self._fetch_retry_ns)]

    def on_add_borrower(self, src: Address, msg: AddBorrower) -> list[Msg]:
        """Owner side: count ``src``, unless a release already ended this registration."""
        ref = self._refs.get(msg.object_id)
        if ref is not None and ref.owned and src != self.me and (
                msg.epoch > ref.released.get(src, 0)):
            ref.borrowers[src] = None
        return [Send(dst=src, msg=BorrowerAdded(object_id=msg.object_id, epoch=msg.epoch))]

    def on_borrower_added(self, msg: BorrowerAdded) -> list[Msg]:
        ref = self._refs.get(msg.object_id)
        if ref is None or not ref.registering or ref.registering != msg.epoch:
            return []  # a duplicate, or an answer to an older registration
        ref.registered_borrower, ref.epoch, ref.registering = True, msg.epoch, 0
        effects: list[Msg] = [CancelTimer(key=f"{REGISTER_TIMER_PREFIX}{ref.object_id}")]
        effects += [Send(dst=passer, msg=BorrowRegistered(handoff_id=handoff_id))
                    for passer, handoff_id in ref.passers]
        ref.passers.clear()
        return effects + self._maybe_free(ref)

    def on_forwarding_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key.startswith(HANDOFF_TIMER_PREFIX):
            handoff_id = int(key[len(HANDOFF_TIMER_PREFIX):])
            return self._send_handoff(handoff_id, now) if handoff_id in self._handoffs else []
        ref = self._refs.get(ObjectId(key[len(REGISTER_TIMER_PREFIX):]))
        return self._send_register(ref, now) if ref is not None and ref.registering else []

    def release_deferred(self) -> list[Msg]:
        """A task's results were handed off: let go of what it released meanwhile."""
        effects: list[Msg] = []
        deferring, self.defer_releases = self.defer_releases, False
        while self._deferred:
            object_id = next(iter(self._deferred))
            del self._deferred[object_id]
            ref = self._refs.get(object_id)
            if ref is not None:
                effects += self._maybe_free(ref)
        self.defer_releases = deferring
        return effects

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def drop_forwarding_to(self, gone: Callable[[Address], bool]) -> list[Msg]:
        """Holders and owners that are ``gone`` will never answer: stop waiting for them."""
        effects: list[Msg] = []
        for handoff_id in [h for h, v in self._handoffs.items() if gone(v.holder)]:
            effects += self.on_borrow_registered(BorrowRegistered(handoff_id=handoff_id))
        for ref in [r for r in self._refs.values() if r.registering and gone(r.owner)]:
            ref.registering = 0
            effects.append(CancelTimer(key=f"{REGISTER_TIMER_PREFIX}{ref.object_id}"))
            effects += [Send(dst=passer, msg=BorrowRegistered(handoff_id=handoff_id))
                        for passer, handoff_id in ref.passers]
            ref.passers.clear()
            effects += self._maybe_free(ref)
        return effects

    # --- fetching borrowed values, answering owners' requests ------------

    def fetch(self, info: ObjectRefInfo, now: Nanos) -> list[Msg]:
        """Starts fetching a borrowed object's value from its owner (once)."""
        ref = self.ensure(info)
        if ref.owned or ref.phase is not ObjPhase.PENDING or ref.fetching:
            return []
        ref.fetching = True
        return self._send_fetch(ref, now)

    def on_fetch_timer(self, object_id: ObjectId, now: Nanos) -> list[Msg]:
        ref = self._refs.get(object_id)
        if ref is None or not ref.fetching:
            return []
        return self._send_fetch(ref, now)

    def _send_fetch(self, ref: _Ref, now: Nanos) -> list[Msg]:
        return [
            Send(dst=ref.owner, msg=GetObject(object_id=ref.object_id)),
            SetTimer(key=FETCH_TIMER_PREFIX + ref.object_id, at_ns=now + self._fetch_retry_ns),
        ]

    def on_object_status(self, msg: ObjectStatus) -> list[Msg]:
        ref = self._refs.get(msg.result.object_id)
        if ref is None or ref.owned or ref.phase is not ObjPhase.PENDING:
            return []  # not asked for, or answered already
        return self.store(msg.result)

    def on_get_object(self, src: Address, msg: GetObject) -> list[Msg]:
        ref = self._refs.get(msg.object_id)
        if ref is None or not ref.owned:
            return [Send(dst=src, msg=ObjectStatus(result=_lost(msg.object_id)))]
        if ref.phase is ObjPhase.PENDING:
            ref.remote_waiters[src] = None
            return []
        assert ref.result is not None
        return [Send(dst=src, msg=ObjectStatus(result=ref.result))]

    def fail_owned_by(self, gone: Callable[[Address], bool]) -> list[ObjectResult]:
        """Borrowed objects still being fetched from owners that are ``gone``: owner died."""
        failed: list[ObjectResult] = []
        for ref in self._refs.values():
            if not ref.owned and ref.fetching and gone(ref.owner):
                failed.append(ObjectResult(object_id=ref.object_id, error=ObjectError(
                    kind="owner_died", message=(
                        f"object {ref.object_id} is lost: its owner {ref.owner} died with "
                        f"node {ref.owner.node}; objects are owned by the process that "
                        "created them, so keep that process alive while others use them"))))
        return failed

    # --- phases and checks -----------------------------------------------

    def _move(self, ref: _Ref, to: ObjPhase) -> None:
        self._touch(ref.object_id)
        if (ref.phase, to) not in _TRANSITIONS:
            raise InvalidTransition("core_worker", f"move object to {to.value}", ref.object_id,
                                    ref.phase.value, " or ".join(
                                        f.value for f, t in _TRANSITIONS if t is to))
        ref.phase = to

    def check_invariants(self) -> None:
        """Checks every row changed since the last call (``_touched``), so a broken row is
        caught at the step that broke it, plus ``_SWEEP_BUDGET`` others in rotation: the
        cost follows what a step changed, not how many objects there are."""
        refs = self._refs
        if self._check_all:
            self._check_all = False
            self._touched.clear()
            for oid, ref in refs.items():
                self._check_row(oid, ref)
            return
        for oid in self._touched:
            ref = refs.get(oid)
            if ref is not None:  # a freed row has nothing left to check
                self._check_row(oid, ref)
        self._touched.clear()
        if not self._check_queue:
            self._check_queue = list(refs)
        for _ in range(min(_SWEEP_BUDGET, len(self._check_queue))):
            oid = self._check_queue.pop()
            ref = refs.get(oid)
            if ref is not None:
                self._check_row(oid, ref)

    def _check_row(self, oid: ObjectId, ref: _Ref) -> None:
        if ref.object_id != oid:
            raise InvariantViolation(f"core_worker: object {oid!r} is filed under another id")
        if ref.owned != (ref.owner == self.me):
            raise InvariantViolation(f"core_worker: ownership of {oid!r} disagrees with its owner")
        if (ref.phase is ObjPhase.PENDING) != (ref.result is None):
            raise InvariantViolation(f"core_worker: object {oid!r} is {ref.phase.value} "
                                     f"but {'has' if ref.result else 'lacks'} a result")
        if min(ref.local, ref.tasks, ref.contained) < 0:
            raise InvariantViolation(f"core_worker: object {oid!r} has a negative count")


def _lost(object_id: ObjectId) -> ObjectResult:
    return ObjectResult(object_id=object_id, error=ObjectError(
        kind="object_lost", message=(
            f"object {object_id} is lost: its owner has no record of it (it was freed when "
            "no references remained, or never existed); keep an ObjectRef alive while you "
            "need its value")))
