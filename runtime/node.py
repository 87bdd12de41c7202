"""The node daemon: ``python -m shoal.runtime.node ...``, one per node.

Theory of operation
-------------------
One trio loop runs the node's kernels (the raylet; the GCS too on the head
node) on a ``KernelLoop``, and three transports:

* a Unix-domain socket (``runtime/local_transport.py``) for the driver and
  worker processes of this node;
* gRPC (``transports/grpc_transport.py``, 127.0.0.1 by default) for the
  daemons of other nodes; its endpoint is the raylet's ``RayletConfig.endpoint``
  and so appears in the GCS node table (``NodeInfo.endpoint``). Its port is
  reserved at once (bound, not listening); on the head, gRPC itself is imported
  in a thread and started in the background while the kernels already serve the
  local processes: at once for ``shoal start --head`` (whose joiners come
  next), ``GRPC_START_DELAY_S`` after the daemon is ready for the embedded
  cluster of ``init()`` (its import holds the GIL: not while the kernels start,
  nor during the first driver's first lease; a node that joins retries until it
  listens). A node that joins needs gRPC first, to reach the GCS;
* a pipe to the process that started the daemon (``--parent-fd``): when it
  reads end-of-file (the parent died, however), the daemon shuts down.

Routing. Every envelope (from a kernel's ``Send``, a local socket or gRPC) is
routed by its destination address: a kernel this daemon hosts gets it as
``Received``; a driver or worker of this node gets it over its socket; an
address on another node goes over gRPC to that node's endpoint, looked up in
the raylet's node view (the head's endpoint is also known from the command
line, so the GCS is reachable before the first view arrives). Envelopes from
gRPC are only delivered locally, never forwarded again. What cannot be routed
is dropped, like a lost message: the kernels retransmit.

Workers. ``StartWorker`` has the zygote (``runtime/zygote.py``, forked from
the daemon before any thread exists) fork a worker, or else execs
``python -m shoal.runtime.worker``; when the process ends, the raylet gets
``WorkerExited`` with the cause. ``KillWorker`` kills it (SIGKILL). Workers die
with their daemon (``PR_SET_PDEATHSIG`` and socket end-of-file).

Drivers. When a driver's connection closes (``shoal.shutdown()``, a crash,
SIGKILL), the raylet gets ``DriverExited``: it ends the leases the driver held
and reports the exit to the GCS, which ends the job (its non-detached actors
and placement groups; ``kernel/gcs/jobs.py``).

Objects. The daemon owns the node's shared-memory object store
(``runtime/node_objects.py``): its arena, the server its drivers and workers ask
for regions (a socket and a thread of its own, announced in the local
``HelloReply``), and the raylet's ``SendObjectChunks``/``WriteObjectChunk``/
``DeleteObject`` effects. The arena and spill files are removed however the
daemon stops.

Durable state. On the head node the GCS's ``StorePut``/``StoreDelete`` go to a
``FileStore`` in the session directory, recovered when the daemon restarts.

Start-up imports. ``init()`` waits for the daemon, and the daemon's start-up is
mostly imports, so they come in two halves around the zygote's fork. This
module imports only what the daemon and its workers share (trio, structlog, the
wire format and the kernels' protocols, the local transport; ``shoal`` itself
skips its API in this process, see ``shoal/__init__.py``). ``main`` then forks
the zygote, which imports what only workers need (the API, the core worker
machine, cloudpickle) on the other core, while the daemon imports what only it
needs (the GCS and raylet machines, the object store) inside ``NodeDaemon`` and
``start_kernels``. gRPC comes later still (above); numpy with the first object.

Startup and shutdown. When the raylet is registered the daemon writes one JSON
line to ``--ready-fd`` (node id, socket path, gRPC endpoint, pid; ``error`` when
the head refused this node's token, and the daemon then exits). SIGTERM,
SIGINT or the parent's end-of-file stop it: workers are killed and reaped, the
transports closed, the socket removed, and with ``--cleanup-session`` the
session directory and the node's ``/dev/shm`` files removed.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio
from shoal.kernel.ids import NodeId, ObjectId, WorkerId
from shoal.kernel.messages import Address, Msg, Received, Started
from shoal.kernel.raylet.object_protocol import (
    DeleteObject,
    ObjectEvicted,
    SendObjectChunks,
    WriteObjectChunk,
)
from shoal.kernel.raylet.protocol import DriverExited, KillWorker, StartWorker, WorkerExited
from shoal.kernel.wire import Envelope
from shoal.runtime.direct_link import direct_socket_path
from shoal.runtime.gcs_store import FileStore
from shoal.runtime.kernel_host import KernelLoop, UnhandledEffect, configure_logging
from shoal.runtime.local_transport import Connection, HelloReply, LocalServer
from shoal.runtime.processes import exit_cause, python_command, remove_session
from shoal.runtime.zygote import ZygoteClient, ZygoteError, fork_zygote

if TYPE_CHECKING:
    from shoal.kernel.raylet import Raylet
    from shoal.transports.grpc_transport import GrpcTransport

SESSION_FILE = "session.json"
WORKER_REAP_S = 5.0
REGISTER_WAIT_S = 30.0
GRPC_START_DELAY_S = 1.0  # after ready, on the head (see _start_grpc_later)
OBJECT_CHUNK_BYTES = 4 << 20  # chunks of transfers between nodes (RayletConfig.objects)


@dataclass(frozen=True, slots=True)
class NodeOptions:
    session_dir: str
    node_id: NodeId
    head: bool
    head_node_id: NodeId
    resources: dict[str, float]
    token_file: str
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    gcs_endpoint: str = ""
    ready_fd: int = -1
    parent_fd: int = -1
    cleanup_session: bool = False
    worker_cwd: str = ""
    object_store_memory: int = 0

    @property
    def socket_path(self) -> str:
        return os.path.join(self.session_dir, f"{self.node_id}.sock")


@dataclass(slots=True, eq=False)
class _WorkerProcess:
    pid: int = 0
    process: trio.Process | None = None  # when exec'd by the daemon, not forked by the zygote
    killed_for: str = ""
    ended: trio.Event = field(default_factory=trio.Event)

    def kill(self) -> None:
        if not self.pid or self.ended.is_set():
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class NodeDaemon:
    """The kernels, transports and worker processes of one node."""

    def __init__(self, opts: NodeOptions, token: str, endpoint: str,
                 nursery: trio.Nursery) -> None:
        self.opts = opts
        self.node_id = opts.node_id
        self.endpoint = endpoint
        self.grpc: GrpcTransport | None = None  # up a moment after the kernels (see run_grpc)
        self._nursery = nursery
        self._log = structlog.get_logger("shoal.runtime.node").bind(node=str(opts.node_id))
        self.loop = KernelLoop(self.route, log=self._log)
        self.raylet_address = Address(node=opts.node_id, component="raylet")
        # Imported here, after the zygote's fork (see main): only the daemon needs them.
        from shoal.kernel.gcs import gcs_address
        from shoal.runtime.node_objects import NodeObjects

        self.gcs_address = gcs_address(opts.head_node_id)
        self._static_endpoints = {opts.head_node_id: opts.gcs_endpoint or endpoint}
        self.workers: dict[WorkerId, _WorkerProcess] = {}
        self.store: FileStore | None = None
        self.zygote: ZygoteClient | None = None
        self._raylet_kernel: Raylet | None = None  # set by start_kernels
        self.registered = trio.Event()
        self.stopping = False  # no new workers, no more reports to the raylet
        self.dropped = 0
        self.objects = NodeObjects(opts.session_dir, opts.node_id, opts.object_store_memory,
                                   token, self.route, self._log, backlog=self._backlog,
                                   spawn=nursery.start_soon)
        self.objects.store.on_evicted = self._on_object_evicted
        welcome = HelloReply(ok=True, node_id=opts.node_id, raylet=self.raylet_address,
                             gcs=self.gcs_address, session_dir=opts.session_dir,
                             store_socket=self.objects.socket_path)
        self.server = LocalServer(path=opts.socket_path, token=token, welcome=welcome,
                                  on_batch=self._on_local_batch, on_connect=self._on_connect,
                                  on_disconnect=self._on_disconnect,
                                  on_status=self._status,
                                  round_flush=self.loop.round_flush)

    def _status(self) -> bytes:
        from shoal.runtime import node_status  # on the first `shoal status`, not at start-up

        return node_status.encode(self)

    def _on_object_evicted(self, object_id: str) -> None:
        # Any thread (the store server's or this one), under the store's lock: only queue.
        self.loop.post_from_thread(
            [(self.raylet_address, ObjectEvicted(object_id=ObjectId(object_id)))])

    # --- kernels -------------------------------------------------------------

    def start_kernels(self) -> None:
        # The machines are imported here, after the zygote is forked (see main): its
        # workers never run them, and their import is a good part of the daemon's start-up.
        from shoal.kernel.gcs import Gcs
        from shoal.kernel.raylet import Raylet, RayletConfig
        from shoal.kernel.raylet.objects import ObjectsConfig

        if self.opts.head:
            self.store = FileStore.open(os.path.join(self.opts.session_dir, "gcs.store"))
            gcs = Gcs(recovered=self.store.tables)
            self.loop.add_kernel(self.gcs_address, gcs, store=self.store)
            self.loop.post(self.gcs_address, Started())
        config = RayletConfig(gcs=self.gcs_address, resources=self.opts.resources,
                              endpoint=self.endpoint, objects=ObjectsConfig(
                                  chunk_bytes=OBJECT_CHUNK_BYTES))
        raylet = Raylet(self.node_id, config, boot=time.time_ns() // 1_000_000)
        self._raylet_kernel = raylet
        self.loop.add_kernel(self.raylet_address, raylet, on_effect=self._on_raylet_effect)
        self.loop.after_round.append(self._check_registered)
        self.loop.post(self.raylet_address, Started())

    def _raylet(self) -> Raylet:
        assert self._raylet_kernel is not None, "node daemon: the kernels are not started"
        return self._raylet_kernel

    def _check_registered(self) -> None:
        if self.registered.is_set():
            return
        from shoal.kernel.raylet import MemberPhase

        if self._raylet().phase is MemberPhase.ALIVE:
            self.registered.set()

    # --- routing ---------------------------------------------------------------

    def route(self, src: Address, dst: Address, msg: Msg, *, wake: bool = True) -> None:
        """Delivers one message toward ``dst`` (see the module docstring).

        Args:
            wake: wake the kernel loop's task for a local kernel's input; a transport's
                batch handler passes False and runs the loop itself after the batch.
        """
        if dst.node == self.node_id:
            if self.loop.hosts(dst):
                self.loop.post(dst, Received(src=src, msg=msg), wake=wake)
            elif not self.server.send(Envelope(src=src, dst=dst, msg=msg)):
                self._drop("route.no_local_peer", dst, msg)
            return
        endpoint = self._endpoint_of(dst.node)
        if not endpoint or self.grpc is None:
            self._drop("route.unknown_node" if not endpoint else "route.grpc_not_up", dst, msg)
            return
        try:
            self.grpc.send(endpoint, Envelope(src=src, dst=dst, msg=msg))
        except trio.ClosedResourceError:
            self._drop("route.transport_closed", dst, msg)

    def _backlog(self, node: str) -> int:
        """Envelopes the gRPC transport holds for ``node``, not yet written."""
        endpoint = self._endpoint_of(NodeId(node))
        grpc = self.grpc
        return grpc.backlog(endpoint) if grpc is not None and endpoint else 0

    def _endpoint_of(self, node: NodeId) -> str:
        info = self._raylet().node_view.get(node)
        if info is not None and info.endpoint:
            return info.endpoint
        return self._static_endpoints.get(node, "")

    def _drop(self, why: str, dst: Address, msg: Msg) -> None:
        self.dropped += 1
        self._log.debug(why, dst=str(dst), msg_type=type(msg).__name__)

    def _on_local_batch(self, conn: Connection, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:  # the server checked that src is the peer
            self.route(envelope.src, envelope.dst, envelope.msg, wake=False)
        self.loop.run_now()

    async def run_grpc(self, token: str, reservation: socket.socket, *,
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Starts the gRPC transport on the reserved port and routes what it receives.

        gRPC is imported in a thread: the kernels and the local socket serve meanwhile.
        """
        module = await trio.to_thread.run_sync(
            importlib.import_module, "shoal.transports.grpc_transport")
        port = reservation.getsockname()[1]
        try:
            async with module.open_grpc_transport(token=token, bind_host=self.opts.grpc_host,
                                                  port=port) as grpc:
                reservation.close()
                self.grpc = grpc
                task_status.started()
                async for batch in grpc.incoming:
                    self._on_grpc_batch(batch)
        except OSError as exc:
            self._log.error("grpc.start_failed", endpoint=self.endpoint, error=str(exc))
            task_status.started()
        finally:
            self.grpc = None
            reservation.close()

    def _on_grpc_batch(self, batch: list[Envelope]) -> None:
        for envelope in batch:
            if envelope.dst.node != self.node_id:
                self._drop("route.not_ours", envelope.dst, envelope.msg)
                continue
            self.route(envelope.src, envelope.dst, envelope.msg, wake=False)
        self.loop.run_now()

    def _on_connect(self, conn: Connection) -> None:
        self._log.info("process.connected", peer=str(conn.peer), pid=conn.pid)

    def _on_disconnect(self, conn: Connection) -> None:
        if conn.peer.component == "driver" and not self.stopping:
            # However the driver ended (shutdown, crash, SIGKILL), its job ends: the raylet
            # ends its leases here and tells the GCS, which ends its actors and groups.
            self._log.info("driver.exited", driver=str(conn.peer), pid=conn.pid)
            self.loop.post(self.raylet_address, DriverExited(
                driver=conn.peer, cause=f"its connection to node {self.node_id!r} closed "
                                        f"(process {conn.pid} ended or disconnected)"))
        if conn.peer.component == "worker":
            self._kill(WorkerId(conn.peer.worker),
                       "killed by its node daemon: its connection to the daemon closed")

    # --- workers -----------------------------------------------------------

    def _on_raylet_effect(self, address: Address, effect: Msg) -> None:
        match effect:
            case StartWorker() if self.stopping:
                pass
            case StartWorker():
                self.workers.setdefault(effect.worker_id, _WorkerProcess())
                self._nursery.start_soon(self._run_worker, effect.worker_id)
            case KillWorker():
                self._kill(effect.worker_id, f"killed by its raylet: {effect.reason}")
            case SendObjectChunks() | WriteObjectChunk() | DeleteObject():
                self.objects.on_effect(address, effect, self._raylet().objects.is_local)
            case _:
                raise UnhandledEffect(f"node daemon: no handler for {type(effect).__name__}")

    def _worker_args(self, worker_id: WorkerId) -> list[str]:
        o = self.opts
        return ["--socket", o.socket_path, "--token-file", o.token_file, "--node-id", o.node_id,
                "--worker-id", worker_id, "--session-dir", o.session_dir]

    async def _run_worker(self, worker_id: WorkerId) -> None:
        entry = self.workers[worker_id]
        log_path = os.path.join(self.opts.session_dir, "logs", f"worker-{worker_id}.log")
        try:
            returncode = await self._start_and_wait(worker_id, entry, log_path)
        except OSError as exc:
            self._log.error("worker.start_failed", worker=worker_id, error=str(exc))
            cause, code = f"could not start the worker process: {exc}", 127
        else:
            cause, code = exit_cause(returncode, entry.killed_for)
        finally:
            entry.ended.set()
        self.workers.pop(worker_id, None)
        _remove_file(direct_socket_path(self.opts.session_dir, worker_id))  # if it died holding it
        self._log.info("worker.exited", worker=worker_id, cause=cause, exit_code=code)
        if not self.stopping:
            self.loop.post(self.raylet_address, WorkerExited(worker_id=worker_id, cause=cause,
                                                             exit_code=code))

    async def _start_and_wait(self, worker_id: WorkerId, entry: _WorkerProcess,
                              log_path: str) -> int:
        """Starts the worker (forked by the zygote, else exec'd); returns its return code."""
        args, cwd = self._worker_args(worker_id), self.opts.worker_cwd
        if self.zygote is not None and self.zygote.alive:
            try:
                entry.pid = await self.zygote.spawn(worker_id, args, log_path, cwd)
            except ZygoteError as exc:
                self._log.warning("worker.zygote_failed", worker=worker_id, error=str(exc))
            else:
                self._started(worker_id, entry)
                return await self.zygote.wait(entry.pid)
        command = python_command("shoal.runtime.worker", *args, "--parent-pid", str(os.getpid()))
        out = _open_log(log_path)
        try:
            entry.process = await trio.lowlevel.open_process(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=cwd or None)
        finally:
            os.close(out)
        entry.pid = entry.process.pid
        self._started(worker_id, entry)
        return await entry.process.wait()

    def _started(self, worker_id: WorkerId, entry: _WorkerProcess) -> None:
        self._log.info("worker.started", worker=worker_id, pid=entry.pid)
        if entry.killed_for:
            entry.kill()

    def _kill(self, worker_id: WorkerId, reason: str) -> None:
        entry = self.workers.get(worker_id)
        if entry is None or entry.killed_for:
            return
        entry.killed_for = reason or "killed"
        entry.kill()

    async def stop_workers(self) -> None:
        """Kills every worker and waits (briefly) until each is reaped."""
        self.stopping = True
        entries = list(self.workers.values())
        for entry in entries:
            entry.kill()
        with trio.move_on_after(WORKER_REAP_S):
            for entry in entries:
                await entry.ended.wait()
        if self.zygote is not None:
            await self.zygote.aclose()


