"""The GCS actor manager's helpers: choosing a node, and leases it gives back.

``choose_node`` is the placement policy (see ``actors.py``): affinity first;
then a live node with the placement shape free now, else one whose total fits;
among those the one hosting (or being asked to host) fewest live actors, ties
broken by node id. ``LeaseReturns`` holds the leases the GCS is giving back
with ``ReturnWorker(worker_failed=True)`` (so the raylet kills the worker,
which may host an actor instance): each is written durably under
``ACTOR_LEASES_TABLE`` and retransmitted every ``retry_ns`` until
``ReturnWorkerAck``, or until the worker is known dead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
from shoal.kernel.gcs.actor_records import ACTOR_LEASES_TABLE, ActorPhase, ActorRow
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer, StoreDelete, StorePut
from shoal.kernel.raylet.protocol import ReturnWorker

RETURN_TIMER_PREFIX = "gcs.actor.return."


def fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(name, 0.0) + 1e-9 >= amount for name, amount in need.items())


def choose_node(row: ActorRow, live: list[NodeResources],
                rows: Iterable[ActorRow]) -> tuple[NodeId | None, str]:
    """The node to lease on (None: none fits now), and a hard-affinity target that is
    dead or unknown ("" when there is none)."""
    affinity = row.spec.creation.affinity
    if affinity is not None:
        target = next((n for n in live if n.node_id == affinity.node_id), None)
        if target is not None and fits(row.spec.placement, target.total):
            return affinity.node_id, ""
        if not affinity.soft:
            return None, "" if target is not None else affinity.node_id
    hosted: dict[NodeId, int] = {}
    for other in rows:
        node = other.node_id or (other.raylet.node if other.raylet is not None else None)
        if other.phase is not ActorPhase.DEAD and node is not None:
            hosted[NodeId(node)] = hosted.get(NodeId(node), 0) + 1
    for have in ("available", "total"):
        fitting = [n.node_id for n in live if fits(row.spec.placement, getattr(n, have))]
        if fitting:
            return min(fitting, key=lambda n: (hosted.get(n, 0), n)), ""
    return None, ""


class LeaseReturns:
    """Leases being given back as failed, durable until acknowledged."""

    def __init__(self, retry_ns: Nanos, recovered: Mapping[bytes, bytes] | None) -> None:
        self._retry_ns = retry_ns
        self._raylets: dict[str, Address] = {}
        for key in sorted(recovered or {}):
            self._raylets[key.decode()] = msgspec.msgpack.decode(
                (recovered or {})[key], type=Address)

    def __contains__(self, lease_id: str) -> bool:
        return lease_id in self._raylets

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._raylets)

    def start(self, lease_id: str, raylet: Address, now: Nanos) -> list[Msg]:
        self._raylets[lease_id] = raylet
        put = StorePut(table=ACTOR_LEASES_TABLE, key=lease_id.encode(),
                       value=msgspec.msgpack.encode(raylet))
        return [put, *self.send(lease_id, now)]

    def send(self, lease_id: str, now: Nanos) -> list[Msg]:
        raylet = self._raylets.get(lease_id)
        if raylet is None:
            return []  # acknowledged since the timer was set
        return [Send(dst=raylet, msg=ReturnWorker(lease_id=lease_id, worker_failed=True)),
                SetTimer(key=f"{RETURN_TIMER_PREFIX}{lease_id}", at_ns=now + self._retry_ns)]

    def resend_all(self, now: Nanos) -> list[Msg]:
        return [e for lease_id in self._raylets for e in self.send(lease_id, now)]

    def forget(self, lease_id: str) -> list[Msg]:
        """Acknowledged, or its worker died: nothing more to give back."""
        if self._raylets.pop(lease_id, None) is None:
            return []
        return [CancelTimer(key=f"{RETURN_TIMER_PREFIX}{lease_id}"),
                StoreDelete(table=ACTOR_LEASES_TABLE, key=lease_id.encode())]
