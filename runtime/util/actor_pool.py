"""``ActorPool``: spread calls over a fixed set of actors (Ray's ``ray.util.ActorPool``).

Theory of operation
-------------------
The pool keeps each actor either idle or busy with exactly one call. ``submit(fn,
value)`` runs ``fn(actor, value)`` (which must return the ref of one actor call)
on an idle actor, or queues the pair until an actor comes back. Every accepted
call gets a sequence number in submission order; results are taken back either
in that order (``get_next``) or as they finish (``get_next_unordered``). Taking
a result back frees its actor, which starts the oldest queued submission.
``map``/``map_unordered`` submit every value and return a generator of results.

Mixing the two orders is allowed only in one direction, as in Ray:
``get_next`` after ``get_next_unordered`` raises ``ValueError`` when the result
it would wait for was already taken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shoal.runtime.api.api import get, wait

__all__ = ["ActorPool"]

_TIMEOUT = "Timed out waiting for result"


def _key(ref: Any) -> Any:
    """Calls with several returns give a list of refs: key them by the tuple."""
    return tuple(ref) if isinstance(ref, list) else ref


def _first_ref(ref: Any) -> Any:
    return ref[0] if isinstance(ref, list) else ref


class ActorPool:
    """Runs calls on a pool of actors, one call per actor at a time.

    Args:
        actors: the actor handles the pool owns (more may be ``push``-ed later).
    """

    def __init__(self, actors: list[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._busy: dict[Any, tuple[int, Any]] = {}  # call's key -> (sequence, actor)
        self._by_sequence: dict[int, Any] = {}  # sequence -> call's ref(s), not yet taken
        self._queued: deque[tuple[Callable[[Any, Any], Any], Any]] = deque()
        self._next_sequence = 0
        self._next_to_return = 0

    # --- submitting -----------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Runs ``fn(actor, value)`` on an idle actor, or queues it until one is free.

        ``fn`` must return the ref of one call on the actor it is given, e.g.
        ``lambda a, v: a.double.remote(v)``.
        """
        if not self._idle:
            self._queued.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        self._busy[_key(ref)] = (self._next_sequence, actor)
        self._by_sequence[self._next_sequence] = ref
        self._next_sequence += 1

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Submits ``fn`` for every value; yields the results in the order of ``values``."""
        self._drain()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any],
                      values: Iterable[Any]) -> Iterator[Any]:
        """Submits ``fn`` for every value; yields the results as they finish."""
        self._drain()
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next_unordered)

    def _drain(self) -> None:
        # Results of earlier submissions would otherwise come out of this map's generator.
        while self.has_next():
            self.get_next_unordered()

    def _results(self, take: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield take()

    # --- taking results back -------------------------------------------------------

    def has_next(self) -> bool:
        """Whether some submitted call's result has not been taken back yet."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order (waiting up to ``timeout`` seconds).

        Raises:
            StopIteration: nothing was submitted that was not taken back.
            ValueError: that result was already taken by ``get_next_unordered``.
            TimeoutError: it did not finish in time (with ``ignore_if_timedout`` the call
                is given up on, its actor freed, and the error says so).
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        sequence = self._next_to_return
        if sequence not in self._by_sequence:
            raise ValueError("It is not allowed to call get_next() after "
                             "get_next_unordered() took the result it would return.")
        ref = self._by_sequence[sequence]
        timed_out = timeout is not None and not wait([_first_ref(ref)], timeout=timeout)[0]
        if timed_out and not ignore_if_timedout:
            raise TimeoutError(_TIMEOUT)
        self._take(ref)
        if timed_out:
            raise TimeoutError(f"{_TIMEOUT}. The task {ref} has been ignored.")
        return get(ref)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Some finished result, whichever comes first (waiting up to ``timeout`` seconds).

        Raises:
            StopIteration: nothing was submitted that was not taken back.
            TimeoutError: nothing finished in time.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        refs = {_first_ref(self._by_sequence[seq]): seq for seq, _ in self._busy.values()}
        done, _ = wait(list(refs), num_returns=1, timeout=timeout)
        if not done:
            raise TimeoutError(_TIMEOUT)
        ref = self._by_sequence[refs[done[0]]]
        self._take(ref)
        return get(ref)

    def _take(self, ref: Any) -> None:
        sequence, actor = self._busy.pop(_key(ref))
        del self._by_sequence[sequence]
        self._next_to_return = max(self._next_to_return, sequence + 1)
        self._return_actor(actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._queued:
            fn, value = self._queued.popleft()
            self.submit(fn, value)

    # --- the actors -------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission waits for one."""
        return bool(self._idle) and not self._queued

    def pop_idle(self) -> Any | None:
        """Takes an idle actor out of the pool (None if there is none free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Adds an actor to the pool (it starts a queued submission at once, if any).

        Raises:
            ValueError: the actor is in the pool already.
        """
        busy = [a for _, a in self._busy.values()]
        if any(actor is a or actor == a for a in [*self._idle, *busy]):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
