"""Async actors and awaitable refs through the public API, run in the simulator.

Each program runs in ``Simulation(...).run(main)``: the async actor's calls are
asyncio tasks on a loop on virtual time, so concurrency is observed (a peak of
calls inside the actor), never timed.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import pytest
from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.ids import ObjectId
from shoal.kernel.task_spec import ObjectRefInfo
from shoal.runtime.api.actor import is_async_class
from shoal.runtime.api.context import bind_thread_context
from shoal.runtime.api.executor import current_task_spec
from shoal.runtime.api.object_ref import ObjectRef
from shoal.runtime.api.options import ASYNC_ACTOR_MAX_CONCURRENCY, resolve_actor_options
from shoal.runtime.api.serialization import serialize
from shoal.sim import Simulation, api

import shoal
from shoal import exceptions

from .conftest import FakeContext


def _run(main: Any, seed: int = 1, faults: str = "none") -> Any:
    result = Simulation(seed=seed, nodes=2, faults=faults).run(main)
    assert not result.violations, result.violations
    return result.value


class Gauge:
    """Counts calls inside an actor at once and the most seen."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        self.now -= 1


# --- detection and options ------------------------------------------------------------


def test_a_class_with_an_async_method_is_an_async_actor() -> None:
    class Plain:
        def f(self) -> None: ...

    class Aio:
        def f(self) -> None: ...

        async def g(self) -> None: ...

    assert not is_async_class(Plain) and is_async_class(Aio)
    assert resolve_actor_options({}).max_concurrency == 1
    assert resolve_actor_options({}, is_async=True).max_concurrency == 1000
    assert ASYNC_ACTOR_MAX_CONCURRENCY == 1000
    assert resolve_actor_options({"max_concurrency": 4}, is_async=True).max_concurrency == 4


# --- concurrency and ordering ---------------------------------------------------------


def test_async_calls_interleave_at_their_awaits_up_to_the_default_limit() -> None:
    def main() -> tuple[int, list[int]]:
        @shoal.remote
        class Sleeper:
            def __init__(self) -> None:
                self.gauge = Gauge()

            async def nap(self, i: int) -> int:
                self.gauge.enter()
                await asyncio.sleep(1.0)  # virtual time
                self.gauge.leave()
                return i

            def peak(self) -> int:
                return self.gauge.peak

        sleeper = Sleeper.remote()
        values = shoal.get([sleeper.nap.remote(i) for i in range(60)])
        return shoal.get(sleeper.peak.remote()), values

    peak, values = _run(main)
    assert values == list(range(60))
    assert peak == 60  # all 60 were suspended in their sleep at once


def test_max_concurrency_bounds_an_async_actor() -> None:
    def main() -> int:
        @shoal.remote(max_concurrency=3)
        class Sleeper:
            def __init__(self) -> None:
                self.gauge = Gauge()

            async def nap(self) -> None:
                self.gauge.enter()
                await asyncio.sleep(0.5)
                self.gauge.leave()

            def peak(self) -> int:
                return self.gauge.peak

        sleeper = Sleeper.remote()
        shoal.get([sleeper.nap.remote() for _ in range(10)])
        return shoal.get(sleeper.peak.remote())

    assert _run(main) == 3


def test_calls_from_one_caller_start_in_submission_order() -> None:
    def main() -> list[int]:
        @shoal.remote
        class Log:
            def __init__(self) -> None:
                self.started: list[int] = []

            async def add(self, i: int) -> None:
                self.started.append(i)
                await asyncio.sleep(0.01 * (i % 3))  # they finish out of order

            def read(self) -> list[int]:
                return self.started

        log = Log.remote()
        shoal.get([log.add.remote(i) for i in range(30)])
        return shoal.get(log.read.remote())

    for seed in range(3):
        assert _run(main, seed=seed, faults="lossy") == list(range(30)), f"seed {seed}"


def test_calls_coordinate_through_asyncio_primitives_on_the_shared_loop() -> None:
    def main() -> list[str]:
        @shoal.remote
        class Gate:
            def __init__(self) -> None:
                self.opened: asyncio.Event | None = None
                self.events: list[str] = []

            def _event(self) -> asyncio.Event:
                if self.opened is None:
                    self.opened = asyncio.Event()
                return self.opened

            async def wait(self) -> str:
                self.events.append("waiting")
                await self._event().wait()
                self.events.append("released")
                return "through"

            async def open(self) -> None:
                self.events.append("open")
                self._event().set()

            def log(self) -> list[str]:
                return self.events

        gate = Gate.remote()
        waiting = gate.wait.remote()
        shoal.get(gate.open.remote())
        assert shoal.get(waiting) == "through"
        return shoal.get(gate.log.remote())

    assert _run(main) == ["waiting", "open", "released"]


