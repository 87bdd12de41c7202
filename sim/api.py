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


def start_driver(fn: Any, *, name: str) -> str:
    """Starts a second driver process (a job of its own) on this process's node, running
    ``fn()`` as its main; returns its address for ``kill_driver``. ``name`` tells drivers
    apart: it must be new in this simulation."""
    from shoal.kernel.messages import Address

    context = _context()
    address = Address(node=context.address.node, component="driver", worker=name)
    if address in context.engine.processes:
        raise ValueError(f"a driver named {name!r} already ran in this simulation; pick "
                         "another name")
    context.host.start_driver(address, fn)
    return str(address)


def kill_driver(driver: str) -> None:
    """Fault injection: crashes the driver started by ``start_driver`` (as a SIGKILL
    would). Its raylet sees it exit and the GCS ends its job: its actors that are not
    detached die, its placement groups that are not detached are removed."""
    engine = _context().engine
    found = [a for a in engine.processes if str(a) == driver and a.component == "driver"]
    if not found:
        raise ValueError(f"no driver {driver!r} in this simulation; pass what start_driver "
                         "returned")
    engine.call_at(engine.now, lambda: engine.crash(found[0]))
