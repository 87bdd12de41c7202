"""An asyncio event loop on the simulator's virtual time, driven under the baton.

An async actor's calls are coroutines that interleave at their ``await``s on
one event loop (issue #4/#5). In the simulator that loop must be as
deterministic as the rest of the run and must not spend wall-clock time, so
``SimEventLoop`` is a plain asyncio loop (``BaseEventLoop``: the standard ready
queue and timer heap, so ``asyncio.sleep``, ``gather``, ``Event``, ``Queue``...
work unmodified) with two things swapped:

* ``time()`` is the engine's virtual clock, so ``await asyncio.sleep(1)`` takes
  one virtual second and no wall time;
* the poll for I/O (``_BatonSelector.select``) hands the baton back to the
  event loop until the next asyncio timer is due or the loop is woken, instead
  of waiting on file descriptors. There is no I/O to poll: everything that
  wakes the loop comes through ``call_soon_threadsafe`` (a new call from the
  host, a ``concurrent.futures.Future`` the host completed for ``await ref``),
  whose ``_write_to_self`` resolves the ``SimFuture`` the loop thread is
  blocked on.

The loop runs in one baton thread of the actor's process (``run_forever``), so
it takes turns with every other user thread like any of them; blocking API
calls made inside a coroutine (``shoal.get``, ``shoal.sim.api.sleep``) block the
whole loop, as they block a real async actor's loop. Asyncio's own scheduling
is FIFO over callbacks and timers ordered by due time then by the order they
were set, so a run replays exactly from its seed. ``run_in_executor`` would use
real threads: do not use it in simulated programs.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from shoal.sim.baton import Baton, SimFuture


class _BatonSelector:
    """What the loop polls between rounds: the baton, until a timer is due or a wakeup."""

    def __init__(self, baton: Baton) -> None:
        self._baton = baton
        self._woken = False
        self._waiting: SimFuture | None = None

    def select(self, timeout: float | None) -> list[Any]:
        """Blocks the loop's thread (handing the baton back) for ``timeout`` virtual
        seconds at most (None: until woken); returns no I/O events."""
        if self._woken or timeout == 0:
            self._woken = False
            return []
        baton, engine = self._baton, self._baton.engine
        future = SimFuture()
        if timeout is not None:
            # Rounded up so the due timer is due when the loop looks again.
            delay_ns = max(1, math.ceil(timeout * 1e9))
            engine.call_at(engine.now + delay_ns, lambda: baton.resolve(future))
        self._waiting = future
        try:
            baton.block(future)
        finally:
            self._waiting = None
            self._woken = False
        return []

    def wake(self) -> None:
        """Ends the current (or the next) ``select`` at once. Any thread, under the baton."""
        self._woken = True
        waiting = self._waiting
        if waiting is not None:
            self._baton.resolve(waiting)

    def close(self) -> None:
        """Nothing to release: there are no file descriptors."""


class SimEventLoop(asyncio.BaseEventLoop):
    """An asyncio loop whose clock is virtual and whose idle wait hands the baton back."""

    def __init__(self, baton: Baton) -> None:
        super().__init__()
        self._engine = baton.engine
        self._selector = _BatonSelector(baton)
        self._clock_resolution = 1e-9  # the engine counts nanoseconds

    def time(self) -> float:
        """Virtual seconds since the simulation started."""
        return float(self._engine.now) / 1e9

    def _process_events(self, event_list: list[Any]) -> None:
        """No file descriptors are polled, so there are never I/O events."""

    def _write_to_self(self) -> None:
        self._selector.wake()

    def close(self) -> None:
        super().close()
        self._selector.close()
