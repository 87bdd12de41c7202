"""Cancel (recursive, actor calls) and actor retries on exceptions on the production host.

Real node daemon and worker processes; one 2-CPU local cluster for the module, checked
clean at the end (no process it spawned left, no session directory).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import psutil
import pytest
from shoal.runtime.api.context import get_context

import shoal
from shoal import exceptions

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    shoal.init(num_cpus=2, namespace="prod-cancel")
    session_dir = os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        spawned = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        shoal.shutdown()
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"


@shoal.remote(num_cpus=0)
class Marks:
    def __init__(self) -> None:
        self.marks: list[str] = []

    def mark(self, what: str) -> None:
        self.marks.append(what)

    def read(self) -> list[str]:
        return list(self.marks)


@shoal.remote(max_retries=0)
def grandchild(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@shoal.remote(max_retries=0)
def child(marks: Any, seconds: float) -> None:
    shoal.get(grandchild.remote(seconds))  # blocked here (its CPU lent) when cancelled
    shoal.get(marks.mark.remote("child"))


@shoal.remote(max_retries=0)
def parent(marks: Any, seconds: float) -> None:
    shoal.get(child.remote(marks, seconds))


def _cancel_parent(recursive: bool) -> list[str]:
    marks = Marks.remote()
    ref = parent.remote(marks, 2.0)
    time.sleep(1.0)  # parent and child are blocked in get, the grandchild sleeps
    shoal.cancel(ref, recursive=recursive)
    with pytest.raises(exceptions.TaskCancelledError):
        shoal.get(ref, timeout=20)
    time.sleep(3.0)  # past the grandchild's end, when the child would mark
    return shoal.get(marks.read.remote(), timeout=20)  # type: ignore[no-any-return]


def test_recursive_cancel_reaches_the_tasks_the_task_submitted(cluster: None) -> None:
    assert _cancel_parent(recursive=True) == []


def test_non_recursive_cancel_leaves_them_running(cluster: None) -> None:
    assert _cancel_parent(recursive=False) == ["child"]


def test_cancel_of_actor_calls(cluster: None) -> None:
    @shoal.remote(num_cpus=0)
    class Slow:
        def __init__(self) -> None:
            self.ran: list[int] = []

        def nap(self, i: int) -> int:
            time.sleep(0.5)
            self.ran.append(i)
            return i

        def log(self) -> list[int]:
            return list(self.ran)

    actor = Slow.remote()
    refs = [actor.nap.remote(i) for i in range(3)]
    shoal.cancel(refs[1])
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        shoal.cancel(refs[2], force=True)
    with pytest.raises(exceptions.TaskCancelledError):
        shoal.get(refs[1], timeout=20)
    assert shoal.get([refs[0], refs[2]], timeout=20) == [0, 2]
    assert shoal.get(actor.log.remote(), timeout=20) == [0, 2]


def test_actor_method_retries_on_an_allowed_exception(cluster: None) -> None:
    @shoal.remote(num_cpus=0, max_task_retries=2)
    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        @shoal.method(retry_exceptions=[ValueError])
        def third_time(self) -> int:
            self.calls += 1
            if self.calls < 3:
                raise ValueError("not yet")
            return self.calls

    assert shoal.get(Flaky.remote().third_time.remote(), timeout=20) == 3


def test_concurrency_groups(cluster: None) -> None:
    @shoal.remote(num_cpus=0, concurrency_groups={"io": 2})
    class Server:
        def __init__(self) -> None:
            self.is_open = False

        @shoal.method(concurrency_group="io")
        def wait_open(self) -> str:
            deadline = time.monotonic() + 20  # a bound, not a timing assertion
            while not self.is_open and time.monotonic() < deadline:
                time.sleep(0.02)
            return "opened" if self.is_open else "never opened"

        def open(self) -> str:  # the default group: runs beside the io calls
            self.is_open = True
            return "open"

    server = Server.remote()
    waits = [server.wait_open.remote() for _ in range(2)]
    assert shoal.get(server.open.remote(), timeout=20) == "open"
    assert shoal.get(waits, timeout=20) == ["opened", "opened"]


def test_cancel_of_a_borrowed_ref_is_forwarded_to_its_owner(cluster: None) -> None:
    @shoal.remote(num_cpus=0, max_retries=0)
    def nap(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @shoal.remote(num_cpus=0, max_retries=0)
    def slow() -> str:
        # Blocked in get when cancelled: in production a running task sees a (non-force)
        # cancel at its next blocking shoal call, not inside time.sleep.
        return shoal.get(nap.remote(5.0)) + " then finished"

    @shoal.remote(num_cpus=0)
    def canceller(refs: list[Any]) -> str:
        shoal.cancel(refs[0])  # borrowed here: the driver owns it
        return "sent"

    ref = slow.remote()
    time.sleep(0.5)  # it runs
    assert shoal.get(canceller.remote([ref]), timeout=30) == "sent"
    with pytest.raises(exceptions.TaskCancelledError):
        shoal.get(ref, timeout=30)
