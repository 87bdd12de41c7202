"""The ``shoal`` command line.

``shoal sim run`` runs one seeded simulation and reports it: a human summary by
default, one JSON object with ``--json``. Exit codes: 0 when every invariant
held, 1 when one was violated, 2 for a usage error.

The cluster commands (``runtime/daemons.py`` does the work):

* ``shoal start --head [--port P] [--num-cpus N] [--num-gpus N] [--resources JSON]
  [--object-store-memory BYTES] [--node-ip-address IP]``: starts a detached head
  node daemon and prints its address, its token and how to connect;
* ``shoal start --address HOST:PORT --token T [...]``: starts a node daemon
  that joins that cluster;
* ``shoal stop``: stops every node daemon ``shoal start`` ran on this machine;
* ``shoal status``: nodes, resources used/total, leases, workers, objects, actors.

Each prints for people by default and one JSON object with ``--json``. Exit
codes: 0 done, 1 failed (the message says why and what to do), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2
EXIT_FAILURE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    from shoal.sim.faults import PROFILES
    from shoal.sim.workloads import WORKLOADS

    parser = _Parser(prog="shoal", description="shoal: a distributed compute runtime.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sim = commands.add_parser("sim", help="deterministic simulation")
    sim_commands = sim.add_subparsers(dest="sim_command", required=True, parser_class=_Parser)
    run = sim_commands.add_parser("run", help="run one seeded simulation and check it")
    run.add_argument("--seed", type=int, required=True, help="the seed; same seed, same run")
    run.add_argument("--nodes", type=_positive_int, default=4, help="simulated nodes (default 4)")
    run.add_argument("--workload", default="membership", choices=WORKLOADS,
                     help="what the cluster runs (default membership)")
    run.add_argument("--faults", default="none", choices=tuple(PROFILES),
                     help="fault profile (default none)")
    run.add_argument("--until", type=_positive_float, default=30.0, metavar="SECONDS",
                     help="virtual seconds of the safety phase (default 30)")
    run.add_argument("--liveness", type=_positive_float, default=60.0, metavar="SECONDS",
                     help="virtual seconds allowed for work to finish after the heal")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    _add_cluster_commands(commands)
    # Handled in main() before parsing: every argument goes to shoal.runtime.microbenchmark.
    commands.add_parser("microbenchmark", add_help=False,
                        help="Ray's microbenchmark workloads against shoal or Ray (see --help)")
    return parser


def _add_cluster_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    start = commands.add_parser(
        "start", help="start a node daemon of a cluster on this machine",
        description="Start a detached node daemon: the head of a new cluster (--head), or a "
                    "node that joins one (--address HOST:PORT --token T).")
    role = start.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head of a new cluster")
    role.add_argument("--address", metavar="HOST:PORT",
                      help="join the cluster whose head is at HOST:PORT")
    start.add_argument("--token", help="the cluster token (required with --address; with "
                                       "--head, use this token instead of a new one)")
    start.add_argument("--port", type=_port, default=None,
                       help="this node's gRPC port (head default 6379; 0 picks a free one)")
    start.add_argument("--node-ip-address", metavar="IP", default="",
                       help="the address this node listens on and is reached at (default: "
                            "127.0.0.1 for a head; for a joining node, the local address "
                            "toward the head)")
    start.add_argument("--num-cpus", type=_amount, default=None,
                       help="CPUs of this node (default: every core of the machine)")
    start.add_argument("--num-gpus", type=_amount, default=None,
                       help="GPUs of this node (default: those the machine shows)")
    start.add_argument("--resources", type=_resources_json, default=None, metavar="JSON",
                       help='custom resources, e.g. \'{"disk": 2}\'')
    start.add_argument("--object-store-memory", type=_bytes, default=None, metavar="BYTES",
                       help="bytes of this node's object store (default: 30%% of RAM)")
    start.add_argument("--json", action="store_true", help="print one JSON object")
    stop = commands.add_parser("stop", help="stop every node daemon started on this machine")
    stop.add_argument("--json", action="store_true", help="print one JSON object")
    status = commands.add_parser("status", help="show the cluster this machine runs")
    status.add_argument("--json", action="store_true", help="print one JSON object")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def _amount(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _bytes(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {text}")
    return value


def _resources_json(text: str) -> dict[str, float]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text}") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            and v >= 0 for k, v in value.items()):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object of non-negative numbers, like \'{{"disk": 2}}\', got {text}')
    return {k: float(v) for k, v in value.items()}


def _sim_run(args: argparse.Namespace) -> int:
    from shoal.sim.harness import RunConfig, run_simulation

    config = RunConfig(seed=args.seed, nodes=args.nodes, workload=args.workload,
                       faults=args.faults, until_s=args.until, liveness_s=args.liveness)
    result = run_simulation(config)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        _print_summary(result)
    return EXIT_VIOLATION if result.violations else EXIT_OK


def _print_summary(result: object) -> None:
    from shoal.sim.harness import RunResult

    assert isinstance(result, RunResult)
    c = result.config
    rate = result.events / result.wall_seconds if result.wall_seconds else 0.0
    print(f"seed {c.seed}: workload {c.workload} on {c.nodes} nodes, faults {c.faults}")
    print(f"  {result.events} events, {result.sim_seconds:.3f} simulated s in "
          f"{result.wall_seconds:.3f} wall s ({rate:,.0f} events/s)")
    print(f"  fault plan: {result.plan}")
    print(f"  trace hash: {result.trace_hash}")
    if not result.violations:
        print("  all invariants held")
        return
    print(f"  VIOLATED ({len(result.violations)}):")
    for violation in result.violations:
        print(f"    {violation}")
    print(f"  replay: {c.replay_command()}")
    print("  trace before the first violation:")
    for line in result.trace_excerpt:
        print(f"    {line}")


# --- the cluster commands ---------------------------------------------------------------


def _fail(command: str, message: str, code: int = EXIT_FAILURE) -> int:
    print(f"shoal {command}: error: {message}", file=sys.stderr)
    return code


def _start(args: argparse.Namespace) -> int:
    from shoal.runtime import daemons
    from shoal.runtime.cluster import _NodeResources

    if args.address is not None and not args.token:
        return _fail("start", "--token is required with --address (the token that "
                     "`shoal start --head` printed)", EXIT_USAGE)
    try:
        options = _NodeResources.from_args(None, args.num_cpus, args.num_gpus, args.resources,
                                           args.object_store_memory)
    except ValueError as exc:
        return _fail("start", str(exc), EXIT_USAGE)
    spec = daemons.NodeSpec(resources=options.resources,
                            object_store_memory=options.object_store_memory,
                            host=args.node_ip_address, port=args.port, worker_cwd=os.getcwd())
    try:
        if args.head:
            info = daemons.start_head(spec, token=args.token)
        else:
            info = daemons.join_cluster(args.address, args.token, spec)
    except daemons.ClusterError as exc:
        return _fail("start", str(exc))
    if args.json:
        print(json.dumps(info))
    elif args.head:
        _print_head_started(info)
    else:
        _print_node_started(info)
    return EXIT_OK


def _print_head_started(info: dict[str, Any]) -> None:
    address, token = info["address"], info["token"]
    print(f"Started the head node {info['node_id']} of a new shoal cluster (pid {info['pid']}).")
    print()
    print(f"  Address: {address}")
    print(f"  Token:   {token}")
    print()
    print("To add a node to this cluster, run on its machine:")
    print(f"    shoal start --address {address} --token {token}")
    print("To connect a driver on this machine, in Python:")
    print('    shoal.init(address="auto")')
    print(f'    shoal.init(address="{address}")  # the same')
    print("  (a driver on another machine needs a node there: `shoal start --address ...`)")
    print("To see the cluster: shoal status")
    print("To stop it:         shoal stop")
    print(f"Logs: {info['log']}")


def _print_node_started(info: dict[str, Any]) -> None:
    print(f"Started node {info['node_id']} (pid {info['pid']}, at {info['endpoint']}); it "
          f"joined the shoal cluster at {info['address']}.")
    print("To connect a driver on this machine, in Python:")
    print('    shoal.init(address="auto")')
    print("To see the cluster: shoal status")
    print("To stop the nodes of this machine: shoal stop")
    print(f"Logs: {info['log']}")


def _stop(args: argparse.Namespace) -> int:
    from shoal.runtime import daemons

    stopped = daemons.stop_all()
    if args.json:
        print(json.dumps({"stopped": [
            {"node_id": s.node_id, "pid": s.pid, "head": s.head, "outcome": s.outcome}
            for s in stopped]}))
        return EXIT_OK
    if not stopped:
        print("No shoal node daemon was running on this machine.")
    for node in stopped:
        role = ", head" if node.head else ""
        if node.outcome == "not running":
            print(f"Removed node {node.node_id} (it was no longer running).")
        else:
            how = "Stopped" if node.outcome == "stopped" else "Killed (it ignored SIGTERM)"
            print(f"{how} node {node.node_id} (pid {node.pid}{role}).")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from shoal.runtime import daemons

    try:
        status = daemons.cluster_status()
    except daemons.ClusterError as exc:
        return _fail("status", str(exc))
    if args.json:
        print(json.dumps(asdict(status)))
    else:
        _print_status(status)
    return EXIT_OK


def _print_status(status: Any) -> None:
    alive = sum(1 for n in status.nodes if n["alive"])
    print(f"shoal cluster at {status.address} (head {status.head_node_id})")
    print(f"Nodes: {alive} alive, {len(status.nodes) - alive} dead")
    rows = [("NODE", "STATE", "ENDPOINT", "CPU", "LEASES", "WORKERS", "OBJECTS", "")]
    for node in status.nodes:
        cpu = _used_total(node["resources"]["used"].get("CPU", 0.0),
                          node["resources"]["total"].get("CPU", 0.0), "CPU")
        notes = ", ".join(n for n, on in (("head", node["head"]), ("this machine", node["local"]))
                          if on) or ("" if node["alive"] else node["death_cause"])
        rows.append((node["node_id"], node["state"], node["endpoint"] or "-",
                     cpu if node["alive"] else "-", *(
                         "-" if node[key] is None else str(node[key])
                         for key in ("leases", "workers", "objects")), notes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print("Resources (used/total):")
    width = max((len(name) for name in status.resources), default=0)
    for name, amounts in sorted(status.resources.items()):
        print(f"  {name.ljust(width)}  {_used_total(amounts['used'], amounts['total'], name)}")
    if status.actors is not None:
        counts = ", ".join(f"{n} {phase}" for phase, n in sorted(status.actors.items()))
        print(f"Actors: {sum(status.actors.values())}" + (f" ({counts})" if counts else ""))
    for problem in status.problems:
        print(f"Warning: {problem}")


def _used_total(used: float, total: float, name: str) -> str:
    if "memory" in name:
        return f"{_size(used)}/{_size(total)}"
    return f"{used:g}/{total:g}"


def _size(amount: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if amount >= scale:
            return f"{amount / scale:.1f} {unit}"
    return f"{amount:g} B"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["microbenchmark"]:
        from shoal.runtime.microbenchmark import main as microbenchmark

        return microbenchmark(argv[1:])
    args = _build_parser().parse_args(argv)
    if args.command == "sim" and args.sim_command == "run":
        return _sim_run(args)
    if args.command == "start":
        return _start(args)
    if args.command == "stop":
        return _stop(args)
    if args.command == "status":
        return _status(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
