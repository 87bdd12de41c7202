"""The raylet's object table: a pull's retry timer measures silence, not the transfer."""

from __future__ import annotations

from shoal.kernel.ids import NodeId, ObjectId
from shoal.kernel.messages import Address, CancelTimer, Send, SetTimer
from shoal.kernel.raylet.object_protocol import (
    ObjectChunk,
    ObjectLocal,
    ObjectLocationAdded,
    ObjectLocationRemoved,
    ObjectMissing,
    PinObject,
    PullObject,
    RequestObject,
    WriteObjectChunk,
)
from shoal.kernel.raylet.objects import PULL_TIMER_PREFIX, ObjectsConfig, ObjectTable

HERE, THERE = NodeId("n1"), NodeId("n2")
OWNER = Address(node=THERE, component="driver", worker="d")
READER = Address(node=HERE, component="worker", worker="w1")
OID = ObjectId("o1")
RETRY_NS = 500
TIMER = PULL_TIMER_PREFIX + OID


def _chunk(index: int) -> ObjectChunk:
    return ObjectChunk(object_id=OID, index=index, chunk_count=3, size=30, data=b"x" * 10)


def test_each_chunk_pushes_the_retry_back_and_the_last_one_cancels_it() -> None:
    table = ObjectTable(HERE, ObjectsConfig(chunk_bytes=10, pull_retry_ns=RETRY_NS))
    pull = PullObject(object_id=OID, owner=OWNER, locations=(THERE,), size=30)
    assert table.on_pull(READER, pull, 0) == [
        Send(dst=Address(node=THERE, component="raylet"),
             msg=RequestObject(object_id=OID, chunks=())),
        SetTimer(key=TIMER, at_ns=RETRY_NS),
    ]
    assert table.on_chunk(_chunk(0), 400) == [
        WriteObjectChunk(object_id=OID, offset=0, total_size=30, data=b"x" * 10),
        SetTimer(key=TIMER, at_ns=400 + RETRY_NS),  # progress: no re-request at 500
    ]
    assert table.on_chunk(_chunk(0), 450) == []  # a duplicate is no progress
    assert table.on_chunk(_chunk(2), 800) == [
        WriteObjectChunk(object_id=OID, offset=20, total_size=30, data=b"x" * 10),
        SetTimer(key=TIMER, at_ns=800 + RETRY_NS),
    ]
    assert table.on_chunk(_chunk(1), 1200) == [
        WriteObjectChunk(object_id=OID, offset=10, total_size=30, data=b"x" * 10),
        CancelTimer(key=TIMER),
        Send(dst=OWNER, msg=ObjectLocationAdded(object_id=OID, node_id=HERE)),
        Send(dst=READER, msg=ObjectLocal(object_id=OID)),
    ]
    assert table.is_local(OID)


def _pulled_local(table: ObjectTable) -> None:
    pull = PullObject(object_id=OID, owner=OWNER, locations=(THERE,), size=30)
    table.on_pull(READER, pull, 0)
    for index in range(3):
        table.on_chunk(_chunk(index), 100 + index)
    assert table.is_local(OID)


def test_an_evicted_secondary_copy_is_pulled_again_on_the_next_request() -> None:
    table = ObjectTable(HERE, ObjectsConfig(chunk_bytes=10, pull_retry_ns=RETRY_NS))
    _pulled_local(table)
    assert table.on_evicted(OID) == [  # the owner stops sending readers here
        Send(dst=OWNER, msg=ObjectLocationRemoved(object_id=OID, node_id=HERE))]
    assert not table.is_local(OID)
    again = PullObject(object_id=OID, owner=OWNER, locations=(THERE,), size=30)
    assert table.on_pull(READER, again, 1000) == [  # not ObjectLocal: the bytes are gone
        Send(dst=Address(node=THERE, component="raylet"),
             msg=RequestObject(object_id=OID, chunks=())),
        SetTimer(key=TIMER, at_ns=1000 + RETRY_NS),
    ]
    # A peer asking this node for it now hears that it is missing, not chunks.
    asker = Address(node=NodeId("n3"), component="raylet")
    table.on_evicted(OID)  # an eviction report for an entry being pulled changes nothing
    assert table.on_request(asker, RequestObject(object_id=OID, chunks=())) == [
        Send(dst=asker, msg=ObjectMissing(object_id=OID))]


def test_an_eviction_report_never_drops_a_pinned_primary_copy() -> None:
    table = ObjectTable(HERE, ObjectsConfig(chunk_bytes=10, pull_retry_ns=RETRY_NS))
    table.on_pin(PinObject(object_id=OID, owner=OWNER, size=30))
    assert table.on_evicted(OID) == []
    assert table.is_local(OID) and table.pinned_count() == 1
