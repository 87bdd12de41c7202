"""A hypothesis state machine over the GCS actor manager's lifecycle.

Owners register actors (some named, some detached, with random
``max_restarts``); raylets grant, spill back and reject the GCS's lease
requests, or lose them; workers report constructors returning or raising, and
die; callers kill actors (with and without restarts) and drop every handle;
nodes die and rejoin; owners depart; lease checks and timers arrive; the GCS
process restarts from what it wrote with ``StorePut``. After every step the
manager's ``check_invariants`` runs, and the test checks its durable writes:
a dead actor never comes back, versions only grow, an actor restarts at most
``max_restarts`` times, and a live name belongs to one actor. At the end every
actor is killed, its lease given back, and nothing may be left held.
"""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from shoal.kernel.gcs.actor_protocol import (
    ActorCreated,
    ActorDeathCause,
    ActorSpec,
    KillActor,
    PollActors,
    RegisterActor,
)
from shoal.kernel.gcs.actor_records import (
    ACTORS_TABLE,
    ActorManagerConfig,
    ActorPhase,
    ActorRecord,
    Stage,
)
from shoal.kernel.gcs.actors import ActorManager
from shoal.kernel.gcs.protocol import NodeInfo
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import ActorId, NodeId
from shoal.kernel.messages import Address, Msg, StoreDelete, StorePut
from shoal.kernel.raylet.protocol import (
    LeaseCheck,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    ReturnWorker,
    ReturnWorkerAck,
)
from shoal.kernel.task_spec import TaskSpec

NODES = ("n1", "n2", "n3")
DRIVER = Address(node="n0", component="driver")
OWNERS = (DRIVER, Address(node="n1", component="worker", worker="o1"),
          Address(node="n2", component="worker", worker="o2"))


class Cluster:
    def __init__(self) -> None:
        self.nodes = {n: NodeInfo(node_id=NodeId(n), incarnation=1, state="alive",
                                  resources={"CPU": 2.0}) for n in NODES}
        self.gone: set[Address] = set()

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return self.nodes.get(node_id)

    def live_nodes(self) -> list[NodeResources]:
        return [NodeResources(node_id=n.node_id, incarnation=n.incarnation, total=n.resources,
                              available=n.resources)
                for n in self.nodes.values() if n.state == "alive"]

    def departed(self, worker: Address) -> bool:
        return worker in self.gone


