"""The real transport between shoal processes: batched envelopes over gRPC streams.

Theory of operation
-------------------
Every process runs one ``GrpcTransport``: a gRPC server on ``endpoint`` and
a client toward each peer it sends to. A trio task calls ``send(endpoint,
envelope)``, which never blocks, and reads batches from ``incoming``.

Streams. A pair of processes shares ONE long-lived bidirectional stream
(``/shoal.Transport/Stream``, raw bytes with identity (de)serializers). The
process that first has something to say dials; its request direction carries
its envelopes, the response direction carries the other side's. The dialer
announces its own endpoint in metadata (``shoal-endpoint``), so the accepting
side routes its envelopes for that endpoint over the same stream instead of
dialing back. If both sides dial at the same moment, the pair keeps two
streams, each used in one direction; a destination is served by exactly one
stream at a time, which keeps order per destination.

Frames. Each message of the stream is one msgpack-encoded batch of envelopes
(``kernel/wire.py``). Per destination, ``send`` appends to a trio-only outbox;
a flusher task wakes once per scheduling round in which something was sent,
and moves each outbox, whole, into the destination's shared queue. The
stream's writer (a gRPC thread) takes everything queued, up to
``batch_envelopes_max``, and encodes it as one frame, so while gRPC is busy
writing one frame the next one grows: batches adapt to load, with no timer.

Threads. gRPC's synchronous API runs on its own threads: per stream, one
writer (gRPC's request consumer for a stream we dialed, the server's handler
thread for one we accepted) and one reader thread of ours. Trio hands work to
a writer with one ``Condition.notify`` per destination per round; a reader
decodes a frame and hands the batch to trio through ``ThreadInbox``: one hop
per batch at most, none while trio is still busy with earlier batches.

Authentication. Every stream carries the cluster token (``shoal-token``); the
server compares it with ``hmac.compare_digest``, logs a mismatch, and aborts
the call with UNAUTHENTICATED. It then sends initial metadata
``shoal-accepted``, which tells the dialer that the stream is up.

Failures. The transport is best effort, like the simulator's network: the
kernels retransmit. A frame that does not decode, or an envelope of a type the
wire does not know, is dropped and logged with the peer and the reason. When a
stream breaks, the envelopes its writer had already taken are lost; the rest
stay queued, and the next round dials again: at once if the stream had been
accepted, else after an exponential backoff (``backoff_initial_s`` doubling to
``backoff_max_s``, +-20% jitter). A dial that is not accepted within
``connect_timeout_s`` is cancelled. A destination's queue keeps at most
``pending_max`` envelopes; beyond that the oldest are dropped. Nothing here
ever blocks the sender.

Shutdown. Closing stops accepting streams, lets each writer flush what is
queued for ``close_grace_s`` at most, then cancels what is left, stops the
server, closes the channels and waits until every thread it used has exited.
"""

from __future__ import annotations

import hmac
import math
import random
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
import structlog
import trio
from shoal.kernel.wire import Envelope
from shoal.transports.grpc_codec import decode_frame
from shoal.transports.grpc_inbox import ThreadInbox
from shoal.transports.grpc_links import Link, Peer, TransportStats, take_frames

TOKEN_KEY = "shoal-token"
ENDPOINT_KEY = "shoal-endpoint"
ACCEPTED_KEY = "shoal-accepted"
SERVICE_NAME = "shoal.Transport"
METHOD_NAME = "Stream"
METHOD_PATH = f"/{SERVICE_NAME}/{METHOD_NAME}"

__all__ = [
    "GrpcTransport",
    "TransportLimits",
    "TransportStats",
    "generate_token",
    "open_grpc_transport",
]


def generate_token() -> str:
    """A fresh cluster token: 32 hex characters (128 random bits)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Bounds and timings of a transport; the defaults suit a cluster on a LAN."""

    pending_max: int = 65_536  # envelopes queued per destination; oldest dropped beyond
    batch_envelopes_max: int = 4_096  # envelopes per frame
    frame_bytes_max: int = 32 * 2**20  # larger batches are split; a larger envelope is dropped
    inbox_batches_max: int = 1_024  # received batches trio has not taken yet
    inbound_streams_max: int = 256  # streams this server serves at once
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    connect_timeout_s: float = 5.0
    close_grace_s: float = 1.0
    keepalive_s: float = 10.0


