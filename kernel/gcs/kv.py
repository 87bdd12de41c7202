"""The GCS internal key-value store (Ray's ``internal_kv``), with namespaces.

Keys and values are bytes; a namespace is a string ("" is the default one).
Every write is persisted with a ``StorePut``/``StoreDelete`` effect so a
restarted GCS recovers the store. Oversized keys or values are rejected with a
``Rejected`` reply that says the limit, never stored and never a crash.
``list`` returns matching keys in sorted order, which is deterministic and what
a user reading a listing expects.
"""

from __future__ import annotations

from collections.abc import Mapping

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
)
from shoal.kernel.messages import Address, Msg, Rejected, Send, StoreDelete, StorePut

KV_TABLE = "kv"
_KeyTuple = tuple[str, bytes]


class KvConfig(msgspec.Struct, frozen=True, kw_only=True):
    key_bytes_max: int = 1024
    value_bytes_max: int = 64 * 1024 * 1024
    entries_max: int = 1_000_000


def _store_key(namespace: str, key: bytes) -> bytes:
    return msgspec.msgpack.encode((namespace, key))


class InternalKv:
    """The GCS's KV table: a sub-machine driven by ``Gcs.handle``."""

    def __init__(self, config: KvConfig, recovered: Mapping[bytes, bytes] | None = None) -> None:
        self._config = config
        self._entries: dict[_KeyTuple, bytes] = {}
        decoder = msgspec.msgpack.Decoder(tuple[str, bytes])
        for store_key in sorted(recovered or {}):
            self._entries[decoder.decode(store_key)] = (recovered or {})[store_key]

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, namespace: str, key: bytes) -> bytes | None:
        return self._entries.get((namespace, key))

    def on_request(self, src: Address, msg: KvRequest) -> list[Msg]:
        rejection = self._validate(msg)
        if rejection:
            return [Send(dst=src, msg=Rejected(
                request_type=type(msg).__name__, reason=rejection, request_id=msg.request_id))]
        match msg:
            case KvPut():
                return self._put(src, msg)
            case KvGet():
                value = self._entries.get((msg.namespace, msg.key))
                return [Send(dst=src, msg=KvGetReply(request_id=msg.request_id, value=value))]
            case KvDelete():
                return self._delete(src, msg)
            case KvList():
                keys = tuple(sorted(k for ns, k in self._entries
                                    if ns == msg.namespace and k.startswith(msg.prefix)))
                return [Send(dst=src, msg=KvListReply(request_id=msg.request_id, keys=keys))]
            case KvExists():
                exists = (msg.namespace, msg.key) in self._entries
                return [Send(dst=src, msg=KvExistsReply(request_id=msg.request_id, exists=exists))]

    def _validate(self, msg: KvRequest) -> str:
        key = msg.prefix if isinstance(msg, KvList) else msg.key
        limit = self._config.key_bytes_max
        if len(key) > limit:
            return (f"gcs kv: key of {len(key)} bytes in namespace {msg.namespace!r} is over "
                    f"the {limit}-byte limit; use a shorter key")
        if isinstance(msg, KvPut):
            limit = self._config.value_bytes_max
            if len(msg.value) > limit:
                return (f"gcs kv: value of {len(msg.value)} bytes for key {msg.key!r} is over "
                        f"the {limit}-byte limit; store large values as objects instead")
            new = (msg.namespace, msg.key) not in self._entries
            if new and len(self._entries) >= self._config.entries_max:
                return (f"gcs kv: the store is full ({len(self._entries)} entries); "
                        "delete keys before adding more")
        return ""

    def _put(self, src: Address, msg: KvPut) -> list[Msg]:
        k = (msg.namespace, msg.key)
        exists = k in self._entries
        effects: list[Msg] = []
        if not exists or msg.overwrite:
            self._entries[k] = msg.value
            effects.append(StorePut(table=KV_TABLE, key=_store_key(*k), value=msg.value))
        reply = KvPutReply(request_id=msg.request_id, added=not exists)
        return effects + [Send(dst=src, msg=reply)]

    def _delete(self, src: Address, msg: KvDelete) -> list[Msg]:
        if msg.by_prefix:
            doomed = [k for k in self._entries
                      if k[0] == msg.namespace and k[1].startswith(msg.key)]
        else:
            doomed = [(msg.namespace, msg.key)] if (msg.namespace, msg.key) in self._entries else []
        effects: list[Msg] = []
        for k in doomed:
            del self._entries[k]
            effects.append(StoreDelete(table=KV_TABLE, key=_store_key(*k)))
        reply = KvDeleteReply(request_id=msg.request_id, deleted=len(doomed))
        return effects + [Send(dst=src, msg=reply)]
