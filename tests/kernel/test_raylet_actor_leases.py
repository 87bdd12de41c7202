"""The raylet's side of actor leases: the GCS as a lease owner (issue #4)."""

from __future__ import annotations

from shoal.kernel.gcs import gcs_address
from shoal.kernel.gcs.protocol import NodeInfo, NodeRegistered, NodeTableUpdate
from shoal.kernel.ids import NodeId, seconds
from shoal.kernel.messages import Address, Msg, Received, Send, Started
from shoal.kernel.raylet import Raylet, RayletConfig
from shoal.kernel.raylet.protocol import (
    LeaseGranted,
    LeaseRejected,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
    StartWorker,
)

N1, N2, HEAD = NodeId("n1"), NodeId("n2"), NodeId("head")
GCS = gcs_address(HEAD)
DRIVER = Address(node=N2, component="driver")
T0 = seconds(100)


def raylet_with(cpus: float) -> Raylet:
    raylet = Raylet(N1, RayletConfig(gcs=GCS, resources={"CPU": cpus}))
    raylet.handle(Started(), now=T0)
    raylet.handle(Received(src=GCS, msg=NodeRegistered(
        node_id=N1, incarnation=1, boot=1, attempt=1)), now=T0)
    nodes = (NodeInfo(node_id=N1, incarnation=1, state="alive", resources={"CPU": cpus}),
             NodeInfo(node_id=N2, incarnation=1, state="alive", resources={"CPU": 1.0}),
             NodeInfo(node_id=HEAD, incarnation=1, state="dead", resources={}))
    raylet.handle(Received(src=GCS, msg=NodeTableUpdate(
        from_version=0, to_version=1, full=True, nodes=nodes)), now=T0)
    return raylet


def step(raylet: Raylet, src: Address, msg: Msg) -> list[Msg]:
    effects = raylet.handle(Received(src=src, msg=msg), now=T0)
    raylet.check_invariants()
    return effects


def register_started(raylet: Raylet, effects: list[Msg]) -> list[Msg]:
    out: list[Msg] = []
    for effect in effects:
        if isinstance(effect, StartWorker):
            address = Address(node=N1, component="worker", worker=effect.worker_id)
            out += step(raylet, address, RegisterWorker(worker_id=effect.worker_id))
    return out


def test_actor_workers_have_slots_of_their_own_and_a_dead_head_raylet_spares_them() -> None:
    raylet = raylet_with(cpus=1.0)  # the head's raylet is dead: the GCS still leases here
    granted = register_started(raylet, step(raylet, GCS, RequestWorkerLease(
        request_id=1, shape={})))
    assert [type(e.msg) for e in granted if isinstance(e, Send)] == [LeaseGranted]
    task = register_started(raylet, step(raylet, DRIVER, RequestWorkerLease(
        request_id=1, shape={"CPU": 1.0})))
    assert [type(e.msg) for e in task if isinstance(e, Send)] == [LeaseGranted], (
        "a one-CPU node runs a task beside an actor holding no CPU")
    assert len(raylet.leases.pool.workers) == 2 and raylet.leases.pool.dedicated == 1


def test_a_retransmit_of_an_ended_gcs_request_is_rejected_so_the_gcs_leases_anew() -> None:
    raylet = raylet_with(cpus=1.0)
    granted = register_started(raylet, step(raylet, GCS, RequestWorkerLease(
        request_id=1, shape={})))
    lease_id = next(e.msg.lease_id for e in granted  # type: ignore[attr-defined]
                    if isinstance(e, Send) and isinstance(e.msg, LeaseGranted))
    returned = step(raylet, GCS, ReturnWorker(lease_id=lease_id, worker_failed=True))
    assert Send(dst=GCS, msg=ReturnWorkerAck(lease_id=lease_id)) in returned
    again = step(raylet, GCS, RequestWorkerLease(request_id=1, shape={}))
    assert len(again) == 1 and isinstance(again[0], Send)
    assert isinstance(again[0].msg, LeaseRejected) and "already ended" in again[0].msg.reason
    task = register_started(raylet, step(raylet, DRIVER, RequestWorkerLease(
        request_id=1, shape={})))
    task_lease = next(e.msg.lease_id for e in task  # type: ignore[attr-defined]
                      if isinstance(e, Send) and isinstance(e.msg, LeaseGranted))
    step(raylet, DRIVER, ReturnWorker(lease_id=task_lease))
    assert step(raylet, DRIVER, RequestWorkerLease(request_id=1, shape={})) == [], (
        "a core worker's late retransmit is still dropped silently")
