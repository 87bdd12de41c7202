"""The production host end to end: ``shoal.init()`` starts a local cluster in real processes.

Loopback and Unix sockets only. Every test checks that what it started is gone
afterwards: no process it spawned still alive, no session directory, no
``/dev/shm/shoal-<session>*`` file.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Collection, Iterator
from typing import Any

import cloudpickle
import msgspec
import psutil
import pytest
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address
from shoal.runtime.api.context import WorkerContext, get_context
from shoal.runtime.local_transport import PROTOCOL_VERSION, Hello, HelloReply

import shoal

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class AppError(ValueError):
    """A user exception class, defined by the program."""


# --- helpers ------------------------------------------------------------------------------


def _session_dir() -> str:
    return os.path.dirname(get_context()._runtime.socket_path)  # type: ignore[attr-defined]


def _our_processes(besides: Collection[int] = ()) -> list[psutil.Process]:
    """This process's descendants, except the pids in ``besides`` (there before the test)."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in besides]


def _shm_files(session_dir: str) -> list[str]:
    """The session's shared-memory files (``/dev/shm/shoal-<session name>*``). Other
    shoal clusters may be running on this machine, each with its node's arena."""
    name = os.path.basename(os.path.normpath(session_dir))
    return glob.glob(f"/dev/shm/shoal-{glob.escape(name)}*")


def _assert_gone(processes: list[psutil.Process], session_dir: str, timeout_s: float = 5.0):
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    assert not os.path.exists(session_dir), f"session directory left behind: {session_dir}"
    left = _shm_files(session_dir)
    assert not left, f"shared-memory files left behind: {left}"


@pytest.fixture
def fresh_cluster() -> Iterator[dict[str, Any]]:
    """A cluster of one node with 2 CPUs, torn down (and checked clean) after the test."""
    before = {p.pid for p in _our_processes()}
    info = shoal.init(num_cpus=2)
    session_dir = _session_dir()
    try:
        yield info
    finally:
        spawned = _our_processes(before)
        shoal.shutdown()
        _assert_gone(spawned, session_dir)


@pytest.fixture(scope="class")
def one_cpu_cluster() -> Iterator[dict[str, Any]]:
    """One cluster of one node with ONE CPU, shared by the tests of ``TestOnOneCpu``."""
    before = {p.pid for p in _our_processes()}
    info = shoal.init(num_cpus=1)
    session_dir = _session_dir()
    try:
        yield info
    finally:
        spawned = _our_processes(before)
        shoal.shutdown()
        _assert_gone(spawned, session_dir)


# --- the API on a real cluster ----------------------------------------------------------------


def test_init_runs_a_task_and_shows_the_node(fresh_cluster: dict[str, Any]) -> None:
    @shoal.remote
    def double(x: int) -> int:
        return 2 * x

    assert shoal.is_initialized()
    assert isinstance(get_context(), WorkerContext)
    assert shoal.get(double.remote(21)) == 42
    nodes = shoal.nodes()
    assert [n["NodeID"] for n in nodes] == [fresh_cluster["node_id"]]
    assert nodes[0]["Alive"] and nodes[0]["Resources"]["CPU"] == 2.0
    assert shoal.cluster_resources()["CPU"] == 2.0


def test_init_twice_is_refused_unless_asked(fresh_cluster: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match="twice by accident"):
        shoal.init()
    assert shoal.init(ignore_reinit_error=True)["node_id"] == fresh_cluster["node_id"]


