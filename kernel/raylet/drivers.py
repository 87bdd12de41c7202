"""The raylet's reports of local drivers that exited, retransmitted until the GCS has them.

Theory of operation
-------------------
The host tells the raylet that a driver of this node is gone (``DriverExited``:
its connection to the node daemon closed, however the process ended). The
raylet reports it to the GCS at once (``DriverExitReport``) and again on every
heartbeat tick until the GCS acknowledges it (``DriverExitAck``), since a
message may be lost; the GCS then ends the driver's job (its non-detached
actors and placement groups, ``kernel/gcs/jobs.py``). The raylet itself ends
the leases the driver held here (``LeaseManager.on_owner_exited``), and ignores lease requests from
it that arrive late (the last ``EXITED_MAX`` exits are remembered).

Limits: at most ``PENDING_MAX`` unacknowledged reports are kept, the oldest
dropped first (a GCS that is away that long misses those jobs' ends; their
actors then live until removed by hand, as before this existed).

Invariants (``check_invariants``): every pending report is of a driver of this
node, and there are at most ``PENDING_MAX``.
"""

from __future__ import annotations

from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.job_protocol import DriverExitAck, DriverExitReport
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg, Send

PENDING_MAX = 256
EXITED_MAX = 1024


class DriverExits:
    """Unacknowledged driver exits of one raylet: a sub-machine of the raylet."""

    def __init__(self, node_id: NodeId, gcs: Address) -> None:
        self._node_id = node_id
        self._gcs = gcs
        self._pending: dict[Address, str] = {}  # driver -> cause, oldest first
        self._exited: dict[Address, None] = {}  # the last EXITED_MAX, oldest first

    @property
    def pending(self) -> tuple[Address, ...]:
        return tuple(self._pending)

    def exited(self, driver: Address) -> bool:
        return driver in self._exited

    def is_local_driver(self, driver: Address) -> bool:
        return driver.component == "driver" and driver.node == self._node_id

    def on_exited(self, driver: Address, cause: str) -> list[Msg]:
        """Reports the exit now (and keeps it until acknowledged)."""
        if not self.is_local_driver(driver):
            return []  # the host only reports its own drivers; anything else is not ours
        self._pending[driver] = cause
        while len(self._pending) > PENDING_MAX:
            del self._pending[next(iter(self._pending))]
        self._exited[driver] = None
        while len(self._exited) > EXITED_MAX:
            del self._exited[next(iter(self._exited))]
        return [self._report(driver, cause)]

    def on_heartbeat(self) -> list[Msg]:
        """Retransmits every unacknowledged report."""
        if not self._pending:
            return []  # on every heartbeat: most have none
        return [self._report(driver, cause) for driver, cause in self._pending.items()]

    def on_ack(self, msg: DriverExitAck) -> list[Msg]:
        self._pending.pop(msg.driver, None)  # a duplicate ack is a no-op
        return []

    def _report(self, driver: Address, cause: str) -> Send:
        return Send(dst=self._gcs, msg=DriverExitReport(driver=driver, cause=cause))

    def check_invariants(self) -> None:
        if len(self._pending) > PENDING_MAX or len(self._exited) > EXITED_MAX:
            raise InvariantViolation(f"raylet drivers: {len(self._pending)} exit reports "
                                     f"pending or {len(self._exited)} exits kept, above PENDING_MAX "
                                     f"{PENDING_MAX} or EXITED_MAX {EXITED_MAX}")
        for driver in self._pending:
            if not self.is_local_driver(driver):
                raise InvariantViolation(f"raylet drivers: pending exit report of {driver}, "
                                         f"not a driver of node {self._node_id!r}")
