"""``available_resources()``: the GCS's resource view, summed over the live nodes.

Both hosts ask the GCS through their core worker's GCS client, as for an
internal-KV call (``kv_call`` with a ``GetResourceView``; the call completes with
the encoded ``ResourceViewReply``). The view lags the raylets by up to one
resource report (a heartbeat tick), as Ray's does: right after a task starts or
ends, the figures may still show the state before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from shoal.kernel.gcs.resource_protocol import GetResourceView, ResourceViewReply

__all__ = ["available_resources_via"]

_decoder = msgspec.msgpack.Decoder(ResourceViewReply)


def available_resources_via(kv_call: Callable[[Any], Any]) -> dict[str, float]:
    """What the live nodes have free now, by resource name (zero amounts left out, as Ray)."""
    raw = kv_call(GetResourceView(request_id=0))
    reply = _decoder.decode(raw)
    total: dict[str, float] = {}
    for row in reply.rows:
        for name, amount in row.available.items():
            if amount > 0:
                total[name] = total.get(name, 0.0) + amount
    return total
