"""Direct links between the core workers of one node: owner to leased worker, no relay.

Theory of operation
-------------------
Without links, every envelope a driver or worker sends goes to its node daemon,
which routes it (``runtime/node.py``): a task push and its answer cost four
socket hops and two passes through the daemon's loop. As in Ray, where the
owner's core worker pushes tasks straight to the leased worker, a worker here
also listens on a Unix socket of its own in the session directory
(``direct_socket_path``: ``w-<worker id>.sock``, mode 0600, authenticated with
the cluster token like the daemon's). The first time a process sends an
envelope to a worker of its own node, it connects there; from then on the
envelopes between the two processes, both ways, go over that one connection
(the *link*). Everything else (raylet, GCS, other nodes, a peer that does not
listen, a link that failed) still goes through the daemon: the *relay*.

Routing is the host's business, not the kernel's: ``DirectLinks.send`` is the
router of ``runtime/driver.py``'s ``CoreWorkerRuntime``, and the kernel never
learns which path a message took.

Per-pair order. Switching a peer from the relay to a link must not let a later
envelope overtake an earlier one still in the daemon. Each side counts the
envelopes it relayed to each peer (``relayed``) and those it received from
each peer through the relay (``relay_received``). When a link is set up each
side declares, atomically with starting to send on the link, how many it had
relayed to the other (in ``DirectHello`` from the connecting side, in
``DirectHelloReply`` from the accepting side), and never relays to that peer
again while the link stands. Envelopes that arrive on the link are held until
as many relayed ones have come in from that peer; the held ones are delivered
right after the last of them. The daemon's connection to each process is one
ordered stream, so the count is reached unless the daemon dropped one (its
outbox overflowed, the peer was gone): after ``HOLD_MAX_S`` the held
envelopes go in anyway; the kernels retransmit what matters, as after a loss.
A process sends to a peer on one link only (the first one set up, whichever
side opened it), so two links opened at once by both sides cannot reorder.

Failure. A link that cannot be opened (no socket: the peer does not listen or
is dead; refused) hands the envelopes queued on it to the relay, in order, and
the peer is not tried again for ``RETRY_AFTER_S``. A link that breaks (the peer
died) is forgotten: what it had not written is lost like any message to a dead
process, and the kernels' retries take over (the raylet reports the dead
worker to its owner, which retries the task elsewhere). Closing a link or the
listener never touches the daemon connection; the listener's socket file is
removed when it closes, and the daemon removes the file of a worker that died
without closing it.

Bad input. A peer that fails the handshake is logged and disconnected; an
envelope on a link whose ``src`` is not the peer or whose ``dst`` is not this
process is dropped and logged. Nothing a peer sends raises here.
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
import trio
from shoal.kernel.messages import Address
from shoal.kernel.wire import Envelope
from shoal.runtime.kernel_host import RoundFlush
from shoal.runtime.local_transport import (
    Connection,
    FramedStream,
    FrameError,
    LocalLimits,
    peer_uid,
    receive_hello,
    serve_unix,
)

DIRECT_PROTOCOL_VERSION = 1
HOLD_MAX_S = 1.0  # held link envelopes go in after this even if relayed ones never came
RETRY_AFTER_S = 1.0  # after a failed connect, the peer goes through the relay this long
CONNECT_TIMEOUT_S = 2.0
SOCKET_PATH_MAX = 107  # sun_path (108 bytes with its NUL)
LINKED_COMPONENTS = ("driver", "worker")
READER_THREADS_MAX = 100_000  # a reader thread per link (trio's default limiter has 40)

Deliver = Callable[[Envelope], None]
Relay = Callable[[Envelope], object]


class DirectHello(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    token: str
    address: Address
    pid: int
    relayed: int  # envelopes the connecting side had relayed to the listener


class DirectHelloReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""
    relayed: int = 0  # envelopes the listener had relayed to the connecting side


_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(DirectHello)
_reply_decoder = msgspec.msgpack.Decoder(DirectHelloReply)


def direct_socket_path(session_dir: str, worker_id: str) -> str:
    """Where the worker ``worker_id`` of the node with this session directory listens."""
    return os.path.join(session_dir, f"w-{worker_id}.sock")


@dataclass(slots=True, eq=False)
class _Link:
    peer: Address
    outgoing: bool  # this side connected
    conn: Connection | None = None  # set once the handshake is done
    queued: list[Envelope] = field(default_factory=list)  # sent before the handshake ended
    hold_until: int = 0  # relayed envelopes from the peer to see before the link's
    held: list[Envelope] = field(default_factory=list)
    held_since: float = 0.0
    closed: bool = False

    def send(self, envelope: Envelope) -> bool:
        if self.conn is None:
            self.queued.append(envelope)
            return True
        return self.conn.send(envelope)


@dataclass(slots=True)
class LinkStats:
    sent_direct: int = 0
    received_direct: int = 0
    relayed: int = 0
    links_opened: int = 0
    connect_failures: int = 0
    rejected: int = 0
    held: int = 0
    hold_timeouts: int = 0


class DirectLinks:
    """The links of one driver or worker process (see the module docstring). Trio thread."""

    def __init__(self, *, me: Address, token: str, session_dir: str, relay: Relay,
                 deliver: Deliver, log: Any = None, limits: LocalLimits | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 delivered: Callable[[], None] = lambda: None,
                 round_flush: RoundFlush | None = None) -> None:
        self.me = me
        self._token = token.encode()
        self._token_text = token
        self.session_dir = session_dir
        self._relay = relay
        self._deliver = deliver
        self._delivered = delivered  # after a batch of deliveries (the host runs its kernel)
        self._round_flush = round_flush
        self._limits = limits or LocalLimits()
        self._clock = clock
        self._log = (log or structlog.get_logger("shoal.runtime.direct_link")).bind(
            component="direct_link")
        self._send_links: dict[Address, _Link] = {}  # the one link each peer is sent on
        self._links: list[_Link] = []  # every open link (incoming and outgoing)
        self._holding: list[_Link] = []  # links holding envelopes behind the relay
        self._relayed: dict[Address, int] = {}
        self._relay_received: dict[Address, int] = {}
        self._retry_at: dict[Address, float] = {}
        self._nursery: trio.Nursery | None = None
        self.listen_path = ""
        self.stats = LinkStats()
        self._readers = trio.CapacityLimiter(READER_THREADS_MAX)  # a thread per link

    # --- sending -------------------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        """Sends one envelope on the peer's link, opening one if it can, else relays it."""
        dst = envelope.dst
        link = self._send_links.get(dst)
        if link is None and self._may_link(dst):
            link = self._open(dst)
        if link is not None and link.send(envelope):
            self.stats.sent_direct += 1
            return
        self._relay_one(envelope)

    def _relay_one(self, envelope: Envelope) -> None:
        dst = envelope.dst
        self._relayed[dst] = self._relayed.get(dst, 0) + 1
        self.stats.relayed += 1
        self._relay(envelope)

    def _may_link(self, dst: Address) -> bool:
        if (self._nursery is None or dst.node != self.me.node or dst.component != "worker"
                or dst == self.me or not self.session_dir):
            return False
        retry_at = self._retry_at.get(dst)
        if retry_at is not None:
            if self._clock() < retry_at:
                return False
            del self._retry_at[dst]
        return len(direct_socket_path(self.session_dir, dst.worker)) <= SOCKET_PATH_MAX

    def _open(self, dst: Address) -> _Link:
        link = _Link(peer=dst, outgoing=True)
        self._send_links[dst] = link
        self._links.append(link)
        hello = DirectHello(version=DIRECT_PROTOCOL_VERSION, token=self._token_text,
                            address=self.me, pid=os.getpid(), relayed=self._relayed.get(dst, 0))
        nursery = self._nursery
        assert nursery is not None
        start = functools.partial(nursery.start_soon, self._connect, link, hello)
        if self._round_flush is not None:  # the round may run in a user thread
            self._round_flush.call_in_trio(start)
        else:
            start()
        return link

    async def _connect(self, link: _Link, hello: DirectHello) -> None:
        path = direct_socket_path(self.session_dir, link.peer.worker)
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                stream = await trio.open_unix_socket(path)
        except (OSError, trio.TooSlowError) as exc:
            self._connect_failed(link, f"cannot connect: {exc!r}")
            return
        framed = FramedStream(stream, self._limits.frame_bytes_max)
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await framed.send(_encoder.encode(hello))
                frame = await framed.receive()
            reply = _reply_decoder.decode(frame) if frame is not None else None
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, FrameError,
                msgspec.DecodeError) as exc:
            reply, problem = None, f"handshake failed: {exc!r}"
        else:
            problem = "closed at hello" if reply is None else reply.reason
        if reply is None or not reply.ok:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self._connect_failed(link, problem)
            return
        link.hold_until = reply.relayed
        await self._run(link, Connection(framed, link.peer, self._limits, self._log,
                                         self._round_flush))

    def _connect_failed(self, link: _Link, reason: str) -> None:
        """The queued envelopes go to the relay, in order; the peer is left alone a while."""
        self.stats.connect_failures += 1
        self._log.debug("direct.connect_failed", peer=str(link.peer), reason=reason)
        self._forget(link)
        self._retry_at[link.peer] = self._clock() + RETRY_AFTER_S
        queued, link.queued = link.queued, []
        for envelope in queued:
            self.stats.sent_direct -= 1
            self._relay_one(envelope)

    def _forget(self, link: _Link) -> None:
        link.closed = True
        if self._send_links.get(link.peer) is link:
            del self._send_links[link.peer]
        if link in self._links:
            self._links.remove(link)

    # --- a link's life ---------------------------------------------------------

    async def _run(self, link: _Link, conn: Connection) -> None:
        """Serves an established link until either side closes it."""
        link.conn = conn
        for envelope in link.queued:
            conn.send(envelope)
        link.queued = []
        self.stats.links_opened += 1
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run_writer)
                on_batch = functools.partial(self._on_link_batch_of, link)
                lock = self._round_flush.lock if self._round_flush is not None else None
                if lock is not None:  # kernel rounds may run in any thread holding it
                    reason = await conn.run_reader_in_thread(on_batch, True, lock,
                                                             self._readers)
                else:
                    reason = await conn.run_reader(on_batch, check_src=True)
                nursery.cancel_scope.cancel()
        finally:
            self._forget(link)
            self._release(link)  # what it held still goes in, in order
            await conn.aclose()
            self._log.debug("direct.closed", peer=str(link.peer), reason=reason)

    def _on_link_batch_of(self, link: _Link, _conn: Connection, batch: list[Envelope]) -> None:
        self._on_link_batch(link, batch)

    def _on_link_batch(self, link: _Link, batch: list[Envelope]) -> None:
        mine = [e for e in batch if e.dst == self.me]
        if len(mine) != len(batch):
            self._log.warning("direct.envelopes_dropped", peer=str(link.peer),
                              reason="dst is not this process", count=len(batch) - len(mine))
        self.stats.received_direct += len(mine)
        if link.held or self._relay_received.get(link.peer, 0) < link.hold_until:
            if not link.held:
                link.held_since = self._clock()
                self._holding.append(link)
            link.held.extend(mine)
            self.stats.held += len(mine)
            return
        for envelope in mine:
            self._deliver(envelope)
        self._delivered()

    def _release(self, link: _Link) -> None:
        held, link.held = link.held, []
        link.hold_until = 0
        if link in self._holding:
            self._holding.remove(link)
        for envelope in held:
            self._deliver(envelope)
        if held:
            self._delivered()

    # --- the relay's side ---------------------------------------------------------

    def on_relayed(self, envelope: Envelope) -> None:
        """An envelope for this process came through the daemon: deliver it, then what a
        link held back behind it. The caller calls ``delivered`` after the batch."""
        src = envelope.src
        count = self._relay_received.get(src, 0) + 1
        self._relay_received[src] = count
        self._deliver(envelope)
        if self._holding:
            for link in [h for h in self._holding if h.peer == src and count >= h.hold_until]:
                self._release(link)

    def release_overdue(self) -> None:
        """Delivers envelopes held longer than ``HOLD_MAX_S`` (a relayed one was lost)."""
        now = self._clock()
        for link in list(self._holding):
            if now - link.held_since >= HOLD_MAX_S:
                self.stats.hold_timeouts += 1
                self._log.warning("direct.hold_timeout", peer=str(link.peer),
                                  held=len(link.held), waiting_for=link.hold_until)
                self._release(link)

    @property
    def idle(self) -> bool:
        """Nothing queued or being written on any link."""
        return all(not link.queued and (link.conn is None or link.conn.closed or link.conn.idle)
                   for link in self._links)

    def peers(self) -> list[Address]:
        """The peers this process sends to over a link (established or being set up)."""
        return list(self._send_links)

    # --- the listening side -----------------------------------------------------------

    async def run(self, *, listen: bool, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Runs the links (and, for a worker, the listener) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                if listen:
                    await nursery.start(self._serve)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        path = direct_socket_path(self.session_dir, self.me.worker)
        if len(path) > SOCKET_PATH_MAX:
            self._log.warning("direct.not_listening", path=path, reason="path too long")
            task_status.started()
            return
        _unlink(path)  # a stale file of an earlier process with this id
        self.listen_path = path
        await serve_unix(path, 128, self._serve_one, task_status=task_status)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, self._limits.frame_bytes_max)
        try:
            link = await self._accept(framed)
            if link is not None:
                assert link.conn is not None
                await self._run(link, link.conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError, OSError) as exc:
            self._reject(f"handshake failed: {exc!r}")
        except Exception:  # noqa: BLE001  # one bad peer must never take the process down
            self._log.exception("direct.peer_failed")
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _accept(self, framed: FramedStream) -> _Link | None:
        problem, hello = await self._receive_hello(framed)
        if hello is None or problem:
            self._reject(problem)
            with trio.move_on_after(1.0):
                await framed.send(_encoder.encode(DirectHelloReply(ok=False, reason=problem)))
            return None
        peer = hello.address
        link = _Link(peer=peer, outgoing=False, hold_until=hello.relayed)
        # Atomic with the reply's count: from here on the peer is sent to on this link.
        relayed = self._relayed.get(peer, 0)
        self._send_links.setdefault(peer, link)
        self._links.append(link)
        await framed.send(_encoder.encode(DirectHelloReply(ok=True, relayed=relayed)))
        link.conn = Connection(framed, peer, self._limits, self._log, self._round_flush)
        return link

    async def _receive_hello(self, framed: FramedStream) -> tuple[str, DirectHello | None]:
        uid = peer_uid(framed.stream)
        if uid is not None and uid != os.getuid():
            return f"peer uid {uid} is not this process's", None
        return await receive_hello(framed, _hello_decoder, self._limits.hello_timeout_s,
                                   self._check)

    def _check(self, hello: DirectHello) -> str:
        if not hmac.compare_digest(hello.token.encode(), self._token):
            return "wrong cluster token" if hello.token else "missing cluster token"
        if hello.version != DIRECT_PROTOCOL_VERSION:
            return (f"direct link protocol version {hello.version}; this process speaks "
                    f"{DIRECT_PROTOCOL_VERSION}")
        peer = hello.address
        if peer.node != self.me.node or peer.component not in LINKED_COMPONENTS:
            return f"{peer} is not a driver or worker of node {self.me.node}"
        if peer == self.me:
            return "a process cannot link to itself"
        return ""

    def _reject(self, reason: str) -> None:
        self.stats.rejected += 1
        self._log.warning("direct.rejected", reason=reason)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