def test_sync_methods_of_an_async_actor_run_on_the_loop_thread() -> None:
    def main() -> tuple[int, int]:
        @shoal.remote
        class Mixed:
            async def where_async(self) -> int:
                asyncio.get_running_loop()  # raises off the loop
                return threading.get_ident()

            def where_sync(self) -> int:
                asyncio.get_running_loop()
                return threading.get_ident()

        mixed = Mixed.remote()
        return shoal.get(mixed.where_async.remote()), shoal.get(mixed.where_sync.remote())

    on_async, on_sync = _run(main)
    assert on_async == on_sync


# --- awaiting refs ----------------------------------------------------------------------


def test_a_method_awaits_task_refs_one_by_one_and_gathered() -> None:
    def main() -> tuple[int, list[int]]:
        @shoal.remote
        def square(x: int) -> int:
            api.sleep(0.1)
            return x * x

        @shoal.remote
        class Summer:
            async def total(self, refs: list[Any]) -> tuple[int, list[int]]:
                first = await refs[0]
                return first, list(await asyncio.gather(*refs))

        summer = Summer.remote()
        return shoal.get(summer.total.remote([square.remote(i) for i in range(6)]))

    assert _run(main) == (0, [0, 1, 4, 9, 16, 25])


def test_an_await_lets_other_calls_run_until_the_object_is_ready() -> None:
    def main() -> list[str]:
        @shoal.remote
        def slow() -> str:
            api.sleep(2.0)
            return "slow"

        @shoal.remote
        class Actor:
            def __init__(self) -> None:
                self.events: list[str] = []

            async def wait_for(self, refs: list[Any]) -> None:
                self.events.append("awaiting")
                self.events.append(await refs[0])

            async def ping(self) -> None:
                self.events.append("ping")

            def log(self) -> list[str]:
                return self.events

        actor = Actor.remote()
        waiting = actor.wait_for.remote([slow.remote()])
        shoal.get([actor.ping.remote() for _ in range(2)])
        shoal.get(waiting)
        return shoal.get(actor.log.remote())

    assert _run(main) == ["awaiting", "ping", "ping", "slow"]


def test_awaiting_a_failed_task_raises_its_error_in_the_method() -> None:
    def main() -> str:
        @shoal.remote(max_retries=0)
        def boom() -> None:
            raise KeyError("missing")

        @shoal.remote
        class Catcher:
            async def catch(self, refs: list[Any]) -> str:
                try:
                    await refs[0]
                except KeyError as exc:  # the task's own exception type, as with get
                    return f"caught {isinstance(exc, exceptions.RayTaskError)}"
                return "not raised"

        return shoal.get(Catcher.remote().catch.remote([boom.remote()]))

    assert _run(main) == "caught True"


def test_a_driver_awaits_refs_in_asyncio_run_and_reads_futures() -> None:
    def main() -> tuple[int, list[int], int, str]:
        @shoal.remote
        def square(x: int) -> int:
            return x * x

        @shoal.remote(max_retries=0)
        def boom() -> None:
            raise ValueError("bad")

        async def driver() -> tuple[int, list[int]]:
            return await square.remote(3), list(await asyncio.gather(
                square.remote(4), square.remote(5)))

        one, many = asyncio.run(driver())
        future = square.remote(6).future()
        try:
            boom.remote().future().result()
            failed = "no error"
        except ValueError as exc:
            failed = str(exc)
        return one, many, future.result(), failed

    one, many, from_future, failed = _run(main)
    assert (one, many, from_future) == (9, [16, 25], 36)
    assert "bad" in failed


def test_an_async_method_may_block_on_or_await_a_ref_future() -> None:
    def main() -> tuple[int, int]:
        @shoal.remote
        def square(x: int) -> int:
            api.sleep(0.5)
            return x * x

        @shoal.remote
        class Actor:
            async def blocking(self, refs: list[Any]) -> int:
                return int(refs[0].future().result())  # blocks the loop, as in Ray

            async def wrapped(self, refs: list[Any]) -> int:
                return int(await asyncio.wrap_future(refs[0].future()))

        actor = Actor.remote()
        return (shoal.get(actor.blocking.remote([square.remote(3)])),
                shoal.get(actor.wrapped.remote([square.remote(4)])))

    assert _run(main) == (9, 16)


# --- results, errors, identity -----------------------------------------------------------


