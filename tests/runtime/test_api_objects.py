"""get, put, wait, cancel, the runtime context, cluster calls, and init/shutdown."""

from __future__ import annotations

import re

import pytest
from shoal.kernel.core_worker.protocol import ObjectError, ObjectResult
from shoal.kernel.ids import ObjectId
from shoal.runtime.api import api, remote
from shoal.runtime.api.context import (
    NOT_INITIALIZED,
    NotInitializedError,
    bind_thread_context,
    set_global_context,
)
from shoal.runtime.api.exceptions import GetTimeoutError, TaskCancelledError

import shoal

from .conftest import FakeContext


@remote
def echo(x):
    return x


# --- put / get -------------------------------------------------------------------


def test_put_then_get_round_trips_values(ctx) -> None:
    value = {"a": [1, 2.5, None], "b": (b"x", "y")}
    ref = shoal.put(value)
    assert ref.object_id == "put1"
    assert shoal.get(ref) == value
    assert shoal.get([ref, shoal.put(3)]) == [value, 3]
    assert shoal.get([]) == []


def test_get_of_the_same_ref_twice_asks_the_host_once(ctx) -> None:
    ref = shoal.put("v")
    assert shoal.get([ref, ref, ref]) == ["v", "v", "v"]


def test_put_of_a_ref_is_refused_like_ray(ctx) -> None:
    ref = shoal.put(1)
    with pytest.raises(TypeError, match=r"^Calling 'put' on an ObjectRef is not allowed\. If you "
                                        r"really want to do this, you can wrap the ObjectRef in a "
                                        r"list and call 'put' on it\.$"):
        shoal.put(ref)
    assert shoal.get(shoal.get(shoal.put([ref]))[0]) == 1


def test_put_of_an_unpicklable_value_says_what(ctx) -> None:
    import threading

    with pytest.raises(TypeError, match=r"^Could not serialize the put value \(lock\)"):
        shoal.put(threading.Lock())


