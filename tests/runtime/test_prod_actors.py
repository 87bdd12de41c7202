"""Actors on the production host: real node daemon, real worker processes, real sockets.

One local cluster serves the module (its teardown checks that nothing is left:
no process it spawned, no session directory, no ``/dev/shm`` file). Each test
makes its own actors; tests that kill workers only kill their own actor's.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle
import numpy as np
import psutil
import pytest
from shoal.kernel.core_worker.actors import ActorCallerConfig
from shoal.runtime.api.context import get_context
from shoal.runtime.api.exceptions import PendingCallsLimitExceeded, RayActorError

import shoal

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MIB = 1 << 20
NAMESPACE = "prod-actors"
PROCESS_GONE_S = 10.0  # a bound on waiting for a killed process, not a timing assertion


def _session_dir() -> str:
    return os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]


def _our_processes(besides: set[int] | None = None) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in (besides or ())]


def _shm_files(session_dir: str) -> list[str]:
    name = os.path.basename(os.path.normpath(session_dir))
    return glob.glob(f"/dev/shm/shoal-{glob.escape(name)}*")


def _gone(pid: int) -> bool:
    """Waits (boundedly) until process ``pid`` no longer runs; True if it is gone."""
    deadline = time.monotonic() + PROCESS_GONE_S
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One 2-CPU local cluster for the module, checked clean at the end."""
    before = {p.pid for p in _our_processes()}
    shoal.init(num_cpus=2, namespace=NAMESPACE)
    session_dir = _session_dir()
    try:
        yield
    finally:
        spawned = _our_processes(before)
        shoal.shutdown()
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"
        assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"
        assert not _shm_files(session_dir), "shared-memory files left behind"


# --- the program's actors -----------------------------------------------------------------


