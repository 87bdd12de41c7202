"""Example tests of the GCS internal KV: whole effect lists, request by request."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from shoal.kernel.gcs import Gcs, GcsConfig, KvConfig
from shoal.kernel.gcs.kv import KV_TABLE
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
)
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, StoreDelete, StorePut

CLIENT = Address(node=NodeId("head"), component="driver")
T0 = 1_000


def ask(gcs: Gcs, msg: Msg) -> list[Msg]:
    return gcs.handle(Received(src=CLIENT, msg=msg), now=T0)


def reply(msg: Msg) -> Send:
    return Send(dst=CLIENT, msg=msg)


def skey(namespace: str, key: bytes) -> bytes:
    """The store key the KV persists ``(namespace, key)`` under."""
    return msgspec.msgpack.encode((namespace, key))


def stored(namespace: str, key: bytes, value: bytes) -> StorePut:
    return StorePut(table=KV_TABLE, key=skey(namespace, key), value=value)


def unstored(namespace: str, key: bytes) -> StoreDelete:
    return StoreDelete(table=KV_TABLE, key=skey(namespace, key))


def put(gcs: Gcs, key: bytes, value: bytes, namespace: str = "") -> None:
    ask(gcs, KvPut(request_id=0, namespace=namespace, key=key, value=value))


# --- put and get -------------------------------------------------------------


def test_put_of_a_new_key_persists_it_and_reports_added() -> None:
    gcs = Gcs()
    assert ask(gcs, KvPut(request_id=1, namespace="", key=b"k", value=b"v1")) == [
        stored("", b"k", b"v1"),
        reply(KvPutReply(request_id=1, added=True)),
    ]
    assert ask(gcs, KvGet(request_id=2, namespace="", key=b"k")) == [
        reply(KvGetReply(request_id=2, value=b"v1")),
    ]


def test_put_over_an_existing_key_overwrites_and_reports_not_added() -> None:
    gcs = Gcs()
    put(gcs, b"k", b"v1")
    assert ask(gcs, KvPut(request_id=3, namespace="", key=b"k", value=b"v2")) == [
        stored("", b"k", b"v2"),
        reply(KvPutReply(request_id=3, added=False)),
    ]
    assert ask(gcs, KvGet(request_id=4, namespace="", key=b"k")) == [
        reply(KvGetReply(request_id=4, value=b"v2")),
    ]


def test_put_without_overwrite_keeps_the_old_value_and_writes_nothing() -> None:
    gcs = Gcs()
    put(gcs, b"k", b"v1")
    msg = KvPut(request_id=5, namespace="", key=b"k", value=b"v2", overwrite=False)
    assert ask(gcs, msg) == [reply(KvPutReply(request_id=5, added=False))]
    assert gcs.kv.get("", b"k") == b"v1"


def test_put_without_overwrite_of_a_new_key_adds_it() -> None:
    gcs = Gcs()
    msg = KvPut(request_id=6, namespace="", key=b"k", value=b"v", overwrite=False)
    assert ask(gcs, msg) == [stored("", b"k", b"v"), reply(KvPutReply(request_id=6, added=True))]


def test_get_of_a_missing_key_answers_none() -> None:
    gcs = Gcs()
    assert ask(gcs, KvGet(request_id=7, namespace="", key=b"nope")) == [
        reply(KvGetReply(request_id=7, value=None)),
    ]


def test_empty_key_and_empty_value_are_ordinary() -> None:
    gcs = Gcs()
    assert ask(gcs, KvPut(request_id=1, namespace="", key=b"", value=b"")) == [
        stored("", b"", b""),
        reply(KvPutReply(request_id=1, added=True)),
    ]
    assert ask(gcs, KvGet(request_id=2, namespace="", key=b"")) == [
        reply(KvGetReply(request_id=2, value=b"")),
    ]


# --- exists and delete -------------------------------------------------------


def test_exists() -> None:
    gcs = Gcs()
    put(gcs, b"k", b"v")
    assert ask(gcs, KvExists(request_id=1, namespace="", key=b"k")) == [
        reply(KvExistsReply(request_id=1, exists=True)),
    ]
    assert ask(gcs, KvExists(request_id=2, namespace="", key=b"other")) == [
        reply(KvExistsReply(request_id=2, exists=False)),
    ]


def test_delete_removes_the_key_durably_and_counts_it() -> None:
    gcs = Gcs()
    put(gcs, b"k", b"v")
    put(gcs, b"k2", b"v")
    assert ask(gcs, KvDelete(request_id=1, namespace="", key=b"k")) == [
        unstored("", b"k"),
        reply(KvDeleteReply(request_id=1, deleted=1)),
    ]
    assert ask(gcs, KvDelete(request_id=2, namespace="", key=b"k")) == [
        reply(KvDeleteReply(request_id=2, deleted=0)),
    ]
    assert ask(gcs, KvExists(request_id=3, namespace="", key=b"k")) == [
        reply(KvExistsReply(request_id=3, exists=False)),
    ]
    assert gcs.kv.get("", b"k2") == b"v"


def test_delete_by_prefix_removes_only_matching_keys_of_the_namespace() -> None:
    gcs = Gcs()
    for key in (b"job:2", b"actor:1", b"job:1", b"jo"):
        put(gcs, key, b"v")
    put(gcs, b"job:3", b"v", namespace="other")
    assert ask(gcs, KvDelete(request_id=1, namespace="", key=b"job:", by_prefix=True)) == [
        unstored("", b"job:2"),
        unstored("", b"job:1"),
        reply(KvDeleteReply(request_id=1, deleted=2)),
    ]
    assert ask(gcs, KvList(request_id=2, namespace="", prefix=b"")) == [
        reply(KvListReply(request_id=2, keys=(b"actor:1", b"jo"))),
    ]
    assert gcs.kv.get("other", b"job:3") == b"v"


def test_delete_by_an_empty_prefix_empties_the_namespace() -> None:
    gcs = Gcs()
    put(gcs, b"a", b"1")
    put(gcs, b"b", b"2")
    put(gcs, b"a", b"1", namespace="ns")
    assert ask(gcs, KvDelete(request_id=1, namespace="", key=b"", by_prefix=True)) == [
        unstored("", b"a"),
        unstored("", b"b"),
        reply(KvDeleteReply(request_id=1, deleted=2)),
    ]
    assert len(gcs.kv) == 1


# --- list --------------------------------------------------------------------


def test_list_by_prefix_is_sorted() -> None:
    gcs = Gcs()
    for key in (b"b2", b"a", b"b10", b"b1", b"c"):
        put(gcs, key, b"v")
    assert ask(gcs, KvList(request_id=1, namespace="", prefix=b"b")) == [
        reply(KvListReply(request_id=1, keys=(b"b1", b"b10", b"b2"))),
    ]
    assert ask(gcs, KvList(request_id=2, namespace="", prefix=b"")) == [
        reply(KvListReply(request_id=2, keys=(b"a", b"b1", b"b10", b"b2", b"c"))),
    ]
    assert ask(gcs, KvList(request_id=3, namespace="", prefix=b"z")) == [
        reply(KvListReply(request_id=3, keys=())),
    ]


# --- namespaces --------------------------------------------------------------


def test_namespaces_are_isolated() -> None:
    gcs = Gcs()
    assert ask(gcs, KvPut(request_id=1, namespace="a", key=b"k", value=b"in a")) == [
        stored("a", b"k", b"in a"),
        reply(KvPutReply(request_id=1, added=True)),
    ]
    assert ask(gcs, KvPut(request_id=2, namespace="b", key=b"k", value=b"in b")) == [
        stored("b", b"k", b"in b"),
        reply(KvPutReply(request_id=2, added=True)),
    ]
    assert ask(gcs, KvGet(request_id=3, namespace="a", key=b"k")) == [
        reply(KvGetReply(request_id=3, value=b"in a")),
    ]
    assert ask(gcs, KvGet(request_id=4, namespace="", key=b"k")) == [
        reply(KvGetReply(request_id=4, value=None)),
    ]
    assert ask(gcs, KvExists(request_id=5, namespace="c", key=b"k")) == [
        reply(KvExistsReply(request_id=5, exists=False)),
    ]
    assert ask(gcs, KvList(request_id=6, namespace="b", prefix=b"")) == [
        reply(KvListReply(request_id=6, keys=(b"k",))),
    ]
    assert ask(gcs, KvDelete(request_id=7, namespace="a", key=b"k")) == [
        unstored("a", b"k"),
        reply(KvDeleteReply(request_id=7, deleted=1)),
    ]
    assert gcs.kv.get("b", b"k") == b"in b"


# --- limits --------------------------------------------------------------------


SMALL = GcsConfig(kv=KvConfig(key_bytes_max=4, value_bytes_max=8, entries_max=2))


def test_oversized_key_is_rejected_with_the_limit() -> None:
    gcs = Gcs(SMALL)
    assert ask(gcs, KvPut(request_id=1, namespace="ns", key=b"12345", value=b"v")) == [
        reply(Rejected(request_type="KvPut", request_id=1, reason=(
            "gcs kv: key of 5 bytes in namespace 'ns' is over the 4-byte limit; "
            "use a shorter key"))),
    ]
    assert ask(gcs, KvGet(request_id=2, namespace="ns", key=b"12345")) == [
        reply(Rejected(request_type="KvGet", request_id=2, reason=(
            "gcs kv: key of 5 bytes in namespace 'ns' is over the 4-byte limit; "
            "use a shorter key"))),
    ]
    assert ask(gcs, KvList(request_id=3, namespace="", prefix=b"12345")) == [
        reply(Rejected(request_type="KvList", request_id=3, reason=(
            "gcs kv: key of 5 bytes in namespace '' is over the 4-byte limit; "
            "use a shorter key"))),
    ]
    assert len(gcs.kv) == 0


def test_oversized_value_is_rejected_with_the_limit_and_not_stored() -> None:
    gcs = Gcs(SMALL)
    assert ask(gcs, KvPut(request_id=1, namespace="", key=b"k", value=b"123456789")) == [
        reply(Rejected(request_type="KvPut", request_id=1, reason=(
            "gcs kv: value of 9 bytes for key b'k' is over the 8-byte limit; "
            "store large values as objects instead"))),
    ]
    assert gcs.kv.get("", b"k") is None
    # Exactly at the limits is fine.
    assert ask(gcs, KvPut(request_id=2, namespace="", key=b"1234", value=b"12345678")) == [
        stored("", b"1234", b"12345678"),
        reply(KvPutReply(request_id=2, added=True)),
    ]


def test_a_full_store_rejects_new_keys_but_accepts_overwrites() -> None:
    gcs = Gcs(SMALL)
    put(gcs, b"a", b"1")
    put(gcs, b"b", b"2")
    assert ask(gcs, KvPut(request_id=1, namespace="", key=b"c", value=b"3")) == [
        reply(Rejected(request_type="KvPut", request_id=1, reason=(
            "gcs kv: the store is full (2 entries); delete keys before adding more"))),
    ]
    assert ask(gcs, KvPut(request_id=2, namespace="", key=b"a", value=b"9")) == [
        stored("", b"a", b"9"),
        reply(KvPutReply(request_id=2, added=False)),
    ]


# --- persistence -------------------------------------------------------------


def apply(store: dict[str, dict[bytes, bytes]], effects: list[Msg]) -> None:
    for effect in effects:
        match effect:
            case StorePut():
                store.setdefault(effect.table, {})[effect.key] = effect.value
            case StoreDelete():
                store.get(effect.table, {}).pop(effect.key, None)


def test_a_restarted_gcs_recovers_the_store_from_its_writes() -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    gcs = Gcs()
    for msg in (
        KvPut(request_id=1, namespace="", key=b"a", value=b"1"),
        KvPut(request_id=2, namespace="", key=b"b", value=b"2"),
        KvPut(request_id=3, namespace="x", key=b"a", value=b"x1"),
        KvPut(request_id=4, namespace="", key=b"a", value=b"1'"),
        KvDelete(request_id=5, namespace="", key=b"b"),
        KvPut(request_id=6, namespace="", key=b"c", value=b"3"),
    ):
        apply(store, ask(gcs, msg))
    gcs = Gcs(recovered=store)
    assert len(gcs.kv) == 3
    assert ask(gcs, KvList(request_id=7, namespace="", prefix=b"")) == [
        reply(KvListReply(request_id=7, keys=(b"a", b"c"))),
    ]
    assert ask(gcs, KvGet(request_id=8, namespace="", key=b"a")) == [
        reply(KvGetReply(request_id=8, value=b"1'")),
    ]
    assert ask(gcs, KvGet(request_id=9, namespace="x", key=b"a")) == [
        reply(KvGetReply(request_id=9, value=b"x1")),
    ]
    assert ask(gcs, KvExists(request_id=10, namespace="", key=b"b")) == [
        reply(KvExistsReply(request_id=10, exists=False)),
    ]


_ns = st.sampled_from(["", "a"])
_key = st.binary(max_size=3)
_requests = st.one_of(
    st.builds(KvPut, request_id=st.just(0), namespace=_ns, key=_key, value=st.binary(max_size=3),
              overwrite=st.booleans()),
    st.builds(KvDelete, request_id=st.just(0), namespace=_ns, key=_key, by_prefix=st.booleans()),
)


@settings(max_examples=100, deadline=None)
@given(requests=st.lists(_requests, max_size=25))
def test_the_recovered_store_equals_the_live_one(requests: list[Msg]) -> None:
    store: dict[str, dict[bytes, bytes]] = {}
    gcs = Gcs()
    model: dict[tuple[str, bytes], bytes] = {}
    for msg in requests:
        apply(store, ask(gcs, msg))
        match msg:
            case KvPut() if msg.overwrite or (msg.namespace, msg.key) not in model:
                model[(msg.namespace, msg.key)] = msg.value
            case KvDelete(by_prefix=True):
                for k in [k for k in model if k[0] == msg.namespace and k[1].startswith(msg.key)]:
                    del model[k]
            case KvDelete():
                model.pop((msg.namespace, msg.key), None)
    recovered = Gcs(recovered=store)
    for namespace in ("", "a"):
        keys = tuple(sorted(k for ns, k in model if ns == namespace))
        for g in (gcs, recovered):
            assert ask(g, KvList(request_id=1, namespace=namespace, prefix=b"")) == [
                reply(KvListReply(request_id=1, keys=keys)),
            ]
            for key in keys:
                assert g.kv.get(namespace, key) == model[(namespace, key)]
