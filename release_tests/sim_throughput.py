"""Simulator throughput: delivered events per wall second on the membership workload.

Usage: python release_tests/sim_throughput.py [--nodes 100] [--until 120] [--json FILE]

Reports, for each fault profile, the events delivered and events per wall
second and per CPU second (fairer on a shared machine: other processes do not
inflate it), with kernel invariant checks on (as every test run has them) and
off (the raw speed of the engine and kernels), and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import platform
import os
import statistics
import time

from shoal.sim import RunConfig, run_simulation


def measure(nodes: int, until: float, profile: str, check: bool, repeats: int) -> dict[str, object]:
    rates, cpu_rates = [], []
    events = 0
    for seed in range(repeats):
        cpu_started = time.process_time()
        result = run_simulation(RunConfig(seed=seed, nodes=nodes, faults=profile,
                                          until_s=until, check=check))
        cpu = time.process_time() - cpu_started
        assert not result.violations, result.violations
        rates.append(result.events / result.wall_seconds)
        cpu_rates.append(result.events / cpu)
        events = result.events
    return {
        "name": f"membership {profile} nodes={nodes} check={'on' if check else 'off'}",
        "events_per_run": events, "mean": statistics.mean(rates),
        "stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0,
        "unit": "events/s", "per_cpu_s": statistics.mean(cpu_rates),
        "best_per_cpu_s": max(cpu_rates),  # the least disturbed run, on a shared machine
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--until", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    results = [
        measure(args.nodes, args.until, profile, check, args.repeats)
        for profile in ("none", "chaos") for check in (True, False)
    ]
    for row in results:
        print(f"{row['name']:<45} {row['mean']:>12,.0f} ± {row['stdev']:>8,.0f} {row['unit']}"
              f"  {row['per_cpu_s']:>10,.0f} per CPU s (best {row['best_per_cpu_s']:,.0f})"
              f"  (load {row['load_1min']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"python": platform.python_version(),
                                   "processor": platform.processor()},
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
