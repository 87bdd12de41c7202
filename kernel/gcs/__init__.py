"""The GCS kernel and its protocol."""

from shoal.kernel.gcs.gcs import HEALTH_CHECK_TIMER, Gcs, GcsConfig, GcsInput, gcs_address
from shoal.kernel.gcs.kv import KvConfig
from shoal.kernel.gcs.membership import MembershipConfig, NodePhase

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
