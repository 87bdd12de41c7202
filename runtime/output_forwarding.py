"""What tasks print in worker processes shows up in the driver (Ray's ``log_to_driver``).

Theory of operation
-------------------
Worker side (``install_in_worker``): ``sys.stdout`` and ``sys.stderr`` become
``_TeeStream``s. Everything written still goes to the original stream (the
worker's log file in the session directory). Each complete line written by a
thread that runs a task is also queued, with the prefix Ray prints
(``(name pid=N)``; ``ip=`` added on a node other than the driver's) and the
task's job. A sender thread takes what is queued as soon as it is woken (a line
was queued; it then gathers every line queued meanwhile), so a loop of prints
costs one envelope per batch, not per line, and a task's last lines leave about
when its result does. Lines written outside tasks (imports, the host's own
logging) stay in the log only.

Where a job's lines go: the driver records its address in the GCS KV
(``JOB_DRIVER_KV``, key = job id) at ``init(log_to_driver=True)``. A worker reads
it once per job, in the sender thread (``_driver_of``), and
remembers it (also when there is none: output of that job then stays in the
log). Lines are sent as ``WorkerOutput`` host messages (``kernel/host_protocol.py``)
over the same transports as kernel messages.

Driver side (``DriverOutput``): the host takes ``WorkerOutput`` before its
kernel and prints each line to its stdout or stderr with the prefix, from a
printer thread (a driver whose stdout is a full pipe must not stall its trio
loop).
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, TextIO

import structlog
from shoal.kernel.gcs.protocol import KvGet, KvPut
from shoal.kernel.host_protocol import OutputLine, WorkerOutput
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import TaskSpec

JOB_DRIVER_KV: Final = "shoal.job_driver"  # KV namespace: job id -> "node|component|worker"
QUEUED_LINES_MAX: Final = 100_000  # beyond this, lines stay in the worker's log only
LINE_CHARS_MAX: Final = 64 * 1024  # a longer line is cut (it still goes whole to the log)
BATCH_LINES: Final = 1000  # lines per WorkerOutput message
JOBS_REMEMBERED: Final = 1024

_log = structlog.get_logger("shoal.runtime.output")


# --- the driver ------------------------------------------------------------------------


def register_driver(kv_call: Callable[[Any], Any], job_id: str, address: Address) -> None:
    """Records where the job's output goes (the driver's core worker)."""
    value = f"{address.node}|{address.component}|{address.worker}".encode()
    kv_call(KvPut(request_id=0, namespace=JOB_DRIVER_KV, key=job_id.encode(), value=value))


class DriverOutput:
    """Prints forwarded lines in the driver, off the trio thread."""

    def __init__(self, stdout: Callable[[], TextIO] | None = None,
                 stderr: Callable[[], TextIO] | None = None) -> None:
        # Looked up at print time: pytest's capsys and user redirections replace sys.stdout.
        self._stdout = stdout or (lambda: sys.stdout)
        self._stderr = stderr or (lambda: sys.stderr)
        self._queue: queue.SimpleQueue[WorkerOutput | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._print_loop, daemon=True,
                                        name="shoal-output")
        self._thread.start()

    def on_message(self, msg: WorkerOutput) -> None:
        """From the trio thread: queue it for the printer."""
        self._queue.put(msg)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(2.0)

    def _print_loop(self) -> None:
        while (msg := self._queue.get()) is not None:
            out, err = self._stdout(), self._stderr()
            try:
                for line in msg.lines:
                    (err if line.stderr else out).write(f"{line.prefix} {line.text}\n")
                out.flush()
                err.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing to print to
                pass


# --- the worker ------------------------------------------------------------------------


class _Pending:
    """Lines waiting to be sent, by job, in order. Any thread appends; trio drains."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: list[tuple[str, OutputLine]] = []
        self.dropped = 0


