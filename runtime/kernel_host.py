"""The production driver loop: the kernels of one process, fed by one trio task.

Theory of operation
-------------------
A ``KernelLoop`` hosts the kernels of one process (the GCS and the raylet in a
node daemon; one core worker in a driver or a worker) under their addresses.
One trio task (``run``) does everything, in rounds:

1. take the inputs other threads posted (``post_from_thread``: user threads
   hand in batches; at most one wakeup of trio per round, however many posts);
2. turn every timer that is due into a ``TimerFired`` input;
3. drain the inbox: for each ``(address, input)``, stamp ``now`` from
   ``time.monotonic_ns()``, call ``kernel.handle`` and carry out its effects in
   order, with one exhaustive ``match``: ``Send`` goes to the process's router
   (which may post straight back into this inbox, for a kernel of the same
   process), ``SetTimer`` replaces the pending timer of that key,
   ``CancelTimer`` forgets it, ``StorePut``/``StoreDelete`` go to the kernel's
   durable store, and every other effect goes to the process's host handler
   (``StartWorker``, ``ExecuteTask``, ``GetCompleted``...);
4. run the ``after_round`` hooks, then the writes deferred to the round's end
   (``RoundFlush``: a transport that queued envelopes during the round writes
   them all at once, inline when the socket takes them, instead of waking its
   writer task once per envelope);
5. sleep until something is posted or the next timer is due.

A round also runs at once, without waiting for the loop's own task, when a
transport's reader hands in a batch (``run_now``) or another thread posts
(the trio callback of ``post_from_thread``): one pass through trio's scheduler
per batch instead of three (reader, loop, writer). Rounds never nest; a round
asked for during one is left to the loop's task, which also wakes when a round
run elsewhere armed a timer earlier than the one it sleeps toward. A kernel
that raises in such a round is re-raised by the loop's task, not by the
reader or callback that ran it (which may log and absorb a peer's errors).

Timers are keyed like the simulator's: ``(address, key)``; a heap holds
``(at_ns, seq, address, key)`` and a table the live ``seq`` of each key, so a
replaced or cancelled timer's heap entry is skipped when it comes up.

Inline rounds (``inline_rounds=True``: drivers and workers, whose user threads
post inputs and whose direct links have reader threads). A round then runs in
whichever thread holds the loop's lock: the trio thread holds it except while
trio waits for I/O (a trio instrument releases it in ``before_io_wait`` and
takes it back in ``after_io_wait``), so a user thread that posts (a task
submitted, a result handed in) takes the lock (waiting up to
``INLINE_WAIT_S``) and runs the round itself, instead of waking trio: one
thread hop less per call. A direct link's reader thread
(``Connection.run_reader_in_thread``) hands each batch in holding the lock
too. What only trio may do (set a ``trio.Event``, start a task) goes through
``call_in_trio``. The loop's task sleeps at most ``IDLE_TICK_NS`` so that a
timer armed in another thread needs no wakeup unless it is due sooner. A
thread that cannot take the lock (another round runs) leaves its inputs and
wakes trio as before; the lock's holder looks at the posted inputs again once
it lets go, so nothing waits for a round that never comes. Kernels stay
single-threaded: only the lock's holder runs them. A ``KeyboardInterrupt``
that lands in a user thread while it runs a round interrupts that round.

A kernel that raises has a bug: the loop logs it with the input and re-raises,
which ends the process (its peers retransmit to its successor). Drivers make no
decisions: every ``if`` about domain state lives in a kernel.
"""

from __future__ import annotations

import heapq
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Send,
    SetTimer,
    StoreDelete,
    StorePut,
    TimerFired,
)

ROUND_INPUTS_MAX = 4_096  # inputs handled before the loop lets other trio tasks run
IDLE_TICK_NS = 50_000_000  # with inline rounds, the loop's task wakes at least this often
# How long a user thread waits for the loop's lock before it hands its inputs to trio:
# a thread woken by a round (a get answered) posts its next call while trio is still
# finishing that round, which lets go of the lock within microseconds.
INLINE_WAIT_S = 0.000_2

Router = Callable[[Address, Address, Msg], None]
HostEffectHandler = Callable[[Address, Msg], None]


class Kernel(Protocol):
    def handle(self, event: Any, *, now: int) -> list[Msg]: ...


class DurableStore(Protocol):
    def put(self, table: str, key: bytes, value: bytes) -> None: ...
    def delete(self, table: str, key: bytes) -> None: ...


class UnhandledEffect(Exception):
    """A kernel asked for an effect this host cannot carry out (a bug in the host)."""


def _no_host_effects(address: Address, effect: Msg) -> None:
    raise UnhandledEffect(f"{address}: no host handler for {type(effect).__name__} effects")


