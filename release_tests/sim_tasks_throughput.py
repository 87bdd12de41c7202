"""Simulator task throughput: tasks completed per wall second at 10 and 100 simulated nodes.

Usage: python release_tests/sim_tasks_throughput.py [--tasks 2000] [--nodes 10 100] [--json FILE]

The driver submits ``--tasks`` trivial tasks in waves of 500 and gets them all;
every kernel (GCS, raylets, core workers) and every task body runs for real,
with invariant checks on, in one process on virtual time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import shoal
from shoal.sim import Simulation


def run(nodes: int, tasks: int, seed: int) -> dict[str, object]:
    def main() -> int:
        @shoal.remote
        def inc(x: int) -> int:
            return x + 1

        done = 0
        while done < tasks:
            wave = min(500, tasks - done)
            assert shoal.get([inc.remote(i) for i in range(wave)]) == [i + 1 for i in range(wave)]
            done += wave
        return done

    started, cpu_started = time.perf_counter(), time.process_time()
    result = Simulation(seed=seed, nodes=nodes).run(main)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    assert not result.violations, result.violations
    return {"name": f"sim tasks nodes={nodes}", "mean": tasks / wall, "stdev": 0.0,
            "unit": "tasks/s", "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "per_cpu_s": round(tasks / cpu), "events": result.report.events,
            "events_per_s": round(result.report.events / wall),
            "events_per_cpu_s": round(result.report.events / cpu),
            "load_1min": round(os.getloadavg()[0], 2),
            "sim_seconds": round(result.report.sim_seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = [run(n, args.tasks, seed=1) for n in args.nodes]
    for row in rows:
        print(f"{row['name']:<22} {row['mean']:>9,.0f} tasks/s  ({row['wall_s']} s wall, "
              f"{row['events_per_s']:,} events/s, {row['sim_seconds']} simulated s; "
              f"{row['per_cpu_s']:,} tasks and {row['events_per_cpu_s']:,} events per CPU s, "
              f"{row['cpu_s']} CPU s; load {row['load_1min']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"python": platform.python_version()}, "results": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
