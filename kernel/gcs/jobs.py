"""The GCS job table: which drivers (jobs) have ended, and why.

Theory of operation
-------------------
A job is its driver: Ray ends a job when its driver process exits, and the
job's non-detached actors and placement groups go with it. The driver's raylet
sees the exit (a host input, ``DriverExited``) and reports it with
``DriverExitReport`` until acknowledged (``kernel/gcs/job_protocol.py``).
``record_exit`` checks that the report is plausible (a raylet speaking for a
driver of its own node), writes the row durably (``StorePut`` before the ack,
so a restarted GCS still knows the job ended), and answers ``DriverExitAck``;
a repeated report is only acknowledged again.

The ``Gcs`` reads ``driver_exited`` through the facts it hands the actor
manager (an actor owned by an exited driver is owner-dead, like one owned by a
departed worker) and removes the non-detached placement groups the driver
created.

Limits: at most ``finished_max`` ended jobs are remembered (oldest forgotten,
with ``StoreDelete``); a forgotten driver's late actor registrations are then
no longer refused, which only matters for a driver whose messages trail its own
exit by thousands of other jobs.

Invariants (``check_invariants``): the table stays within its bound; every row
is a driver's.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.job_protocol import DriverExitAck, DriverExitReport
from shoal.kernel.ids import Nanos
from shoal.kernel.messages import Address, Msg, Rejected, Send, StoreDelete, StorePut

JOBS_TABLE = "jobs"


class JobTableConfig(msgspec.Struct, frozen=True, kw_only=True):
    finished_max: int = 10_000  # ended jobs remembered


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One ended job as stored: its driver, why it ended, and when the GCS learned it."""

    driver: Address
    cause: str
    finished_ns: Nanos


class JobTable:
    """The GCS's table of ended jobs: a sub-machine driven by ``Gcs.handle``."""

    def __init__(self, config: JobTableConfig,
                 recovered: Mapping[bytes, bytes] | None = None) -> None:
        self._config = config
        self._finished: dict[Address, JobRecord] = {}  # oldest first
        decoder = msgspec.msgpack.Decoder(JobRecord)
        records = [decoder.decode(value) for _, value in sorted((recovered or {}).items())]
        for record in sorted(records, key=lambda r: (r.finished_ns, str(r.driver))):
            self._finished[record.driver] = record

    def driver_exited(self, driver: Address) -> bool:
        return driver in self._finished

    @property
    def finished(self) -> tuple[JobRecord, ...]:
        return tuple(self._finished.values())

    def record_exit(self, src: Address, msg: DriverExitReport,
                    now: Nanos) -> tuple[list[Msg], bool]:
        """Returns the effects, and whether this report ended a job the table did not know."""
        problem = _report_problem(src, msg)
        if problem:
            return [Send(dst=src, msg=Rejected(request_type="DriverExitReport", reason=(
                f"gcs jobs: refused the exit report of {msg.driver} from {src}: {problem}")))], False
        ack = Send(dst=src, msg=DriverExitAck(driver=msg.driver))
        if msg.driver in self._finished:
            return [ack], False  # a retransmit
        record = JobRecord(driver=msg.driver, cause=msg.cause, finished_ns=now)
        self._finished[msg.driver] = record
        effects: list[Msg] = [StorePut(table=JOBS_TABLE, key=_key(msg.driver),
                                       value=msgspec.msgpack.encode(record))]
        while len(self._finished) > self._config.finished_max:
            oldest = next(iter(self._finished))
            del self._finished[oldest]
            effects.append(StoreDelete(table=JOBS_TABLE, key=_key(oldest)))
        return effects + [ack], True

    def check_invariants(self) -> None:
        if len(self._finished) > self._config.finished_max:
            raise InvariantViolation(
                f"gcs jobs: {len(self._finished)} ended jobs kept, above finished_max "
                f"{self._config.finished_max}")
        for driver, record in self._finished.items():
            if driver.component != "driver" or record.driver != driver:
                raise InvariantViolation(f"gcs jobs: row {driver} is not a driver's own row")


def _key(driver: Address) -> bytes:
    return str(driver).encode()


def _report_problem(src: Address, msg: DriverExitReport) -> str:
    if src.component != "raylet":
        return "only a raylet reports the exit of a driver of its node"
    if msg.driver.component != "driver":
        return f"{msg.driver} is a {msg.driver.component}, not a driver"
    if msg.driver.node != src.node:
        return (f"the driver lives on node {msg.driver.node!r}, not on the reporting raylet's "
                f"node {src.node!r}; only its own raylet may report it")
    return ""
