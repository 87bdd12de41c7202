"""A shoal program on a simulated cluster: four nodes, seeded chaos, virtual time.

Run it: python examples/simulated_cluster.py [SEED]

The program below is ordinary blocking Python. It runs inside a whole cluster
(the GCS and a raylet per node, the same kernels production runs) that lives in
this one process on virtual time, while the seed's faults (lost and duplicated
messages, partitions, crashes) hit it. Run it twice with the same seed and the
trace hash is the same: every run replays exactly.
"""

from __future__ import annotations

import sys

from shoal.sim import Simulation, api


def main() -> dict[str, object]:
    api.sleep(2.0)  # two seconds of virtual time: nodes register and heartbeat
    alive = sorted(node["NodeID"] for node in api.nodes() if node["Alive"])
    api.kv_put("greeting", "hello from a simulated driver")
    value = api.kv_get("greeting")
    api.sleep(60.0)  # a minute of faults
    return {"alive_at_2s": alive, "kv": value, "now": round(api.now(), 3),
            "nodes_at_end": [(n["NodeID"], n["Alive"], n["Incarnation"]) for n in api.nodes()]}


if __name__ == "__main__":
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    result = Simulation(seed=seed, nodes=4, faults="chaos").run(main)
    print(f"seed {seed}: program returned {result.value}")
    print(f"  {result.report.events} events, {result.report.sim_seconds:.1f} virtual s "
          f"in {result.report.wall_seconds:.3f} wall s; faults: {result.report.plan}")
    print(f"  trace hash {result.trace_hash}")
    print("  violations:", result.violations or "none")
    sys.exit(1 if result.violations else 0)
