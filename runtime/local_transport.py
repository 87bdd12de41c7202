"""The transport between a node daemon and the driver and worker processes of its node.

Theory of operation
-------------------
The daemon listens on a Unix-domain socket in the session directory (mode
0600, in a 0700 directory). Each driver or worker process opens ONE connection
to it and sends every envelope it has over it, whatever the destination; the
daemon routes (``runtime/node.py``).

Frames. A frame is a 4-byte big-endian length and that many bytes of msgpack.
The first frame from the connecting side is a ``Hello`` (protocol version,
cluster token, the process's ``Address``, its pid); the daemon answers with one
``HelloReply`` (accepted or not, and why; on acceptance the node id and the
addresses of the node's raylet and of the cluster's GCS). Every later frame is
a batch: a msgpack array of ``kernel.wire.Envelope``. A ``Hello`` with
``purpose="status"`` (``shoal status``) gets, after the reply, one frame of
JSON from the server's ``on_status`` (``runtime/node_status.py``), and the
connection closes: such a peer is never registered as a driver.

Authentication. The token is compared with ``hmac.compare_digest``; the peer's
uid (``SO_PEERCRED``) must be ours; the claimed address must be a driver or a
worker of this node. A peer that fails, or sends no hello within
``hello_timeout_s``, is logged and disconnected; the daemon keeps serving.

Bad frames. A frame longer than ``frame_bytes_max`` desynchronizes nothing we
could trust, so the connection is closed. A batch that is not msgpack is
dropped whole; inside a well-formed batch an envelope that fails validation
(unknown message type, wrong field types) is dropped alone. An envelope whose
``src`` is not the connection's authenticated address is dropped. Every drop is
logged with the peer and the reason; nothing a peer sends raises in the daemon.

Sending. ``Connection.send`` never blocks: it appends to an outbox, and the
connection's writer task takes the whole outbox once per wakeup and writes it
as one frame, so batches grow with load. A connection given the kernel loop's
``RoundFlush`` (``runtime/kernel_host.py``) does better during a round: the
outbox is written once at the round's end, inline (a non-blocking write) when
the socket takes it whole; only the rest, if any, waits for the writer task. An outbox holds at most
``pending_max`` envelopes (the oldest are dropped beyond; the kernels
retransmit what matters).

Wire form. Batches are ``kernel/wire.py`` envelopes, encoded and decoded by
the same codec as the gRPC transport's frames (``transports/grpc_codec.py``):
one union of message types for every transport, so a message that crosses a
socket here can cross the network too.
"""

from __future__ import annotations

import hmac
import os
import select
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import structlog
import trio
from shoal.kernel.messages import Address
from shoal.kernel.wire import Envelope
from shoal.runtime.kernel_host import RoundFlush
from shoal.transports.grpc_codec import decode_frame, encode_frames

PROTOCOL_VERSION = 1
_HEADER = struct.Struct(">I")


