"""The node daemons that ``shoal start`` runs on this machine, and how to find them.

Theory of operation
-------------------
State directory. Everything ``shoal start`` makes lives in one per-user
directory, ``<base>/shoal-cluster-<uid>`` (mode 0700), where ``<base>`` is
``$SHOAL_TMPDIR`` or ``/tmp`` (``processes.base_dir``):

* ``cluster.json`` (mode 0600, it holds the token): the cluster this machine
  runs or belongs to, like Ray's ``/tmp/ray/ray_current_cluster``: its address
  (the head's gRPC ``HOST:PORT``), its token, the head's node id, and whether
  the head runs here. ``shoal.init(address="auto")`` and ``shoal status`` read it.
* one session directory per node daemon, named after its node id: the cluster
  ``token`` (0600), ``node.json`` (written by ``shoal start`` once the daemon is
  spawned: head or not, the cluster's address, the pid), ``session.json``
  (written by the daemon once it serves: its socket and gRPC endpoint), the
  daemon's Unix socket, and ``logs/``. The daemon's ``/dev/shm`` files are
  named after it (``/dev/shm/shoal-<node id>*``).

A machine belongs to one cluster at a time (as with Ray): ``start --head``
refuses while a daemon runs here, ``start --address`` refuses to join a
second cluster. Starts and stops hold ``lock`` (``flock``), so two of them
never interleave.

Detaching. ``shoal start`` spawns ``python -m shoal.runtime.node`` in a new
session (``setsid``: no controlling terminal, its own process group), with
stdin from /dev/null, stdout and stderr to ``logs/node.log``, its working
directory ``/``, and WITHOUT the parent pipe that ties an embedded cluster's
daemon to its driver. It waits for the daemon's ready line on a pipe and
exits; the daemon lives until ``shoal stop`` sends it SIGTERM (its workers die
with it). Workers start in the directory ``shoal start`` ran in, and import
modules from there.

The head's node id. A joining node must address the GCS, which lives at
``Address(node=<head node id>, component="gcs")``, and knows only ``HOST:PORT``
and the token. So a head started here takes a node id derived from the token
(``head-`` and 8 hex digits of its SHA-256): the token, which every joiner must
have anyway, names the head too. A wrong token is refused by the head's gRPC
server (UNAUTHENTICATED) before any envelope is read; the joining daemon
reports the refusal in its ready line and exits.

Joining. ``shoal start --address`` first checks that ``HOST:PORT`` accepts TCP
connections, then spawns a daemon with ``--gcs-endpoint HOST:PORT`` and the
derived head node id, bound to the local address that routes to the head
(127.0.0.1 for a head on loopback). Its ready line says whether its raylet
registered with the GCS.

Stopping. ``shoal stop`` takes the daemons from the session directories, plus
any process running ``shoal.runtime.node`` with a ``--session-dir`` inside the
state directory (one whose directory is gone), sends each SIGTERM, waits
``STOP_GRACE_S``, then SIGKILLs each one's process group (its workers share
it), and removes the session directories, their ``/dev/shm`` files and
``cluster.json``.

Drivers. ``node_for_driver`` maps ``shoal.init``'s address (``"auto"`` or the
head's ``HOST:PORT``) to the live daemon of this machine that a driver connects
to: a driver always talks to the daemon of its own node, over its Unix socket.

Status. ``cluster_status`` asks each live local daemon for a snapshot over its
Unix socket (a ``Hello`` with ``purpose="status"``, answered with one JSON
frame; ``runtime/node_status.py``): the node table and resource view come from
the head's GCS when the head runs here, else from a local raylet's copies;
leases, workers and objects are counted for the nodes that run here.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]
from shoal.runtime.processes import (
    base_dir,
    kill_group,
    python_command,
    read_ready_line,
    remove_session,
)

STATE_PREFIX = "shoal-cluster-"
CLUSTER_FILE = "cluster.json"
NODE_FILE = "node.json"
SESSION_FILE = "session.json"
TOKEN_FILE = "token"
LOCK_FILE = "lock"
NODE_MODULE = "shoal.runtime.node"
DEFAULT_HEAD_PORT = 6379  # Ray's
START_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 45.0  # the daemon itself gives up registering after 30 s (node.py)
STOP_GRACE_S = 5.0
REACH_TIMEOUT_S = 3.0
STATUS_TIMEOUT_S = 5.0
SOCKET_PATH_MAX = 107
_FRAME_HEADER = struct.Struct(">I")


class ClusterError(Exception):
    """What ``shoal start``/``stop``/``status`` could not do, and what to do about it."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """The resources and network placement of a node daemon to start."""

    resources: dict[str, float]
    object_store_memory: int
    host: str = ""  # where gRPC binds and what it advertises; see start_head/join_cluster
    port: int | None = None
    worker_cwd: str = ""


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """``cluster.json``: the cluster this machine runs or belongs to."""

    address: str
    token: str
    head_node_id: str
    head_here: bool
    started_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LocalNode:
    """A node daemon started on this machine by ``shoal start``, from its session directory."""

    node_id: str
    session_dir: str
    head: bool
    cluster_address: str
    pid: int
    socket: str = ""  # "" until the daemon serves
    endpoint: str = ""
    started_at: float = 0.0

    def alive(self) -> bool:
        """Whether the daemon process still runs (and is that daemon, not a reused pid)."""
        return _is_daemon(self.pid, self.session_dir)

    def token(self) -> str:
        with open(os.path.join(self.session_dir, TOKEN_FILE), encoding="ascii") as f:
            return f.read().strip()


@dataclass(frozen=True, slots=True)
class StoppedNode:
    node_id: str
    pid: int
    head: bool
    outcome: str  # "stopped", "killed" (after the grace period) or "not running"
    session_dir: str = ""


# --- the state directory ------------------------------------------------------------


def state_dir() -> str:
    """``<base>/shoal-cluster-<uid>``: where ``shoal start`` keeps its records and sessions."""
    return os.path.join(base_dir(), f"{STATE_PREFIX}{os.getuid()}")


def _ensure_state_dir() -> str:
    root = state_dir()
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ClusterError(f"{root} is not a directory of yours; remove it, or set "
                           "SHOAL_TMPDIR to another directory")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(root, 0o700)
    return root


@contextmanager
def _locked(root: str) -> Iterator[None]:
    fd = os.open(os.path.join(root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: str, data: dict[str, Any], mode: int = 0o600) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_cluster() -> ClusterRecord | None:
    """The recorded cluster of this machine, or None (no file, or one that does not parse)."""
    data = _read_json(os.path.join(state_dir(), CLUSTER_FILE))
    if data is None:
        return None
    try:
        return ClusterRecord(address=str(data["address"]), token=str(data["token"]),
                             head_node_id=str(data["head_node_id"]),
                             head_here=bool(data["head_here"]),
                             started_at=float(data.get("started_at", 0.0)))
    except (KeyError, TypeError, ValueError):
        return None


def local_nodes() -> list[LocalNode]:
    """Every node daemon recorded here (alive or not), the head first, then by node id."""
    root = state_dir()
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    nodes = []
    for name in names:
        session_dir = os.path.join(root, name)
        record = _read_json(os.path.join(session_dir, NODE_FILE))
        if record is None:
            continue
        served = _read_json(os.path.join(session_dir, SESSION_FILE)) or {}
        nodes.append(LocalNode(
            node_id=str(record.get("node_id", name)), session_dir=session_dir,
            head=bool(record.get("head")), cluster_address=str(record.get("cluster", "")),
            pid=int(record.get("pid", 0)), socket=str(served.get("socket", "")),
            endpoint=str(served.get("endpoint", "")),
            started_at=float(record.get("started_at", 0.0))))
    return sorted(nodes, key=lambda n: (not n.head, n.node_id))


def _is_daemon(pid: int, session_dir: str) -> bool:
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or os.getpgid(pid) != pid:
            return False  # the zygote and the workers (forked) share the daemon's cmdline
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return False
    return NODE_MODULE in cmdline and _session_arg(cmdline) == session_dir


def _session_arg(cmdline: list[str]) -> str:
    try:
        return cmdline[cmdline.index("--session-dir") + 1]
    except (ValueError, IndexError):
        return ""


def head_node_id(token: str) -> str:
    """The node id of the head of the cluster whose token is ``token`` (see the docstring)."""
    return "head-" + hashlib.sha256(token.encode()).hexdigest()[:8]


# --- addresses ---------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[V6]:PORT``) as ``(host, port)``.

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (like 127.0.0.1:{DEFAULT_HEAD_PORT}), "
                         f"got {address!r}")
    return host, int(port)


def _resolve(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return {host}


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def same_address(a: str, b: str) -> bool:
    """Whether two ``HOST:PORT`` name the same endpoint (``localhost`` is 127.0.0.1...)."""
    try:
        (host_a, port_a), (host_b, port_b) = parse_address(a), parse_address(b)
    except ValueError:
        return False
    if port_a != port_b:
        return False
    ips_a, ips_b = _resolve(host_a), _resolve(host_b)
    return bool(ips_a & ips_b) or (all(map(_is_loopback, ips_a | ips_b)))


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local_ip_toward(host: str, port: int) -> str:
    """The address of this machine that packets to ``host`` leave from (no packet is sent)."""
    ips = _resolve(host)
    if all(map(_is_loopback, ips)):
        return "127.0.0.1"
    target = min(ips)
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, port))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _check_host(host: str) -> str:
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = False
    if unspecified:
        raise ClusterError(f"--node-ip-address {host}: other nodes must be able to reach this "
                           "address; pass an address of this machine (such as its LAN IP)")
    return host


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ClusterError(
                f"cannot listen on {_join_host_port(host, port)}: {exc.strerror or exc}; "
                "pass another --port (0 picks a free one)") from None


def _check_reachable(address: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a shoal head at {address}: {exc.strerror or exc}; check the "
            "address that `shoal start --head` printed, and that its port is open from "
            "this machine") from None


# --- start -------------------------------------------------------------------------------


def start_head(spec: NodeSpec, token: str | None = None) -> dict[str, Any]:
    """Starts a detached head node daemon (GCS and raylet) and records the cluster.

    The gRPC server binds ``spec.host`` (default 127.0.0.1) on ``spec.port``
    (default 6379; 0 picks a free port). ``token`` is the cluster token (default:
    a new random one).

    Returns:
        ``node_id``, ``pid``, ``address`` (HOST:PORT for joiners and drivers),
        ``token``, ``session_dir``, ``log``.

    Raises:
        ClusterError: a cluster already runs here, the port is taken, or the
            daemon did not start (with the tail of its log).
    """
    token = _check_token(token) if token is not None else secrets.token_hex(16)
    root = _ensure_state_dir()
    host = _check_host(spec.host or "127.0.0.1")
    port = DEFAULT_HEAD_PORT if spec.port is None else spec.port
    with _locked(root):
        live = _live_nodes_or_clean()
        if live:
            record = read_cluster()
            where = f" at {record.address}" if record else ""
            raise ClusterError(
                f"a shoal cluster is already running on this machine{where} "
                f"({len(live)} node daemon(s)); stop it with `shoal stop` first"
                + (f", or add a node to it with `shoal start --address {record.address} "
                   f"--token {record.token}`" if record else ""))
        if port:
            _check_port_free(host, port)
        info = _spawn(root, head_node_id(token), token, spec, host, port, head=True,
                      cluster_address="", head_id="")
        _write_json(os.path.join(root, CLUSTER_FILE), asdict(ClusterRecord(
            address=info["address"], token=token, head_node_id=info["node_id"],
            head_here=True, started_at=time.time())))
    return info


def join_cluster(address: str, token: str, spec: NodeSpec) -> dict[str, Any]:
    """Starts a detached node daemon whose raylet joins the cluster at ``address``.

    Returns:
        As ``start_head``, with ``address`` the head's and ``endpoint`` this node's.

    Raises:
        ClusterError: a bad address, an unreachable head, a wrong token, another
            cluster running here, or a daemon that did not start.
    """
    try:
        head_host, head_port = parse_address(address)
    except ValueError as exc:
        raise ClusterError(f"--address: {exc}") from None
    token = _check_token(token)
    root = _ensure_state_dir()
    with _locked(root):
        live = _live_nodes_or_clean()
        record = read_cluster()
        if live and record is not None and not same_address(record.address, address):
            raise ClusterError(
                f"this machine already runs a node of the shoal cluster at {record.address}; "
                "a machine belongs to one cluster: `shoal stop` it first")
        _check_reachable(address, head_host, head_port)
        host = _check_host(spec.host or _local_ip_toward(head_host, head_port))
        node_id = f"node-{secrets.token_hex(4)}"
        info = _spawn(root, node_id, token, spec, host, spec.port or 0, head=False,
                      cluster_address=address, head_id=head_node_id(token))
        if not live or record is None:  # a machine that only runs joined nodes
            _write_json(os.path.join(root, CLUSTER_FILE), asdict(ClusterRecord(
                address=address, token=token, head_node_id=head_node_id(token),
                head_here=False, started_at=time.time())))
    return info


def _check_token(token: str) -> str:
    token = token.strip()
    if not token or len(token) > 256 or not all(33 <= ord(c) < 127 for c in token):
        raise ClusterError("--token: a cluster token is 1 to 256 printable ASCII characters "
                           "without spaces; pass the one `shoal start --head` printed")
    return token


def _live_nodes_or_clean() -> list[LocalNode]:
    """The live daemons recorded here; the records of dead ones (and a cluster file that
    names no live daemon) are removed on the way. Call with the lock held."""
    nodes = local_nodes()
    live = [node for node in nodes if node.alive()]
    for node in nodes:
        if node not in live:
            remove_session(node.session_dir)
    if not live:
        try:
            os.unlink(os.path.join(state_dir(), CLUSTER_FILE))
        except FileNotFoundError:
            pass
    return live


def _spawn(root: str, node_id: str, token: str, spec: NodeSpec, host: str, port: int, *,
           head: bool, cluster_address: str, head_id: str) -> dict[str, Any]:
    session_dir = os.path.join(root, node_id)
    if len(os.path.join(session_dir, f"{node_id}.sock")) > SOCKET_PATH_MAX:
        raise ClusterError(f"the session directory {session_dir} is too long a path for a "
                           "Unix socket; set SHOAL_TMPDIR to a shorter directory")
    os.mkdir(session_dir, 0o700)
    os.mkdir(os.path.join(session_dir, "logs"), 0o700)
    token_file = os.path.join(session_dir, TOKEN_FILE)
    _write_secret(token_file, token)
    role = ["--head"] if head else ["--head-node-id", head_id, "--gcs-endpoint", cluster_address]
    ready_r, ready_w = os.pipe()
    cmd = python_command(
        NODE_MODULE, "--session-dir", session_dir, "--node-id", node_id, *role,
        "--resources", json.dumps(spec.resources), "--cleanup-session",
        "--token-file", token_file, "--ready-fd", str(ready_w),
        "--worker-cwd", spec.worker_cwd or os.getcwd(),
        "--object-store-memory", str(spec.object_store_memory),
        "--grpc-host", host, "--grpc-port", str(port))
    try:
        process = _popen_detached(cmd, session_dir, ready_w, spec.worker_cwd or os.getcwd())
    except BaseException:
        os.close(ready_r)
        remove_session(session_dir)
        raise
    finally:
        os.close(ready_w)
    record = {"node_id": node_id, "head": head, "cluster": cluster_address, "pid": process.pid,
              "started_at": time.time()}
    _write_json(os.path.join(session_dir, NODE_FILE), record)
    ready = _wait_ready(process, ready_r, session_dir, head, cluster_address)
    address = ready["endpoint"] if head else cluster_address
    _write_json(os.path.join(session_dir, NODE_FILE), {**record, "cluster": address})
    return {"node_id": node_id, "pid": process.pid, "head": head, "address": address,
            "endpoint": ready["endpoint"], "token": token, "session_dir": session_dir,
            "log": os.path.join(session_dir, "logs", "node.log")}


def _write_secret(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def _popen_detached(cmd: list[str], session_dir: str, ready_w: int,
                    worker_cwd: str) -> subprocess.Popen[bytes]:
    """The daemon, in its own session, tied to nothing of this process but the ready pipe."""
    here = os.path.abspath(worker_cwd)
    env = dict(os.environ, SHOAL_DRIVER_SYS_PATH=json.dumps(
        [here, *(os.path.abspath(p) for p in sys.path[1:] if p)]))
    with open(os.path.join(session_dir, "logs", "node.log"), "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(ready_w,), env=env, cwd="/",
                                start_new_session=True)


def _wait_ready(process: subprocess.Popen[bytes], ready_r: int, session_dir: str,
                head: bool, cluster_address: str) -> dict[str, Any]:
    """The daemon's ready line; on any failure the daemon is stopped and removed."""
    timeout_s = START_TIMEOUT_S if head else JOIN_TIMEOUT_S
    try:
        ready = read_ready_line(ready_r, process, session_dir, timeout_s)
        problem = str(ready.get("error") or "")
        if not problem and not ready.get("registered"):
            problem = (f"the node did not register with the head at {cluster_address} "
                       "within 30 s; is that the address `shoal start --head` printed?"
                       if not head else "the head's raylet did not register with its GCS")
    except RuntimeError as exc:
        problem = str(exc)
    if problem:
        _stop_process(process.pid, session_dir, STOP_GRACE_S)
        process.poll()
        remove_session(session_dir)
        raise ClusterError(problem)
    return ready


