"""GCS actor manager: whole-effect-list tests of registration, placement, lifecycle, names."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from shoal.kernel.errors import InvalidTransition
from shoal.kernel.gcs import Gcs
from shoal.kernel.gcs.actor_protocol import (
    ActorCreated,
    ActorCreating,
    ActorDeathCause,
    ActorInfo,
    ActorRegistered,
    ActorSpec,
    ActorTableUpdate,
    ActorVersion,
    CreateActor,
    GetNamedActor,
    KillActor,
    KillActorReply,
    NamedActorReply,
    PollActors,
    RegisterActor,
)
from shoal.kernel.gcs.actor_records import (
    ACTOR_LEASES_TABLE,
    ACTOR_META_TABLE,
    ACTORS_TABLE,
    ActorManagerConfig,
    ActorPhase,
    ActorRecord,
    Stage,
    check_move,
    state_diagram,
)
from shoal.kernel.gcs.actors import ActorManager
from shoal.kernel.gcs.protocol import NodeInfo
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import ActorId, NodeId
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    StoreDelete,
    StorePut,
)
from shoal.kernel.raylet.protocol import (
    CancelLeaseRequest,
    LeaseCheck,
    LeaseCheckReply,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
)
from shoal.kernel.task_spec import NodeAffinity, TaskSpec

S = 1_000_000_000
GCS = Address(node="n0", component="gcs")
DRIVER = Address(node="n0", component="driver")
OWNER_WORKER = Address(node="n2", component="worker", worker="w9")
R1 = Address(node="n1", component="raylet")
R2 = Address(node="n2", component="raylet")
W1 = Address(node="n1", component="worker", worker="w1")
W2 = Address(node="n2", component="worker", worker="w2")
W3 = Address(node="n1", component="worker", worker="w3")
A1 = ActorId("a1")


class Facts:
    """A node table and resource view the test controls."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self.available: dict[str, dict[str, float]] = {}
        self.gone: set[Address] = set()
        for node_id, cpus in (("n1", 2.0), ("n2", 4.0)):
            self.join(node_id, cpus)

    def join(self, node_id: str, cpus: float, incarnation: int = 1) -> None:
        self.nodes[node_id] = NodeInfo(node_id=NodeId(node_id), incarnation=incarnation,
                                       state="alive", resources={"CPU": cpus})
        self.available[node_id] = {"CPU": cpus}

    def kill(self, node_id: str) -> None:
        self.nodes[node_id] = msgspec.structs.replace(self.nodes[node_id], state="dead")

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return self.nodes.get(node_id)

    def live_nodes(self) -> list[NodeResources]:
        return [NodeResources(node_id=n.node_id, incarnation=n.incarnation, total=n.resources,
                              available=self.available[n.node_id])
                for n in self.nodes.values() if n.state == "alive"]

    def departed(self, worker: Address) -> bool:
        return worker in self.gone


def spec(actor_id: str = "a1", *, owner: Address = DRIVER, name: str = "",
         detached: bool = False, max_restarts: int = 0, placement: dict[str, float] | None = None,
         affinity: NodeAffinity | None = None) -> ActorSpec:
    creation = TaskSpec(task_id=f"t.{actor_id}", job_id="j", name="C.__init__", owner=owner,
                        function_id="cls", args=(), resources={}, affinity=affinity)
    return ActorSpec(actor_id=ActorId(actor_id), creation=creation, class_name="C",
                     placement={"CPU": 1.0} if placement is None else placement, name=name,
                     namespace="ns" if name else "", detached=detached,
                     max_restarts=max_restarts)


def plain(effects: list[Msg]) -> list[Any]:
    """Effects with durable writes shown as (table, key, phase/stage@version) for reading."""
    out: list[Any] = []
    for effect in effects:
        if isinstance(effect, StorePut) and effect.table == ACTORS_TABLE:
            rec = msgspec.msgpack.decode(effect.value, type=ActorRecord)
            out.append(("put", effect.key.decode(), f"{rec.phase}/{rec.stage}@{rec.version}"))
        elif isinstance(effect, StorePut) and effect.table == ACTOR_META_TABLE:
            out.append(("reserve", int(effect.value.decode())))
        elif isinstance(effect, StorePut) and effect.table == ACTOR_LEASES_TABLE:
            out.append(("returning", effect.key.decode()))
        elif isinstance(effect, StoreDelete):
            out.append(("delete", effect.table, effect.key.decode()))
        else:
            out.append(effect)
    return out