# --- the process -------------------------------------------------------------------


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


async def _watch_parent(fd: int) -> None:
    """Returns when the parent's end of the pipe closes (the parent exited)."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        if not os.read(fd, 4096):
            return


async def _watch_signals() -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            return int(signum)
    return 0


def _write_ready(opts: NodeOptions, info: dict[str, Any]) -> None:
    """Publishes ``session.json`` (for drivers that join) and tells the parent we are up."""
    path = os.path.join(opts.session_dir, SESSION_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(f"{path}.tmp", path)
    if opts.ready_fd < 0:
        return
    try:
        os.write(opts.ready_fd, (json.dumps(info) + "\n").encode())
    finally:
        os.close(opts.ready_fd)


def load_token(opts: NodeOptions) -> str:
    """The cluster token: generated into ``token_file`` by a head that has none yet.

    It is ``transports.grpc_transport.generate_token()``'s format (32 hex digits, 128
    random bits), made here without importing gRPC on the start-up path.
    """
    if opts.head and not os.path.exists(opts.token_file):
        fd = os.open(opts.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(16))
    with open(opts.token_file, encoding="ascii") as f:
        return f.read().strip()


async def serve(opts: NodeOptions, token: str,
                zygote_parts: tuple[int, socket.socket] | None = None) -> str:
    """Runs the daemon until it is told to stop; returns why it stopped."""
    log = structlog.get_logger("shoal.runtime.node").bind(node=str(opts.node_id))
    zygote = ZygoteClient(*zygote_parts, log) if zygote_parts is not None else None
    reservation = _reserve_port(opts.grpc_host, opts.grpc_port)
    endpoint = _join_host_port(opts.grpc_host, reservation.getsockname()[1])
    daemon: NodeDaemon | None = None
    try:
        async with trio.open_nursery() as nursery:
            daemon = NodeDaemon(opts, token, endpoint, nursery)
            daemon.zygote = zygote
            if zygote is not None:
                nursery.start_soon(zygote.run)
            start_grpc: Callable[[], None] | None = None
            if opts.head and opts.parent_fd >= 0:  # an embedded cluster's: after it is ready
                start_grpc = functools.partial(nursery.start_soon, _start_grpc_later, daemon,
                                               token, reservation)
            elif opts.head:  # `shoal start --head`: joiners come at once; in the background
                nursery.start_soon(daemon.run_grpc, token, reservation)
            else:  # the GCS is only reachable over gRPC
                await nursery.start(daemon.run_grpc, token, reservation)
            reason = await _run_daemon(daemon, nursery, log, start_grpc)
            nursery.cancel_scope.cancel()
    finally:
        reservation.close()
        if daemon is not None:
            daemon.objects.close()  # the arena and spill files go, however we stop
        if zygote is not None:
            await zygote.aclose()
    return reason


async def _start_grpc_later(daemon: NodeDaemon, token: str, reservation: socket.socket) -> None:
    """Starts the head's gRPC transport ``GRPC_START_DELAY_S`` after the daemon is ready:
    importing gRPC holds the daemon's GIL for a good tenth of a second, which would
    otherwise land on the first driver's first lease and worker start."""
    await trio.sleep(GRPC_START_DELAY_S)
    await daemon.run_grpc(token, reservation)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Binds (without listening) the port gRPC will listen on, so the endpoint is known
    before gRPC is imported; gRPC binds it too (SO_REUSEADDR) and the reservation closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _run_daemon(daemon: NodeDaemon, nursery: trio.Nursery, log: Any,
                      start_grpc: Callable[[], None] | None = None) -> str:
    opts = daemon.opts
    await nursery.start(daemon.loop.run)
    daemon.objects.start()
    await nursery.start(daemon.server.serve)
    daemon.start_kernels()
    refused = await _wait_registered(daemon)
    _write_ready(opts, {
        "node_id": opts.node_id, "socket": opts.socket_path, "pid": os.getpid(),
        "endpoint": daemon.endpoint, "registered": daemon.registered.is_set(),
        "error": refused})
    if refused:  # the head refused our token: retrying cannot help
        log.error("node.join_refused", reason=refused)
        await daemon.stop_workers()
        return refused
    log.info("node.ready", endpoint=daemon.endpoint, socket=opts.socket_path)
    if start_grpc is not None:
        # Only now: importing gRPC (in a thread) would hold the GIL while the kernels start.
        start_grpc()
    reason = await _wait_for_stop(opts)
    log.info("node.stopping", reason=reason)
    await daemon.stop_workers()
    if daemon.store is not None:
        daemon.store.close()
    return reason


