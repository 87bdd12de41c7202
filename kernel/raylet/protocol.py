"""Messages between core workers and raylets, and the raylet's host interface.

Leases (core worker -> raylet):
  ``RequestWorkerLease`` asks the raylet for a worker that holds ``shape``. The
  raylet answers with exactly one of ``LeaseGranted`` (a worker, reserved until
  ``ReturnWorker``), ``LeaseSpillback`` (ask that node instead), or
  ``LeaseRejected`` (it can never be served: e.g. strict affinity to a dead
  node). A request that fits nowhere yet stays queued (infeasible requests are
  kept, not dropped). Requests are idempotent by ``(owner, request_id)``: a
  retransmit of a queued or granted request gets the same answer.
  ``CancelLeaseRequest`` withdraws a queued request. ``ReturnWorker`` gives a
  lease back and is acknowledged with ``ReturnWorkerAck`` (retransmitted until).

Workers (worker process -> its raylet):
  ``RegisterWorker`` when its process is up; ``WorkerBlocked``/``WorkerUnblocked``
  around a blocking ``get`` so its CPUs can be lent to other work (no nested
  deadlock on a full node).

Raylet -> lease holder: ``LeasedWorkerDied`` when the leased worker's process
exits, so the owner can retry its task at once.

Host interface of the raylet: effects ``StartWorker``/``KillWorker``; inputs
``WorkerExited`` (the process ended, with a cause) and ``DriverExited`` (a
driver of this node is gone: its connection to the node closed).
"""

from __future__ import annotations

from shoal.kernel.gcs.protocol import Resources
from shoal.kernel.ids import Count, NodeId, Seq, WorkerId
from shoal.kernel.messages import Address, Msg
from shoal.kernel.task_spec import NodeAffinity

# --- leases ----------------------------------------------------------------


class RequestWorkerLease(Msg):
    request_id: Seq
    shape: Resources
    affinity: NodeAffinity | None = None
    spilled: bool = False  # already redirected once: queue here rather than spill again


class LeaseGranted(Msg):
    request_id: Seq
    lease_id: str
    worker: Address
    node_id: NodeId


class LeaseSpillback(Msg):
    request_id: Seq
    node_id: NodeId


class LeaseRejected(Msg):
    request_id: Seq
    reason: str


class CancelLeaseRequest(Msg):
    request_id: Seq


class ReturnWorker(Msg):
    lease_id: str
    worker_failed: bool = False  # the owner saw the worker misbehave: do not reuse it


class ReturnWorkerAck(Msg):
    """The raylet took the worker back (the owner retransmits ``ReturnWorker`` until then)."""

    lease_id: str


class LeasedWorkerDied(Msg):
    lease_id: str
    worker: Address
    cause: str


class LeaseCheck(Msg):
    """Raylet -> owner: do you still hold these leases? (A dead or confused owner
    must not pin a worker forever.)"""

    lease_ids: tuple[str, ...]
    request_ids: tuple[Seq, ...]  # the request each lease answered, position by position


class LeaseCheckReply(Msg):
    held: tuple[str, ...]
    released: tuple[str, ...]


# --- worker <-> raylet ---------------------------------------------------


class RegisterWorker(Msg):
    worker_id: WorkerId


class WorkerBlocked(Msg):
    worker_id: WorkerId


class WorkerUnblocked(Msg):
    worker_id: WorkerId


# --- host interface --------------------------------------------------------


class StartWorker(Msg):
    """Effect: start a worker process with this id on this node."""

    worker_id: WorkerId


class KillWorker(Msg):
    """Effect: end this worker process (it is idle too long, or its node left)."""

    worker_id: WorkerId
    reason: str


class WorkerExited(Msg):
    """Input: the worker process ended (crash, kill, or exit)."""

    worker_id: WorkerId
    cause: str
    exit_code: Count = 0


class DriverExited(Msg):
    """Input: a driver process of this node ended (its job ends: see ``kernel/gcs/jobs.py``)."""

    driver: Address
    cause: str
