"""A driver killed without ``shutdown`` ends its job on a ``shoal start --head`` cluster.

A second driver process joins the cluster, creates a non-detached actor, a
detached actor and a non-detached placement group, and is SIGKILLed (no atexit,
no ``shutdown``). Its node daemon sees the connection close, the raylet reports
the exit, and the GCS ends the job: the non-detached actor's worker exits, the
detached actor still answers, and the group's resources come back. The head
runs with its own ``SHOAL_TMPDIR``; ``shoal stop`` and a check that no process
or ``/dev/shm`` file is left end the test.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import shoal
from shoal.runtime.cluster import SESSION_FILE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAMESPACE = "job-end"
WAIT_S = 20.0  # a bound on waiting for the cluster to notice, not a timing assertion
TOTAL_CPUS = 4.0

DOOMED_DRIVER = """
import os, sys, time
import shoal
from shoal.util import placement_group

@shoal.remote(num_cpus=1)
class Temporary:
    def pid(self):
        return os.getpid()

@shoal.remote(num_cpus=0)
class Kept:
    def pid(self):
        return os.getpid()

shoal.init(address=sys.argv[1], namespace=sys.argv[2])
group = placement_group([{"CPU": 2}])
shoal.get(group.ready(), timeout=60)
temporary = Temporary.options(name="temporary").remote()
kept = Kept.options(name="kept", lifetime="detached").remote()
print(shoal.get(temporary.pid.remote()), shoal.get(kept.pid.remote()), group.id.hex(), flush=True)
time.sleep(600)  # until SIGKILLed
"""


def _shm_files() -> set[str]:
    return {path for path in glob.glob("/dev/shm/shoal*")
            if re.match(r"shoal-(head|node)-[0-9a-f]{8}", os.path.basename(path))}


def _processes_naming(tmpdir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if (process.info["status"] != psutil.STATUS_ZOMBIE
                    and any(tmpdir in arg for arg in process.info["cmdline"] or [])):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _eventually(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def head() -> Iterator[tuple[dict[str, str], str]]:
    """``shoal start --head`` in a private directory: (environment, session directory)."""
    tmpdir = tempfile.mkdtemp(prefix="shoal-job-", dir="/tmp")  # short: socket paths
    env = dict(os.environ, SHOAL_TMPDIR=tmpdir)
    shm_before = _shm_files()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal.runtime.cli", *args], env=env,
                              cwd=tmpdir, capture_output=True, text=True, timeout=60,
                              check=False)
    try:
        started = cli("start", "--head", "--port", "0", "--num-cpus", str(int(TOTAL_CPUS)))
        assert started.returncode == 0, started.stderr
        [session_file] = glob.glob(os.path.join(tmpdir, "**", SESSION_FILE), recursive=True)
        yield env, os.path.dirname(session_file)
    finally:
        stopped = cli("stop")
        try:
            assert stopped.returncode == 0, stopped.stderr
            _eventually(lambda: not _processes_naming(tmpdir), "processes left behind")
            assert not _shm_files() - shm_before, "shm files left behind"
        finally:
            for process in _processes_naming(tmpdir):  # only if the checks failed
                process.kill()
            shutil.rmtree(tmpdir, ignore_errors=True)


def _available_cpus() -> float:
    return float(shoal.available_resources().get("CPU", 0.0))


def test_a_killed_driver_takes_its_actors_and_groups_but_not_detached_ones(
        head: tuple[dict[str, str], str]) -> None:
    env, session_dir = head
    doomed = subprocess.Popen([sys.executable, "-c", DOOMED_DRIVER, session_dir, NAMESPACE],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    shoal.init(address=session_dir, namespace=NAMESPACE)
    try:
        assert doomed.stdout is not None
        line = doomed.stdout.readline()
        assert line, f"the second driver failed: {doomed.stderr.read() if doomed.stderr else ''}"
        temporary_pid, kept_pid, group_id = line.split()
        # The group (2 CPUs) and the temporary actor (1 CPU) hold 3 of the 4 CPUs.
        _eventually(lambda: _available_cpus() == TOTAL_CPUS - 3, "the job's holdings never showed")

        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)

        _eventually(lambda: _gone(int(temporary_pid)), "the ended job's actor still runs")
        kept = shoal.get_actor("kept")
        assert shoal.get(kept.pid.remote(), timeout=30) == int(kept_pid)  # detached: lives on
        with pytest.raises(ValueError, match="no live actor"):
            shoal.get_actor("temporary")
        _eventually(lambda: shoal.util.placement_group_table().get(group_id, {}).get("state")
                    == "REMOVED", "the ended job's placement group was not removed")
        _eventually(lambda: _available_cpus() == TOTAL_CPUS, "the job's CPUs never came back")
        shoal.kill(kept)
        _eventually(lambda: _gone(int(kept_pid)), "the killed detached actor still runs")
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=30)
        shoal.shutdown()