async def _wait_registered(daemon: NodeDaemon) -> str:
    """Waits (``REGISTER_WAIT_S`` at most) until the raylet is registered; returns why it
    never will be when the head's gRPC server refused this node's token, else ""."""
    with trio.move_on_after(REGISTER_WAIT_S):
        while not daemon.registered.is_set():
            grpc = daemon.grpc
            if not daemon.opts.head and grpc is not None and grpc.stats.auth_failures:
                return (f"the head at {daemon.opts.gcs_endpoint} rejected this node's cluster "
                        "token; pass the token that `shoal start --head` printed")
            with trio.move_on_after(0.05):
                await daemon.registered.wait()
    return ""


async def _wait_for_stop(opts: NodeOptions) -> str:
    reason = "stopped"
    async with trio.open_nursery() as nursery:
        async def parent() -> None:
            nonlocal reason
            await _watch_parent(opts.parent_fd)
            reason = "the process that started the daemon exited"
            nursery.cancel_scope.cancel()

        async def signals() -> None:
            nonlocal reason
            signum = await _watch_signals()
            reason = f"received {signal.Signals(signum).name}"
            nursery.cancel_scope.cancel()

        if opts.parent_fd >= 0:
            nursery.start_soon(parent)
        nursery.start_soon(signals)
    return reason