class _TeeStream(io.TextIOBase):
    """A worker's stdout or stderr: writes through, and queues the lines of tasks."""

    def __init__(self, original: TextIO, is_stderr: bool, forwarder: WorkerOutputForwarder) -> None:
        super().__init__()
        self._original = original
        self._is_stderr = is_stderr
        self._forwarder = forwarder
        self._partial = threading.local()

    def write(self, text: str) -> int:
        written = self._original.write(text)
        spec = self._forwarder.current_task()
        if spec is not None:
            self._queue_lines(spec, text)
        return written if written is not None else len(text)

    def _queue_lines(self, spec: TaskSpec, text: str) -> None:
        head = getattr(self._partial, "text", "")
        parts = (head + text).split("\n")
        self._partial.text = parts.pop()[:LINE_CHARS_MAX]
        if parts:
            self._forwarder.queue(spec, self._is_stderr, parts)

    def flush(self) -> None:
        self._original.flush()

    def fileno(self) -> int:
        return self._original.fileno()

    def isatty(self) -> bool:
        return self._original.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class WorkerOutputForwarder:
    """Queues the lines tasks print and sends them to their jobs' drivers.

    Args:
        me: this worker's core worker (the source of the messages); lines carry
            ``ip=`` (its node) when the job's driver is on another node.
        current_task: the task the calling thread runs, or None.
        in_actor: whether this process hosts an actor (its class names the lines).
        kv_call: a blocking GCS KV call (to read a job's driver).
        send: hands one message to the trio thread for routing (``dst, msg``).
    """

    def __init__(self, me: Address, current_task: Callable[[], TaskSpec | None],
                 in_actor: Callable[[], bool], kv_call: Callable[[Any], Any],
                 send: Callable[[Address, WorkerOutput], None]) -> None:
        self._me = me
        self._pid = os.getpid()
        self.current_task = current_task
        self._in_actor = in_actor
        self._kv_call = kv_call
        self._send = send
        self._pending = _Pending()
        self._drivers: dict[str, Address | None] = {}
        self._resolving = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, daemon=True,
                                        name="shoal-output")
        self._thread.start()

    def queue(self, spec: TaskSpec, is_stderr: bool, texts: list[str]) -> None:
        prefix = f"({display_name(spec.name, self._in_actor())} pid={self._pid})"
        pending = self._pending
        with pending.lock:
            room = QUEUED_LINES_MAX - len(pending.lines)
            if room < len(texts):
                pending.dropped += len(texts) - max(0, room)
                texts = texts[:max(0, room)]
            pending.lines.extend(
                (spec.job_id, OutputLine(prefix=prefix, stderr=is_stderr,
                                         text=t[:LINE_CHARS_MAX])) for t in texts)
        self._wake.set()

    def flush(self) -> None:
        """Wakes the sender now (e.g. a task ended: its last lines should leave)."""
        if self._pending.lines:
            self._wake.set()

    def _send_loop(self) -> None:
        # A thread of its own: the first line of a job needs a KV read (a blocking call),
        # which neither a task thread (mid-print) nor the trio thread may wait for.
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            pending = self._pending
            with pending.lock:
                lines, pending.lines = pending.lines, []
            if lines:
                self._send_lines(lines)

    def _send_lines(self, lines: list[tuple[str, OutputLine]]) -> None:
        by_job: dict[str, list[OutputLine]] = {}
        for job_id, line in lines:
            by_job.setdefault(job_id, []).append(line)
        for job_id, job_lines in by_job.items():
            driver = self._driver_of(job_id)
            if driver is None:
                continue
            if driver.node != self._me.node:
                job_lines = [OutputLine(prefix=f"{line.prefix[:-1]}, ip={self._me.node})",
                                        stderr=line.stderr, text=line.text)
                             for line in job_lines]
            for start in range(0, len(job_lines), BATCH_LINES):
                self._send(driver, WorkerOutput(
                    job_id=job_id, lines=tuple(job_lines[start:start + BATCH_LINES])))

    def _driver_of(self, job_id: str) -> Address | None:
        if job_id in self._drivers:
            return self._drivers[job_id]
        driver: Address | None = None
        try:
            raw = self._kv_call(KvGet(request_id=0, namespace=JOB_DRIVER_KV, key=job_id.encode()))
            if isinstance(raw, bytes):
                node, component, worker = raw.decode().split("|")
                driver = Address(node=node, component=component, worker=worker)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - output then stays in the log; say why once
            _log.warning("output.driver_unknown", job_id=job_id, error=str(exc))
        if len(self._drivers) >= JOBS_REMEMBERED:
            self._drivers.pop(next(iter(self._drivers)))
        self._drivers[job_id] = driver
        return driver


def display_name(task_name: str, in_actor: bool) -> str:
    """Ray prints an actor's class name for its calls, the function's name for tasks.

    Task names are ``module.qualname`` (``module.Class.method`` for actor calls), or
    whatever ``.options(name=...)`` gave.
    """
    parts = task_name.split(".")
    if in_actor and len(parts) >= 2:
        return parts[-2]
    return parts[-1]


def install_in_worker(forwarder: WorkerOutputForwarder) -> None:
    """Makes this process's stdout and stderr forward task lines (call once, at start)."""
    sys.stdout = _TeeStream(sys.stdout, False, forwarder)  # type: ignore[assignment]
    sys.stderr = _TeeStream(sys.stderr, True, forwarder)  # type: ignore[assignment]
