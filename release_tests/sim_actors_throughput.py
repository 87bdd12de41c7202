"""Simulator actor throughput: actor calls completed per wall second.

Usage: python release_tests/sim_actors_throughput.py [--calls 2000] [--actors 1 10]
       [--nodes 4] [--json FILE]

The driver creates ``--actors`` counter actors and calls them ``--calls`` times
in all, in waves of 500 pipelined calls spread over the actors, and gets every
result; every kernel (GCS, raylets, core workers) and every actor method runs
for real, with invariant checks on, in one process on virtual time. Also
reported: the ``actors`` workload's calls per wall second over seeds 0-19
(``--faults none`` and ``chaos``), which includes actor creation, tasks,
lookups, kills and restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from shoal.sim import RunConfig, Simulation, run_simulation

import shoal


def run(nodes: int, actors: int, calls: int, seed: int) -> dict[str, object]:
    def main() -> int:
        @shoal.remote
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def incr(self) -> int:
                self.n += 1
                return self.n

        counters = [Counter.remote() for _ in range(actors)]
        done = 0
        while done < calls:
            wave = min(500, calls - done)
            refs = [counters[i % actors].incr.remote() for i in range(wave)]
            assert len(shoal.get(refs)) == wave
            done += wave
        return done

    started, cpu_started = time.perf_counter(), time.process_time()
    result = Simulation(seed=seed, nodes=nodes).run(main)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    assert not result.violations, result.violations
    return {"name": f"sim actor calls actors={actors}", "mean": calls / wall, "stdev": 0.0,
            "unit": "calls/s", "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "per_cpu_s": round(calls / cpu), "events": result.report.events,
            "events_per_s": round(result.report.events / wall),
            "events_per_cpu_s": round(result.report.events / cpu),
            "load_1min": round(os.getloadavg()[0], 2),
            "sim_seconds": round(result.report.sim_seconds, 3)}


def workload(faults: str, seeds: int) -> dict[str, object]:
    started, cpu_started, calls = time.perf_counter(), time.process_time(), 0
    for seed in range(seeds):
        result = run_simulation(RunConfig(seed=seed, nodes=3, workload="actors", faults=faults,
                                          until_s=4))
        assert not result.violations, (seed, result.violations)
        calls += int(result.stats.get("actor_calls", 0))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"name": f"actors workload faults={faults}", "mean": calls / wall, "stdev": 0.0,
            "unit": "calls/s", "wall_s": round(wall, 3), "calls": calls,
            "cpu_s": round(cpu, 3), "per_cpu_s": round(calls / cpu),
            "load_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = [run(args.nodes, a, args.calls, seed=1) for a in args.actors]
    rows += [workload(faults, args.seeds) for faults in ("none", "chaos")]
    for row in rows:
        print(f"{row['name']:<34} {row['mean']:>9,.0f} calls/s  ({row['wall_s']} s wall; "
              f"{row['per_cpu_s']:,} per CPU s, {row['cpu_s']} CPU s; load {row['load_1min']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"python": platform.python_version()}, "results": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
