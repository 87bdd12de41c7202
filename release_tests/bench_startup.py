"""Benchmark of the production host's startup and shutdown.

Usage: ``python release_tests/bench_startup.py [--runs N] [--num-cpus K]``; prints
one JSON object.

Each run is a fresh interpreter (this file with ``--once``), which measures:

* ``import_s``: ``import shoal``;
* ``init_s``: ``shoal.init()`` (session directory, head daemon with the GCS
  and the raylet, the driver's core worker connected and holding the node table);
* ``first_result_s``: from the start of ``init()`` to the value of the first
  task (includes starting the first worker process);
* ``second_result_s``: one more task on the now-warm worker;
* ``shutdown_s``: ``shoal.shutdown()`` (daemon and workers gone, session removed).

The parent reports, per metric, the median, min and max over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _once(num_cpus: int) -> dict[str, float]:
    started = time.perf_counter()
    import shoal

    imported = time.perf_counter()

    @shoal.remote
    def one() -> int:
        return 1

    shoal.init(num_cpus=num_cpus)
    initialized = time.perf_counter()
    assert shoal.get(one.remote()) == 1
    first = time.perf_counter()
    assert shoal.get(one.remote()) == 1
    second = time.perf_counter()
    shoal.shutdown()
    stopped = time.perf_counter()
    return {
        "import_s": imported - started,
        "init_s": initialized - imported,
        "first_result_s": first - imported,
        "second_result_s": second - first,
        "shutdown_s": stopped - second,
    }


def _summary(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = {"median": round(statistics.median(values), 4),
                    "min": round(min(values), 4), "max": round(max(values), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(_once(args.num_cpus)))
        return
    samples = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--once", "--num-cpus",
                              str(args.num_cpus)], check=True, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({
        "benchmark": "startup", "runs": args.runs, "num_cpus": args.num_cpus,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "results": _summary(samples), "samples": samples,
    }, indent=2))


if __name__ == "__main__":
    main()
