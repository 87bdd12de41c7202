"""The GCS's durable store in production: an append-only log file in the session directory.

Theory of operation
-------------------
The GCS kernel asks for durable writes with ``StorePut``/``StoreDelete``
effects, and the kernel host carries them out in order before the effects that
follow (a ``Send`` after a ``StorePut`` must not be visible before the write).
Each write appends one record (4-byte length, msgpack ``[op, table, key,
value]``) and flushes it to the operating system, so the state survives a crash
of the process; ``fsync=True`` also survives a crash of the machine, at a
latency cost per write.

``open`` replays the log into ``tables`` (the kernel's ``recovered`` argument)
and rewrites it compacted; a torn record at the end (the process died
mid-write) is dropped.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import msgspec

_HEADER = struct.Struct(">I")
_PUT, _DELETE = 0, 1
Tables = dict[str, dict[bytes, bytes]]


class FileStore:
    """A log-structured durable store (see the module docstring)."""

    def __init__(self, path: str, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        self.tables: Tables = {}
        self._file: BinaryIO | None = None
        self._encoder = msgspec.msgpack.Encoder()

    @classmethod
    def open(cls, path: str, *, fsync: bool = False) -> FileStore:
        """Opens (or creates) the store at ``path``, recovering what it holds."""
        store = cls(path, fsync=fsync)
        store.tables = _replay(path)
        store._rewrite()
        return store

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.tables.setdefault(table, {})[key] = value
        self._append([_PUT, table, key, value])

    def delete(self, table: str, key: bytes) -> None:
        self.tables.get(table, {}).pop(key, None)
        self._append([_DELETE, table, key, b""])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, record: list[object]) -> None:
        assert self._file is not None, "gcs store: write after close"
        payload = self._encoder.encode(record)
        self._file.write(_HEADER.pack(len(payload)) + payload)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def _rewrite(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as out:
            for table, rows in self.tables.items():
                for key, value in rows.items():
                    payload = self._encoder.encode([_PUT, table, key, value])
                    out.write(_HEADER.pack(len(payload)) + payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115  # closed by close()


def _replay(path: str) -> Tables:
    tables: Tables = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return tables
    decoder = msgspec.msgpack.Decoder(tuple[int, str, bytes, bytes])
    offset = 0
    while offset + _HEADER.size <= len(data):
        (length,) = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data):
            break  # a torn record: the process died while writing it
        try:
            op, table, key, value = decoder.decode(data[offset + _HEADER.size:end])
        except msgspec.DecodeError:
            break
        if op == _PUT:
            tables.setdefault(table, {})[key] = value
        else:
            tables.get(table, {}).pop(key, None)
        offset = end
    return tables