def register(m: ActorManager, s: ActorSpec, now: int = 0, request_id: int = 7) -> list[Any]:
    msg = RegisterActor(request_id=request_id, spec=s, function=b"code")
    return plain(m.on_register(s.creation.owner, msg, now))


def alive(m: ActorManager, facts: Facts, s: ActorSpec | None = None) -> None:
    """Registers ``s`` and drives it to ALIVE on worker W1 (lease L1 from R1)."""
    s = s or spec()
    register(m, s)
    row = m.row(s.actor_id)
    assert row is not None and row.raylet == R1
    m.on_lease_granted(R1, LeaseGranted(request_id=row.request_id, lease_id="L1", worker=W1,
                                        node_id=NodeId("n1")), 0)
    m.on_created(W1, ActorCreated(actor_id=s.actor_id, num_restarts=row.num_restarts), 0)
    assert row.phase is ActorPhase.ALIVE


def info(version: int, state: str = "PENDING", **kw: Any) -> ActorInfo:
    return ActorInfo(actor_id=A1, state=state, version=version, **kw)  # type: ignore[arg-type]


@pytest.fixture
def facts() -> Facts:
    return Facts()


@pytest.fixture
def m(facts: Facts) -> ActorManager:
    return ActorManager(ActorManagerConfig(), facts)


def test_register_places_the_actor_and_leases_a_worker_from_the_gcs(m: ActorManager) -> None:
    assert register(m, spec()) == [
        ("put", "a1", "PENDING/unplaced@1"),
        ("reserve", 1025),
        ("put", "a1", "PENDING/leasing@2"),
        Send(dst=R1, msg=RequestWorkerLease(request_id=1, shape={})),
        SetTimer(key="gcs.actor.lease.a1", at_ns=S),
        Send(dst=DRIVER, msg=ActorRegistered(request_id=7, actor_id=A1, info=info(2))),
    ]
    assert register(m, spec(), request_id=8) == [
        Send(dst=DRIVER, msg=ActorRegistered(request_id=8, actor_id=A1, info=info(2)))
    ], "a retransmit is answered again, and changes nothing"


def test_placement_spreads_actors_and_only_the_owner_may_register(m: ActorManager) -> None:
    register(m, spec("a1"))
    register(m, spec("a2"))
    register(m, spec("a3"))
    assert [m.row(ActorId(a)).raylet for a in ("a1", "a2", "a3")] == [R1, R2, R1]  # type: ignore[union-attr]
    msg = RegisterActor(request_id=3, spec=spec("a4"), function=b"")
    effects = m.on_register(W1, msg, 0)
    assert len(effects) == 1 and isinstance(effects[0], Send)
    assert isinstance(effects[0].msg, Rejected) and effects[0].msg.request_id == 3
    assert "only the owner may register" in effects[0].msg.reason


def test_grant_creates_the_actor_and_created_makes_it_alive_for_subscribers(
        m: ActorManager) -> None:
    register(m, spec())
    assert m.on_poll(W2, PollActors(known=(ActorVersion(actor_id=A1, version=0),)), 0) == [
        Send(dst=W2, msg=ActorTableUpdate(actors=(info(2),)))]
    grant = LeaseGranted(request_id=1, lease_id="L1", worker=W1, node_id=NodeId("n1"))
    create = CreateActor(spec=spec(), function=b"code", num_restarts=0, lease_id="L1")
    assert plain(m.on_lease_granted(R1, grant, 5)) == [
        CancelTimer(key="gcs.actor.lease.a1"),
        ("put", "a1", "PENDING/creating@3"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(info(3),))),  # the owner, subscribed
        Send(dst=W2, msg=ActorTableUpdate(actors=(info(3),))),
        Send(dst=W1, msg=create),
        SetTimer(key="gcs.actor.create.a1", at_ns=5 + S),
    ]
    assert m.on_lease_granted(R1, grant, 6) == [], "a duplicate grant changes nothing"
    assert m.on_creating(W1, ActorCreating(actor_id=A1, num_restarts=0)) == []
    up = info(4, "ALIVE", worker=W1, node_id="n1")
    assert plain(m.on_created(W1, ActorCreated(actor_id=A1, num_restarts=0), 7)) == [
        CancelTimer(key="gcs.actor.create.a1"),
        ("put", "a1", "ALIVE/none@4"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(up,))),
        Send(dst=W2, msg=ActorTableUpdate(actors=(up,))),
    ]
    assert m.on_created(W1, ActorCreated(actor_id=A1, num_restarts=0), 8) == []
    assert m.on_poll(W2, PollActors(known=(ActorVersion(actor_id=A1, version=4),)), 9) == []


