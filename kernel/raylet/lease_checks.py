"""Lease checks: the raylet asks owners whether they still hold their leases.

Theory of operation
-------------------
Every ``check_interval_ns`` the raylet sends each owner of granted leases one
``LeaseCheck`` listing them (with the request each answered). The owner answers
``LeaseCheckReply``: leases it holds, or whose request it still waits for (the
grant was lost; its next retransmit fetches it again), reset their miss count;
leases it does not know (it returned them and the ``ReturnWorker`` was lost, or
it withdrew the request) are released back to the pool. A lease whose owner has not
answered ``misses_max`` checks in a row is reclaimed (its worker is killed):
the owner is dead or cut off, and a lease must not outlive its owner. This
covers every way a lease can be forgotten, whatever message was lost.
"""

from __future__ import annotations

import msgspec

from shoal.kernel.ids import NANOS_PER_SECOND, Nanos
from shoal.kernel.messages import Address, Msg, Send, SetTimer
from shoal.kernel.raylet.protocol import LeaseCheck, LeaseCheckReply

LEASE_CHECK_TIMER = "raylet.lease_check"


class LeaseCheckConfig(msgspec.Struct, frozen=True, kw_only=True):
    check_interval_ns: Nanos = 2 * NANOS_PER_SECOND
    misses_max: int = 5


class LeaseChecker:
    """Miss counts per granted lease. A sub-machine of ``Raylet``."""

    def __init__(self, config: LeaseCheckConfig) -> None:
        self._config = config
        self._misses: dict[str, int] = {}

    def arm(self, now: Nanos) -> SetTimer:
        return SetTimer(key=LEASE_CHECK_TIMER, at_ns=now + self._config.check_interval_ns)

    def on_timer(self, granted: list[tuple[str, Address, int]],
                 now: Nanos) -> tuple[list[Msg], list[str]]:
        """Sends this round's checks; returns them and the leases whose owner went silent."""
        if not granted and not self._misses:
            return [self.arm(now)], []  # nothing granted: the next round is all there is
        by_owner: dict[Address, list[tuple[str, int]]] = {}
        misses: dict[str, int] = {}
        doomed: list[str] = []
        for lease_id, owner, request_id in granted:
            count = self._misses.get(lease_id, -1) + 1  # -1: the first round is not a miss
            if count > self._config.misses_max:
                doomed.append(lease_id)
                continue
            misses[lease_id] = count
            by_owner.setdefault(owner, []).append((lease_id, request_id))
        self._misses = misses
        effects: list[Msg] = [
            Send(dst=owner, msg=LeaseCheck(lease_ids=tuple(lease for lease, _ in pairs),
                                           request_ids=tuple(req for _, req in pairs)))
            for owner, pairs in by_owner.items()]
        return effects + [self.arm(now)], doomed

    def on_reply(self, msg: LeaseCheckReply) -> list[str]:
        """Resets the misses of held leases; returns the ones the owner let go."""
        for lease_id in msg.held:
            if lease_id in self._misses:
                self._misses[lease_id] = 0
        return [lease_id for lease_id in msg.released if lease_id in self._misses]
