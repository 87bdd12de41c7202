"""Placement groups in the simulator: the ``PlacementGroupContext`` half of a simulated
process's context.

A placement group request travels like an internal-KV call: the process's core
worker hands it to its GCS client (``KvCallRequested``), which retransmits it
until the GCS answers; the reply completes the call (``CallCompleted``) with
the encoded ``PlacementGroupReply``, which the user thread gets back when the
baton returns to it. ``placement_group_send`` injects the request and returns a
function that blocks (hands the baton back) until the reply is there, so the
API can leave answers unread for a while, as in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.kernel.gcs.placement_group_protocol import PlacementGroupReply
from shoal.kernel.gcs_client import KvCallRequested
from shoal.runtime.api.placement_group import decode_reply


class PlacementGroupContextMixin:
    """Mixed into ``SimWorkerContext``; needs its ``_new_call``, ``_inject`` and ``_host``."""

    def placement_group_send(self, request: Any) -> Callable[[], PlacementGroupReply]:
        call_id, future = self._new_call()  # type: ignore[attr-defined]
        self._inject(KvCallRequested(call_id=call_id, request=request))  # type: ignore[attr-defined]
        baton = self._host.baton  # type: ignore[attr-defined]
        return lambda: decode_reply(baton.block(future))

    def placement_group_call(self, request: Any) -> PlacementGroupReply:
        return self.placement_group_send(request)()