def test_worker_death_restarts_while_restarts_remain_then_the_actor_dies(
        m: ActorManager, facts: Facts) -> None:
    alive(m, facts, spec(max_restarts=1))
    died = LeasedWorkerDied(lease_id="L1", worker=W1, cause="crashed")
    assert plain(m.on_worker_died(died, 10)) == [
        ("put", "a1", "RESTARTING/leasing@5"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(info(5, "RESTARTING", num_restarts=1),))),
        Send(dst=R1, msg=RequestWorkerLease(request_id=2, shape={})),
        SetTimer(key="gcs.actor.lease.a1", at_ns=10 + S),
    ]
    row = m.row(A1)
    assert row is not None and row.num_restarts == 1
    m.on_lease_granted(R1, LeaseGranted(request_id=2, lease_id="L2", worker=W3,
                                        node_id=NodeId("n1")), 11)
    m.on_created(W3, ActorCreated(actor_id=A1, num_restarts=1), 12)
    assert row.phase is ActorPhase.ALIVE and row.worker == W3
    effects = plain(m.on_worker_died(LeasedWorkerDied(lease_id="L2", worker=W3, cause="x"), 13))
    assert effects[0] == ("put", "a1", "DEAD/none@8")
    assert row.death is not None and row.death.kind == "worker_died"
    assert "max_restarts=1" in row.death.message


def test_departed_worker_and_rejoined_node_count_as_worker_death(
        m: ActorManager, facts: Facts) -> None:
    alive(m, facts, spec("a1", max_restarts=-1))
    facts.gone.add(W1)
    effects = plain(m.on_cluster_changed(20))
    assert effects[0] == ("put", "a1", "RESTARTING/leasing@5")
    row = m.row(A1)
    assert row is not None and row.num_restarts == 1
    m.on_lease_granted(R1, LeaseGranted(
        request_id=row.request_id, lease_id="L2", worker=W3, node_id=NodeId("n1")), 21)
    m.on_created(W3, ActorCreated(actor_id=A1, num_restarts=1), 22)
    facts.join("n1", 2.0, incarnation=2)  # the node died and came back: its workers are gone
    assert plain(m.on_cluster_changed(23))[0] == ("put", "a1", "RESTARTING/leasing@8")


def test_constructor_error_kills_the_actor_and_its_worker(m: ActorManager) -> None:
    register(m, spec(name="c"))
    m.on_lease_granted(R1, LeaseGranted(request_id=1, lease_id="L1", worker=W1,
                                        node_id=NodeId("n1")), 0)
    cause = ActorDeathCause(kind="creation_failed", message="boom", data=b"err")
    assert plain(m.on_created(W1, ActorCreated(actor_id=A1, num_restarts=0, error=cause), 3)) == [
        CancelTimer(key="gcs.actor.create.a1"),
        CancelTimer(key="gcs.actor.create.a1"),
        ("returning", "L1"),
        Send(dst=R1, msg=ReturnWorker(lease_id="L1", worker_failed=True)),
        SetTimer(key="gcs.actor.return.L1", at_ns=3 + S),
        ("put", "a1", "DEAD/none@4"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(info(4, "DEAD", death=cause),))),
    ]
    assert m.on_get_named(DRIVER, GetNamedActor(request_id=1, name="c", namespace="ns")) == [
        Send(dst=DRIVER, msg=NamedActorReply(request_id=1))], "a dead actor frees its name"
    assert plain(m.on_return_ack(ReturnWorkerAck(lease_id="L1"))) == [
        CancelTimer(key="gcs.actor.return.L1"), ("delete", ACTOR_LEASES_TABLE, "L1")]
    assert m.returning_leases == ()


