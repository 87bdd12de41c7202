"""The node daemon's object store: the store, its server, and the raylet's object effects.

Theory of operation
-------------------
Each node daemon owns its node's ``SharedMemoryStore`` (``transports/object_store.py``):
an arena file ``/dev/shm/shoal-<session>-<node>-arena`` of ``object_store_memory``
bytes (default: 30% of RAM, as Ray, and no more than ``/dev/shm`` has free), named
after the session so that removing the session removes it; spill files go to
``<session>/spill``. At start, arenas that no live store holds any more (their
daemon died without cleaning up) are removed.

The node's drivers and workers map the arena and write and read objects in place;
what they ask of the store goes to a ``StoreServer`` thread on
``<session>/<node>.store.sock`` (``transports/object_store_service.py``). Objects
they seal as primary copies (puts, task returns) are pinned: the store spills
them when memory runs short, never evicts them.

The raylet's host effects, carried out here on the daemon's trio thread:

* ``SendObjectChunks``: read the object from the store (restoring it if it was
  spilled) and send the chunks asked for, from the raylet to ``dst``. A chunk's
  data is a memoryview of the store, encoded straight into the transport's frame:
  the region stays in use until every chunk is on its way. The chunks are paced:
  a trio task hands the transport the next one only while fewer than
  ``SEND_WINDOW_CHUNKS`` wait for that node (``backlog``), so a large object
  neither piles up in the transport nor holds the node's other messages behind
  it for seconds; if the backlog does not move for ``SEND_STALL_S`` (the node is
  gone), the rest is dropped and the puller asks again. An object the store does
  not hold is answered ``ObjectMissing``.
* ``WriteObjectChunk``: the first chunk of an object creates it (``total_size``),
  each chunk is copied in at its offset, and once the raylet counts the object
  local (every chunk arrived) it is sealed, unpinned: a secondary copy, which the
  store may evict. If it cannot be created (the store is full even after
  spilling), its chunks are dropped and the reason is kept for readers.
* ``DeleteObject``: drop the copy (its memory is reused once no reader holds it).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import trio
from shoal.kernel.messages import Address, Msg
from shoal.kernel.raylet.object_protocol import (
    DeleteObject,
    ObjectChunk,
    ObjectMissing,
    SendObjectChunks,
    WriteObjectChunk,
)
from shoal.transports.object_store import SharedMemoryStore
from shoal.transports.object_store_errors import ObjectStoreError, ObjectStoreFullError
from shoal.transports.object_store_memory import remove_stale_arenas
from shoal.transports.object_store_service import StoreServer, StoreService

SHM_DIR: Final = "/dev/shm"
DEFAULT_STORE_FRACTION: Final = 0.3
MISSING_REASONS_MAX: Final = 10_000  # failed transfers remembered for readers' errors
SEND_WINDOW_CHUNKS: Final = 8  # chunks of one transfer queued in the transport at most
SEND_POLL_S: Final = 0.001
SEND_STALL_S: Final = 10.0

Route = Callable[[Address, Address, Msg], None]
Backlog = Callable[[str], int]  # messages queued in the transport for a node
Spawn = Callable[..., object]  # a nursery's start_soon


def default_capacity_bytes() -> int:
    """30% of the machine's RAM, and no more than ``/dev/shm`` has free."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    capacity = int(total * DEFAULT_STORE_FRACTION)
    try:
        shm = os.statvfs(SHM_DIR)
        capacity = min(capacity, shm.f_bavail * shm.f_frsize)
    except OSError:
        pass
    return max(capacity, 1 << 20)


