"""Objects above the inline limit on real processes: the node's shared-memory store.

Values larger than 100 KiB go into the node daemon's store (``runtime/node_objects.py``),
written by drivers and workers through ``runtime/process_objects.py`` and read back
zero-copy. Every test checks that what it started is gone afterwards: no process, no
session directory, no ``/dev/shm/shoal*`` file.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle
import numpy as np
import psutil
import pytest
from shoal.runtime.api.context import get_context
from shoal.runtime.api.scheduling_strategies import NodeAffinitySchedulingStrategy

import shoal

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MIB = 1 << 20


# --- helpers ------------------------------------------------------------------------------


def _session_dir() -> str:
    return os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]


def _our_processes(besides: set[int] | None = None) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in (besides or ())]


def _shm_files(session_dir: str) -> list[str]:
    """The shared-memory files of one session. (Other shoal clusters may be running on
    this machine, so the check is by session name, as ``remove_session`` removes them.)"""
    name = os.path.basename(os.path.normpath(session_dir))
    return glob.glob(f"/dev/shm/shoal-{glob.escape(name)}*")


@contextmanager
def _cluster(**kwargs: Any) -> Iterator[dict[str, Any]]:
    """A one-node cluster with 2 CPUs, checked clean after the ``with`` block."""
    before = {p.pid for p in _our_processes()}
    info = shoal.init(num_cpus=2, **kwargs)
    session_dir = _session_dir()
    assert len(_shm_files(session_dir)) == 1, "the node has no arena"
    try:
        yield info
    finally:
        spawned = _our_processes(before)
        shoal.shutdown()
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"
        left = _shm_files(session_dir)
        assert not left, f"shared-memory files left behind: {left}"


@pytest.fixture
def cluster() -> Iterator[dict[str, Any]]:
    with _cluster() as info:
        yield info


@pytest.fixture
def small_store() -> Iterator[dict[str, Any]]:
    """A cluster whose node has a 64 MiB object store."""
    with _cluster(object_store_memory=64 * MIB) as info:
        yield info


def _arena_ranges() -> list[tuple[int, int]]:
    """The address ranges where this process maps a shoal arena."""
    ranges = []
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            if "/dev/shm/shoal-" in line and line.rstrip().endswith("-arena"):
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _in_arena(array: np.ndarray) -> bool:
    address = array.__array_interface__["data"][0]
    return any(start <= address and address + array.nbytes <= end
               for start, end in _arena_ranges())


# --- one node -------------------------------------------------------------------------------


def test_a_100mb_array_round_trip_is_zero_copy(cluster: dict[str, Any]) -> None:
    array = np.arange(100 * MIB // 8, dtype=np.int64)
    ref = shoal.put(array)
    first, second = shoal.get(ref), shoal.get(ref)
    assert np.array_equal(first, array)
    assert not first.flags.writeable and not second.flags.writeable
    assert np.shares_memory(first, second)  # both view the store, not copies
    assert _in_arena(first), "the array does not lie in the mapped arena"
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1


def test_a_large_array_passed_to_and_returned_from_tasks(cluster: dict[str, Any]) -> None:
    @shoal.remote
    def describe(array: np.ndarray) -> tuple[float, bool, bool]:
        return float(array.sum()), array.flags.writeable, _in_arena(array)

    @shoal.remote
    def doubled(array: np.ndarray) -> np.ndarray:
        return array * 2

    array = np.ones(4 * MIB, dtype=np.float64)  # 32 MiB
    total, writeable, in_arena = shoal.get(describe.remote(array))  # the arg, put by .remote
    assert (total, writeable, in_arena) == (4 * MIB, False, True)
    ref = shoal.put(array)
    assert shoal.get(describe.remote(ref)) == (4 * MIB, False, True)  # a ref arg, zero copy
    result = shoal.get(doubled.remote(ref))  # a return above the limit, stored by the worker
    assert np.array_equal(result, array * 2) and not result.flags.writeable and _in_arena(result)
    chained = shoal.get(doubled.remote(doubled.remote(ref)))
    assert np.array_equal(chained, array * 4)


def test_values_with_nested_refs_and_in_band_large_values(cluster: dict[str, Any]) -> None:
    inner = shoal.put(np.zeros(MIB, dtype=np.uint8))
    blob = os.urandom(300_000)  # bytes: pickled in band, copied into the store
    ref = shoal.put({"blob": blob, "inner": inner, "array": np.full(MIB, 7, np.uint8)})
    value = shoal.get(ref)
    assert value["blob"] == blob and int(value["array"].sum()) == 7 * MIB
    assert int(shoal.get(value["inner"]).sum()) == 0


def test_spilling_when_full_keeps_every_value(small_store: dict[str, Any]) -> None:
    arrays = [np.full(3 * MIB, i, dtype=np.int64) for i in range(5)]  # 5 x 24 MiB > 64 MiB
    refs = [shoal.put(a) for a in arrays]
    spill_dir = os.path.join(_session_dir(), "spill")
    assert glob.glob(os.path.join(spill_dir, "*.spill")), "nothing was spilled"
    for _ in range(2):  # restored on get, spilled again to make room for the next
        for ref, array in zip(refs, arrays):
            value = shoal.get(ref)
            assert np.array_equal(value, array)
            del value


def test_a_value_larger_than_the_store_raises_object_store_full(
        small_store: dict[str, Any]) -> None:
    with pytest.raises(shoal.exceptions.ObjectStoreFullError) as info:
        shoal.put(np.zeros(100 * MIB, dtype=np.uint8))
    message = str(info.value)
    asked = re.search(r"cannot create a new object of (\d+) bytes", message)
    assert asked and int(asked.group(1)) >= 100 * MIB, message  # what was asked
    assert "capacity 67108864 bytes" in message  # and what the store holds
    small = shoal.put(np.ones(MIB, dtype=np.uint8))  # the store still serves
    assert int(shoal.get(small).sum()) == MIB


# --- two nodes -----------------------------------------------------------------------------


def _start_second_node(tmp_path: Any, store_bytes: int) -> tuple[subprocess.Popen[bytes], int]:
    head_dir = _session_dir()
    with open(os.path.join(head_dir, "session.json"), encoding="utf-8") as f:
        head = json.load(f)
    node_dir = tmp_path / "node2"
    node_dir.mkdir()
    parent_r, parent_w = os.pipe()
    daemon = subprocess.Popen(
        [sys.executable, "-P", "-m", "shoal.runtime.node", "--session-dir", str(node_dir),
         "--node-id", "second", "--head-node-id", head["node_id"],
         "--gcs-endpoint", head["endpoint"], "--token-file", os.path.join(head_dir, "token"),
         "--resources", json.dumps({"CPU": 1.0}), "--parent-fd", str(parent_r),
         "--object-store-memory", str(store_bytes)],
        pass_fds=(parent_r,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(parent_r)
    deadline = time.monotonic() + 30  # it imports gRPC first: seconds on a loaded machine
    while time.monotonic() < deadline:
        if any(n["NodeID"] == "second" and n["Alive"] for n in shoal.nodes()):
            return daemon, parent_w
        time.sleep(0.05)
    os.close(parent_w)
    daemon.wait(10)
    raise AssertionError("the second node did not join")


def test_two_nodes_move_large_objects_through_the_raylets(tmp_path: Any) -> None:
    with _cluster(object_store_memory=256 * MIB):
        _move_between_nodes(tmp_path)


def _move_between_nodes(tmp_path: Any) -> None:
    @shoal.remote
    def on_second(array: np.ndarray) -> tuple[str, float, np.ndarray]:
        node = shoal.get_runtime_context().get_node_id()
        return node, float(array.sum()), array + 1

    daemon, parent_w = _start_second_node(tmp_path, 256 * MIB)
    try:
        array = np.arange(5 * MIB, dtype=np.float64)  # 40 MiB: 40 chunks each way
        ref = shoal.put(array)  # on the head; pulled by the second node for the task
        there = NodeAffinitySchedulingStrategy(node_id="second", soft=False)
        # The return (40 MiB) is stored on the second node and pulled back to the head.
        node, total, plus_one = shoal.get(
            on_second.options(scheduling_strategy=there).remote(ref))
        assert (node, total) == ("second", float(array.sum()))
        assert np.array_equal(plus_one, array + 1)
        assert _in_arena(plus_one) and not plus_one.flags.writeable
    finally:
        os.close(parent_w)  # the daemon stops when the process that started it goes away
        daemon.wait(10)
    assert not _shm_files(str(tmp_path / "node2")), "the second node left its arena behind"


def test_an_evicted_secondary_copy_is_pulled_again(tmp_path: Any) -> None:
    """The second node's store holds three of the four 10 MiB objects it reads: reading
    the first again, after it was evicted there, pulls it from the head once more."""
    with _cluster(object_store_memory=128 * MIB):
        @shoal.remote
        def checksum(array: np.ndarray) -> float:
            return float(array.sum())

        daemon, parent_w = _start_second_node(tmp_path, 32 * MIB)
        try:
            there = NodeAffinitySchedulingStrategy(node_id="second", soft=False)
            arrays = [np.full(10 * MIB // 8, float(i)) for i in range(4)]
            refs = [shoal.put(a) for a in arrays]
            on_second = checksum.options(scheduling_strategy=there)
            for ref, array in [*zip(refs, arrays, strict=True), (refs[0], arrays[0])]:
                assert shoal.get(on_second.remote(ref)) == float(array.sum())
        finally:
            os.close(parent_w)
            daemon.wait(10)