def test_names_are_unique_per_namespace_while_the_actor_lives(m: ActorManager) -> None:
    register(m, spec("a1", name="c"))
    effects = register(m, spec("a2", name="c"), request_id=9)
    holder = m.row(A1)
    assert holder is not None
    assert effects == [Send(dst=DRIVER, msg=ActorRegistered(
        request_id=9, actor_id=ActorId("a2"), taken=holder.handle_info(),
        taken_info=holder.info()))]
    assert m.row(ActorId("a2")) is None
    reply = m.on_get_named(W2, GetNamedActor(request_id=4, name="c", namespace="ns"))
    assert reply == [Send(dst=W2, msg=NamedActorReply(
        request_id=4, handle=holder.handle_info(), info=holder.info()))]
    assert m.on_get_named(W2, GetNamedActor(request_id=5, name="c", namespace="other")) == [
        Send(dst=W2, msg=NamedActorReply(request_id=5))]


def test_kill_with_restart_restarts_and_without_it_kills(m: ActorManager, facts: Facts) -> None:
    alive(m, facts, spec(max_restarts=2))
    effects = plain(m.on_kill(DRIVER, KillActor(request_id=1, actor_id=A1, no_restart=False), 4))
    assert effects == [
        ("returning", "L1"),
        Send(dst=R1, msg=ReturnWorker(lease_id="L1", worker_failed=True)),
        SetTimer(key="gcs.actor.return.L1", at_ns=4 + S),
        ("put", "a1", "RESTARTING/leasing@5"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(info(5, "RESTARTING", num_restarts=1),))),
        Send(dst=R1, msg=RequestWorkerLease(request_id=2, shape={})),
        SetTimer(key="gcs.actor.lease.a1", at_ns=4 + S),
        Send(dst=DRIVER, msg=KillActorReply(request_id=1, actor_id=A1, found=True)),
    ]
    effects = plain(m.on_kill(W2, KillActor(request_id=2, actor_id=A1), 5))
    assert effects == [
        CancelTimer(key="gcs.actor.lease.a1"),
        Send(dst=R1, msg=CancelLeaseRequest(request_id=2)),
        ("put", "a1", "DEAD/none@6"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(m.row(A1).info(),))),  # type: ignore[union-attr]
        Send(dst=W2, msg=KillActorReply(request_id=2, actor_id=A1, found=True)),
    ]
    row = m.row(A1)
    assert row is not None and row.death is not None and row.death.kind == "killed"
    assert m.on_kill(W2, KillActor(request_id=3, actor_id=ActorId("nope")), 6) == [
        Send(dst=W2, msg=KillActorReply(request_id=3, actor_id=ActorId("nope"), found=False))]


def test_out_of_scope_stops_only_unnamed_non_detached_actors_of_their_owner(
        m: ActorManager, facts: Facts) -> None:
    for s in (spec("a1"), spec("a2", name="n"), spec("a3", detached=True)):
        register(m, s)
    for actor in ("a1", "a2", "a3"):
        m.on_kill(DRIVER, KillActor(request_id=1, actor_id=ActorId(actor), out_of_scope=True), 1)
    m.on_kill(W1, KillActor(request_id=1, actor_id=ActorId("a1"), out_of_scope=True), 1)
    phases = [m.row(ActorId(a)).phase for a in ("a1", "a2", "a3")]  # type: ignore[union-attr]
    assert phases == [ActorPhase.DEAD, ActorPhase.PENDING, ActorPhase.PENDING]


