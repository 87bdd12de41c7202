"""Hypothesis state machine: the GCS placement group manager and real raylet bundle tables,
over a network that loses, duplicates and reorders messages, with raylets that crash and
come back empty under a new incarnation (bundles there are rescheduled), and a GCS that
restarts from its durable tables.

Invariants after every step: the manager's indexes agree, every raylet's ledger balances
(a bundle's resources are never double-booked), and a group the GCS calls CREATED has each
bundle committed on the raylet it names. At the end, once the network is drained and the
retransmit timers have fired: removed groups hold nothing anywhere, and every raylet has
its resources back once every group is removed.

A driver also waits for groups (``WaitPlacementGroupReady``), retransmitting its requests
(and again after a GCS restart, which forgets waiters): an answer that says ``CREATED``
comes only while the group is created, an error only for a removed group, a not-ready
answer only after the deadline (also for a group never created), and at the end every
wait was answered and the GCS keeps no waiter.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from shoal.kernel.gcs.placement_group_protocol import (
    BundlesCommitted,
    BundlesPrepared,
    BundlesReleased,
    CreatePlacementGroup,
    PlacementGroupReply,
    PlacementGroupSpec,
    RemovePlacementGroup,
    WaitPlacementGroupReady,
)
from shoal.kernel.gcs.placement_group_records import PgManagerConfig, PgState
from shoal.kernel.gcs.placement_groups import PlacementGroupManager
from shoal.kernel.gcs.protocol import NodeInfo, NodeRegistered, NodeTableUpdate
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import (
    Address,
    Msg,
    Received,
    Send,
    SetTimer,
    Started,
    StoreDelete,
    StorePut,
)
from shoal.kernel.raylet import Raylet, RayletConfig
from shoal.kernel.raylet.resources import from_units

GCS = Address(node=NodeId("head"), component="gcs")
DRIVER = Address(node=NodeId("head"), component="driver")
NODES = {NodeId("n1"): 2.0, NodeId("n2"): 3.0, NodeId("n3"): 1.0}


class Cluster:
    """The facts the manager reads, taken from the raylets themselves."""

    def __init__(self, raylets: dict[NodeId, Raylet]) -> None:
        self.raylets = raylets

    def node(self, node_id: NodeId) -> NodeInfo | None:
        if node_id not in self.raylets:
            return None
        return NodeInfo(node_id=node_id, incarnation=self.raylets[node_id].incarnation,
                        state="alive", resources={"CPU": NODES[node_id]})

    def live_nodes(self) -> list[NodeResources]:
        rows = []
        for node_id, raylet in self.raylets.items():
            ledger = raylet.leases.ledger
            rows.append(NodeResources(node_id=node_id, incarnation=raylet.incarnation,
                                      total=from_units(ledger.total),
                                      available=from_units(ledger.available, clamp=True)))
        return rows


def make_raylet(node_id: NodeId, incarnation: int = 1) -> Raylet:
    config = RayletConfig(gcs=GCS, resources={"CPU": NODES[node_id]})
    raylet = Raylet(node_id, config, boot=incarnation)
    raylet.handle(Started(), now=0)
    raylet.handle(Received(src=GCS, msg=NodeRegistered(
        node_id=node_id, incarnation=incarnation, boot=incarnation, attempt=1)), now=0)
    table = tuple(NodeInfo(node_id=n, incarnation=1, state="alive", resources={"CPU": c})
                  for n, c in NODES.items())
    raylet.handle(Received(src=GCS, msg=NodeTableUpdate(
        from_version=0, to_version=1, full=True, nodes=table)), now=0)
    return raylet


class PlacementGroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.raylets = {node_id: make_raylet(node_id) for node_id in NODES}
        self.manager = PlacementGroupManager(PgManagerConfig(), Cluster(self.raylets))
        self.network: list[tuple[Address, Address, Msg]] = []  # (src, dst, msg) in flight
        self.timers: dict[str, int] = {}  # key -> when it fires
        self.store: dict[str, dict[bytes, bytes]] = {}  # the GCS's durable tables
        self.next_group = 1
        self.now = 0
        self.waits: dict[int, WaitPlacementGroupReady] = {}  # the driver's, unanswered
        self.waits_sent_ns: dict[int, int] = {}  # when each was first sent
        self.next_wait = 100

    # --- plumbing ------------------------------------------------------------

    def _gcs_effects(self, effects: list[Msg]) -> None:
        for effect in effects:
            if isinstance(effect, Send) and effect.dst.component == "raylet":
                self.network.append((GCS, effect.dst, effect.msg))
            elif isinstance(effect, Send) and isinstance(effect.msg, PlacementGroupReply):
                self._on_reply(effect.msg)
            elif isinstance(effect, SetTimer):
                self.timers[effect.key] = effect.at_ns
            elif isinstance(effect, StorePut):
                self.store.setdefault(effect.table, {})[effect.key] = effect.value
            elif isinstance(effect, StoreDelete):
                self.store.get(effect.table, {}).pop(effect.key, None)

    def _on_reply(self, reply: PlacementGroupReply) -> None:
        wait = self.waits.pop(reply.request_id, None)
        if wait is None:
            return  # a create/remove answer, or a duplicate the client drops
        sent_ns = self.waits_sent_ns.pop(wait.request_id)
        row = self.manager.row(wait.pg_id)
        if reply.error:
            assert row is not None and row.state is PgState.REMOVED, (wait, reply)
        elif reply.groups and reply.groups[0].state == "CREATED":
            assert row is not None and row.state is PgState.CREATED, (wait, reply)
        else:
            # Not ready: only once the (earliest) deadline passed.
            assert self.now >= sent_ns + wait.timeout_ns, (wait, reply, sent_ns, self.now)

    def _deliver(self, src: Address, dst: Address, msg: Msg) -> None:
        if dst == GCS:
            match msg:
                case BundlesPrepared():
                    self._gcs_effects(self.manager.on_prepared(src, msg, self.now))
                case BundlesCommitted():
                    self._gcs_effects(self.manager.on_committed(src, msg, self.now))
                case BundlesReleased():
                    self._gcs_effects(self.manager.on_released(src, msg))
            return
        raylet = self.raylets[NodeId(dst.node)]
        for effect in raylet.handle(Received(src=src, msg=msg), now=self.now):
            if isinstance(effect, Send) and effect.dst == GCS:
                self.network.append((raylet.address, GCS, effect.msg))

    # --- rules ---------------------------------------------------------------------

    @rule(count=st.integers(1, 3), cpus=st.sampled_from([0.5, 1.0, 2.0]),
          strategy=st.sampled_from(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]))
    def create(self, count: int, cpus: float, strategy: str) -> None:
        spec = PlacementGroupSpec(pg_id=f"g{self.next_group}", bundles=({"CPU": cpus},) * count,
                                  strategy=strategy, creator=DRIVER)  # type: ignore[arg-type]
        self.next_group += 1
        self._gcs_effects(self.manager.on_request(
            DRIVER, CreatePlacementGroup(request_id=1, spec=spec), self.now))

    @precondition(lambda self: self.next_group > 1)
    @rule(data=st.data())
    def remove(self, data: Any) -> None:
        pg_id = f"g{data.draw(st.integers(1, self.next_group - 1))}"
        self._gcs_effects(self.manager.on_request(
            DRIVER, RemovePlacementGroup(request_id=2, pg_id=pg_id), self.now))

    @rule(data=st.data(), timeout_s=st.sampled_from([0, 1, 3]))
    def wait(self, data: Any, timeout_s: int) -> None:
        pg_id = f"g{data.draw(st.integers(1, self.next_group))}"  # may be unknown
        request = WaitPlacementGroupReady(request_id=self.next_wait, pg_id=pg_id,
                                          timeout_ns=timeout_s * 10**9)
        self.next_wait += 1
        self.waits[request.request_id] = request
        self.waits_sent_ns[request.request_id] = self.now
        self._gcs_effects(self.manager.on_request(DRIVER, request, self.now))

    @precondition(lambda self: self.waits)
    @rule(data=st.data())
    def retransmit_wait(self, data: Any) -> None:
        request = self.waits[data.draw(st.sampled_from(sorted(self.waits)))]
        self._gcs_effects(self.manager.on_request(DRIVER, request, self.now))

    @precondition(lambda self: self.network)
    @rule(data=st.data(), action=st.sampled_from(["deliver", "deliver", "drop", "duplicate"]))
    def network_step(self, data: Any, action: str) -> None:
        index = data.draw(st.integers(0, len(self.network) - 1))
        src, dst, msg = self.network[index]
        if action != "duplicate":
            del self.network[index]
        if action != "drop":
            self._deliver(src, dst, msg)

    @precondition(lambda self: self.network)
    @rule()
    def network_calm(self) -> None:
        """Everything in flight (and what it causes) is delivered in order: attempts
        complete, so the later rules also meet created groups."""
        for _ in range(50):
            if not self.network:
                return
            self._deliver(*self.network.pop(0))

    @rule(node=st.sampled_from(sorted(NODES)))
    def restart_node(self, node: NodeId) -> None:
        """The node's raylet crashes and comes back empty, under a new incarnation."""
        incarnation = self.raylets[node].incarnation + 1
        self.raylets[node] = make_raylet(node, incarnation)
        self._gcs_effects(self.manager.on_cluster_changed(self.now))

    @rule()
    def restart_gcs(self) -> None:
        """The GCS process restarts: it rebuilds from its store and resends what was in
        flight; its timers are gone."""
        tables = {table: dict(rows) for table, rows in self.store.items()}
        self.manager = PlacementGroupManager(PgManagerConfig(), Cluster(self.raylets), tables)
        self.timers = {}
        self._gcs_effects(self.manager.on_started(self.now))
        self._gcs_effects(self.manager.on_cluster_changed(self.now))
        for request in list(self.waits.values()):  # the driver retransmits
            self._gcs_effects(self.manager.on_request(DRIVER, request, self.now))

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def fire_timer(self, data: Any) -> None:
        key = data.draw(st.sampled_from(sorted(self.timers)))
        self.now = max(self.now + 10**9, self.timers.pop(key))
        self._gcs_effects(self.manager.on_timer(key, self.now))

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def indexes_agree_and_ledgers_balance(self) -> None:
        self.manager.check_invariants()
        for raylet in self.raylets.values():
            raylet.check_invariants()

    @invariant()
    def created_groups_are_committed_where_the_gcs_says(self) -> None:
        for row in self.manager.rows:
            if row.state is not PgState.CREATED:
                continue
            for index, node in enumerate(row.nodes):
                held = self.raylets[NodeId(str(node))].bundles.bundles
                assert any(b[:2] == (row.pg_id, index) and b[3] for b in held), (
                    f"{row.pg_id} bundle {index} is CREATED on {node}, which holds {held}")

    def teardown(self) -> None:
        """Every wait is answered by its deadline; then remove everything and drain:
        nothing may stay reserved anywhere."""
        for key in sorted(k for k in self.timers if k.startswith("gcs.pg.wait.")):
            self.now = max(self.now, self.timers.pop(key))
            self._gcs_effects(self.manager.on_timer(key, self.now))
        assert self.waits == {} and self.manager.waiter_count == 0, self.waits
        for number in range(1, self.next_group):
            self._gcs_effects(self.manager.on_request(
                DRIVER, RemovePlacementGroup(request_id=3, pg_id=f"g{number}"), self.now))
        for _ in range(200):
            while self.network:
                self._deliver(*self.network.pop(0))
            if not self.timers:
                break
            self.now += 10**9
            for key in list(self.timers):
                self.now = max(self.now, self.timers.pop(key))
                self._gcs_effects(self.manager.on_timer(key, self.now))
        for node_id, raylet in self.raylets.items():
            assert raylet.quiescence_problems() == [], (node_id, raylet.quiescence_problems())
        assert self.manager.releases == ()
        assert self.waits == {} and self.manager.waiter_count == 0, self.waits


PlacementGroupMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                                   deadline=None)
TestPlacementGroups = PlacementGroupMachine.TestCase
