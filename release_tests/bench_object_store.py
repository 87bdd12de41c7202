"""Benchmark of the shared-memory object store against a plain numpy memcpy.

Measures, for 1 MB and 100 MB numpy arrays:

* ``put``: ``store.put_serialized(id, serialize(array))``, in GB/s of array data.
  ``warm`` reuses arena pages freed by a ``delete`` (the steady state of a running
  node); ``cold`` writes into pages the arena never used (the first puts after
  start, which pay the kernel's page allocation and zeroing).
* ``get``: ``store.get(id)`` calls per second (a read-only memoryview), and
  ``deserialize_from(store.get(id))`` calls per second (a zero-copy numpy array).
* ``arena_prefault``: how fast ``prefault=True`` makes a fresh arena resident, a
  one-time cost at start that makes every later put a warm one.
* ``memcpy``: ``np.copyto(dst, src)`` into already-touched memory, the bandwidth
  ceiling for a put on this machine.

Prints one JSON document. Numbers are reported, never asserted.

Usage: python release_tests/bench_object_store.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
from shoal.transports.object_store import SharedMemoryStore
from shoal.transports.serialization import deserialize_from, serialize

MB = 1_000_000
SIZES = {"1MB": 1 * MB, "100MB": 100 * MB}


def _timings(action: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        out.append(time.perf_counter() - start)
    return out


def _rate(nbytes: int, seconds: list[float]) -> dict[str, float]:
    """GB/s at the median and at the best run."""
    return {
        "median": round(nbytes / statistics.median(seconds) / 1e9, 2),
        "best": round(nbytes / min(seconds) / 1e9, 2),
    }


def _memcpy(nbytes: int, repeats: int) -> dict[str, float]:
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.ones(nbytes, dtype=np.uint8)  # touched, like a warm arena region
    return _rate(nbytes, _timings(lambda: np.copyto(dst, src), repeats))


def _warm_put(store: SharedMemoryStore, array: np.ndarray, repeats: int) -> dict[str, float]:
    counter = iter(range(10**9))

    def put_then_delete() -> None:
        object_id = f"warm-{next(counter)}"
        store.put_serialized(object_id, serialize(array))
        store.delete(object_id)  # outside the timed part would be fairer, but it is ~µs

    put_then_delete()  # touch the region once
    return _rate(array.nbytes, _timings(put_then_delete, repeats))


def _cold_put(array: np.ndarray, spill_dir: str, repeats: int) -> dict[str, float]:
    seconds = []
    for index in range(repeats):
        name = f"bench-cold-{os.getpid()}-{index}"
        with SharedMemoryStore(name, array.nbytes + (1 << 20), spill_dir) as store:
            start = time.perf_counter()
            store.put_serialized("cold", serialize(array))
            seconds.append(time.perf_counter() - start)
    return _rate(array.nbytes, seconds)


def _prefault(nbytes: int, spill_dir: str, repeats: int) -> dict[str, float]:
    """How fast ``prefault=True`` makes a fresh arena resident (paid once, at start)."""
    seconds = []
    for index in range(repeats):
        name = f"bench-prefault-{os.getpid()}-{index}"
        start = time.perf_counter()
        store = SharedMemoryStore(name, nbytes, spill_dir, prefault=True)
        seconds.append(time.perf_counter() - start)
        store.close()
    return _rate(nbytes, seconds)


def _gets(store: SharedMemoryStore, array: np.ndarray, calls: int) -> dict[str, float]:
    store.put_serialized("get", serialize(array))
    get = store.get
    start = time.perf_counter()
    for _ in range(calls):
        get("get")
    raw = calls / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(calls):
        deserialize_from(get("get"))
    decoded = calls / (time.perf_counter() - start)
    store.delete("get")
    return {"get_calls_per_s": round(raw), "get_and_deserialize_calls_per_s": round(decoded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    scale = 1 if args.quick else 5
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "kernel": platform.release(),
        },
        "unit": "GB/s (1 GB = 1e9 bytes) unless the name says calls_per_s",
    }
    with tempfile.TemporaryDirectory() as spill_dir:
        name = f"bench-{os.getpid()}"
        with SharedMemoryStore(name, 256 * (1 << 20), spill_dir) as store:
            for label, nbytes in SIZES.items():
                array = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
                small = nbytes < 10 * MB
                repeats = (200 if small else 4) * scale
                results[label] = {
                    "memcpy_np_copyto": _memcpy(nbytes, repeats),
                    "put_warm": _warm_put(store, array, repeats),
                    "put_cold": _cold_put(array, spill_dir, 20 * scale if small else 2 * scale),
                    "arena_prefault": _prefault(nbytes, spill_dir, 20 * scale if small else scale),
                    **_gets(store, array, 20_000 * scale),
                }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
