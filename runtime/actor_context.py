"""The actor half of the production ``WorkerContext``: creating, calling, finding, killing actors.

Theory of operation
-------------------
``ProdActorContext`` is a mixin of ``ProdWorkerContext`` (``runtime/driver.py``)
implementing the API's ``ActorContext`` (``runtime/api/context.py``). It uses
the context's plumbing: ``_post`` (hand an input to the core worker, after the
pending ref changes), ``_new_waiter``/``_block`` (wait on a ``threading.Event``
that the trio thread sets when the kernel answers) and ``_lock``.

* ``create_actor``, ``get_named_actor`` and ``kill_actor`` send one request to
  the core worker with a fresh ``call_id`` and block until the kernel emits
  ``ActorRequestCompleted`` for it (the GCS answered).
* ``submit_actor_task`` is fire and forget when the handle sets no
  ``max_pending_calls`` (Ray's default): the common path costs one post. With a
  limit, the kernel may refuse the call with ``ActorCallRefused``, emitted while
  it handles the ``ActorCallSubmitted``. The host must see that refusal before
  ``submit_actor_task`` returns, so it posts, right behind the submission, a
  ``GetRequested`` of no refs: the kernel handles one thread's inputs in order
  and answers a get of nothing at once, and the trio thread carries out one
  input's effects in order; so when that get is answered, the refusal (if any)
  has already been recorded in ``_refused``.

In the process that hosts an actor, ``current_actor_id`` and
``current_actor_restarts`` are set by the actor's host (``runtime/actor_worker.py``).

Job end: Ray ends a job's non-detached actors with the job. A driver that
dies without ``shutdown`` (crash, SIGKILL) ends its job all the same: its node
daemon sees its connection close and the GCS then kills the actors it owns
(``kernel/gcs/jobs.py``). A driver that joined a running cluster and shuts down
cleanly also kills them itself first (``stop_owned_actors``) and waits for the
GCS's answers, so that when ``shutdown()`` returns they are already dead (the
connection's close alone would end them a moment later). An embedded cluster
stops with its driver anyway.

Namespaces: actors are named and looked up in the job's namespace, the
driver's ``init(namespace=...)`` (else the job's anonymous one). The driver
records it in the GCS's internal KV under its job id (``JOB_NAMESPACE_KV``)
when it is set; a worker reads it from there the first time it needs the
namespace of a job, and keeps it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from shoal.kernel.core_worker.actor_protocol import (
    ActorCallRefused,
    ActorCallSubmitted,
    ActorCreationRequested,
    ActorKillRequested,
    ActorLookupRequested,
    ActorRequestCompleted,
)
from shoal.kernel.core_worker.protocol import GetRequested
from shoal.kernel.gcs.actor_protocol import ActorSpec
from shoal.kernel.gcs.protocol import KvGet, KvPut, KvRequest
from shoal.kernel.ids import ActorId, TaskId
from shoal.kernel.messages import Address, Msg
from shoal.kernel.task_spec import TaskSpec
from shoal.runtime.api.exceptions import PendingCallsLimitExceeded, RaySystemError

if TYPE_CHECKING:
    from shoal.runtime.driver import _Waiter

JOB_NAMESPACE_KV = "shoal.job_namespace"  # KV namespace: job id -> the job's actor namespace
JOB_NAMESPACES_MAX = 1024  # jobs whose namespace a worker remembers


class ProdActorContext:
    """The ``ActorContext`` methods of ``ProdWorkerContext`` (see the module docstring)."""

    current_actor_id: ActorId | None = None
    current_actor_restarts: int = 0
    job_id: str
    address: Address
    _lock: threading.Lock
    _refused: dict[TaskId, str]
    _job_namespaces: dict[str, str | None] | None = None  # job id -> its namespace (workers)
    _own_namespace: str | None = None
    _namespace_set = False  # a driver's: set once at init, never read from the KV
    _owned_actors: dict[ActorId, None] | None = None  # a driver's non-detached actors

    if TYPE_CHECKING:  # provided by ProdWorkerContext
        def _post(self, event: Msg | None) -> None: ...
        def kv_call(self, request: KvRequest) -> Any: ...
        def _new_waiter(self) -> _Waiter: ...
        def _block(self, waiter: _Waiter) -> Any: ...
        def _check_alive(self) -> None: ...

    @property
    def namespace(self) -> str | None:
        """The namespace of the job the calling code runs for; None: the job's anonymous one."""
        if self._namespace_set:
            return self._own_namespace
        job_id = self.job_id
        if not job_id:
            return None  # a worker before its first task: no job yet
        cache = self._job_namespaces
        if cache is None:
            cache = self._job_namespaces = {}
        if job_id not in cache:
            if len(cache) >= JOB_NAMESPACES_MAX:
                cache.clear()  # jobs long gone, most likely: asking again is cheap
            raw = self.kv_call(KvGet(request_id=0, namespace=JOB_NAMESPACE_KV,
                                     key=job_id.encode()))
            cache[job_id] = bytes(raw).decode() if raw else None
        return cache[job_id]

    @namespace.setter
    def namespace(self, namespace: str | None) -> None:
        """A driver's namespace (``init(namespace=...)``), recorded for its workers."""
        self._own_namespace, self._namespace_set = namespace, True
        if namespace:
            self.kv_call(KvPut(request_id=0, namespace=JOB_NAMESPACE_KV,
                               key=self.job_id.encode(), value=namespace.encode()))

    def create_actor(self, spec: ActorSpec, function: bytes,
                     get_if_exists: bool) -> ActorRequestCompleted:
        """Registers a new actor this process owns; blocks until the GCS answered."""
        waiter = self._new_waiter()
        self._post(ActorCreationRequested(call_id=waiter.call_id, spec=spec, function=function,
                                          get_if_exists=get_if_exists))
        done: ActorRequestCompleted = self._block(waiter)
        if done.created and not spec.detached and self.address.component == "driver":
            with self._lock:
                if self._owned_actors is None:
                    self._owned_actors = {}
                self._owned_actors[spec.actor_id] = None
        return done

    def submit_actor_task(self, actor_id: ActorId, spec: TaskSpec, max_task_retries: int,
                          max_pending_calls: int) -> None:
        """Submits one method call; fire and forget unless the handle limits pending calls.

        Raises:
            PendingCallsLimitExceeded: the core worker refused the call (``ActorCallRefused``).
        """
        self._check_alive()
        submitted = ActorCallSubmitted(actor_id=actor_id, spec=spec,
                                       max_task_retries=max_task_retries,
                                       max_pending_calls=max_pending_calls)
        if max_pending_calls <= 0:
            self._post(submitted)  # the kernel never refuses a call without a limit
            return
        waiter = self._new_waiter()
        self._post(submitted)
        self._post(GetRequested(call_id=waiter.call_id, refs=(), timeout_ns=None))
        self._block(waiter)  # answered after the submission was handled (module docstring)
        with self._lock:
            message = self._refused.pop(spec.task_id, None)
        if message is not None:
            raise PendingCallsLimitExceeded(message)

    def get_named_actor(self, name: str, namespace: str) -> ActorRequestCompleted:
        """Looks a live named actor up at the GCS; blocks until it answered."""
        waiter = self._new_waiter()
        self._post(ActorLookupRequested(call_id=waiter.call_id, name=name, namespace=namespace))
        done: ActorRequestCompleted = self._block(waiter)
        return done

    def kill_actor(self, actor_id: ActorId, no_restart: bool) -> None:
        """Asks the GCS to kill the actor; blocks until it did."""
        waiter = self._new_waiter()
        self._post(ActorKillRequested(call_id=waiter.call_id, actor_id=actor_id,
                                      no_restart=no_restart))
        self._block(waiter)
        if no_restart and self._owned_actors is not None:
            with self._lock:
                self._owned_actors.pop(actor_id, None)

    def stop_owned_actors(self, timeout_s: float) -> int:
        """The job ends: kills every non-detached actor this process created (those
        already dead are no-ops at the GCS); waits up to ``timeout_s`` for the answers.

        Returns:
            How many kills were asked for.
        """
        with self._lock:
            owned, self._owned_actors = list(self._owned_actors or ()), None
        waiters = []
        try:
            for actor_id in owned:
                waiter = self._new_waiter()
                self._post(ActorKillRequested(call_id=waiter.call_id, actor_id=actor_id,
                                              no_restart=True))
                waiters.append(waiter)
        except RaySystemError:
            return 0  # the cluster is gone already, and its actors with it
        deadline = time.monotonic() + timeout_s
        for waiter in waiters:
            waiter.wait(max(0.0, deadline - time.monotonic()))
        return len(owned)

    def on_call_refused(self, effect: ActorCallRefused) -> None:
        """The kernel refused a call as it was submitted: remember why. Trio thread."""
        with self._lock:
            self._refused[effect.task_id] = effect.message
