"""Tests of shoal.transports.object_store: the node's shared-memory object store."""

from __future__ import annotations

import errno
import gc
import glob
import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shoal.transports import object_store
from shoal.transports.object_store import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectSpillError,
    ObjectStateError,
    ObjectStoreClosedError,
    ObjectStoreError,
    ObjectStoreFullError,
    SharedMemoryStore,
)
from shoal.transports.object_store_alloc import PAGE_BYTES, RegionAllocator
from shoal.transports.serialization import deserialize_from, serialize

MIB = 1 << 20
_names = itertools.count()


def _shm_files(name: str) -> list[str]:
    return glob.glob(f"/dev/shm/shoal-{name}-*") + glob.glob(f"/dev/shm/shoal-{name}")


def _spill_files(spill_dir: Path) -> list[Path]:
    return sorted(spill_dir.glob("*.spill")) if spill_dir.exists() else []


def _unique_name() -> str:
    return f"test-{os.getpid()}-{next(_names)}"


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


@pytest.fixture
def store(spill_dir: Path) -> Iterator[SharedMemoryStore]:
    """A 4 MiB store (1024 pages), closed and checked for leftovers after the test."""
    name = _unique_name()
    shm_store = SharedMemoryStore(name, 4 * MIB, spill_dir)
    try:
        yield shm_store
        shm_store.check_invariants()
    finally:
        shm_store.close()
        assert _shm_files(name) == []
        assert _spill_files(spill_dir) == []


def _fill(store: SharedMemoryStore, object_id: str, size: int, byte: int) -> None:
    with store.create(object_id, size) as buf:
        buf[:] = bytes([byte]) * size
    store.seal(object_id)


def _first_byte(store: SharedMemoryStore, object_id: str) -> int:
    with store.get(object_id) as view:
        return view[0]


# --------------------------------------------------------------------- basics


def test_create_seal_get_round_trip(store: SharedMemoryStore) -> None:
    with store.create("a", 5) as buf:
        assert not buf.readonly and buf.nbytes == 5
        buf[:] = b"hello"
    assert not store.contains("a")  # not sealed yet
    store.seal("a")
    assert store.contains("a")
    with store.get("a") as view:
        assert view.readonly
        assert bytes(view) == b"hello"
        with pytest.raises(TypeError):
            view[0] = 1
    assert store.used_bytes == PAGE_BYTES
    store.seal("a")  # sealing twice is a no-op


def test_numpy_round_trip_is_zero_copy_and_read_only(store: SharedMemoryStore) -> None:
    array = np.arange(50_000, dtype=np.float64)
    store.put_serialized("a", serialize(array))
    result = deserialize_from(store.get("a"))
    assert isinstance(result, np.ndarray)
    assert np.array_equal(result, array)
    assert np.shares_memory(result, np.frombuffer(store.get("a"), dtype=np.uint8))
    assert result.ctypes.data % 64 == 0
    assert not result.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        result[0] = 1.0
    with pytest.raises(ValueError):
        result.flags.writeable = True


def test_nested_values_and_functions_round_trip(store: SharedMemoryStore) -> None:
    scale = 3
    value = {
        "arrays": [np.ones((10, 10)), np.arange(7, dtype=np.uint8)],
        "fn": lambda x: x * scale,
        "meta": ("label", 1.5),
    }
    store.put_serialized("v", serialize(value))
    result = deserialize_from(store.get("v"))
    assert isinstance(result, dict)
    assert np.array_equal(result["arrays"][0], np.ones((10, 10)))
    assert np.array_equal(result["arrays"][1], np.arange(7, dtype=np.uint8))
    assert result["fn"](2) == 6
    assert result["meta"] == ("label", 1.5)


