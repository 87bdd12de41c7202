"""Baton-threaded user code: real threads that take turns with the event loop.

User code (a driver's ``main``, later task bodies and actor methods) is ordinary
blocking Python. Each piece runs in its own thread, but only the holder of the
baton runs: the loop hands the baton to a thread and waits; the thread runs
until it blocks on a ``SimFuture`` (a ``get``, a ``sleep`` on shoal's clock) or
finishes, and then hands the baton back. Exactly one thread runs at any
moment, so a run is as deterministic as the event loop that schedules the
turns, and unmodified blocking programs run under simulation.

When a simulation ends, threads still blocked are resumed with ``killed`` set;
their blocking call raises ``SimulationExit`` (a ``BaseException``) so they
unwind, and the loop joins them: no thread outlives its simulation.

A ``UserThread`` is a turn-taking identity, not an OS thread: the baton keeps
a pool of OS threads and runs each user thread on an idle one (starting and
joining an OS thread per task costs ~130 us, several times a baton hand-off).
Each run gets a fresh ``contextvars.Context`` and sets its own thread-locals,
so nothing of one user thread is visible to the next on the same OS thread.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

from shoal.sim.engine import Engine

_local = threading.local()


def _closed_gate() -> threading.Lock:
    """A hand-off gate: ``release`` lets exactly one ``acquire`` through.

    Every gate here is opened and passed in strict alternation (the loop gives a
    thread its turn and waits; the thread hands it back and waits), so a plain lock,
    taken at creation, serves as a semaphore of one. ``threading.Semaphore`` is Python
    code around a ``Condition`` that allocates a lock per wait: the gates are on every
    turn of every task, and the lock's C ``acquire``/``release`` cost far less.
    Opening an open gate raises ``RuntimeError``: a broken alternation shows at once.
    """
    gate = threading.Lock()
    gate.acquire()
    return gate


class SimulationExit(BaseException):
    """Raised inside user code blocked when its simulation ends; never catch it."""


class NotInSimulation(RuntimeError):
    """A simulation-only call was made outside a simulation's user thread."""


class SimFuture:
    """A value that the event loop will supply to blocked user threads."""

    __slots__ = ("done", "value", "error", "_waiters")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._waiters: list[UserThread] = []


class UserThread:
    """One thread of user code and its turn-taking state."""

    def __init__(self, baton: Baton, fn: Callable[[], Any], name: str) -> None:
        self.baton = baton
        self.name = name
        self.turn = _closed_gate()
        self.finished = False
        self.killed = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.pending_error: BaseException | None = None  # raised at its next block
        self.blocked_on: SimFuture | None = None
        self._fn = fn

    def body(self, on_finish: Callable[[], None]) -> None:
        """Runs on a pooled OS thread: waits for its first turn, runs, hands back."""
        self.turn.acquire()
        _local.thread = self
        try:
            if not self.killed:
                self.result = self._fn()
        except SimulationExit:
            pass
        except BaseException as exc:  # reported to whoever waits for this thread
            self.error = exc
        finally:
            _local.thread = None
            self._fn = None  # type: ignore[assignment]  # drop the closure (and its refs)
            self.finished = True
            on_finish()  # before the hand-back: the loop may reuse this OS thread at once
            self.baton.loop_turn.release()


class _PooledThread:
    """An OS thread that runs user threads one after another."""

    def __init__(self, baton: Baton) -> None:
        self._baton = baton
        self._assigned = _closed_gate()
        self._next: UserThread | None = None
        self.thread = threading.Thread(target=self._loop, name="shoal-sim", daemon=True)
        self.thread.start()

    def run(self, user: UserThread) -> None:
        self._next = user
        self._assigned.release()

    def stop(self) -> None:
        self._next = None
        self._assigned.release()
        self.thread.join()

    def _loop(self) -> None:
        while True:
            self._assigned.acquire()
            user = self._next
            if user is None:
                return
            self.thread.name = f"shoal-sim-{user.name}"
            contextvars.Context().run(user.body, self._on_finish)

    def _on_finish(self) -> None:
        self._baton.idle.append(self)