@shoal.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def inc(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def pid(self) -> int:
        return os.getpid()

    def inc_slowly(self) -> int:
        time.sleep(0.005)  # so that the calls are still running when the test kills us
        return self.inc()

    def echo(self, value: Any) -> Any:
        return value

    def where(self) -> str:
        return shoal.get_runtime_context().get_node_id()

    def identity(self) -> tuple[str | None, str | None, bool]:
        context = shoal.get_runtime_context()
        return (context.get_actor_id(), context.get_task_id(),
                context.was_current_actor_reconstructed)


@shoal.remote
class Broken:
    def __init__(self) -> None:
        raise KeyError("no config")

    def call(self) -> int:
        return 1


@shoal.remote(max_concurrency=4)
class Meeting:
    """Four calls can only all return if they run at the same time."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(4)

    def meet(self) -> str | None:
        self.barrier.wait(timeout=20)
        return shoal.get_runtime_context().get_task_id()


@shoal.remote(max_concurrency=2)
class Gate:
    def __init__(self) -> None:
        self.opened = threading.Event()

    def wait(self) -> str:
        self.opened.wait(timeout=30)
        return "open"

    def open(self) -> None:
        self.opened.set()


@shoal.remote
class Arrays:
    def __init__(self, base: np.ndarray) -> None:
        self.base = base

    def make(self, n_bytes: int) -> np.ndarray:
        return np.full(n_bytes // 8, 7, dtype=np.int64)

    def total(self, array: np.ndarray) -> int:
        return int(array.sum() + self.base.sum())


@shoal.remote
def add_to_named(name: str, by: int) -> int:
    return int(shoal.get(shoal.get_actor(name).inc.remote(by)))


@shoal.remote
def add_through(counter: Any, by: int) -> int:
    return int(shoal.get(counter.inc.remote(by)))


# --- tests ---------------------------------------------------------------------------------


def test_calls_from_the_driver_run_in_order(cluster: None) -> None:
    counter = Counter.remote(10)
    refs = [counter.inc.remote() for _ in range(50)]
    assert shoal.get(refs) == list(range(11, 61))
    actor_id, task_id, restarted = shoal.get(counter.identity.remote())
    assert actor_id == counter._actor_id
    assert task_id is not None and task_id != actor_id
    assert restarted is False
    assert shoal.get_runtime_context().get_actor_id() is None  # the driver is no actor


def test_more_calls_than_the_in_flight_window_all_run_in_order(cluster: None) -> None:
    """The caller pushes at most ``inflight_max`` calls at once; the rest are pushed as
    answers open the window (a regression: they used to stay queued for ever)."""
    count = ActorCallerConfig().inflight_max + 200
    counter = Counter.remote()
    assert shoal.get([counter.inc.remote() for _ in range(count)], timeout=60) == list(
        range(1, count + 1))


def test_a_handle_passed_to_a_task_calls_the_actor(cluster: None) -> None:
    counter = Counter.remote()
    assert shoal.get(add_through.remote(counter, 5)) == 5
    assert shoal.get(counter.inc.remote()) == 6


def test_named_actor_found_by_get_actor_and_get_if_exists(cluster: None) -> None:
    counter = Counter.options(name="prod-counter").remote(100)
    found = shoal.get_actor("prod-counter")
    assert shoal.get(found.inc.remote()) == 101
    in_namespace = shoal.get_actor("prod-counter", namespace=NAMESPACE)  # init's namespace
    assert in_namespace == found
    with pytest.raises(ValueError, match="no live actor"):
        shoal.get_actor("prod-counter", namespace="elsewhere")
    assert shoal.get(add_to_named.remote("prod-counter", 10)) == 111  # the job's namespace
    again = Counter.options(name="prod-counter", get_if_exists=True).remote()
    assert shoal.get(again.inc.remote()) == 112
    with pytest.raises(ValueError, match="already taken"):
        Counter.options(name="prod-counter").remote()
    with pytest.raises(ValueError, match="no live actor"):
        shoal.get_actor("no-such-counter")
    shoal.kill(counter)
    with pytest.raises(ValueError, match="no live actor"):
        shoal.get_actor("prod-counter")


def test_kill_ends_the_worker_and_later_calls_raise(cluster: None) -> None:
    counter = Counter.remote()
    pid = shoal.get(counter.pid.remote())
    shoal.kill(counter)
    with pytest.raises(RayActorError):
        shoal.get(counter.inc.remote())
    assert _gone(pid), f"the killed actor's worker process {pid} still runs"


def test_an_actor_restarts_after_its_worker_process_is_killed(cluster: None) -> None:
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote(5)
    assert shoal.get([counter.inc.remote() for _ in range(3)]) == [6, 7, 8]
    first_pid = shoal.get(counter.pid.remote())
    os.kill(first_pid, signal.SIGKILL)
    assert _gone(first_pid)
    assert shoal.get(counter.inc.remote()) == 6  # a fresh instance, from its constructor
    assert shoal.get(counter.pid.remote()) != first_pid
    assert shoal.get(counter.identity.remote())[2] is True  # was_current_actor_reconstructed
    second_pid = shoal.get(counter.pid.remote())
    os.kill(second_pid, signal.SIGKILL)  # no restarts left: the actor dies
    with pytest.raises(RayActorError):
        shoal.get(counter.inc.remote())


def test_kill_with_no_restart_false_restarts_the_actor_in_a_new_process(cluster: None) -> None:
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    assert shoal.get([counter.inc.remote() for _ in range(3)]) == [1, 2, 3]
    first_pid = shoal.get(counter.pid.remote())
    shoal.kill(counter, no_restart=False)
    assert shoal.get(counter.inc.remote(), timeout=30) == 1
    assert shoal.get(counter.pid.remote()) != first_pid
    assert _gone(first_pid)
    shoal.kill(counter, no_restart=False)  # no restarts left: dead
    with pytest.raises(RayActorError, match="killed"):
        shoal.get(counter.inc.remote(), timeout=30)


def test_calls_in_flight_when_the_worker_dies_rerun_in_order_after_restart(
        cluster: None) -> None:
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    pid = shoal.get(counter.pid.remote())
    refs = [counter.inc_slowly.remote() for _ in range(60)]
    shoal.get(refs[0])
    os.kill(pid, signal.SIGKILL)
    values = shoal.get(refs, timeout=60)
    answered = next((i for i, v in enumerate(values) if v != i + 1), len(values))
    assert answered >= 1
    # the calls the first instance answered count from 1; the others ran again, in order,
    # on a fresh instance: they count from 1 again
    assert values[answered:] == list(range(1, len(values) - answered + 1)), values


def test_a_constructor_that_raises_fails_every_call(cluster: None) -> None:
    broken = Broken.remote()
    for _ in range(2):
        with pytest.raises(RayActorError, match="no config"):
            shoal.get(broken.call.remote())


def test_a_threaded_actor_runs_its_calls_at_once(cluster: None) -> None:
    meeting = Meeting.remote()
    refs = [meeting.meet.remote() for _ in range(4)]
    task_ids = shoal.get(refs, timeout=30)
    assert len(set(task_ids)) == 4, f"each call sees its own task id: {task_ids}"
    assert None not in task_ids


def test_large_values_in_and_out_of_an_actor(cluster: None) -> None:
    base = np.ones(MIB // 8, dtype=np.int64)  # a stored constructor argument
    arrays = Arrays.remote(base)
    made = shoal.get(arrays.make.remote(MIB))
    assert made.nbytes == MIB and int(made[0]) == 7 and int(made[-1]) == 7
    assert not made.flags.writeable  # read from the store, zero-copy
    big = np.arange(2 * MIB // 8, dtype=np.int64)
    assert shoal.get(arrays.total.remote(big)) == int(big.sum()) + MIB // 8
    assert shoal.get(arrays.total.remote(shoal.put(big))) == int(big.sum()) + MIB // 8


def test_refs_an_actor_method_owns_survive_being_returned(cluster: None) -> None:
    @shoal.remote
    class Boxer:
        def box(self, i: int) -> list[Any]:
            return [shoal.put(i), shoal.put(np.full(MIB // 8, i, dtype=np.int64))]

    boxer = Boxer.remote()
    for i in range(3):
        ref = boxer.box.remote(i)
        small, big = shoal.get(ref)
        del ref
        gc.collect()
        time.sleep(0.2)  # the returned list is freed: the refs in it must not be
        assert shoal.get(small) == i and int(shoal.get(big)[-1]) == i


def test_max_pending_calls_refuses_the_call_past_the_limit(cluster: None) -> None:
    gate = Gate.remote()
    opened = gate.wait.remote()  # not ready until the gate opens
    counter = Counter.options(max_pending_calls=2).remote()
    pending = [counter.echo.remote(opened) for _ in range(2)]  # wait for their argument
    with pytest.raises(PendingCallsLimitExceeded, match="max_pending_calls=2"):
        counter.echo.remote("third")
    gate.open.remote()
    assert shoal.get(pending) == ["open", "open"]
    assert shoal.get(counter.echo.remote("room again")) == "room again"


@shoal.remote
def wait_for(ref_holder: list[Any]) -> str:
    return str(shoal.get(ref_holder[0]))


def test_a_task_blocked_on_an_actor_is_interrupted_by_cancel(cluster: None) -> None:
    gate = Gate.remote()
    waiting = wait_for.remote([gate.wait.remote()])  # nested: the task gets it itself
    ready, _ = shoal.wait([waiting], timeout=0.3)
    assert not ready
    shoal.cancel(waiting)
    with pytest.raises(shoal.exceptions.TaskCancelledError):
        shoal.get(waiting, timeout=30)
    gate.open.remote()
    assert shoal.get(wait_for.remote([gate.wait.remote()]), timeout=30) == "open"


def test_shutdown_ends_actors_busy_in_calls(cluster: None) -> None:
    """The module's teardown shuts the cluster down and checks that no process is left:
    these actors are still running calls then, in the main thread and in a pool thread."""
    busy_main = Gate.options(max_concurrency=1).remote()
    busy_pool = Gate.remote()
    calls = [busy_main.wait.remote(), busy_pool.wait.remote()]
    ready, _ = shoal.wait(calls, num_returns=2, timeout=0.3)
    assert ready == []


@contextmanager
def _second_node(tmp_path: Any, node_id: str, resources: dict[str, float]) -> Iterator[None]:
    """A second node daemon joined to the module's cluster over gRPC, for the ``with``."""
    head_dir = _session_dir()
    with open(os.path.join(head_dir, "session.json"), encoding="utf-8") as f:
        head = json.load(f)
    parent_r, parent_w = os.pipe()
    daemon = subprocess.Popen(
        [sys.executable, "-P", "-m", "shoal.runtime.node", "--session-dir", str(tmp_path),
         "--node-id", node_id, "--head-node-id", head["node_id"],
         "--gcs-endpoint", head["endpoint"], "--token-file", os.path.join(head_dir, "token"),
         "--resources", json.dumps(resources), "--parent-fd", str(parent_r)],
        pass_fds=(parent_r,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(parent_r)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(n["NodeID"] == node_id and n["Alive"] for n in shoal.nodes()):
                break
            time.sleep(0.05)
        yield
    finally:
        os.close(parent_w)  # the daemon stops when the process that started it goes away
        daemon.wait(10)


def test_an_actor_on_another_node_is_called_over_grpc(cluster: None, tmp_path: Any) -> None:
    with _second_node(tmp_path, "actors-second", {"CPU": 1.0, "special": 1.0}):
        counter = Counter.options(resources={"special": 1.0}).remote(7)
        assert shoal.get(counter.where.remote(), timeout=30) == "actors-second"
        assert shoal.get([counter.inc.remote() for _ in range(20)]) == list(range(8, 28))
        assert shoal.get(add_through.remote(counter, 100), timeout=30) == 127  # from node 1
        pid = shoal.get(counter.pid.remote())
        shoal.kill(counter)
        with pytest.raises(RayActorError):
            shoal.get(counter.inc.remote(), timeout=30)
        assert _gone(pid), f"the killed actor's worker process {pid} still runs"


SECOND_DRIVER = """
import os, sys
import shoal

@shoal.remote
class Keeper:
    def pid(self):
        return os.getpid()

shoal.init(address=sys.argv[1], namespace=sys.argv[2])
kept = Keeper.options(name="kept", lifetime="detached").remote()
temporary = Keeper.options(name="temporary").remote()
print(shoal.get(kept.pid.remote()), shoal.get(temporary.pid.remote()))
"""  # and exits: shutdown at exit ends its job


def test_a_drivers_job_ends_its_actors_but_not_detached_ones(cluster: None) -> None:
    done = subprocess.run([sys.executable, "-c", SECOND_DRIVER, _session_dir(), NAMESPACE],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kept_pid, temporary_pid = (int(word) for word in done.stdout.split())
    assert _gone(temporary_pid), "the ended job's actor still runs"
    with pytest.raises(ValueError, match="no live actor"):
        shoal.get_actor("temporary")
    kept = shoal.get_actor("kept")
    assert shoal.get(kept.pid.remote()) == kept_pid  # detached: outlives its creator's job
    shoal.kill(kept)
    assert _gone(kept_pid)