class NodeObjects:
    """The object store of one node daemon (see the module docstring).

    Args:
        session_dir: The session directory (its name names the arena).
        node_id: This node.
        capacity_bytes: The store's size; 0 for the default.
        token: The cluster token clients must present.
        route: The daemon's router, for chunks and ``ObjectMissing``.
        log: The daemon's structlog logger.
        backlog: How many messages the transport holds for a node (paces chunks).
        spawn: Starts a trio task (a nursery's ``start_soon``) for paced sends.
    """

    def __init__(self, session_dir: str, node_id: str, capacity_bytes: int, token: str,
                 route: Route, log: Any, *, backlog: Backlog, spawn: Spawn) -> None:
        self._route = route
        self._log = log
        self._backlog = backlog
        self._spawn = spawn
        for path in remove_stale_arenas(SHM_DIR):
            log.info("objects.stale_arena_removed", path=path)
        session_name = os.path.basename(os.path.normpath(session_dir))
        self.store = SharedMemoryStore(
            f"{session_name}-{node_id}", capacity_bytes or default_capacity_bytes(),
            os.path.join(session_dir, "spill"), shm_dir=SHM_DIR, populate=False)
        self.socket_path = os.path.join(session_dir, f"{node_id}.store.sock")
        self._missing: dict[str, str] = {}
        self.server = StoreServer(StoreService(self.store, self._missing), self.socket_path,
                                  token, log)
        self._partial: dict[str, memoryview] = {}  # objects being received, by id
        log.info("objects.store_ready", arena=self.store.path,
                 capacity_bytes=self.store.capacity_bytes)

    def start(self) -> None:
        try:
            self.server.start()
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        """Stops the server and removes the arena and every spill file. Idempotent."""
        try:
            self.server.stop()
        finally:
            self._partial.clear()
            self.store.close()

    # --- the raylet's effects ----------------------------------------------------------

    def on_effect(self, raylet: Address, effect: Msg, is_local: Callable[[str], bool]) -> None:
        match effect:
            case SendObjectChunks():
                self._send_chunks(raylet, effect)
            case WriteObjectChunk():
                self._write_chunk(effect, is_local)
            case DeleteObject():
                self._delete(effect.object_id)
            case _:
                raise TypeError(f"node objects: not an object effect: {type(effect).__name__}")

    def _send_chunks(self, raylet: Address, effect: SendObjectChunks) -> None:
        try:
            data = self.store.get(effect.object_id)
        except ObjectStoreError as exc:
            self._log.info("objects.send_missing", object_id=effect.object_id, reason=str(exc))
            self._route(raylet, effect.dst, ObjectMissing(object_id=effect.object_id))
            return
        size, step = data.nbytes, effect.chunk_bytes
        count = max(1, -(-size // step))
        chunks = deque(ObjectChunk(  # their data are memoryviews: encoded in place
            object_id=effect.object_id, index=index, chunk_count=count, size=size,
            data=data[index * step:(index + 1) * step])  # type: ignore[arg-type]
            for index in effect.chunks if index < count)
        if len(chunks) <= SEND_WINDOW_CHUNKS:
            for chunk in chunks:
                self._route(raylet, effect.dst, chunk)
        else:
            self._spawn(self._send_paced, raylet, effect.dst, chunks)

    async def _send_paced(self, raylet: Address, dst: Address,
                          chunks: deque[ObjectChunk]) -> None:
        """Sends ``chunks`` while the transport holds fewer than a window of them."""
        stalled_since = trio.current_time()
        while chunks:
            while self._backlog(dst.node) >= SEND_WINDOW_CHUNKS:
                if trio.current_time() - stalled_since > SEND_STALL_S:
                    self._log.warning("objects.send_stalled", object_id=chunks[0].object_id,
                                      dst=str(dst), unsent=len(chunks))
                    return  # the puller asks again for what is missing
                await trio.sleep(SEND_POLL_S)
            self._route(raylet, dst, chunks.popleft())  # its view of the store goes with it
            stalled_since = trio.current_time()

    def _write_chunk(self, effect: WriteObjectChunk, is_local: Callable[[str], bool]) -> None:
        object_id = effect.object_id
        buffer = self._partial.get(object_id)
        if buffer is None:
            buffer = self._create(object_id, effect.total_size)
            if buffer is None:
                return
        end = effect.offset + len(effect.data)
        if end > buffer.nbytes:
            self._log.warning("objects.chunk_out_of_range", object_id=object_id, end=end,
                              size=buffer.nbytes)
            return
        buffer[effect.offset:end] = effect.data
        if is_local(object_id):  # the raylet has every chunk: a secondary copy, unpinned
            del self._partial[object_id], buffer  # the writer's view: done writing
            self.store.seal(object_id)

    def _create(self, object_id: str, size: int) -> memoryview | None:
        if self.store.contains(object_id) or object_id in self._missing:
            return None  # a copy is here already, or it cannot be stored: drop the chunk
        try:
            buffer = self.store.create(object_id, size)
        except ObjectStoreFullError as exc:
            self._log.error("objects.transfer_not_stored", object_id=object_id, size=size,
                            error=str(exc))
            if len(self._missing) >= MISSING_REASONS_MAX:
                self._missing.pop(next(iter(self._missing)))
            self._missing[object_id] = f"its transfer to this node could not be stored: {exc}"
            return None
        self._partial[object_id] = buffer
        return buffer

    def _delete(self, object_id: str) -> None:
        self._partial.pop(object_id, None)
        self._missing.pop(object_id, None)
        self.store.delete(object_id)
