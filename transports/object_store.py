"""The node's shared-memory object store.

Theory of operation
-------------------
One ``SharedMemoryStore`` per node. Its memory is an *arena*: one tmpfs file
``<shm_dir>/shoal-<name>-arena`` of ``capacity_bytes`` (rounded up to a page),
mapped once writable and once read-only (``PROT_READ``), with each object in a
page-aligned region; ``object_store_memory.Arena`` owns it (layout, first-touch
pre-faulting, reader tracking), and this module owns the objects: phases, pins,
LRU order, eviction and spilling. ``prefault=True`` allocates the whole arena up
front.

Object phases::

    create ──> CREATED ──seal──> SEALED ──spill──> SPILLED
                  │                │  ^──restore (get)──┘
                  └──delete────────┴──evict / delete──> (gone)

* ``CREATED``: a region is reserved and the writer fills it; ``get`` refuses it.
* ``SEALED``: immutable, in memory, on the LRU list (touched by ``seal`` and ``get``).
* ``SPILLED``: the bytes live only in a file in ``spill_dir``; ``get`` restores them.

Pinning marks the primary copy that the raylet keeps while it is referenced.
When a reservation does not fit, the store first *evicts* unpinned sealed objects
(secondary copies, least recently used first), then *spills* pinned ones to disk
(LRU first), stopping as soon as a large enough contiguous block is free. Before
touching anything it checks that enough could be reclaimed at all, so a put that
cannot succeed evicts nothing; it raises ``ObjectStoreFullError`` instead, which
says what was asked, what the store holds and what the user can do. A spilled
object keeps its spill file after a restore, so spilling it again costs no write.

Readers and safety. ``create`` and ``get`` hand out memoryviews derived from
per-region numpy views, and arrays that ``deserialize_from`` builds keep them alive
through their ``base`` chain, so the arena knows exactly which regions have live
users (see ``object_store_memory``). Such a region is never evicted, spilled or
reused: ``delete`` forgets the id at once but the region stays quarantined until
the last user lets go. The mappings cannot be unmapped while any view exists
(Python's ``mmap`` refuses), so no access can ever fault. ``close`` unlinks the
arena and every spill file at once (memory still viewed by live arrays stays valid
until they are released), and a ``weakref.finalize`` does the same if the store is
dropped without ``close``.

Invariants (``check_invariants``): allocator free space plus the lengths of all
in-memory and quarantined regions equals the capacity, with no overlaps; the LRU
list is exactly the in-memory sealed objects; every spilled object has a spill
file.

Thread safety: every public method takes one lock; ``put_serialized`` copies the
bytes outside it (the region is ``CREATED``, so nothing else touches it).
"""

from __future__ import annotations

import enum
import gc
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from shoal.transports.object_store_alloc import round_up_to_page
from shoal.transports.object_store_errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectSpillError,
    ObjectStateError,
    ObjectStoreClosedError,
    ObjectStoreError,
    ObjectStoreFullError,
)
from shoal.transports.object_store_memory import (
    Arena,
    ObjectStoreStats,
    Region,
    read_file_into,
    region_in_use,
    remove_files,
    unlink_quietly,
    write_new_file,
)

if TYPE_CHECKING:
    from shoal.transports.object_store_memory import View
    from shoal.transports.serialization import SerializedObject

__all__ = [
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectPhase",
    "ObjectSpillError",
    "ObjectStateError",
    "ObjectStoreClosedError",
    "ObjectStoreError",
    "ObjectStoreFullError",
    "ObjectStoreStats",
    "SharedMemoryStore",
]

_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]+")


class ObjectPhase(enum.Enum):
    CREATED = "created"
    SEALED = "sealed"
    SPILLED = "spilled"


@dataclass(slots=True, eq=False)
class _Entry:
    object_id: str
    size: int
    phase: ObjectPhase
    region: Region | None  # None while spilled
    pinned: bool = False
    spill_path: str | None = None


