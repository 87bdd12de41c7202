"""Messages of the job table: a raylet tells the GCS that a local driver exited.

A driver (the core worker of a user's process, component ``"driver"``) is the
job: Ray ends a job when its driver exits, and with it the job's non-detached
actors and placement groups. The driver's own raylet is the one that can see
it go (its connection to the node daemon closes, however the process ended:
``shoal.shutdown()``, a crash, SIGKILL). The raylet reports it with
``DriverExitReport`` and retransmits it on every heartbeat tick until the GCS
answers ``DriverExitAck`` (the report is idempotent by driver address).
"""

from __future__ import annotations

from shoal.kernel.messages import Address, Msg


class DriverExitReport(Msg):
    """Raylet -> GCS: the driver at ``driver`` (on this raylet's node) exited."""

    driver: Address
    cause: str


class DriverExitAck(Msg):
    """GCS -> raylet: the job table has the exit of ``driver``; stop retransmitting."""

    driver: Address


JOB_WIRE_TYPES: tuple[type[Msg], ...] = (DriverExitReport, DriverExitAck)
