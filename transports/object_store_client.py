"""The process side of the node's object store: map the daemon's arena, lease regions.

Theory of operation
-------------------
A driver or worker opens ONE ``StoreClient`` to its node daemon's store server
(``object_store_service``). On connecting it learns the arena file and maps it
twice, like the store itself: writable, to fill new objects, and read-only
(``PROT_READ``), to hand out objects, so arrays built on them come back not
writeable. Allocation stays with the daemon: the client only ever touches a
region it holds a lease on (``object_store_protocol``).

* ``write(serialized)``: lease a new region (``CreateRegion``), pre-fault its
  pages in this process's mapping (``MADV_POPULATE_WRITE``: one call instead of
  a fault per page, and only for pages this process never mapped: a region the
  store reuses costs nothing), copy the value in (the one copy of a put), and
  return a read-only memoryview of it, still unnamed.
* ``seal(object_id, data)``: name and seal a region written by ``write`` (found
  by ``data``'s address in the mapping); any other bytes are first copied into a
  new region. A primary copy is pinned.
* ``open(object_id)``: lease a sealed object for reading; a read-only,
  zero-copy memoryview (``ObjectNotFoundError`` if the node does not hold it).

Lease lifetime. Each memoryview handed out is derived from a small numpy view
of the lease's region; a ``weakref.finalize`` on that view notes the lease as
unused once the last memoryview, slice or array built on it is gone (numpy
arrays that ``deserialize_from`` builds keep it alive through their ``base``
chain). Finalizers run in whatever thread drops the last reference, so they
only append to a deque. Released leases travel to the daemon with the next
request, or with ``flush_releases`` (the host calls it periodically, without
blocking). Until the daemon hears of it, the region stays in use.

Lease cache. An unused lease from ``open`` is not released at once: it waits in a small
cache (``CACHE_ENTRIES_MAX`` objects, ``CACHE_FRACTION`` of the store, for
``CACHE_IDLE_S`` at most), and opening that object again reuses it without a
round trip (plasma's client kept a release history for the same reason: a
program that gets the same object in a loop). A cached lease still keeps its
region in use; so when the store is full for this client's own request, the
cache is emptied and the request tried once more.

Thread safety: one lock serializes requests on the socket.
"""

from __future__ import annotations

import itertools
import mmap
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from shoal.transports.object_store_alloc import PAGE_BYTES
from shoal.transports.object_store_errors import (
    ObjectNotFoundError,
    ObjectStoreClosedError,
    ObjectStoreError,
    ObjectStoreFullError,
)
from shoal.transports.object_store_protocol import (
    PACKET_BYTES_MAX,
    PROTOCOL_VERSION,
    RELEASES_MAX,
    CreateRegion,
    OpenObject,
    RegionGranted,
    ReleaseLeases,
    Reply,
    Request,
    SealRegion,
    StoreHello,
    StoreRefused,
    StoreWelcome,
    decode_replies,
    encode_packet,
)
from shoal.transports.serialization import SerializedObject

__all__ = ["StoreClient"]

_MADV_POPULATE_WRITE: Final = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14
CACHE_ENTRIES_MAX: Final = 64
CACHE_FRACTION: Final = 1 / 16  # of the store's capacity, at most, held by cached leases
CACHE_IDLE_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class _Pending:
    lease: int
    size: int


@dataclass(frozen=True, slots=True)
class _Reader:
    """A read lease: which object, and where its bytes lie."""

    lease: int
    object_id: str
    offset: int
    size: int