class Baton:
    """Schedules user threads as events of an ``Engine``, one at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop_turn = _closed_gate()
        self.threads: dict[UserThread, None] = {}  # unfinished, in spawn order
        self.on_finished: list[Callable[[UserThread], None]] = []
        self.before_block: list[Callable[[UserThread], None]] = []
        self.idle: list[_PooledThread] = []  # OS threads with no user thread
        self._pool: list[_PooledThread] = []

    def spawn(self, fn: Callable[[], Any], name: str) -> UserThread:
        """Starts ``fn`` in a user thread at the current virtual time."""
        thread = UserThread(self, fn, name)
        self.threads[thread] = None
        if self.idle:
            runner = self.idle.pop()
        else:
            runner = _PooledThread(self)
            self._pool.append(runner)
        runner.run(thread)
        self.engine.call_at(self.engine.now, lambda: self._resume(thread))
        return thread

    def _resume(self, thread: UserThread) -> None:
        if thread.finished:
            return
        thread.turn.release()
        self.loop_turn.acquire()  # until the thread blocks or finishes
        if thread.finished:
            self.threads.pop(thread, None)
            for callback in self.on_finished:
                callback(thread)

    # --- called from user threads ----------------------------------------

    def block(self, future: SimFuture) -> Any:
        """Hands the baton back until ``future`` resolves; returns its value or raises."""
        thread = current_thread()
        for hook in self.before_block:
            hook(thread)
        if thread.killed:
            raise SimulationExit()
        if not future.done and thread.pending_error is None:
            future._waiters.append(thread)
            thread.blocked_on = future
            self.loop_turn.release()
            thread.turn.acquire()
            thread.blocked_on = None
            if thread.killed:
                raise SimulationExit()
        if thread.pending_error is not None:
            error: BaseException | None = thread.pending_error
            thread.pending_error = None
            try:
                raise error  # type: ignore[misc]
            finally:
                error = None  # no error -> traceback -> frame -> error cycle
        if future.error is not None:
            raise future.error
        return future.value

    # --- called from the loop --------------------------------------------

    def resolve(self, future: SimFuture, value: Any = None, error: BaseException | None = None) -> None:
        """Completes ``future`` and schedules every thread blocked on it, in blocking order."""
        if future.done:
            return
        future.done, future.value, future.error = True, value, error
        for thread in future._waiters:
            self.engine.call_at(self.engine.now, lambda t=thread: self._resume(t))
        future._waiters.clear()

    def kill(self, thread: UserThread) -> None:
        """Unwinds one thread now (its process died). Call from the loop only."""
        if thread.finished:
            return
        thread.killed = True
        if thread.blocked_on is not None and thread in thread.blocked_on._waiters:
            thread.blocked_on._waiters.remove(thread)
        thread.turn.release()
        self.loop_turn.acquire()
        self.threads.pop(thread, None)

    def interrupt(self, thread: UserThread, error: BaseException) -> None:
        """Raises ``error`` in ``thread`` at its current or next blocking call."""
        if thread.finished:
            return
        thread.pending_error = error
        future = thread.blocked_on
        if future is not None and thread in future._waiters:
            future._waiters.remove(thread)
            self.engine.call_at(self.engine.now, lambda: self._resume(thread))

    def sleep_future(self, seconds: float) -> SimFuture:
        future = SimFuture()
        delay_ns = max(0, int(seconds * 1_000_000_000))
        self.engine.call_at(self.engine.now + delay_ns, lambda: self.resolve(future))
        return future

    def shutdown(self) -> None:
        """Unwinds every unfinished thread and joins all of them."""
        for thread in list(self.threads):
            self.kill(thread)
        self.threads.clear()
        for runner in self._pool:
            runner.stop()
        self._pool.clear()
        self.idle.clear()


def current_thread() -> UserThread:
    thread = getattr(_local, "thread", None)
    if thread is None:
        raise NotInSimulation(
            "this call only works inside a program run by shoal.sim.Simulation(...).run(main)")
    return thread
