"""The object store's memory: the arena, its regions, reader tracking, file I/O.

The arena. One tmpfs file of ``capacity`` bytes, mapped twice for the life of the
store: writable (for writers) and read-only (``PROT_READ``, for readers). Objects
live in page-aligned regions handed out by a best-fit ``RegionAllocator``. Mapping
once means a put is one ``memcpy`` into already-mapped pages, with no
``open``/``mmap``/``munmap`` per object, and a region reused after a delete is
already resident, so large puts run at memory bandwidth. Pages the arena never
used are allocated with ``fallocate`` and pre-faulted with ``MADV_POPULATE_WRITE``
before first use: several times faster than a page fault per 4 KiB, and a full
tmpfs becomes an ``OSError`` (ENOSPC) here instead of a ``SIGBUS`` in a memcpy.

Reader tracking. The store never hands out its mappings directly. For each region
it keeps small numpy views (``Region.writer`` on the writable mapping,
``Region.reader`` on the read-only one), and every memoryview it hands out, and
every array ``deserialize_from`` builds on one, references such a view through its
``base`` chain (memoryview -> managed buffer -> view). So a region has live users
exactly when one of its views has more references than the region's own, which
``region_in_use`` reads with ``sys.getrefcount``. The baseline count is measured at
import through the same code path, so it does not depend on interpreter details.
This is CPython-specific, as is shoal. A region with live users is never reused:
``release`` quarantines it until they let go, and ``reap`` frees it later.

The views also pin the mappings: numpy wraps the ``mmap`` in a memoryview, which
holds a buffer export, so Python refuses to unmap the arena while any view is
alive, and no access can ever fault, even after ``close``.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import itertools
import mmap
import os
import sys
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Final

from shoal.transports.object_store_alloc import RegionAllocator, round_up_to_page

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    View = npt.NDArray[np.uint8]

# numpy is imported where a view is made, not here: a node daemon imports this module at
# start-up, and numpy's import (a tenth of a second) would delay ``init()``; the daemon
# makes its first view when the first object is stored.

_IO_CHUNK_BYTES: Final = 1 << 30  # one read/write syscall moves at most this much
_MADV_POPULATE_WRITE: Final = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14
_STALE_AGE_S: Final = 2.0  # an unlocked arena younger than this may be starting up


@dataclass(slots=True, eq=False)
class Region:
    """A reserved part of the arena and the store's own views of it.

    ``writer`` views the writable mapping while the object is being filled (and for as
    long as its creator keeps the memoryview); ``reader`` views the read-only mapping
    once sealed. Every memoryview handed out is derived from one of them.
    """

    offset: int
    length: int
    writer: View | None
    reader: View | None


def reference_counts(region: Region) -> tuple[int, int]:
    """The reference counts of the region's (writer, reader) views; 0 for a missing one."""
    writer = sys.getrefcount(region.writer) if region.writer is not None else 0
    reader = sys.getrefcount(region.reader) if region.reader is not None else 0
    return writer, reader


@cache
def baseline_refs() -> int:
    """The count a view has when only its region references it, measured the same way."""
    import numpy as np

    return reference_counts(Region(0, 0, np.empty(1, np.uint8), None))[0]


def region_in_use(region: Region) -> bool:
    """True while anyone outside the store holds a view of the region."""
    writer, reader = reference_counts(region)
    return writer > baseline_refs() or reader > baseline_refs()


def empty_view(*, writable: bool = False) -> View:
    """A zero-byte view, for zero-size objects (which take no arena space)."""
    import numpy as np

    view = np.empty(0, dtype=np.uint8)
    view.flags.writeable = writable
    return view


@dataclass(frozen=True, slots=True)
class ObjectStoreStats:
    """A snapshot of the store, for ``shoal status`` and tests."""

    name: str
    capacity_bytes: int
    used_bytes: int
    free_bytes: int
    largest_free_bytes: int
    num_objects: int
    num_created: int
    num_sealed: int
    num_spilled: int
    num_pinned: int
    num_in_use: int
    quarantined_bytes: int
    spilled_bytes: int
    evictions_total: int
    spills_total: int
    restores_total: int
    spilled_bytes_total: int
    restored_bytes_total: int


def unlink_quietly(path: str) -> None:
    """Best-effort removal: a file that is gone, or never could be created, is fine."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass


def remove_files(owner_pid: int, paths: dict[str, None]) -> None:
    """Unlinks the store's files (its finalizer; it must not reference the store)."""
    if os.getpid() != owner_pid:
        return  # a forked child inherited the finalizer; the parent owns the files
    for path in list(paths):
        unlink_quietly(path)
        paths.pop(path, None)


def remove_stale_arenas(shm_dir: str, prefix: str = "shoal-") -> list[str]:
    """Unlinks the arena files under ``shm_dir`` whose store process has died.

    A live store holds an exclusive ``flock`` on its arena (see ``Arena``); the kernel
    drops it when the process ends, however it ends. So an arena whose lock can be
    taken belongs to nobody. Files younger than a moment are skipped: their store may
    be between creating the file and locking it.

    Returns:
        The paths removed.
    """
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(shm_dir), f"{prefix}*-arena"))):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < _STALE_AGE_S:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # locked: its store is alive
        finally:
            os.close(fd)
        unlink_quietly(path)
        removed.append(path)
    return removed


