"""Fast worker starts: a pre-imported process that forks workers for its node daemon.

Theory of operation
-------------------
Starting ``python -m shoal.runtime.worker`` costs a few hundred milliseconds,
nearly all of it interpreter start-up and imports. So the node daemon, once it
has imported what it shares with workers (trio, the wire format, the local
transport) and BEFORE it starts any thread (no trio run, no gRPC yet), forks a
*zygote* (``fork_zygote``): a single-threaded copy of itself that closes every
inherited file descriptor but its end of a socket pair, imports what a worker
needs on top (the API, which the daemon's ``import shoal`` skipped, the core
worker machine: on the other core, while the daemon imports its own kernels)
and waits for requests. For each ``spawn`` the zygote forks again;
the child points stdin at ``/dev/null`` and stdout/stderr at the worker's log,
changes to the worker's directory and runs ``shoal.runtime.worker.main``. The
zygote never starts a thread, so forking it is safe, and a worker is up in
milliseconds.

Protocol (JSON lines on the socket pair):
  daemon -> zygote: ``{"spawn": worker_id, "argv": [...], "log": path, "cwd": dir}``
  zygote -> daemon: ``{"spawned": worker_id, "pid": n}``, or
                    ``{"failed": worker_id, "error": text}``, and for every child
                    that ends ``{"exited": pid, "returncode": rc}`` (negative: a signal).

Lifetimes: the zygote dies with the daemon (``PR_SET_PDEATHSIG`` and end of file
on the socket); each worker dies with the zygote (its own ``PR_SET_PDEATHSIG``,
armed against the zygote, which is its parent) and with its daemon socket. If
the zygote dies, ``ZygoteClient`` reports every worker it had forked as exited
and the daemon falls back to starting workers with a plain ``exec``.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

import trio
from shoal.runtime.processes import set_parent_death_signal


class ZygoteError(Exception):
    """The zygote could not start a worker (or is gone)."""


class ZygoteClient:
    """The daemon's handle on its zygote (trio side)."""

    def __init__(self, pid: int, control: socket.socket, log: Any) -> None:
        self.pid = pid
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(control))
        self._log = log
        self._spawns: dict[str, tuple[trio.Event, list[Any]]] = {}
        self._exits: dict[int, tuple[trio.Event, list[int]]] = {}
        self.alive = True
        self._closing = False
        self._send_lock = trio.Lock()  # spawns come from several tasks at once

    async def spawn(self, worker_id: str, argv: list[str], log_path: str, cwd: str) -> int:
        """Forks a worker; returns its pid.

        Raises:
            ZygoteError: the zygote refused or is gone.
        """
        if not self.alive:
            raise ZygoteError("the zygote is gone")
        event, result = trio.Event(), list[Any]()
        self._spawns[worker_id] = (event, result)
        request = {"spawn": worker_id, "argv": argv, "log": log_path, "cwd": cwd}
        try:
            async with self._send_lock:
                await self._stream.send_all((json.dumps(request) + "\n").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._spawns.pop(worker_id, None)
            raise ZygoteError(f"cannot reach the zygote: {exc!r}") from exc
        await event.wait()
        if not result or isinstance(result[0], str):
            raise ZygoteError(result[0] if result else "the zygote is gone")
        pid: int = result[0]
        self._exits.setdefault(pid, (trio.Event(), []))
        return pid

    async def wait(self, pid: int) -> int:
        """Waits until the worker ``pid`` ends; returns its return code."""
        event, code = self._exits.setdefault(pid, (trio.Event(), []))
        await event.wait()
        self._exits.pop(pid, None)
        return code[0]

    async def run(self) -> None:
        """Reads the zygote's reports until it is gone, then fails what waits on it."""
        buffer = b""
        try:
            while chunk := await self._stream.receive_some(65_536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._on_report(json.loads(line))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ValueError):
            pass
        finally:
            self._gone()

    def _on_report(self, report: dict[str, Any]) -> None:
        if "spawned" in report or "failed" in report:
            waiting = self._spawns.pop(str(report.get("spawned") or report.get("failed")), None)
            if waiting is not None:
                waiting[1].append(report["pid"] if "spawned" in report else report["error"])
                waiting[0].set()
        elif "exited" in report:
            event, code = self._exits.setdefault(report["exited"], (trio.Event(), []))
            code.append(int(report["returncode"]))
            event.set()

    def _gone(self) -> None:
        if self.alive and not self._closing:
            self._log.warning("zygote.gone")
        self.alive = False
        for event, _ in self._spawns.values():
            event.set()
        self._spawns.clear()
        for event, code in self._exits.values():
            if not event.is_set():
                code.append(-signal.SIGKILL)  # it died with the zygote (PR_SET_PDEATHSIG)
                event.set()

    async def aclose(self) -> None:
        """Ends the zygote (its workers die with it) and reaps it; idempotent."""
        if self._closing:
            return
        self._closing = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
            with trio.move_on_after(5.0):
                while not _reaped(self.pid):
                    await trio.sleep(0.002)


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) != (0, 0)
    except ChildProcessError:
        return True


def fork_zygote(log: Any) -> tuple[int, socket.socket] | None:
    """Forks the zygote from the calling process, which must not have started threads.

    Returns:
        The zygote's pid and the daemon's end of the socket pair (hand both to
        ``ZygoteClient`` inside the trio run), or None if ``fork`` failed.
    """
    ours, theirs = socket.socketpair()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        ours.close()
        theirs.close()
        log.warning("zygote.fork_failed", error=str(exc))
        return None
    if pid == 0:  # the zygote
        code = 1
        try:
            ours.close()
            set_parent_death_signal(signal.SIGKILL, expected_parent=parent)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _close_fds_but(theirs.fileno())
            import shoal.runtime.worker  # once here, while the daemon goes on

            shoal._bind_api()  # the daemon's ``import shoal`` skipped the API; users need it

            # What every worker inherits is never garbage: keep the collector (and its
            # writes to the objects' headers, which un-share their pages) off it.
            gc.freeze()
            serve(theirs.fileno())
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


def _close_fds_but(keep: int) -> None:
    """Closes every inherited descriptor (the daemon's pipes, sockets...) but 0-2 and ``keep``."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


# --- the zygote process ----------------------------------------------------------------


def _child(request: dict[str, Any], parent_pid: int, closing: list[int]) -> None:
    """In a forked child: becomes the worker. Never returns."""
    code = 1
    try:
        for fd in closing:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        from shoal.runtime import worker

        argv = [*request["argv"], "--parent-pid", str(parent_pid)]
        sys.argv = ["shoal.runtime.worker", *argv]
        code = worker.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  # report it in the worker's log, then exit
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _send(control: socket.socket, report: dict[str, Any]) -> None:
    control.sendall((json.dumps(report) + "\n").encode())


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


def _spawn(control: socket.socket, request: dict[str, Any], wake_fds: list[int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        _send(control, {"failed": request["spawn"], "error": f"fork failed: {exc}"})
        return
    if pid == 0:
        _child(request, os.getppid(), [control.fileno(), *wake_fds])
    _send(control, {"spawned": request["spawn"], "pid": pid})


def serve(control_fd: int) -> None:
    """The zygote's loop: spawn on request, report exits, end with the daemon."""
    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    buffer = b""
    while True:
        readable, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(control)
        if control.fileno() in readable:
            chunk = control.recv(65_536)
            if not chunk:
                return  # the daemon is gone; our children die with us
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                _spawn(control, json.loads(line), [wake_r, wake_w])