class SharedMemoryStore:
    """A node's shared-memory object store with LRU eviction and spilling.

    Args:
        name: Names the files, ``<shm_dir>/shoal-<name>-arena``; letters, digits, ``_.-``.
        capacity_bytes: Bytes of shared memory for objects (rounded up to a page).
        spill_dir: Directory for spilled objects (created on first spill).
        shm_dir: The tmpfs directory that holds the arena.
        prefault: Allocate and map every page of the arena now, so that no put ever
            pays for first-touch page allocation (commits ``capacity_bytes`` of RAM).
        populate: Map newly allocated pages into this process's writable mapping at
            once (``MADV_POPULATE_WRITE``): right when writers live in this process;
            a store whose writers are other processes (``object_store_client``, which
            populate their own mappings) passes False and only allocates the pages.

    Raises:
        ValueError: Bad name or capacity.
        ObjectStoreError: The arena file exists already or cannot be created.
    """

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        spill_dir: str | os.PathLike[str],
        *,
        shm_dir: str | os.PathLike[str] = "/dev/shm",
        prefault: bool = False,
        populate: bool = True,
    ) -> None:
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"object store: name {name!r} must match [A-Za-z0-9_.-]+")
        if not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
            raise ValueError(
                f"object store {name!r}: capacity_bytes must be > 0, got {capacity_bytes!r}"
            )
        self._name = name
        self._capacity = round_up_to_page(capacity_bytes)
        self._spill_dir = Path(spill_dir)
        self._path = str(Path(shm_dir) / f"shoal-{name}-arena")
        self._lock = threading.RLock()
        self._closed = False
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._spill_seq = 0
        self._counters = {"evictions": 0, "spills": 0, "restores": 0, "spilled": 0, "restored": 0}
        self._files: dict[str, None] = {}  # every file to remove at close
        # Called with the id of each secondary copy that eviction dropped for good,
        # under the store's lock: it must only record the id (e.g. queue it), never
        # call back into the store.
        self.on_evicted: Callable[[str], None] | None = None
        self._finalizer = weakref.finalize(self, remove_files, os.getpid(), self._files)
        try:
            self._arena = Arena(self._path, self._capacity, populate=populate)
        except FileExistsError:
            raise ObjectStoreError(
                f"object store {name!r}: {self._path} already exists: another store with "
                "this name is running, or a crashed one left it behind (remove the file)"
            ) from None
        except OSError as exc:
            raise ObjectStoreError(
                f"object store {name!r}: cannot create {self._path}: {exc}"
            ) from exc
        self._files[self._path] = None
        if prefault:
            try:
                self._arena.make_resident(0, self._capacity)
            except OSError as exc:
                self.close()
                raise self._tmpfs_full_error("(prefault)", self._capacity, exc) from exc

    # ----------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        """The arena file; another process maps it and reads objects by offset."""
        return self._path

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes of the arena reserved by objects (page-rounded), quarantined ones included."""
        with self._lock:
            self._arena.reap()
            return self._capacity - self._arena.free_bytes

    def __repr__(self) -> str:
        return f"SharedMemoryStore({self._name!r}, capacity_bytes={self._capacity})"

    # ----------------------------------------------------------------- public API

    def create(self, object_id: str, size: int) -> memoryview:
        """Reserves ``size`` bytes for a new object and returns them, writable.

        Fill the memoryview, release it (``with store.create(...) as buf:``), then call
        ``seal``. If there is no room, evicts and spills as described in the module doc.

        Args:
            object_id: A new object id.
            size: Bytes to reserve (>= 0).

        Returns:
            A writable memoryview of exactly ``size`` bytes of shared memory.

        Raises:
            ValueError: ``size`` is negative or not an int.
            ObjectExistsError: The id is already in the store.
            ObjectStoreFullError: There is no room even after evicting and spilling.
            ObjectSpillError: Spilling to make room failed.
        """
        with self._lock:
            entry = self._reserve(object_id, size)
            assert entry.region is not None and entry.region.writer is not None
            return entry.region.writer.data

    def seal(self, object_id: str) -> None:
        """Makes a created object immutable and visible to ``get``.

        Sealing a sealed (or spilled) object again is a no-op.

        Raises:
            ObjectNotFoundError: The id is not in the store.
        """
        with self._lock:
            entry = self._lookup(object_id, "seal")
            if entry.phase is ObjectPhase.CREATED:
                self._seal_entry(entry)

    def _seal_entry(self, entry: _Entry) -> None:
        assert entry.region is not None
        self._arena.seal(entry.region, entry.size)
        entry.phase = ObjectPhase.SEALED
        self._lru[entry.object_id] = None

    def put_serialized(self, object_id: str, serialized: SerializedObject) -> None:
        """Creates, writes and seals an object in one step (the bytes are copied once).

        Raises:
            ObjectExistsError: The id is already in the store.
            ObjectStoreFullError: There is no room even after evicting and spilling.
            ObjectSpillError: Spilling to make room failed.
        """
        with self._lock:
            entry = self._reserve(object_id, serialized.total_bytes)
            assert entry.region is not None
            writer = entry.region.writer
        try:
            serialized.write_into(writer)  # outside the lock: a big copy must not block gets
        except BaseException:
            del writer
            with self._lock:
                if self._entries.get(object_id) is entry:
                    self._forget(entry, force=True)  # only the traceback still sees it
            raise
        del writer
        with self._lock:
            self._check_open()
            if self._entries.get(object_id) is not entry:  # deleted while we wrote
                raise ObjectNotFoundError(
                    f"object store {self._name!r}: cannot seal object {object_id!r}: it was "
                    "deleted while being written"
                )
            self._seal_entry(entry)

    def get(self, object_id: str) -> memoryview:
        """Returns a sealed object's bytes, read-only and zero-copy.

        A spilled object is restored first (which may evict or spill others). Pass the
        result to ``deserialize_from`` to get arrays that view the shared memory. The
        object cannot be evicted, spilled or reused while the memoryview, or anything
        built on it, is alive.

        Raises:
            ObjectNotFoundError: The id is not in the store.
            ObjectStateError: The object is created but not sealed yet.
            ObjectStoreFullError: A spilled object cannot be restored for lack of room.
            ObjectSpillError: Reading the spill file failed.
        """
        with self._lock:
            entry = self._lookup(object_id, "get")
            if entry.phase is ObjectPhase.CREATED:
                raise ObjectStateError(
                    f"object store {self._name!r}: cannot get object {object_id!r} in phase "
                    "created; expected sealed (seal it after writing)"
                )
            if entry.phase is ObjectPhase.SPILLED:
                self._restore(entry)
            self._lru.move_to_end(object_id)
            assert entry.region is not None and entry.region.reader is not None
            return entry.region.reader.data

    def contains(self, object_id: str) -> bool:
        """True if the object is sealed, in memory or spilled (created ones do not count)."""
        with self._lock:
            entry = self._entries.get(object_id)
            return entry is not None and entry.phase is not ObjectPhase.CREATED

    def location(self, object_id: str) -> tuple[int, int]:
        """``(offset, size)`` of an in-memory object in the arena file, for another process
        that maps the file (``object_store_client``). Spilled objects have none: ``get`` first.

        Raises:
            ObjectNotFoundError: The id is not in the store.
            ObjectStateError: The object is spilled.
        """
        with self._lock:
            entry = self._lookup(object_id, "locate")
            if entry.region is None:
                raise ObjectStateError(
                    f"object store {self._name!r}: cannot locate object {object_id!r} in "
                    "phase spilled; expected created or sealed (get it to restore it)"
                )
            return entry.region.offset, entry.size

    def rename(self, object_id: str, new_id: str) -> None:
        """Gives a created (not yet sealed) object a new id, which must be free.

        Raises:
            ObjectNotFoundError: ``object_id`` is not in the store.
            ObjectStateError: The object is sealed already.
            ObjectExistsError: ``new_id`` is taken.
        """
        with self._lock:
            entry = self._lookup(object_id, "rename")
            if entry.phase is not ObjectPhase.CREATED:
                raise ObjectStateError(
                    f"object store {self._name!r}: cannot rename object {object_id!r} in phase "
                    f"{entry.phase.value}; expected created"
                )
            if new_id in self._entries:
                raise ObjectExistsError(
                    f"object store {self._name!r}: cannot rename object {object_id!r} to "
                    f"{new_id!r}: that id exists already; delete it first"
                )
            del self._entries[object_id]
            entry.object_id = new_id
            self._entries[new_id] = entry

    def pin(self, object_id: str) -> None:
        """Marks the object as a referenced primary copy: never evicted, only spilled.

        Idempotent. Raises ObjectNotFoundError if the id is not in the store.
        """
        with self._lock:
            self._lookup(object_id, "pin").pinned = True

    def unpin(self, object_id: str) -> None:
        """Makes the object evictable again. A spilled object stays on disk until deleted.

        Idempotent. Raises ObjectNotFoundError if the id is not in the store.
        """
        with self._lock:
            self._lookup(object_id, "unpin").pinned = False

    def delete(self, object_id: str) -> bool:
        """Removes the object and its spill file; a missing id is a no-op.

        The id is free for reuse at once. If readers still hold views of the object,
        its memory stays intact and reserved until they release them.

        Returns:
            True if the object was there.
        """
        with self._lock:
            self._check_open()
            entry = self._entries.get(object_id)
            if entry is None:
                return False
            self._forget(entry)
            return True

    def stats(self) -> ObjectStoreStats:
        """Returns a snapshot of occupancy and lifetime counters."""
        with self._lock:
            self._arena.reap()
            entries = list(self._entries.values())
            quarantine = self._arena.quarantine
            regions = [e.region for e in entries if e.region is not None] + quarantine
            counters = self._counters
            return ObjectStoreStats(
                name=self._name,
                capacity_bytes=self._capacity,
                used_bytes=self._capacity - self._arena.free_bytes,
                free_bytes=self._arena.free_bytes,
                largest_free_bytes=self._arena.largest_free_bytes,
                num_objects=len(entries),
                num_created=sum(e.phase is ObjectPhase.CREATED for e in entries),
                num_sealed=sum(e.phase is ObjectPhase.SEALED for e in entries),
                num_spilled=sum(e.phase is ObjectPhase.SPILLED for e in entries),
                num_pinned=sum(e.pinned for e in entries),
                num_in_use=sum(region_in_use(r) for r in regions),
                quarantined_bytes=sum(r.length for r in quarantine),
                spilled_bytes=sum(e.size for e in entries if e.phase is ObjectPhase.SPILLED),
                evictions_total=counters["evictions"],
                spills_total=counters["spills"],
                restores_total=counters["restores"],
                spilled_bytes_total=counters["spilled"],
                restored_bytes_total=counters["restored"],
            )

    def close(self) -> None:
        """Unmaps the arena and removes it and every spill file. Idempotent.

        Memory still viewed by live arrays stays mapped (and valid) until they are
        released, but no file of this store is left behind.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._entries.clear()
            self._lru.clear()
            try:
                self._arena.close()
            finally:
                self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def check_invariants(self) -> None:
        """Asserts the cross-index invariants listed in the module doc (for tests)."""
        with self._lock:
            regions = [e.region for e in self._entries.values() if e.region is not None]
            self._arena.check_invariants(regions)
            sealed = [e.object_id for e in self._entries.values() if e.phase is ObjectPhase.SEALED]
            assert sorted(self._lru) == sorted(sealed), "object store: LRU out of sync"
            for entry in self._entries.values():
                assert (entry.region is None) == (entry.phase is ObjectPhase.SPILLED)
                if entry.spill_path is not None:
                    assert entry.spill_path in self._files, "object store: untracked spill file"

    # ----------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise ObjectStoreClosedError(f"object store {self._name!r}: used after close()")

    def _lookup(self, object_id: str, action: str) -> _Entry:
        self._check_open()
        entry = self._entries.get(object_id)
        if entry is None:
            raise ObjectNotFoundError(
                f"object store {self._name!r}: cannot {action} object {object_id!r}: not in the "
                "store (never created here, deleted, or evicted)"
            )
        return entry

    def _reserve(self, object_id: str, size: int) -> _Entry:
        """Validates a create and reserves its region; the entry starts CREATED."""
        self._check_open()
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(
                f"object store {self._name!r}: cannot create object {object_id!r} with size "
                f"{size!r}; expected an int >= 0"
            )
        existing = self._entries.get(object_id)
        if existing is not None:
            raise ObjectExistsError(
                f"object store {self._name!r}: cannot create object {object_id!r}: it already "
                f"exists in phase {existing.phase.value}; delete it first or use a new id"
            )
        region = self._allocate_region(object_id, size, verb="create")
        entry = _Entry(object_id=object_id, size=size, phase=ObjectPhase.CREATED, region=region)
        self._entries[object_id] = entry
        return entry

    def _allocate_region(self, object_id: str, size: int, *, verb: str) -> Region:
        """Reserves a region, evicting and spilling if needed (see ``_make_room``)."""
        try:
            region = self._arena.allocate(size)
            if region is None:
                self._make_room(object_id, size, round_up_to_page(size), verb=verb)
                region = self._arena.allocate(size)
                assert region is not None, "object store: freed block vanished"
        except OSError as exc:  # the tmpfs itself is full
            raise self._tmpfs_full_error(object_id, size, exc) from exc
        return region

    def _tmpfs_full_error(self, object_id: str, size: int, exc: OSError) -> ObjectStoreFullError:
        return self._full_error(
            object_id,
            size,
            f"the shared-memory filesystem holding {self._path} is full ({exc.strerror})",
            fix="free space there, or lower object_store_memory to what it can hold",
        )

    def _make_room(self, object_id: str, size: int, length: int, *, verb: str) -> None:
        """Evicts, then spills, LRU first, until a block of ``length`` is free."""
        if length > self._capacity:
            raise self._full_error(
                object_id,
                size,
                "it is larger than the store's capacity",
                fix="raise object_store_memory, or split the value into smaller objects",
                verb=verb,
            )
        evictable, spillable = self._victims()
        reclaimable = sum(e.region.length for e in evictable + spillable if e.region)
        if self._arena.free_bytes + reclaimable < length:
            gc.collect()  # views caught in reference cycles may be holding regions
            self._arena.reap()
            evictable, spillable = self._victims()
            reclaimable = sum(e.region.length for e in evictable + spillable if e.region)
        if self._arena.free_bytes + reclaimable < length:
            raise self._full_error(
                object_id,
                size,
                "even after evicting and spilling everything possible only "
                f"{self._arena.free_bytes + reclaimable} bytes would be free; the rest is "
                "held by live readers (views of objects) or unsealed creates",
                verb=verb,
            )
        for entry in evictable:
            if self._evict(entry) >= length:
                return
        for entry in spillable:
            if self._spill(entry) >= length:
                return
        raise self._full_error(
            object_id,
            size,
            "after evicting and spilling everything possible no contiguous free block is "
            "large enough (objects held by readers fragment the free space)",
            verb=verb,
        )

    def _victims(self) -> tuple[list[_Entry], list[_Entry]]:
        """In-memory sealed objects with no live users: (unpinned, pinned), LRU first."""
        evictable: list[_Entry] = []
        spillable: list[_Entry] = []
        for object_id in self._lru:
            entry = self._entries[object_id]
            assert entry.region is not None
            if entry.region.length == 0 or region_in_use(entry.region):
                continue
            (spillable if entry.pinned else evictable).append(entry)
        return evictable, spillable

    def _full_error(
        self,
        object_id: str,
        size: int,
        reason: str,
        *,
        fix: str = "free references to objects you no longer need (del the ObjectRefs and "
        "the arrays read from them) so they can be evicted or spilled, or raise "
        "object_store_memory",
        verb: str = "create",
    ) -> ObjectStoreFullError:
        used = self._capacity - self._arena.free_bytes
        in_use = [
            e for e in self._entries.values() if e.region is not None and region_in_use(e.region)
        ]
        message = (
            f"object store {self._name!r}: cannot {verb} object {object_id!r} of {size} bytes: "
            f"{reason}. The store has capacity {self._capacity} bytes, {used} bytes used by "
            f"{len(self._entries)} objects ({len(in_use)} in use by readers, "
            f"{sum(e.pinned for e in self._entries.values())} pinned), largest free block "
            f"{self._arena.largest_free_bytes} bytes. To fix: {fix}."
        )
        return ObjectStoreFullError(
            message, object_id=object_id, size=size, capacity_bytes=self._capacity, used_bytes=used
        )

    def _forget(self, entry: _Entry, *, force: bool = False) -> None:
        """Drops the object entirely: memory, spill file and id."""
        del self._entries[entry.object_id]
        self._lru.pop(entry.object_id, None)
        if entry.region is not None:
            self._arena.release(entry.region, force=force)
            entry.region = None
        if entry.spill_path is not None:
            unlink_quietly(entry.spill_path)
            self._files.pop(entry.spill_path, None)
            entry.spill_path = None

    def _evict(self, entry: _Entry) -> int:
        """Drops a secondary copy; one with a spill file falls back to SPILLED."""
        assert entry.region is not None
        region = entry.region
        self._counters["evictions"] += 1
        self._lru.pop(entry.object_id)
        entry.region = None
        if entry.spill_path is None:
            del self._entries[entry.object_id]
            if self.on_evicted is not None:
                self.on_evicted(entry.object_id)
        else:
            entry.phase = ObjectPhase.SPILLED
        return self._arena.release(region)

    def _spill(self, entry: _Entry) -> int:
        """Moves a pinned object to disk and frees its memory; returns the freed block."""
        region = entry.region
        assert region is not None and region.reader is not None
        if entry.spill_path is None:
            entry.spill_path = self._write_spill_file(entry.object_id, region.reader)
            self._counters["spills"] += 1
            self._counters["spilled"] += entry.size
        self._lru.pop(entry.object_id)
        entry.region = None
        entry.phase = ObjectPhase.SPILLED
        return self._arena.release(region)

    def _write_spill_file(self, object_id: str, data: View) -> str:
        self._spill_seq += 1
        path = str(self._spill_dir / f"shoal-{self._name}-{self._spill_seq}.spill")
        self._files[path] = None
        try:
            self._spill_dir.mkdir(parents=True, exist_ok=True)
            write_new_file(path, data)
        except OSError as exc:
            unlink_quietly(path)
            self._files.pop(path, None)
            raise ObjectSpillError(
                f"object store {self._name!r}: cannot spill object {object_id!r} "
                f"({data.nbytes} bytes) to {path}: {exc}; make sure the spill directory "
                "exists, is writable and has free space, or raise object_store_memory"
            ) from exc
        return path

    def _restore(self, entry: _Entry) -> None:
        """Reads a spilled object back into memory (it keeps its spill file)."""
        assert entry.spill_path is not None
        region = self._allocate_region(entry.object_id, entry.size, verb="restore spilled")
        assert region.writer is not None
        try:
            read_file_into(entry.spill_path, region.writer)
        except OSError as exc:
            self._arena.release(region, force=True)  # never handed out
            raise ObjectSpillError(
                f"object store {self._name!r}: cannot restore spilled object "
                f"{entry.object_id!r} ({entry.size} bytes) from {entry.spill_path}: {exc}"
            ) from exc
        self._arena.seal(region, entry.size)
        entry.region = region
        entry.phase = ObjectPhase.SEALED
        self._lru[entry.object_id] = None
        self._counters["restores"] += 1
        self._counters["restored"] += entry.size
