"""The discrete-event engine: virtual time, processes, timers, message delivery.

The engine owns a heap of ``(time_ns, seq, kind, a, b, c)`` entries; ``seq`` is
a global counter, so entries due at the same instant pop in the order they were
scheduled. Popping an entry hands one input to one kernel, records it in the
trace, checks that kernel's invariants, lets observers (the workload's
invariant checkers) look at the step, and carries out the effects in order.

A simulated process holds one kernel. Crashing it drops the kernel, its timers
and every message addressed to it that is still in flight; restarting it builds
a new kernel with the next ``boot`` number from the process's durable store
(which survives crashes, like a disk). The engine makes no domain decisions:
those belong to the kernels, the network model and the fault plan.
"""

from __future__ import annotations

import gc
import heapq
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol

from shoal.kernel.buggify import Buggify
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Send,
    SetTimer,
    Started,
    StoreDelete,
    StorePut,
    TimerFired,
)
from shoal.sim.network import Network
from shoal.sim.trace import Trace

_DELIVER, _TIMER, _CALL = 0, 1, 2
_GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections
_TIMER_INPUTS_MAX = 4096  # TimerFired inputs kept for reuse (keys naming ids never repeat)

Store = dict[str, dict[bytes, bytes]]


class Kernel(Protocol):
    def handle(self, event: Any, *, now: int) -> list[Msg]: ...
    def check_invariants(self) -> None: ...


KernelFactory = Callable[[int, Store, Buggify], Kernel]
Observer = Callable[["SimProcess", Msg, list[Msg]], None]
EffectHandler = Callable[["SimProcess", Msg], None]


class SimulationCrash(Exception):
    """A kernel raised: a bug in shoal, reported as a violation of the run."""


@dataclass(slots=True, eq=False)
class SimProcess:
    address: Address
    factory: KernelFactory
    buggify: Buggify
    kernel: Kernel | None = None
    boot: int = 0
    timers: dict[str, int] = field(default_factory=dict)
    store: Store = field(default_factory=dict)
    restartable: bool = True  # False for processes whose parent restarts them (workers)

    @property
    def alive(self) -> bool:
        return self.kernel is not None


