"""The GCS kernel and its protocol.

The machine's names load on first use (PEP 562): importing a protocol module of
this package (the wire format does, in every process) must not import the GCS
machine, which only the head's node daemon and the simulator run.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.kernel.gcs.gcs import HEALTH_CHECK_TIMER, Gcs, GcsConfig, GcsInput, gcs_address
    from shoal.kernel.gcs.kv import KvConfig
    from shoal.kernel.gcs.membership import MembershipConfig, NodePhase

_MODULE_OF = {
    "HEALTH_CHECK_TIMER": "gcs",
    "Gcs": "gcs",
    "GcsConfig": "gcs",
    "GcsInput": "gcs",
    "gcs_address": "gcs",
    "KvConfig": "kv",
    "MembershipConfig": "membership",
    "NodePhase": "membership",
}

__all__ = [
    "HEALTH_CHECK_TIMER",
    "Gcs",
    "GcsConfig",
    "GcsInput",
    "KvConfig",
    "MembershipConfig",
    "NodePhase",
    "gcs_address",
]


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
