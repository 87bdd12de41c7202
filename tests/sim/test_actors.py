"""Actors end to end in the simulator, through the public API, under faults."""

from __future__ import annotations

import pytest
from shoal.sim import PROFILES, RunConfig, Simulation, api, run_simulation

import shoal
from shoal import exceptions

SEEDS = 100  # per fault profile, run in chunks so each test stays well under its timeout
CHUNK = 25


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_actors_workload_holds_every_invariant(profile: str, first: int) -> None:
    for seed in range(first, first + CHUNK):
        result = run_simulation(RunConfig(seed=seed, nodes=3, workload="actors",
                                          faults=profile, until_s=3))
        assert not result.violations, (
            f"seed {seed}: {result.violations}\nreplay: {result.config.replay_command()}\n"
            + "\n".join(result.trace_excerpt))


@pytest.mark.parametrize(("seed", "faults", "nodes", "until_s"), [
    # a lease check overtook a lost grant; the GCS gave the lease back and its request,
    # now ended at the raylet, was never answered again
    (11, "lossy", 3, 4.0),
    # a grant lost while its node was declared dead left the GCS retrying a request
    # the restarted raylet had ended
    (119, "chaos", 4, 30.0),
    # two workers started at one instant had the same caller session for an actor
    (6, "none", 3, 4.0),
])
def test_regressions(seed: int, faults: str, nodes: int, until_s: float) -> None:
    result = run_simulation(RunConfig(seed=seed, nodes=nodes, workload="actors", faults=faults,
                                      until_s=until_s))
    assert not result.violations, f"seed {seed}: {result.violations}"


def test_same_seed_same_trace_for_the_actors_workload() -> None:
    config = RunConfig(seed=12, nodes=3, workload="actors", faults="chaos", until_s=3)
    first, second = run_simulation(config), run_simulation(config)
    assert first.trace_hash == second.trace_hash and first.events == second.events


def test_same_seed_same_trace_for_an_actor_program() -> None:
    def main() -> list[int]:
        @shoal.remote(max_restarts=1)
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def incr(self) -> int:
                api.sleep(0.01)
                self.n += 1
                return self.n

        counter = Counter.remote()
        return list(shoal.get([counter.incr.remote() for _ in range(10)]))

    runs = [Simulation(seed=8, nodes=3, faults="chaos").run(main) for _ in range(2)]
    assert runs[0].trace_hash == runs[1].trace_hash
    assert runs[0].value == runs[1].value


def test_the_ray_actor_example_runs_unmodified() -> None:
    def main() -> dict[str, object]:
        ray = shoal
        ray.init()

        @ray.remote
        class Counter:
            def __init__(self, start: int = 0) -> None:
                self.value = start

            def increment(self, by: int = 1) -> int:
                self.value += by
                return self.value

            @ray.method(num_returns=2)
            def both(self) -> tuple[int, int]:
                return self.value, -self.value

        @ray.remote
        def bump(counter: object, times: int) -> list[int]:
            return ray.get([counter.increment.remote() for _ in range(times)])  # type: ignore[attr-defined]

        counter = Counter.options(name="main", max_concurrency=1).remote(10)
        first = ray.get([counter.increment.remote() for _ in range(3)])
        from_task = ray.get(bump.remote(counter, 2))
        found = ray.get_actor("main")
        plus, minus = counter.both.remote()
        return {"first": first, "task": from_task, "named": ray.get(found.increment.remote(5)),
                "both": ray.get([plus, minus]),
                "context": ray.get_runtime_context().get_actor_id()}

    result = Simulation(seed=3, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == {"first": [11, 12, 13], "task": [14, 15], "named": 20,
                            "both": [15, -15], "context": None}


def test_errors_kill_restart_and_backpressure() -> None:
    def main() -> dict[str, object]:
        out: dict[str, object] = {}

        @shoal.remote
        class Broken:
            def __init__(self) -> None:
                raise ValueError("bad init")

            def f(self) -> int:
                return 1

        try:
            shoal.get(Broken.remote().f.remote())
        except exceptions.ActorDiedError as error:
            out["init"] = ("bad init" in str(error), type(error.cause).__name__)

        @shoal.remote(max_restarts=1, max_task_retries=1)
        class Counter:
            def __init__(self) -> None:
                self.n = 0

            def incr(self) -> int:
                self.n += 1
                return self.n

            def restarted(self) -> bool:
                return shoal.get_runtime_context().was_current_actor_reconstructed

        counter = Counter.remote()
        shoal.get(counter.incr.remote())
        shoal.kill(counter, no_restart=False)
        out["after_restart"] = (shoal.get(counter.incr.remote()),
                                shoal.get(counter.restarted.remote()))
        shoal.kill(counter)
        try:
            shoal.get(counter.incr.remote())
        except exceptions.RayActorError as error:
            out["killed"] = "shoal.kill" in str(error)

        limited = Counter.options(max_pending_calls=1).remote()
        ref = limited.incr.remote()
        try:
            limited.incr.remote()
        except exceptions.PendingCallsLimitExceeded as error:
            out["pending"] = "max_pending_calls=1" in str(error)
        shoal.get(ref)

        try:
            Counter.options(name="dup").remote()
            Counter.options(name="dup").remote()
        except ValueError as error:
            out["dup"] = "already taken" in str(error)
        try:
            shoal.get_actor("nobody")
        except ValueError as error:
            out["lookup"] = "Failed to look up actor with name 'nobody'" in str(error)
        return out

    result = Simulation(seed=4, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == {"init": (True, "RayTaskError(ValueError)"), "after_restart": (1, True),
                            "killed": True, "pending": True, "dup": True, "lookup": True}


def test_threaded_actor_runs_calls_concurrently() -> None:
    def main() -> tuple[float, float]:
        @shoal.remote(max_concurrency=4)
        class Sleeper:
            def nap(self) -> float:
                api.sleep(1.0)
                return api.now()

        sleeper = Sleeper.remote()
        start = api.now()
        ends = shoal.get([sleeper.nap.remote() for _ in range(4)])
        return max(ends) - start, api.now() - start

    nap, total = Simulation(seed=5, nodes=1).run(main).value
    assert nap < 1.5 and total < 1.5, "four one-second calls overlapped"


def test_dropping_the_last_handle_stops_the_actor_and_frees_its_lease() -> None:
    from random import Random

    from shoal.sim.program import ProgramWorkload

    def main() -> str:
        @shoal.remote(num_cpus=1)
        class Holder:
            def ping(self) -> str:
                return "pong"

        holder = Holder.remote()
        named = Holder.options(name="kept").remote()
        answer = shoal.get([holder.ping.remote(), named.ping.remote()])[0]
        del holder, named
        api.sleep(3.0)
        return str(answer)

    workload = ProgramWorkload(Random(0), main)
    try:
        report = run_simulation(RunConfig(seed=6, nodes=1, workload="program", until_s=60),
                                workload)
    finally:
        workload.shutdown()
    assert not report.violations and workload.thread is not None
    assert workload.thread.result == "pong"
    gcs = workload._gcs_proc.kernel  # type: ignore[union-attr]
    causes = [(r.phase.value, r.death.kind if r.death else "") for r in gcs.actors.rows]
    assert causes == [("DEAD", "out_of_scope"), ("ALIVE", "")], "named actors are kept"
    raylet = workload._raylets["n0"].kernel  # type: ignore[attr-defined]
    kept = gcs.actors.rows[1]
    assert raylet.leases.lease_ids == (kept.lease_id,), "only the named actor holds a lease"