def test_get_refuses_non_refs_with_rays_exceptions_and_messages(ctx) -> None:
    # As in Ray 2.x: a non-list container is a ValueError, a non-ref in the list a TypeError.
    with pytest.raises(TypeError, match=r"^Attempting to call `get` on the value 'x', which is "
                                        r"not an ObjectRef\.$"):
        shoal.get([shoal.put(1), "x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^Invalid type of object refs, <class 'int'>, is given\. "
                                         r"'object_refs' must either be an ObjectRef or a list"):
        shoal.get(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'object_refs' must either be an ObjectRef or a list"):
        shoal.get((shoal.put(1),))  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout, error", [(-1, ValueError), ("1", TypeError), (True, TypeError)])
def test_get_checks_the_timeout(ctx, timeout, error) -> None:
    with pytest.raises(error, match="'timeout'"):
        shoal.get(shoal.put(1), timeout=timeout)


def test_get_timeout_raises_get_timeout_error_which_is_a_timeout_error(deferred_ctx) -> None:
    ref = echo.remote(1)
    ready = shoal.put(2)
    with pytest.raises(GetTimeoutError, match=r"^Get timed out: 1 of 2 object\(s\) not ready "
                                              rf"after 0.5 s \(the first: {ref.object_id}\)"):
        shoal.get([ready, ref], timeout=0.5)
    with pytest.raises(TimeoutError):
        shoal.get(ref, timeout=0)
    assert shoal.get(ref) == 1  # timeout=None: waits (the fake runs the task)


def test_get_raises_the_first_error_in_order(ctx) -> None:
    @remote
    def fail(kind):
        raise kind("boom")

    good = shoal.put(1)
    first = fail.remote(KeyError)
    second = fail.remote(ValueError)
    with pytest.raises(KeyError):
        shoal.get([good, first, second])
    with pytest.raises(ValueError):
        shoal.get([good, second, first])


def test_get_raises_kernel_errors_as_their_exceptions(ctx) -> None:
    ref = shoal.put(1)
    ctx.store[ref.object_id] = ObjectResult(object_id=ref.object_id, error=ObjectError(
        kind="owner_died", message="node n1 died"))
    with pytest.raises(shoal.exceptions.OwnerDiedError, match="put1"):
        shoal.get(ref)
    with pytest.raises(shoal.exceptions.ObjectLostError):  # its base class
        shoal.get(ref)


def test_calls_without_a_context_say_how_to_start(no_ctx) -> None:
    for call in (lambda: shoal.put(1), shoal.nodes, shoal.get_runtime_context,
                 shoal.cluster_resources, shoal.available_resources):
        with pytest.raises(NotInitializedError, match=f"^{re.escape(NOT_INITIALIZED)}$"):
            call()


def test_the_global_context_serves_threads_without_their_own(no_ctx) -> None:
    fake = FakeContext()
    set_global_context(fake)
    assert shoal.get(shoal.put(5)) == 5
    assert shoal.is_initialized()
    other = FakeContext()
    previous = bind_thread_context(other)  # a thread-bound context wins
    try:
        shoal.put(6)
    finally:
        bind_thread_context(previous)
    assert [k for k in fake.store] == ["put1"] and [k for k in other.store] == ["put1"]


# --- wait ------------------------------------------------------------------------


def test_wait_splits_ready_from_not_ready_in_input_order(deferred_ctx) -> None:
    pending = echo.remote(1)
    a, b, c = shoal.put("a"), shoal.put("b"), shoal.put("c")
    ready, not_ready = shoal.wait([pending, c, a, b], num_returns=2, timeout=0)
    assert ready == [c, a]
    assert not_ready == [pending, b]
    ready, not_ready = shoal.wait([pending, c], num_returns=2, timeout=1.0)
    assert (ready, not_ready) == ([c], [pending])
    ready, not_ready = shoal.wait([pending, c], num_returns=2)  # no timeout: waits
    assert (ready, not_ready) == ([pending, c], [])


def test_wait_counts_failed_objects_as_ready(ctx) -> None:
    @remote
    def fail():
        raise RuntimeError("x")

    ref = fail.remote()
    assert shoal.wait([ref], timeout=0) == ([ref], [])


def test_wait_validates_like_ray(ctx) -> None:
    a, b = shoal.put(1), shoal.put(2)
    assert shoal.wait([]) == ([], [])
    with pytest.raises(TypeError, match="got a single ObjectRef"):
        shoal.wait(a)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a list of ObjectRef, got <class 'tuple'>"):
        shoal.wait((a, b))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list containing <class 'int'>"):
        shoal.wait([a, 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^Wait requires a list of unique object refs\.$"):
        shoal.wait([a, a])
    with pytest.raises(ValueError, match="Invalid number of objects to return 0"):
        shoal.wait([a], num_returns=0)
    with pytest.raises(ValueError, match="num_returns cannot be greater than the number"):
        shoal.wait([a, b], num_returns=3)
    with pytest.raises(ValueError, match="'timeout'"):
        shoal.wait([a], timeout=-0.1)


# --- cancel ----------------------------------------------------------------------


def test_cancel_passes_the_ref_and_flags(deferred_ctx) -> None:
    ref = echo.remote(1)
    shoal.cancel(ref, force=True, recursive=False)
    assert deferred_ctx.cancelled == [(ref.info, True, False)]
    with pytest.raises(TaskCancelledError, match=rf"The task t1 that creates object "
                                                 rf"{ref.object_id} was cancelled"):
        shoal.get(ref)


def test_cancel_refuses_non_refs(ctx) -> None:
    with pytest.raises(TypeError, match=r"only supported for object refs\. For actors, try "
                                        r"shoal\.kill\(\)"):
        shoal.cancel("t1.r0")  # type: ignore[arg-type]


def test_a_task_that_raises_task_cancelled_is_reported_as_cancelled(ctx) -> None:
    @remote
    def interrupted():
        raise TaskCancelledError("t?")  # what a host raises in a task it interrupts

    ref = interrupted.remote()
    assert ctx.store[ref.object_id].error.kind == "task_cancelled"
    assert ctx.executed[-1].retryable_error is False
    with pytest.raises(TaskCancelledError, match="was cancelled"):
        shoal.get(ref)


# --- runtime context and cluster calls -------------------------------------------


def test_runtime_context_on_the_driver(ctx) -> None:
    rc = shoal.get_runtime_context()
    assert rc.get_job_id() == rc.job_id == "job1"
    assert rc.get_node_id() == rc.node_id == "n1"
    assert rc.get_task_id() is None and rc.task_id is None
    assert rc.get_actor_id() is None and rc.actor_id is None
    assert rc.get_worker_id() == "n1/driver"
    assert rc.get() == {"job_id": "job1", "node_id": "n1"}


def test_runtime_context_inside_a_task(ctx) -> None:
    @remote(name="probe")
    def probe():
        rc = shoal.get_runtime_context()
        return rc.get_task_id(), rc.get_task_name(), rc.get()

    task_id, name, info = shoal.get(probe.remote())
    assert (task_id, name) == ("t1", "probe")
    assert info == {"job_id": "job1", "node_id": "n1", "task_id": "t1"}


def test_cluster_calls_pass_through(ctx) -> None:
    assert shoal.nodes() == ctx.nodes()
    assert shoal.cluster_resources() == {"CPU": 4.0}
    assert shoal.available_resources() == {"CPU": 3.0}


# --- init / shutdown / actors ------------------------------------------------------


def test_init_is_a_no_op_where_a_context_is_bound(ctx) -> None:
    assert shoal.is_initialized()
    assert shoal.init(num_cpus=4) == {"node_id": "n1", "address": "n1/driver", "job_id": "job1"}
    shoal.shutdown()
    assert shoal.is_initialized()


def test_init_uses_a_registered_host_starter(no_ctx) -> None:
    stopped = []
    fake = FakeContext()
    api.set_host_starter(lambda address, **kw: (fake, lambda: stopped.append(address)))
    try:
        assert shoal.init("head:6379", num_cpus=2)["node_id"] == "n1"
        assert shoal.get(shoal.put(1)) == 1
        with pytest.raises(RuntimeError, match="Maybe you called shoal.init twice"):
            shoal.init()
        assert shoal.init(ignore_reinit_error=True)["job_id"] == "job1"
        shoal.shutdown()
        assert stopped == ["head:6379"]
        assert not shoal.is_initialized()
    finally:
        api.set_host_starter(None)


def test_kill_and_get_actor_check_their_arguments(ctx) -> None:
    with pytest.raises(ValueError, match=r"^shoal.kill\(\) only supported for actors"):
        shoal.kill(object())
    with pytest.raises(ValueError, match=r"non-empty value to get_actor"):
        shoal.get_actor("")
    with pytest.raises(NotImplementedError, match=r"does not run actors yet"):
        shoal.get_actor("counter")  # the fake context has no actor support


def test_method_records_its_options() -> None:
    @shoal.method(num_returns=2)
    def m(self):
        return 1, 2

    assert m.__shoal_method_options__ == {"num_returns": 2}
    assert m.__ray_num_returns__ == 2
    with pytest.raises(TypeError, match="at least one of the arguments"):
        shoal.method()
    with pytest.raises(ValueError, match="Unexpected keyword argument to @method: 'bogus'"):
        shoal.method(bogus=1)


def test_object_ids_from_the_host_are_used_as_is(ctx) -> None:
    ref = shoal.put(1)
    assert ref.object_id == ObjectId("put1")
