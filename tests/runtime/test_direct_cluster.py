"""The production hot path on a real local cluster: direct links and the fast get/wait.

Asserted through introspection (the driver's link counters, the context's
fast-path counters, the kernel's object table), never through timings. Every
test checks that what it started is gone afterwards.
"""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import psutil
import pytest
from shoal.runtime.api.context import get_context

import shoal

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _session_dir() -> str:
    return os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]


def _links() -> Any:
    return get_context()._runtime.links  # type: ignore[attr-defined]


@pytest.fixture
def cluster() -> Iterator[str]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    shoal.init(num_cpus=2)
    session_dir = _session_dir()
    try:
        yield session_dir
    finally:
        spawned = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        shoal.shutdown()
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"
        name = os.path.basename(os.path.normpath(session_dir))
        assert not glob.glob(f"/dev/shm/shoal-{glob.escape(name)}*")


def test_tasks_go_straight_to_the_leased_workers(cluster: str) -> None:
    @shoal.remote
    def square(x: int) -> int:
        return x * x

    assert shoal.get([square.remote(i) for i in range(50)]) == [i * i for i in range(50)]
    stats = _links().stats
    assert stats.links_opened >= 1
    assert stats.sent_direct >= 50, stats  # one push per task at least
    assert stats.received_direct >= 50, stats  # one answer per task at least
    assert all(peer.component == "worker" for peer in _links().peers())
    assert glob.glob(os.path.join(cluster, "w-*.sock")), "workers listen in the session dir"


def test_gets_and_waits_of_values_here_skip_the_loop_and_keep_counts(cluster: str) -> None:
    @shoal.remote
    def echo(x: int) -> int:
        return x

    ctx = get_context()
    kernel = ctx._runtime.kernel  # type: ignore[attr-defined]
    refs = [echo.remote(i) for i in range(20)]
    assert shoal.get(refs) == list(range(20))
    fast = ctx.fast_gets  # type: ignore[attr-defined]
    assert shoal.get(refs) == list(range(20))
    assert shoal.get(refs[3]) == 3
    assert ctx.fast_gets == fast + 2  # type: ignore[attr-defined]
    ready, rest = shoal.wait(refs, num_returns=5)
    assert ready == refs[:5] and rest == refs[5:]
    assert ctx.fast_waits >= 1  # type: ignore[attr-defined]
    put = shoal.put({"a": 1})
    assert shoal.get(put) == {"a": 1} and shoal.get(put) == {"a": 1}
    ids = [r.object_id for r in refs] + [put.object_id]
    del refs, ready, rest, put
    deadline = time.monotonic() + 10
    while any(oid in kernel.objects for oid in ids) and time.monotonic() < deadline:
        time.sleep(0.05)  # the driver hands dropped refs over every 50 ms
    assert not [oid for oid in ids if oid in kernel.objects], "fast gets kept no object alive"


def test_a_worker_killed_on_its_link_is_retried(cluster: str, tmp_path: Any) -> None:
    @shoal.remote(max_retries=2)
    def first_attempt_hangs(marker_dir: str) -> int:
        first = not os.listdir(marker_dir)
        with open(os.path.join(marker_dir, str(os.getpid())), "w"):
            pass
        if first:
            time.sleep(60)
        return os.getpid()

    ref = first_attempt_hangs.remote(str(tmp_path))
    deadline = time.monotonic() + 20
    while not os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = int(os.listdir(tmp_path)[0])
    assert _links().stats.sent_direct >= 1, "the push went over a link"
    os.kill(victim, signal.SIGKILL)
    survivor = shoal.get(ref, timeout=30)
    assert survivor != victim
    deadline = time.monotonic() + 10
    while glob.glob(os.path.join(cluster, f"w-*{victim}*")) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_workers_whose_sockets_are_gone_are_reached_through_the_daemon(cluster: str) -> None:
    @shoal.remote
    def pid() -> int:
        return os.getpid()

    @shoal.remote
    def owner_of_a_child() -> int:  # a worker that owns a task links to the other worker
        return shoal.get(pid.remote(), timeout=20)

    shoal.get([pid.remote() for _ in range(4)])
    for path in glob.glob(os.path.join(cluster, "w-*.sock")):
        os.unlink(path)  # no new link can be opened to these workers; open links still work
    assert len(shoal.get([pid.remote() for _ in range(20)])) == 20
    assert shoal.get([owner_of_a_child.remote() for _ in range(3)], timeout=30)


def test_many_user_threads_submitting_at_once_lose_nothing(cluster: str) -> None:
    """Kernel rounds run in whichever thread holds the loop's lock (user threads, link
    reader threads, trio): threads racing to submit, get and call actors still get
    every answer, in order, and the inline path is actually taken."""
    import threading

    @shoal.remote
    def add(x: int, y: int) -> int:
        return x + y

    @shoal.remote
    def nested(x: int) -> int:
        return shoal.get(add.remote(x, 1)) * 2  # a get inside a task (a task thread)

    @shoal.remote
    class Counter:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def record(self, value: int) -> int:
            self.calls.append(value)
            return len(self.calls)

        def history(self) -> list[int]:
            return self.calls

    counters = [Counter.remote() for _ in range(2)]
    failures: list[BaseException] = []

    def client(index: int) -> None:
        try:
            counter = counters[index % 2]
            base = index * 1000
            refs = [add.remote(base, i) for i in range(150)]
            assert shoal.get(refs) == [base + i for i in range(150)]
            assert [shoal.get(add.remote(i, base)) for i in range(30)] == [
                base + i for i in range(30)]
            assert shoal.get([nested.remote(base + i) for i in range(10)]) == [
                (base + i + 1) * 2 for i in range(10)]
            shoal.get([counter.record.remote(base + i) for i in range(100)])
            ready, _ = shoal.wait([add.remote(base, 0) for _ in range(20)], num_returns=20)
            assert len(ready) == 20
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not failures, failures
    for index in range(2):
        history = shoal.get(counters[index].history.remote())
        assert len(history) == 200
        for client_index in (index, index + 2):  # each client's calls ran in its order
            mine = [v for v in history if v // 1000 == client_index]
            assert mine == sorted(mine) and len(mine) == 100
    assert get_context()._runtime.loop.inline_rounds > 0  # type: ignore[attr-defined]