# --- stop ----------------------------------------------------------------------------------


def stop_all(grace_s: float = STOP_GRACE_S) -> list[StoppedNode]:
    """Stops every node daemon ``shoal start`` ran on this machine; idempotent.

    Returns:
        One entry per daemon found (running or only recorded), head first.
    """
    root = state_dir()
    if not os.path.isdir(root):
        return []
    with _locked(root):
        nodes = local_nodes()
        known = {node.session_dir for node in nodes}
        strays = [StoppedNode(node_id=os.path.basename(path), pid=pid, head="--head" in cmd,
                              outcome="", session_dir=path)
                  for pid, path, cmd in _stray_daemons(root) if path not in known]
        targets = [StoppedNode(node_id=n.node_id, pid=n.pid if n.alive() else 0, head=n.head,
                               outcome="", session_dir=n.session_dir) for n in nodes] + strays
        outcomes = _terminate({t.pid: t.session_dir for t in targets if t.pid}, grace_s)
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isdir(path):
                remove_session(path)
        for leftover in (CLUSTER_FILE, f"{CLUSTER_FILE}.tmp"):
            try:
                os.unlink(os.path.join(root, leftover))
            except FileNotFoundError:
                pass
    return [StoppedNode(node_id=t.node_id, pid=t.pid, head=t.head, session_dir=t.session_dir,
                        outcome=outcomes.get(t.pid, "not running")) for t in targets]


