"""Placement groups in the simulator: the ``PlacementGroupContext`` half of a simulated
process's context.

A placement group request travels like an internal-KV call: the process's core
worker hands it to its GCS client (``KvCallRequested``), which retransmits it
until the GCS answers; the reply completes the call (``CallCompleted``) with
the encoded ``PlacementGroupReply``, which the user thread gets back when the
baton returns to it.
"""

from __future__ import annotations

from typing import Any

from shoal.kernel.gcs.placement_group_protocol import PlacementGroupReply
from shoal.runtime.api.placement_group import decode_reply


class PlacementGroupContextMixin:
    """Mixed into ``SimWorkerContext``; needs its ``kv_call``."""

    def placement_group_call(self, request: Any) -> PlacementGroupReply:
        value: bytes = self.kv_call(request)  # type: ignore[attr-defined]
        return decode_reply(value)