class Engine:
    """Runs kernels on virtual time. One instance per simulated run."""

    def __init__(self, rng: Random, network: Network, trace: Trace, *, check: bool = True):
        self.now = 0
        self.rng = rng
        self.network = network
        self.trace = trace
        self.check = check
        self.processes: dict[Address, SimProcess] = {}
        self.observers: list[Observer] = []
        self.effect_handlers: dict[type, EffectHandler] = {}
        self.crash_hooks: list[Callable[[Address], None]] = []
        self._heap: list[tuple[int, int, int, Any, Any, Any]] = []
        self._trace_batch = trace.batch
        self._timer_inputs: dict[str, TimerFired] = {}  # by key, bounded by _TIMER_INPUTS_MAX
        self._trace_batch_events = trace.batch_events
        self._seq = 0
        self.stopped = False

    # --- processes -------------------------------------------------------

    def add_process(self, address: Address, factory: KernelFactory, buggify: Buggify) -> SimProcess:
        proc = SimProcess(address=address, factory=factory, buggify=buggify)
        self.processes[address] = proc
        return proc

    def start(self, address: Address) -> None:
        proc = self.processes[address]
        if proc.alive:
            return
        proc.boot += 1
        proc.kernel = proc.factory(proc.boot, proc.store, proc.buggify)
        self._step(proc, Started())

    def crash(self, address: Address) -> None:
        proc = self.processes[address]
        if not proc.alive:
            return
        proc.kernel = None
        proc.timers.clear()
        self.trace.note(self.now, "crash", str(address))
        for hook in self.crash_hooks:
            hook(address)

    def inject(self, address: Address, event: Msg) -> bool:
        """Hands a host input (not a network message) to a live process now."""
        proc = self.processes.get(address)
        if proc is None or proc.kernel is None:
            return False
        self._step(proc, event)
        return True

    # --- scheduling ------------------------------------------------------

    def _push(self, at_ns: int, kind: int, a: Any, b: Any, c: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_ns, self._seq, kind, a, b, c))

    def call_at(self, at_ns: int, fn: Callable[[], None]) -> None:
        """Runs ``fn`` (a simulator action: a fault, a check) at virtual time ``at_ns``."""
        self._push(max(at_ns, self.now), _CALL, fn, None, None)

    def send(self, src: Address, dst: Address, msg: Msg) -> None:
        proc = self.processes.get(dst)
        if proc is None:
            return  # nobody lives at that address: the message goes nowhere
        received = Received(src=src, msg=msg)
        now, boot, heap = self.now, proc.boot, self._heap
        for delay in self.network.delays(src.node, dst.node, now):
            self._seq += 1
            heapq.heappush(heap, (now + delay, self._seq, _DELIVER, proc, boot, received))

    @property
    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run_until(self, end_ns: int) -> None:
        """Pops entries until ``end_ns`` (inclusive) or ``stop()``."""
        # Every event allocates a few containers (heap entry, input, effect list), so
        # at the default threshold (700) the cycle collector runs every ~100 events,
        # and its older generations walk every live object of the simulation: that
        # was a third of the run's time. Collect young objects 70x less often instead.
        saved = gc.get_threshold()
        gc.set_threshold(max(saved[0], _GC_YOUNG_THRESHOLD), *saved[1:])
        try:
            self._run_until(end_ns)
        finally:
            gc.set_threshold(*saved)

    def _run_until(self, end_ns: int) -> None:
        heap, pop, step = self._heap, heapq.heappop, self._step
        fired = self._timer_inputs
        while heap and not self.stopped and heap[0][0] <= end_ns:
            at_ns, _, kind, a, b, c = pop(heap)
            self.now = at_ns
            if kind == _DELIVER:
                if a.boot == b and a.kernel is not None:
                    step(a, c)
            elif kind == _TIMER:
                if a.kernel is not None and a.timers.get(c) == b:
                    del a.timers[c]
                    # One immutable TimerFired per key, reused: the same input, built once.
                    event = fired.get(c)
                    if event is None:
                        if len(fired) >= _TIMER_INPUTS_MAX:
                            fired.clear()
                        event = fired[c] = TimerFired(key=c)
                    step(a, event)
            else:
                a()
        if not self.stopped:
            self.now = max(self.now, end_ns)

    def stop(self) -> None:
        self.stopped = True

    # --- one step --------------------------------------------------------

    def _step(self, proc: SimProcess, event: Msg) -> None:
        kernel = proc.kernel
        assert kernel is not None
        now = self.now
        # Trace.record, inlined (once per event): append to the batch, hash it when full.
        batch = self._trace_batch
        batch.append((now, proc.address, event))
        if len(batch) >= self._trace_batch_events:
            self.trace.flush()
        try:
            effects = kernel.handle(event, now=now)
            if self.check:
                kernel.check_invariants()
        except Exception as exc:  # a kernel bug: the seed fails, with the traceback
            raise SimulationCrash(
                f"{proc.address} raised while handling {type(event).__name__}: "
                f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
        for observer in self.observers:
            observer(proc, event, effects)
        if effects:
            self._execute(proc, effects)

    def _execute(self, proc: SimProcess, effects: list[Msg]) -> None:
        # Dispatch on the exact type, most frequent first: cheaper than ``match``'s
        # isinstance chain on the hottest path (these effect classes have no subclasses).
        for effect in effects:
            cls = type(effect)
            if cls is Send:  # ``send``, inlined: most effects are sends
                dst = self.processes.get(effect.dst)
                if dst is None:
                    continue  # nobody lives at that address: the message goes nowhere
                src = proc.address
                received = Received(src=src, msg=effect.msg)
                now, boot, heap = self.now, dst.boot, self._heap
                for delay in self.network.delays(src.node, effect.dst.node, now):
                    self._seq += 1
                    heapq.heappush(heap, (now + delay, self._seq, _DELIVER, dst, boot, received))
            elif cls is SetTimer:
                self._seq += 1
                proc.timers[effect.key] = self._seq
                heapq.heappush(self._heap, (
                    max(effect.at_ns, self.now), self._seq, _TIMER, proc, self._seq, effect.key))
            elif cls is CancelTimer:
                proc.timers.pop(effect.key, None)
            elif cls is StorePut:
                proc.store.setdefault(effect.table, {})[effect.key] = effect.value
            elif cls is StoreDelete:
                proc.store.get(effect.table, {}).pop(effect.key, None)
            else:
                handler = self.effect_handlers.get(cls)
                if handler is None:
                    raise SimulationCrash(
                        f"{proc.address} emitted {cls.__name__}, "
                        "which the simulator does not know how to carry out")
                handler(proc, effect)
