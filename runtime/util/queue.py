"""``Queue``: a first-in, first-out queue shared by tasks and actors (Ray's
``ray.util.queue.Queue``).

Theory of operation
-------------------
The items live in one actor (``_QueueActor``), an async actor holding an
``asyncio.Queue``: a blocking ``put`` on a full queue (or ``get`` on an empty
one) is a coroutine awaiting room (or an item), with ``asyncio.wait_for`` for
the timeout, so a waiting call never holds the actor: other callers' puts and
gets run meanwhile, and the waiter wakes as soon as the queue changes. That is
what keeps a consumer blocked in ``get`` from deadlocking the producer that
would feed it (and in the simulator, it waits on virtual time).

The ``Queue`` object is a thin, picklable client: pass it to tasks and actors.
Errors: ``Empty``/``Full`` (subclasses of the standard library's ``queue.Empty``
/``queue.Full``) when a non-blocking call cannot proceed or a blocking one
times out; they reach the caller through the actor call's error, which is an
instance of the same class.
"""

from __future__ import annotations

import asyncio
import queue as std_queue
from collections.abc import Iterable
from typing import Any

from shoal.runtime.api.api import get, kill
from shoal.runtime.api.remote_function import remote

__all__ = ["Empty", "Full", "Queue"]


class Empty(std_queue.Empty):
    """The queue had no item (a non-blocking get, or a get that timed out)."""


class Full(std_queue.Full):
    """The queue had no room (a non-blocking put, or a put that timed out)."""


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, int | float) or timeout < 0):
        raise ValueError(f"'timeout' must be a non-negative number or None, got {timeout!r}")


class _QueueActor:
    """The actor that holds the items (see the module docstring)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except TimeoutError:
            raise Full(f"the queue stayed full for {timeout} s") from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout} s") from None

    async def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full ({self.maxsize} items)") from None

    async def put_nowait_batch(self, items: list[Any]) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"cannot add {len(items)} items to a queue holding "
                       f"{self.queue.qsize()} of at most {self.maxsize}")
        for item in items:
            self.queue.put_nowait(item)

    async def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    async def get_nowait_batch(self, num_items: int) -> list[Any]:
        if num_items > self.queue.qsize():
            raise Empty(f"cannot get {num_items} items from a queue holding "
                        f"{self.queue.qsize()}")
        return [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    """A FIFO queue backed by an actor; safe to share between tasks and actors.

    Args:
        maxsize: at most this many items (0: unbounded).
        actor_options: options for the queue's actor (e.g. ``num_cpus``, ``name``).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"Queue(maxsize=...) must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor = remote(_QueueActor).options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds now."""
        return int(get(self.actor.qsize.remote()))

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Adds ``item``; blocks (up to ``timeout`` s) while full unless ``block`` is False.

        Raises:
            Full: no room (at once when not blocking, or after ``timeout``).
            ValueError: a negative timeout.
        """
        if not block:
            self.put_nowait(item)
            return
        _check_timeout(timeout)
        get(self.actor.put.remote(item, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None
                        ) -> None:
        """``put`` for async code: awaits the actor call instead of blocking."""
        _check_timeout(timeout)
        if not block:
            await self.actor.put_nowait.remote(item)
        else:
            await self.actor.put.remote(item, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Takes the oldest item; blocks (up to ``timeout`` s) while empty unless ``block``
        is False.

        Raises:
            Empty: no item (at once when not blocking, or after ``timeout``).
            ValueError: a negative timeout.
        """
        if not block:
            return self.get_nowait()
        _check_timeout(timeout)
        return get(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for async code: awaits the actor call instead of blocking."""
        _check_timeout(timeout)
        if not block:
            return await self.actor.get_nowait.remote()
        return await self.actor.get.remote(timeout)

    def put_nowait(self, item: Any) -> None:
        """Adds ``item`` or raises ``Full`` at once."""
        get(self.actor.put_nowait.remote(item))

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Adds every item, or none and raises ``Full`` if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("put_nowait_batch() takes an iterable of items")
        get(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """Takes the oldest item or raises ``Empty`` at once."""
        return get(self.actor.get_nowait.remote())

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Takes the ``num_items`` oldest items, or none and raises ``Empty`` if fewer are
        there."""
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items must be an int >= 0, got {num_items!r}")
        return list(get(self.actor.get_nowait_batch.remote(num_items)))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Stops the queue's actor (its items are lost); the queue is unusable after."""
        if self.actor is not None:
            kill(self.actor)
        self.actor = None
