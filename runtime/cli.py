"""The ``shoal`` command line.

``shoal sim run`` runs one seeded simulation and reports it: a human summary by
default, one JSON object with ``--json``. Exit codes: 0 when every invariant
held, 1 when one was violated, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2


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
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "sim" and args.sim_command == "run":
        return _sim_run(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
