"""A hypothesis state machine over one raylet's leases, workers and resources.

Random owners (remote drivers, and leased workers submitting nested tasks) send
requests, retransmits, cancels and returns; worker processes register, crash,
block and unblock; timers fire; other nodes die and rejoin in the node table;
the resource view moves and reports a remote owner departed; the node itself
is declared dead and rejoins. Only live owners act. A fake host carries out
``StartWorker``/``KillWorker``. After every step the raylet's
``check_invariants`` runs, and the test checks what the owners and the host
see against the raylet: the leases owners hold are exactly the raylet's, no
lease outlives its owner, the processes alive are exactly its workers, a grant
names a live registered worker that no other lease holds, and a crash tells
exactly the live owners. At the end the live owners give everything back and
nothing may be left: no lease, request, held resource or unknown process.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from shoal.kernel.gcs import gcs_address
from shoal.kernel.gcs.protocol import (
    NodeDeclaredDead,
    NodeInfo,
    NodeRegistered,
    NodeTableUpdate,
    RegisterNode,
)
from shoal.kernel.gcs.resource_protocol import NodeResources, ResourceViewUpdate
from shoal.kernel.ids import NodeId, WorkerId, seconds
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    TimerFired,
)
from shoal.kernel.raylet import Raylet, RayletConfig
from shoal.kernel.raylet.leases import LeaseConfig, RequestPhase
from shoal.kernel.raylet.protocol import (
    LeaseCheck,
    LeaseCheckReply,
    CancelLeaseRequest,
    KillWorker,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RegisterWorker,
    RequestWorkerLease,
    ReturnWorker,
    ReturnWorkerAck,
    StartWorker,
    WorkerBlocked,
    WorkerExited,
    WorkerUnblocked,
)
from shoal.kernel.raylet.workers import WorkerPoolConfig
from shoal.kernel.task_spec import NodeAffinity

N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
GCS = gcs_address(NodeId("head"))
RESOURCES = {"CPU": 2.0, "GPU": 1.0}
CONFIG = RayletConfig(
    gcs=GCS, resources=RESOURCES,
    workers=WorkerPoolConfig(register_timeout_ns=seconds(5), idle_timeout_ns=seconds(1)),
    leases=LeaseConfig(lease_queue_max=6, finished_max=8, spillback_top_k=2),
)
REMOTE_OWNERS = (Address(node=N2, component="driver"), Address(node=N3, component="worker",
                                                                 worker="n3.b1.w1"))
SHAPES: tuple[dict[str, float], ...] = (
    {"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 2.0}, {"GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}, {},
    {"CPU": 3.0}, {"TPU": 1.0},
)
AFFINITIES = (None, None, None, NodeAffinity(node_id=N1), NodeAffinity(node_id=N2),
              NodeAffinity(node_id=N3, soft=True), NodeAffinity(node_id=NodeId("n9")))

Grant = tuple[Address, int, str]  # owner, request id, worker id


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = seconds(100)
        self.raylet = Raylet(N1, CONFIG, seed=0)
        self.timers: dict[str, int] = {}
        self.processes: dict[str, str] = {}  # worker id -> "starting" | "up" (host side)
        self.ever_started: set[str] = set()
        self.grants: dict[str, Grant] = {}  # what owners hold, by lease id
        self.ended: set[str] = set()  # leases ended by a kill (their owner may still hear)
        self.sent: dict[tuple[Address, int], int] = {}  # -> owner node's incarnation
        self.next_request = 1
        self.incarnation = 1
        self.register_attempt = 1
        self.table = {N1: (1, "alive"), N2: (1, "alive"), N3: (1, "alive")}
        self.table_version = 0
        self.view_version = 0
        self.departed: set[Address] = set()  # remote owners the cluster view says are gone
        self.replies: list[tuple[Address, Msg]] = []  # owners' answers to lease checks

    # --- plumbing --------------------------------------------------------------

    def feed(self, event: Msg) -> list[Msg]:
        effects = self.raylet.handle(event, now=self.now)  # type: ignore[arg-type]
        self.raylet.check_invariants()
        for effect in effects:
            self._carry_out(effect)
        while self.replies:  # owners answer lease checks at once
            src, reply = self.replies.pop(0)
            self.feed(Received(src=src, msg=reply))
        return effects

    def _carry_out(self, effect: Msg) -> None:
        match effect:
            case SetTimer():
                self.timers[effect.key] = effect.at_ns
            case CancelTimer():
                self.timers.pop(effect.key, None)
            case StartWorker():
                assert effect.worker_id not in self.ever_started, f"{effect} twice"
                self.ever_started.add(effect.worker_id)
                self.processes[effect.worker_id] = "starting"
            case KillWorker():
                assert effect.worker_id in self.processes, f"{effect}: not a live process"
                del self.processes[effect.worker_id]
                for lease_id in [k for k, g in self.grants.items() if g[2] == effect.worker_id]:
                    del self.grants[lease_id]
                    self.ended.add(lease_id)
            case Send():
                self._on_send(effect.dst, effect.msg)
            case _:
                raise AssertionError(f"unexpected effect {effect!r}")

    def _on_send(self, dst: Address, msg: Msg) -> None:
        match msg:
            case LeaseGranted():
                grant = (dst, msg.request_id, msg.worker.worker)
                known = self.grants.get(msg.lease_id)
                assert known in (None, grant), f"{msg.lease_id} granted as {known} and {grant}"
                if known is None:
                    assert self.processes.get(msg.worker.worker) == "up", (
                        f"{msg} names a worker that is not up")
                    assert all(g[2] != msg.worker.worker for g in self.grants.values()), (
                        f"{msg.worker.worker} leased twice")
                self.grants[msg.lease_id] = grant
            case LeasedWorkerDied():
                assert msg.lease_id in self.grants or msg.lease_id in self.ended, msg
                self.grants.pop(msg.lease_id, None)
            case ReturnWorkerAck():
                self.grants.pop(msg.lease_id, None)
            case Rejected():
                raise AssertionError(f"the raylet rejected a well-formed input: {msg}")
            case LeaseCheck():
                held = tuple(lease for lease in msg.lease_ids if lease in self.grants)
                released = tuple(lease for lease in msg.lease_ids if lease not in self.grants)
                self.replies.append((dst, LeaseCheckReply(held=held, released=released)))
            case LeaseSpillback() | LeaseRejected() | RegisterNode():
                if isinstance(msg, RegisterNode):
                    self.register_attempt = msg.attempt
            case _:
                assert dst == GCS, f"unexpected send to {dst}: {msg!r}"

    def _push_table(self) -> None:
        self.table_version += 1
        nodes = tuple(NodeInfo(node_id=n, incarnation=inc, state=state,  # type: ignore[arg-type]
                               resources=RESOURCES if n == N1 else {"CPU": 4.0})
                      for n, (inc, state) in self.table.items())
        self.feed(Received(src=GCS, msg=NodeTableUpdate(
            from_version=0, to_version=self.table_version, full=True, nodes=nodes)))

    # --- the world ---------------------------------------------------------------

    @initialize()
    def boot(self) -> None:
        self.feed(Started())
        self.feed(Received(src=GCS, msg=NodeRegistered(
            node_id=N1, incarnation=1, boot=1, attempt=1)))
        self._push_table()

    def _live(self, owner: Address, incarnation: int) -> bool:
        """Whether the owner process that sent with ``incarnation`` still runs."""
        if owner.node == N1:
            return owner.worker in self.processes
        return self.table[owner.node] == (incarnation, "alive") and owner not in self.departed

    def _live_requests(self) -> list[tuple[Address, int]]:
        return [key for key, inc in self.sent.items() if self._live(key[0], inc)]

    def _live_grants(self) -> list[str]:
        return sorted(k for k, g in self.grants.items()
                      if self._live(g[0], self.sent[(g[0], g[1])]))

    def _owners(self) -> list[Address]:
        local = [Address(node=N1, component="worker", worker=w)
                 for w, state in self.processes.items() if state == "up"]
        return [*(o for o in REMOTE_OWNERS if o not in self.departed), *local]

    @rule(owner=st.integers(0, 9), shape=st.sampled_from(SHAPES),
          affinity=st.sampled_from(AFFINITIES), spilled=st.booleans())
    def request(self, owner: int, shape: dict[str, float], affinity: NodeAffinity | None,
                spilled: bool) -> None:
        owners = self._owners()
        src = owners[owner % len(owners)]
        request_id = self.next_request
        self.next_request += 1
        self.sent[(src, request_id)] = self.table[src.node][0]
        self.feed(Received(src=src, msg=RequestWorkerLease(
            request_id=request_id, shape=shape, affinity=affinity, spilled=spilled)))

    @precondition(lambda self: self._live_requests())
    @rule(pick=st.integers(0, 2**16))
    def retransmit(self, pick: int) -> None:
        live = self._live_requests()
        src, request_id = live[pick % len(live)]
        self.feed(Received(src=src, msg=RequestWorkerLease(request_id=request_id,
                                                           shape={"CPU": 1.0})))

    @precondition(lambda self: self._live_requests())
    @rule(pick=st.integers(0, 2**16))
    def cancel(self, pick: int) -> None:
        live = self._live_requests()
        src, request_id = live[pick % len(live)]
        self._cancel(src, request_id)

    def _cancel(self, src: Address, request_id: int) -> None:
        if self.raylet.leases.phase_of(src, request_id) is RequestPhase.GRANTED:
            for lease_id in [k for k, g in self.grants.items() if g[:2] == (src, request_id)]:
                del self.grants[lease_id]
        self.feed(Received(src=src, msg=CancelLeaseRequest(request_id=request_id)))

    @precondition(lambda self: self._live_grants())
    @rule(pick=st.integers(0, 2**16), failed=st.booleans())
    def give_back(self, pick: int, failed: bool) -> None:
        live = self._live_grants()
        lease_id = live[pick % len(live)]
        owner = self.grants[lease_id][0]
        self.feed(Received(src=owner, msg=ReturnWorker(lease_id=lease_id, worker_failed=failed)))
        assert lease_id not in self.grants

    @precondition(lambda self: "starting" in self.processes.values())
    @rule(pick=st.integers(0, 2**16))
    def register(self, pick: int) -> None:
        starting = sorted(w for w, s in self.processes.items() if s == "starting")
        worker_id = starting[pick % len(starting)]
        self.processes[worker_id] = "up"
        self.feed(Received(src=Address(node=N1, component="worker", worker=worker_id),
                           msg=RegisterWorker(worker_id=WorkerId(worker_id))))

    @precondition(lambda self: self.processes)
    @rule(pick=st.integers(0, 2**16))
    def crash(self, pick: int) -> None:
        worker_id = sorted(self.processes)[pick % len(self.processes)]
        del self.processes[worker_id]
        told = [k for k in self._live_grants() if self.grants[k][2] == worker_id]
        for lease_id in [k for k, g in self.grants.items() if g[2] == worker_id]:
            del self.grants[lease_id]  # its owner learns from LeasedWorkerDied, if it lives
            self.ended.add(lease_id)
        effects = self.feed(WorkerExited(worker_id=WorkerId(worker_id), cause="crashed",
                                         exit_code=1))
        died = [e.msg.lease_id for e in effects
                if isinstance(e, Send) and isinstance(e.msg, LeasedWorkerDied)]
        assert died == told, f"crash of {worker_id}: told {died}, expected {told}"

    @precondition(lambda self: self.ever_started)
    @rule(pick=st.integers(0, 2**16))
    def late_exit_report(self, pick: int) -> None:
        gone = sorted(self.ever_started - set(self.processes))
        if gone:
            self.feed(WorkerExited(worker_id=WorkerId(gone[pick % len(gone)]), cause="killed"))

    @precondition(lambda self: self.grants)
    @rule(pick=st.integers(0, 2**16), blocked=st.booleans())
    def block(self, pick: int, blocked: bool) -> None:
        worker_id = self.grants[sorted(self.grants)[pick % len(self.grants)]][2]
        msg = WorkerBlocked if blocked else WorkerUnblocked
        self.feed(Received(src=Address(node=N1, component="worker", worker=worker_id),
                           msg=msg(worker_id=WorkerId(worker_id))))

    @rule(dt=st.integers(1, seconds(3)))
    def advance(self, dt: int) -> None:
        self.now += dt
        for _ in range(50):
            due = sorted((at, key) for key, at in self.timers.items() if at <= self.now)
            if not due:
                break
            key = due[0][1]
            del self.timers[key]
            self.feed(TimerFired(key=key))

    @rule(node=st.sampled_from([N2, N3]), change=st.sampled_from(["die", "rejoin"]))
    def node_changes(self, node: NodeId, change: str) -> None:
        incarnation, _ = self.table[node]
        if change == "die":
            self.table[node] = (incarnation, "dead")
        else:
            self.table[node] = (incarnation + 1, "alive")
        self._push_table()

    @rule(n2=st.sampled_from([0.0, 1.0, 4.0]), n3=st.sampled_from([0.0, 2.0, 4.0]),
          owner_departs=st.booleans())
    def view_moves(self, n2: float, n3: float, owner_departs: bool) -> None:
        entries = tuple(NodeResources(node_id=n, incarnation=1, total={"CPU": 4.0},
                                      available={"CPU": a}) for n, a in ((N2, n2), (N3, n3)))
        if owner_departs:
            self.departed.add(REMOTE_OWNERS[1])  # the worker on n3 that owns things here died
        self.view_version += 1
        self.feed(Received(src=GCS, msg=ResourceViewUpdate(
            epoch=1, from_version=0, to_version=self.view_version, full=True, entries=entries,
            departed=tuple(sorted(self.departed, key=str)))))

    @rule()
    def declared_dead_and_rejoin(self) -> None:
        self.feed(Received(src=GCS, msg=NodeDeclaredDead(
            node_id=N1, incarnation=self.incarnation, cause="missed heartbeats")))
        self.incarnation += 1
        self.feed(Received(src=GCS, msg=NodeRegistered(
            node_id=N1, incarnation=self.incarnation, boot=1, attempt=self.register_attempt)))
        self.table[N1] = (self.incarnation, "alive")
        self._push_table()

    # --- checks ------------------------------------------------------------------

    @invariant()
    def owners_and_host_agree_with_the_raylet(self) -> None:
        leases = self.raylet.leases
        assert sorted(self.grants) == sorted(leases.lease_ids), (
            f"owners hold {sorted(self.grants)}, the raylet {sorted(leases.lease_ids)}")
        leaked = sorted(set(self.grants) - set(self._live_grants()))
        assert not leaked, f"leases {leaked} outlived their owners"
        workers = sorted(w.worker_id for w in leases.pool.workers)
        assert sorted(self.processes) == workers, (
            f"host runs {sorted(self.processes)}, the pool knows {workers}")

    def teardown(self) -> None:
        """At quiescence: everything given back, nothing leaked."""
        for _ in range(20):
            for src, request_id in self._live_requests():
                if self.raylet.leases.phase_of(src, request_id) is not None:
                    self._cancel(src, request_id)
            for lease_id in self._live_grants():
                owner = self.grants[lease_id][0]
                self.feed(Received(src=owner, msg=ReturnWorker(lease_id=lease_id)))
            for worker_id in sorted(w for w, s in self.processes.items() if s == "starting"):
                self.processes[worker_id] = "up"
                self.feed(Received(src=Address(node=N1, component="worker", worker=worker_id),
                                   msg=RegisterWorker(worker_id=WorkerId(worker_id))))
            if not self.raylet.quiescence_problems() and not self.grants:
                break
        assert self.raylet.quiescence_problems() == []
        assert not self.grants
        ledger = self.raylet.leases.ledger
        assert ledger.available == ledger.total
        self.owners_and_host_agree_with_the_raylet()


LeaseMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLeases = LeaseMachine.TestCase
