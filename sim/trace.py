"""The trace of a simulated run: a hash over every delivered event, and a recent window.

Every input a kernel is handed (a message delivery, a timer, a start) is encoded
canonically with msgpack, as ``(time_ns, address, input)``, and fed to one
sha256. Two runs of the same seed and program must produce the same digest; a
digest differing is a determinism bug. Encoding appends into one buffer that is
hashed in chunks, so tracing costs well under a microsecond per event.

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

_FLUSH_BYTES = 1 << 16


class Trace:
    """Hashes delivered events canonically and remembers the most recent ones."""

    def __init__(self, window: int = 40) -> None:
        self._hash = hashlib.sha256()
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()
        self._recent: deque[tuple[int, Address, Msg]] = deque(maxlen=window)
        self.events = 0

    def record(self, time_ns: int, address: Address, event: Msg) -> None:
        self._encoder.encode_into((time_ns, address, event), self._buffer, -1)
        if len(self._buffer) >= _FLUSH_BYTES:
            self._hash.update(self._buffer)
            self._buffer.clear()
        self._recent.append((time_ns, address, event))
        self.events += 1

    def note(self, time_ns: int, what: str, detail: Any = None) -> None:
        """Records a simulator decision (a fault, a crash) in the hash and the window."""
        self.record(time_ns, _SIM, _Note(what=what, detail=repr(detail)))

    @property
    def digest(self) -> str:
        h = self._hash.copy()
        h.update(self._buffer)
        return h.hexdigest()

    def recent_lines(self) -> list[str]:
        return [format_event(t, addr, ev) for t, addr, ev in self._recent]


class _Note(Msg):
    what: str
    detail: str


_SIM = Address(node="sim", component="driver", worker="faults")


def format_event(time_ns: int, address: Address, event: Msg) -> str:
    return f"t={time_ns / NANOS_PER_SECOND:12.6f}s  {str(address):<24} {_short(event)}"


def _short(event: Msg, limit: int = 200) -> str:
    text = repr(event)
    return text if len(text) <= limit else text[: limit - 3] + "..."
