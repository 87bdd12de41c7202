"""A run leaves no thread behind: user threads of a workload end with its run."""

from __future__ import annotations

import threading

import pytest

from shoal.sim import RunConfig, run_simulation


@pytest.mark.parametrize("workload", ["tasks", "actors"])
def test_a_run_joins_the_user_threads_of_the_workload_it_made(workload: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    for seed in range(2):
        result = run_simulation(RunConfig(seed=seed, nodes=3, workload=workload,
                                          faults="chaos", until_s=2))
        assert not result.violations, (seed, result.violations)
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == [], f"threads outlived their runs: {left}"
