"""Async actors and awaitable refs on the production host: real daemon, workers, sockets.

One local cluster serves the module; its teardown checks that nothing is left
(no process it spawned, no session directory, no ``/dev/shm`` file).
Concurrency is observed inside the actor (the most calls seen at once), never
timed.
"""

from __future__ import annotations

import asyncio
import glob
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import cloudpickle
import numpy as np
import psutil
import pytest
from shoal.runtime.api.context import get_context

import shoal
from shoal import exceptions

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

GET_TIMEOUT_S = 30.0  # a bound on a hang, not a timing assertion


def _our_processes(besides: set[int] | None = None) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in (besides or ())]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One 2-CPU local cluster for the module, checked clean at the end."""
    before = {p.pid for p in _our_processes()}
    shoal.init(num_cpus=2)
    session_dir = os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        spawned = _our_processes(before)
        shoal.shutdown()
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"
        name = os.path.basename(os.path.normpath(session_dir))
        assert not glob.glob(f"/dev/shm/shoal-{glob.escape(name)}*"), "shm files left behind"


@shoal.remote
def square(x: int) -> int:
    return x * x


@shoal.remote
def big(n: int) -> Any:
    return np.arange(n, dtype=np.int64)  # above the inline limit: in the node's store


@shoal.remote(max_retries=0)
def boom() -> None:
    raise KeyError("missing")


@shoal.remote
class Sleeper:
    """Each call sleeps on the actor's event loop; the gauge sees how many overlap."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.threads: set[int] = set()

    async def nap(self, i: int, pause_s: float) -> tuple[int, str | None]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        self.threads.add(threading.get_ident())
        try:
            await asyncio.sleep(pause_s)
        finally:
            self.now -= 1
        return i, shoal.get_runtime_context().get_task_id()

    def stats(self) -> tuple[int, int]:
        self.threads.add(threading.get_ident())  # a sync method: on the loop thread too
        return self.peak, len(self.threads)


@shoal.remote
class Awaiter:
    """Awaits refs of tasks inside its methods."""

    async def total(self, refs: list[Any]) -> int:
        return sum(await asyncio.gather(*refs))

    async def length(self, refs: list[Any]) -> int:
        array = await refs[0]
        return int(array.sum())

    async def catch(self, refs: list[Any]) -> str:
        try:
            await refs[0]
        except KeyError as exc:
            return f"caught {isinstance(exc, exceptions.RayTaskError)}"
        return "not raised"

    async def fail(self) -> None:
        await asyncio.sleep(0)
        raise ZeroDivisionError("nope")


def test_a_hundred_sleeping_calls_overlap(cluster: None) -> None:
    sleeper = Sleeper.remote()
    refs = [sleeper.nap.remote(i, 0.05) for i in range(100)]
    results = shoal.get(refs, timeout=GET_TIMEOUT_S)
    assert [i for i, _ in results] == list(range(100))
    assert [task_id for _, task_id in results] == [str(ref.task_id()) for ref in refs]
    peak, threads = shoal.get(sleeper.stats.remote(), timeout=GET_TIMEOUT_S)
    assert peak > 10, f"the calls did not overlap (at most {peak} at once)"
    assert threads == 1  # one event loop thread runs every call, sync methods included


def test_max_concurrency_bounds_the_overlap(cluster: None) -> None:
    sleeper = Sleeper.options(max_concurrency=4).remote()
    shoal.get([sleeper.nap.remote(i, 0.02) for i in range(20)], timeout=GET_TIMEOUT_S)
    peak, _ = shoal.get(sleeper.stats.remote(), timeout=GET_TIMEOUT_S)
    assert 1 < peak <= 4


def test_methods_await_task_refs(cluster: None) -> None:
    awaiter = Awaiter.remote()
    assert shoal.get(awaiter.total.remote([square.remote(i) for i in range(8)]),
                     timeout=GET_TIMEOUT_S) == sum(i * i for i in range(8))
    n = 100_000
    assert shoal.get(awaiter.length.remote([big.remote(n)]),
                     timeout=GET_TIMEOUT_S) == n * (n - 1) // 2
    assert shoal.get(awaiter.catch.remote([boom.remote()]),
                     timeout=GET_TIMEOUT_S) == "caught True"
    with pytest.raises(ZeroDivisionError, match="nope"):
        shoal.get(awaiter.fail.remote(), timeout=GET_TIMEOUT_S)


def test_an_asyncio_driver_awaits_refs(cluster: None) -> None:
    async def driver() -> tuple[int, list[int], int]:
        one = await square.remote(3)
        many = list(await asyncio.gather(*[square.remote(i) for i in range(5)]))
        sleeper = Sleeper.remote()
        naps = await asyncio.gather(*[sleeper.nap.remote(i, 0.01) for i in range(10)])
        return one, many, len(naps)

    assert asyncio.run(driver()) == (9, [0, 1, 4, 9, 16], 10)


def test_ref_future_result(cluster: None) -> None:
    assert square.remote(9).future().result(timeout=GET_TIMEOUT_S) == 81
    array = big.remote(50_000).future().result(timeout=GET_TIMEOUT_S)
    assert int(array[-1]) == 49_999
    with pytest.raises(KeyError):
        boom.remote().future().result(timeout=GET_TIMEOUT_S)


@shoal.remote
class Cancellable:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.log: list[str] = []

    async def nap(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(60.0)
        except asyncio.CancelledError:
            self.log.append("cancelled at the await")
            raise
        return "woke"

    async def wait_started(self) -> None:
        await self.started.wait()

    def read(self) -> list[str]:
        return self.log


def test_cancel_interrupts_a_running_async_call(cluster: None) -> None:
    actor = Cancellable.remote()
    ref = actor.nap.remote()
    shoal.get(actor.wait_started.remote(), timeout=GET_TIMEOUT_S)  # nap is running
    shoal.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        shoal.get(ref, timeout=GET_TIMEOUT_S)
    assert shoal.get(actor.read.remote(), timeout=GET_TIMEOUT_S) == ["cancelled at the await"]
