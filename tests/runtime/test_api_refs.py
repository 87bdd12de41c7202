"""ObjectRef: identity, reference counting, pickling, nested refs, borrowed refs."""

from __future__ import annotations

import copy
import gc
import pickle
import sys

import cloudpickle
import pytest
from shoal.kernel.ids import NodeId, ObjectId
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import ObjectRefInfo, Payload
from shoal.runtime.api import ObjectRef, remote
from shoal.runtime.api.context import NotInitializedError, bind_thread_context
from shoal.runtime.api.serialization import deserialize, serialize

import shoal

from .conftest import FakeContext

OWNER = Address(node=NodeId("n9"), component="worker", worker="w1")

_kept: list[object] = []  # what a task keeps past its end (module state, like a cache)


def test_identity_and_representation(no_ctx) -> None:
    ref = ObjectRef("t4.r1", OWNER)
    assert repr(ref) == "ObjectRef(t4.r1)"
    assert ref.hex() == "t4.r1" and ref.binary() == b"t4.r1"
    assert ref.task_id() == "t4"
    assert ObjectRef("put3", OWNER).task_id() is None
    assert ref.owner_address() == OWNER
    assert ref.info == ObjectRefInfo(object_id=ObjectId("t4.r1"), owner=OWNER)
    assert not ref.is_nil()


def test_equality_and_hash_follow_the_object_id(no_ctx) -> None:
    a, b, c = ObjectRef("x", OWNER), ObjectRef("x", OWNER), ObjectRef("y", OWNER)
    assert a == b and a != c and hash(a) == hash(b)
    assert len({a, b, c}) == 2
    assert a != "x"


def test_futures_need_a_host_that_can_await(no_ctx) -> None:
    ref = ObjectRef("x", OWNER)  # awaiting for real: tests/sim/test_async_actors.py
    with pytest.raises(NotInitializedError):
        ref.future()
    with pytest.raises(NotInitializedError):
        ref.__await__()
    bind_thread_context(FakeContext())  # a host without the get_objects_future hook
    try:
        with pytest.raises(NotImplementedError, match=r"cannot await object refs yet"):
            ref.future()
    finally:
        bind_thread_context(None)


# --- reference counting ----------------------------------------------------------


def test_refs_count_on_creation_and_deletion(ctx) -> None:
    ref = shoal.put(1)
    assert ctx.ref_log == [("+", "put1")]
    other = ObjectRef("put1", ctx.address)
    assert ctx.live_refs("put1") == 2
    del ref
    assert ctx.live_refs("put1") == 1
    del other
    assert ctx.live_refs("put1") == 0
    assert ctx.ref_log == [("+", "put1"), ("+", "put1"), ("-", "put1"), ("-", "put1")]


def test_task_returns_are_counted_and_released(ctx) -> None:
    @remote(num_returns=2)
    def pair():
        return 1, 2

    refs = pair.remote()
    assert ctx.refs == {"t1.r0": 1, "t1.r1": 1}
    del refs
    assert ctx.refs == {"t1.r0": 0, "t1.r1": 0}


def test_a_ref_is_released_on_the_context_that_counted_it(ctx) -> None:
    ref = shoal.put(1)
    other = FakeContext()
    previous = bind_thread_context(other)
    try:
        del ref
    finally:
        bind_thread_context(previous)
    assert ctx.live_refs("put1") == 0
    assert other.ref_log == []


def test_copies_are_counted(ctx) -> None:
    ref = shoal.put(1)
    twin = copy.copy(ref)
    assert twin == ref and twin is not ref
    assert ctx.live_refs("put1") == 2


def test_refs_without_a_context_count_nothing_and_delete_quietly(no_ctx) -> None:
    ref = ObjectRef("x", OWNER)
    del ref  # nothing to release, nothing raised


def test_a_failing_release_is_swallowed(ctx, monkeypatch) -> None:
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info))

    def broken(ref):
        raise RuntimeError("host is gone")

    ref = shoal.put(1)
    ctx.ref_removed = broken
    del ref
    gc.collect()
    assert reported == []


# --- pickling and nested refs ----------------------------------------------------------


class Box:
    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_serialize_records_refs_nested_in_containers(ctx) -> None:
    a, b, c = shoal.put(1), shoal.put(2), shoal.put(3)
    value = {"list": [a, (b, {"deeper": Box(c)})], "again": [a, a]}
    payload = serialize(value)
    assert payload.contained == (a.info, b.info, c.info)  # once each, in pickling order
    assert serialize([1, "no refs"]).contained == ()
    assert serialize(7) == Payload(data=pickle.dumps(7, protocol=5))


def test_payloads_round_trip_and_register_the_refs_they_hold(ctx) -> None:
    a = shoal.put("value")
    payload = serialize([a, Box(a)])
    before = ctx.live_refs("put1")
    restored = deserialize(payload)
    assert restored[0] == a and restored[1].inner == a
    assert ctx.live_refs("put1") == before + 1  # memoized by pickle: one new instance
    del restored
    assert ctx.live_refs("put1") == before


def test_put_values_list_their_nested_refs(ctx) -> None:
    inner = shoal.put(5)
    outer = shoal.put({"ref": inner})
    assert ctx.store[outer.object_id].value.contained == (inner.info,)
    got = shoal.get(outer)["ref"]
    assert got == inner and shoal.get(got) == 5


def test_refs_inside_task_returns_are_listed(ctx) -> None:
    @remote
    def wrap():
        return [shoal.put("inside")]

    ref = wrap.remote()
    result = ctx.store[ref.object_id]
    (inner,) = result.value.contained
    assert inner.object_id == "put1" and inner.owner == ctx.address
    assert shoal.get(shoal.get(ref)[0]) == "inside"


def test_plain_pickle_still_round_trips_a_ref(no_ctx) -> None:
    ref = ObjectRef("x", OWNER)
    again = pickle.loads(pickle.dumps(ref))
    assert again == ref and again.owner_address() == OWNER


def test_remote_functions_pickle_with_their_options(ctx) -> None:
    f = remote(num_cpus=3, name="named")(lambda x: x + 1)
    g = pickle.loads(cloudpickle.dumps(f))
    assert shoal.get(g.remote(1)) == 2
    assert ctx.submitted[-1].resources == {"CPU": 3.0}
    assert ctx.submitted[-1].name == "named"


# --- borrowed refs -------------------------------------------------------------------


def test_refs_a_task_keeps_are_reported_as_borrowed(ctx) -> None:
    @remote
    def keep(box):
        _kept.append(box[0])

    @remote
    def drop(box):
        return len(box)

    theirs = ObjectRef("elsewhere", OWNER)
    try:
        keep.remote([theirs])
        assert ctx.executed[-1].borrowed == (theirs.info,)
    finally:
        _kept.clear()
    drop.remote([theirs])
    assert ctx.executed[-1].borrowed == ()


def test_refs_the_worker_owns_itself_are_not_borrowed(ctx) -> None:
    mine = shoal.put(1)

    @remote
    def keep(box):
        _kept.append(box[0])

    try:
        keep.remote([mine])
        assert ctx.executed[-1].borrowed == ()
    finally:
        _kept.clear()
