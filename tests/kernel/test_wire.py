"""The wire form: every message type survives msgpack, and bad frames are refused."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shoal.kernel import wire
from shoal.kernel.gcs import protocol as gcs_protocol
from shoal.kernel.gcs.protocol import Heartbeat, KvGet, NodeTableUpdate
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg, Rejected, Started, TimerFired
from shoal.kernel.wire import WIRE_TYPES, Envelope

SRC = Address(node=NodeId("n1"), component="raylet")
DST = Address(node=NodeId("head"), component="gcs")


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values of a msgspec type, within its declared bounds (``Meta(ge=, le=)``)."""
    match t:
        case mi.IntType():
            low = t.ge if t.ge is not None else -(2**63)
            high = t.le if t.le is not None else 2**63 - 1
            return st.integers(min_value=low, max_value=high)
        case mi.FloatType():
            return st.floats(min_value=t.ge, max_value=t.le, allow_nan=False,
                             allow_infinity=False)
        case mi.StrType():
            return st.text(max_size=12)
        case mi.BytesType():
            return st.binary(max_size=12)
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.LiteralType():
            return st.sampled_from(t.values)
        case mi.UnionType():
            return st.one_of(*(strategy_for(member) for member in t.types))
        case mi.DictType():
            return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type),
                                   max_size=3)
        case mi.VarTupleType() | mi.ListType():
            items = st.lists(strategy_for(t.item_type), max_size=3)
            return items.map(tuple) if isinstance(t, mi.VarTupleType) else items
        case mi.StructType():
            fields = {f.name: strategy_for(f.type) for f in t.fields}
            return st.builds(t.cls, **fields)
    raise NotImplementedError(f"no strategy for {t!r}: extend strategy_for")


def messages_of(cls: type[Msg]) -> st.SearchStrategy[Msg]:
    return strategy_for(mi.type_info(cls))


addresses = strategy_for(mi.type_info(Address))


@pytest.mark.parametrize("cls", WIRE_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_wire_type_survives_a_round_trip_in_an_envelope(
        cls: type[Msg], data: st.DataObject) -> None:
    msg = data.draw(messages_of(cls))
    envelope = Envelope(src=data.draw(addresses), dst=data.draw(addresses), msg=msg)
    decoded = wire.decode(wire.encode(envelope))
    assert decoded == envelope
    assert type(decoded.msg) is cls


@settings(max_examples=50, deadline=None)
@given(envelopes=st.lists(
    st.builds(Envelope, src=addresses, dst=addresses,
              msg=st.one_of(*(messages_of(cls) for cls in WIRE_TYPES))),
    max_size=5))
def test_a_batch_survives_a_round_trip(envelopes: list[Envelope]) -> None:
    assert wire.decode_batch(wire.encode_batch(envelopes)) == envelopes


def test_every_gcs_protocol_message_is_on_the_wire() -> None:
    protocol = {obj for obj in vars(gcs_protocol).values()
                if isinstance(obj, type) and issubclass(obj, Msg) and obj is not Msg}
    assert protocol <= set(WIRE_TYPES)
    assert Rejected in WIRE_TYPES


def test_wire_tags_are_unique() -> None:
    tags = [mi.type_info(cls).tag for cls in WIRE_TYPES]  # type: ignore[attr-defined]
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize("frame", [
    b"",
    b"\xc1",  # a byte msgpack never uses
    b"\x93\x01",  # an array of three that ends after one
], ids=["empty", "reserved-byte", "truncated"])
def test_a_garbage_frame_raises_decode_error(frame: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        wire.decode(frame)


def test_a_truncated_real_frame_raises_decode_error() -> None:
    frame = wire.encode(Envelope(src=SRC, dst=DST, msg=KvGet(
        request_id=1, namespace="ns", key=b"key")))
    with pytest.raises(msgspec.DecodeError):
        wire.decode(frame[:-2])


@pytest.mark.parametrize("value", [
    {"src": "x"},  # a map where an array belongs
    [1, 2, 3],  # wrong types inside the array
    "hello",
])
def test_a_well_formed_frame_of_the_wrong_shape_raises_validation_error(value: object) -> None:
    with pytest.raises(msgspec.ValidationError):
        wire.decode(msgspec.msgpack.encode(value))


@pytest.mark.parametrize("msg", [Started(), TimerFired(key="t")], ids=["Started", "TimerFired"])
def test_an_envelope_holding_a_message_not_on_the_wire_is_rejected(msg: Msg) -> None:
    frame = msgspec.msgpack.encode(Envelope(src=SRC, dst=DST, msg=msg))
    with pytest.raises(msgspec.ValidationError, match="Invalid value"):
        wire.decode(frame)


def test_an_envelope_with_an_unknown_tag_is_rejected() -> None:
    src, dst = msgspec.to_builtins(SRC), msgspec.to_builtins(DST)
    frame = msgspec.msgpack.encode([src, dst, {"type": "LaunchMissiles", "node_id": "n1"}])
    with pytest.raises(msgspec.ValidationError, match="LaunchMissiles"):
        wire.decode(frame)
    untagged = msgspec.msgpack.encode([src, dst, {"node_id": "n1"}])
    with pytest.raises(msgspec.ValidationError, match="missing required field `type`"):
        wire.decode(untagged)


def test_out_of_bounds_integers_are_refused_at_the_edge() -> None:
    src, dst = msgspec.to_builtins(SRC), msgspec.to_builtins(DST)
    beat = {"type": "Heartbeat", "node_id": "n1", "incarnation": 2**33, "view_version": 0}
    with pytest.raises(msgspec.ValidationError, match="incarnation"):
        wire.decode(msgspec.msgpack.encode([src, dst, beat]))
    update = {"type": "NodeTableUpdate", "from_version": -1, "to_version": 0, "full": True,
              "nodes": []}
    with pytest.raises(msgspec.ValidationError, match="from_version"):
        wire.decode(msgspec.msgpack.encode([src, dst, update]))


def test_a_known_frame_decodes_to_the_message() -> None:
    src, dst = msgspec.to_builtins(SRC), msgspec.to_builtins(DST)
    beat = {"type": "Heartbeat", "node_id": "n1", "incarnation": 2, "view_version": 7}
    assert wire.decode(msgspec.msgpack.encode([src, dst, beat])) == Envelope(
        src=SRC, dst=DST, msg=Heartbeat(node_id=NodeId("n1"), incarnation=2, view_version=7))
    empty = NodeTableUpdate(from_version=0, to_version=0, full=True, nodes=())
    assert wire.decode(wire.encode(Envelope(src=SRC, dst=DST, msg=empty))).msg == empty
