"""Clients waiting at the GCS for placement groups to be created (``WaitPlacementGroupReady``).

Theory of operation
-------------------
``pg.wait(timeout_seconds)`` runs no task (as in Ray): the client asks the GCS
to answer when the group is ``CREATED``. The placement group manager answers at
once when it can (the group is created or removed, or the request asks no
wait); otherwise (the group may also be unknown yet) it parks the request here, as a waiter keyed by the
request's ``(src, request_id)`` with a deadline timer.

Every waiter ends in exactly one answer, and then leaves no state:

* the group becomes ``CREATED``: its waiters are answered with the row (``ready``);
* the group is removed: its waiters are answered with an error;
* the deadline passes: the waiter is answered with the row as it is (still
  pending); a caller that wants to wait longer asks again.

The GCS client retransmits a request until it is answered, so a duplicate of a
parked request is a no-op (same key), and a duplicate that arrives after the
answer is parked (or answered) afresh: its answer is a duplicate the client
ignores. Nothing here is durable: a restarted GCS has no waiters, and the
retransmits park them again. The deadline (at most ``WAIT_TIMEOUT_MAX_NS``)
bounds how long a caller that went away leaves a waiter behind, and
``waiters_max`` how many there are.

Invariant (checked by the manager): no waiter's group is ``CREATED`` or
``REMOVED``, and the three indexes agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.kernel.errors import InvariantViolation
from shoal.kernel.ids import Nanos
from shoal.kernel.messages import Address, CancelTimer, Msg, SetTimer

WAIT_TIMER_PREFIX = "gcs.pg.wait."


@dataclass(slots=True, eq=False)
class ReadyWaiter:
    seq: int
    src: Address
    request_id: int
    pg_id: str
    deadline_ns: Nanos


class ReadyWaiters:
    """Parked ``WaitPlacementGroupReady`` requests, by arrival (``seq``), request and group."""

    def __init__(self) -> None:
        self._by_seq: dict[int, ReadyWaiter] = {}
        self._by_request: dict[tuple[Address, int], int] = {}
        self._by_group: dict[str, dict[int, None]] = {}
        self._next_seq = 1

    def __len__(self) -> int:
        return len(self._by_seq)

    def is_parked(self, src: Address, request_id: int) -> bool:
        return (src, request_id) in self._by_request

    def park(self, src: Address, request_id: int, pg_id: str, deadline_ns: Nanos) -> list[Msg]:
        """Parks a new waiter (the caller checked it is not parked already)."""
        seq = self._next_seq
        self._next_seq += 1
        self._by_seq[seq] = ReadyWaiter(seq=seq, src=src, request_id=request_id, pg_id=pg_id,
                                        deadline_ns=deadline_ns)
        self._by_request[(src, request_id)] = seq
        self._by_group.setdefault(pg_id, {})[seq] = None
        return [SetTimer(key=f"{WAIT_TIMER_PREFIX}{seq}", at_ns=deadline_ns)]

    def take_group(self, pg_id: str) -> tuple[list[ReadyWaiter], list[Msg]]:
        """Removes every waiter of ``pg_id`` (in arrival order), with their timers' cancels."""
        seqs = self._by_group.pop(pg_id, {})
        waiters = [self._forget(seq) for seq in seqs]
        return waiters, [CancelTimer(key=f"{WAIT_TIMER_PREFIX}{w.seq}") for w in waiters]

    def take_expired(self, key: str, now: Nanos) -> ReadyWaiter | None:
        """The waiter whose deadline timer ``key`` fired, removed (None: answered already,
        or a timer of a previous GCS process that reached a newer waiter's key early)."""
        try:
            seq = int(key[len(WAIT_TIMER_PREFIX):])
        except ValueError:
            return None
        if seq not in self._by_seq or now < self._by_seq[seq].deadline_ns:
            return None
        waiter = self._forget(seq)
        group = self._by_group.get(waiter.pg_id)
        if group is not None:
            group.pop(seq, None)
            if not group:
                del self._by_group[waiter.pg_id]
        return waiter

    def _forget(self, seq: int) -> ReadyWaiter:
        waiter = self._by_seq.pop(seq)
        del self._by_request[(waiter.src, waiter.request_id)]
        return waiter

    def groups(self) -> tuple[str, ...]:
        """The groups someone waits for."""
        return tuple(self._by_group)

    def check_invariants(self) -> None:
        indexed = sorted(seq for seqs in self._by_group.values() for seq in seqs)
        by_request = sorted(self._by_request.values())
        if indexed != sorted(self._by_seq) or by_request != sorted(self._by_seq):
            raise InvariantViolation(
                f"gcs placement group waiters: indexes disagree: waiters {sorted(self._by_seq)}, "
                f"by group {indexed}, by request {by_request}")
        for pg_id, seqs in self._by_group.items():
            wrong = [s for s in seqs if self._by_seq[s].pg_id != pg_id]
            if wrong or not seqs:
                raise InvariantViolation(
                    f"gcs placement group waiters: group {pg_id!r} indexes waiters {wrong or []}"
                    " of another group (or none)")
