"""shoal's kernels: sans-IO state machines for the GCS, raylet and core worker.

Nothing here performs I/O, reads a clock or draws global randomness: time comes
in as ``now``, randomness from a seeded ``Random`` per instance, and every
action goes out as an effect for the host to carry out.
"""

from shoal.kernel.buggify import Buggify
from shoal.kernel.errors import InvalidTransition, InvariantViolation, KernelError
from shoal.kernel.gcs import Gcs, GcsConfig, gcs_address
from shoal.kernel.ids import (
    NANOS_PER_SECOND,
    ActorId,
    IdCounter,
    JobId,
    Nanos,
    NodeId,
    ObjectId,
    TaskId,
    WorkerId,
    millis,
    seconds,
)
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    StoreDelete,
    StorePut,
    TimerFired,
)
from shoal.kernel.raylet import Raylet, RayletConfig

__all__ = [
    "NANOS_PER_SECOND",
    "ActorId",
    "Address",
    "Buggify",
    "CancelTimer",
    "Gcs",
    "GcsConfig",
    "IdCounter",
    "InvalidTransition",
    "InvariantViolation",
    "JobId",
    "KernelError",
    "Msg",
    "Nanos",
    "NodeId",
    "ObjectId",
    "Raylet",
    "RayletConfig",
    "Received",
    "Rejected",
    "Send",
    "SetTimer",
    "Started",
    "StoreDelete",
    "StorePut",
    "TaskId",
    "TimerFired",
    "WorkerId",
    "gcs_address",
    "millis",
    "seconds",
]