def write_new_file(path: str, data: View) -> None:
    """Writes ``data`` to a new file (O_EXCL), straight from the mapping; raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with data.data as view:
            written = 0
            while written < view.nbytes:
                written += os.write(fd, view[written : written + _IO_CHUNK_BYTES])
    finally:
        os.close(fd)


def read_file_into(path: str, dest: View) -> None:
    """Fills ``dest`` from the start of a file, straight into the mapping; raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with dest.data as view:
            done = 0
            while done < view.nbytes:
                count = os.readv(fd, [view[done : done + _IO_CHUNK_BYTES]])
                if count == 0:
                    raise OSError(f"file ends after {done} of {view.nbytes} bytes")
                done += count
    finally:
        os.close(fd)


class Arena:
    """The shared-memory file, its two mappings, and the regions carved from it.

    Args:
        path: The tmpfs file to create (it must not exist).
        capacity_bytes: The file's size, a positive multiple of the page size.
        populate: Map pages into this process's writable mapping as they are first
            allocated (for writers in this process; one that only serves other
            processes, which map the file themselves, skips that cost).

    Raises:
        OSError: The file exists (``FileExistsError``) or cannot be created or mapped;
            nothing is left behind.
    """

    def __init__(self, path: str, capacity_bytes: int, *, populate: bool = True) -> None:
        self.path = path
        self.capacity_bytes = capacity_bytes
        self._populate = populate
        self.quarantine: list[Region] = []
        self._alloc = RegionAllocator(capacity_bytes)
        self._resident_end = 0  # every page below this is allocated in the file
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Held for the life of the store: ``remove_stale_arenas`` takes the file's lock
            # to learn that the process that made it is gone.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(self._fd, capacity_bytes)
            self._rw_map = mmap.mmap(self._fd, capacity_bytes, access=mmap.ACCESS_WRITE)
            self._ro_map = mmap.mmap(self._fd, capacity_bytes, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(self._fd)
            unlink_quietly(path)
            raise

    @property
    def free_bytes(self) -> int:
        return self._alloc.free_bytes

    @property
    def largest_free_bytes(self) -> int:
        return self._alloc.largest_free_bytes

    def allocate(self, size: int) -> Region | None:
        """Reserves a region for ``size`` bytes with a writable view of exactly ``size``.

        Returns:
            The region, or None when no free block is large enough.

        Raises:
            OSError: The tmpfs cannot back the region (ENOSPC, EDQUOT); nothing is reserved.
        """
        length = round_up_to_page(size)
        if length == 0:
            return Region(offset=0, length=0, writer=empty_view(writable=True), reader=None)
        self.reap()
        offset = self._alloc.allocate(length)
        if offset is None:
            return None
        try:
            self.make_resident(offset, offset + length)
        except BaseException:
            self._alloc.free(offset, length)
            raise
        import numpy as np

        writer = np.frombuffer(self._rw_map, dtype=np.uint8, count=size, offset=offset)
        return Region(offset=offset, length=length, writer=writer, reader=None)

    def make_resident(self, start: int, end: int) -> None:
        """Allocates the file's pages in ``[start, end)`` that were never used before."""
        if end <= self._resident_end:
            return
        start = max(start, self._resident_end)
        try:
            os.posix_fallocate(self._fd, start, end - start)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Not supported here: the pages get allocated on first touch instead.
        else:
            try:
                if self._populate:
                    self._rw_map.madvise(_MADV_POPULATE_WRITE, start, end - start)
            except OSError:
                pass  # older kernel: pages get mapped on first touch instead
        self._resident_end = end

    def seal(self, region: Region, size: int) -> None:
        """Adds the read-only view, and drops the writer's unless someone still holds it."""
        if region.length:
            import numpy as np

            region.reader = np.frombuffer(
                self._ro_map, dtype=np.uint8, count=size, offset=region.offset
            )
        else:
            region.reader = empty_view()
        if reference_counts(region)[0] <= baseline_refs():
            region.writer = None

    def release(self, region: Region, *, force: bool = False) -> int:
        """Frees a region, or quarantines it while views are alive.

        Args:
            region: A region from ``allocate``, not released before.
            force: Free it even so. Only for a region never handed out, whose remaining
                references are the frames of a traceback that nobody will resume.

        Returns:
            The length of the free block that now holds the region (0 if quarantined).
        """
        if region.length == 0:
            return 0
        if not force and region_in_use(region):
            self.quarantine.append(region)
            return 0
        region.writer = region.reader = None
        return self._alloc.free(region.offset, region.length)

    def reap(self) -> None:
        """Frees the quarantined regions whose users have all let go."""
        if not self.quarantine:
            return
        keep = []
        for region in self.quarantine:
            if region_in_use(region):
                keep.append(region)
            else:
                region.writer = region.reader = None
                self._alloc.free(region.offset, region.length)
        self.quarantine = keep

    def close(self) -> None:
        """Unmaps what no view holds and closes the file (the caller unlinks it)."""
        self.quarantine.clear()
        for mapping in (self._rw_map, self._ro_map):
            try:
                mapping.close()
            except BufferError:
                pass  # still viewed by a caller; unmapped when the last view goes
        os.close(self._fd)

    def check_invariants(self, regions: list[Region]) -> None:
        """Asserts that ``regions`` plus the quarantine plus free space tile the arena."""
        self._alloc.check_invariants()
        spans = sorted((r.offset, r.length) for r in regions + self.quarantine if r.length)
        for (a_off, a_len), (b_off, _) in itertools.pairwise(spans):
            assert a_off + a_len <= b_off, f"object store: regions overlap at {b_off}"
        reserved = sum(length for _, length in spans)
        assert reserved + self.free_bytes == self.capacity_bytes, "object store: bytes leak"