def test_hundred_megabyte_array_round_trip(spill_dir: Path) -> None:
    name = _unique_name()
    array = np.arange(100 * MIB // 8, dtype=np.int64)
    with SharedMemoryStore(name, 101 * MIB, spill_dir) as big:
        big.put_serialized("big", serialize(array))
        result = deserialize_from(big.get("big"))
        assert isinstance(result, np.ndarray)
        assert not result.flags.writeable
        assert np.array_equal(result, array)
        del result
    assert _shm_files(name) == []


def test_zero_size_object(store: SharedMemoryStore) -> None:
    assert store.create("empty", 0).nbytes == 0
    store.seal("empty")
    assert bytes(store.get("empty")) == b""
    assert store.used_bytes == 0


def test_prefaulted_store(spill_dir: Path) -> None:
    name = _unique_name()
    with SharedMemoryStore(name, MIB, spill_dir, prefault=True) as small:
        _fill(small, "a", MIB, 7)
        assert _first_byte(small, "a") == 7
    assert _shm_files(name) == []


# --------------------------------------------------------------------- eviction and spilling


def test_unpinned_objects_are_evicted_least_recently_used_first(store: SharedMemoryStore) -> None:
    evicted: list[str] = []
    store.on_evicted = evicted.append
    for index, object_id in enumerate("abcd"):
        _fill(store, object_id, MIB, index)
    assert store.used_bytes == store.capacity_bytes
    assert _first_byte(store, "a") == 0  # touching "a" makes "b" the oldest
    _fill(store, "e", MIB, 4)
    assert [store.contains(x) for x in "abcde"] == [True, False, True, True, True]
    assert store.stats().evictions_total == 1
    assert evicted == ["b"]  # the node daemon tells its raylet, which forgets the copy
    with pytest.raises(ObjectNotFoundError, match=r"cannot get object 'b': not in the store"):
        store.get("b")
    store.check_invariants()


def test_eviction_frees_a_contiguous_block(store: SharedMemoryStore) -> None:
    for object_id in "abcd":
        _fill(store, object_id, MIB, 1)
    _fill(store, "big", 2 * MIB, 2)  # needs two neighbouring megabytes
    assert [store.contains(x) for x in "abcd"] == [False, False, True, True]
    assert _first_byte(store, "big") == 2
    store.check_invariants()


def test_pinned_objects_spill_and_restore_transparently(
    store: SharedMemoryStore, spill_dir: Path
) -> None:
    arrays = {x: np.full(MIB // 8 - 64, i, dtype=np.int64) for i, x in enumerate("abcd")}
    for object_id, array in arrays.items():
        store.put_serialized(object_id, serialize(array))
        store.pin(object_id)
    store.put_serialized("e", serialize(np.zeros(10)))
    stats = store.stats()
    assert (stats.num_spilled, stats.spills_total, stats.evictions_total) == (1, 1, 0)
    assert len(_spill_files(spill_dir)) == 1
    assert all(store.contains(x) for x in "abcde")  # spilled is still contained
    result = deserialize_from(store.get("a"))  # restored: evicts the unpinned "e" for room
    assert np.array_equal(result, arrays["a"])
    stats = store.stats()
    assert (stats.restores_total, stats.num_spilled, stats.evictions_total) == (1, 0, 1)
    assert not store.contains("e")
    store.put_serialized("f", serialize(np.zeros(10)))  # now only pinned ones can make room
    assert store.stats().spills_total == 2
    assert all(np.array_equal(deserialize_from(store.get(x)), arrays[x]) for x in "abcd")
    del result
    store.check_invariants()


def test_unpinned_objects_are_evicted_before_pinned_ones_spill(store: SharedMemoryStore) -> None:
    for object_id in "abcd":
        _fill(store, object_id, MIB, 1)
    store.pin("a")
    store.pin("b")  # "a" and "b" are older than the unpinned "c" and "d"
    _fill(store, "e", 2 * MIB, 2)
    assert [store.contains(x) for x in "abcd"] == [True, True, False, False]
    assert store.stats().num_spilled == 0


def test_respilling_a_restored_object_writes_nothing(
    store: SharedMemoryStore, spill_dir: Path
) -> None:
    _fill(store, "a", 4 * MIB, 9)
    store.pin("a")
    _fill(store, "b", MIB, 1)  # spills "a"
    store.delete("b")
    assert _first_byte(store, "a") == 9  # restored, spill file kept
    _fill(store, "c", MIB, 1)  # "a" leaves memory again without a second write
    assert store.stats().spills_total == 1
    assert len(_spill_files(spill_dir)) == 1
    store.delete("a")
    assert _spill_files(spill_dir) == []


def test_unpinned_restored_object_falls_back_to_its_spill_file(store: SharedMemoryStore) -> None:
    _fill(store, "a", 3 * MIB, 5)
    store.pin("a")
    _fill(store, "b", 2 * MIB, 1)  # spills "a"
    store.delete("b")
    assert _first_byte(store, "a") == 5
    store.unpin("a")
    _fill(store, "c", 2 * MIB, 1)  # evicts the in-memory copy of "a"; its file remains
    assert store.contains("a") and store.stats().num_spilled == 1
    store.delete("c")
    assert _first_byte(store, "a") == 5


def test_objects_with_live_readers_are_neither_evicted_nor_spilled(
    store: SharedMemoryStore,
) -> None:
    for object_id in "abcd":
        _fill(store, object_id, MIB, 1)
    store.pin("c")
    held = store.get("a")  # the oldest, but in use
    _fill(store, "e", MIB, 2)
    assert [store.contains(x) for x in "abcd"] == [True, False, True, True]
    _fill(store, "f", MIB, 3)  # "d" is the oldest unpinned one without readers
    assert not store.contains("d")
    assert held[0] == 1
    del held


def test_unsealed_objects_are_not_evicted(store: SharedMemoryStore) -> None:
    store.create("writing", 3 * MIB).release()
    _fill(store, "a", MIB, 1)
    with pytest.raises(ObjectStoreFullError, match=f"only {MIB} bytes would be free"):
        store.create("b", 2 * MIB)  # "a" could go, but "writing" cannot
    assert store.contains("a")
    assert store.stats().num_created == 1


# --------------------------------------------------------------------- full store


def test_object_larger_than_capacity_raises_a_clear_error(store: SharedMemoryStore) -> None:
    _fill(store, "a", MIB, 1)
    with pytest.raises(ObjectStoreFullError) as info:
        store.create("huge", 5 * MIB)
    message = str(info.value)
    assert message.startswith(
        f"object store {store.name!r}: cannot create object 'huge' of {5 * MIB} bytes: "
        "it is larger than the store's capacity."
    )
    assert f"capacity {4 * MIB} bytes, {MIB} bytes used by 1 objects" in message
    assert "raise object_store_memory" in message
    assert (info.value.size, info.value.capacity_bytes, info.value.used_bytes) == (
        5 * MIB,
        4 * MIB,
        MIB,
    )
    assert isinstance(info.value, ObjectStoreError)
    assert store.contains("a")  # nothing was evicted for a hopeless request


def test_full_of_readers_raises_without_evicting_anything(store: SharedMemoryStore) -> None:
    for object_id in "abcd":
        _fill(store, object_id, MIB, 1)
    held = [store.get(x) for x in "abc"]
    with pytest.raises(ObjectStoreFullError) as info:
        store.create("e", 2 * MIB)
    message = str(info.value)
    assert f"cannot create object 'e' of {2 * MIB} bytes" in message
    assert f"only {MIB} bytes would be free" in message
    assert "3 in use by readers" in message
    assert "free references to objects you no longer need" in message
    assert "raise object_store_memory" in message
    assert store.contains("d")  # not evicted in vain
    del held
    _fill(store, "e", 2 * MIB, 2)  # the readers let go: now it fits


def test_restore_that_cannot_fit_raises_full(store: SharedMemoryStore) -> None:
    _fill(store, "a", 3 * MIB, 1)
    store.pin("a")
    _fill(store, "b", 2 * MIB, 2)  # spills "a"
    held = store.get("b")
    with pytest.raises(ObjectStoreFullError, match=r"cannot restore spilled object 'a'"):
        store.get("a")
    del held
    assert _first_byte(store, "a") == 1


# --------------------------------------------------------------------- delete


def test_delete(store: SharedMemoryStore) -> None:
    _fill(store, "a", MIB, 1)
    assert store.delete("a") is True
    assert not store.contains("a")
    assert store.used_bytes == 0
    with pytest.raises(ObjectNotFoundError, match=r"^object store '.*': cannot get object 'a'"):
        store.get("a")
    assert store.delete("a") is False  # deleting again is a no-op
    _fill(store, "a", MIB, 2)  # the id can be reused
    assert _first_byte(store, "a") == 2


def test_delete_with_a_live_reader_keeps_its_memory_intact(store: SharedMemoryStore) -> None:
    array = np.full(MIB // 8, 42, dtype=np.int64)
    store.put_serialized("a", serialize(array))
    result = deserialize_from(store.get("a"))
    assert isinstance(result, np.ndarray)
    store.delete("a")
    assert not store.contains("a")
    assert store.used_bytes > MIB  # quarantined until the reader lets go
    _fill(store, "b", 2 * MIB, 0)  # fills other space, never the deleted object's
    held = store.get("b")
    with pytest.raises(ObjectStoreFullError):
        store.create("c", 2 * MIB)
    assert np.array_equal(result, array)
    del result, held
    assert store.used_bytes == 2 * MIB
    _fill(store, "c", 2 * MIB, 3)
    store.check_invariants()


def test_delete_of_a_spilled_object_removes_its_file(
    store: SharedMemoryStore, spill_dir: Path
) -> None:
    _fill(store, "a", 3 * MIB, 1)
    store.pin("a")
    _fill(store, "b", 2 * MIB, 2)
    assert len(_spill_files(spill_dir)) == 1
    store.delete("a")
    assert _spill_files(spill_dir) == []


def test_delete_of_an_unsealed_object(store: SharedMemoryStore) -> None:
    buf = store.create("a", MIB)
    store.delete("a")
    buf[0] = 1  # still valid memory: quarantined, not reused
    del buf
    assert store.used_bytes == 0


# --------------------------------------------------------------------- errors and bad input


def test_bad_sizes_are_rejected(store: SharedMemoryStore) -> None:
    with pytest.raises(ValueError, match=r"cannot create object 'a' with size -1; expected an int"):
        store.create("a", -1)
    with pytest.raises(ValueError, match="with size 1.5"):
        store.create("a", 1.5)  # type: ignore[arg-type]
    assert store.used_bytes == 0


def test_duplicate_create_is_rejected(store: SharedMemoryStore) -> None:
    store.create("a", 10).release()
    with pytest.raises(
        ObjectExistsError,
        match=r"^object store '.*': cannot create object 'a': it already exists in phase created",
    ):
        store.create("a", 10)
    store.seal("a")
    with pytest.raises(ObjectExistsError, match="in phase sealed"):
        store.put_serialized("a", serialize(1))


def test_get_before_seal_is_rejected(store: SharedMemoryStore) -> None:
    store.create("a", 10).release()
    with pytest.raises(
        ObjectStateError, match=r"cannot get object 'a' in phase created; expected sealed"
    ):
        store.get("a")


def test_unknown_ids_are_rejected(store: SharedMemoryStore) -> None:
    for call in (store.pin, store.unpin, store.seal, store.get):
        with pytest.raises(ObjectNotFoundError, match="'missing': not in the store"):
            call("missing")
    assert not store.contains("missing")


def test_bad_constructor_arguments(spill_dir: Path) -> None:
    with pytest.raises(ValueError, match="must match"):
        SharedMemoryStore("a/b", MIB, spill_dir)
    with pytest.raises(ValueError, match="capacity_bytes must be > 0"):
        SharedMemoryStore("x", 0, spill_dir)


def test_name_already_in_use(store: SharedMemoryStore, spill_dir: Path) -> None:
    with pytest.raises(ObjectStoreError, match="already exists"):
        SharedMemoryStore(store.name, MIB, spill_dir)
    assert store.contains("a") is False  # the first store is untouched


def test_spill_failure_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    name = _unique_name()
    with SharedMemoryStore(name, 4 * MIB, blocker / "spill") as failing:
        _fill(failing, "a", 3 * MIB, 1)
        failing.pin("a")
        with pytest.raises(
            ObjectSpillError,
            match=r"cannot spill object 'a' \(3145728 bytes\) to .*: \[Errno 20\] Not a directory",
        ):
            failing.create("b", 2 * MIB)
        assert _first_byte(failing, "a") == 1  # still in memory
        assert not failing.contains("b")
        failing.check_invariants()
    assert _shm_files(name) == []


def test_disk_full_while_spilling_leaves_no_partial_file(
    store: SharedMemoryStore, spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_half_then_fail(path: str, data: object) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(object_store, "write_new_file", write_half_then_fail)
    _fill(store, "a", 3 * MIB, 1)
    store.pin("a")
    with pytest.raises(ObjectSpillError, match=r"No space left on device; make sure the spill"):
        store.create("b", 2 * MIB)
    assert _spill_files(spill_dir) == []
    assert _first_byte(store, "a") == 1


def test_full_tmpfs_is_a_clear_error(
    store: SharedMemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(
        ObjectStoreFullError,
        match=r"cannot create object 'a' of 1048576 bytes: the shared-memory filesystem "
        r"holding /dev/shm/shoal-.*-arena is full \(No space left on device\)",
    ):
        store.create("a", MIB)
    assert store.used_bytes == 0
    monkeypatch.undo()
    _fill(store, "a", MIB, 1)


def test_restore_failure_is_a_clear_error(store: SharedMemoryStore, spill_dir: Path) -> None:
    _fill(store, "a", 3 * MIB, 1)
    store.pin("a")
    _fill(store, "b", 2 * MIB, 2)
    (spill_file,) = _spill_files(spill_dir)
    spill_file.write_bytes(b"short")
    used = store.used_bytes
    with pytest.raises(
        ObjectSpillError, match=r"cannot restore spilled object 'a' .*file ends after 5 of"
    ):
        store.get("a")
    assert store.used_bytes <= used  # the region reserved for the restore was given back
    store.check_invariants()


def test_failed_write_leaves_nothing_behind(store: SharedMemoryStore) -> None:
    serialized = serialize(np.arange(1000))

    class Exploding:
        total_bytes = serialized.total_bytes

        def write_into(self, memory: object) -> int:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        store.put_serialized("a", Exploding())  # type: ignore[arg-type]
    assert not store.contains("a")
    assert store.used_bytes == 0
    store.put_serialized("a", serialized)  # the id is free again


# --------------------------------------------------------------------- close


def test_close_removes_every_file_and_is_idempotent(spill_dir: Path) -> None:
    name = _unique_name()
    closing = SharedMemoryStore(name, 4 * MIB, spill_dir)
    _fill(closing, "a", 3 * MIB, 1)
    closing.pin("a")
    _fill(closing, "b", 2 * MIB, 2)
    assert _shm_files(name) and _spill_files(spill_dir)
    closing.close()
    closing.close()
    assert _shm_files(name) == []
    assert _spill_files(spill_dir) == []
    with pytest.raises(ObjectStoreClosedError, match="used after close"):
        closing.create("c", 1)
    with pytest.raises(ObjectStoreClosedError):
        closing.get("b")


def test_close_with_live_arrays_keeps_them_readable(spill_dir: Path) -> None:
    name = _unique_name()
    array = np.arange(1000, dtype=np.int32)
    with SharedMemoryStore(name, MIB, spill_dir) as closing:
        closing.put_serialized("a", serialize(array))
        result = deserialize_from(closing.get("a"))
    assert _shm_files(name) == []
    assert np.array_equal(result, array)  # the mapping lives until the array goes


def test_context_manager_cleans_up_after_an_exception(spill_dir: Path) -> None:
    name = _unique_name()
    with (
        pytest.raises(RuntimeError, match="user code failed"),
        SharedMemoryStore(name, MIB, spill_dir) as failing,
    ):
        _fill(failing, "a", 100, 1)
        raise RuntimeError("user code failed")
    assert _shm_files(name) == []


def test_a_forgotten_store_cleans_up_when_collected(spill_dir: Path) -> None:
    name = _unique_name()
    forgotten = SharedMemoryStore(name, MIB, spill_dir)
    _fill(forgotten, "a", 100, 1)
    assert _shm_files(name)
    del forgotten
    gc.collect()
    assert _shm_files(name) == []


# --------------------------------------------------------------------- concurrency


def test_concurrent_puts_gets_and_deletes(store: SharedMemoryStore) -> None:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(thread: int) -> None:
        for step in range(40):
            object_id = f"{thread}-{step}"
            array = np.full(64 * 1024, thread * 100 + step, dtype=np.int32)
            serialized = serialize(array)
            try:
                with store.create(object_id, serialized.total_bytes) as buf:
                    store.pin(object_id)  # so no other thread evicts it before we read it
                    serialized.write_into(buf)
                store.seal(object_id)
                result = deserialize_from(store.get(object_id))
                assert np.array_equal(result, array)
                del result
                store.unpin(object_id)
                if step % 3 == 0:
                    store.delete(object_id)
            except (ObjectStoreFullError, ObjectNotFoundError) as exc:  # pragma: no cover
                with lock:
                    errors.append(exc)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))
    assert errors == []
    assert store.stats().evictions_total > 0
    store.check_invariants()


# --------------------------------------------------------------------- allocator


def test_allocator_best_fit_and_merging() -> None:
    alloc = RegionAllocator(10 * PAGE_BYTES)
    offsets = [alloc.allocate(PAGE_BYTES * n) for n in (2, 1, 3, 1)]
    assert offsets == [0, 2 * PAGE_BYTES, 3 * PAGE_BYTES, 6 * PAGE_BYTES]
    alloc.free(0, 2 * PAGE_BYTES)
    alloc.free(3 * PAGE_BYTES, 3 * PAGE_BYTES)
    assert alloc.allocate(2 * PAGE_BYTES) == 0  # exact fit beats the bigger hole
    assert alloc.allocate(3 * PAGE_BYTES) == 3 * PAGE_BYTES  # best fit beats the 3-page tail
    assert alloc.allocate(4 * PAGE_BYTES) is None
    assert alloc.free(2 * PAGE_BYTES, PAGE_BYTES) == PAGE_BYTES
    assert alloc.free(3 * PAGE_BYTES, 3 * PAGE_BYTES) == 4 * PAGE_BYTES  # merged left
    assert alloc.free(6 * PAGE_BYTES, PAGE_BYTES) == 8 * PAGE_BYTES  # merged with the tail
    assert alloc.high_water == 7 * PAGE_BYTES
    alloc.check_invariants()
    with pytest.raises(AssertionError, match="already free"):
        alloc.free(3 * PAGE_BYTES, PAGE_BYTES)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6), st.integers(0, 30)), max_size=60))
def test_allocator_never_overlaps(ops: list[tuple[bool, int, int]]) -> None:
    alloc = RegionAllocator(32 * PAGE_BYTES)
    live: list[tuple[int, int]] = []
    for is_alloc, pages, pick in ops:
        if is_alloc or not live:
            offset = alloc.allocate(pages * PAGE_BYTES)
            if offset is not None:
                live.append((offset, pages * PAGE_BYTES))
        else:
            alloc.free(*live.pop(pick % len(live)))
        alloc.check_invariants()
        spans = sorted(live)
        assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(spans))
        assert alloc.free_bytes + sum(n for _, n in live) == 32 * PAGE_BYTES
