"""The daemon side of the object-store protocol: leases on the node's store, and a server.

Theory of operation
-------------------
``StoreService`` answers the requests of ``object_store_protocol`` against one
``SharedMemoryStore`` and keeps each client's leases. A lease holds a
memoryview from the store (the writer's while the region is being filled, a
reader's once it is sealed), and that view is what keeps the region from being
evicted, spilled or reused while the client may touch it: the store already
treats a region with live views as in use. Ending a lease drops the view; a
lease on a region never sealed also deletes it, and so does a client's
disconnection for all of its leases. A region being written lives under a
temporary id (``~<client>.<lease>``) until ``SealRegion`` renames it.

``StoreServer`` serves the protocol on a Unix-domain ``SOCK_SEQPACKET`` socket
from one thread of its own (``selectors``), so a client's request never waits
for the daemon's trio loop, and the loop never waits for a client. Spilling and
restoring happen inside store calls and hold the store's lock while they write
or read the disk, so the daemon's own store calls (chunks of transfers) can wait
on them; nothing else does. A peer must be of our uid (``SO_PEERCRED``) and
present the cluster token in its first packet; a peer that fails, or sends a
packet that does not decode, is logged and disconnected; the server keeps
serving.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import structlog
from shoal.transports.object_store import SharedMemoryStore
from shoal.transports.object_store_errors import ObjectStoreError, ObjectStoreFullError
from shoal.transports.object_store_protocol import (
    PACKET_BYTES_MAX,
    PROTOCOL_VERSION,
    CreateRegion,
    OpenObject,
    RegionGranted,
    ReleaseLeases,
    Reply,
    Request,
    SealRegion,
    StoreHello,
    StoreRefused,
    StoreWelcome,
    decode_requests,
    encode_packet,
)

__all__ = ["StoreServer", "StoreService"]

LISTEN_BACKLOG = 128


@dataclass(slots=True, eq=False)
class _Lease:
    key: str  # the object's id in the store (temporary while pending)
    view: memoryview | None  # keeps the region in use while the client may touch it
    pending: bool


@dataclass(slots=True, eq=False)
class _Client:
    pid: int = 0
    leases: dict[int, _Lease] = field(default_factory=dict)


class StoreService:
    """Requests of the node's processes against its store, and their leases.

    Args:
        store: The node's store (the service does not close it).
        missing_reasons: Why an object this node should hold is not in the store (a
            transfer that could not be stored, say), by object id; quoted to readers.
    """

    def __init__(self, store: SharedMemoryStore,
                 missing_reasons: dict[str, str] | None = None) -> None:
        self.store = store
        self.missing_reasons = missing_reasons if missing_reasons is not None else {}
        self._clients: dict[int, _Client] = {}

    def welcome(self, client: int, pid: int) -> StoreWelcome:
        self._clients[client] = _Client(pid=pid)
        return StoreWelcome(arena_path=self.store.path, capacity_bytes=self.store.capacity_bytes)

    def disconnect(self, client: int) -> None:
        """Ends every lease of a client that went away (regions never sealed are deleted)."""
        state = self._clients.pop(client, None)
        if state is not None:
            self._end(list(state.leases.values()))

    def lease_count(self, client: int | None = None) -> int:
        clients = self._clients.values() if client is None else [self._clients[client]]
        return sum(len(c.leases) for c in clients)

    def handle(self, client: int, request: Request) -> Reply | None:
        """Answers one request of an accepted client (None: it wants no answer)."""
        state = self._clients[client]
        try:
            match request:
                case CreateRegion():
                    return self._create(client, state, request)
                case SealRegion():
                    return self._seal(state, request)
                case OpenObject():
                    return self._open(state, request)
                case ReleaseLeases():
                    self._end([state.leases.pop(i) for i in request.leases if i in state.leases])
                    return None
                case StoreHello():
                    return _refuse("bad_request", "object store: hello sent twice")
        except ObjectStoreFullError as exc:
            return StoreRefused(kind="full", message=str(exc), size=exc.size,
                                capacity_bytes=exc.capacity_bytes, used_bytes=exc.used_bytes)
        except ObjectStoreError as exc:
            return _refuse("error", str(exc))
        return _refuse("bad_request", f"object store: unexpected {type(request).__name__}")

    def _create(self, client: int, state: _Client, request: CreateRegion) -> Reply:
        if request.lease in state.leases:
            return _refuse("bad_request", f"object store: lease {request.lease} is in use")
        key = f"~{client}.{request.lease}"
        try:
            view = self.store.create(key, request.size)
        except ObjectStoreFullError as exc:  # the key means nothing to the user
            raise ObjectStoreFullError(
                str(exc).replace(f"object {key!r}", "a new object"), object_id="",
                size=exc.size, capacity_bytes=exc.capacity_bytes, used_bytes=exc.used_bytes,
            ) from None
        offset, size = self.store.location(key)
        state.leases[request.lease] = _Lease(key=key, view=view, pending=True)
        return RegionGranted(offset=offset, size=size)

    def _seal(self, state: _Client, request: SealRegion) -> Reply:
        lease = state.leases.get(request.lease)
        if lease is None or not lease.pending:
            return _refuse("bad_request", f"object store: lease {request.lease} holds no "
                           "region being written; create one first")
        store, object_id = self.store, request.object_id
        lease.view = None  # the writer's view: the client is done writing
        store.delete(object_id)  # an older copy (a retried task's return) is replaced
        store.rename(lease.key, object_id)
        lease.key, lease.pending = object_id, False
        store.seal(object_id)
        if request.primary:
            store.pin(object_id)
        lease.view = store.get(object_id)
        self.missing_reasons.pop(object_id, None)
        offset, size = store.location(object_id)
        return RegionGranted(offset=offset, size=size)

    def _open(self, state: _Client, request: OpenObject) -> Reply:
        if request.lease in state.leases:
            return _refuse("bad_request", f"object store: lease {request.lease} is in use")
        object_id = request.object_id
        if not self.store.contains(object_id):
            why = self.missing_reasons.get(object_id, "it was never stored here, was freed, "
                                           "or was an evicted secondary copy")
            return _refuse("missing", f"object {object_id} is not in the object store of "
                           f"this node: {why}")
        view = self.store.get(object_id)
        offset, size = self.store.location(object_id)
        state.leases[request.lease] = _Lease(key=object_id, view=view, pending=False)
        return RegionGranted(offset=offset, size=size)

    def _end(self, leases: list[_Lease]) -> None:
        for lease in leases:
            lease.view = None
            if lease.pending:
                self.store.delete(lease.key)


def _refuse(kind: Any, message: str) -> StoreRefused:
    return StoreRefused(kind=kind, message=message)


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


class StoreServer:
    """Serves a ``StoreService`` on a ``SOCK_SEQPACKET`` socket from its own thread.

    Args:
        service: What answers the requests.
        path: The socket to create (mode 0600; removed by ``stop``).
        token: The cluster token every client must present.
        log: A structlog logger.
    """

    def __init__(self, service: StoreService, path: str, token: str, log: Any = None) -> None:
        self.service = service
        self.path = path
        self._token = token
        self._log = log or structlog.get_logger("shoal.transports.object_store")
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._wake_r, self._wake_w = os.pipe()
        self._accepted: dict[int, socket.socket] = {}  # by fileno, not yet authenticated
        self._clients: dict[int, socket.socket] = {}
        self._next_client = 0
        self._client_ids: dict[int, int] = {}  # fileno -> client id
        self._thread = threading.Thread(target=self._run, name="shoal-object-store", daemon=True)
        self._stop = False

    def start(self) -> None:
        """Binds the socket and starts serving; raises OSError if it cannot bind."""
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(self.path)
        finally:
            os.umask(old_umask)
        self._listener.listen(LISTEN_BACKLOG)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops serving, ends every lease, removes the socket. Idempotent."""
        if self._stop:
            return
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        for fileno in list(self._accepted) + list(self._clients):
            self._drop(fileno)
        self._listener.close()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select():
                if key.data == "listen":
                    self._accept()
                elif key.data == "client":
                    self._serve(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        if _peer_uid(sock) != os.getuid():
            self._log.warning("object_store.peer_refused", reason="another user")
            sock.close()
            return
        sock.setblocking(True)
        self._accepted[sock.fileno()] = sock
        self._selector.register(sock, selectors.EVENT_READ, "client")

    def _serve(self, sock: socket.socket) -> None:
        fileno = sock.fileno()
        try:
            packet = sock.recv(PACKET_BYTES_MAX)
            if not packet:
                self._drop(fileno)
                return
            requests = decode_requests(packet)
        except (OSError, ValueError) as exc:
            self._log.warning("object_store.bad_packet", error=str(exc))
            self._drop(fileno)
            return
        try:
            replies = self._hello(fileno, requests) if fileno in self._accepted else \
                self._answer(self._client_ids[fileno], requests)
        except Exception:  # noqa: BLE001  # a bug of ours: drop the client, serve the rest
            self._log.exception("object_store.request_failed", requests=requests)
            self._drop(fileno)
            return
        if replies:
            try:
                sock.send(encode_packet(replies))
            except OSError:
                self._drop(fileno)

    def _answer(self, client: int, requests: list[Request]) -> list[Reply]:
        replies = (self.service.handle(client, request) for request in requests)
        return [reply for reply in replies if reply is not None]

    def _hello(self, fileno: int, requests: list[Request]) -> list[Reply]:
        sock = self._accepted.pop(fileno)
        hello = requests[0] if len(requests) == 1 else None
        if not isinstance(hello, StoreHello) or hello.version != PROTOCOL_VERSION or \
                not hmac.compare_digest(hello.token.encode(), self._token.encode()):
            self._log.warning("object_store.peer_refused", reason="bad hello or token")
            with contextlib.suppress(OSError):
                sock.send(encode_packet([_refuse(
                    "unauthorized", "object store: expected a hello with the cluster token "
                    f"and protocol version {PROTOCOL_VERSION}")]))
            self._selector.unregister(sock)
            sock.close()
            return []
        self._next_client += 1
        self._clients[fileno] = sock
        self._client_ids[fileno] = self._next_client
        return [self.service.welcome(self._next_client, hello.pid)]

    def _drop(self, fileno: int) -> None:
        sock = self._accepted.pop(fileno, None) or self._clients.pop(fileno, None)
        client = self._client_ids.pop(fileno, None)
        if client is not None:
            self.service.disconnect(client)
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
