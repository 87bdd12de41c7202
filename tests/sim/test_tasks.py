"""Tasks and objects end to end in the simulator, through the public API, under faults."""

from __future__ import annotations

import pytest

import shoal
from shoal import exceptions
from shoal.sim import PROFILES, RunConfig, Simulation, run_simulation
from shoal.sim import api

SEEDS = range(100)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_tasks_workload_holds_every_invariant(profile: str) -> None:
    for seed in SEEDS:
        result = run_simulation(RunConfig(seed=seed, nodes=3, workload="tasks",
                                          faults=profile, until_s=4))
        assert not result.violations, (
            f"seed {seed}: {result.violations}\nreplay: {result.config.replay_command()}\n"
            + "\n".join(result.trace_excerpt))


def test_the_issue_example_runs_unmodified() -> None:
    def main() -> list[int]:
        @shoal.remote
        def square(x: int) -> int:
            return x * x

        return shoal.get([square.remote(i) for i in range(100)])

    for seed, faults in [(3, "crash"), (4, "chaos"), (5, "none")]:
        result = Simulation(seed=seed, nodes=4, faults=faults).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        assert result.value == [i * i for i in range(100)]


def test_same_seed_same_trace_for_a_task_program() -> None:
    def main() -> int:
        @shoal.remote
        def inc(x: int) -> int:
            api.sleep(0.1)
            return x + 1

        ref = inc.remote(0)
        for _ in range(5):
            ref = inc.remote(ref)
        return int(shoal.get(ref))

    runs = [Simulation(seed=21, nodes=3, faults="chaos").run(main) for _ in range(2)]
    assert runs[0].value == runs[1].value == 6
    assert runs[0].trace_hash == runs[1].trace_hash


def test_user_exception_is_a_ray_task_error_and_the_original_class() -> None:
    def main() -> str:
        @shoal.remote
        def divide(a: int, b: int) -> float:
            return a / b

        try:
            shoal.get(divide.remote(1, 0))
        except ZeroDivisionError as error:
            assert isinstance(error, exceptions.RayTaskError)
            return "caught"
        return "not raised"

    assert Simulation(seed=1, nodes=2).run(main).value == "caught"


def test_retries_exhausted_raise_worker_crashed_error() -> None:
    def main() -> str:
        @shoal.remote(max_retries=1)
        def victim() -> None:
            api.sleep(1000.0)

        ref = victim.remote()
        for _ in range(2):  # kill whichever worker runs it, twice: one retry is not enough
            api.sleep(1.0)
            assert api.kill_worker_running(ref)
        try:
            shoal.get(ref, timeout=30)
        except exceptions.WorkerCrashedError as error:
            return str(error)
        return "no error"

    message = Simulation(seed=2, nodes=1).run(main).value
    assert "max_retries=1" in message and "died" in message


def test_get_timeout_and_wait_semantics() -> None:
    def main() -> tuple[bool, int, int]:
        @shoal.remote
        def slow(seconds: float) -> float:
            api.sleep(seconds)
            return seconds

        refs = [slow.remote(s) for s in (0.1, 0.2, 50.0)]
        ready, not_ready = shoal.wait(refs, num_returns=2, timeout=10)
        try:
            shoal.get(refs[2], timeout=1.0)
            timed_out = False
        except exceptions.GetTimeoutError:
            timed_out = True
        return timed_out, len(ready), len(not_ready)

    assert Simulation(seed=3, nodes=2).run(main).value == (True, 2, 1)


def test_cancel_a_running_task() -> None:
    def main() -> str:
        @shoal.remote
        def forever() -> None:
            while True:
                api.sleep(1.0)

        ref = forever.remote()
        api.sleep(0.5)
        shoal.cancel(ref)
        try:
            shoal.get(ref)
        except exceptions.TaskCancelledError:
            return "cancelled"
        return "not cancelled"

    assert Simulation(seed=4, nodes=2).run(main).value == "cancelled"
