"""The ``membership`` workload: nodes join, heartbeat, crash, get cut off, and rejoin.

Cluster: the GCS on node ``n0`` and one raylet on every node. The fault plan
crashes raylets and the GCS, partitions and clogs links, loses and duplicates
messages. The workload itself only watches; its checkers observe every step.

Safety invariants (checked at every step):

* The GCS declares a node dead for missed heartbeats only when it has heard
  nothing from that incarnation for at least the heartbeat timeout.
* A node's incarnation at the GCS never goes down, and a dead incarnation
  never comes back to life.
* A subscriber's node-table version never goes down within one process boot,
  and neither does the incarnation it shows for any node.

Liveness (after the heal): every node is alive at the GCS under the
incarnation its raylet holds, and every raylet's view equals the GCS's table.
"""

from __future__ import annotations

from itertools import compress
from operator import is_not
from random import Random

import msgspec

from shoal.kernel.buggify import Buggify
from shoal.kernel.gcs import Gcs, GcsConfig, gcs_address
from shoal.kernel.gcs.membership import NODES_TABLE, NodePhase, NodeRecord
from shoal.kernel.gcs.protocol import Heartbeat, NodeInfo
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg, Received, Started, StorePut
from shoal.kernel.raylet import MemberPhase, Raylet, RayletConfig
from shoal.kernel.raylet.objects import ObjectsConfig

# Small chunks, so that simulated transfers of objects above the inline limit
# take several chunks and exercise loss and reordering of chunks.
SIM_CHUNK_BYTES = 64 * 1024
from shoal.sim.engine import SimProcess, Store
from shoal.sim.harness import ClusterSim


