"""Task errors: RayTaskError as an instance of the cause, retries, error kinds, pickling."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest
from shoal.kernel.core_worker.protocol import ObjectError, ObjectResult
from shoal.kernel.ids import ObjectId
from shoal.kernel.messages import Address
from shoal.runtime.api import exceptions as ex
from shoal.runtime.api import remote
from shoal.runtime.api.serialization import deserialize_error, serialize_error

import shoal


@remote
def divide(a, b):
    return a / b


class Custom(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Refuses(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("no subclasses")


class NeedsTwo(Exception):
    def __new__(cls, a, b):
        return super().__new__(cls, a, b)


def test_a_failed_task_raises_an_instance_of_its_cause(ctx) -> None:
    ref = divide.remote(1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        shoal.get(ref)
    error = info.value
    assert isinstance(error, ex.RayTaskError)
    assert isinstance(error, ex.RayError)
    assert type(error).__name__ == "RayTaskError(ZeroDivisionError)"
    assert isinstance(error.cause, ZeroDivisionError)
    assert error.args == ("division by zero",)
    text = str(error)
    assert text.startswith(f"task {__name__}.divide failed: it raised ZeroDivisionError: "
                           "division by zero")
    assert "return a / b" in text  # the worker's traceback, user frames only
    assert "executor.py" not in text
    result = ctx.store[ref.object_id]
    assert result.error.kind == "task_error"
    assert result.error.message == (
        f"task {__name__}.divide raised ZeroDivisionError: division by zero")


def test_the_dual_class_is_built_once_per_cause_class(ctx) -> None:
    errors = []
    for _ in range(2):
        try:
            shoal.get(divide.remote(1, 0))
        except ZeroDivisionError as e:
            errors.append(e)
    assert type(errors[0]) is type(errors[1])


def test_cause_attributes_are_reachable_on_the_error(ctx) -> None:
    @remote
    def fail():
        raise Custom(7)

    with pytest.raises(Custom) as info:
        shoal.get(fail.remote())
    assert info.value.code == 7
    assert info.value.args == (7,)


@pytest.mark.parametrize("cause", [Refuses("r"), NeedsTwo(1, 2)])
def test_causes_that_cannot_be_mixed_in_fall_back_to_plain_ray_task_error(cause) -> None:
    error = ex.RayTaskError("f", "tb", cause)
    assert error.as_instanceof_cause() is error


def test_shoal_errors_and_plain_exceptions_are_not_wrapped_again() -> None:
    lost = ex.RayTaskError("f", "", ex.ObjectLostError("o1"))
    assert lost.as_instanceof_cause() is lost
    plain = ex.RayTaskError("f", "", Exception("x"))
    assert plain.as_instanceof_cause() is plain
    assert ex.RayTaskError("f", "", None).as_instanceof_cause().cause is None


def test_nested_task_failures_keep_the_original_cause(ctx) -> None:
    @remote
    def parent():
        return shoal.get(divide.remote(1, 0))

    with pytest.raises(ZeroDivisionError) as info:
        shoal.get(parent.remote())
    text = str(info.value)
    assert "parent" in text and "which was raised by the failed task" in text
    assert "return a / b" in text


def test_dual_errors_pickle_back_into_dual_errors() -> None:
    dual = ex.RayTaskError("f", "tb", KeyError("k")).as_instanceof_cause()
    again = pickle.loads(cloudpickle.dumps(dual))
    assert isinstance(again, KeyError) and isinstance(again, ex.RayTaskError)
    assert again.function_name == "f" and again.args == ("k",)


def test_unpicklable_exceptions_are_described_instead() -> None:
    import threading

    class Holding(Exception):
        def __init__(self) -> None:
            super().__init__("holds a lock")
            self.lock = threading.Lock()

    error = deserialize_error(serialize_error(Holding(), "task f", "tb"))
    assert isinstance(error, ex.RayTaskError)
    assert "Holding: holds a lock" in str(error.cause)
    assert "could not be pickled" in str(error.cause)
    assert isinstance(deserialize_error(b"not a pickle"), ex.RaySystemError)


def test_wrong_return_count_fails_the_task_clearly(ctx) -> None:
    @remote(num_returns=2)
    def one():
        return 1

    first, second = one.remote()
    with pytest.raises(ValueError, match=r"returned a single int, but num_returns=2: return a "
                                         r"list or tuple of 2 values"):
        shoal.get(first)
    with pytest.raises(ValueError):
        shoal.get(second)  # every return carries the error


def test_unpicklable_return_values_fail_the_task(ctx) -> None:
    @remote
    def lock():
        import threading
        return threading.Lock()

    with pytest.raises(TypeError, match=r"Could not serialize return value 0 of task"):
        shoal.get(lock.remote())


# --- retries ---------------------------------------------------------------------


def _attempts(ctx, name: str) -> int:
    return sum(1 for done in ctx.executed if done.task_id == name)


def test_exceptions_are_not_retried_by_default(ctx) -> None:
    ref = divide.remote(1, 0)
    assert ctx.executed[-1].retryable_error is False
    assert _attempts(ctx, ref.task_id()) == 1


def test_retry_exceptions_true_marks_every_failure_retryable(ctx) -> None:
    ref = divide.options(retry_exceptions=True, max_retries=2).remote(1, 0)
    assert [d.retryable_error for d in ctx.executed] == [True, True, True]
    assert _attempts(ctx, ref.task_id()) == 3
    with pytest.raises(ZeroDivisionError):
        shoal.get(ref)


def test_retry_exceptions_allowlist_marks_only_listed_exceptions(ctx) -> None:
    @remote(retry_exceptions=[ArithmeticError], max_retries=1)
    def fail(kind):
        raise kind("x")

    fail.remote(ZeroDivisionError)  # a subclass of an allowed class
    assert [d.retryable_error for d in ctx.executed] == [True, True]
    ctx.executed.clear()
    fail.remote(KeyError)
    assert [d.retryable_error for d in ctx.executed] == [False]


def test_successful_results_are_never_retryable(ctx) -> None:
    divide.options(retry_exceptions=True).remote(4, 2)
    assert ctx.executed[-1].retryable_error is False
    assert pickle.loads(ctx.executed[-1].results[0].value.data) == 2.0


# --- error_for and the exception classes ----------------------------------------------


OID = ObjectId("t9.r0")
OWNER = Address(node="n2", component="worker", worker="w3")


@pytest.mark.parametrize("kind, cls, words", [
    ("worker_crashed", ex.WorkerCrashedError, "died unexpectedly"),
    ("task_cancelled", ex.TaskCancelledError, "task t9 that creates object t9.r0 was cancelled"),
    ("object_lost", ex.ObjectLostError, "Object t9.r0 is lost"),
    ("owner_died", ex.OwnerDiedError, "its owner n2/worker/w3 died"),
    ("get_timeout", ex.GetTimeoutError, "Get timed out: object t9.r0"),
    ("node_died", ex.NodeDiedError, "node running the task that creates object t9.r0 died"),
    ("infeasible", ex.TaskUnschedulableError, "can never run"),
    ("something_new", ex.RaySystemError, "unknown error kind 'something_new'"),
])
def test_error_for_maps_each_kernel_error_kind(kind, cls, words) -> None:
    # msgspec checks the Literal only when decoding, so a newer kernel's kind can be tried.
    result = ObjectResult(object_id=OID, error=ObjectError(kind=kind, message="the reason"))
    error = ex.error_for(result, OWNER)
    assert type(error) is cls
    assert words in str(error)
    assert "the reason" in str(error)


def test_error_for_task_error_unpickles_the_ray_task_error() -> None:
    data = serialize_error(KeyError("k"), "mod.f", "Traceback ...")
    error = ex.error_for(ObjectResult(object_id=OID, error=ObjectError(
        kind="task_error", message="m", data=data)))
    assert isinstance(error, ex.RayTaskError) and isinstance(error.cause, KeyError)
    missing = ex.error_for(ObjectResult(object_id=OID, error=ObjectError(
        kind="task_error", message="task mod.f raised KeyError")))
    assert isinstance(missing, ex.RayTaskError) and missing.cause is None
    broken = ex.error_for(ObjectResult(object_id=OID, error=ObjectError(
        kind="task_error", message="m", data=b"\x80garbage")))
    assert isinstance(broken, ex.RaySystemError) and "could not be unpickled" in str(broken)
    with pytest.raises(ValueError, match="has a value, not an error"):
        ex.error_for(ObjectResult(object_id=OID))


def test_get_timeout_error_is_a_timeout_error() -> None:
    error = ex.GetTimeoutError("late")
    assert isinstance(error, TimeoutError) and isinstance(error, ex.RayError)
    assert str(error) == "late"


def test_object_error_hierarchy_matches_ray() -> None:
    for cls in (ex.OwnerDiedError, ex.ObjectReconstructionFailedError,
                ex.ObjectFetchTimedOutError):
        assert issubclass(cls, ex.ObjectLostError)
    for cls in (ex.ActorDiedError, ex.ActorUnavailableError):
        assert issubclass(cls, ex.RayActorError)
    assert all(issubclass(getattr(ex, name), ex.RayError) for name in ex.__all__
               if name != "error_for")
    assert set(shoal.exceptions.__all__) == set(ex.__all__) - {"error_for"}


@pytest.mark.parametrize("error", [
    ex.RayTaskError("f", "tb", ValueError("v")),
    ex.TaskCancelledError("t1"),
    ex.WorkerCrashedError(),
    ex.WorkerCrashedError("custom"),
    ex.NodeDiedError("n"),
    ex.TaskUnschedulableError("no GPUs"),
    ex.RaySystemError("sys", "tb"),
    ex.ObjectStoreFullError(),
    ex.OutOfMemoryError(),
    ex.PendingCallsLimitExceeded(),
    ex.GetTimeoutError("late"),
    ex.RayActorError("gone", "a1"),
    ex.ActorDiedError(),
    ex.ActorUnavailableError("restarting", "a1"),
    ex.ObjectLostError("o1", "n1/driver", "f.py:3", "evicted"),
    ex.OwnerDiedError("o1", "n1/driver"),
    ex.ObjectReconstructionFailedError("o1"),
    ex.ObjectFetchTimedOutError("o1"),
])
def test_every_exception_pickles_and_has_a_message(error) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert str(error).strip()


def test_default_messages_say_what_to_do() -> None:
    assert "max_retries" in str(ex.WorkerCrashedError())
    assert str(ex.TaskCancelledError("t1")) == "Task: t1 was cancelled."
    assert str(ex.TaskUnschedulableError("x")) == "The task is not schedulable: x"
    assert str(ex.ActorDiedError(actor_id="a1")) == (
        "The actor a1 died unexpectedly before finishing this task.")
    assert "max_retries > 0" in str(ex.ObjectLostError("o1"))