def test_owner_death_kills_actors_it_owns_unless_detached(
        m: ActorManager, facts: Facts) -> None:
    register(m, spec("a1", owner=OWNER_WORKER))
    register(m, spec("a2", owner=OWNER_WORKER, detached=True))
    register(m, spec("a3"))  # owned by the driver: drivers are the job
    facts.gone.add(OWNER_WORKER)
    m.on_cluster_changed(5)
    phases = [m.row(ActorId(a)).phase for a in ("a1", "a2", "a3")]  # type: ignore[union-attr]
    assert phases == [ActorPhase.DEAD, ActorPhase.PENDING, ActorPhase.PENDING]
    row = m.row(ActorId("a1"))
    assert row is not None and row.death is not None and row.death.kind == "owner_died"


def test_nothing_fits_leaves_it_unplaced_until_a_node_joins(m: ActorManager,
                                                            facts: Facts) -> None:
    assert register(m, spec(placement={"GPU": 1.0})) == [
        ("put", "a1", "PENDING/unplaced@1"),
        SetTimer(key="gcs.actor.place", at_ns=S),
        Send(dst=DRIVER, msg=ActorRegistered(request_id=7, actor_id=A1, info=info(1))),
    ]
    assert m.on_timer("gcs.actor.place", S) == [SetTimer(key="gcs.actor.place", at_ns=2 * S)]
    facts.nodes["n3"] = NodeInfo(node_id=NodeId("n3"), incarnation=1, state="alive",
                                 resources={"GPU": 1.0})
    facts.available["n3"] = {"GPU": 1.0}
    effects = plain(m.on_cluster_changed(3 * S))
    assert effects[-2] == Send(dst=Address(node="n3", component="raylet"),
                               msg=RequestWorkerLease(request_id=1, shape={}))


def test_hard_affinity_to_a_dead_node_is_unschedulable(m: ActorManager, facts: Facts) -> None:
    facts.kill("n2")
    register(m, spec(affinity=NodeAffinity(node_id=NodeId("n2"))))
    row = m.row(A1)
    assert row is not None and row.phase is ActorPhase.DEAD
    assert row.death is not None and row.death.kind == "unschedulable"


def test_spillback_and_rejection_re_aim_the_lease_request(m: ActorManager) -> None:
    register(m, spec())
    assert m.on_spillback(R1, LeaseSpillback(request_id=1, node_id=NodeId("n2")), 1) == [
        Send(dst=R2, msg=RequestWorkerLease(request_id=1, shape={}, spilled=True)),
        SetTimer(key="gcs.actor.lease.a1", at_ns=1 + S),
    ]
    assert m.on_lease_rejected(R1, LeaseRejected(request_id=1, reason="x"), 2) == [], (
        "only the raylet now holding the request may reject it")
    assert plain(m.on_lease_rejected(R2, LeaseRejected(request_id=1, reason="full"), 3)) == [
        CancelTimer(key="gcs.actor.lease.a1"),
        ("put", "a1", "PENDING/unplaced@3"),
        Send(dst=DRIVER, msg=ActorTableUpdate(actors=(info(3),))),
        SetTimer(key="gcs.actor.place", at_ns=3 + S),
    ]


def test_silent_worker_is_given_up_and_the_actor_placed_again(m: ActorManager) -> None:
    m = ActorManager(ActorManagerConfig(create_silent_max=1), Facts())
    register(m, spec())
    m.on_lease_granted(R1, LeaseGranted(request_id=1, lease_id="L1", worker=W1,
                                        node_id=NodeId("n1")), 0)
    assert isinstance(m.on_timer("gcs.actor.create.a1", S)[0], Send), "first: retransmit"
    effects = plain(m.on_timer("gcs.actor.create.a1", 2 * S))
    assert effects[:4] == [CancelTimer(key="gcs.actor.create.a1"), ("returning", "L1"),
                           Send(dst=R1, msg=ReturnWorker(lease_id="L1", worker_failed=True)),
                           SetTimer(key="gcs.actor.return.L1", at_ns=3 * S)]
    row = m.row(A1)
    assert row is not None and row.stage is Stage.LEASING and row.num_restarts == 0


