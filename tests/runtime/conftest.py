"""A tiny single-process host for the API layer's tests: ``FakeContext``.

It implements ``WorkerContext`` for one driver and runs each submitted task at
once, in the submitting thread, through ``executor.execute`` (so nested tasks
run recursively), unless ``deferred`` is set: then tasks wait in ``pending``
until ``run_pending()``. Retries follow ``max_retries`` and ``retryable_error``.
Every ref count change is logged in ``ref_log``; ``refs`` holds the live counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from shoal.kernel.core_worker.protocol import ObjectError, ObjectResult, TaskExecuted
from shoal.kernel.ids import ActorId, NodeId, ObjectId, TaskId
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskSpec
from shoal.runtime.api import executor
from shoal.runtime.api.context import bind_thread_context, set_global_context


class FakeContext:
    """A real (tiny) host: one process, one node, tasks run synchronously."""

    def __init__(self, *, deferred: bool = False) -> None:
        self.address = Address(node=NodeId("n1"), component="driver")
        self.node_id = NodeId("n1")
        self.job_id = "job1"
        self.current_actor_id: ActorId | None = None
        self.deferred = deferred
        self.store: dict[ObjectId, ObjectResult] = {}
        self.functions: dict[str, bytes] = {}
        self.submitted: list[TaskSpec] = []
        self.pending: list[TaskSpec] = []
        self.executed: list[TaskExecuted] = []
        self.cancelled: list[tuple[ObjectRefInfo, bool, bool]] = []
        self.refs: dict[ObjectId, int] = {}
        self.ref_log: list[tuple[str, ObjectId]] = []
        self.calls: list[str] = []  # the order of submit/put/ref_added calls
        self._tasks = 0
        self._objects = 0

    # --- identity ----------------------------------------------------------

    @property
    def current_task_id(self) -> TaskId | None:
        spec = executor.current_task_spec()
        return spec.task_id if spec is not None else None

    def next_task_id(self) -> TaskId:
        self._tasks += 1
        return TaskId(f"t{self._tasks}")

    def next_object_id(self) -> ObjectId:
        self._objects += 1
        return ObjectId(f"put{self._objects}")

    # --- objects -------------------------------------------------------------

    def put_object(self, object_id: ObjectId, payload: Payload) -> None:
        self.calls.append(f"put {object_id}")
        self.store[object_id] = ObjectResult(object_id=object_id, value=payload)

    def get_objects(self, refs: list[ObjectRefInfo],
                    timeout_s: float | None) -> list[ObjectResult]:
        assert len({r.object_id for r in refs}) == len(refs), "the API passes distinct refs"
        if timeout_s is None:
            self.run_pending()
        out = []
        for ref in refs:
            result = self.store.get(ref.object_id)
            if result is None:
                assert timeout_s is not None, f"get of {ref.object_id} would block forever"
                result = ObjectResult(object_id=ref.object_id, error=ObjectError(
                    kind="get_timeout", message=f"not ready after {timeout_s} s"))
            out.append(result)
        return out

    def wait_objects(self, refs: list[ObjectRefInfo], num_returns: int,
                     timeout_s: float | None, fetch_local: bool) -> list[ObjectId]:
        if timeout_s is None:
            self.run_pending()
        return [ref.object_id for ref in refs if ref.object_id in self.store]

    def ref_added(self, ref: ObjectRefInfo) -> None:
        self.calls.append(f"ref+ {ref.object_id}")
        self.ref_log.append(("+", ref.object_id))
        self.refs[ref.object_id] = self.refs.get(ref.object_id, 0) + 1

    def ref_removed(self, ref: ObjectRefInfo) -> None:
        self.ref_log.append(("-", ref.object_id))
        self.refs[ref.object_id] -= 1

    def live_refs(self, object_id: str) -> int:
        return self.refs.get(ObjectId(object_id), 0)

    # --- tasks ---------------------------------------------------------------

    def submit_task(self, spec: TaskSpec, function: bytes) -> None:
        self.calls.append(f"submit {spec.task_id}")
        self.submitted.append(spec)
        self.functions[spec.function_id] = function
        if self.deferred:
            self.pending.append(spec)
        else:
            self._run(spec)

    def run_pending(self) -> None:
        while self.pending:
            self._run(self.pending.pop(0))

    def _run(self, spec: TaskSpec) -> None:
        args: list[Payload] = []
        for arg in spec.args:
            if arg.ref is None:
                assert arg.value is not None
                args.append(arg.value)
                continue
            resolved = self.store[arg.ref.object_id]
            if resolved.error is not None:
                self._finish(spec, tuple(ObjectResult(object_id=oid, error=resolved.error)
                                         for oid in spec.return_ids))
                return
            assert resolved.value is not None
            args.append(resolved.value)
        done = executor.execute(spec, tuple(args), self.functions[spec.function_id], self)
        self.executed.append(done)
        failed = any(r.error is not None for r in done.results)
        if failed and done.retryable_error and spec.max_retries != spec.attempt:
            self._run(msgspec.structs.replace(spec, attempt=spec.attempt + 1))
            return
        self._finish(spec, done.results)

    def _finish(self, spec: TaskSpec, results: tuple[ObjectResult, ...]) -> None:
        for result in results:
            self.store[result.object_id] = result

    def cancel_task(self, ref: ObjectRefInfo, force: bool, recursive: bool) -> None:
        self.cancelled.append((ref, force, recursive))
        for spec in list(self.pending):
            if ref.object_id in spec.return_ids:
                self.pending.remove(spec)
                self._finish(spec, tuple(ObjectResult(object_id=oid, error=ObjectError(
                    kind="task_cancelled", message="cancelled before it ran"))
                    for oid in spec.return_ids))

    # --- cluster -------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return [{"NodeID": "n1", "Alive": True, "Resources": {"CPU": 4.0}}]

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 4.0}

    def available_resources(self) -> dict[str, float]:
        return {"CPU": 3.0}


@pytest.fixture
def ctx() -> Iterator[FakeContext]:
    """A FakeContext bound to the test's thread (as the simulator binds one)."""
    fake = FakeContext()
    previous = bind_thread_context(fake)
    try:
        yield fake
    finally:
        bind_thread_context(previous)


@pytest.fixture
def deferred_ctx() -> Iterator[FakeContext]:
    """A FakeContext whose tasks wait in ``pending`` until ``run_pending()``."""
    fake = FakeContext(deferred=True)
    previous = bind_thread_context(fake)
    try:
        yield fake
    finally:
        bind_thread_context(previous)


@pytest.fixture
def no_ctx() -> Iterator[None]:
    """No context bound to the thread nor set for the process."""
    previous_thread = bind_thread_context(None)
    previous_global = set_global_context(None)
    try:
        yield
    finally:
        bind_thread_context(previous_thread)
        set_global_context(previous_global)