class StoreClient:
    """One process's connection to its node's object store (see the module docstring).

    Args:
        socket_path: The store server's socket.
        token: The cluster token.

    Raises:
        ObjectStoreError: The server refused, or the arena cannot be mapped.
        OSError: The socket cannot be reached.
    """

    def __init__(self, socket_path: str, token: str) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._leases = itertools.count(1)
        self._released: deque[int] = deque()  # leases whose views are all gone
        self._pending: dict[int, _Pending] = {}  # regions written, not yet sealed, by offset
        self._readers: dict[int, _Reader] = {}  # read leases, by lease id
        self._cache: OrderedDict[str, tuple[_Reader, float]] = OrderedDict()  # unused ones
        self._cached_bytes = 0
        self._to_release: list[int] = []
        self._closed = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.connect(socket_path)
            welcome = self._exchange([StoreHello(version=PROTOCOL_VERSION, token=token,
                                                 pid=os.getpid())])
            if not isinstance(welcome, StoreWelcome):
                raise ObjectStoreError(f"object store at {socket_path} refused this process: "
                                       f"{getattr(welcome, 'message', welcome)}")
            self.capacity_bytes = welcome.capacity_bytes
            self.arena_path = welcome.arena_path
            self._cache_bytes_max = int(welcome.capacity_bytes * CACHE_FRACTION)
            self._map_arena(welcome)
        except BaseException:
            self._sock.close()
            raise

    def _map_arena(self, welcome: StoreWelcome) -> None:
        try:
            fd = os.open(welcome.arena_path, os.O_RDWR)
        except OSError as exc:
            raise ObjectStoreError(f"object store: cannot open the arena "
                                   f"{welcome.arena_path}: {exc}") from exc
        try:
            self._rw = mmap.mmap(fd, welcome.capacity_bytes, access=mmap.ACCESS_WRITE)
            self._ro = mmap.mmap(fd, welcome.capacity_bytes, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)  # the mappings stay
        self._ro_all = np.frombuffer(self._ro, dtype=np.uint8)
        self._ro_base = int(self._ro_all.__array_interface__["data"][0])
        self._mapped = bytearray(-(-welcome.capacity_bytes // PAGE_BYTES))  # 1: populated

    # --- the API --------------------------------------------------------------

    def write(self, serialized: SerializedObject) -> memoryview:
        """Copies a serialized value into a new region; returns it, read-only, unsealed.

        Pass the memoryview (or the ``Payload`` holding it) to ``seal`` to make it an
        object. If it is dropped unsealed, the region is freed.

        Raises:
            ObjectStoreFullError: The store has no room for it, even after evicting and
                spilling (the message says how much it has).
        """
        return self._write(serialized.total_bytes, serialized.write_into)

    def seal(self, object_id: str, data: object, *, primary: bool = True) -> int:
        """Stores ``data`` as ``object_id`` (zero-copy if it came from ``write``).

        Returns:
            The object's size in bytes.

        Raises:
            ObjectStoreFullError: ``data`` had to be copied and did not fit.
        """
        source = np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
        offset = int(source.__array_interface__["data"][0]) - self._ro_base
        with self._lock:
            pending = self._pending.get(offset)
            if pending is not None and pending.size == source.nbytes:
                del self._pending[offset]
            else:
                pending = None
        if pending is None:  # bytes from elsewhere: copy them into a region of their own
            view = self._write(source.nbytes, lambda writer: np.copyto(writer, source))
            return self.seal(object_id, view, primary=primary)
        # Not cached once unused (not a ``_Reader``): a program that puts in a loop drops
        # each object soon, and a cached lease would keep its region from being reused.
        self._expect(self._request(SealRegion(lease=pending.lease, object_id=object_id,
                                              primary=primary)), object_id)
        return pending.size

    def open(self, object_id: str) -> memoryview:
        """A sealed object's bytes, read-only and zero-copy.

        Raises:
            ObjectNotFoundError: This node's store does not hold the object (the message
                says why, when the daemon knows).
            ObjectStoreFullError: It is spilled, and there is no room to restore it.
            ObjectStoreError: Another failure (the message says which).
        """
        with self._lock:
            self._absorb_released()
            cached = self._cache.pop(object_id, None)
            if cached is not None:
                reader = cached[0]
                self._cached_bytes -= reader.size
                return self._lease_view(reader.lease, reader.offset, reader.size)
        lease = next(self._leases)
        granted = self._region(OpenObject(lease=lease, object_id=object_id), object_id)
        with self._lock:
            self._readers[lease] = _Reader(lease, object_id, granted.offset, granted.size)
        return self._lease_view(lease, granted.offset, granted.size)

    def flush_releases(self, *, block: bool = True) -> None:
        """Tells the daemon about released leases now (``block=False``: only if the
        socket is free and will take the packet at once; else they wait)."""
        if self._closed or not (self._released or self._cache or self._to_release):
            return
        if not self._lock.acquire(blocking=block):
            return
        try:
            packet = self._take_releases()
            if packet:
                flags = 0 if block else socket.MSG_DONTWAIT
                try:
                    self._sock.send(encode_packet(packet), flags)
                except BlockingIOError:
                    self._to_release[:0] = [lease for request in packet
                                            if isinstance(request, ReleaseLeases)
                                            for lease in request.leases]
        except OSError:
            pass  # the daemon is gone; the next request says so
        finally:
            self._lock.release()

    def close(self) -> None:
        """Disconnects (the daemon ends every lease). Views handed out stay readable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()

    # --- internals ------------------------------------------------------------

    def _write(self, size: int, fill: Callable[[np.ndarray], object]) -> memoryview:
        lease = next(self._leases)
        granted = self._region(CreateRegion(lease=lease, size=size), "(new)")
        offset = granted.offset
        writer = np.frombuffer(self._rw, dtype=np.uint8, count=size, offset=offset)
        self._populate(offset, size)
        fill(writer)
        del writer
        view = self._lease_view(lease, offset, size)
        with self._lock:
            self._pending[offset] = _Pending(lease=lease, size=size)
        return view

    def _populate(self, offset: int, size: int) -> None:
        """Maps the region's pages into our writable mapping, once per page: they stay
        mapped (the arena never gives pages back), so a reused region costs nothing."""
        first_page, end_page = offset // PAGE_BYTES, (offset + size + PAGE_BYTES - 1) // PAGE_BYTES
        first = self._mapped.find(0, first_page, end_page)
        if first < 0:
            return
        try:
            self._rw.madvise(_MADV_POPULATE_WRITE, first * PAGE_BYTES,
                             (end_page - first) * PAGE_BYTES)
        except OSError:
            return  # older kernel: the copy faults the pages in instead
        self._mapped[first:end_page] = b"\x01" * (end_page - first)

    def _lease_view(self, lease: int, offset: int, size: int) -> memoryview:
        array = self._ro_all[offset:offset + size]  # a view object of this lease's own
        finalizer = weakref.finalize(array, self._released.append, lease)
        finalizer.atexit = False
        return array.data  # a memoryview that keeps ``array`` alive

    def _absorb_released(self) -> None:
        """Moves unused read leases into the cache, the others to ``_to_release``.
        Under the lock."""
        released, now = self._released, time.monotonic()
        while released:
            lease = released.popleft()
            reader = self._readers.get(lease)
            if reader is None:  # a region written and dropped unsealed, say
                self._to_release.append(lease)
                continue
            older = self._cache.pop(reader.object_id, None)
            if older is not None:
                self._uncache(older[0])
            self._cache[reader.object_id] = (reader, now)
            self._cached_bytes += reader.size

    def _take_releases(self, *, everything: bool = False) -> list[Request]:
        """The ``ReleaseLeases`` to send: unused leases, and cached ones past the cache's
        bounds (all of them with ``everything``). Under the lock."""
        self._absorb_released()
        horizon = time.monotonic() - CACHE_IDLE_S
        cache = self._cache
        while cache and (everything or len(cache) > CACHE_ENTRIES_MAX
                         or self._cached_bytes > self._cache_bytes_max
                         or next(iter(cache.values()))[1] < horizon):
            self._uncache(cache.popitem(last=False)[1][0])
        leases, self._to_release = self._to_release[:RELEASES_MAX], self._to_release[RELEASES_MAX:]
        if not leases:
            return []
        gone = set(leases)
        for offset in [o for o, p in self._pending.items() if p.lease in gone]:
            del self._pending[offset]
        for lease in leases:
            self._readers.pop(lease, None)
        return [ReleaseLeases(leases=tuple(leases))]

    def _uncache(self, reader: _Reader) -> None:
        self._cached_bytes -= reader.size
        self._to_release.append(reader.lease)

    def _region(self, request: CreateRegion | OpenObject, object_id: str) -> RegionGranted:
        """Asks for a region; when the store is full, empties the lease cache (cached
        leases hold regions too) and asks once more."""
        reply = self._request(request)
        if isinstance(reply, StoreRefused) and reply.kind == "full" and self._cache:
            reply = self._request(request, empty_cache=True)
        if isinstance(reply, StoreRefused) and reply.kind == "missing":
            raise ObjectNotFoundError(reply.message)
        return self._expect(reply, object_id)

    def _request(self, request: Request, *, empty_cache: bool = False) -> Reply:
        with self._lock:
            if self._closed:
                raise ObjectStoreClosedError("object store client: used after close()")
            releases = self._take_releases(everything=empty_cache)
            while len(self._to_release):  # more than one packet's worth
                self._exchange_no_reply(releases)
                releases = self._take_releases()
            return self._exchange([*releases, request])

    def _exchange_no_reply(self, packet: list[Request]) -> None:
        try:
            self._sock.send(encode_packet(packet))
        except OSError as exc:
            raise ObjectStoreError(f"object store at {self.socket_path}: the connection "
                                   f"failed: {exc}") from exc

    def _exchange(self, packet: list[Request]) -> Reply:
        try:
            self._sock.send(encode_packet(packet))
            data = self._sock.recv(PACKET_BYTES_MAX)
        except OSError as exc:
            raise ObjectStoreError(f"object store at {self.socket_path}: the connection "
                                   f"failed: {exc}") from exc
        if not data:
            raise ObjectStoreError(f"object store at {self.socket_path}: the node daemon "
                                   "closed the connection")
        replies = decode_replies(data)
        return replies[-1]

    @staticmethod
    def _expect(reply: Reply, object_id: str) -> RegionGranted:
        if isinstance(reply, RegionGranted):
            return reply
        if isinstance(reply, StoreRefused) and reply.kind == "full":
            raise ObjectStoreFullError(reply.message, object_id=object_id, size=reply.size,
                                       capacity_bytes=reply.capacity_bytes,
                                       used_bytes=reply.used_bytes)
        raise ObjectStoreError(getattr(reply, "message", f"object store: unexpected {reply!r}"))