@pytest.mark.usefixtures("one_cpu_cluster")
class TestOnOneCpu:
    """API calls on one shared cluster whose node has a single CPU."""

    def test_put_get_and_refs_passed_to_tasks(self, one_cpu_cluster: dict[str, Any]) -> None:
        @shoal.remote
        def length(blob: bytes) -> int:
            return len(blob)

        small = shoal.put({"a": [1, 2, 3]})
        assert shoal.get(small) == {"a": [1, 2, 3]}
        big = shoal.put(b"x" * (300 * 1024))  # above the inline limit: still inline for now (#5)
        assert shoal.get(length.remote(big)) == 300 * 1024
        assert shoal.get([small, small]) == [{"a": [1, 2, 3]}] * 2

    def test_wait_returns_ready_refs_first(self, one_cpu_cluster: dict[str, Any]) -> None:
        @shoal.remote
        def sleepy(seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        fast = shoal.put(0.0)
        slow = sleepy.remote(30.0)
        ready, not_ready = shoal.wait([slow, fast], num_returns=1, timeout=10)
        assert ready == [fast] and not_ready == [slow]
        ready, not_ready = shoal.wait([slow], timeout=0.2)
        assert ready == [] and not_ready == [slow]
        with pytest.raises(shoal.exceptions.GetTimeoutError):
            shoal.get(slow, timeout=0.2)
        shoal.cancel(slow, force=True)  # frees the only CPU for the next tests

    def test_nested_tasks_blocking_in_get_on_one_cpu(
            self, one_cpu_cluster: dict[str, Any]) -> None:
        @shoal.remote
        def leaf(i: int) -> int:
            return i * i

        @shoal.remote
        def parent(n: int) -> int:
            return sum(shoal.get([leaf.remote(i) for i in range(n)]))

        @shoal.remote
        def grandparent(n: int) -> int:
            return shoal.get(parent.remote(n)) + 1

        assert shoal.get(grandparent.remote(4), timeout=30) == 0 + 1 + 4 + 9 + 1

    def test_task_exception_is_a_ray_task_error_and_the_users_class(
            self, one_cpu_cluster: dict[str, Any]) -> None:
        @shoal.remote(max_retries=0)
        def fails(message: str) -> None:
            raise AppError(message)

        with pytest.raises(AppError, match="boom") as caught:
            shoal.get(fails.remote("boom"))
        assert isinstance(caught.value, shoal.exceptions.RayTaskError)
        assert isinstance(caught.value, ValueError)
        try:
            shoal.get(fails.remote("again"))
        except shoal.exceptions.RayTaskError as error:
            assert "fails" in str(error) and "again" in str(error)


def test_a_worker_killed_mid_task_is_retried(fresh_cluster: dict[str, Any],
                                             tmp_path: Any) -> None:
    @shoal.remote(max_retries=2)
    def first_attempt_hangs(marker_dir: str) -> int:
        first = not os.listdir(marker_dir)
        with open(os.path.join(marker_dir, str(os.getpid())), "w"):
            pass
        if first:
            time.sleep(60)
        return os.getpid()

    ref = first_attempt_hangs.remote(str(tmp_path))
    victim = _wait_for_marker(tmp_path)
    os.kill(victim, signal.SIGKILL)
    survivor = shoal.get(ref, timeout=30)
    assert survivor != victim
    assert sorted(os.listdir(tmp_path)) == sorted([str(victim), str(survivor)])


def _wait_for_marker(directory: Any, timeout_s: float = 20.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = os.listdir(directory)
        if names:
            return int(names[0])
        time.sleep(0.02)
    raise AssertionError("the task never started")


# --- the daemon's socket refuses bad peers and keeps serving ------------------------------------


def _raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(path)
    return sock


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def _read_reply(sock: socket.socket) -> HelloReply | None:
    header = sock.recv(4, socket.MSG_WAITALL)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    return msgspec.msgpack.decode(sock.recv(length, socket.MSG_WAITALL), type=HelloReply)


def _is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _hello(token: str, node: str, worker: str) -> bytes:
    address = Address(node=NodeId(node), component="worker", worker=worker)
    return msgspec.msgpack.encode(Hello(version=PROTOCOL_VERSION, token=token,
                                        address=address, pid=os.getpid()))


def test_bad_peers_are_rejected_and_the_daemon_keeps_serving(
        fresh_cluster: dict[str, Any]) -> None:
    @shoal.remote
    def echo(x: Any) -> Any:
        return x

    assert shoal.get(echo.remote(1)) == 1
    session_dir = _session_dir()
    path = get_context()._runtime.socket_path  # type: ignore[attr-defined]
    node = fresh_cluster["node_id"]
    with open(os.path.join(session_dir, "token"), encoding="ascii") as f:
        token = f.read().strip()

    with _raw_connect(path) as sock:  # the wrong token: refused, with the reason
        _send_frame(sock, _hello("0" * 32, node, "intruder"))
        reply = _read_reply(sock)
        assert reply is not None and not reply.ok and "token" in reply.reason
        assert _is_closed(sock)
    with _raw_connect(path) as sock:  # not a hello at all
        _send_frame(sock, b"\xc1garbage")
        reply = _read_reply(sock)
        assert reply is not None and not reply.ok and "malformed hello" in reply.reason
    with _raw_connect(path) as sock:  # authenticated, then a malformed batch: dropped
        _send_frame(sock, _hello(token, node, "tester"))
        reply = _read_reply(sock)
        assert reply is not None and reply.ok
        _send_frame(sock, b"\x93\x01\x02")  # msgpack, but not a list of envelopes
        _send_frame(sock, b"\xc1\xc1\xc1")  # not msgpack
        sock.sendall(struct.pack(">I", 2**31))  # an oversized length: the connection closes
        assert _is_closed(sock)

    assert shoal.get(echo.remote(2)) == 2  # still serving
    with open(os.path.join(session_dir, "logs", "node.log"), encoding="utf-8") as f:
        log = f.read()
    assert "local.rejected" in log and "wrong cluster token" in log
    assert "local.frame_dropped" in log and "local.frame_rejected" in log


# --- shutdown and process lifetime -------------------------------------------------------------


def test_shutdown_leaves_nothing_behind() -> None:
    @shoal.remote
    def pid() -> int:
        return os.getpid()

    before = {p.pid for p in _our_processes()}
    shoal.init(num_cpus=2)
    session_dir = _session_dir()
    workers = set(shoal.get([pid.remote() for _ in range(4)]))
    spawned = _our_processes(before)
    assert workers <= {p.pid for p in spawned}
    started = time.monotonic()
    shoal.shutdown()
    assert time.monotonic() - started < 5.0
    assert not shoal.is_initialized()
    _assert_gone(spawned, session_dir)
    shoal.shutdown()  # idempotent


DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import shoal

    shoal.init(num_cpus=1)

    @shoal.remote
    def pid():
        return os.getpid()

    worker = shoal.get(pid.remote())
    from shoal.runtime.api.context import WorkerContext, get_context
    session = os.path.dirname(get_context()._runtime.socket_path)
    print(json.dumps({"worker": worker, "session": session}), flush=True)
    time.sleep(60)
""")


def test_the_cluster_dies_with_its_driver(tmp_path: Any) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              cwd=str(tmp_path))
    try:
        assert driver.stdout is not None
        info = json.loads(driver.stdout.readline())
        spawned = psutil.Process(driver.pid).children(recursive=True)
        assert info["worker"] in {p.pid for p in spawned}
        driver.kill()  # no atexit, no shutdown(): the daemon must notice by itself
        driver.wait()
        _assert_gone(spawned, info["session"], timeout_s=10.0)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


# --- joining: a second driver, a second node ------------------------------------------------------


JOINER = textwrap.dedent("""
    import os, sys
    import shoal

    info = shoal.init(address=sys.argv[1])

    @shoal.remote
    def add(a, b):
        return a + b

    print(info["node_id"], shoal.get(add.remote(20, 22)), flush=True)
    shoal.shutdown()
""")


def test_a_second_driver_joins_the_running_cluster(fresh_cluster: dict[str, Any],
                                                   tmp_path: Any) -> None:
    script = tmp_path / "joiner.py"
    script.write_text(JOINER)
    session_dir = _session_dir()
    for address in (session_dir, "auto"):
        out = subprocess.run([sys.executable, str(script), address], check=False,
                             capture_output=True, text=True, timeout=30, cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr
        node, value = out.stdout.split()
        assert value == "42"
        # "auto" takes the newest session on the machine: ours, unless another test run
        # started one since.
        assert node == fresh_cluster["node_id"] or address == "auto"

    @shoal.remote
    def still() -> str:
        return "serving"

    assert shoal.get(still.remote()) == "serving"  # the joiner's shutdown only disconnected it
    assert os.path.exists(session_dir)


def test_a_second_node_daemon_joins_over_grpc(fresh_cluster: dict[str, Any],
                                              tmp_path: Any) -> None:
    head_dir = _session_dir()
    with open(os.path.join(head_dir, "session.json"), encoding="utf-8") as f:
        head = json.load(f)
    node_dir = tmp_path / "node2"
    node_dir.mkdir()
    parent_r, parent_w = os.pipe()
    daemon = subprocess.Popen(
        [sys.executable, "-P", "-m", "shoal.runtime.node", "--session-dir", str(node_dir),
         "--node-id", "second", "--head-node-id", head["node_id"],
         "--gcs-endpoint", head["endpoint"], "--token-file", os.path.join(head_dir, "token"),
         "--resources", json.dumps({"CPU": 1.0, "special": 2.0}), "--parent-fd", str(parent_r)],
        pass_fds=(parent_r,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(parent_r)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            alive = {n["NodeID"]: n for n in shoal.nodes() if n["Alive"]}
            if "second" in alive:
                break
            time.sleep(0.1)
        assert set(alive) == {fresh_cluster["node_id"], "second"}
        assert alive["second"]["Resources"] == {"CPU": 1.0, "special": 2.0}
        assert shoal.cluster_resources()["CPU"] == 3.0
    finally:
        os.close(parent_w)  # the daemon stops when the process that started it goes away
        daemon.wait(10)


def test_shutdown_wakes_a_thread_blocked_in_get() -> None:
    @shoal.remote
    def forever() -> None:
        time.sleep(60)

    before = {p.pid for p in _our_processes()}
    shoal.init(num_cpus=1)
    session_dir = _session_dir()
    ref = forever.remote()
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            shoal.get(ref)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.3)
    spawned = _our_processes(before)
    shoal.shutdown()
    thread.join(5)
    assert not thread.is_alive()
    assert isinstance(outcome[0], shoal.exceptions.RaySystemError)
    assert "shutdown" in str(outcome[0])
    _assert_gone(spawned, session_dir)
