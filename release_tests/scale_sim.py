"""Scale tests in the simulator: many tasks, many actors, many nodes, with and without chaos.

Usage::

    python release_tests/scale_sim.py [--scale 1.0] [--only REGEX] [--faults none chaos]
                                      [--seed 1] [--json FILE] [--tracemalloc]

Scenarios (at ``--scale 1``; ``--scale 0.1`` shrinks every count tenfold):

* ``many_tasks``: 100,000 tasks on 100 simulated nodes, submitted in waves of
  1,000 and all fetched with ``get``. Each task sleeps 50 virtual ms, so the
  head node saturates and raylets spill work back across all 100 nodes.
* ``many_actors``: 10,000 actors (``num_cpus=0``) on 100 nodes, created in
  waves of 1,000, each called once, then dropped. Skipped when the simulator
  has no actors.
* ``many_nodes``: 1,000 nodes running 10 tasks each (10,000 tasks, sleeping
  50 virtual ms, so they spread).

Each scenario runs with the ``none`` and the ``chaos`` fault profile. Under a
fault profile the program paces its waves over the 30 virtual seconds of the
safety phase, so that the seed's faults (drawn over that phase) hit running
work; without faults it runs flat out. Tasks have ``max_retries=-1`` and
actors ``max_restarts=-1, max_task_retries=-1``, so every result must arrive
whatever crashed.

Every scenario runs in a fresh interpreter (this file with ``--one``) so that
its peak memory is its own: ``peak_rss_mb`` is ``ru_maxrss`` of that process
(the interpreter and imports included, ~60 MB); ``--tracemalloc`` also reports
the peak of Python allocations (tracemalloc slows the run ~2-3x, so the wall
figures of such a run are not comparable).

Reported per run: wall seconds, simulated seconds, delivered events (the trace's
count), events per wall second, peak memory, and the run's violations. Also the
process's CPU seconds and events per CPU second: on a shared machine the wall
figures include time spent waiting for a core, the CPU figures much less so. With
``--scale`` below 1 the table adds a linear extrapolation of the wall time to
scale 1; it is only an estimate (per-event cost grows with the size of the
tables the kernels keep), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SCENARIOS = ("many_tasks", "many_actors", "many_nodes")
SAFETY_S = 30.0
WAVE = 1000


def _sizes(name: str, scale: float) -> dict[str, int]:
    if name == "many_tasks":  # the cluster keeps its 100 nodes; the work shrinks
        return {"nodes": 100, "tasks": max(100, round(100_000 * scale))}
    if name == "many_actors":
        return {"nodes": 100, "actors": max(100, round(10_000 * scale))}
    nodes = max(10, round(1000 * scale))
    return {"nodes": nodes, "tasks": 10 * nodes}


def _tasks_program(tasks: int, pace: bool) -> Callable[[], dict[str, Any]]:
    def main() -> dict[str, Any]:
        from shoal.sim import api

        import shoal

        @shoal.remote(max_retries=-1)
        def work(i: int) -> tuple[int, str]:
            api.sleep(0.05)
            return i, str(shoal.get_runtime_context().get_node_id())

        waves = (tasks + WAVE - 1) // WAVE
        pause = SAFETY_S / waves if pace else 0.0
        nodes_used: set[str] = set()
        done = 0
        while done < tasks:
            n = min(WAVE, tasks - done)
            values = shoal.get([work.remote(done + i) for i in range(n)])
            assert [v[0] for v in values] == list(range(done, done + n)), "wrong task results"
            nodes_used.update(v[1] for v in values)
            done += n
            if pause:
                api.sleep(pause)
        return {"tasks": done, "nodes_used": len(nodes_used)}

    return main


def _actors_program(actors: int, pace: bool) -> Callable[[], dict[str, Any]]:
    def main() -> dict[str, Any]:
        from shoal.sim import api

        import shoal

        @shoal.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def inc(self) -> int:
                self.n += 1
                return self.n

        waves = (actors + WAVE - 1) // WAVE
        pause = SAFETY_S / waves if pace else 0.0
        done = 0
        while done < actors:
            n = min(WAVE, actors - done)
            handles = [Counter.remote() for _ in range(n)]
            values = shoal.get([h.inc.remote() for h in handles])
            assert all(v >= 1 for v in values), "wrong actor results"
            del handles
            done += n
            if pause:
                api.sleep(pause)
        return {"actors": done}

    return main


def _actors_available() -> str | None:
    try:
        from shoal.runtime.api import actor  # noqa: F401
    except ImportError as error:
        return f"actors not available in the simulator ({error})"
    return None


def run_one(name: str, faults: str, scale: float, seed: int, trace_memory: bool) -> dict[str, Any]:
    """One scenario in this process; returns its figures."""
    import tracemalloc

    from shoal.sim import Simulation

    sizes = _sizes(name, scale)
    pace = faults != "none"
    if name == "many_actors":
        skipped = _actors_available()
        if skipped:
            return {"scenario": name, "faults": faults, "scale": scale, **sizes,
                    "skipped": skipped}
        program = _actors_program(sizes["actors"], pace)
    else:
        program = _tasks_program(sizes["tasks"], pace)
    if trace_memory:
        tracemalloc.start()
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = Simulation(seed=seed, nodes=sizes["nodes"], faults=faults, until=SAFETY_S,
                        liveness=300.0).run(program)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    report = result.report
    out: dict[str, Any] = {
        "scenario": name, "faults": faults, "scale": scale, "seed": seed, **sizes,
        "wall_s": round(wall, 3), "sim_s": round(report.sim_seconds, 3),
        "cpu_s": round(cpu, 3), "events": report.events,
        "events_per_wall_s": round(report.events / wall),
        "events_per_cpu_s": round(report.events / cpu),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "violations": list(result.violations)[:3], "fault_plan": report.plan,
        "trace_hash": report.trace_hash,
        **(result.value if isinstance(result.value, dict) else {}),
    }
    if trace_memory:
        out["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
    return out


def _run_child(name: str, faults: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--one", name, "--faults", faults,
               "--scale", str(args.scale), "--seed", str(args.seed)]
    if args.tracemalloc:
        command.append("--tracemalloc")
    load = os.getloadavg()[0]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"scenario": name, "faults": faults, "scale": args.scale,
                "error": f"exit {proc.returncode}: {tail[:300]}", "load_1m": round(load, 2)}
    out: dict[str, Any] = json.loads(lines[-1])
    out["load_1m"] = round(load, 2)
    return out


def _print_row(row: dict[str, Any]) -> None:
    head = f"{row['scenario']:<12} faults={row['faults']:<6} scale={row['scale']:g}"
    if "skipped" in row or "error" in row:
        print(f"{head}  {row.get('skipped') or row.get('error')}", flush=True)
        return
    counts = ", ".join(f"{k}={row[k]:,}" for k in ("nodes", "tasks", "actors", "nodes_used")
                       if k in row)
    extra = ""
    if row["scale"] < 1:
        extra = f"  (~{row['wall_s'] / row['scale']:,.0f} s at scale 1, linear estimate)"
    status = "ok" if not row["violations"] else f"VIOLATED: {row['violations'][0]}"
    memory = f"{row['peak_rss_mb']:,.0f} MB rss"
    if "tracemalloc_peak_mb" in row:
        memory += f", {row['tracemalloc_peak_mb']:,.0f} MB traced"
    print(f"{head}  [{counts}]  {row['wall_s']:,.1f} wall s ({row['cpu_s']:,.1f} cpu s), "
          f"{row['sim_s']:,.2f} sim s, {row['events']:,} events, "
          f"{row['events_per_wall_s']:,} events/wall s ({row['events_per_cpu_s']:,}/cpu s), "
          f"{memory}, "
          f"load {row['load_1m']}  {status}{extra}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every count (0.1)")
    parser.add_argument("--only", metavar="REGEX", help="scenarios whose name matches")
    parser.add_argument("--faults", nargs="+", default=["none", "chaos"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report tracemalloc's peak (slows the run)")
    parser.add_argument("--one", metavar="SCENARIO", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.faults[0], args.scale, args.seed,
                                 args.tracemalloc)))
        return 0
    pattern = re.compile(args.only) if args.only else None
    print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f} (1 min), python "
          f"{platform.python_version()}", flush=True)
    rows = []
    for name in SCENARIOS:
        if pattern and not pattern.search(name):
            continue
        for faults in args.faults:
            row = _run_child(name, faults, args)
            rows.append(row)
            _print_row(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                   "platform": platform.platform()},
                       "scale": args.scale, "results": rows}, f, indent=2)
    return 1 if any(r.get("violations") or r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
