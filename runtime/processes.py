"""Process plumbing shared by the driver, the node daemon and the workers.

* ``python_command``: how a host process starts another shoal process:
  ``python -P -m shoal.runtime.<module>``; ``-P`` keeps the current directory
  off ``sys.path``, so a checkout's ``shoal/`` folder cannot shadow the package.
* ``set_parent_death_signal``: Linux ``PR_SET_PDEATHSIG`` through ctypes, so a
  worker dies with its daemon even when the daemon is killed with SIGKILL.
* ``exit_cause``: a process's return code, in words.
* ``remove_session``: removes a session directory and the node's shared-memory
  files (``/dev/shm/shoal-<session name>*``).
* ``read_ready_line``, ``log_tail``, ``kill_group``: what a process that starts a
  node daemon (``shoal.init()``, ``shoal start``) uses to wait for it and to stop it.
* ``base_dir``: where sessions go: ``$SHOAL_TMPDIR``, else ``/tmp`` (like ``RAY_TMPDIR``).
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
SHM_DIR = "/dev/shm"
KEEP_SESSION_ENV = "SHOAL_KEEP_SESSION"
TMPDIR_ENV = "SHOAL_TMPDIR"
DEFAULT_TMPDIR = "/tmp"  # short on purpose: Unix socket paths are limited to 107 bytes


def base_dir() -> str:
    """The directory under which sessions are made: ``$SHOAL_TMPDIR``, else ``/tmp``."""
    return os.environ.get(TMPDIR_ENV) or DEFAULT_TMPDIR


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-P", "-m", module, *args]


def set_parent_death_signal(sig: int = signal.SIGKILL, *, expected_parent: int = 0) -> bool:
    """Asks Linux to send ``sig`` to this process when its parent dies.

    Args:
        sig: the signal to receive.
        expected_parent: the pid the parent had; if it is already gone (the
            parent died before the call), the process exits at once.

    Returns:
        False where the call is not available (not Linux).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent and os.getppid() != expected_parent:
        os._exit(1)  # the parent died before the signal was armed
    return True


def exit_cause(returncode: int, killed_for: str = "") -> tuple[str, int]:
    """``(cause, exit_code)`` of a process that ended with ``returncode``; ``killed_for``
    is the cause when the host killed it on purpose."""
    if killed_for:
        return killed_for, _code(returncode)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"worker process died of {name}", _code(returncode)
    if returncode == 0:
        return "worker process exited", 0
    return f"worker process exited with code {returncode}", _code(returncode)


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def shm_files(session_name: str) -> list[str]:
    return glob.glob(os.path.join(SHM_DIR, f"shoal-{glob.escape(session_name)}*"))


def remove_session(session_dir: str) -> None:
    """Removes the session directory and its shared-memory files; quiet if gone.

    With ``SHOAL_KEEP_SESSION=1`` in the environment the directory (its logs) stays.
    """
    session_name = os.path.basename(os.path.normpath(session_dir))
    for path in shm_files(session_name):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if os.environ.get(KEEP_SESSION_ENV, "") not in ("", "0"):
        return
    shutil.rmtree(session_dir, ignore_errors=True)


def kill_group(pgid: int) -> None:
    """SIGKILLs a process group (a daemon started in its own session, and its workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def read_ready_line(fd: int, process: subprocess.Popen[bytes], session_dir: str,
                    timeout_s: float) -> dict[str, Any]:
    """Reads a node daemon's ready line (one JSON object) from ``fd``, then closes ``fd``.

    Raises:
        RuntimeError: the daemon exited first, or wrote nothing within ``timeout_s``;
            the message ends with the tail of its log.
    """
    deadline = time.monotonic() + timeout_s
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the shoal node daemon did not start within "
                                   f"{timeout_s}s{log_tail(session_dir)}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    time.sleep(0.05)  # let it finish dying, for its exit code and its log
                    raise RuntimeError(f"the shoal node daemon exited at startup (code "
                                       f"{process.poll()}){log_tail(session_dir)}")
                data += chunk
    finally:
        os.close(fd)
    info: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
    return info


def log_tail(session_dir: str, lines: int = 20) -> str:
    """``"; its log ends with: ..."`` for an error message, or "" without a log."""
    try:
        with open(os.path.join(session_dir, "logs", "node.log"), encoding="utf-8",
                  errors="replace") as f:
            tail = f.readlines()[-lines:]
    except OSError:
        return ""
    return "; its log ends with:\n" + "".join(tail)
