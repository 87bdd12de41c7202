"""Async actors in the simulator under faults: restarts, actor-to-actor awaits, the workload."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from shoal.sim import RunConfig, Simulation, api, run_simulation

import shoal


def test_calls_suspended_when_an_async_actor_restarts_are_retried_in_the_new_incarnation(
) -> None:
    def main() -> list[tuple[int, bool]]:
        @shoal.remote(max_restarts=1, max_task_retries=-1)
        class Napper:
            async def nap(self, i: int) -> tuple[int, bool]:
                await asyncio.sleep(2.0)
                return i, shoal.get_runtime_context().was_current_actor_reconstructed

        napper = Napper.remote()
        refs = [napper.nap.remote(i) for i in range(5)]
        api.sleep(1.0)  # every call is suspended in its sleep
        shoal.kill(napper, no_restart=False)
        return list(shoal.get(refs))

    for seed in range(3):
        result = Simulation(seed=seed, nodes=2).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        assert result.value == [(i, True) for i in range(5)], f"seed {seed}"


def test_an_async_actor_awaits_the_calls_it_makes_to_another_actor() -> None:
    def main() -> tuple[list[int], int]:
        @shoal.remote
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def incr(self) -> int:
                self.n += 1
                return self.n

        @shoal.remote
        class Fanout:
            async def spread(self, counters: list[Any], times: int) -> list[int]:
                refs = [c.incr.remote() for c in counters for _ in range(times)]
                return list(await asyncio.gather(*refs))

            async def one(self, counters: list[Any]) -> int:
                return int(await counters[0].incr.remote())

        counters = [Counter.remote() for _ in range(2)]
        fanout = Fanout.remote()
        spread = shoal.get(fanout.spread.remote(counters, 3))
        return spread, shoal.get(fanout.one.remote(counters))

    for seed in range(3):
        result = Simulation(seed=seed, nodes=3, faults="lossy").run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        assert result.value == ([1, 2, 3, 1, 2, 3], 4), f"seed {seed}"


def test_a_crashed_async_actor_without_restarts_fails_its_pending_calls() -> None:
    def main() -> list[str]:
        from shoal import exceptions

        @shoal.remote
        class Napper:
            async def nap(self) -> str:
                await asyncio.sleep(5.0)
                return "woke"

        napper = Napper.remote()
        refs = [napper.nap.remote() for _ in range(3)]
        api.sleep(1.0)
        shoal.kill(napper)
        out = []
        for ref in refs:
            try:
                out.append(shoal.get(ref))
            except exceptions.RayActorError:
                out.append("actor died")
        return out

    result = Simulation(seed=4, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == ["actor died"] * 3


@pytest.mark.parametrize("profile", ["crash", "chaos"])
def test_the_actors_workload_with_its_async_actor_holds_every_invariant(profile: str) -> None:
    for seed in range(200, 205):
        result = run_simulation(RunConfig(seed=seed, nodes=3, workload="actors",
                                          faults=profile, until_s=3))
        assert not result.violations, (
            f"seed {seed}: {result.violations}\nreplay: {result.config.replay_command()}")
        assert result.stats["actor_calls"] > 0, f"seed {seed}"


def test_cancel_interrupts_a_running_async_call_at_its_await() -> None:
    def main() -> tuple[str, str, list[str], float]:
        from shoal import exceptions

        @shoal.remote
        class Napper:
            def __init__(self) -> None:
                self.log: list[str] = []

            async def nap(self) -> str:
                try:
                    await asyncio.sleep(100.0)
                except asyncio.CancelledError:
                    self.log.append("cancelled at the await")
                    raise
                return "woke"

            async def quick(self) -> str:
                return "still serving"

            def read(self) -> list[str]:
                return self.log

        napper = Napper.remote()
        ref = napper.nap.remote()
        api.sleep(1.0)  # the call runs, suspended in its sleep
        shoal.cancel(ref)
        try:
            outcome = str(shoal.get(ref))
        except exceptions.TaskCancelledError:
            outcome = "TaskCancelledError"
        return (outcome, shoal.get(napper.quick.remote()), shoal.get(napper.read.remote()),
                api.now())

    for seed in range(3):
        result = Simulation(seed=seed, nodes=2).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        outcome, quick, log, now = result.value
        assert (outcome, quick, log) == (
            "TaskCancelledError", "still serving", ["cancelled at the await"]), f"seed {seed}"
        assert now < 100.0, f"seed {seed}: the cancelled call slept on"
