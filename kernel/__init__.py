"""shoal's kernels: sans-IO state machines for the GCS, raylet and core worker.

Nothing here performs I/O, reads a clock or draws global randomness: time comes
in as ``now``, randomness from a seeded ``Random`` per instance, and every
action goes out as an effect for the host to carry out.

The GCS and raylet machines load on first use of their names here (PEP 562):
every shoal process imports this package, and only node daemons and the
simulator run those machines.
"""

from typing import TYPE_CHECKING

from shoal.kernel.buggify import Buggify
from shoal.kernel.errors import InvalidTransition, InvariantViolation, KernelError
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

if TYPE_CHECKING:
    from shoal.kernel.gcs import Gcs, GcsConfig, gcs_address
    from shoal.kernel.raylet import Raylet, RayletConfig

_PACKAGE_OF = {"Gcs": "gcs", "GcsConfig": "gcs", "gcs_address": "gcs", "Raylet": "raylet",
               "RayletConfig": "raylet"}

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


def __getattr__(name: str) -> object:
    if name not in _PACKAGE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_PACKAGE_OF[name]}"), name)