class ActorLifecycle(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.now = 0
        self.cluster = Cluster()
        self.store: dict[str, dict[bytes, bytes]] = {}
        self.gcs = ActorManager(ActorManagerConfig(create_silent_max=2), self.cluster)
        self.count = 0
        self.next_lease = 1
        self.seen: dict[str, tuple[int, str]] = {}  # actor -> (version, phase) last written
        self.limits: dict[str, int] = {}
        self.granted: dict[str, str] = {}  # lease id -> raylet node, as raylets see it

    # --- helpers -----------------------------------------------------------

    def step(self, effects: list[Msg]) -> None:
        self.now += 1
        for effect in effects:
            if isinstance(effect, StorePut):
                self.store.setdefault(effect.table, {})[effect.key] = effect.value
                if effect.table == ACTORS_TABLE:
                    self.check_record(msgspec.msgpack.decode(effect.value, type=ActorRecord))
            elif isinstance(effect, StoreDelete):
                self.store.get(effect.table, {}).pop(effect.key, None)
            elif hasattr(effect, "msg") and isinstance(effect.msg, ReturnWorker):  # type: ignore[attr-defined]
                self.granted.pop(effect.msg.lease_id, None)  # type: ignore[attr-defined]

    def check_record(self, rec: ActorRecord) -> None:
        actor = rec.spec.actor_id
        version, phase = self.seen.get(actor, (0, "PENDING"))
        assert rec.version > version, f"{actor}: version went from {version} to {rec.version}"
        assert not (phase == "DEAD" and rec.phase != "DEAD"), f"{actor} came back from dead"
        limit = self.limits[actor]
        assert limit < 0 or rec.num_restarts <= limit, (
            f"{actor} restarted {rec.num_restarts} times, max_restarts={limit}")
        self.seen[actor] = (rec.version, rec.phase)

    def rows(self, *stages: Stage, alive: bool = False) -> list[ActorId]:
        return [r.actor_id for r in self.gcs.rows
                if r.stage in stages or (alive and r.phase is ActorPhase.ALIVE)]

    # --- owners and callers --------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), restarts=st.sampled_from([0, 1, 2, -1]),
          name=st.sampled_from(["", "", "x", "y"]), detached=st.booleans())
    def register(self, owner: Address, restarts: int, name: str, detached: bool) -> None:
        self.count += 1
        actor = ActorId(f"a{self.count}")
        self.limits[actor] = restarts
        creation = TaskSpec(task_id=f"t{self.count}", job_id="j", name="C", owner=owner,
                            function_id="c", args=(), resources={})
        spec = ActorSpec(actor_id=actor, creation=creation, class_name="C",
                         placement={"CPU": 1.0}, name=name, namespace="ns" if name else "",
                         detached=detached, max_restarts=restarts)
        self.step(self.gcs.on_register(owner, RegisterActor(request_id=1, spec=spec,
                                                            function=b""), self.now))

    @rule(data=st.data(), no_restart=st.booleans(), scope=st.booleans())
    def kill(self, data: st.DataObject, no_restart: bool, scope: bool) -> None:
        rows = self.gcs.rows
        if not rows:
            return
        row = data.draw(st.sampled_from(rows))
        msg = KillActor(request_id=1, actor_id=row.actor_id, no_restart=no_restart,
                        out_of_scope=scope)
        self.step(self.gcs.on_kill(row.spec.creation.owner, msg, self.now))

    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        self.step(self.gcs.on_poll(DRIVER, PollActors(known=()), self.now))

    # --- raylets and workers ---------------------------------------------------

    @rule(data=st.data(), how=st.sampled_from(["grant", "grant", "spill", "reject"]))
    def answer_lease(self, data: st.DataObject, how: str) -> None:
        leasing = self.rows(Stage.LEASING)
        if not leasing:
            return
        row = self.gcs.row(data.draw(st.sampled_from(leasing)))
        assert row is not None and row.raylet is not None
        raylet, node = row.raylet, NodeId(row.raylet.node)
        if how == "spill":
            target = NodeId(data.draw(st.sampled_from(NODES)))
            self.step(self.gcs.on_spillback(raylet, LeaseSpillback(
                request_id=row.request_id, node_id=target), self.now))
        elif how == "reject":
            self.step(self.gcs.on_lease_rejected(raylet, LeaseRejected(
                request_id=row.request_id, reason="full"), self.now))
        else:
            lease = f"L{self.next_lease}"
            self.next_lease += 1
            self.granted[lease] = node
            worker = Address(node=node, component="worker", worker=lease)
            self.step(self.gcs.on_lease_granted(raylet, LeaseGranted(
                request_id=row.request_id, lease_id=lease, worker=worker, node_id=node),
                self.now))

    @rule(data=st.data(), fails=st.booleans())
    def constructor_returns(self, data: st.DataObject, fails: bool) -> None:
        creating = self.rows(Stage.CREATING)
        if not creating:
            return
        row = self.gcs.row(data.draw(st.sampled_from(creating)))
        assert row is not None and row.worker is not None
        error = ActorDeathCause(kind="creation_failed", message="boom") if fails else None
        self.step(self.gcs.on_created(row.worker, ActorCreated(
            actor_id=row.actor_id, num_restarts=row.num_restarts, error=error), self.now))

    @rule(data=st.data(), how=st.sampled_from(["told", "departed"]))
    def worker_dies(self, data: st.DataObject, how: str) -> None:
        holding = self.rows(Stage.CREATING, alive=True)
        if not holding:
            return
        row = self.gcs.row(data.draw(st.sampled_from(holding)))
        assert row is not None and row.worker is not None
        self.granted.pop(row.lease_id, None)
        if how == "told":
            self.step(self.gcs.on_worker_died(LeasedWorkerDied(
                lease_id=row.lease_id, worker=row.worker, cause="crash"), self.now))
        else:
            self.cluster.gone.add(row.worker)
            self.step(self.gcs.on_cluster_changed(self.now))

    @rule(node=st.sampled_from(NODES), rejoin=st.booleans())
    def node_dies(self, node: str, rejoin: bool) -> None:
        info = self.cluster.nodes[node]
        self.granted = {lease: n for lease, n in self.granted.items() if n != node}
        if rejoin:
            self.cluster.nodes[node] = msgspec.structs.replace(
                info, incarnation=info.incarnation + 1, state="alive")
        else:
            self.cluster.nodes[node] = msgspec.structs.replace(info, state="dead")
        self.step(self.gcs.on_cluster_changed(self.now))

    @rule(owner=st.sampled_from(OWNERS[1:]))
    def owner_departs(self, owner: Address) -> None:
        self.cluster.gone.add(owner)
        self.step(self.gcs.on_cluster_changed(self.now))

    @rule(node=st.sampled_from(NODES))
    def lease_check(self, node: str) -> None:
        leases = tuple(lease for lease, n in self.granted.items() if n == node)
        raylet = Address(node=node, component="raylet")
        self.step(self.gcs.on_lease_check(raylet, LeaseCheck(
            lease_ids=leases, request_ids=tuple(0 for _ in leases)), self.now))

    @rule(data=st.data())
    def timer(self, data: st.DataObject) -> None:
        keys = ["gcs.actor.place"] + [f"gcs.actor.{kind}.{r.actor_id}" for r in self.gcs.rows
                                      for kind in ("lease", "create")]
        keys += [f"gcs.actor.return.{lease}" for lease in self.gcs.returning_leases]
        self.step(self.gcs.on_timer(data.draw(st.sampled_from(keys)), self.now))

    @rule(data=st.data())
    def return_acked(self, data: st.DataObject) -> None:
        leases = self.gcs.returning_leases
        if leases:
            lease = data.draw(st.sampled_from(leases))
            self.step(self.gcs.on_return_ack(ReturnWorkerAck(lease_id=lease)))

    @rule()
    def gcs_restarts(self) -> None:
        before = [(r.actor_id, r.phase, r.stage, r.num_restarts) for r in self.gcs.rows]
        self.gcs = ActorManager(ActorManagerConfig(create_silent_max=2), self.cluster,
                                self.store)
        after = [(r.actor_id, r.phase, r.stage, r.num_restarts) for r in self.gcs.rows]
        assert sorted(after) == sorted(before), "a restarted GCS must recover every actor"
        self.step(self.gcs.on_started(self.now))

    # --- checks --------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "gcs"):
            return
        self.gcs.check_invariants()
        names = [(r.spec.namespace, r.spec.name) for r in self.gcs.rows
                 if r.spec.name and r.phase is not ActorPhase.DEAD]
        assert len(names) == len(set(names)), f"a live name is taken twice: {names}"

    def teardown(self) -> None:
        if not hasattr(self, "gcs"):
            return
        for row in self.gcs.rows:
            self.step(self.gcs.on_kill(DRIVER, KillActor(request_id=1, actor_id=row.actor_id),
                                       self.now))
        for lease in self.gcs.returning_leases:
            self.step(self.gcs.on_return_ack(ReturnWorkerAck(lease_id=lease)))
        self.gcs.check_invariants()
        assert all(r.phase is ActorPhase.DEAD and not r.lease_id for r in self.gcs.rows)
        assert self.gcs.returning_leases == ()


ActorLifecycle.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestActorLifecycle = ActorLifecycle.TestCase
