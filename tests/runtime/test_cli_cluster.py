"""``shoal start`` / ``status`` / ``stop`` and drivers that join by address, in real processes.

Every test runs the CLI as a subprocess with its own ``SHOAL_TMPDIR`` (so it
never sees another cluster of this machine), runs ``shoal stop`` when it ends,
and checks that nothing it started is left: no process whose command line
names its directory, no ``/dev/shm/shoal*`` file of a node it started.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from shoal.runtime.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Cli:
    """Runs ``shoal`` commands (and drivers) against one private state directory."""

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir = tmpdir
        self.env = dict(os.environ, SHOAL_TMPDIR=tmpdir)
        self.state = os.path.join(tmpdir, f"shoal-cluster-{os.getuid()}")

    def run(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal.runtime.cli", *args],
                              capture_output=True, text=True, timeout=timeout_s,
                              env=self.env, cwd=self.tmpdir, check=False)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = self.run(*args)
        assert out.returncode == 0, f"shoal {' '.join(args)}: {out.stdout}{out.stderr}"
        return out

    def json(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ok(*args, "--json").stdout)
        return data

    def python(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        path = Path(self.tmpdir) / "driver.py"
        path.write_text(textwrap.dedent(script))
        return subprocess.run([sys.executable, str(path), *args], capture_output=True,
                              text=True, timeout=60, env=self.env, cwd=self.tmpdir,
                              check=False)

    def processes(self) -> list[psutil.Process]:
        """Live (not zombie) processes whose command line names this directory."""
        found = []
        for process in psutil.process_iter(["cmdline", "status"]):
            try:
                if (process.info["status"] != psutil.STATUS_ZOMBIE
                        and any(self.tmpdir in arg for arg in process.info["cmdline"] or [])):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found


def _shm_files() -> set[str]:
    """``/dev/shm`` files of nodes started by ``shoal start`` (their session directory is
    named after the node: ``shoal-head-<hex>...``, ``shoal-node-<hex>...``). Files of
    embedded clusters that other tests may run meanwhile are named ``shoal-shoal-...``."""
    return {path for path in glob.glob("/dev/shm/shoal*")
            if re.match(r"shoal-(head|node)-[0-9a-f]{8}", os.path.basename(path))}


def _assert_no_processes(cli: Cli, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (alive := cli.processes()) and time.monotonic() < deadline:
        time.sleep(0.05)  # an exited daemon stays a zombie until init reaps it: not counted
    assert not alive, f"processes left behind: {[(p.pid, p.info['cmdline']) for p in alive]}"


def _assert_clean(cli: Cli, shm_before: set[str]) -> None:
    _assert_no_processes(cli)
    sessions = [name for name in os.listdir(cli.state) if name not in ("lock",)] \
        if os.path.isdir(cli.state) else []
    assert not sessions, f"left in the state directory: {sessions}"
    assert not _shm_files() - shm_before, f"shm files left: {_shm_files() - shm_before}"


@pytest.fixture
def cli() -> Iterator[Cli]:
    """A private SHOAL_TMPDIR; ``shoal stop`` at the end, then a check that all is gone."""
    tmpdir = tempfile.mkdtemp(prefix="shoal-cli-", dir="/tmp")  # short: socket paths
    shm_before = _shm_files()
    runner = Cli(tmpdir)
    try:
        yield runner
    finally:
        stopped = runner.run("stop")
        try:
            assert stopped.returncode == 0, stopped.stderr
            _assert_clean(runner, shm_before)
        finally:
            for process in runner.processes():  # only if the checks failed
                process.kill()
            shutil.rmtree(tmpdir, ignore_errors=True)


def _start_head(cli: Cli, *args: str) -> dict[str, Any]:
    return cli.json("start", "--head", "--port", "0", *args)


def _alive(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in status["nodes"] if n["alive"]}


# --- start --head, status, stop -------------------------------------------------------------


def test_start_head_prints_how_to_connect_and_stop_cleans_up(cli: Cli) -> None:
    out = cli.ok("start", "--head", "--port", "0", "--num-cpus", "2",
                 "--resources", '{"disk": 3}')
    record = json.loads(Path(cli.state, "cluster.json").read_text())
    address, token = record["address"], record["token"]
    assert stat.S_IMODE(os.stat(Path(cli.state, "cluster.json")).st_mode) == 0o600
    assert f"Address: {address}" in out.stdout and f"Token:   {token}" in out.stdout
    assert f"shoal start --address {address} --token {token}" in out.stdout
    assert 'shoal.init(address="auto")' in out.stdout
    daemon = psutil.Process(int(json.loads(
        Path(cli.state, record["head_node_id"], "node.json").read_text())["pid"]))
    assert daemon.is_running()  # detached: outlived the `shoal start` that spawned it

    status = cli.json("status")
    assert status["address"] == address
    [head] = status["nodes"]
    assert head["alive"] and head["head"] and head["node_id"] == record["head_node_id"]
    assert head["resources"]["total"]["CPU"] == 2.0 and head["resources"]["total"]["disk"] == 3.0
    assert status["resources"]["CPU"] == {"used": 0.0, "total": 2.0}
    assert head["leases"] == 0 and head["objects"] == 0
    human = cli.ok("status").stdout
    assert f"shoal cluster at {address}" in human and "1 alive, 0 dead" in human
    assert "CPU" in human and "disk" in human

    again = cli.run("start", "--head", "--port", "0")
    assert again.returncode == 1 and "already running" in again.stderr

    stopped = cli.ok("stop")
    assert f"Stopped node {record['head_node_id']} (pid {daemon.pid}, head)" in stopped.stdout
    _assert_no_processes(cli, timeout_s=2.0)
    assert not Path(cli.state, "cluster.json").exists()
    assert cli.ok("stop").stdout.startswith("No shoal node daemon was running")  # idempotent


def test_without_a_cluster_status_drivers_and_joiners_say_what_to_do(cli: Cli) -> None:
    status = cli.run("status")
    assert status.returncode == 1
    assert "no shoal cluster is running on this machine" in status.stderr
    assert "shoal start --head" in status.stderr
    assert cli.run("status", "--json").returncode == 1
    out = cli.python("""
        import shoal
        for address in ("auto", "127.0.0.1:6399"):
            try:
                shoal.init(address=address)
            except ConnectionError as error:
                print(error)
    """)
    assert out.returncode == 0, out.stderr
    auto, by_address = out.stdout.strip().splitlines()
    assert "no running shoal cluster on this machine" in auto and "shoal start --head" in auto
    assert "no node daemon of the cluster at 127.0.0.1:6399 runs on this machine" in by_address
    assert "shoal start --address 127.0.0.1:6399 --token" in by_address
    unreachable = cli.run("start", "--address", "127.0.0.1:1", "--token", "t0ken")
    assert unreachable.returncode == 1
    assert "cannot reach a shoal head at 127.0.0.1:1" in unreachable.stderr


# --- a second node, drivers that join -------------------------------------------------------


DRIVER = """
    import os, sys
    import shoal

    info = shoal.init(address=sys.argv[1])

    @shoal.remote
    def square(x):
        return x * x

    @shoal.remote(resources={"special": 1})
    def where():
        return shoal.get_runtime_context().get_node_id()

    print(info["node_id"], sum(shoal.get([square.remote(i) for i in range(10)])),
          shoal.get(where.remote()), len(shoal.nodes()), flush=True)
    shoal.shutdown()
