"""Seed sweep: N seeds x every workload x every fault profile, on all cores.

Usage::

    python release_tests/seed_sweep.py [--seeds 20] [--start 0] [--jobs CPUS]
        [--workloads membership tasks actors] [--faults none lossy partition crash chaos]
        [--nodes 4] [--until 30] [--json FILE]

Every run is ``shoal.sim.run_simulation(RunConfig(...))``, the same run as
``shoal sim run``, in a pool of ``--jobs`` processes (default: every core).
Prints one line per (workload, profile) with its pass count, events and wall
seconds (summed over its runs), then
every failing seed with its violation and the command that replays it. Exits
1 when any run violated an invariant (or crashed the harness), 0 otherwise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import time
import traceback
from typing import Any


def _one(job: tuple[int, str, str, int, float]) -> dict[str, Any]:
    seed, workload, faults, nodes, until = job
    from shoal.sim import RunConfig, run_simulation

    config = RunConfig(seed=seed, nodes=nodes, workload=workload, faults=faults, until_s=until)
    started = time.perf_counter()
    try:
        result = run_simulation(config)
    except Exception as error:  # noqa: BLE001 - a harness crash is a failing seed too
        detail = traceback.format_exception_only(type(error), error)[-1].strip()
        return {"seed": seed, "workload": workload, "faults": faults,
                "violations": [f"harness raised {detail}"], "events": 0,
                "wall_s": time.perf_counter() - started, "replay": config.replay_command()}
    return {"seed": seed, "workload": workload, "faults": faults,
            "violations": list(result.violations), "events": result.events,
            "wall_s": result.wall_seconds, "trace_hash": result.trace_hash,
            "replay": result.config.replay_command()}


def main() -> int:
    from shoal.sim.faults import PROFILES
    from shoal.sim.workloads import WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per combination")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--faults", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--until", type=float, default=30.0, help="safety phase, virtual s")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    seeds = range(args.start, args.start + args.seeds)
    jobs = [(seed, w, f, args.nodes, args.until)
            for w, f, seed in itertools.product(args.workloads, args.faults, seeds)]
    print(f"{len(jobs)} runs: {args.seeds} seeds x {len(args.workloads)} workloads x "
          f"{len(args.faults)} profiles on {args.jobs} processes; load "
          f"{os.getloadavg()[0]:.2f} (1 min)", flush=True)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with multiprocessing.Pool(args.jobs) as pool:
        for result in pool.imap_unordered(_one, jobs, chunksize=1):
            results.append(result)
            if result["violations"]:
                print(f"  FAIL {result['replay']}", flush=True)
    wall = time.perf_counter() - started
    _report(results, args, wall)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": list(seeds), "nodes": args.nodes, "until_s": args.until,
                       "wall_s": round(wall, 2), "results": sorted(
                           results, key=lambda r: (r["workload"], r["faults"], r["seed"]))},
                      f, indent=2)
    return 1 if any(r["violations"] for r in results) else 0


def _report(results: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> None:
    print(f"\n{'workload':<11} {'faults':<10} {'passed':>8} {'events':>10} {'wall s':>8}")
    for workload, faults in itertools.product(args.workloads, args.faults):
        group = [r for r in results if r["workload"] == workload and r["faults"] == faults]
        passed = sum(1 for r in group if not r["violations"])
        print(f"{workload:<11} {faults:<10} {passed:>4}/{len(group):<3} "
              f"{sum(r['events'] for r in group):>10,} {sum(r['wall_s'] for r in group):>8.1f}")
    failing = sorted((r for r in results if r["violations"]),
                     key=lambda r: (r["workload"], r["faults"], r["seed"]))
    events = sum(r["events"] for r in results)
    print(f"\n{len(results) - len(failing)}/{len(results)} runs held every invariant; "
          f"{events:,} events in {wall:.1f} wall s ({events / wall:,.0f} events/s on "
          f"{args.jobs} processes); load {os.getloadavg()[0]:.2f} (1 min)")
    if failing:
        print(f"\n{len(failing)} failing seed(s):")
        for r in failing:
            print(f"  {r['replay']}\n      {r['violations'][0][:400]}")


if __name__ == "__main__":
    sys.exit(main())
