"""User programs under simulation: baton threads, shoal's clock, KV through the kernels."""

from __future__ import annotations

import threading

import pytest

from shoal.sim import NotInSimulation, Simulation
from shoal.sim import api


def test_sleep_advances_virtual_time_not_wall_time() -> None:
    def main() -> float:
        api.sleep(3600.0)  # an hour of virtual time
        return api.now()

    result = Simulation(seed=1, nodes=2, until=4000.0).run(main)
    assert result.value == pytest.approx(3600.0, abs=1e-3)
    assert not result.violations
    assert result.report.wall_seconds < 30


def test_kv_calls_round_trip_through_gcs_kernel_under_chaos() -> None:
    def main() -> list[object]:
        out: list[object] = [api.kv_put("k1", "v1"), api.kv_put("k1", "v2", overwrite=False)]
        api.kv_put("k2", b"\x00bin", namespace="other")
        out += [api.kv_get("k1"), api.kv_get("k2"), api.kv_get("k2", namespace="other")]
        out += [api.kv_exists("k1"), api.kv_list("k"), api.kv_delete("k", by_prefix=True)]
        return out

    for seed in range(20):
        result = Simulation(seed=seed, nodes=3, faults="chaos").run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        added, second = result.value[0], result.value[1]
        assert second is False, f"seed {seed}"
        assert result.value[2:] == [b"v1", None, b"\x00bin", True, [b"k1"], 1], f"seed {seed}"
        assert added in (True, False)  # at-least-once: a lost reply may be retried


def test_only_one_user_thread_runs_at_a_time() -> None:
    running = []
    overlap = []
    lock = threading.Lock()

    def main() -> int:
        for _ in range(50):
            with lock:
                running.append(1)
                if len(running) > 1:
                    overlap.append(True)
            api.sleep(0.01)
            with lock:
                running.pop()
        return len(api.nodes())

    result = Simulation(seed=2, nodes=3).run(main)
    assert result.value == 3 and not overlap


def test_same_seed_same_program_same_trace() -> None:
    def main() -> bytes | None:
        api.sleep(1.5)
        api.kv_put("x", "1")
        return api.kv_get("x")

    a = Simulation(seed=11, nodes=4, faults="chaos").run(main)
    b = Simulation(seed=11, nodes=4, faults="chaos").run(main)
    c = Simulation(seed=12, nodes=4, faults="chaos").run(main)
    assert a.trace_hash == b.trace_hash and a.value == b.value == b"1"
    assert a.trace_hash != c.trace_hash


def test_program_exception_is_reported_as_a_violation() -> None:
    def main() -> None:
        api.sleep(0.1)
        raise KeyError("boom")

    result = Simulation(seed=3).run(main)
    assert isinstance(result.error, KeyError)
    assert result.violations == ["the program raised KeyError: 'boom'"]


def test_program_that_never_finishes_is_a_liveness_violation_and_leaves_no_thread() -> None:
    def main() -> None:
        while True:
            api.sleep(1.0)

    before = threading.active_count()
    result = Simulation(seed=4, nodes=2, until=5.0, liveness=5.0).run(main)
    assert len(result.violations) == 1 and "liveness" in result.violations[0]
    assert threading.active_count() == before


def test_api_outside_a_simulation_says_so() -> None:
    with pytest.raises(NotInSimulation, match="only work inside a program"):
        api.now()


def test_bad_simulation_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown fault profile 'nope'; choose one of: none"):
        Simulation(faults="nope")
    with pytest.raises(ValueError, match="at least 1 node"):
        Simulation(nodes=0)