@asynccontextmanager
async def open_grpc_transport(
    *,
    token: str,
    bind_host: str = "127.0.0.1",
    port: int = 0,
    local_endpoint: str | None = None,
    limits: TransportLimits | None = None,
) -> AsyncIterator[GrpcTransport]:
    """Starts a transport in the current trio run; closes it on exit.

    Args:
        token: the cluster token (see ``generate_token``); peers must share it.
        bind_host: interface to listen on; loopback unless told otherwise.
        port: port to listen on; 0 picks a free one (read ``endpoint``).
        local_endpoint: the ``host:port`` peers reach this process at, sent
            to the peers this process dials; defaults to ``endpoint``. A
            trailing ``:0`` is replaced by the bound port.
        limits: bounds and timings; ``TransportLimits()`` by default.

    Raises:
        OSError: the address could not be bound.
    """
    transport = GrpcTransport(
        token=token,
        bind_host=bind_host,
        port=port,
        local_endpoint=local_endpoint,
        limits=limits or TransportLimits(),
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport._flush_loop)
            try:
                yield transport
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await transport.aclose()


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcTransport:
    """Sends envelopes to peers by endpoint and yields the batches peers send.

    Create it with ``open_grpc_transport`` inside a trio run; ``send``,
    ``incoming`` and ``aclose`` belong to that run's thread.
    """

    def __init__(
        self,
        *,
        token: str,
        bind_host: str,
        port: int,
        local_endpoint: str | None,
        limits: TransportLimits,
    ) -> None:
        if not token:
            raise ValueError("transport: the cluster token must not be empty")
        self._token = token
        self._token_bytes = token.encode()
        self._limits = limits
        self._trio_token = trio.lowlevel.current_trio_token()
        self._inbox = ThreadInbox(self._trio_token, batches_max=limits.inbox_batches_max)
        self._peers: dict[str, Peer] = {}
        self._peers_lock = threading.Lock()
        self._dirty: list[Peer] = []  # trio only: peers whose outbox is not empty
        self._waiting: dict[Peer, None] = {}  # trio only: queued envelopes, no stream yet
        self._connecting: list[Link] = []  # trio only: dialed, not accepted yet
        self._wakeup = trio.Event()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._stats = TransportStats()
        self._closing = False
        self._rng = random.Random()  # backoff jitter; the transport is no kernel
        self._log = structlog.get_logger("shoal.transports.grpc").bind(component="transport")
        self._executor = ThreadPoolExecutor(
            max_workers=limits.inbound_streams_max, thread_name_prefix="shoal-grpc-server"
        )
        self._server = self._make_server()
        self.endpoint = self._bind(bind_host, port)
        if local_endpoint is None:
            local_endpoint = self.endpoint
        elif local_endpoint.endswith(":0"):
            local_endpoint = local_endpoint[:-1] + self.endpoint.rsplit(":", 1)[1]
        self.local_endpoint = local_endpoint
        self._log = self._log.bind(endpoint=self.local_endpoint)
        self._server.start()
        self._log.info("transport.started", bound=self.endpoint)

    # --- public API ----------------------------------------------------------

    @property
    def incoming(self) -> trio.abc.ReceiveChannel[list[Envelope]]:
        """Batches of envelopes from peers, one list per received frame."""
        return self._inbox

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the transport's counters."""
        return self._stats.snapshot()

    def send(self, endpoint: str, envelope: Envelope) -> None:
        """Queues ``envelope`` for the process at ``endpoint``; never blocks.

        Delivery is best effort and in order per destination.

        Raises:
            TypeError: ``envelope`` is not an ``Envelope``.
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closing:
            raise trio.ClosedResourceError("transport: cannot send on a closed transport")
        if type(envelope) is not Envelope:
            raise TypeError(f"transport: can only send an Envelope, not {type(envelope).__name__}")
        peer = self._peers.get(endpoint) or self._peer(endpoint)
        peer.outbox.append(envelope)
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)
            self._wakeup.set()

    def backlog(self, endpoint: str) -> int:
        """Envelopes queued for ``endpoint`` and not yet taken by a stream writer."""
        peer = self._peers.get(endpoint)
        return 0 if peer is None else len(peer.outbox) + len(peer.pending)

    async def aclose(self) -> None:
        """Flushes briefly, then closes every stream, the server and the threads."""
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        with trio.CancelScope(shield=True):
            await self._shut_down()

    # --- server side (gRPC threads) ------------------------------------------

    def _make_server(self) -> grpc.Server:
        handler = grpc.stream_stream_rpc_method_handler(self._serve_stream)
        service = grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: handler})
        keepalive_ms = int(self._limits.keepalive_s * 1000)
        options = [
            *self._message_size_options(),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_ms),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        return grpc.server(
            self._executor,
            handlers=(service,),
            options=options,
            maximum_concurrent_rpcs=self._limits.inbound_streams_max,
        )

    def _message_size_options(self) -> list[tuple[str, int]]:
        size = self._limits.frame_bytes_max + 2**16
        return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]

    def _bind(self, host: str, port: int) -> str:
        address = _join_host_port(host, port)
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            self._executor.shutdown(wait=False)
            raise OSError(f"transport: cannot listen on {address}: {exc}") from exc
        if bound == 0:
            self._executor.shutdown(wait=False)
            raise OSError(f"transport: cannot listen on {address}")
        return _join_host_port(host, bound)

    def _serve_stream(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        token, endpoint = "", ""
        for key, value in context.invocation_metadata():
            if key == TOKEN_KEY and isinstance(value, str):
                token = value
            elif key == ENDPOINT_KEY and isinstance(value, str):
                endpoint = value
        if not hmac.compare_digest(token.encode(), self._token_bytes):
            reason = "missing token" if not token else "wrong token"
            self._stats.add(auth_rejected=1)
            self._log.warning("transport.auth_rejected", peer=context.peer(),
                              claimed_endpoint=endpoint, reason=reason)
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"shoal transport: {reason}; use the cluster's token")
        if self._closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shoal transport: shutting down")
        peer = self._peer(endpoint) if endpoint else Peer(endpoint="")  # anonymous: receive only
        link = Link(peer=peer, outbound=False, label=f"in:{endpoint or context.peer()}",
                    opened_at=time.monotonic(), accepted=True)
        context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        if not context.add_callback(lambda: self._close_link(link, "stream ended")):
            self._close_link(link, "stream ended before it was set up")
            return iter(())
        if endpoint:
            self._adopt_inbound(link)
        self._stats.add(accepted=1)
        self._log.info("transport.accepted", peer=endpoint, remote=context.peer())
        self._start_thread(self._read_inbound, link, requests)
        return self._frames(link)

    def _adopt_inbound(self, link: Link) -> None:
        """Routes our envelopes for the dialer over its stream; older ones are stale."""
        peer = link.peer
        with peer.cv:
            if link.closed:  # the dialer went away already
                return
            stale = peer.inbound
            peer.inbound = [link]
            if peer.link is None or any(peer.link is old for old in stale):
                peer.link = link
            peer.backoff_s = self._limits.backoff_initial_s
            peer.retry_at = 0.0
            peer.cv.notify_all()
        for old in stale:
            self._close_link(old, "superseded by a newer stream from the same peer")

    def _read_inbound(self, link: Link, requests: Iterator[bytes]) -> None:
        reason = "peer closed its side of the stream"
        try:
            for frame in requests:
                self._deliver(link, frame)
        except Exception as exc:  # noqa: BLE001  # gRPC raises here when the call is cancelled
            reason = f"stream broke: {exc!r}"
        finally:
            self._close_link(link, reason)

    # --- client side ---------------------------------------------------------

    def _dial(self, peer: Peer, now: float) -> None:
        """Opens a stream to ``peer``; the trio thread only."""
        with peer.cv:
            if peer.link is not None or not peer.pending:
                return
            link = Link(peer=peer, outbound=True, label=f"out:{peer.endpoint}", opened_at=now)
            peer.link = link
        self._stats.add(dials=1)
        link.channel = grpc.insecure_channel(peer.endpoint, options=self._channel_options())
        stream = link.channel.stream_stream(METHOD_PATH)  # no serializers: frames are bytes
        metadata = ((TOKEN_KEY, self._token), (ENDPOINT_KEY, self.local_endpoint))
        try:
            link.call = stream(self._frames(link), metadata=metadata)
        except Exception as exc:  # noqa: BLE001  # a malformed endpoint, for instance
            self._close_link(link, f"cannot open a stream: {exc!r}")
            return
        self._connecting.append(link)
        self._start_thread(self._read_outbound, link)

    def _channel_options(self) -> list[tuple[str, int]]:
        keepalive_ms = int(self._limits.keepalive_s * 1000)
        backoff_ms = int(self._limits.backoff_initial_s * 1000)
        return [
            *self._message_size_options(),
            ("grpc.use_local_subchannel_pool", 1),  # a fresh channel really reconnects
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_ms),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            # gRPC also takes this as the deadline of one connection attempt.
            ("grpc.min_reconnect_backoff_ms", int(self._limits.connect_timeout_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self._limits.backoff_max_s * 1000)),
        ]

    def _read_outbound(self, link: Link) -> None:
        call: Any = link.call
        reason = "peer ended the stream"
        try:
            metadata = call.initial_metadata() or ()
            if any(key == ACCEPTED_KEY for key, _ in metadata):
                self._on_accepted(link)
            for frame in call:
                self._deliver(link, frame)
        except grpc.RpcError as exc:
            reason = self._describe_rpc_error(link, exc)
        except Exception as exc:  # noqa: BLE001  # our bug: log it, never leave the link open
            reason = f"reader failed: {exc!r}"
            self._log.exception("transport.reader_failed", peer=link.peer.endpoint)
        finally:
            self._close_link(link, reason)

    def _on_accepted(self, link: Link) -> None:
        with link.peer.cv:
            link.accepted = True
            link.peer.backoff_s = self._limits.backoff_initial_s
        self._stats.add(connects=1)
        self._log.info("transport.connected", peer=link.peer.endpoint)

    def _describe_rpc_error(self, link: Link, exc: grpc.RpcError) -> str:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self._stats.add(auth_failures=1)
            self._log.error("transport.token_rejected_by_peer", peer=link.peer.endpoint,
                            details=details)
        name = code.name if code is not None else "UNKNOWN"
        return link.abort_reason or f"{name}: {details}"

    # --- both sides (gRPC threads) --------------------------------------------

    def _frames(self, link: Link) -> Iterator[bytes]:
        """The frames a stream writes: runs on the gRPC thread that writes the stream."""
        try:
            while (taken := take_frames(link, self._limits)) is not None:
                frames, envelopes, dropped = taken
                if dropped:
                    self._log.warning("transport.envelope_dropped", peer=link.peer.endpoint,
                                      reason="cannot encode, or larger than frame_bytes_max",
                                      count=dropped)
                self._stats.add(frames_sent=len(frames), envelopes_sent=envelopes,
                                dropped_unencodable=dropped)
                yield from frames
        finally:
            link.writer_done = True

    def _deliver(self, link: Link, frame: bytes) -> None:
        envelopes, problems = decode_frame(frame)
        if problems:
            self._stats.add(dropped_undecodable=len(problems))
            self._log.warning("transport.frame_dropped" if not envelopes else
                              "transport.envelopes_dropped",
                              peer=link.peer.endpoint or link.label, reasons=problems[:5],
                              count=len(problems), frame_bytes=len(frame))
        self._stats.add(frames_received=1, envelopes_received=len(envelopes))
        if envelopes:
            self._inbox.put(envelopes)

    def _close_link(self, link: Link, reason: str) -> None:
        """Marks ``link`` closed, frees its gRPC resources; any thread."""
        peer = link.peer
        with peer.cv:
            if link.closed:
                return
            link.closed = True
            peer.inbound = [other for other in peer.inbound if other is not link]
            lost = peer.link is link
            if lost:
                peer.link = peer.inbound[-1] if peer.inbound else None
                self._schedule_retry(peer, link.accepted)
            orphaned = lost and peer.link is None and bool(peer.pending)
            peer.cv.notify_all()
        if link.call is not None:
            link.call.cancel()
        if link.channel is not None:
            link.channel.close()
        self._log.info("transport.link_closed", peer=peer.endpoint or link.label,
                       direction="out" if link.outbound else "in",
                       reason=link.abort_reason or reason, accepted=link.accepted)
        if orphaned and not self._closing:
            self._call_in_trio(self._on_link_lost, peer)

    def _schedule_retry(self, peer: Peer, accepted: bool) -> None:
        now = time.monotonic()
        if accepted:  # the peer was up: try again at once
            peer.backoff_s = self._limits.backoff_initial_s
            peer.retry_at = now
            return
        delay = peer.backoff_s or self._limits.backoff_initial_s
        peer.retry_at = now + delay * self._rng.uniform(0.8, 1.2)
        peer.backoff_s = min(delay * 2, self._limits.backoff_max_s)

    def _peer(self, endpoint: str) -> Peer:
        with self._peers_lock:
            peer = self._peers.get(endpoint)
            if peer is None:
                peer = Peer(endpoint=endpoint, backoff_s=self._limits.backoff_initial_s)
                self._peers[endpoint] = peer
            return peer

    def _start_thread(self, target: Callable[..., None], *args: Any) -> None:
        label = args[0].label if args and isinstance(args[0], Link) else ""
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"shoal-grpc-reader {label}")
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _call_in_trio(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            self._trio_token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    # --- trio side --------------------------------------------------------------

    def _on_link_lost(self, peer: Peer) -> None:
        self._waiting[peer] = None
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        while True:
            with trio.move_on_at(self._next_deadline()):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._flush()

    def _flush(self) -> None:
        """Hands every outbox to its stream; dials destinations that have none."""
        now = time.monotonic()
        dirty, self._dirty = self._dirty, []
        for peer in dirty:
            if self._hand_over(peer, now):
                self._waiting[peer] = None
        waiting, self._waiting = self._waiting, {}
        for peer in waiting:
            if peer.link is not None or not peer.pending:
                continue
            if now >= peer.retry_at:
                self._dial(peer, now)
            else:
                self._waiting[peer] = None
        self._cancel_slow_dials(now)

    def _hand_over(self, peer: Peer, now: float) -> bool:
        """Moves the outbox into the shared queue; True if no stream serves it."""
        outbox, peer.outbox = peer.outbox, []
        peer.dirty = False
        with peer.cv:
            peer.pending.extend(outbox)
            overflow = len(peer.pending) - self._limits.pending_max
            for _ in range(overflow):
                peer.pending.popleft()
            if peer.link is None and peer.inbound:
                peer.link = peer.inbound[-1]
            if peer.link is not None:
                peer.cv.notify_all()
            orphaned = peer.link is None
        if overflow > 0:
            self._stats.add(dropped_overflow=overflow)
            peer.overflow_unlogged += overflow
            if now - peer.overflow_logged_at >= 1.0:
                self._log.warning("transport.queue_overflow", peer=peer.endpoint,
                                  dropped=peer.overflow_unlogged,
                                  pending_max=self._limits.pending_max)
                peer.overflow_logged_at, peer.overflow_unlogged = now, 0
        return orphaned

    def _cancel_slow_dials(self, now: float) -> None:
        still: list[Link] = []
        for link in self._connecting:
            if link.accepted or link.closed:
                continue
            if now - link.opened_at >= self._limits.connect_timeout_s:
                link.abort_reason = f"not accepted within {self._limits.connect_timeout_s}s"
                if link.call is not None:
                    link.call.cancel()
            else:
                still.append(link)
        self._connecting = still

    def _next_deadline(self) -> float:
        """The trio time of the next retry or dial timeout, or infinity."""
        instants = [peer.retry_at for peer in self._waiting]
        instants += [link.opened_at + self._limits.connect_timeout_s for link in self._connecting]
        if not instants:
            return math.inf
        return trio.current_time() + max(0.0, min(instants) - time.monotonic())

    async def _shut_down(self) -> None:
        self._flush_for_close()
        links = self._all_links()
        for link in links:
            with link.peer.cv:
                link.closing = True
                link.peer.cv.notify_all()
        deadline = trio.current_time() + self._limits.close_grace_s
        await self._wait_until(lambda: all(_drained(link) for link in links), deadline)
        stopped = self._server.stop(grace=None)
        for link in self._all_links():
            self._close_link(link, "transport closed")
        self._inbox.close()
        deadline = trio.current_time() + 5.0
        await self._wait_until(lambda: stopped.is_set() and not self._live_threads(), deadline)
        self._executor.shutdown(wait=True)
        left = [thread.name for thread in self._live_threads()]
        self._log.info("transport.closed", stats=self._stats.snapshot().as_dict(),
                       threads_left=left)

    def _flush_for_close(self) -> None:
        now = time.monotonic()
        for peer in self._dirty:
            self._hand_over(peer, now)
        self._dirty = []
        self._waiting = {}
        for link in self._connecting:  # never accepted: nothing to flush into it
            if not link.accepted:
                self._close_link(link, "transport closed before the peer accepted")
        self._connecting = []

    def _all_links(self) -> list[Link]:
        with self._peers_lock:
            peers = list(self._peers.values())
        links: list[Link] = []
        for peer in peers:
            with peer.cv:
                if peer.link is not None:
                    links.append(peer.link)
                links.extend(link for link in peer.inbound if link is not peer.link)
        return links

    def _live_threads(self) -> list[threading.Thread]:
        with self._threads_lock:
            return [thread for thread in self._threads if thread.is_alive()]

    @staticmethod
    async def _wait_until(condition: Callable[[], bool], deadline: float) -> None:
        while not condition() and trio.current_time() < deadline:
            await trio.sleep(0.002)


def _drained(link: Link) -> bool:
    """Whether a closing link has written everything: the peer ended a stream we dialed."""
    if link.closed:
        return True
    return link.writer_done and not link.outbound
