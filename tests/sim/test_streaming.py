"""Streaming generator tasks (issue 5) end to end in the simulator, through the public API."""

from __future__ import annotations

import asyncio
import gc

import pytest
from shoal.runtime.api.context import get_context
from shoal.sim import Simulation, api

import shoal
from shoal import exceptions


def _owned_ids() -> list[str]:
    """The objects the calling (driver) process owns, straight from its core worker."""
    ctx = get_context()
    core = ctx.host.kernel(ctx.address)  # type: ignore[attr-defined]
    return list(core.objects.owned_ids())


def test_items_reach_the_caller_before_the_task_finishes() -> None:
    def main() -> tuple[int, bool, list[int]]:
        @shoal.remote
        class Flag:
            def __init__(self) -> None:
                self.value = False

            def set(self) -> None:
                self.value = True

            def get(self) -> bool:
                return self.value

        @shoal.remote
        def numbers(flag: object) -> object:
            yield 0
            while not shoal.get(flag.get.remote()):  # type: ignore[attr-defined]
                api.sleep(0.1)  # blocked until the caller saw item 0
            yield 1
            yield 2

        flag = Flag.remote()
        gen = numbers.remote(flag)
        assert isinstance(gen, shoal.ObjectRefGenerator)
        first = shoal.get(next(gen))
        ready, _ = shoal.wait([gen.completed()], timeout=0)
        still_running = not ready
        flag.set.remote()
        rest = [shoal.get(ref) for ref in gen]
        return first, still_running, rest

    result = Simulation(seed=1, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == (0, True, [1, 2])


def test_error_after_k_items_is_raised_by_item_k_then_the_stream_stops() -> None:
    def main() -> tuple[list[int], str, bool]:
        @shoal.remote(num_returns="streaming")
        def two_then_boom() -> object:
            yield 10
            yield 11
            raise ValueError("boom")

        gen = two_then_boom.remote()
        values = [shoal.get(next(gen)), shoal.get(next(gen))]
        failing = next(gen)
        try:
            shoal.get(failing)
            message = "no error"
        except ValueError as error:  # the RayTaskError is also the user's class
            assert isinstance(error, exceptions.RayTaskError)
            message = str(error)
        try:
            next(gen)
            stopped = False
        except StopIteration:
            stopped = True
        return values, message, stopped

    result = Simulation(seed=2, nodes=2).run(main)
    assert not result.violations, result.violations
    values, message, stopped = result.value
    assert values == [10, 11] and "boom" in message and stopped


def test_worker_crash_mid_stream_retries_without_duplicates() -> None:
    def main() -> list[int]:
        @shoal.remote(max_retries=2)
        def slow_numbers() -> object:
            for i in range(6):
                api.sleep(0.5)
                yield i

        gen = slow_numbers.remote()
        seen = [shoal.get(next(gen)), shoal.get(next(gen))]
        assert api.kill_worker_running(gen.completed())
        seen += [shoal.get(ref) for ref in gen]
        return seen

    result = Simulation(seed=3, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == [0, 1, 2, 3, 4, 5]


def test_crash_with_no_retries_left_ends_the_stream_with_the_crash() -> None:
    def main() -> tuple[list[int], str]:
        @shoal.remote(max_retries=0)
        def numbers() -> object:
            for i in range(100):
                api.sleep(0.5)
                yield i

        gen = numbers.remote()
        seen = [shoal.get(next(gen))]
        assert api.kill_worker_running(gen.completed())
        refs = list(gen)
        try:
            for ref in refs:
                seen.append(shoal.get(ref))
        except exceptions.WorkerCrashedError:
            return seen, "crashed"
        return seen, "no error"

    result = Simulation(seed=4, nodes=2).run(main)
    assert not result.violations, result.violations
    seen, outcome = result.value
    assert outcome == "crashed" and seen == list(range(len(seen))) and seen[0] == 0


def test_dropped_generator_leaks_no_item() -> None:
    def main() -> tuple[int, list[str]]:
        @shoal.remote
        def numbers() -> object:
            yield from range(5)

        gen = numbers.remote()
        first = shoal.get(next(gen))
        completed = gen.completed()
        shoal.get(completed)  # the task ended; items 1..4 are waiting, unconsumed
        del gen, completed
        gc.collect()
        api.sleep(1.0)  # the releases reach the core worker
        return first, _owned_ids()

    result = Simulation(seed=5, nodes=2).run(main)
    assert not result.violations, result.violations
    first, owned = result.value
    assert first == 0 and owned == [], f"leaked: {owned}"


def test_large_items_go_through_the_object_store() -> None:
    def main() -> list[int]:
        @shoal.remote
        def big() -> object:
            for i in range(3):
                yield bytes([i]) * 300_000

        return [len(set(shoal.get(ref))) * shoal.get(ref)[0] for ref in big.remote()]

    result = Simulation(seed=6, nodes=2).run(main)
    assert not result.violations, result.violations
    assert result.value == [0, 1, 2]


def test_async_for_and_a_non_generator_streaming_function() -> None:
    def main() -> tuple[list[int], str]:
        @shoal.remote
        def numbers(n: int) -> object:
            yield from range(n)

        @shoal.remote(num_returns="streaming")
        def not_a_generator() -> int:
            return 1

        async def consume() -> list[int]:
            return [shoal.get(ref) async for ref in numbers.remote(4)]

        values = asyncio.run(consume())
        try:
            shoal.get(next(not_a_generator.remote()))
            message = "no error"
        except TypeError as error:
            message = str(error)
        return values, message

    result = Simulation(seed=7, nodes=2).run(main)
    assert not result.violations, result.violations
    values, message = result.value
    assert values == [0, 1, 2, 3] and "not a generator" in message


def test_integer_num_returns_keeps_the_old_meaning_for_generators() -> None:
    def main() -> list[int]:
        @shoal.remote(num_returns=2)
        def pair() -> object:
            yield 1
            yield 2

        return shoal.get(pair.remote())

    assert Simulation(seed=8, nodes=1).run(main).value == [1, 2]


@pytest.mark.parametrize("profile", ["lossy", "chaos"])
def test_streams_under_faults(profile: str) -> None:
    def main() -> list[list[int]]:
        @shoal.remote(max_retries=-1)
        def numbers(n: int) -> object:
            for i in range(n):
                api.sleep(0.05)
                yield i * i

        gens = [numbers.remote(n) for n in (3, 5, 8)]
        return [[shoal.get(ref) for ref in gen] for gen in gens]

    for seed in range(6):
        result = Simulation(seed=seed, nodes=3, faults=profile).run(main)
        assert not result.violations, f"seed {seed}: {result.violations}"
        assert result.value == [[i * i for i in range(n)] for n in (3, 5, 8)], f"seed {seed}"


def test_a_generator_cannot_be_pickled_or_iterated_twice_at_once() -> None:
    def main() -> str:
        import pickle

        @shoal.remote
        def one() -> object:
            yield 1

        gen = one.remote()
        try:
            pickle.dumps(gen)
        except TypeError as error:
            return str(error)
        return "pickled"

    assert "cannot be pickled" in Simulation(seed=9, nodes=1).run(main).value


def test_cancel_a_generator_ends_its_stream_with_the_cancel() -> None:
    def main() -> tuple[list[int], str]:
        @shoal.remote
        def endless() -> object:
            i = 0
            while True:
                api.sleep(0.2)
                yield i
                i += 1

        gen = endless.remote()
        seen = [shoal.get(next(gen)), shoal.get(next(gen))]
        shoal.cancel(gen)
        try:
            for ref in gen:
                seen.append(shoal.get(ref))
        except exceptions.TaskCancelledError:
            return seen, "cancelled"
        return seen, "not cancelled"

    result = Simulation(seed=10, nodes=2).run(main)
    assert not result.violations, result.violations
    seen, outcome = result.value
    assert outcome == "cancelled" and seen == list(range(len(seen)))


def test_actor_generator_methods_stream() -> None:
    def main() -> tuple[list[int], list[int], list[int], str]:
        @shoal.remote
        class Source:
            def __init__(self) -> None:
                self.calls = 0

            def numbers(self, n: int) -> object:
                self.calls += 1
                for i in range(n):
                    api.sleep(0.1)
                    yield i + 100 * self.calls

            @shoal.method(num_returns=2)
            def pair(self) -> object:
                yield 1
                yield 2

            def failing(self) -> object:
                yield 7
                raise RuntimeError("actor boom")

        source = Source.remote()
        first = [shoal.get(ref) for ref in source.numbers.remote(3)]
        second = [shoal.get(ref) for ref in source.numbers.remote(2)]
        pair = shoal.get(source.pair.remote())
        refs = list(source.failing.remote())
        assert shoal.get(refs[0]) == 7
        try:
            shoal.get(refs[1])
            message = "no error"
        except RuntimeError as error:
            message = str(error)
        return first, second, pair, message

    result = Simulation(seed=11, nodes=2).run(main)
    assert not result.violations, result.violations
    first, second, pair, message = result.value
    assert first == [100, 101, 102] and second == [200, 201] and pair == [1, 2]
    assert "actor boom" in message


def test_async_actor_sync_generator_method_streams() -> None:
    def main() -> list[int]:
        @shoal.remote
        class Mixed:
            async def ping(self) -> str:
                return "pong"

            def numbers(self, n: int) -> object:
                yield from range(n)

        actor = Mixed.remote()
        assert shoal.get(actor.ping.remote()) == "pong"
        return [shoal.get(ref) for ref in actor.numbers.remote(3)]

    result = Simulation(seed=12, nodes=1).run(main)
    assert not result.violations, result.violations
    assert result.value == [0, 1, 2]


def test_a_consumer_cancelled_while_waiting_for_an_item_leaks_nothing() -> None:
    def main() -> tuple[str, list[str]]:
        @shoal.remote
        def slow(n: int) -> object:
            for i in range(n):
                api.sleep(1.0)
                yield i

        @shoal.remote
        def consumer() -> int:
            return sum(shoal.get(ref) for ref in slow.remote(5))

        ref = consumer.remote()
        api.sleep(1.5)  # the consumer waits in next() for item 1
        shoal.cancel(ref, recursive=False)  # its producer runs on, its item 1 comes later
        try:
            shoal.get(ref)
            outcome = "finished"
        except exceptions.TaskCancelledError:
            outcome = "cancelled"
        api.sleep(10.0)  # the producer ends; its stream is let go
        ctx = get_context()
        held = [f"{address}: {core.objects.owned_ids()}"
                for address, core in ctx.host.core_workers()  # type: ignore[attr-defined]
                if address.component == "worker" and len(core.objects)]
        return outcome, held

    result = Simulation(seed=13, nodes=2).run(main)
    assert not result.violations, result.violations
    outcome, held = result.value
    assert outcome == "cancelled" and held == [], held


def test_same_seed_same_trace_for_a_streaming_program() -> None:
    def main() -> list[int]:
        @shoal.remote
        def numbers(n: int) -> object:
            for i in range(n):
                api.sleep(0.05)
                yield i

        return [shoal.get(ref) for ref in numbers.remote(6)]

    runs = [Simulation(seed=14, nodes=3, faults="chaos").run(main) for _ in range(2)]
    assert runs[0].value == runs[1].value == list(range(6))
    assert runs[0].trace_hash == runs[1].trace_hash


def test_items_holding_refs_keep_them_alive() -> None:
    def main() -> tuple[list[int], list[str]]:
        @shoal.remote
        def square(x: int) -> int:
            return x * x

        @shoal.remote
        def boxes(n: int) -> object:
            for i in range(n):
                yield [shoal.put(i), square.remote(i)]  # refs this worker owns, nested

        values = []
        for ref in boxes.remote(3):
            put_ref, task_ref = shoal.get(ref)
            del ref
            gc.collect()
            api.sleep(1.0)  # the item itself may be gone: its nested refs must not be
            values += [shoal.get(put_ref), shoal.get(task_ref)]
        del put_ref, task_ref
        gc.collect()
        api.sleep(1.0)
        return values, _owned_ids()

    result = Simulation(seed=15, nodes=2, faults="lossy").run(main)
    assert not result.violations, result.violations
    values, owned = result.value
    assert values == [0, 0, 1, 1, 2, 4] and owned == [], owned
