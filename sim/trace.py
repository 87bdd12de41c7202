"""The trace of a simulated run: a hash over every delivered event, and a recent window.

Every input a kernel is handed (a message delivery, a timer, a start) is encoded
canonically with msgpack, as ``(time_ns, address, input)``, and fed to one
sha256. Two runs of the same seed and program must produce the same digest; a
digest differing is a determinism bug.

Recording is on the simulator's hottest path (once per delivered event), so it
only appends the tuple to a batch; a full batch is encoded with one msgpack call
as an array and hashed without the array's header, which leaves exactly the
bytes that encoding each tuple on its own would (a msgpack array is its header
followed by its items), so batching changes the cost and not the digest. Inputs
are immutable messages, so encoding them a little later reads the same values.

The last ``window`` events are kept as objects (formatted only when asked), so a
violation can be shown with the events that led to it.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

import msgspec

from shoal.kernel.ids import NANOS_PER_SECOND
from shoal.kernel.messages import Address, Msg

_BATCH_EVENTS = 2048


def _array_header_len(items: int) -> int:
    """Bytes of msgpack's header of an array of ``items`` (fixarray, array 16, array 32)."""
    return 1 if items < 16 else 3 if items < 1 << 16 else 5


class Trace:
    """Hashes delivered events canonically and remembers the most recent ones."""

    def __init__(self, window: int = 40) -> None:
        self._hash = hashlib.sha256()
        self._encoder = msgspec.msgpack.Encoder()
        # The engine appends to ``batch`` itself (Trace.record inlined on its hottest
        # path) and calls ``flush`` once it holds ``batch_events``.
        self.batch: list[tuple[int, Address, Msg]] = []
        self.batch_events = _BATCH_EVENTS
        self._recent: deque[tuple[int, Address, Msg]] = deque(maxlen=window)
        self._window = window
        self._hashed_events = 0

    def record(self, time_ns: int, address: Address, event: Msg) -> None:
        batch = self.batch
        batch.append((time_ns, address, event))
        if len(batch) >= _BATCH_EVENTS:
            self.flush()

    def flush(self) -> None:
        batch = self.batch
        if not batch:
            return
        encoded = memoryview(self._encoder.encode(batch))
        self._hash.update(encoded[_array_header_len(len(batch)):])
        self._recent.extend(batch[-self._window:])
        self._hashed_events += len(batch)
        batch.clear()

    @property
    def events(self) -> int:
        return self._hashed_events + len(self.batch)

    def note(self, time_ns: int, what: str, detail: Any = None) -> None:
        """Records a simulator decision (a fault, a crash) in the hash and the window."""
        self.record(time_ns, _SIM, _Note(what=what, detail=repr(detail)))

    @property
    def digest(self) -> str:
        self.flush()
        return self._hash.hexdigest()

    def recent_lines(self) -> list[str]:
        recent = [*self._recent, *self.batch][-self._window:]
        return [format_event(t, addr, ev) for t, addr, ev in recent]


class _Note(Msg):
    what: str
    detail: str


_SIM = Address(node="sim", component="driver", worker="faults")


def format_event(time_ns: int, address: Address, event: Msg) -> str:
    return f"t={time_ns / NANOS_PER_SECOND:12.6f}s  {str(address):<24} {_short(event)}"


def _short(event: Msg, limit: int = 200) -> str:
    text = repr(event)
    return text if len(text) <= limit else text[: limit - 3] + "..."