"""


def test_a_second_node_joins_and_drivers_run_tasks_on_the_cluster(cli: Cli) -> None:
    head = _start_head(cli, "--num-cpus", "1")
    address, token = head["address"], head["token"]
    node = cli.json("start", "--address", address, "--token", token, "--num-cpus", "1",
                    "--resources", '{"special": 2}')
    assert node["address"] == address and node["node_id"] != head["node_id"]

    status = cli.json("status")
    alive = _alive(status)
    assert set(alive) == {head["node_id"], node["node_id"]}
    assert alive[node["node_id"]]["resources"]["total"]["special"] == 2.0
    assert status["resources"]["CPU"]["total"] == 2.0
    assert "2 alive, 0 dead" in cli.ok("status").stdout

    for how in ("auto", address):
        out = cli.python(DRIVER, how)
        assert out.returncode == 0, out.stderr
        driver_node, total, special_node, nodes = out.stdout.split()
        assert driver_node == head["node_id"]  # a driver connects to its machine's daemon
        assert total == str(sum(i * i for i in range(10)))
        assert special_node == node["node_id"] and nodes == "2"

    # the drivers' shutdown() only disconnected them: the cluster still runs
    assert set(_alive(cli.json("status"))) == {head["node_id"], node["node_id"]}
    stopped = cli.json("stop")["stopped"]
    assert sorted(s["node_id"] for s in stopped) == sorted([head["node_id"], node["node_id"]])
    assert all(s["outcome"] == "stopped" for s in stopped)


def test_a_node_with_the_wrong_token_is_rejected(cli: Cli) -> None:
    head = _start_head(cli, "--num-cpus", "1")
    out = cli.run("start", "--address", head["address"], "--token", "0" * 32)
    assert out.returncode == 1
    assert f"the head at {head['address']} rejected this node's cluster token" in out.stderr
    assert [n["node_id"] for n in cli.json("status")["nodes"]] == [head["node_id"]]
    assert sorted(os.listdir(cli.state)) == sorted(["cluster.json", "lock", head["node_id"]])

    other = cli.run("start", "--address", "127.0.0.1:1", "--token", head["token"])
    assert other.returncode == 1 and "a machine belongs to one cluster" in other.stderr


# --- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["start"], "one of the arguments --head --address is required"),
    (["start", "--head", "--address", "127.0.0.1:6379"], "not allowed with argument"),
    (["start", "--address", "127.0.0.1:6379"], "--token is required with --address"),
    (["start", "--head", "--resources", "{nope"], "not JSON"),
    (["start", "--head", "--resources", '{"CPU": 2}'], "Use the 'num_cpus'"),
    (["start", "--head", "--num-cpus", "-1"], "must be a non-negative number"),
    (["start", "--head", "--port", "70000"], "must be between 0 and 65535"),
])
def test_usage_errors_exit_2(args: list[str], needle: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(args)
    except SystemExit as exit_info:
        code = exit_info.code  # type: ignore[assignment]
    assert code == 2
    assert needle in capsys.readouterr().err
