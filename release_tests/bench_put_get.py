"""Put and get of large numpy arrays on a real local cluster, against memcpy.

Two rows of Ray's ``ray microbenchmark``, with its names and units, for large arrays:

* ``single client put gigabytes``, per second: ``shoal.put(array)`` in a loop, the
  refs dropped (as Ray's row, whose array is 100M int64 = 800 MB). A put pickles
  the array out of band and copies it once, straight into the node's shared-memory
  store; the store reuses the regions freed by the earlier puts.
* ``single client get calls (Plasma Store)``, per second: ``shoal.get(ref)`` of one
  stored array in a loop, the result dropped. A get is zero-copy: its cost does
  not depend on the array's size (a round trip to the core worker, one to the
  store, and building the array view); ``get_equivalent_gb_per_s`` is the copy
  bandwidth a get that copied the array would need to keep up.

``memcpy_gb_per_s`` is ``np.copyto`` between two already-touched arrays of the same
size in this process: the ceiling for a put on this machine.

Prints one JSON document. Numbers are reported, never asserted.

Usage: python release_tests/bench_put_get.py [--quick] [--sizes-mb 800,100,10]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

import shoal

MB = 1_000_000


def _timings(action: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        out.append(time.perf_counter() - start)
    return out


def _gb_per_s(nbytes: int, seconds: list[float]) -> dict[str, float]:
    return {"median": round(nbytes / statistics.median(seconds) / 1e9, 2),
            "best": round(nbytes / min(seconds) / 1e9, 2)}


def _memcpy(array: np.ndarray, repeats: int) -> dict[str, float]:
    dst = np.ones_like(array)  # touched, like a reused store region
    np.copyto(dst, array)
    return _gb_per_s(array.nbytes, _timings(lambda: np.copyto(dst, array), repeats))


def _puts(array: np.ndarray, repeats: int) -> dict[str, float]:
    for _ in range(3):  # warm: the store's regions and this process's page tables
        shoal.put(array)
    return _gb_per_s(array.nbytes, _timings(lambda: shoal.put(array), repeats))


def _gets(array: np.ndarray, seconds: float) -> dict[str, float]:
    ref = shoal.put(array)
    value = shoal.get(ref)
    assert not value.flags.writeable and np.shares_memory(value, shoal.get(ref))
    del value
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            shoal.get(ref)
        calls += 100
    rate = calls / (time.perf_counter() - start)
    return {"calls_per_s": round(rate),
            "get_equivalent_gb_per_s": round(rate * array.nbytes / 1e9, 1)}


def _row(size_mb: int, quick: bool) -> dict[str, object]:
    array = np.random.default_rng(size_mb).integers(0, 2**62, size_mb * MB // 8,
                                                    dtype=np.int64)
    repeats = 5 if quick else (10 if size_mb >= 100 else 50)
    memcpy = _memcpy(array, repeats)
    puts = _puts(array, repeats)
    gc.collect()
    gets = _gets(array, 1.0 if quick else 3.0)
    return {
        "array_bytes": array.nbytes,
        "memcpy_gb_per_s": memcpy,
        "single client put gigabytes": {"per_s": puts,
                                        "of_memcpy": round(puts["median"] / memcpy["median"], 2)},
        "single client get calls (Plasma Store)": gets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--sizes-mb", default="800,100,10", help="array sizes, MB (1e6 B)")
    parser.add_argument("--object-store-memory", type=int, default=4 * 2**30)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mb.split(",") if s]
    started = time.perf_counter()
    shoal.init(num_cpus=1, object_store_memory=args.object_store_memory)
    init_s = time.perf_counter() - started
    try:
        rows = {f"{size}MB": _row(size, args.quick) for size in sizes}
    finally:
        shoal.shutdown()
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "kernel": platform.release()},
        "unit": "GB/s (1 GB = 1e9 bytes); calls_per_s",
        "object_store_memory": args.object_store_memory,
        "init_s": round(init_s, 2),
        "results": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
