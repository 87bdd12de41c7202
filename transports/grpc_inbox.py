"""The hand-off from gRPC's threads to trio: one batch per crossing, few wakeups.

gRPC's synchronous API reads frames on its own threads. Each reader thread
decodes a frame into a batch of envelopes and calls ``ThreadInbox.put``, which
appends the batch to a deque under a lock. Trio is woken (``run_sync_soon``)
only when its receiver is parked and no wakeup is already on its way, so a busy
receiver drains many batches per wakeup and a parked one costs one hop per
batch at most.

The inbox is bounded (``batches_max``): a reader thread that finds it full
waits, which stops reading the gRPC stream, and HTTP/2 flow control pushes the
backlog back to the sender (whose own bounded queue then drops the oldest).

Closing: the transport calls ``close()`` when it shuts down; the receiver then
drains what is left and gets ``trio.EndOfChannel``. The receiver may also
``aclose()`` it; later batches are discarded.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import trio
from shoal.kernel.wire import Envelope

Batch = list[Envelope]


class ThreadInbox(trio.abc.ReceiveChannel[Batch]):
    """A trio ``ReceiveChannel`` of envelope batches, fed by any thread."""

    def __init__(self, token: trio.lowlevel.TrioToken, *, batches_max: int) -> None:
        self._token = token
        self._batches_max = batches_max
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._batches: collections.deque[Batch] = collections.deque()
        self._parked: trio.Event | None = None  # the receiver waits on it
        self._wakeup_sent = False
        self._closed = False  # by the transport: EndOfChannel once drained
        self._receiver_closed = False  # by the receiver: ClosedResourceError

    # --- thread side -------------------------------------------------------

    def put(self, batch: Batch) -> bool:
        """Queues one batch; blocks while the inbox is full. Any thread but trio's.

        Returns:
            False if the inbox is closed and the batch was discarded.
        """
        with self._lock:
            while len(self._batches) >= self._batches_max and not self._is_closed():
                self._space.wait()
            if self._is_closed():
                return False
            self._batches.append(batch)
            event = self._parked
            if event is None or self._wakeup_sent:
                return True
            self._wakeup_sent = True
        self._call_in_trio(event.set)
        return True

    def _is_closed(self) -> bool:
        return self._closed or self._receiver_closed

    def _call_in_trio(self, fn: Callable[[], object]) -> None:
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:  # trio is gone: nobody is left to wake
            pass

    # --- trio side ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._batches)

    async def receive(self) -> Batch:
        """The next batch, in arrival order.

        Raises:
            trio.EndOfChannel: the transport closed and every batch was received.
            trio.ClosedResourceError: this channel was closed with ``aclose``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            with self._lock:
                if self._receiver_closed:
                    raise trio.ClosedResourceError("the transport's incoming channel was closed")
                if self._batches:
                    batch = self._batches.popleft()
                    self._space.notify()
                    break
                if self._closed:
                    raise trio.EndOfChannel
                if self._parked is None or self._parked.is_set():
                    self._parked = trio.Event()
                    self._wakeup_sent = False
                event = self._parked
            await event.wait()  # a full checkpoint
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def close(self) -> None:
        """The transport is shutting down: no more batches. Trio thread only."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
            event = self._parked
        if event is not None:
            event.set()

    async def aclose(self) -> None:
        """The receiver is done: later batches are discarded."""
        with self._lock:
            self._receiver_closed = True
            self._batches.clear()
            self._space.notify_all()
            event = self._parked
        if event is not None:
            event.set()
        await trio.lowlevel.checkpoint()
