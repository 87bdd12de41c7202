"""The GCS placement group manager: creation, two-phase reservation, rescheduling, removal.

Theory of operation
-------------------
A client creates a group (``CreatePlacementGroup``, idempotent by id; a name
taken by a group not removed is refused); its row starts ``PENDING`` with every
bundle unplaced (rows, states and stages: ``placement_group_records.py``).

Placement (``_place``): the unplaced bundles are given nodes by the group's
strategy (``placement_group_policy.py``) over a copy of the resource view's
available resources, debited by bundles this GCS has in flight (reports lag
behind reservations). A new ``attempt`` then reserves them in two phases:
``PrepareBundles`` to each node of the attempt (stage ``PREPARING``); when every
node said yes, ``CommitBundles`` (stage ``COMMITTING``); when every node
committed, the group is ``CREATED``. A node that refuses to prepare (its view
was stale) rolls the whole attempt back: ``ReleaseBundles`` to every node of
the attempt (reliable, durable: ``Releases``), the bundles unplaced again, and
placement retried on a timer and whenever the cluster changes. Messages to
nodes that have not answered are retransmitted every ``retry_ns``.

Node death (the node table shows a bundle's node dead, or back under a newer
incarnation): committed bundles there are lost; a ``CREATED`` group becomes
``RESCHEDULING`` and only the lost bundles are placed again (the strategy sees
the surviving bundles' nodes as fixed). An attempt that involves a dead node is
rolled back. A commit the raylet refuses (it lost the prepared bundles) makes
those bundles unplaced too.

Removal (``RemovePlacementGroup``): the row is ``REMOVED`` for good, every
live node (not only those holding or preparing bundles) is sent
``ReleaseBundles`` for the whole group (the raylet kills the leases using the
bundles and refuses requests for the group from then on; a node that joins
or rejoins later hears of every removed group kept), and the GCS kills the
group's actors (the
caller, ``Gcs``, asks the actor manager with ``removed_groups``). At most
``removed_max`` removed rows are kept. A group that is not detached is also
removed when its creator's job ends (``remove_created_by``, called by ``Gcs``
when the creating driver's exit is reported).

Waiting (``WaitPlacementGroupReady``, ``pg.wait()``): answered at once when the
group is created or removed; otherwise (also when it is not known yet: its
creation may be on its way) parked until the group is ``CREATED``
(``_finish_attempt``), removed (``_to_removed``) or the request's deadline
passes (``placement_group_waiters.py``).

Durability: rows (``PGS_TABLE``) and releases (``PG_RELEASES_TABLE``) are
written before the messages that depend on them; a restarted GCS resends what
was in flight on ``Started`` (every raylet message is idempotent).

Invariants (``check_invariants``): names index exactly the named rows not
removed; a removed row holds nothing; every committed bundle has a node;
``CREATED`` means every bundle committed; the stage agrees with the state;
waiting nodes are nodes of the attempt; callers wait only for groups neither
created nor removed; cached reservations agree with the rows in attempts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec
from shoal.kernel.errors import InvariantViolation
from shoal.kernel.gcs.placement_group_policy import Avail, place_bundles
from shoal.kernel.gcs.placement_group_protocol import (
    WAIT_TIMEOUT_MAX_NS,
    BundlesCommitted,
    BundleSpec,
    BundlesPrepared,
    BundlesReleased,
    CommitBundles,
    CreatePlacementGroup,
    GetPlacementGroup,
    ListPlacementGroups,
    PlacementGroupReply,
    PrepareBundles,
    RemovePlacementGroup,
    WaitPlacementGroupReady,
    spec_problem,
)
from shoal.kernel.gcs.placement_group_records import (
    PG_RELEASES_TABLE,
    PG_TIMER_PREFIX,
    PGS_TABLE,
    RELEASE_TIMER_PREFIX,
    PgManagerConfig,
    PgRecord,
    PgRow,
    PgStage,
    PgState,
    Releases,
    check_move,
)
from shoal.kernel.gcs.placement_group_waiters import WAIT_TIMER_PREFIX, ReadyWaiters
from shoal.kernel.gcs.protocol import NodeInfo
from shoal.kernel.gcs.resource_protocol import NodeResources
from shoal.kernel.ids import Nanos, NodeId
from shoal.kernel.messages import Address, CancelTimer, Msg, Send, SetTimer, StoreDelete, StorePut

_RETRY_TIMER = PG_TIMER_PREFIX + "retry."
_PLACE_TIMER = PG_TIMER_PREFIX + "place"


class PgClusterFacts(Protocol):
    """What the manager reads of the rest of the GCS."""

    def node(self, node_id: NodeId) -> NodeInfo | None: ...
    def live_nodes(self) -> list[NodeResources]: ...


class PlacementGroupManager:
    """The GCS's placement group table: a sub-machine driven by ``Gcs.handle``."""

    def __init__(self, config: PgManagerConfig, cluster: PgClusterFacts,
                 recovered: Mapping[str, Mapping[bytes, bytes]] | None = None) -> None:
        self._config = config
        self._cluster = cluster
        self._rows: dict[str, PgRow] = {}
        self._names: dict[tuple[str, str], str] = {}
        self._removed: dict[str, None] = {}  # removed rows, oldest first
        self.removed_groups: list[str] = []  # removed by the last input: for the actor manager
        self.version = 0
        self._place_armed = False
        self._incarnations: dict[NodeId, int] = {}  # live nodes as last seen
        self._waiters = ReadyWaiters()
        # Rows that may be in a placement attempt (a superset: ``_reserving`` drops the
        # rest), in the order they started it, and what they reserve per node (None:
        # to be summed again, after an attempt ended or shrank), so that placing a
        # group does not walk every row.
        self._attempting: dict[str, None] = {}
        self._debits: dict[NodeId, dict[str, float]] | None = None
        tables = recovered or {}
        self._releases = Releases(config.retry_ns, tables.get(PG_RELEASES_TABLE))
        self._recover(tables.get(PGS_TABLE, {}))

    # --- introspection ------------------------------------------------------

    def row(self, pg_id: str) -> PgRow | None:
        return self._rows.get(pg_id)

    @property
    def rows(self) -> tuple[PgRow, ...]:
        return tuple(self._rows.values())

    @property
    def waiter_count(self) -> int:
        """Parked ``WaitPlacementGroupReady`` requests."""
        return len(self._waiters)

    @property
    def releases(self) -> tuple[tuple[str, NodeId, int], ...]:
        return self._releases.entries()

    # --- recovery -------------------------------------------------------------

    def _recover(self, records: Mapping[bytes, bytes]) -> None:
        decoder = msgspec.msgpack.Decoder(PgRecord)
        rows = [PgRow.from_record(decoder.decode(records[k])) for k in sorted(records)]
        for row in sorted(rows, key=lambda r: (r.version, r.pg_id)):
            self._rows[row.pg_id] = row
            self.version = max(self.version, row.version)
            if row.attempt_nodes:
                self._attempting[row.pg_id] = None
            if row.state is PgState.REMOVED:
                self._removed[row.pg_id] = None
            elif row.spec.name:
                self._names[(row.spec.namespace, row.spec.name)] = row.pg_id

    def on_started(self, now: Nanos) -> list[Msg]:
        """Resends what was in flight when the previous GCS process stopped."""
        effects: list[Msg] = []
        for row in self._rows.values():
            if row.stage in (PgStage.PREPARING, PgStage.COMMITTING):
                effects += self._send_attempt(row, now)
        return effects + self._releases.resend_all(now) + self._place_unplaced(now)

    # --- client requests --------------------------------------------------------

    def on_request(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        match msg:
            case CreatePlacementGroup():
                return self._on_create(src, msg, now)
            case RemovePlacementGroup():
                return self._on_remove(src, msg, now)
            case GetPlacementGroup():
                return [self._reply(src, msg.request_id, self._lookup(msg))]
            case ListPlacementGroups():
                return [self._reply(src, msg.request_id, list(self._rows.values()))]
            case WaitPlacementGroupReady():
                return self._on_wait(src, msg, now)
        return []

    @staticmethod
    def _reply(src: Address, request_id: int, rows: list[PgRow], error: str = "") -> Send:
        return Send(dst=src, msg=PlacementGroupReply(
            request_id=request_id, groups=tuple(r.info() for r in rows), error=error))

    def _lookup(self, msg: GetPlacementGroup) -> list[PgRow]:
        pg_id = msg.pg_id or self._names.get((msg.namespace, msg.name), "")
        row = self._rows.get(pg_id)
        return [row] if row is not None else []

    def _on_create(self, src: Address, msg: CreatePlacementGroup, now: Nanos) -> list[Msg]:
        spec = msg.spec
        row = self._rows.get(spec.pg_id)
        if row is not None:  # a retransmit: answer again
            return [self._reply(src, msg.request_id, [row])]
        problem = spec_problem(spec)
        holder = self._names.get((spec.namespace, spec.name)) if spec.name else None
        if not problem and holder is not None:
            problem = (f"the name {spec.name!r} in namespace {spec.namespace!r} belongs to "
                       f"placement group {holder!r}; remove it first or pick another name")
        live = len(self._rows) - len(self._removed)
        if not problem and live >= self._config.groups_max:
            problem = (f"{live} placement groups exist (groups_max="
                       f"{self._config.groups_max}); remove groups you no longer need")
        if problem:
            return [self._reply(src, msg.request_id, [], error=(
                f"gcs: cannot create placement group {spec.pg_id!r}: {problem}"))]
        row = PgRow.new(spec)
        check_move(row.pg_id, None, PgState.PENDING)
        self._rows[row.pg_id] = row
        if spec.name:
            self._names[(spec.namespace, spec.name)] = row.pg_id
        effects = self._place(row, self._available(), now)  # writes the new row durably
        return effects + [self._reply(src, msg.request_id, [row])]

    def remove_created_by(self, creator: Address, now: Nanos) -> list[Msg]:
        """The creator's job ended: its non-detached groups are removed (Ray scopes a
        group that is not detached to its job)."""
        effects: list[Msg] = []
        for row in list(self._rows.values()):
            if (row.state is not PgState.REMOVED and not row.spec.detached
                    and row.spec.creator == creator):
                effects += self._to_removed(row, now)
        return effects

    # --- waiting until a group is created -----------------------------------------

    def _on_wait(self, src: Address, msg: WaitPlacementGroupReady, now: Nanos) -> list[Msg]:
        """Answers at once when it can; else parks the request (``placement_group_waiters``).

        A group not known (yet) is waited for too: its creation may still be on its way
        (the creator does not wait for it, and a process it handed the group to may ask
        the GCS first, over another connection)."""
        row = self._rows.get(msg.pg_id)
        rows = [row] if row is not None else []
        if row is not None and row.state is PgState.REMOVED:
            return [self._reply(src, msg.request_id, rows, error=_removed_error(row.pg_id))]
        if (row is not None and row.state is PgState.CREATED) or msg.timeout_ns == 0:
            return [self._reply(src, msg.request_id, rows)]
        if self._waiters.is_parked(src, msg.request_id):
            return []  # a retransmit of a parked request
        if len(self._waiters) >= self._config.waiters_max:
            return [self._reply(src, msg.request_id, rows, error=(
                f"gcs: {len(self._waiters)} callers already wait for placement groups "
                f"(waiters_max={self._config.waiters_max}); wait again later"))]
        deadline_ns = now + min(msg.timeout_ns, WAIT_TIMEOUT_MAX_NS)
        return self._waiters.park(src, msg.request_id, msg.pg_id, deadline_ns)

    def _answer_waiters(self, row: PgRow, error: str = "") -> list[Msg]:
        """The group was created (or removed: ``error``): everyone waiting hears it now."""
        waiters, effects = self._waiters.take_group(row.pg_id)
        return effects + [self._reply(w.src, w.request_id, [row], error) for w in waiters]

    def _on_wait_expired(self, key: str, now: Nanos) -> list[Msg]:
        waiter = self._waiters.take_expired(key, now)
        if waiter is None:
            return []  # answered before its deadline
        row = self._rows.get(waiter.pg_id)  # neither created nor removed (or not known)
        return [self._reply(waiter.src, waiter.request_id, [row] if row is not None else [])]

    def _on_remove(self, src: Address, msg: RemovePlacementGroup, now: Nanos) -> list[Msg]:
        row = self._rows.get(msg.pg_id)
        if row is None:
            return [self._reply(src, msg.request_id, [], error=(
                f"gcs: there is no placement group {msg.pg_id!r} to remove"))]
        effects: list[Msg] = []
        if row.state is not PgState.REMOVED:
            effects = self._to_removed(row, now)
        return effects + [self._reply(src, msg.request_id, [row])]

    def _to_removed(self, row: PgRow, now: Nanos) -> list[Msg]:
        check_move(row.pg_id, row.state, PgState.REMOVED)
        why = f"placement group {row.pg_id!r} was removed"
        effects: list[Msg] = [CancelTimer(key=f"{_RETRY_TIMER}{row.pg_id}")]
        # Every live raylet hears of it, not only those holding bundles: requests of the
        # group waiting anywhere are refused then, and later ones too.
        live = [n.node_id for n in self._cluster.live_nodes()]
        for node in dict.fromkeys([*row.held_nodes(), *live]):
            effects += self._release(row, node, (), why, now)
        row.state, row.stage, row.reason = PgState.REMOVED, PgStage.NONE, ""
        row.nodes = [None] * len(row.nodes)
        row.committed = [False] * len(row.nodes)
        row.attempt_nodes, row.waiting, self._debits = {}, {}, None
        if row.spec.name and self._names.get((row.spec.namespace, row.spec.name)) == row.pg_id:
            del self._names[(row.spec.namespace, row.spec.name)]
        self._removed[row.pg_id] = None
        self.removed_groups.append(row.pg_id)
        effects += self._commit(row) + self._answer_waiters(row, _removed_error(row.pg_id))
        while len(self._removed) > self._config.removed_max:
            oldest = next(iter(self._removed))
            del self._removed[oldest]
            del self._rows[oldest]
            effects.append(StoreDelete(table=PGS_TABLE, key=oldest.encode()))
        return effects

    def _release(self, row: PgRow, node: NodeId, indexes: tuple[int, ...], why: str,
                 now: Nanos) -> list[Msg]:
        info = self._cluster.node(node)
        incarnation = self._incarnation_of(row, node)
        if info is None or self._gone(node, incarnation):
            return []  # the node is gone, and its bundles with it
        return self._releases.start(row.pg_id, node, incarnation, row.attempt, indexes, why, now)

    def _incarnation_of(self, row: PgRow, node: NodeId) -> int:
        for index, held in enumerate(row.nodes):
            if held == node:
                return row.incarnations[index]
        info = self._cluster.node(node)
        return info.incarnation if info is not None else 0

    # --- durable rows ------------------------------------------------------------

    def _commit(self, row: PgRow) -> list[Msg]:
        self.version += 1
        row.version = self.version
        return [StorePut(table=PGS_TABLE, key=row.pg_id.encode(),
                         value=msgspec.msgpack.encode(row.record()))]

    # --- placement ------------------------------------------------------------------

    def _available(self) -> Avail:
        """The view's free resources, less what this GCS is reserving right now."""
        avail: Avail = {n.node_id: dict(n.available) for n in self._cluster.live_nodes()}
        for node, debit in self._reserving().items():
            have = avail.get(node)
            if have is None:
                continue  # the node left the view: nothing to debit
            for name, amount in debit.items():
                have[name] = have.get(name, 0.0) - amount
        return avail

    def _reserving(self) -> dict[NodeId, dict[str, float]]:
        """What the rows in a placement attempt reserve, per node (summed again if stale)."""
        if self._debits is None:
            self._debits = _sum_debits(self._rows, self._attempting)
        return self._debits

    def _started_attempt(self, row: PgRow) -> None:
        self._attempting.pop(row.pg_id, None)  # to the end: the order the debits are summed
        self._attempting[row.pg_id] = None
        if self._debits is not None:
            _add_debits(self._debits, row)

    def _place(self, row: PgRow, avail: Avail, now: Nanos) -> list[Msg]:
        todo = [(i, row.spec.bundles[i]) for i, node in enumerate(row.nodes) if node is None]
        if not todo or row.state is PgState.REMOVED:
            return []
        fixed = [n for n in row.nodes if n is not None]
        placement, reason = place_bundles(row.spec.strategy, todo, fixed, avail)
        if placement is None:
            row.stage = PgStage.UNPLACED
            changed = row.reason != reason or row.version == 0  # 0: never written yet
            row.reason = reason
            return (self._commit(row) if changed else []) + self._arm_place(now)
        row.attempt += 1
        row.attempt_nodes = {}
        for index, node in placement.items():
            info = self._cluster.node(node)
            row.nodes[index], row.committed[index] = node, False
            row.incarnations[index] = info.incarnation if info is not None else 0
            row.attempt_nodes[node] = (*row.attempt_nodes.get(node, ()), index)
        row.stage, row.reason = PgStage.PREPARING, ""
        row.waiting = dict.fromkeys(row.attempt_nodes)
        self._started_attempt(row)
        return self._commit(row) + self._send_attempt(row, now)

    def _send_attempt(self, row: PgRow, now: Nanos) -> list[Msg]:
        """Sends (again) the current phase's message to every node yet to answer."""
        effects: list[Msg] = []
        for node in row.waiting:
            indexes = row.attempt_nodes[node]
            msg: Msg
            if row.stage is PgStage.PREPARING:
                msg = PrepareBundles(pg_id=row.pg_id, attempt=row.attempt, bundles=tuple(
                    BundleSpec(index=i, shape=dict(row.spec.bundles[i])) for i in indexes))
            else:
                msg = CommitBundles(pg_id=row.pg_id, attempt=row.attempt, indexes=indexes)
            effects.append(Send(dst=Address(node=node, component="raylet"), msg=msg))
        effects.append(SetTimer(key=f"{_RETRY_TIMER}{row.pg_id}", at_ns=now + self._config.retry_ns))
        return effects

    def _arm_place(self, now: Nanos) -> list[Msg]:
        if self._place_armed:
            return []
        self._place_armed = True
        return [SetTimer(key=_PLACE_TIMER, at_ns=now + self._config.place_retry_ns)]

    def _place_unplaced(self, now: Nanos) -> list[Msg]:
        avail = self._available()
        effects: list[Msg] = []
        for row in list(self._rows.values()):
            if row.stage is PgStage.UNPLACED and row.state is not PgState.REMOVED:
                effects += self._place(row, avail, now)
        return effects

    # --- raylet answers ------------------------------------------------------------

    def _current(self, src: Address, pg_id: str, attempt: int, stage: PgStage) -> PgRow | None:
        row = self._rows.get(pg_id)
        if row is None or row.stage is not stage or row.attempt != attempt:
            return None
        return row if src.component == "raylet" and src.node in row.waiting else None

    def on_prepared(self, src: Address, msg: BundlesPrepared, now: Nanos) -> list[Msg]:
        row = self._current(src, msg.pg_id, msg.attempt, PgStage.PREPARING)
        if row is None:
            return []  # stale or duplicate
        if not msg.ok:
            return self._roll_back(row, f"node {src.node!r} refused: {msg.reason}", now)
        del row.waiting[src.node]
        if row.waiting:
            return []
        row.stage = PgStage.COMMITTING
        row.waiting = dict.fromkeys(row.attempt_nodes)
        return self._commit(row) + self._send_attempt(row, now)

    def on_committed(self, src: Address, msg: BundlesCommitted, now: Nanos) -> list[Msg]:
        row = self._current(src, msg.pg_id, msg.attempt, PgStage.COMMITTING)
        if row is None:
            return []
        node = src.node
        del row.waiting[node]
        effects: list[Msg] = []
        if not msg.ok:  # it lost what it prepared: place those bundles again
            effects += self._release(row, node, row.attempt_nodes[node], "commit refused", now)
            for index in row.attempt_nodes.pop(node):
                row.nodes[index] = None
            self._debits = None
        if row.waiting:
            return effects
        return effects + self._finish_attempt(row, now)

    def _finish_attempt(self, row: PgRow, now: Nanos) -> list[Msg]:
        for indexes in row.attempt_nodes.values():
            for index in indexes:
                row.committed[index] = True
        row.attempt_nodes, self._debits = {}, None
        effects: list[Msg] = [CancelTimer(key=f"{_RETRY_TIMER}{row.pg_id}")]
        if all(row.committed):
            check_move(row.pg_id, row.state, PgState.CREATED)
            row.state, row.stage, row.reason = PgState.CREATED, PgStage.NONE, ""
            return effects + self._commit(row) + self._answer_waiters(row)
        row.stage = PgStage.UNPLACED
        return effects + self._commit(row) + self._place(row, self._available(), now)

    def on_released(self, src: Address, msg: BundlesReleased) -> list[Msg]:
        if src.component != "raylet":
            return []
        return self._releases.acknowledged(msg.pg_id, src.node, msg.attempt, msg.indexes)

    def _roll_back(self, row: PgRow, reason: str, now: Nanos) -> list[Msg]:
        """Gives back what the current attempt reserved; its bundles wait to be placed again."""
        effects: list[Msg] = [CancelTimer(key=f"{_RETRY_TIMER}{row.pg_id}")]
        for node, indexes in row.attempt_nodes.items():
            effects += self._release(row, node, indexes, "placement attempt rolled back", now)
            for index in indexes:
                row.nodes[index] = None
        row.attempt_nodes, row.waiting, self._debits = {}, {}, None
        row.stage, row.reason = PgStage.UNPLACED, reason
        return effects + self._commit(row) + self._arm_place(now)

    # --- the cluster moved ----------------------------------------------------------

    def _gone(self, node: NodeId, incarnation: int) -> bool:
        info = self._cluster.node(node)
        if info is None:
            return False
        return info.state == "dead" or info.incarnation > incarnation

    def on_cluster_changed(self, now: Nanos) -> list[Msg]:
        """The node table or the view moved: bundles on dead nodes are lost; place again."""
        effects: list[Msg] = []
        for pg_id, node, incarnation in self._releases.entries():
            if self._gone(node, incarnation):
                effects += self._releases.forget(f"{pg_id}@{node}")
        effects += self._tell_joined_nodes(now)
        for row in list(self._rows.values()):
            if row.state is not PgState.REMOVED:
                effects += self._drop_lost(row, now)
        return effects + self._place_unplaced(now)

    def _tell_joined_nodes(self, now: Nanos) -> list[Msg]:
        """A node that joined (or rejoined under a new incarnation) may hold requests of
        groups removed while it was away: it hears of every removed group kept."""
        live = {n.node_id: n.incarnation for n in self._cluster.live_nodes()}
        joined = [n for n, inc in live.items() if self._incarnations.get(n) != inc]
        self._incarnations = live
        effects: list[Msg] = []
        for node in joined:
            for pg_id in self._removed:
                effects += self._release(self._rows[pg_id], node, (),
                                         f"placement group {pg_id!r} was removed", now)
        return effects

    def _drop_lost(self, row: PgRow, now: Nanos) -> list[Msg]:
        lost = [i for i, node in enumerate(row.nodes)
                if node is not None and self._gone(node, row.incarnations[i])]
        if not lost:
            return []
        effects: list[Msg] = []
        if any(row.nodes[i] in row.attempt_nodes for i in lost):
            effects += self._roll_back(row, "a node of the placement attempt died", now)
        for index in lost:
            if row.committed[index]:
                row.nodes[index], row.committed[index] = None, False
        if row.state is PgState.CREATED and not all(row.committed):
            check_move(row.pg_id, row.state, PgState.RESCHEDULING)
            row.state = PgState.RESCHEDULING
        if row.stage is PgStage.NONE:
            row.stage = PgStage.UNPLACED
        return effects + self._commit(row)

    # --- timers ------------------------------------------------------------------------

    def on_timer(self, key: str, now: Nanos) -> list[Msg]:
        if key == _PLACE_TIMER:
            self._place_armed = False
            return self._place_unplaced(now)
        if key.startswith(WAIT_TIMER_PREFIX):
            return self._on_wait_expired(key, now)
        if key.startswith(RELEASE_TIMER_PREFIX):
            return self._releases.send(key[len(RELEASE_TIMER_PREFIX):], now)
        if key.startswith(_RETRY_TIMER):
            row = self._rows.get(key[len(_RETRY_TIMER):])
            if row is not None and row.stage in (PgStage.PREPARING, PgStage.COMMITTING):
                return self._send_attempt(row, now)
        return []

    # --- invariants --------------------------------------------------------------------

    def check_invariants(self) -> None:
        names = {(r.spec.namespace, r.spec.name): r.pg_id for r in self._rows.values()
                 if r.spec.name and r.state is not PgState.REMOVED}
        if names != self._names:
            raise InvariantViolation(f"gcs placement groups: name index {sorted(self._names)} "
                                     f"but named groups {sorted(names)}")
        for row in self._rows.values():
            self._check_row(row)
        self._waiters.check_invariants()
        if self._debits is not None and self._debits != _sum_debits(self._rows,
                                                                    dict(self._attempting)):
            raise InvariantViolation(f"gcs placement groups: cached reservations "
                                     f"{self._debits} disagree with the rows in attempts")
        for pg_id in self._waiters.groups():
            row = self._rows.get(pg_id)
            if row is not None and row.state in (PgState.CREATED, PgState.REMOVED):
                raise InvariantViolation(
                    f"gcs placement groups: callers wait for group {pg_id!r}, which is "
                    f"{row.state.value}; they should have been answered")

    def _check_row(self, row: PgRow) -> None:
        where = f"gcs placement groups: group {row.pg_id!r} ({row.state.value}/{row.stage.value})"
        if row.state is PgState.REMOVED:
            if any(row.nodes) or row.attempt_nodes or row.stage is not PgStage.NONE:
                raise InvariantViolation(f"{where} is removed but holds bundles")
            return
        if any(c and n is None for n, c in zip(row.nodes, row.committed)):
            raise InvariantViolation(f"{where} has a committed bundle on no node")
        if (row.state is PgState.CREATED) != all(row.committed):
            raise InvariantViolation(f"{where}: committed {row.committed}")
        if (row.stage is PgStage.NONE) != (row.state is PgState.CREATED):
            raise InvariantViolation(f"{where}: stage disagrees with state")
        if not set(row.waiting) <= set(row.attempt_nodes) or row.version > self.version:
            raise InvariantViolation(f"{where}: waits on nodes outside its attempt")
        in_attempt = row.stage in (PgStage.PREPARING, PgStage.COMMITTING)
        if in_attempt and row.pg_id not in self._attempting:
            raise InvariantViolation(f"{where}: in an attempt but not indexed as attempting")
        if in_attempt != bool(row.attempt_nodes):
            raise InvariantViolation(f"{where}: attempt nodes {sorted(row.attempt_nodes)}")


def _removed_error(pg_id: str) -> str:
    return (f"gcs: placement group {pg_id!r} was removed, so it will never be ready; "
            "create a new one")


def _add_debits(debits: dict[NodeId, dict[str, float]], row: PgRow) -> None:
    for node, indexes in row.attempt_nodes.items():
        have = debits.setdefault(node, {})
        for index in indexes:
            for name, amount in row.spec.bundles[index].items():
                have[name] = have.get(name, 0.0) + amount


def _sum_debits(rows: Mapping[str, PgRow], attempting: dict[str, None]
                ) -> dict[NodeId, dict[str, float]]:
    """What the rows in ``attempting`` that are in an attempt reserve; drops the others
    from ``attempting``."""
    debits: dict[NodeId, dict[str, float]] = {}
    for pg_id in list(attempting):
        row = rows.get(pg_id)
        if row is None or row.stage not in (PgStage.PREPARING, PgStage.COMMITTING):
            del attempting[pg_id]
            continue
        _add_debits(debits, row)
    return debits
