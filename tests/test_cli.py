"""``shoal sim run``: JSON report, exit codes, human output, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shoal.runtime.cli import main


def _shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.runtime.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_json_report_has_every_field_and_is_reproducible() -> None:
    args = ("sim", "run", "--seed", "9", "--nodes", "5", "--workload", "membership",
            "--faults", "chaos", "--json")
    first, second = _shoal(*args), _shoal(*args)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    for field in ("seed", "nodes", "workload", "faults", "trace_hash", "events",
                  "sim_seconds", "wall_seconds", "violations"):
        assert field in report, field
    assert (report["seed"], report["nodes"], report["faults"]) == (9, 5, "chaos")
    assert report["violations"] == [] and report["events"] > 0
    assert json.loads(second.stdout)["trace_hash"] == report["trace_hash"]


def test_human_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "run", "--seed", "1", "--faults", "crash"]) == 0
    out = capsys.readouterr().out
    assert "seed 1: workload membership on 4 nodes, faults crash" in out
    assert "all invariants held" in out


@pytest.mark.parametrize("args, needle", [
    (["sim", "run", "--seed", "1", "--workload", "nope"], "invalid choice: 'nope' (choose from"),
    (["sim", "run", "--seed", "1", "--faults", "nope"], "invalid choice: 'nope' (choose from"),
    (["sim", "run"], "the following arguments are required: --seed"),
    (["sim", "run", "--seed", "1", "--nodes", "0"], "must be at least 1"),
])
def test_usage_errors_exit_2(args: list[str], needle: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_violation_exits_1_and_prints_replay(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from shoal.sim.workloads import membership

    monkeypatch.setattr(membership.MembershipWorkload, "done", lambda self: False)
    assert main(["sim", "run", "--seed", "2", "--until", "2", "--liveness", "1"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATED" in out and "replay: shoal sim run --seed 2" in out
    assert "trace before the first violation" in out