def parse_args(argv: list[str] | None = None) -> NodeOptions:
    p = argparse.ArgumentParser(prog="python -m shoal.runtime.node",
                                description="shoal node daemon (raylet, and GCS on the head)")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--head", action="store_true")
    p.add_argument("--head-node-id", default="", help="the head's node id (default: this node)")
    p.add_argument("--gcs-endpoint", default="", help="HOST:PORT of the head (non-head nodes)")
    p.add_argument("--resources", default='{"CPU": 1}', help="JSON map of resources")
    p.add_argument("--token-file", required=True)
    p.add_argument("--grpc-host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--ready-fd", type=int, default=-1)
    p.add_argument("--parent-fd", type=int, default=-1)
    p.add_argument("--cleanup-session", action="store_true")
    p.add_argument("--worker-cwd", default="")
    p.add_argument("--object-store-memory", type=int, default=0)
    a = p.parse_args(argv)
    if not a.head and not (a.head_node_id and a.gcs_endpoint):
        p.error("a non-head node needs --head-node-id and --gcs-endpoint")
    return NodeOptions(
        session_dir=a.session_dir, node_id=NodeId(a.node_id), head=a.head,
        head_node_id=NodeId(a.head_node_id or a.node_id), resources=json.loads(a.resources),
        token_file=a.token_file, grpc_host=a.grpc_host, grpc_port=a.grpc_port,
        gcs_endpoint=a.gcs_endpoint, ready_fd=a.ready_fd, parent_fd=a.parent_fd,
        cleanup_session=a.cleanup_session, worker_cwd=a.worker_cwd,
        object_store_memory=a.object_store_memory)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logging(level=os.environ.get("SHOAL_LOG_LEVEL", "INFO"))
    log = structlog.get_logger("shoal.runtime.node").bind(node=str(opts.node_id))
    os.makedirs(os.path.join(opts.session_dir, "logs"), exist_ok=True)
    # Now: no thread exists yet in this process, and only the imports that the daemon and
    # the workers share are done (see "Start-up imports" above).
    zygote = fork_zygote(log)
    try:
        reason = trio.run(serve, opts, load_token(opts), zygote)
    finally:
        if opts.cleanup_session:
            remove_session(opts.session_dir)
    print(f"shoal node {opts.node_id}: stopped ({reason})", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is closed, reaped and removed by now: skip the interpreter's teardown
    # (joining gRPC's threads, collecting modules), which costs ~0.1 s on every shutdown.
    sys.stdout.flush()
    os._exit(code)
