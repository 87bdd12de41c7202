"""Per-destination state of the gRPC transport, shared by trio and gRPC threads.

A ``Peer`` is a destination endpoint: its queue of envelopes and the stream
(``Link``) that currently drains it. A ``Link`` is one gRPC stream, dialed by
us (outbound) or accepted by our server (inbound). Everything a gRPC thread
may touch is guarded by the peer's condition variable ``cv``; ``outbox`` and
``dirty`` belong to the trio thread alone.

Order per destination: only ``peer.link`` takes from ``peer.pending``, and it
is replaced only after it closed, so envelopes leave in the order they were
sent (those a broken stream had taken are lost, never reordered).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.kernel.wire import Envelope
from shoal.transports.grpc_codec import encode_frames

if TYPE_CHECKING:
    from shoal.transports.grpc_transport import TransportLimits


@dataclass(slots=True, eq=False)
class Link:
    """One gRPC stream to or from a peer."""

    peer: Peer
    outbound: bool
    label: str  # for logs: "out:host:port" or "in:host:port"
    opened_at: float  # time.monotonic()
    accepted: bool = False  # the server authenticated the stream
    closing: bool = False  # write what is queued, then end the stream
    closed: bool = False
    writer_done: bool = False
    abort_reason: str = ""
    call: Any = None  # grpc's stream-stream call, for outbound links
    channel: Any = None  # grpc.Channel, for outbound links


@dataclass(slots=True, eq=False)
class Peer:
    """A destination endpoint, its queued envelopes and the stream serving it."""

    endpoint: str
    cv: threading.Condition = field(default_factory=threading.Condition)
    pending: collections.deque[Envelope] = field(default_factory=collections.deque)
    link: Link | None = None  # the one stream that takes from ``pending``
    inbound: list[Link] = field(default_factory=list)  # open streams the peer dialed
    backoff_s: float = 0.0
    retry_at: float = 0.0  # time.monotonic() before which we do not dial again
    outbox: list[Envelope] = field(default_factory=list)  # trio only
    dirty: bool = False  # trio only: listed in the flusher's dirty list
    overflow_logged_at: float = -1e9  # trio only
    overflow_unlogged: int = 0  # trio only


@dataclass(slots=True)
class TransportStats:
    """Counters of a transport (frames are gRPC messages; envelopes are inside)."""

    frames_sent: int = 0
    envelopes_sent: int = 0
    frames_received: int = 0
    envelopes_received: int = 0
    dials: int = 0  # streams we opened
    connects: int = 0  # of those, accepted by the peer
    accepted: int = 0  # streams peers opened to us and we accepted
    auth_rejected: int = 0  # streams we refused: missing or wrong token
    auth_failures: int = 0  # streams a peer refused our token on
    dropped_overflow: int = 0  # envelopes dropped: destination queue full
    dropped_undecodable: int = 0  # frames or envelopes received that did not decode
    dropped_unencodable: int = 0  # envelopes we could not encode or that were too large
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        """Adds to counters; safe from any thread."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> TransportStats:
        with self._lock:
            return dataclasses.replace(self, _lock=threading.Lock())

    def as_dict(self) -> dict[str, int]:
        names = [f.name for f in dataclasses.fields(self) if f.name != "_lock"]
        return {name: getattr(self, name) for name in names}


def take_frames(link: Link, limits: TransportLimits) -> tuple[list[bytes], int, int] | None:
    """Waits for envelopes queued for ``link`` and encodes a batch of them.

    Runs on the thread that writes the stream.

    Returns:
        ``(frames, envelopes, dropped)``, or None once the link must stop writing:
        it closed, or it is closing and has nothing left to write.
    """
    peer = link.peer
    with peer.cv:
        while True:
            if link.closed:
                return None
            if peer.link is link and peer.pending:
                break
            if link.closing:
                return None
            peer.cv.wait()
        if len(peer.pending) <= limits.batch_envelopes_max:
            batch = list(peer.pending)
            peer.pending.clear()
        else:
            batch = [peer.pending.popleft() for _ in range(limits.batch_envelopes_max)]
    frames, dropped = encode_frames(batch, limits.frame_bytes_max)
    return frames, len(batch) - dropped, dropped
