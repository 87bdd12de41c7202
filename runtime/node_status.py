"""A node daemon's answer to ``shoal status``: one JSON snapshot of what its kernels hold.

Read in the daemon's trio thread (``LocalServer`` calls ``encode`` there), so
the kernels are between two inputs. Only read-only properties of the kernels
are used. The snapshot:

* ``node_id``, ``head`` (the GCS runs here), ``endpoint``, ``phase`` (the
  raylet's membership phase), ``pid``;
* ``nodes``: the node table, from the GCS on the head, else from the raylet's
  copy (``node_id``, ``state``, ``incarnation``, ``resources``, ``endpoint``,
  ``death_cause``);
* ``resources``: ``{node_id: {"total": ..., "available": ...}}`` for live
  nodes, from the GCS's resource view, else from the raylet's copy of it;
* ``local``: this node's ``leases`` (granted), ``workers`` (in the raylet's
  pool), ``worker_processes`` (running), ``objects`` (in the raylet's table);
* ``actors``: ``{phase: count}`` on the head when the GCS manages actors, else null.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from shoal.kernel.gcs import Gcs
from shoal.kernel.raylet import Raylet
from shoal.kernel.raylet.resources import from_units

if TYPE_CHECKING:
    from shoal.runtime.node import NodeDaemon


def encode(daemon: NodeDaemon) -> bytes:
    """The snapshot of ``daemon`` as UTF-8 JSON."""
    return json.dumps(snapshot(daemon)).encode()


def snapshot(daemon: NodeDaemon) -> dict[str, Any]:
    raylet = daemon.loop.kernel(daemon.raylet_address)
    assert isinstance(raylet, Raylet)
    gcs = daemon.loop.kernel(daemon.gcs_address)
    head = isinstance(gcs, Gcs)
    if isinstance(gcs, Gcs):
        rows = list(gcs.node_table)
        view = {row.node_id: {"total": dict(row.total), "available": dict(row.available)}
                for row in gcs.resources.rows}
    else:
        rows = list(raylet.node_view.values())
        view = {node_id: {"total": dict(from_units(entry.total)),
                          "available": dict(from_units(entry.available, clamp=True))}
                for node_id, entry in raylet.cluster.entries.items()}
    return {
        "node_id": str(daemon.node_id), "head": head, "endpoint": daemon.endpoint,
        "phase": raylet.phase.name.lower(), "pid": os.getpid(),
        "nodes": [{"node_id": str(n.node_id), "state": n.state, "incarnation": n.incarnation,
                   "resources": dict(n.resources), "endpoint": n.endpoint,
                   "death_cause": n.death_cause} for n in rows],
        "resources": {str(node_id): entry for node_id, entry in view.items()},
        "local": {"leases": len(raylet.leases.lease_ids),
                  "workers": len(raylet.leases.pool.workers),
                  "worker_processes": len(daemon.workers),
                  "objects": len(raylet.objects)},
        "actors": _actor_counts(gcs) if isinstance(gcs, Gcs) else None,
    }


def _actor_counts(gcs: Gcs) -> dict[str, int] | None:
    manager = getattr(gcs, "actors", None)
    rows = getattr(manager, "rows", None)
    if rows is None:
        return None
    counts: dict[str, int] = {}
    for row in rows:
        phase = getattr(row.phase, "name", str(row.phase)).lower()
        counts[phase] = counts.get(phase, 0) + 1
    return counts
