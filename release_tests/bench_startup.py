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
* ``shutdown_s``: ``shoal.shutdown()`` (daemon and workers gone, session removed);
* ``driver_cpu_s``: CPU seconds (user + system) this process spent in ``init()``,
  the two tasks and ``shutdown()``;
* ``cluster_cpu_s``: CPU seconds of the processes the cluster ran (the daemon, its
  zygote and workers: the children this process waited for, and theirs; a
  worker still running when its zygote is killed is reaped by init instead and
  not counted), from start to shutdown. Wall times on a shared machine move with its load; CPU
  seconds much less, so compare these too.

The parent reports, per metric, the median, min and max over the runs, and
``bytecode``: whether shoal's modules have cached bytecode (``__pycache__``).
Without it (an editable checkout run with ``PYTHONDONTWRITEBYTECODE=1``), every
process compiles every shoal module it imports, which costs the daemon, its
zygote and the driver a good part of their start-up; compare runs only in the
same state.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
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

    cpu_before = _cpu_s(resource.RUSAGE_SELF)
    shoal.init(num_cpus=num_cpus)
    initialized = time.perf_counter()
    assert shoal.get(one.remote()) == 1
    first = time.perf_counter()
    assert shoal.get(one.remote()) == 1
    second = time.perf_counter()
    shoal.shutdown()
    stopped = time.perf_counter()
    driver_cpu_s = _cpu_s(resource.RUSAGE_SELF) - cpu_before
    return {
        "import_s": imported - started,
        "init_s": initialized - imported,
        "first_result_s": first - imported,
        "second_result_s": second - first,
        "shutdown_s": stopped - second,
        "driver_cpu_s": driver_cpu_s,
        "cluster_cpu_s": _cpu_s(resource.RUSAGE_CHILDREN),
    }


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _summary(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = {"median": round(statistics.median(values), 4),
                    "min": round(min(values), 4), "max": round(max(values), 4)}
    return out


def _bytecode_state() -> dict[str, bool]:
    spec = importlib.util.find_spec("shoal.runtime.node")
    origin = spec.origin if spec is not None else None
    cached = bool(origin) and os.path.exists(importlib.util.cache_from_source(str(origin)))
    return {"cached": cached, "dont_write": bool(sys.flags.dont_write_bytecode)}


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
    load_before = os.getloadavg()[0]
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--once", "--num-cpus",
                              str(args.num_cpus)], check=True, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({
        "benchmark": "startup", "runs": args.runs, "num_cpus": args.num_cpus,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "bytecode": _bytecode_state(),
        "results": _summary(samples), "samples": samples,
    }, indent=2))


if __name__ == "__main__":
    main()
