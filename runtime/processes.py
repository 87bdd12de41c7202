"""Process plumbing shared by the driver, the node daemon and the workers.

* ``python_command``: how a host process starts another shoal process:
  ``python -P -m shoal.runtime.<module>``; ``-P`` keeps the current directory
  off ``sys.path``, so a checkout's ``shoal/`` folder cannot shadow the package.
* ``set_parent_death_signal``: Linux ``PR_SET_PDEATHSIG`` through ctypes, so a
  worker dies with its daemon even when the daemon is killed with SIGKILL.
* ``exit_cause``: a process's return code, in words.
* ``remove_session``: removes a session directory and the node's shared-memory
  files (``/dev/shm/shoal-<session name>*``).
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import sys

PR_SET_PDEATHSIG = 1
SHM_DIR = "/dev/shm"
KEEP_SESSION_ENV = "SHOAL_KEEP_SESSION"


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