def _stray_daemons(root: str) -> list[tuple[int, str, list[str]]]:
    """Node daemons whose ``--session-dir`` is inside ``root``: ``(pid, session dir, cmd)``.

    A daemon leads its process group; its zygote and workers (forked from it, with
    the same command line) do not, and go with the group.
    """
    found = []
    prefix = root.rstrip(os.sep) + os.sep
    for process in psutil.process_iter(["pid", "cmdline", "uids", "status"]):
        try:
            cmdline = process.info["cmdline"] or []
            if (NODE_MODULE not in cmdline or process.info["uids"] is None
                    or process.info["uids"].real != os.getuid()
                    or process.info["status"] == psutil.STATUS_ZOMBIE):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
            continue
        session_dir = _session_arg(cmdline)
        pid = int(process.info["pid"])
        if session_dir.startswith(prefix) and _leads_group(pid):
            found.append((pid, session_dir, cmdline))
    return found


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _terminate(daemons: dict[int, str], grace_s: float) -> dict[int, str]:
    """SIGTERMs the daemons, waits, SIGKILLs the process groups of those still running;
    ``{pid: "stopped" | "killed"}``."""
    processes = []
    for pid in daemons:
        try:
            process = psutil.Process(pid)
            process.send_signal(signal.SIGTERM)
            processes.append(process)
        except psutil.NoSuchProcess:
            pass
    still = _wait_gone(processes, grace_s)
    outcomes = {p.pid: "stopped" for p in processes}
    for process in still:
        kill_group(process.pid)
        outcomes[process.pid] = "killed"
    _wait_gone(still, grace_s)
    for pid in daemons:
        kill_group(pid)  # a worker its daemon did not reap (they share its process group)
    return outcomes


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Waits until each process has exited; returns those still running after ``timeout_s``.

    An exited daemon is a zombie until init reaps it (its parent, ``shoal start``, is
    long gone), which some inits do only every second or two: a zombie counts as gone.
    """
    deadline = time.monotonic() + timeout_s
    running = list(processes)
    while running:
        running = [p for p in running if _running(p)]
        if not running or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return running


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _stop_process(pid: int, session_dir: str, grace_s: float) -> None:
    if _is_daemon(pid, session_dir):
        _terminate({pid: session_dir}, grace_s)
    else:
        kill_group(pid)


# --- drivers --------------------------------------------------------------------------------


def node_for_driver(address: str) -> LocalNode | None:
    """The live local daemon a driver joining ``address`` connects to (the head first).

    Args:
        address: ``"auto"`` (the cluster recorded here) or the head's ``HOST:PORT``.

    Returns:
        None for ``"auto"`` when ``shoal start`` runs no cluster here.

    Raises:
        ConnectionError: for ``HOST:PORT``, no daemon of that cluster runs here (the
            message says what to do).
        ValueError: ``address`` is neither.
    """
    live = [node for node in local_nodes() if node.socket and node.alive()]
    if address == "auto":
        return live[0] if live and read_cluster() is not None else None
    parse_address(address)
    matching = [node for node in live if same_address(node.cluster_address, address)]
    if matching:
        return matching[0]
    record = read_cluster()
    here = (f" (this machine runs a node of the cluster at {record.address}: pass that "
            "address, or 'auto')" if record is not None and live else "")
    raise ConnectionError(
        f"shoal.init(address={address!r}): no node daemon of the cluster at {address} runs "
        f"on this machine{here}. A driver connects through the node daemon of its own "
        f"machine: start one with `shoal start --address {address} --token <TOKEN>` (the "
        "token `shoal start --head` printed), then call shoal.init() again; or call "
        "shoal.init() with no address to start a cluster inside this process.")


# --- status ---------------------------------------------------------------------------------


@dataclass(slots=True)
class ClusterStatus:
    address: str
    head_node_id: str
    nodes: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    actors: dict[str, int] | None = None
    source: str = ""  # the daemon whose view this is
    problems: list[str] = field(default_factory=list)


def cluster_status() -> ClusterStatus:
    """What the cluster recorded here looks like, from its local daemons' snapshots.

    Raises:
        ClusterError: no cluster runs here, or none of its daemons answered.
    """
    record = read_cluster()
    nodes = local_nodes()
    live = [node for node in nodes if node.socket and node.alive()]
    if record is None and not live:
        raise ClusterError(f"no shoal cluster is running on this machine (nothing recorded in "
                           f"{state_dir()}); start one with `shoal start --head`")
    if not live:
        raise ClusterError(f"the shoal cluster at {record.address if record else '?'} is not "
                           "running any more (its node daemons here are gone); run "
                           "`shoal stop` to clean up, then `shoal start --head`")
    snapshots: dict[str, dict[str, Any]] = {}
    problems = []
    for node in live:
        try:
            snapshots[node.node_id] = request_status(node)
        except (OSError, ConnectionError, ValueError) as exc:
            problems.append(f"node {node.node_id} (pid {node.pid}) did not answer: {exc}")
    if not snapshots:
        raise ClusterError("no node daemon of this machine answered a status request: "
                           + "; ".join(problems))
    address = record.address if record else live[0].cluster_address
    head_id = record.head_node_id if record else ""
    return _merge(address, head_id, snapshots, problems)


def _merge(address: str, head_id: str, snapshots: dict[str, dict[str, Any]],
           problems: list[str]) -> ClusterStatus:
    source = next((s for s in snapshots.values() if s.get("head")), None)
    source = source or next(iter(snapshots.values()))
    view = source.get("resources", {})
    status = ClusterStatus(address=address, head_node_id=head_id, source=source["node_id"],
                           actors=source.get("actors"), problems=problems)
    total: dict[str, float] = {}
    used: dict[str, float] = {}
    for row in source.get("nodes", []):
        node_id = row["node_id"]
        alive = row["state"] == "alive"
        entry = view.get(node_id) or {}
        node_total = entry.get("total", row.get("resources", {})) if alive else {}
        node_used = {name: max(amount - entry.get("available", {}).get(name, amount), 0.0)
                     for name, amount in node_total.items()}
        local = snapshots.get(node_id, {}).get("local")
        status.nodes.append({
            "node_id": node_id, "alive": alive, "state": row["state"],
            "endpoint": row.get("endpoint", ""), "head": node_id == head_id,
            "local": node_id in snapshots, "death_cause": row.get("death_cause", ""),
            "resources": {"total": node_total, "used": node_used},
            "leases": local.get("leases") if local else None,
            "workers": local.get("workers") if local else None,
            "objects": local.get("objects") if local else None})
        for name, amount in node_total.items():
            total[name] = total.get(name, 0.0) + amount
            used[name] = used.get(name, 0.0) + node_used.get(name, 0.0)
    status.resources = {name: {"used": used[name], "total": total[name]} for name in total}
    return status


def request_status(node: LocalNode, timeout_s: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """One status snapshot from a local daemon, over its Unix socket (see the docstring).

    Raises:
        ConnectionError: the daemon refused the request or closed the connection.
        OSError: the socket cannot be reached.
    """
    import msgspec
    from shoal.kernel.ids import NodeId
    from shoal.kernel.messages import Address
    from shoal.runtime.local_transport import PROTOCOL_VERSION, Hello, HelloReply

    hello = Hello(version=PROTOCOL_VERSION, token=node.token(), pid=os.getpid(),
                  address=Address(node=NodeId(node.node_id), component="driver",
                                  worker=f"status-{os.getpid()}"), purpose="status")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(node.socket)
        payload = msgspec.msgpack.encode(hello)
        sock.sendall(_FRAME_HEADER.pack(len(payload)) + payload)
        reply = msgspec.msgpack.decode(_receive_frame(sock), type=HelloReply)
        if not reply.ok:
            raise ConnectionError(f"the daemon refused the status request: {reply.reason}")
        snapshot: dict[str, Any] = json.loads(_receive_frame(sock))
    return snapshot


def _receive_frame(sock: socket.socket) -> bytes:
    header = _receive_exactly(sock, _FRAME_HEADER.size)
    (length,) = _FRAME_HEADER.unpack(header)
    return _receive_exactly(sock, length)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        data += chunk
    return bytes(data)
