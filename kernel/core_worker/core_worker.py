"""The core worker: one per driver and per worker process.

Theory of operation
-------------------
The core worker is the process's link to the cluster, built from sub-machines
behind one ``handle`` entry:

* ``ObjectTable`` (``objects.py``): owned and borrowed objects, reference
  counts, the inline memory store, fetches from owners.
* ``CallTable`` (``calls.py``): user ``get``/``wait`` calls and their timeouts.
* ``Submitter`` (``submitter.py``): tasks this process owns, worker leases,
  pushes, retries, cancels.
* ``Executor`` (``executor.py``): tasks pushed to this process (workers only).
* ``GcsClient`` (``gcs_client.py``): the node table (to notice dead nodes) and KV.
* ``ActorCaller`` (``actors.py``): actors this process calls or owns: ordered
  calls, creation, lookups, kills; ``ActorHost`` (``actor_executor.py``): the
  actor this worker hosts, if any (issue #4).

Inputs: ``Started``, ``Received``, ``TimerFired``, and host inputs from user
code (``TaskSubmitted``, ``ObjectPut``, ``GetRequested``, ``WaitRequested``,
``RefsChanged``, ``CancelRequested``, ``TaskExecuted``, ``KvCallRequested``).
Effects: ``Send``, timers, and host effects (``GetCompleted``,
``WaitCompleted``, ``ExecuteTask``, ``InterruptTask``, ``CallCompleted``).

After each input, every object that completed is announced to the calls, the
submitter (task arguments) and the executor, until nothing more completes.

Recursive cancel: while this worker runs a task, the tasks and actor calls its
user code submits are recorded as that task's *children* (this process owns
them). A ``CancelTask`` with ``recursive`` for the running task cancels those
still pending (a pushed child's worker gets ``CancelTask`` in turn, so the
cancel goes down the tree), and children the task submits after it was
cancelled are cancelled as they arrive. The record ends with the task.
``CancelRequested`` for an actor call's ref goes to ``ActorCaller.cancel``.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from shoal.kernel.core_worker.actor_executor import ActorHost
from shoal.kernel.core_worker.actor_protocol import (
    ActorCallSubmitted,
    ActorCreationRequested,
    ActorInstanceCreated,
    ActorKillRequested,
    ActorLookupRequested,
    ActorTaskAck,
    ActorTaskDone,
    ActorTaskExecuted,
    ActorTaskRejected,
    PushActorTask,
)
from shoal.kernel.core_worker.actors import (
    ACTOR_REQUEST_TYPES,
    ACTOR_TIMER_PREFIX,
    ActorCaller,
    ActorCallerConfig,
)
from shoal.kernel.core_worker.calls import CALL_TIMER_PREFIX, CallTable
from shoal.kernel.core_worker.executor import Executor
from shoal.kernel.core_worker.objects import (
    FETCH_TIMER_PREFIX,
    HANDOFF_TIMER_PREFIX,
    REGISTER_TIMER_PREFIX,
    ObjectTable,
)
from shoal.kernel.core_worker.protocol import (
    AddBorrower,
    BorrowerAdded,
    BorrowRegistered,
    CancelForwarded,
    CancelRequested,
    CancelTask,
    GetObject,
    GetRequested,
    ObjectPut,
    ObjectResult,
    ObjectStatus,
    PushTask,
    RefReleased,
    RefsChanged,
    RegisterBorrow,
    TaskDone,
    TaskExecuted,
    TaskRunning,
    TaskSubmitted,
    WaitRequested,
)
from shoal.kernel.core_worker.stream_protocol import (
    StreamItem,
    StreamItemAck,
    StreamItemProduced,
    StreamNextRequested,
)
from shoal.kernel.core_worker.streams import NEXT_TIMER_PREFIX, RESEND_TIMER_PREFIX, StreamTable
from shoal.kernel.core_worker.submitter import (
    LEASE_TIMER_PREFIX,
    PUSH_TIMER_PREFIX,
    HOST_LINGER_NS,
    HOST_PIPELINE_DEPTH,
    LINGER_TIMER_PREFIX,
    RETURN_TIMER_PREFIX,
    Submitter,
    SubmitterConfig,
)
from shoal.kernel.gcs.actor_protocol import (
    ActorRegistered,
    ActorTableUpdate,
    CreateActor,
    KillActorReply,
    NamedActorReply,
)
from shoal.kernel.dispatch import handler_for
from shoal.kernel.gcs.protocol import NodeTableUpdate
from shoal.kernel.gcs_client import POLL_TIMER, GcsClient, GcsClientConfig, KvCallRequested
from shoal.kernel.ids import NANOS_PER_MILLI, Nanos, NodeId, ObjectId, TaskId, WorkerId
from shoal.kernel.messages import Address, Msg, Received, Rejected, Send, Started, TimerFired
from shoal.kernel.raylet.object_protocol import (
    ObjectLocal,
    ObjectLocationAdded,
    ObjectLocationRemoved,
    ObjectUnavailable,
    PinObject,
)
from shoal.kernel.raylet.protocol import (
    LeaseCheck,
    LeasedWorkerDied,
    LeaseGranted,
    LeaseRejected,
    LeaseSpillback,
    RegisterWorker,
    ReturnWorkerAck,
)
from shoal.kernel.task_spec import ObjectRefInfo, producing_task

CoreWorkerInput = (
    Started | Received | TimerFired | TaskSubmitted | ObjectPut | GetRequested | WaitRequested
    | RefsChanged | CancelRequested | TaskExecuted | KvCallRequested
    | ActorCreationRequested | ActorCallSubmitted | ActorLookupRequested | ActorKillRequested
    | ActorInstanceCreated | ActorTaskExecuted
    | StreamItemProduced | StreamNextRequested  # streaming generators (issue 5)
)


CHILDREN_PRUNE_AT = 1024  # a parent's child record is pruned of finished ones past this


_GCS_CALL_REPLIES = ("PlacementGroupReply", "ResourceViewReply")

class CoreWorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    submitter: SubmitterConfig = msgspec.field(default_factory=SubmitterConfig)
    gcs_client: GcsClientConfig = msgspec.field(default_factory=GcsClientConfig)
    fetch_retry_ns: Nanos = 500 * NANOS_PER_MILLI
    actors: ActorCallerConfig = msgspec.field(default_factory=ActorCallerConfig)



def host_config() -> CoreWorkerConfig:
    """The configuration both hosts run core workers with (idle leases linger, short
    tasks are pipelined)."""
    return CoreWorkerConfig(submitter=SubmitterConfig(lease_linger_ns=HOST_LINGER_NS,
                                                      pipeline_depth=HOST_PIPELINE_DEPTH))

class CoreWorker:
    """The core worker kernel. ``handle`` is its only entry point."""

    def __init__(self, address: Address, *, raylet: Address, gcs: Address,
                 config: CoreWorkerConfig | None = None) -> None:
        self.address = address
        self.config = config or CoreWorkerConfig()
        self.raylet = raylet
        self.objects = ObjectTable(address, self.config.fetch_retry_ns)
        self.calls = CallTable(address, raylet, self.objects)
        self.streams = StreamTable(address, self.objects)  # streaming generators (issue 5)
        self.submitter = Submitter(address, raylet, self.objects, self.config.submitter,
                                   self.streams)
        self.executor = Executor(address, self.objects)
        self.gcs_client = GcsClient(gcs, self.config.gcs_client)
        self.actors = ActorCaller(address, gcs, self.objects, self.config.actors,
                                  self.streams)
        self.actor_host = ActorHost(address, self.objects)
        # Recursive cancel: tasks/calls submitted by each task running here, in order.
        self._children: dict[TaskId, dict[TaskId, None]] = {}
        self._cancelled_parents: dict[TaskId, bool] = {}  # running tasks cancelled: force
        self._dead_nodes: dict[NodeId, None] = {}
        self._incarnations: dict[NodeId, int] = {}

    def handle(self, event: CoreWorkerInput, *, now: Nanos) -> list[Msg]:
        """Feeds one input to the core worker and returns the effects, in order."""
        self.objects.defer_releases = self._runs_user_code()  # objects.py: borrower forwarding
        effects = self._dispatch(event, now)
        self.objects.defer_releases = self._runs_user_code()
        if _ends_user_code(type(event)) or (
                not self.objects.defer_releases and self.objects.has_deferred):
            effects += self.objects.release_deferred()  # its results were handed off
        effects += self._announce_completions(now)
        return effects + self.submitter.settle(now) + self.actors.settle(now)

    def _runs_user_code(self) -> bool:
        return self.executor.running_task_id is not None or self.actor_host.running_calls > 0

    def _dispatch(self, event: CoreWorkerInput, now: Nanos) -> list[Msg]:
        # A table keyed by input class (kernel/dispatch.py), not a ``match``: each class
        # pattern is an isinstance call, slow for msgspec classes.
        event_type = type(event)
        if event_type is Received:  # most inputs
            return self._on_received(event.src, event.msg, now)
        handler = _INPUTS.get(event_type) or handler_for(_INPUTS, event_type)
        return handler(self, event, now) if handler is not None else []

    def _on_task_submitted(self, event: TaskSubmitted, now: Nanos) -> list[Msg]:
        if event.spec.streaming:
            self.streams.open(event.spec.task_id)
        effects = self.submitter.submit(event.spec, event.function, now)
        return effects + self._adopt_child(event.spec.task_id, now)

    def _on_task_executed(self, event: TaskExecuted, now: Nanos) -> list[Msg]:
        self._children.pop(event.task_id, None)
        self._cancelled_parents.pop(event.task_id, None)
        return self.executor.on_executed(event, now)

    def _on_actor_call_submitted(self, event: ActorCallSubmitted, now: Nanos) -> list[Msg]:
        if event.spec.streaming:  # a generator method (issue 5)
            self.streams.open(event.spec.task_id)
        return self.actors.submit(event, now) + self._adopt_child(event.spec.task_id, now)

    def _on_started(self, now: Nanos) -> list[Msg]:
        effects = self.gcs_client.handle(Started(), now=now)
        self.actors.on_started(now)
        if self.address.component == "worker":
            effects.append(Send(dst=self.raylet, msg=RegisterWorker(
                worker_id=WorkerId(self.address.worker))))
        return effects

    # --- cancel ----------------------------------------------------------------

    def _on_cancel_requested(self, event: CancelRequested | CancelForwarded,
                             now: Nanos) -> list[Msg]:
        owner = self.objects.owner_of(event.object_id)
        if isinstance(event, CancelRequested) and owner is not None and owner != self.address:
            # A borrowed ref: only its owner knows where the task runs (Ray forwards too).
            return [Send(dst=owner, msg=CancelForwarded(
                object_id=event.object_id, force=event.force, recursive=event.recursive))]
        task_id = producing_task(event.object_id)
        if task_id is not None and self.actors.owns_call(task_id):
            return self.actors.cancel(task_id, now)  # force was refused by the API
        return self.submitter.cancel(event.object_id, event.force, event.recursive)

    def _on_cancel_task(self, src: Address, msg: CancelTask, now: Nanos) -> list[Msg]:
        effects: list[Msg] = []
        if msg.recursive and self.executor.running_task_id == msg.task_id:
            # Children first: a forced cancel ends this process right after.
            self._cancelled_parents[msg.task_id] = msg.force
            for child in list(self._children.get(msg.task_id, ())):
                effects += self._cancel_owned(child, msg.force, now)
        return effects + self.executor.on_cancel(src, msg)

    def _cancel_owned(self, task_id: TaskId, force: bool, now: Nanos) -> list[Msg]:
        if self.actors.owns_call(task_id):
            return self.actors.cancel(task_id, now)
        return self.submitter.cancel_task(task_id, force, recursive=True)

    def _adopt_child(self, task_id: TaskId, now: Nanos) -> list[Msg]:
        """Records a task or call submitted by the running task, for recursive cancel."""
        parent = self.executor.running_task_id
        if parent is None:
            return []
        if parent in self._cancelled_parents:  # submitted after its parent was cancelled
            return self._cancel_owned(task_id, self._cancelled_parents[parent], now)
        children = self._children.setdefault(parent, {})
        size = len(children)
        if size >= CHILDREN_PRUNE_AT and size & (size - 1) == 0:  # amortized: at powers of 2
            for child in [c for c in children if not self._pending(c)]:
                del children[child]
        children[task_id] = None
        return []

    def _pending(self, task_id: TaskId) -> bool:
        return self.submitter.is_pending(task_id) or self.actors.owns_call(task_id)

    def _on_put(self, event: ObjectPut) -> list[Msg]:
        info = ObjectRefInfo(object_id=event.object_id, owner=self.address)
        self.objects.add_owned_pending(event.object_id)
        effects = self.objects.change_local(info, +1)  # the put's own ref, released below
        if event.stored:
            effects.append(Send(dst=self.raylet, msg=PinObject(
                object_id=event.object_id, owner=self.address, size=event.size)))
            result = ObjectResult(object_id=event.object_id, value=event.value, stored=True,
                                  locations=(self.address.node,), size=event.size)
        else:
            result = ObjectResult(object_id=event.object_id, value=event.value)
        effects += self.objects.store(result)
        return effects + self.objects.change_local(info, -1)

    def _on_received(self, src: Address, msg: Msg, now: Nanos) -> list[Msg]:
        handler = _RECEIVERS.get(type(msg)) or handler_for(_RECEIVERS, type(msg))
        if handler is not None:
            return handler(self, src, msg, now)
        if type(msg).__name__.startswith("Kv") or type(msg).__name__ in _GCS_CALL_REPLIES:
            # placement groups and the resource view: their replies complete calls of the
            # GCS client, as KV ones do
            return self.gcs_client.handle(Received(src=src, msg=msg), now=now)
        reason = (f"core worker {self.address}: does not serve {type(msg).__name__} messages; "
                  "send it to the component that owns it")
        return [Send(dst=src, msg=Rejected(request_type=type(msg).__name__, reason=reason))]

    def _on_register_borrow(self, src: Address, msg: RegisterBorrow, now: Nanos) -> list[Msg]:
        if self.submitter.is_pending(msg.task_id) or self.actors.owns_call(msg.task_id):
            return []  # its results have not reached us yet: asked again later
        return self.objects.on_register_borrow(src, msg, now)

    def _on_rejected(self, src: Address, msg: Rejected, now: Nanos) -> list[Msg]:
        if msg.request_type in ACTOR_REQUEST_TYPES:
            return self.actors.on_gcs_reply(msg, now)
        return self.gcs_client.handle(Received(src=src, msg=msg), now=now)

    def _on_node_table(self, msg: NodeTableUpdate, now: Nanos) -> list[Msg]:
        self.gcs_client.handle(Received(src=self.gcs_client.gcs, msg=msg), now=now)
        newly_dead: dict[NodeId, None] = {}
        for info in self.gcs_client.view.nodes.values():
            seen = self._incarnations.get(info.node_id, info.incarnation)
            # A node that rejoined under a new incarnation lost everything it had, too.
            if info.incarnation > seen or (info.state == "dead" and info.node_id not in self._dead_nodes):
                newly_dead[info.node_id] = None
            self._incarnations[info.node_id] = info.incarnation
            if info.state == "dead":
                self._dead_nodes[info.node_id] = None
            else:
                self._dead_nodes.pop(info.node_id, None)
        if not newly_dead:
            return []
        self.objects.drop_locations(newly_dead)
        dead_set = set(newly_dead)
        effects = self.submitter.on_nodes_dead(dead_set, now)

        def gone(process: Address) -> bool:
            # A node that rejoined lost its raylet's workers; a driver there outlives the
            # restart (only a node declared dead takes its driver with it).
            return process.node in newly_dead and (
                process.node in self._dead_nodes or process.component != "driver")

        effects += self.objects.drop_forwarding_to(gone)
        return effects + self.calls.fail_objects(self.objects.fail_owned_by(gone))

    def _on_timer(self, event: TimerFired, now: Nanos) -> list[Msg]:
        key = event.key
        if key.startswith(PUSH_TIMER_PREFIX):
            return self.submitter.on_push_timer(TaskId(key[len(PUSH_TIMER_PREFIX):]), now)
        if key.startswith(LEASE_TIMER_PREFIX):
            return self.submitter.on_lease_timer(int(key[len(LEASE_TIMER_PREFIX):]), now)
        if key.startswith(RETURN_TIMER_PREFIX):
            return self.submitter.on_return_timer(key[len(RETURN_TIMER_PREFIX):], now)
        if key.startswith(LINGER_TIMER_PREFIX):
            return self.submitter.on_linger_timer(key[len(LINGER_TIMER_PREFIX):], now)
        if key.startswith((HANDOFF_TIMER_PREFIX, REGISTER_TIMER_PREFIX)):
            return self.objects.on_forwarding_timer(key, now)
        if key.startswith(FETCH_TIMER_PREFIX):
            return self.objects.on_fetch_timer(key[len(FETCH_TIMER_PREFIX):], now)  # type: ignore[arg-type]
        if key.startswith(CALL_TIMER_PREFIX):
            return self.calls.on_timeout(int(key[len(CALL_TIMER_PREFIX):]))
        if key == POLL_TIMER or key.startswith("gcs_client."):
            return self.gcs_client.handle(event, now=now)
        if key.startswith(NEXT_TIMER_PREFIX):  # streaming generators (issue 5)
            return self.streams.on_timer(int(key[len(NEXT_TIMER_PREFIX):]))
        if key.startswith(RESEND_TIMER_PREFIX):
            task_id = TaskId(key[len(RESEND_TIMER_PREFIX):])
            return (self.executor.on_stream_timer(task_id, now)
                    + self.actor_host.on_stream_timer(task_id, now))
        if key.startswith(ACTOR_TIMER_PREFIX):  # actors (issue #4)
            return self.actors.on_timer(key, now)
        return []

    def _announce_completions(self, now: Nanos) -> list[Msg]:
        objects, effects = self.objects, []
        while objects.completed or objects.lost or objects.freed_ids:
            while objects.completed:
                object_id = objects.completed.pop(0)
                effects += self.calls.on_object_done(object_id)
                effects += self.submitter.on_object_done(object_id, now)
                effects += self.executor.on_object_done(object_id)
                effects += self.actor_host.on_object_done(object_id)  # actors (issue #4)
            while objects.lost:
                effects += self._on_lost(objects.lost.pop(0), now)
            while objects.freed_ids:
                object_id = objects.freed_ids.pop(0)
                self.actors.on_object_freed(object_id)
                effects += self.submitter.forget_lineage(object_id)
                effects += self.streams.on_object_freed(object_id)
        return effects

    def _on_lost(self, object_id: ObjectId, now: Nanos) -> list[Msg]:
        """Every copy of an owned stored object is gone: rebuild it, or report it lost."""
        rebuilt = self.submitter.reconstruct(object_id, now)
        if rebuilt is not None:
            return rebuilt
        return self.objects.fail_lost(object_id, (
            f"object {object_id} is lost: every node that held a copy died, and it cannot "
            "be rebuilt (it was put, not returned by a task, or its task has no retries "
            "left); keep such objects alive by re-creating them, or raise max_retries"))

    def check_invariants(self) -> None:
        """Raises ``InvariantViolation`` if the sub-machines disagree."""
        self.objects.check_invariants()
        self.submitter.check_invariants()
        self.streams.check_invariants()
        self.gcs_client.check_invariants()
        self.actors.check_invariants()
        self.actor_host.check_invariants()


_ENDS_USER_CODE: dict[type, bool] = {}


def _ends_user_code(event_type: type) -> bool:
    """Whether an input of this class reports user code that finished (a task or an
    actor call): ``isinstance`` on every input, remembered per class (slow for msgspec)."""
    ends = _ENDS_USER_CODE.get(event_type)
    if ends is None:
        ends = _ENDS_USER_CODE[event_type] = issubclass(event_type,
                                                        (TaskExecuted, ActorTaskExecuted))
    return ends


# The core worker's handlers by host input and by message class (kernel/dispatch.py: a
# dict probe on ``type(msg)`` instead of a ``match`` walking one isinstance per case).
_INPUTS: dict[type, Callable[[CoreWorker, Msg, Nanos], list[Msg]]] = {
    Received: lambda cw, event, now: cw._on_received(event.src, event.msg, now),
    TimerFired: lambda cw, event, now: cw._on_timer(event, now),
    TaskSubmitted: lambda cw, event, now: cw._on_task_submitted(event, now),
    ObjectPut: lambda cw, event, now: cw._on_put(event),
    GetRequested: lambda cw, event, now: cw.calls.on_get(event, now),
    WaitRequested: lambda cw, event, now: cw.calls.on_wait(event, now),
    RefsChanged: lambda cw, event, now: [e for info, delta in event.deltas
                                         for e in cw.objects.change_local(info, delta)],
    CancelRequested: lambda cw, event, now: cw._on_cancel_requested(event, now),
    TaskExecuted: lambda cw, event, now: cw._on_task_executed(event, now),
    KvCallRequested: lambda cw, event, now: cw.gcs_client.handle(event, now=now),
    Started: lambda cw, event, now: cw._on_started(now),
    # --- actors (issue #4) ---
    ActorCreationRequested: lambda cw, event, now: cw.actors.on_create(event, now),
    ActorCallSubmitted: lambda cw, event, now: cw._on_actor_call_submitted(event, now),
    ActorLookupRequested: lambda cw, event, now: cw.actors.on_lookup(event, now),
    ActorKillRequested: lambda cw, event, now: cw.actors.on_kill(event, now),
    ActorInstanceCreated: lambda cw, event, now: cw.actor_host.on_instance_created(event),
    ActorTaskExecuted: lambda cw, event, now: cw.actor_host.on_executed(event, now),
    # --- streaming generators (issue 5): a task or an actor call ---
    StreamItemProduced: lambda cw, event, now: (cw.executor.on_stream_item(event, now)
                                                + cw.actor_host.on_stream_item(event, now)),
    StreamNextRequested: lambda cw, event, now: cw.streams.on_next(event, now),
}

_RECEIVERS: dict[type, Callable[[CoreWorker, Address, Msg, Nanos], list[Msg]]] = {
    TaskDone: lambda cw, src, msg, now: cw.submitter.on_task_done(src, msg, now),
    PushTask: lambda cw, src, msg, now: cw.executor.on_push(src, msg, now),
    GetObject: lambda cw, src, msg, now: cw.objects.on_get_object(src, msg),
    ObjectStatus: lambda cw, src, msg, now: cw.objects.on_object_status(msg),
    LeaseGranted: lambda cw, src, msg, now: cw.submitter.on_lease_granted(src, msg, now),
    TaskRunning: lambda cw, src, msg, now: cw.submitter.on_task_running(msg),
    ReturnWorkerAck: lambda cw, src, msg, now: cw.submitter.on_return_ack(msg),
    LeaseSpillback: lambda cw, src, msg, now: cw.submitter.on_spillback(src, msg, now),
    LeaseRejected: lambda cw, src, msg, now: cw.submitter.on_lease_rejected(src, msg, now),
    LeasedWorkerDied: lambda cw, src, msg, now: cw.submitter.on_worker_died(msg, now),
    RefReleased: lambda cw, src, msg, now: cw.objects.on_ref_released(src, msg),
    RegisterBorrow: lambda cw, src, msg, now: cw._on_register_borrow(src, msg, now),
    BorrowRegistered: lambda cw, src, msg, now: cw.objects.on_borrow_registered(msg),
    AddBorrower: lambda cw, src, msg, now: cw.objects.on_add_borrower(src, msg),
    BorrowerAdded: lambda cw, src, msg, now: cw.objects.on_borrower_added(msg),
    LeaseCheck: lambda cw, src, msg, now: [Send(
        dst=src, msg=cw.submitter.lease_check_reply(src, msg))],
    ObjectLocal: lambda cw, src, msg, now: cw.objects.on_object_local(msg),
    ObjectUnavailable: lambda cw, src, msg, now: cw.objects.on_object_unavailable(msg, now),
    ObjectLocationAdded: lambda cw, src, msg, now: cw.objects.on_location_added(msg),
    ObjectLocationRemoved: lambda cw, src, msg, now: cw.objects.on_location_removed(msg),
    CancelTask: lambda cw, src, msg, now: cw._on_cancel_task(src, msg, now),
    CancelForwarded: lambda cw, src, msg, now: cw._on_cancel_requested(msg, now),
    StreamItem: lambda cw, src, msg, now: cw.streams.on_item(src, msg),  # issue 5
    StreamItemAck: lambda cw, src, msg, now: (cw.executor.on_stream_ack(msg, now)
                                              + cw.actor_host.on_stream_ack(msg)),
    NodeTableUpdate: lambda cw, src, msg, now: cw._on_node_table(msg, now),
    # --- actors (issue #4) ---
    PushActorTask: lambda cw, src, msg, now: cw.actor_host.on_push(src, msg, now),
    ActorTaskDone: lambda cw, src, msg, now: cw.actors.on_done(src, msg, now),
    ActorTaskAck: lambda cw, src, msg, now: cw.actors.on_ack(msg),
    ActorTaskRejected: lambda cw, src, msg, now: cw.actors.on_rejected(msg, now),
    CreateActor: lambda cw, src, msg, now: cw.actor_host.on_create(src, msg, now),
    ActorTableUpdate: lambda cw, src, msg, now: cw.actors.on_table_update(msg, now),
    **dict.fromkeys((ActorRegistered, NamedActorReply, KillActorReply),
                    lambda cw, src, msg, now: cw.actors.on_gcs_reply(msg, now)),
    # --- end actors ---
    Rejected: lambda cw, src, msg, now: cw._on_rejected(src, msg, now),
}