def test_errors_returns_and_task_ids_of_async_calls() -> None:
    def main() -> dict[str, Any]:
        @shoal.remote
        class Actor:
            async def pair(self) -> tuple[int, int]:
                await asyncio.sleep(0)
                return 1, 2

            async def fail(self) -> None:
                await asyncio.sleep(0)
                raise ZeroDivisionError("nope")

            async def cancelled(self) -> None:
                raise asyncio.CancelledError()

            async def my_task_id(self, pause_s: float) -> tuple[str | None, str | None]:
                before = shoal.get_runtime_context().get_task_id()
                await asyncio.sleep(pause_s)  # other calls run meanwhile
                spec = current_task_spec()
                return before, spec.task_id if spec is not None else None

        actor = Actor.remote()
        out: dict[str, Any] = {"pair": shoal.get(actor.pair.options(num_returns=2).remote())}
        try:
            shoal.get(actor.fail.remote())
        except ZeroDivisionError as exc:
            out["fail"] = isinstance(exc, exceptions.RayTaskError)
        try:
            shoal.get(actor.cancelled.remote())
        except exceptions.TaskCancelledError:
            out["cancelled"] = True
        refs = [actor.my_task_id.remote(0.1 * (3 - i)) for i in range(3)]
        out["ids"] = [(ref.task_id(), shoal.get(ref)) for ref in refs]
        return out

    out = _run(main)
    assert out["pair"] == [1, 2]
    assert out["fail"] is True and out["cancelled"] is True
    for task_id, (before, after) in out["ids"]:
        assert before == after == task_id


def test_a_ref_kept_by_an_async_actor_stays_readable() -> None:
    def main() -> int:
        @shoal.remote
        class Keeper:
            def __init__(self) -> None:
                self.kept: Any = None

            async def keep(self, refs: list[Any]) -> None:
                self.kept = refs[0]  # borrowed: the owner must keep the object

            async def read(self) -> int:
                return int(await self.kept)

        keeper = Keeper.remote()
        ref = shoal.put(41)
        shoal.get(keeper.keep.remote([ref]))
        del ref
        api.sleep(1.0)
        return shoal.get(keeper.read.remote()) + 1

    assert _run(main) == 42


def test_the_same_seed_replays_an_async_program_exactly() -> None:
    def main() -> list[int]:
        @shoal.remote
        class Sleeper:
            def __init__(self) -> None:
                self.order: list[int] = []

            async def nap(self, i: int) -> None:
                await asyncio.sleep(0.01 * ((i * 7) % 5))
                self.order.append(i)

            def read(self) -> list[int]:
                return self.order

        sleeper = Sleeper.remote()
        shoal.get([sleeper.nap.remote(i) for i in range(20)])
        return shoal.get(sleeper.read.remote())

    runs = [Simulation(seed=5, nodes=3, faults="chaos").run(main) for _ in range(2)]
    assert runs[0].trace_hash == runs[1].trace_hash
    assert runs[0].value == runs[1].value and sorted(runs[0].value) == list(range(20))


# --- ref.future() reads its value in the consumer's thread --------------------------------


class _AwaitingContext(FakeContext):
    """A FakeContext with the ``get_objects_future`` hook, answered by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Future[Any]] = []
        self.reader_threads: list[int] = []

    def get_objects_future(self, refs: list[ObjectRefInfo], timeout_s: float | None,
                           ) -> Future[Any]:
        future: Future[Any] = Future()
        self.asked.append(future)
        self.answers = refs
        return future

    def answer(self, value: Any) -> None:
        info = self.answers[0]

        def read() -> list[ObjectResult]:
            self.reader_threads.append(threading.get_ident())
            return [ObjectResult(object_id=info.object_id, value=serialize(value))]

        self.asked.pop().set_result(read)


def test_ref_future_reads_the_value_once_in_the_consumers_thread() -> None:
    fake = _AwaitingContext()
    previous = bind_thread_context(fake)
    try:
        ref = ObjectRef(ObjectId("obj1"), fake.address)
        future = ref.future()
        assert not future.done()
        answering = threading.Thread(target=fake.answer, args=({"x": 1},))  # the "host loop"
        answering.start()
        answering.join()
        assert future.done() and fake.reader_threads == []  # nothing read in that thread
        assert future.result() == {"x": 1} and future.result() == {"x": 1}
        assert fake.reader_threads == [threading.get_ident()]  # read once, here
        assert future.exception() is None
    finally:
        bind_thread_context(previous)


def test_await_ref_waits_on_the_event_loop_without_blocking_it() -> None:
    fake = _AwaitingContext()

    async def scenario() -> tuple[int, list[str]]:
        bind_thread_context(fake)  # this task's context only
        ref = ObjectRef(ObjectId("obj2"), fake.address)
        steps: list[str] = []

        async def other() -> None:
            steps.append("other ran")
            threading.Thread(target=fake.answer, args=(7,)).start()

        waiting = asyncio.ensure_future(_await(ref))
        await asyncio.sleep(0)  # the await is pending; the loop runs on
        await other()
        return await waiting, steps

    async def _await(ref: ObjectRef) -> int:
        return int(await ref)

    value, steps = asyncio.run(scenario())
    assert value == 7 and steps == ["other ran"]


def test_a_host_without_the_hook_says_so() -> None:
    previous = bind_thread_context(FakeContext())
    try:
        with pytest.raises(NotImplementedError, match="cannot await object refs yet"):
            ObjectRef(ObjectId("obj3"), FakeContext().address).future()
    finally:
        bind_thread_context(previous)
