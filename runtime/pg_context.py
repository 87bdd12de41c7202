"""Placement groups in production: the ``PlacementGroupContext`` half of
``ProdWorkerContext``.

A request goes through the process's core worker and its GCS client exactly
like an internal-KV call (``kv_call``: ``KvCallRequested`` posted to the trio
loop, retransmitted to the GCS until answered); the ``CallCompleted`` value is
the encoded ``PlacementGroupReply``.
"""

from __future__ import annotations

from typing import Any

from shoal.kernel.gcs.placement_group_protocol import PlacementGroupReply
from shoal.runtime.api.placement_group import decode_reply


class ProdPlacementGroupContext:
    """Mixed into ``ProdWorkerContext``; needs its ``kv_call``."""

    def placement_group_call(self, request: Any) -> PlacementGroupReply:
        value: bytes = self.kv_call(request)  # type: ignore[attr-defined]
        return decode_reply(value)