class MembershipWorkload:
    """Builds a GCS + raylets cluster and checks membership invariants."""

    name = "membership"

    def __init__(self, rng: Random) -> None:
        self._rng = rng
        self.gcs_config = GcsConfig()
        self._sim: ClusterSim | None = None
        self._gcs_proc: SimProcess | None = None
        self._raylets: dict[NodeId, SimProcess] = {}
        self._last_heard: dict[NodeId, tuple[int, int]] = {}  # node -> (incarnation, t)
        self._incarnation: dict[NodeId, tuple[int, str]] = {}
        # node -> (boot, view version, the NodeInfo last checked for each node in its view)
        self._views: dict[NodeId, tuple[int, int, dict[NodeId, NodeInfo]]] = {}
        self._record_decoder = msgspec.msgpack.Decoder(NodeRecord)

    # --- building the cluster --------------------------------------------

    def setup(self, sim: ClusterSim) -> None:
        self._sim = sim
        head = sim.node_ids[0]
        gcs_addr = gcs_address(head)
        self._gcs_proc = sim.add_process(gcs_addr, self._gcs_factory)
        for node_id in sim.node_ids:
            config = RayletConfig(
                gcs=gcs_addr, resources={"CPU": float(1 + self._rng.randrange(8))},
                objects=ObjectsConfig(chunk_bytes=SIM_CHUNK_BYTES))
            addr = Address(node=node_id, component="raylet")
            seed = self._rng.getrandbits(32)
            self._raylets[node_id] = sim.add_process(addr, _raylet_factory(node_id, config, seed))
        sim.engine.observers.append(self.observe)
        sim.engine.start(gcs_addr)
        for node_id in sim.node_ids:
            sim.engine.start(self._raylets[node_id].address)

    def _gcs_factory(self, boot: int, store: Store, buggify: Buggify) -> Gcs:
        return Gcs(self.gcs_config, buggify=buggify, recovered=store)

    def crash_targets(self) -> list[Address]:
        return [self._gcs_proc.address] + [p.address for p in self._raylets.values()]

    # --- invariants at every step ----------------------------------------

    # Observers run after every step: they test types with ``type(x) is C`` (these
    # message classes have no subclasses), as isinstance is slow for msgspec classes.

    def observe(self, proc: SimProcess, event: Msg, effects: list[Msg]) -> None:
        if proc is self._gcs_proc:
            self._observe_gcs(proc, event, effects)
        elif proc.address.component == "raylet":
            self._observe_raylet(proc, event)

    def _observe_gcs(self, proc: SimProcess, event: Msg, effects: list[Msg]) -> None:
        gcs = proc.kernel
        assert isinstance(gcs, Gcs)
        now = self._sim.now
        event_type = type(event)
        if event_type is Started:
            for info in gcs.node_table:
                if info.state == "alive":
                    self._last_heard[info.node_id] = (info.incarnation, now)
        elif event_type is Received and type(event.msg) is Heartbeat:
            # Only a heartbeat of the live incarnation is evidence that it is alive;
            # new registrations are counted from their alive record below.
            row = gcs.nodes.rows_by_id.get(event.msg.node_id)
            if row is not None and row.phase is NodePhase.ALIVE:
                if event.msg.incarnation == row.incarnation:
                    self._last_heard[row.node_id] = (row.incarnation, now)
        for effect in effects:
            if type(effect) is StorePut and effect.table == NODES_TABLE:
                self._check_record(self._record_decoder.decode(effect.value), now)

    def _check_record(self, rec: NodeRecord, now: int) -> None:
        sim = self._sim
        prev_incarnation, prev_phase = self._incarnation.get(rec.node_id, (0, "dead"))
        if rec.incarnation < prev_incarnation:
            sim.violation(f"gcs: node {rec.node_id!r} went back from incarnation "
                          f"{prev_incarnation} to {rec.incarnation}")
        if rec.incarnation == prev_incarnation and prev_phase == "dead" and rec.phase == "alive":
            sim.violation(f"gcs: dead incarnation {rec.incarnation} of {rec.node_id!r} revived")
        if rec.phase == "dead" and rec.death_cause.startswith("missed heartbeats"):
            heard_incarnation, heard_at = self._last_heard.get(rec.node_id, (0, 0))
            timeout = self.gcs_config.membership.heartbeat_timeout_ns
            if heard_incarnation == rec.incarnation and now - heard_at < timeout:
                sim.violation(
                    f"gcs: declared {rec.node_id!r} incarnation {rec.incarnation} dead "
                    f"{(now - heard_at) / 1e9:.3f}s after last hearing from it "
                    f"(timeout {timeout / 1e9:.3f}s)")
        if rec.phase == "alive" and (rec.incarnation, rec.phase) != (prev_incarnation, prev_phase):
            self._last_heard[rec.node_id] = (rec.incarnation, now)
        self._incarnation[rec.node_id] = (rec.incarnation, rec.phase)

    def _observe_raylet(self, proc: SimProcess, event: Msg) -> None:
        raylet = proc.kernel
        assert isinstance(raylet, Raylet)
        node_id = raylet.node_id
        view = raylet.membership.view
        last = self._views.get(node_id)
        if last is not None and last[0] == proc.boot:
            if view.version == last[1]:
                return  # nothing applied this step: the view is as last checked
            boot, version, seen = last
        else:
            boot, version, seen = proc.boot, 0, {}
        if view.version < version:
            self._sim.violation(f"raylet {node_id!r}: node-table view went back from "
                                f"version {version} to {view.version}")
        nodes = view.nodes
        if list(nodes) == list(seen):  # the same nodes: find the changed records in C
            changed = list(compress(nodes, map(is_not, nodes.values(), seen.values())))
        else:
            changed = list(nodes)
        for other in changed:
            # A record identical to the one checked last time (NodeInfo is immutable)
            # needs no second look; any other is checked against it.
            info, last = nodes[other], seen.get(other)
            if last is not None and info.incarnation < last.incarnation:
                self._sim.violation(
                    f"raylet {node_id!r}: view of {other!r} went back from incarnation "
                    f"{last.incarnation} to {info.incarnation}")
            seen[other] = info
        self._views[node_id] = (boot, view.version, seen)

    # --- liveness --------------------------------------------------------

    def done(self) -> bool:
        return not self._unsettled(limit=1)

    def pending(self) -> str:
        return "; ".join(self._unsettled(limit=5))

    def _unsettled(self, limit: int) -> list[str]:
        gcs = self._gcs_proc.kernel if self._gcs_proc else None
        if not isinstance(gcs, Gcs):
            return ["the GCS is down"]
        table = {info.node_id: info for info in gcs.node_table}
        out: list[str] = []
        for node_id, proc in self._raylets.items():
            raylet = proc.kernel
            row = table.get(node_id)
            if not isinstance(raylet, Raylet) or raylet.phase is not MemberPhase.ALIVE:
                out.append(f"raylet {node_id!r} is not registered")
            elif row is None or row.state != "alive" or row.incarnation != raylet.incarnation:
                out.append(f"gcs row of {node_id!r} is {row!r}, raylet holds incarnation "
                           f"{raylet.incarnation}")
            elif raylet.membership.view.version != gcs.nodes.version:
                out.append(f"raylet {node_id!r} view is at version "
                           f"{raylet.membership.view.version}, gcs at {gcs.nodes.version}")
            if len(out) >= limit:
                break
        return out


def _raylet_factory(node_id: NodeId, config: RayletConfig, seed: int):  # type: ignore[no-untyped-def]
    def build(boot: int, store: Store, buggify: Buggify) -> Raylet:
        return Raylet(node_id, config, boot=boot, seed=seed + boot, buggify=buggify)
    return build
