"""Functions a simulated program calls: shoal's clock, the node table, the internal KV.

They only work inside ``Simulation(...).run(main)`` (in the driver or in task
bodies); elsewhere they raise ``NotInSimulation`` saying so. Each blocking call
hands the baton back to the event loop, so virtual time moves on while the
program waits.
"""

from __future__ import annotations

import threading
from typing import Any

from shoal.kernel.gcs.protocol import KvDelete, KvExists, KvGet, KvList, KvPut
from shoal.sim.baton import NotInSimulation

_local = threading.local()


def _bind(context: Any) -> None:
    _local.context = context


def _context() -> Any:
    context = getattr(_local, "context", None)
    if context is None:
        raise NotInSimulation(
            "shoal.sim.api calls only work inside a program run by "
            "shoal.sim.Simulation(...).run(main)")
    return context


def now() -> float:
    """Virtual seconds since the simulation started."""
    return float(_context().engine.now) / 1e9


def sleep(seconds: float) -> None:
    """Blocks for ``seconds`` of virtual time."""
    if seconds < 0:
        raise ValueError(f"sleep length must be non-negative, got {seconds}")
    baton = _context().baton
    baton.block(baton.sleep_future(seconds))


def nodes() -> list[dict[str, Any]]:
    """This process's view of the node table, shaped like ``ray.nodes()``."""
    return list(_context().nodes())


def _key(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def kv_put(key: str | bytes, value: str | bytes, *, overwrite: bool = True,
           namespace: str = "") -> bool:
    """Stores ``value``; returns whether the key was new."""
    value_bytes = value.encode() if isinstance(value, str) else value
    return bool(_context().kv_call(KvPut(request_id=0, namespace=namespace, key=_key(key),
                                         value=value_bytes, overwrite=overwrite)))


def kv_get(key: str | bytes, *, namespace: str = "") -> bytes | None:
    result: bytes | None = _context().kv_call(
        KvGet(request_id=0, namespace=namespace, key=_key(key)))
    return result


def kv_exists(key: str | bytes, *, namespace: str = "") -> bool:
    return bool(_context().kv_call(KvExists(request_id=0, namespace=namespace, key=_key(key))))


def kv_delete(key: str | bytes, *, by_prefix: bool = False, namespace: str = "") -> int:
    return int(_context().kv_call(
        KvDelete(request_id=0, namespace=namespace, key=_key(key), by_prefix=by_prefix)))


def kv_list(prefix: str | bytes, *, namespace: str = "") -> list[bytes]:
    return list(_context().kv_call(KvList(request_id=0, namespace=namespace, prefix=_key(prefix))))


def kill_worker_running(ref: Any) -> bool:
    """Fault injection: crashes the worker process running the task that returns ``ref``.

    Returns whether such a worker was found. The crash looks like any other worker
    death to the cluster (its raylet sees the process exit), so the task is retried
    while it has retries left.
    """
    return bool(_context().host.kill_worker_running(ref.object_id))


def kill_node(node_id: str, *, restart_after: float = 1.0) -> None:
    """Fault injection: crashes the raylet of ``node_id`` (its workers and object store
    go with it) and restarts it ``restart_after`` virtual seconds later, as a new
    incarnation."""
    from shoal.kernel.messages import Address

    engine = _context().engine
    raylet = Address(node=node_id, component="raylet")
    if raylet not in engine.processes:
        raise ValueError(f"no node {node_id!r} in this simulation")
    engine.call_at(engine.now, lambda: engine.crash(raylet))
    engine.call_at(engine.now + int(restart_after * 1e9), lambda: engine.start(raylet))