@dataclass(slots=True, eq=False)
class _Hosted:
    address: Address
    kernel: Kernel
    on_effect: HostEffectHandler
    store: DurableStore | None


class TimerWheel:
    """Pending timers of one process, keyed by ``(address, key)``."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Address, str]] = []
        self._live: dict[tuple[Address, str], int] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def set(self, owner: Address, key: str, at_ns: int) -> None:
        """Arms (or re-arms) the timer ``key`` of ``owner``."""
        self._seq += 1
        self._live[(owner, key)] = self._seq
        heapq.heappush(self._heap, (at_ns, self._seq, owner, key))

    def cancel(self, owner: Address, key: str) -> None:
        self._live.pop((owner, key), None)

    def forget_owner(self, owner: Address) -> None:
        for slot in [slot for slot in self._live if slot[0] == owner]:
            del self._live[slot]

    def next_deadline_ns(self) -> int | None:
        heap = self._heap
        while heap and self._live.get((heap[0][2], heap[0][3])) != heap[0][1]:
            heapq.heappop(heap)  # replaced or cancelled
        return heap[0][0] if heap else None

    def pop_due(self, now_ns: int) -> list[tuple[Address, str]]:
        """The timers due at ``now_ns``, in deadline order (then arming order)."""
        due: list[tuple[Address, str]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            _, seq, owner, key = heapq.heappop(heap)
            if self._live.get((owner, key)) == seq:
                del self._live[(owner, key)]
                due.append((owner, key))
        return due


class RoundFlush:
    """Work deferred to the end of the current round (transports' writes).

    ``call_in_trio`` runs a trio-only action (setting a ``trio.Event``, starting a
    task) from whichever thread runs the round: at once on the loop's thread, else
    handed to it (a round may run in a user thread: see ``KernelLoop``)."""

    def __init__(self) -> None:
        self.active = False
        self._pending: list[Callable[[], None]] = []
        self.call_in_trio: Callable[[Callable[[], object]], None] = _call_now
        self.lock: threading.Lock | None = None  # the loop's, when rounds run inline

    def defer(self, fn: Callable[[], None]) -> bool:
        """Queues ``fn`` for the end of the round; False outside a round (do it now)."""
        if not self.active:
            return False
        self._pending.append(fn)
        return True

    def run(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, []
            for fn in pending:
                fn()


def _call_now(fn: Callable[[], object]) -> None:
    fn()


class _LockWhileRunning:
    """A trio instrument: the loop's thread holds ``lock`` except while trio waits for
    I/O, so a user thread that takes it knows no trio code runs meanwhile."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def before_io_wait(self, timeout: float) -> None:
        self._lock.release()

    def after_io_wait(self, timeout: float) -> None:
        self._lock.acquire()


@dataclass(slots=True, eq=False)
class _External:
    """Inputs posted by other threads, waiting for the next round."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    items: list[tuple[Address, Msg]] = field(default_factory=list)
    wakeup_sent: bool = False
    finished: bool = False  # the loop has stopped: later posts are refused


class KernelLoop:
    """Hosts the kernels of one process on the current trio run (see the module docstring)."""

    def __init__(self, route: Router, *, clock: Callable[[], int] = time.monotonic_ns,
                 log: Any = None, inline_rounds: bool = False) -> None:
        self._route = route
        self._inline = inline_rounds
        self._lock = threading.Lock()  # held by whoever runs kernels (see the docstring)
        self._trio_thread: int | None = None
        self._clock = clock
        self._kernels: dict[Address, _Hosted] = {}
        self._inbox: deque[tuple[Address, Msg]] = deque()
        self._external = _External()
        self._timers = TimerWheel()
        self._wakeup = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.after_round: list[Callable[[], None]] = []
        self.round_flush = RoundFlush()
        self._sleep_until_ns: int | None = None  # the loop task's deadline while it sleeps
        self._sleeping = False
        self._crashed: Exception | None = None
        self.steps = 0
        self.inline_rounds = 0  # rounds run by user threads (introspection)
        self._log = log or structlog.get_logger("shoal.runtime.kernel_host")
        self._trace = _debug_enabled(self._log)

    @property
    def timers(self) -> TimerWheel:
        return self._timers

    def add_kernel(self, address: Address, kernel: Kernel, *,
                   on_effect: HostEffectHandler = _no_host_effects,
                   store: DurableStore | None = None) -> None:
        """Hosts ``kernel`` at ``address`` (post it ``Started()`` to start it)."""
        self._kernels[address] = _Hosted(address, kernel, on_effect, store)

    def remove_kernel(self, address: Address) -> None:
        """Stops hosting a kernel: its timers and queued inputs are dropped."""
        self._kernels.pop(address, None)
        self._timers.forget_owner(address)

    def kernel(self, address: Address) -> Kernel | None:
        hosted = self._kernels.get(address)
        return hosted.kernel if hosted is not None else None

    @property
    def idle(self) -> bool:
        """No input is waiting (from this thread or another)."""
        return not self._inbox and not self._external.items

    def hosts(self, address: Address) -> bool:
        return address in self._kernels

    # --- inputs ------------------------------------------------------------

    def post(self, address: Address, event: Msg, *, wake: bool = True) -> None:
        """Queues one input for a kernel of this process. Trio thread only.

        Args:
            wake: wake the loop's task; False when the caller runs ``run_now`` next.
        """
        self._inbox.append((address, event))
        if wake:
            self._wakeup.set()

    def post_from_thread(self, items: list[tuple[Address, Msg]], *, run: bool = True) -> bool:
        """Queues inputs from any other thread and sees that a round takes them: in
        this thread when inline rounds are on and no kernel runs, else in the loop's
        (one trio wakeup per round at most).

        Args:
            run: False only queues them; the caller calls ``run_posted`` next (after
                releasing locks that the round's host effects may take).

        Returns:
            False if the loop has finished and the inputs were dropped.
        """
        ext = self._external
        with ext.lock:
            if ext.finished:
                return False
            ext.items.extend(items)
        return self.run_posted() if run else True

    def run_posted(self, *, inline: bool = True) -> bool:
        """Has the posted inputs handled: inline if it can (and ``inline``), else by
        waking the loop (which then takes every input posted meanwhile in one round)."""
        if inline and self._inline and self._run_inline():
            return True
        ext = self._external
        with ext.lock:
            if ext.wakeup_sent or self._token is None or not ext.items:
                return not ext.finished  # a wakeup is on its way, or nothing to do
            ext.wakeup_sent = True
            token = self._token
        try:
            token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            return False
        return True

    def _run_inline(self) -> bool:
        """Runs rounds in the calling (non-trio) thread while no kernel runs elsewhere.

        False when another thread holds the lock: if that is a user thread, it looks
        at the posted inputs again once it lets go; the caller wakes the loop anyway.
        """
        lock, ext = self._lock, self._external
        while True:
            if (self._token is None or threading.get_ident() == self._trio_thread
                    or not lock.acquire(timeout=INLINE_WAIT_S)):
                return False
            try:
                if self._crashed is not None or ext.finished:
                    return False
                self._take_external()
                if self._inbox:
                    self._inline_round()
            finally:
                lock.release()
            with ext.lock:  # posted while we held the lock, by a thread that then left
                if not ext.items:
                    return True

    def _inline_round(self) -> None:
        self.inline_rounds += 1
        try:
            self._round()
        except Exception as exc:  # noqa: BLE001  # a kernel's bug: the loop's task raises it
            self._crashed = exc
            self._wake_loop_task()
            return
        if self._inbox:
            self._wake_loop_task()  # over the round's budget: the loop's task goes on
        elif self._sleeping:
            deadline_ns = self._timers.next_deadline_ns()
            if deadline_ns is not None and (self._sleep_until_ns is None
                                            or deadline_ns < self._sleep_until_ns):
                self._wake_loop_task()  # a timer earlier than the one it sleeps toward

    def _wake_loop_task(self) -> None:
        self.call_in_trio(lambda: self._wakeup.set())

    def call_in_trio(self, fn: Callable[[], object]) -> None:
        """Runs ``fn`` on the loop's thread: now if this is it, else as soon as it can."""
        token = self._token
        if token is None or threading.get_ident() == self._trio_thread:
            fn()
            return
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # the loop is gone, and with it whatever fn would have woken

    def _wake(self) -> None:
        self.run_now(external=True)

    def run_now(self, *, external: bool = False) -> None:
        """Runs a round here and now (in a trio task or callback of this loop's thread,
        or a reader thread holding the loop's lock), unless one is running: then the
        loop's task does it (see the module docstring)."""
        if self._trio_thread is not None and threading.get_ident() != self._trio_thread:
            if external:
                self._take_external()
            if self._inbox and not self.round_flush.active and self._crashed is None:
                self._inline_round()
            return
        if self.round_flush.active or self._token is None or self._crashed is not None:
            self._wakeup.set()
            return
        if external:
            self._take_external()
        if self._inbox:
            try:
                self._round()
            except Exception as exc:  # noqa: BLE001  # a kernel's bug: the loop's task raises it
                self._crashed = exc
                self._wakeup.set()
                return
        if self._inbox:
            self._wakeup.set()  # over the round's budget: the loop's task goes on
        elif self._sleeping:
            deadline_ns = self._timers.next_deadline_ns()
            if deadline_ns is not None and (self._sleep_until_ns is None
                                            or deadline_ns < self._sleep_until_ns):
                self._wakeup.set()  # a timer earlier than the one it sleeps toward

    def _round(self) -> None:
        flush = self.round_flush
        flush.active = True
        try:
            self._drain()
            for hook in self.after_round:
                hook()
        finally:
            flush.active = False
        flush.run()

    # --- the loop --------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Runs rounds until cancelled."""
        instrument = None
        if self._inline:
            self._lock.acquire()  # held from now on except while trio waits for I/O
            instrument = _LockWhileRunning(self._lock)
            trio.lowlevel.add_instrument(instrument)
            self.round_flush.call_in_trio = self.call_in_trio
            self.round_flush.lock = self._lock
        self._trio_thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            await self._rounds()
        finally:
            with self._external.lock:
                self._external.finished = True
            if instrument is not None:
                trio.lowlevel.remove_instrument(instrument)
                self._lock.release()

    async def _rounds(self) -> None:
        while True:
            if self._crashed is not None:  # in a round run elsewhere (run_now), whose
                raise self._crashed  # caller (a reader, a trio callback) must not absorb it
            self._take_external()
            for owner, key in self._timers.pop_due(self._clock()):
                self._inbox.append((owner, TimerFired(key=key)))
            if self._inbox:
                self._round()
                await trio.lowlevel.checkpoint()
                continue
            deadline_ns = self._timers.next_deadline_ns()
            if self._inline:  # a round in a user thread wakes it only for a sooner timer
                tick_ns = self._clock() + IDLE_TICK_NS
                deadline_ns = tick_ns if deadline_ns is None else min(deadline_ns, tick_ns)
            self._sleep_until_ns, self._sleeping = deadline_ns, True
            try:
                if deadline_ns is None:
                    await self._wakeup.wait()
                else:
                    delay_s = max(0.0, (deadline_ns - self._clock()) / 1e9)
                    with trio.move_on_after(delay_s):
                        await self._wakeup.wait()
            finally:
                self._sleeping = False
            self._wakeup = trio.Event()

    def _take_external(self) -> None:
        ext = self._external
        with ext.lock:
            items, ext.items = ext.items, []
            ext.wakeup_sent = False
        self._inbox.extend(items)

    def _drain(self) -> None:
        inbox = self._inbox
        for _ in range(ROUND_INPUTS_MAX):
            if not inbox:
                return
            address, event = inbox.popleft()
            hosted = self._kernels.get(address)
            if hosted is None:
                continue  # the kernel stopped (or never was): nobody lives there
            self.step(hosted, event)

    def step(self, hosted: _Hosted, event: Msg) -> None:
        now = self._clock()
        try:
            effects = hosted.kernel.handle(event, now=now)
        except Exception:
            self._log.exception("kernel.crashed", address=str(hosted.address), stimulus=event)
            raise
        self.steps += 1
        if self._trace:
            self._log.debug("kernel.step", address=str(hosted.address), stimulus=event,
                            effects=effects)
        self._carry_out(hosted, effects)

    def _carry_out(self, hosted: _Hosted, effects: list[Msg]) -> None:
        me = hosted.address
        for effect in effects:
            match effect:
                case Send():
                    self._route(me, effect.dst, effect.msg)
                case SetTimer():
                    self._timers.set(me, effect.key, effect.at_ns)
                case CancelTimer():
                    self._timers.cancel(me, effect.key)
                case StorePut():
                    self._store(hosted).put(effect.table, effect.key, effect.value)
                case StoreDelete():
                    self._store(hosted).delete(effect.table, effect.key)
                case _:
                    hosted.on_effect(me, effect)

    @staticmethod
    def _store(hosted: _Hosted) -> DurableStore:
        if hosted.store is None:
            raise UnhandledEffect(f"{hosted.address}: has no durable store")
        return hosted.store


def _debug_enabled(log: Any) -> bool:
    try:
        return bool(log.is_enabled_for(logging.DEBUG))
    except AttributeError:
        return False


def _level(level: str) -> int:
    number = logging.getLevelName(level.upper())
    return number if isinstance(number, int) else logging.WARNING


def _processors() -> list[Any]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.format_exc_info,
        structlog.dev.ConsoleRenderer(colors=False),
    ]


def configure_logging(*, level: str = "WARNING", stream: Any = None) -> None:
    """Sets up structlog for a whole host process (daemon, worker): lines filtered by ``level``."""
    structlog.configure(
        processors=_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )


def private_logger(name: str, *, level: str = "WARNING", stream: Any = None) -> Any:
    """A structlog logger that leaves the global configuration alone (for the driver,
    which is the user's process and may configure structlog itself)."""
    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr), processors=_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
    ).bind(logger=name)