def test_lease_checks_keep_lost_grants_and_give_back_strays(m: ActorManager) -> None:
    register(m, spec())
    check = LeaseCheck(lease_ids=("L1", "L9"), request_ids=(1, 99))
    assert plain(m.on_lease_check(R1, check, 4)) == [
        Send(dst=R1, msg=LeaseCheckReply(held=("L1", "L9"), released=())),
        ("returning", "L9"),
        Send(dst=R1, msg=ReturnWorker(lease_id="L9", worker_failed=True)),
        SetTimer(key="gcs.actor.return.L9", at_ns=4 + S),
    ]
    assert m.on_timer("gcs.actor.lease.a1", S) == [
        Send(dst=R1, msg=RequestWorkerLease(request_id=1, shape={})),
        SetTimer(key="gcs.actor.lease.a1", at_ns=2 * S),
    ], "the request is retransmitted, and the raylet grants it again"


def test_poll_reports_unknown_actors(m: ActorManager) -> None:
    assert m.on_poll(W1, PollActors(known=(ActorVersion(actor_id=A1, version=0),)), 0) == [
        Send(dst=W1, msg=ActorTableUpdate(actors=(), unknown=(A1,)))]


def test_a_restarted_gcs_recovers_its_actors_and_resends_what_was_in_flight(
        m: ActorManager, facts: Facts) -> None:
    store: dict[str, dict[bytes, bytes]] = {}

    def keep(effects: list[Msg]) -> None:
        for effect in effects:
            if isinstance(effect, StorePut):
                store.setdefault(effect.table, {})[effect.key] = effect.value
            elif isinstance(effect, StoreDelete):
                store.get(effect.table, {}).pop(effect.key, None)

    keep(m.on_register(DRIVER, RegisterActor(request_id=1, spec=spec("a1", name="c"),
                                             function=b"f"), 0))
    keep(m.on_register(DRIVER, RegisterActor(request_id=2, spec=spec("a2"), function=b"f"), 0))
    row2 = m.row(ActorId("a2"))
    assert row2 is not None
    keep(m.on_lease_granted(row2.raylet, LeaseGranted(  # type: ignore[arg-type]
        request_id=row2.request_id, lease_id="L2", worker=W2, node_id=NodeId("n2")), 1))
    keep(m.on_kill(DRIVER, KillActor(request_id=3, actor_id=ActorId("a2")), 2))

    again = ActorManager(ActorManagerConfig(), facts, store)
    again.check_invariants()
    assert [(r.actor_id, r.phase, r.stage) for r in again.rows] == [
        ("a1", ActorPhase.PENDING, Stage.LEASING), ("a2", ActorPhase.DEAD, Stage.NONE)]
    assert again.on_started(10) == [
        Send(dst=R1, msg=RequestWorkerLease(request_id=1, shape={})),
        SetTimer(key="gcs.actor.lease.a1", at_ns=10 + S),
        Send(dst=R2, msg=ReturnWorker(lease_id="L2", worker_failed=True)),
        SetTimer(key="gcs.actor.return.L2", at_ns=10 + S),
    ]
    register(again, spec("a3"))
    row3 = again.row(ActorId("a3"))
    assert row3 is not None and row3.request_id == 1026, "request ids are never reused"
    holder = again.on_get_named(DRIVER, GetNamedActor(request_id=1, name="c", namespace="ns"))
    assert holder[0].msg.handle is not None  # type: ignore[attr-defined]


def test_illegal_moves_raise_and_the_diagram_lists_every_move() -> None:
    with pytest.raises(InvalidTransition, match=r"^gcs actors: cannot move actor to ALIVE "
                                                r"'a1' in phase DEAD"):
        check_move(None, A1, ActorPhase.DEAD, ActorPhase.ALIVE)
    assert state_diagram().count("-->") == 7


def test_the_gcs_routes_actor_messages_and_raylet_answers() -> None:
    gcs = Gcs()
    effects = gcs.handle(Received(src=DRIVER, msg=RegisterActor(
        request_id=1, spec=spec(placement={}), function=b"")), now=0)
    assert effects[-1] == Send(dst=DRIVER, msg=ActorRegistered(
        request_id=1, actor_id=A1, info=gcs.actors.row(A1).info()))  # type: ignore[union-attr]
    assert gcs.handle(Received(src=R1, msg=ReturnWorkerAck(lease_id="zz")), now=1) == []
    gcs.check_invariants()
