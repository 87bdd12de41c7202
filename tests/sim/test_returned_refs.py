"""A task may return refs it owns (``put`` by it, or of tasks it submitted), nested in its
return value: they must outlive the task (its owner becomes their borrower before the
worker's own refs to them are dropped)."""

from __future__ import annotations

import gc

from shoal.sim import Simulation, api

import shoal


def test_refs_a_task_owns_survive_being_returned() -> None:
    def main() -> list[int]:
        @shoal.remote
        def square(x: int) -> int:
            return x * x

        @shoal.remote
        def box(i: int) -> list[object]:
            return [shoal.put(i), square.remote(i)]

        out = []
        for i in range(3):
            ref = box.remote(i)
            put_ref, task_ref = shoal.get(ref)
            del ref
            gc.collect()
            api.sleep(1.0)  # the returned list is freed: its nested refs must not be
            out += [shoal.get(put_ref), shoal.get(task_ref)]
        return out

    for seed, faults in [(1, "none"), (2, "lossy")]:
        result = Simulation(seed=seed, nodes=2, faults=faults).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        assert result.value == [0, 0, 1, 1, 2, 4], f"seed {seed}"


def test_refs_an_actor_method_owns_survive_being_returned() -> None:
    def main() -> list[int]:
        @shoal.remote
        def square(x: int) -> int:
            return x * x

        @shoal.remote
        class Boxer:
            def box(self, i: int) -> list[object]:
                return [shoal.put(i), square.remote(i)]

        @shoal.remote
        class AsyncBoxer:
            async def box(self, i: int) -> list[object]:
                return [shoal.put(i), square.remote(i)]

        out = []
        for actor in (Boxer.remote(), AsyncBoxer.remote()):
            for i in range(3):
                ref = actor.box.remote(i)
                put_ref, task_ref = shoal.get(ref)
                del ref
                gc.collect()
                api.sleep(1.0)  # the returned list is freed: its nested refs must not be
                out += [shoal.get(put_ref), shoal.get(task_ref)]
        return out

    for seed, faults in [(1, "none"), (2, "lossy")]:
        result = Simulation(seed=seed, nodes=2, faults=faults).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        assert result.value == [0, 0, 1, 1, 2, 4] * 2, f"seed {seed}"
