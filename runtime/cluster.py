"""``init``/``shutdown``/``is_initialized``: start an embedded local cluster, or join one.

Theory of operation
-------------------
``init()`` with no address starts an embedded cluster of one node:

1. a private session directory ``/tmp/shoal-XXXXXXXX`` (mode 0700);
2. the head node daemon (``python -m shoal.runtime.node --head``) in a new
   session (so the terminal's Ctrl-C reaches only the driver). It generates the
   cluster token (``transports.grpc_transport.generate_token``) into
   ``<session>/token`` (mode 0600), starts the GCS and the raylet, and writes a
   JSON line to a ready pipe once the raylet is registered;
3. the driver's core worker (``runtime/driver.py``), connected to the daemon's
   socket with that token; its ``ProdWorkerContext`` becomes the process-global
   worker context of the API layer.

The daemon holds the read end of a second pipe whose write end only this
process has: when this process ends, however it ends, the daemon reads
end-of-file and shuts down; its workers die with it.

``shutdown()`` (also run at exit) stops the driver's loop, sends SIGTERM to the
daemon and waits for it (it kills and reaps its workers, closes its sockets and
removes the session directory and its ``/dev/shm`` files); after a grace period
the whole process group is killed, and the session directory is removed here
as well.

``init(address=...)`` joins a running cluster through the node daemon of this
machine (a driver always talks to its own node's daemon, over its Unix socket):

* ``"HOST:PORT"``: the head's address that ``shoal start --head`` printed; the
  daemon is one that ``shoal start`` runs here for that cluster
  (``runtime/daemons.py``). If none runs here, the error says to start one
  with ``shoal start --address HOST:PORT --token T``.
* ``"auto"``: the cluster ``shoal start`` recorded for this machine, else the
  newest embedded cluster (one started by another process's ``init()``).
* a session directory path.

The process then only disconnects at ``shutdown``: the cluster keeps running.
Sessions go under ``$SHOAL_TMPDIR`` (default ``/tmp``).

The API layer (``runtime/api/api.py``) owns the checks common to every host
(re-initialization, the simulator's no-op); this module registers itself as its
host starter.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg
from shoal.runtime.api import api
from shoal.runtime.api.context import WorkerContext
from shoal.runtime.processes import (
    base_dir,
    kill_group,
    python_command,
    read_ready_line,
    remove_session,
)

__all__ = ["init", "is_initialized", "shutdown"]

READY_TIMEOUT_S = 30.0
VIEW_TIMEOUT_S = 5.0
STOP_GRACE_S = 5.0
STOP_ACTORS_S = 5.0  # shutdown of a driver that joined: wait for its actors' kills
SESSION_PREFIX = "shoal-"
SESSION_FILE = "session.json"
DEFAULT_STORE_FRACTION = 0.3

_PRIVATE_KWARGS = {"_temp_dir", "_node_ip_address", "_system_config"}


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: dict[str, float] | None = None,
         object_store_memory: int | None = None, local_mode: bool = False,
         ignore_reinit_error: bool = False, namespace: str | None = None,
         runtime_env: dict[str, Any] | None = None, log_to_driver: bool = True,
         logging_level: Any = None, include_dashboard: bool | None = None,
         **kwargs: Any) -> dict[str, Any]:
    """Connects this process to a cluster, starting an embedded one when ``address`` is None.

    Args:
        address: None to start a local cluster; ``"auto"``, the head's
            ``"HOST:PORT"`` (of a cluster with a node daemon on this machine) or a
            session directory to join one.
        num_cpus: CPUs of the local node (default: every CPU of the machine).
        num_gpus: GPUs of the local node (default: those the machine shows).
        resources: custom resources of the local node, e.g. ``{"disk": 2}``.
        object_store_memory: bytes of the node's object store (default: 30% of RAM).
        ignore_reinit_error: return quietly if already initialized.
        log_to_driver: print here what this job's tasks and actors print in their
            worker processes, prefixed ``(name pid=N)`` (it is in the workers' logs
            in the session directory either way).

    Returns:
        A description of the connection: ``node_id``, ``address``, ``job_id``.

    Raises:
        RuntimeError: already initialized, the daemon did not start, or an
            unknown keyword argument was given.
        ValueError: inconsistent arguments (``CPU`` inside ``resources``...).
    """
    unknown = sorted(k for k in kwargs if k not in _PRIVATE_KWARGS)
    if unknown:
        raise RuntimeError(f"Unknown keyword argument(s): {', '.join(unknown)}")
    if local_mode:
        raise NotImplementedError("shoal.init(local_mode=True) is not supported; run the "
                                  "program under shoal.sim.Simulation to debug it in-process")
    _register()
    given = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources,
             "object_store_memory": object_store_memory, "namespace": namespace,
             "runtime_env": runtime_env, "log_to_driver": log_to_driver, **kwargs}
    return api.init(address, ignore_reinit_error=ignore_reinit_error,
                    **{name: value for name, value in given.items() if value is not None})


def shutdown(_exiting_interpreter: bool = False) -> None:
    """Disconnects; stops the embedded cluster (daemon, workers, sockets, session files)."""
    api.shutdown()


def is_initialized() -> bool:
    """Whether this process is connected to a cluster."""
    return api.is_initialized()


# --- resources ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _NodeResources:
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 0

    @classmethod
    def from_args(cls, address: str | None, num_cpus: Any, num_gpus: Any,
                  resources: dict[str, float] | None, object_store_memory: Any) -> _NodeResources:
        if address is not None:
            if num_cpus is not None or num_gpus is not None:
                raise ValueError("When connecting to an existing cluster, num_cpus and "
                                 "num_gpus must not be provided.")
            if resources is not None or object_store_memory is not None:
                raise ValueError("When connecting to an existing cluster, resources and "
                                 "object_store_memory must not be provided.")
            return cls()
        custom = dict(resources or {})
        if "CPU" in custom or "GPU" in custom:
            raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and "
                             "'GPU' in 'resources' keyword")
        cpus = _amount("num_cpus", num_cpus, os.cpu_count() or 1)
        gpus = _amount("num_gpus", num_gpus, _detect_gpus())
        store = int(_amount("object_store_memory", object_store_memory, _default_store()))
        total: dict[str, float] = {"CPU": cpus}
        if gpus:
            total["GPU"] = gpus
        total.update({name: _amount(f"resources[{name!r}]", value, 0)
                      for name, value in custom.items()})
        total["memory"] = float(min(_total_memory() * 0.7 // 1, 2**40))
        total["object_store_memory"] = float(min(store, 2**40))
        return cls(resources=total, object_store_memory=store)


def _amount(name: str, value: Any, default: float) -> float:
    if value is None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 2**30


def _default_store() -> int:
    store = int(_total_memory() * DEFAULT_STORE_FRACTION)
    try:
        shm = os.statvfs("/dev/shm")
        store = min(store, shm.f_bavail * shm.f_frsize)
    except OSError:
        pass
    return store


# --- the embedded cluster ---------------------------------------------------------------


class LocalCluster:
    """The head daemon of an embedded cluster, started and owned by this process."""

    def __init__(self, session_dir: str, process: subprocess.Popen[bytes], parent_w: int,
                 info: dict[str, Any]) -> None:
        self.session_dir = session_dir
        self.process = process
        self._parent_w = parent_w
        self._ready_r = -1
        self.info = info

    @classmethod
    def spawn(cls, options: _NodeResources, temp_dir: str | None = None) -> LocalCluster:
        """Starts the head daemon; ``wait_ready`` then waits until it serves."""
        session_dir = tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=temp_dir or base_dir())
        os.makedirs(os.path.join(session_dir, "logs"))
        ready_r, ready_w = os.pipe()
        parent_r, parent_w = os.pipe()
        try:
            process = _start_daemon(session_dir, options, ready_w, parent_r)
        except BaseException:
            for fd in (ready_r, parent_w):
                os.close(fd)
            remove_session(session_dir)
            raise
        finally:
            os.close(ready_w)  # the daemon has its copies; EOF on ready_r means it died
            os.close(parent_r)
        cluster = cls(session_dir, process, parent_w, {})
        cluster._ready_r = ready_r
        return cluster

    def wait_ready(self) -> dict[str, Any]:
        """Waits for the daemon's ready line; stops everything if it does not come.

        Raises:
            RuntimeError: the daemon exited or did not become ready in time.
        """
        try:
            self.info = read_ready_line(self._ready_r, self.process, self.session_dir,
                                        READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self.info

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stops the daemon (and so its workers) and removes the session; idempotent."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                kill_group(process.pid)
                process.wait()
        kill_group(process.pid)  # any worker the daemon could not reap
        if self._parent_w >= 0:
            os.close(self._parent_w)
            self._parent_w = -1
        remove_session(self.session_dir)


def _start_daemon(session_dir: str, options: _NodeResources, ready_w: int,
                  parent_r: int) -> subprocess.Popen[bytes]:
    node_id = NodeId(f"node-{secrets.token_hex(4)}")
    cmd = python_command(
        "shoal.runtime.node", "--head", "--session-dir", session_dir, "--node-id", node_id,
        "--resources", json.dumps(options.resources), "--cleanup-session",
        "--token-file", os.path.join(session_dir, "token"),
        "--ready-fd", str(ready_w), "--parent-fd", str(parent_r),
        "--worker-cwd", os.getcwd(), "--object-store-memory", str(options.object_store_memory))
    env = dict(os.environ, SHOAL_DRIVER_SYS_PATH=json.dumps(
        [os.path.abspath(p) if p else os.getcwd() for p in sys.path]))
    with open(os.path.join(session_dir, "logs", "node.log"), "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(ready_w, parent_r), env=env, start_new_session=True)


# --- the driver -----------------------------------------------------------------------


def _find_session(address: str, temp_dir: str | None) -> str:
    """The session directory of the local node daemon a driver joining ``address`` uses."""
    from shoal.runtime import daemons  # psutil, only when joining

    if os.sep in address or os.path.isdir(address):
        if not os.path.isfile(os.path.join(address, SESSION_FILE)):
            raise ConnectionError(
                f"shoal.init(address={address!r}): no running shoal session there; pass "
                "'auto', the HOST:PORT that `shoal start --head` printed, or the session "
                "directory of a running cluster")
        return address
    if address != "auto":
        try:
            node = daemons.node_for_driver(address)
        except ValueError as exc:
            raise ValueError(f"shoal.init(address={address!r}): the address must be 'auto', "
                             f"HOST:PORT or a session directory: {exc}") from None
        assert node is not None
        return node.session_dir
    node = daemons.node_for_driver("auto")  # a cluster `shoal start` runs here
    if node is not None:
        return node.session_dir
    pattern = os.path.join(temp_dir or base_dir(), f"{SESSION_PREFIX}*", SESSION_FILE)
    found = sorted(glob.glob(pattern), key=os.path.getmtime)  # embedded clusters
    if not found:
        raise ConnectionError("shoal.init(address='auto'): no running shoal cluster on this "
                              "machine; start one with `shoal start --head`, or call "
                              "shoal.init() without an address to start one in this process")
    return os.path.dirname(found[-1])


def _connect_driver(socket_path: str, token: str, node_id: str,
                    namespace: str | None) -> tuple[Any, Any]:
    from shoal.runtime.driver import CoreWorkerRuntime, ProdWorkerContext
    from shoal.runtime.kernel_host import private_logger

    # Unique per connection: a driver's exit ends its job for good (kernel/gcs/jobs.py), so a
    # later init() in this process, or a process that reuses this pid, must be a new driver.
    address = Address(node=NodeId(node_id), component="driver",
                      worker=f"p{os.getpid()}.{secrets.token_hex(3)}")
    holder: list[ProdWorkerContext] = []

    def on_effect(effect: Msg) -> None:
        if holder:
            holder[0].on_caller_effect(effect)  # raises UnhandledEffect for others

    def on_lost(reason: str) -> None:
        if holder:
            holder[0].lost(reason)

    log = private_logger("shoal.driver", level=os.environ.get("SHOAL_LOG_LEVEL", "WARNING"))
    runtime = CoreWorkerRuntime(socket_path=socket_path, token=token, address=address,
                                on_effect=on_effect, on_lost=on_lost, log=log)
    ctx = ProdWorkerContext(runtime, job_id=f"job-{secrets.token_hex(4)}")
    holder.append(ctx)
    runtime.start()
    ctx.namespace = namespace  # of the job's actors; recorded in the GCS for its workers
    runtime.wait_for_view(VIEW_TIMEOUT_S)  # so that nodes() right after init() shows the node
    return runtime, ctx


def _start_host(address: str | None, *, num_cpus: Any = None, num_gpus: Any = None,
                resources: dict[str, float] | None = None, object_store_memory: Any = None,
                namespace: str | None = None, runtime_env: Any = None,
                log_to_driver: bool = True, _temp_dir: str | None = None,
                **private: Any) -> tuple[WorkerContext, Callable[[], None]]:
    """The API layer's host starter: ``(context, stop)`` for ``init``."""
    options = _NodeResources.from_args(address, num_cpus, num_gpus, resources,
                                       object_store_memory)
    if runtime_env:
        print("shoal: runtime_env is not supported yet and is ignored", file=sys.stderr)
    temp_dir = _temp_dir
    cluster: LocalCluster | None = None
    if address is None:
        cluster = LocalCluster.spawn(options, temp_dir)
        session_dir = cluster.session_dir
        try:
            import shoal.runtime.driver  # noqa: F401  # import while the daemon starts up

            cluster.wait_ready()
        except BaseException:
            cluster.stop()
            raise
    else:
        session_dir = _find_session(address, temp_dir)
    try:
        with open(os.path.join(session_dir, SESSION_FILE), encoding="utf-8") as f:
            info = json.load(f)
        with open(os.path.join(session_dir, "token"), encoding="ascii") as f:
            token = f.read().strip()
        runtime, ctx = _connect_driver(info["socket"], token, info["node_id"], namespace)
        output = _forward_output_here(runtime, ctx) if log_to_driver else None
    except BaseException:
        if cluster is not None:
            cluster.stop()
        raise
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        if cluster is None:  # a joined cluster lives on: end this job's actors there
            ctx.remove_owned_placement_groups(STOP_ACTORS_S)  # and its placement groups
            ctx.stop_owned_actors(STOP_ACTORS_S)
        ctx.flush_refs()
        runtime.stop()
        ctx.lost("shoal.shutdown() was called")  # wakes any thread still blocked in a call
        if output is not None:
            output.close()
        if cluster is not None:
            cluster.stop()

    return ctx, stop


def _forward_output_here(runtime: Any, ctx: Any) -> Any:
    """Prints what this job's workers print (``log_to_driver``); returns the printer."""
    from shoal.kernel.host_protocol import WorkerOutput
    from shoal.runtime.output_forwarding import DriverOutput, register_driver

    output = DriverOutput()
    runtime.host_messages[WorkerOutput] = output.on_message
    register_driver(ctx.kv_call, ctx.job_id, ctx.address)
    return output


_at_exit_registered = False
_register_lock = threading.Lock()


def _register() -> None:
    """Makes this module the API layer's host starter, unless another one is registered."""
    global _at_exit_registered
    with _register_lock:
        if getattr(api, "_host_starter", None) is None:
            api.set_host_starter(_start_host)
        if not _at_exit_registered:
            atexit.register(api.shutdown)
            _at_exit_registered = True


_register()
