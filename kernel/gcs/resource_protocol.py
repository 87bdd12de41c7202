"""Messages of the cluster resource view: raylet reports in, view deltas out.

A raylet tells the GCS what it holds with ``ResourceReport`` on its heartbeat
tick (only when there is something to tell or to learn; see
``kernel/raylet/resources.py``). The GCS answers every accepted report with a
``ResourceViewUpdate``: the entries changed since the view version the report
says the raylet has, and ``ack_seq`` echoing the report's ``seq``. There is no
broadcast: a raylet learns of other nodes' changes only in answers to its own
reports, so the GCS's fan-out is one message per report.

The view is soft state: a restarted GCS starts a new ``epoch`` (and rebuilds
its entries from the node table, every live node fully available until it
reports). A raylet whose ``view_epoch`` is not the GCS's current one gets a full
snapshot, so versions of two GCS processes are never mixed.

Departed workers ride the same channel (Ray spreads worker failures through
the GCS too): a report lists the workers of its node that ended since its last
acknowledged report, and updates list the departed workers of other nodes, so
a raylet can reclaim leases and requests whose owner died on another node.
"""

from __future__ import annotations

import msgspec

from shoal.kernel.gcs.protocol import Resources
from shoal.kernel.ids import Count, NodeId, Seq, TimeNs, WorkerId
from shoal.kernel.messages import Address, Msg


class NodeResources(msgspec.Struct, frozen=True, kw_only=True):
    """One node's row of the resource view."""

    node_id: NodeId
    incarnation: Count
    total: Resources
    available: Resources


class ResourceReport(Msg):
    """Raylet -> GCS: this incarnation's resources, and the view version it has applied.

    ``seq`` grows with every report of one raylet process, so the GCS keeps the
    newest of reordered reports. ``available`` is clamped at zero (a node may be
    oversubscribed for a while when blocked workers take their CPUs back).
    ``departed`` names this node's workers that ended since the last
    acknowledged report (worker ids are never reused).
    """

    node_id: NodeId
    incarnation: Count
    seq: Seq
    total: Resources
    available: Resources
    view_epoch: TimeNs = 0
    view_version: Seq = 0
    departed: tuple[WorkerId, ...] = ()


class ResourceViewUpdate(Msg):
    """GCS -> raylet: entries changed in ``(from_version, to_version]`` of ``epoch``.

    ``full`` replaces the raylet's whole view (``from_version`` is then 0).
    ``removed`` names nodes that left the view (dead, or replaced by a newer
    incarnation that has not been seeded yet). ``departed`` lists worker
    processes that ended (on any node) in that range, as far back as the GCS
    remembers. ``ack_seq`` is the ``seq`` of the report this answers.
    """

    epoch: TimeNs
    from_version: Seq
    to_version: Seq
    full: bool
    entries: tuple[NodeResources, ...] = ()
    removed: tuple[NodeId, ...] = ()
    departed: tuple[Address, ...] = ()
    ack_seq: Seq = 0


class GetResourceView(Msg):
    """Driver/worker -> GCS: the resource view as the GCS has it now (``available_resources``).

    The view lags the raylets by up to one report (a heartbeat tick), as Ray's does.
    """

    request_id: Seq


class ResourceViewReply(Msg):
    """GCS -> asker: one row per node in the view (live nodes only)."""

    request_id: Seq
    rows: tuple[NodeResources, ...]