class Hello(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    token: str
    address: Address
    pid: int
    purpose: str = "connect"  # or "status": one snapshot frame after the reply, then close


class HelloReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""
    node_id: str = ""
    raylet: Address | None = None
    gcs: Address | None = None
    session_dir: str = ""
    store_socket: str = ""  # the node's object store server (runtime/node_objects.py)


@dataclass(frozen=True, slots=True)
class LocalLimits:
    frame_bytes_max: int = 2**31 - 1  # values travel inline for now (issue #5)
    pending_max: int = 262_144  # envelopes queued per connection; the oldest dropped beyond
    hello_timeout_s: float = 5.0
    connections_max: int = 4_096


class FrameError(Exception):
    """A peer broke the framing (an oversized length); the connection must close."""


_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_reply_decoder = msgspec.msgpack.Decoder(HelloReply)


class FramedStream:
    """Length-prefixed frames over a trio stream."""

    def __init__(self, stream: trio.SocketStream, frame_bytes_max: int) -> None:
        self.stream = stream
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    async def receive(self) -> bytes | None:
        """The next frame, or None at a clean end of stream.

        Raises:
            FrameError: the length is over the limit, or the stream ended mid-frame.
        """
        if not await self._fill(_HEADER.size):
            if self._buffer:
                raise FrameError("the stream ended in the middle of a frame header")
            return None
        end = frame_end(self._buffer, 0, self.frame_bytes_max)
        assert end is not None  # the header is in
        if not await self._fill(end):
            raise FrameError("the stream ended in the middle of a frame")
        frame = bytes(memoryview(self._buffer)[_HEADER.size:end])
        del self._buffer[:end]
        return frame

    async def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            wanted = min(max(65_536, size - len(self._buffer)), 16 * 2**20)
            chunk = await self.stream.receive_some(wanted)
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def take_buffered(self) -> bytearray:
        """What was read past the last frame returned (a reader taking over the stream)."""
        buffered, self._buffer = self._buffer, bytearray()
        return buffered

    async def send(self, payload: bytes) -> None:
        header = _HEADER.pack(len(payload))
        if len(payload) < 65_536:
            await self.stream.send_all(header + payload)
        else:
            await self.stream.send_all(header)
            await self.stream.send_all(payload)


BatchHandler = Callable[["Connection", list[Envelope]], None]
READ_CHUNK = 1 << 16


def frame_end(buffer: bytearray, start: int, frame_bytes_max: int) -> int | None:
    """Where the frame at ``start`` of ``buffer`` ends; None while its header is not in.

    Raises:
        FrameError: its length is over ``frame_bytes_max`` (said before its body is read).
    """
    if len(buffer) - start < _HEADER.size:
        return None
    (length,) = _HEADER.unpack_from(buffer, start)
    if length > frame_bytes_max:
        raise FrameError(f"frame of {length} bytes is over the limit of {frame_bytes_max}")
    return start + _HEADER.size + length


def split_frames(buffer: bytearray, frame_bytes_max: int) -> list[bytes]:
    """Takes the complete frames off the front of ``buffer``.

    Raises:
        FrameError: a frame's length is over ``frame_bytes_max``.
    """
    frames: list[bytes] = []
    start = 0
    while (end := frame_end(buffer, start, frame_bytes_max)) is not None and end <= len(buffer):
        frames.append(bytes(memoryview(buffer)[start + _HEADER.size:end]))
        start = end
    del buffer[:start]
    return frames


class Connection:
    """One authenticated peer: an outbox drained by a writer task, a reader task."""

    def __init__(self, framed: FramedStream, peer: Address, limits: LocalLimits,
                 log: Any, round_flush: RoundFlush | None = None) -> None:
        self.framed = framed
        self.peer = peer
        self.pid = 0
        self.purpose = "connect"
        self._limits = limits
        self._log = log
        self._outbox: list[Envelope] = []
        self._wakeup = trio.Event()
        self._writing = False
        self._round_flush = round_flush
        self._flush_queued = False
        self._unsent = b""  # what an inline write left over, for the writer task
        self.closed = False
        self.dropped = 0
        self.inline_writes = 0

    def send(self, envelope: Envelope) -> bool:
        """Queues one envelope; never blocks. False if the connection is closed."""
        if self.closed:
            return False
        self._outbox.append(envelope)
        if len(self._outbox) > self._limits.pending_max:
            del self._outbox[0]
            self.dropped += 1
        if not self._flush_queued:
            flush = self._round_flush
            if flush is not None and flush.defer(self.flush_now):
                self._flush_queued = True
            else:
                self._wake_writer()
        return True

    def _wake_writer(self) -> None:
        flush = self._round_flush  # a round may run in a user thread: trio's Event is not
        if flush is None:  # thread-safe, so setting it goes through the loop's thread
            self._wakeup.set()
        else:
            flush.call_in_trio(self._set_wakeup)

    def _set_wakeup(self) -> None:
        self._wakeup.set()

    def defer_writes_to(self, round_flush: RoundFlush) -> None:
        """From now on, envelopes sent during a kernel loop round are written at its end."""
        self._round_flush = round_flush

    def flush_now(self) -> None:
        """Writes the outbox now if the socket takes it whole, else leaves it (or the
        rest) to the writer task. At the end of a round: on the trio thread between
        awaits, or in a user thread running a round (the writer task then waits for
        I/O or for the loop's lock, so it cannot be mid-write)."""
        self._flush_queued = False
        if self.closed or not self._outbox:
            return
        if self._writing or self._unsent:
            self._wake_writer()
            return
        batch, self._outbox = self._outbox, []
        data = b"".join(_HEADER.pack(len(frame)) + frame for frame in self._frames(batch))
        try:
            sent = os.write(self.framed.stream.socket.fileno(), data)
        except OSError:  # full (BlockingIOError), or broken: the writer finds out which
            sent = 0
        if sent < len(data):
            self._unsent = data[sent:]
            self._wake_writer()
        else:
            self.inline_writes += 1

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        return not self._outbox and not self._writing and not self._unsent

    async def run_writer(self) -> None:
        """Writes the outbox, one frame per wakeup, until closed or the peer goes away."""
        try:
            while not self.closed:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._writing = True
                if self._unsent:
                    unsent, self._unsent = self._unsent, b""
                    await self.framed.stream.send_all(unsent)
                batch, self._outbox = self._outbox, []
                for frame in self._frames(batch):
                    await self.framed.send(frame)
                self._writing = False
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.closed = True

    def _frames(self, batch: list[Envelope]) -> list[bytes]:
        """The batch as frames within ``frame_bytes_max``; an envelope too large alone is
        dropped (and logged): the peer would have to close the connection on it."""
        frames, dropped = encode_frames(batch, self._limits.frame_bytes_max)
        if dropped:
            self.dropped += dropped
            self._log.error("local.envelope_dropped", peer=str(self.peer), count=dropped,
                            reason="cannot encode, or larger than frame_bytes_max alone",
                            frame_bytes_max=self._limits.frame_bytes_max)
        return frames

    async def run_reader(self, on_batch: BatchHandler, check_src: bool) -> str:
        """Reads batches until the peer closes; drops (and logs) what is bad.

        Returns:
            Why the connection ended.
        """
        try:
            while (frame := await self.framed.receive()) is not None:
                self._deliver(frame, on_batch, check_src)
        except FrameError as exc:
            self._log.warning("local.frame_rejected", peer=str(self.peer), reason=str(exc))
            return f"bad framing: {exc}"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            return f"connection broke: {exc!r}"
        return "peer closed the connection"

    async def run_reader_in_thread(self, on_batch: BatchHandler, check_src: bool,
                                   lock: threading.Lock,
                                   limiter: trio.CapacityLimiter) -> str:
        """As ``run_reader``, but a thread of its own blocks on the socket and hands in
        each batch holding ``lock`` (the kernel loop's): no trio wakeup, epoll
        re-registration and scheduler pass per message. The thread reads a dup of the
        socket, so closing the connection can never leave it reading a reused fd."""
        fd = os.dup(self.framed.stream.socket.fileno())
        buffered = self.framed.take_buffered()
        return await trio.to_thread.run_sync(  # abandoned on cancel: aclose ends it
            self._read_blocking, fd, buffered, on_batch, check_src, lock,
            abandon_on_cancel=True, limiter=limiter)

    def _read_blocking(self, fd: int, buffer: bytearray, on_batch: BatchHandler,
                       check_src: bool, lock: threading.Lock) -> str:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while True:
                try:
                    frames = split_frames(buffer, self.framed.frame_bytes_max)
                except FrameError as exc:
                    self._log.warning("local.frame_rejected", peer=str(self.peer),
                                      reason=str(exc))
                    return f"bad framing: {exc}"
                if frames:
                    with lock:
                        if self.closed:
                            return "closed"
                        for frame in frames:
                            self._deliver(frame, on_batch, check_src)
                try:
                    poller.poll()
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    return f"connection broke: {exc!r}"
                if not chunk:
                    return ("the stream ended in the middle of a frame" if buffer
                            else "peer closed the connection")
                buffer += chunk
        finally:
            os.close(fd)

    def _deliver(self, frame: bytes, on_batch: BatchHandler, check_src: bool) -> None:
        envelopes, problems = decode_frame(frame)
        if check_src:
            spoofed = [e for e in envelopes if e.src != self.peer]
            if spoofed:
                problems.append(f"{len(spoofed)} envelope(s) with a src other than the peer")
                envelopes = [e for e in envelopes if e.src == self.peer]
        if problems:
            self._log.warning("local.frame_dropped" if not envelopes else
                              "local.envelopes_dropped", peer=str(self.peer),
                              reasons=problems[:5], count=len(problems), frame_bytes=len(frame))
        if envelopes:
            on_batch(self, envelopes)

    async def aclose(self) -> None:
        self.closed = True
        self._wakeup.set()
        try:  # ends a reader thread's read (it holds a dup of the socket)
            self.framed.stream.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with trio.CancelScope(shield=True):
            await self.framed.stream.aclose()


def peer_uid(stream: trio.SocketStream) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where unknown)."""
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)




async def serve_unix(path: str, backlog: int,
                     serve_one: Callable[[trio.SocketStream], Awaitable[None]], *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Listens on a Unix socket at ``path`` that only this user may open (mode 0600),
    serving each connection in a task of its own, until cancelled; then removes the
    socket file."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(serve_one, stream)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

H = TypeVar("H")

async def receive_hello(framed: FramedStream, decoder: msgspec.msgpack.Decoder[H],
                        timeout_s: float, check: Callable[[H], str]) -> tuple[str, H | None]:
    """A peer's first frame, decoded and checked: ``(problem, hello)``, where problem is
    "" for a hello to accept, and hello is None when none could be read in time."""
    with trio.move_on_after(timeout_s):
        frame = await framed.receive()
        if frame is None:
            return "peer closed before saying hello", None
        try:
            hello = decoder.decode(frame)
        except msgspec.DecodeError as exc:
            return f"malformed hello: {exc}", None
        return check(hello), hello
    return f"no hello within {timeout_s}s", None

class LocalServer:
    """The daemon's side: accepts, authenticates and serves local processes."""

    def __init__(self, *, path: str, token: str, welcome: HelloReply, on_batch: BatchHandler,
                 on_connect: Callable[[Connection], None],
                 on_disconnect: Callable[[Connection], None],
                 limits: LocalLimits | None = None,
                 on_status: Callable[[], bytes] | None = None,
                 round_flush: RoundFlush | None = None) -> None:
        self.path = path
        self.round_flush = round_flush  # the daemon's kernel loop's (see Connection)
        self._token = token.encode()
        self._welcome = welcome
        self._on_batch = on_batch
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_status = on_status
        self._limits = limits or LocalLimits()
        self.connections: dict[Address, Connection] = {}
        self.rejected = 0
        self._open = 0
        self._log = structlog.get_logger("shoal.runtime.local").bind(socket=path)

    def send(self, envelope: Envelope) -> bool:
        conn = self.connections.get(envelope.dst)
        return conn is not None and conn.send(envelope)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listens on ``path`` until cancelled; removes the socket file at the end."""
        await serve_unix(self.path, 512, self._serve_one, task_status=task_status)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, self._limits.frame_bytes_max)
        try:
            conn = await self._handshake(framed)
            if conn is not None and conn.purpose == "status":
                await framed.send(self._on_status() if self._on_status else b"{}")
            elif conn is not None:
                await self._run(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError, OSError) as exc:
            self._reject(f"handshake failed: {exc}")
        except Exception:  # noqa: BLE001  # one bad peer must never take the daemon down
            self._log.exception("local.peer_failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _run(self, conn: Connection) -> None:
        previous = self.connections.get(conn.peer)
        self.connections[conn.peer] = conn
        self._open += 1
        if previous is not None:
            self._log.warning("local.replaced", peer=str(conn.peer))
            await previous.aclose()
        self._log.info("local.accepted", peer=str(conn.peer), pid=conn.pid)
        self._on_connect(conn)
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run_writer)
                reason = await conn.run_reader(self._on_batch, check_src=True)
                nursery.cancel_scope.cancel()
        finally:
            self._open -= 1
            await conn.aclose()
            if self.connections.get(conn.peer) is conn:
                del self.connections[conn.peer]
                self._on_disconnect(conn)
            self._log.info("local.closed", peer=str(conn.peer), reason=reason)

    async def _handshake(self, framed: FramedStream) -> Connection | None:
        """Authenticates a new peer; None (after logging why) if it is refused."""
        problem = ""
        if self._open >= self._limits.connections_max:
            problem = "too many connections"
        elif (uid := peer_uid(framed.stream)) is not None and uid != os.getuid():
            problem = f"peer uid {uid} is not this daemon's"
        hello: Hello | None = None
        if not problem:
            problem, hello = await self._receive_hello(framed)
        if hello is None or problem:
            await self._refuse(framed, problem)
            return None
        await framed.send(_encoder.encode(self._welcome))
        conn = Connection(framed, hello.address, self._limits, self._log, self.round_flush)
        conn.pid, conn.purpose = hello.pid, hello.purpose
        return conn

    async def _receive_hello(self, framed: FramedStream) -> tuple[str, Hello | None]:
        return await receive_hello(framed, _hello_decoder, self._limits.hello_timeout_s,
                                   self._check)

    def _check(self, hello: Hello) -> str:
        if not hmac.compare_digest(hello.token.encode(), self._token):
            return "wrong cluster token" if hello.token else "missing cluster token"
        if hello.version != PROTOCOL_VERSION:
            return f"protocol version {hello.version}; this daemon speaks {PROTOCOL_VERSION}"
        if hello.address.node != self._welcome.node_id:
            return f"address {hello.address} is not on node {self._welcome.node_id}"
        if hello.address.component not in ("worker", "driver"):
            return f"only drivers and workers connect here, not a {hello.address.component}"
        if hello.purpose not in ("connect", "status") or (
                hello.purpose == "status" and self._on_status is None):
            return f"this daemon does not serve {hello.purpose!r} requests"
        return ""

    async def _refuse(self, framed: FramedStream, reason: str) -> None:
        """Logs the refusal and tells the peer why (best effort), before the caller closes."""
        self._reject(reason)
        with trio.move_on_after(1.0):
            try:
                await framed.send(_encoder.encode(HelloReply(ok=False, reason=reason)))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        self._log.warning("local.rejected", reason=reason)


class HandshakeError(ConnectionError):
    """The daemon refused this process (wrong token, wrong node...)."""


async def connect_local(path: str, *, token: str, address: Address,
                        limits: LocalLimits | None = None, timeout_s: float = 10.0,
                        log: Any = None) -> tuple[Connection, HelloReply]:
    """Opens this process's connection to its node daemon.

    Raises:
        HandshakeError: the daemon refused, or did not answer in time.
        OSError: the socket cannot be reached.
    """
    limits = limits or LocalLimits()
    log = log or structlog.get_logger("shoal.runtime.local").bind(socket=path)
    stream = await trio.open_unix_socket(path)
    framed = FramedStream(stream, limits.frame_bytes_max)
    hello = Hello(version=PROTOCOL_VERSION, token=token, address=address, pid=os.getpid())
    with trio.move_on_after(timeout_s):
        await framed.send(_encoder.encode(hello))
        frame = await framed.receive()
        if frame is None:
            await stream.aclose()
            raise HandshakeError(f"the node daemon at {path} closed the connection at hello")
        reply = _reply_decoder.decode(frame)
        if not reply.ok:
            await stream.aclose()
            raise HandshakeError(f"the node daemon at {path} refused {address}: {reply.reason}")
        return Connection(framed, address, limits, log), reply
    await stream.aclose()
    raise HandshakeError(f"the node daemon at {path} did not answer within {timeout_s}s")
