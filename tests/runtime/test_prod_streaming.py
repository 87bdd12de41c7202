"""Streaming generator tasks (issue 5) on the production host: a real local cluster.

One local cluster serves the module (its teardown checks that nothing is left:
no process it spawned, no session directory, no ``/dev/shm`` file).
"""

from __future__ import annotations

import asyncio
import gc
import glob
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import psutil
import pytest
from shoal.runtime.api.context import get_context

import shoal
from shoal import exceptions

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT_BOUND_S = 20.0  # a bound on waiting for a file or a release, not a timing assertion


def _session_dir() -> str:
    return os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]


def _our_processes(besides: set[int] | None = None) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in (besides or ())]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    before = {p.pid for p in _our_processes()}
    shoal.init(num_cpus=2, namespace="prod-streaming")
    session_dir = _session_dir()
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


def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + WAIT_BOUND_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


@shoal.remote
def gated(gate: str) -> Iterator[int]:
    yield 0
    _wait_for_file(gate)  # the caller opens the gate only after it got item 0
    yield 1
    yield 2


def test_items_arrive_while_the_task_still_runs(cluster: None, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    gen = gated.remote(gate)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    assert shoal.get(next(gen)) == 0
    ready, _ = shoal.wait([gen.completed()], timeout=0)
    assert ready == [], "the task waits for the gate: it cannot have finished"
    Path(gate).touch()
    assert [shoal.get(ref) for ref in gen] == [1, 2]
    assert shoal.get(gen.completed()) is None


@shoal.remote(num_returns="streaming", max_retries=0)
def two_then_boom() -> Iterator[int]:
    yield 1
    yield 2
    raise KeyError("boom")


def test_error_after_two_items(cluster: None) -> None:
    refs = list(two_then_boom.remote())
    assert len(refs) == 3
    assert shoal.get(refs[:2]) == [1, 2]
    with pytest.raises(KeyError, match="boom"):
        shoal.get(refs[2])


@shoal.remote
def big_arrays(count: int) -> Iterator[np.ndarray]:
    for i in range(count):
        yield np.full(1 << 18, i, dtype=np.float32)  # 1 MiB each: through the object store


def test_large_numpy_items(cluster: None) -> None:
    for i, ref in enumerate(big_arrays.remote(4)):
        array = shoal.get(ref)
        assert array.nbytes == 1 << 20 and float(array[0]) == i and float(array[-1]) == i


@shoal.remote(max_retries=1)
def pid_then_numbers(marker: str) -> Iterator[int]:
    yield os.getpid()
    for i in range(1, 6):
        if i == 2 and not os.path.exists(marker):
            time.sleep(WAIT_BOUND_S)  # the first attempt is killed here
        yield i


def test_worker_killed_mid_stream_is_retried_without_duplicates(
        cluster: None, tmp_path: Path) -> None:
    marker = str(tmp_path / "killed")
    gen = pid_then_numbers.remote(marker)
    pid = shoal.get(next(gen))
    assert shoal.get(next(gen)) == 1
    Path(marker).touch()  # the retry runs straight through
    os.kill(pid, signal.SIGKILL)
    assert [shoal.get(ref) for ref in gen] == [2, 3, 4, 5]


@shoal.remote
def numbers(count: int) -> Iterator[int]:
    yield from range(count)


def test_async_for(cluster: None) -> None:
    async def consume() -> list[int]:
        return [await ref async for ref in numbers.remote(5)]

    assert asyncio.run(consume()) == [0, 1, 2, 3, 4]


def _owned_ids() -> list[str]:
    runtime = get_context()._runtime  # type: ignore[attr-defined]
    return runtime.run_in_loop(lambda: list(runtime.kernel.objects.owned_ids()))


def test_dropped_generator_releases_its_items(cluster: None) -> None:
    gen = numbers.remote(50)
    assert shoal.get(next(gen)) == 0
    shoal.get(gen.completed())  # the task ended: 49 items wait unconsumed
    task_id = gen.task_id()
    del gen
    gc.collect()
    deadline = time.monotonic() + WAIT_BOUND_S
    while any(oid.startswith(f"{task_id}.r") for oid in _owned_ids()):
        assert time.monotonic() < deadline, f"items kept: {_owned_ids()}"
        get_context().flush_refs()  # type: ignore[attr-defined]
        time.sleep(0.05)


def test_consumer_timeout(cluster: None, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    gen = gated.remote(gate)
    assert shoal.get(next(gen)) == 0
    with pytest.raises(exceptions.GetTimeoutError):
        gen._next_sync(timeout_s=0.2)
    Path(gate).touch()
    assert [shoal.get(ref) for ref in gen] == [1, 2]


@shoal.remote
class Producer:
    def numbers(self, count: int) -> Iterator[int]:
        yield from range(count)

    def arrays(self, count: int) -> Iterator[np.ndarray]:
        for i in range(count):
            yield np.full(1 << 18, i, dtype=np.float32)


def test_actor_generator_methods_stream(cluster: None) -> None:
    producer = Producer.remote()
    assert [shoal.get(ref) for ref in producer.numbers.remote(4)] == [0, 1, 2, 3]
    assert [float(shoal.get(ref)[7]) for ref in producer.arrays.remote(3)] == [0.0, 1.0, 2.0]
    shoal.kill(producer)


@shoal.remote
def boxed_puts(count: int) -> Iterator[list[object]]:
    for i in range(count):
        yield [shoal.put(i)]  # a ref this worker owns, nested in the item


def test_items_holding_refs_keep_them_alive(cluster: None) -> None:
    inner = []
    for ref in boxed_puts.remote(3):
        inner += shoal.get(ref)
        del ref
    gc.collect()
    assert shoal.get(inner) == [0, 1, 2]


@shoal.remote
def boxed_put(i: int) -> list[object]:
    return [shoal.put(i)]  # not a generator: a plain task returning a ref it owns


def test_a_task_returning_a_ref_it_owns(cluster: None) -> None:
    inner = []
    for i in range(3):
        ref = boxed_put.remote(i)
        inner += shoal.get(ref)
        del ref
    gc.collect()
    assert shoal.get(inner) == [0, 1, 2]
