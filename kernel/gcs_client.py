"""The GCS client used inside drivers and workers: node-table view and internal KV.

Theory of operation
-------------------
On ``Started`` the client subscribes to the node table and then polls with
``SubscribeNodes(known_version)`` every ``poll_interval_ns``, so a lost push is
repaired by the next poll and the GCS keeps the subscription alive.

KV calls arrive from the host as ``KvCallRequested(call_id, request)``, where
``request`` is a KV message whose ``request_id`` the client overwrites with its
own counter. The request is sent and retried every ``retry_interval_ns`` until
the reply comes (at most ``kv_inflight_max`` at once; more are refused at once).
A reply completes the call with a ``CallCompleted`` effect for the host. A
``Rejected`` from the GCS (an oversized key, say) completes it with the reason.
Replies to finished or unknown requests are duplicates and are ignored.

Retrying makes every call at-least-once: ``put(overwrite=False)`` may report
``added=False`` for a value it added itself if the first reply was lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import msgspec

from shoal.kernel.gcs.protocol import (
    KvDelete,
    KvDeleteReply,
    KvExists,
    KvExistsReply,
    KvGet,
    KvGetReply,
    KvList,
    KvListReply,
    KvPut,
    KvPutReply,
    KvRequest,
    NodeInfo,
    NodeTableUpdate,
    SubscribeNodes,
)
from shoal.kernel.gcs.placement_group_protocol import (  # placement groups
    PlacementGroupReply,
    PlacementGroupRequest,
)
from shoal.kernel.gcs.resource_protocol import GetResourceView, ResourceViewReply
from shoal.kernel.ids import NANOS_PER_MILLI, Nanos, Seq
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, SetTimer, Started, TimerFired
from shoal.kernel.raylet.membership import NodeView

POLL_TIMER = "gcs_client.poll"
_RETRY_PREFIX = "gcs_client.retry."

KvReply = KvPutReply | KvGetReply | KvDeleteReply | KvListReply | KvExistsReply
KvResult = Union[bool, bytes, None, int, tuple[bytes, ...]]


class KvCallRequested(Msg):
    """Host input: user code asked for a KV operation (or a placement group request or
    a resource view, whose reply completes the call with its msgpack encoding as
    ``value``)."""

    call_id: Seq
    request: KvRequest | PlacementGroupRequest | GetResourceView


class CallCompleted(Msg):
    """Host effect: the call ``call_id`` finished with ``value`` or failed with ``error``."""

    call_id: Seq
    value: KvResult = None
    error: str = ""


GcsClientInput = Started | Received | TimerFired | KvCallRequested


class GcsClientConfig(msgspec.Struct, frozen=True, kw_only=True):
    poll_interval_ns: Nanos = 500 * NANOS_PER_MILLI
    retry_interval_ns: Nanos = 200 * NANOS_PER_MILLI
    kv_inflight_max: int = 10_000


@dataclass(slots=True, eq=False)
class _Call:
    call_id: int
    request: KvRequest | PlacementGroupRequest


class GcsClient:
    """A driver's or worker's link to the GCS. ``handle`` is its only entry point."""

    def __init__(self, gcs: Address, config: GcsClientConfig | None = None) -> None:
        self.gcs = gcs
        self.config = config or GcsClientConfig()
        self.view = NodeView()
        self._calls: dict[int, _Call] = {}
        self._next_request = 1

    @property
    def nodes(self) -> list[NodeInfo]:
        return list(self.view.nodes.values())

    def handle(self, event: GcsClientInput, *, now: Nanos) -> list[Msg]:
        match event:
            case Received(msg=NodeTableUpdate() as update):
                self.view.apply(update)
                return []
            case Received(msg=Rejected() as rejected):
                return self._on_rejected(rejected)
            case Received(msg=msg):
                return self._on_reply(msg)
            case KvCallRequested():
                return self._on_call(event, now)
            case TimerFired(key=key) if key == POLL_TIMER:
                return self._poll(now)
            case TimerFired(key=key) if key.startswith(_RETRY_PREFIX):
                return self._retry(int(key[len(_RETRY_PREFIX):]), now)
            case Started():
                return self._poll(now)
        return []

    def _poll(self, now: Nanos) -> list[Msg]:
        return [
            Send(dst=self.gcs, msg=SubscribeNodes(known_version=self.view.version)),
            SetTimer(key=POLL_TIMER, at_ns=now + self.config.poll_interval_ns),
        ]

    def _on_call(self, event: KvCallRequested, now: Nanos) -> list[Msg]:
        if len(self._calls) >= self.config.kv_inflight_max:
            return [CallCompleted(call_id=event.call_id, error=(
                f"gcs client: {len(self._calls)} KV calls already in flight; "
                "wait for some to finish"))]
        request_id = self._next_request
        self._next_request += 1
        request = msgspec.structs.replace(event.request, request_id=request_id)
        self._calls[request_id] = _Call(call_id=event.call_id, request=request)
        return self._retry(request_id, now)

    def _retry(self, request_id: int, now: Nanos) -> list[Msg]:
        call = self._calls.get(request_id)
        if call is None:
            return []  # answered since the timer was set
        return [
            Send(dst=self.gcs, msg=call.request),
            SetTimer(key=f"{_RETRY_PREFIX}{request_id}", at_ns=now + self.config.retry_interval_ns),
        ]

    def _on_reply(self, msg: Msg) -> list[Msg]:
        if isinstance(msg, PlacementGroupReply | ResourceViewReply):
            pg_call = self._calls.pop(msg.request_id, None)
            if pg_call is None:
                return []  # a duplicate reply
            return [CallCompleted(call_id=pg_call.call_id, value=msgspec.msgpack.encode(msg))]
        if not isinstance(msg, KvReply):
            return []
        call = self._calls.pop(msg.request_id, None)
        if call is None:
            return []  # a duplicate reply
        value: KvResult
        match msg:
            case KvPutReply():
                value = msg.added
            case KvGetReply():
                value = msg.value
            case KvDeleteReply():
                value = msg.deleted
            case KvListReply():
                value = msg.keys
            case KvExistsReply():
                value = msg.exists
        return [CallCompleted(call_id=call.call_id, value=value)]

    def _on_rejected(self, rejected: Rejected) -> list[Msg]:
        call = self._calls.pop(rejected.request_id, None)
        if call is None:
            return []  # not about a call of ours, or already finished
        return [CallCompleted(call_id=call.call_id, error=rejected.reason)]

    def check_invariants(self) -> None:
        """Every pending call is keyed by its own request id."""
        for request_id, call in self._calls.items():
            assert call.request.request_id == request_id, "gcs client: call keyed wrongly"
