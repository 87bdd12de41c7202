"""@remote, .options() and .remote(): validation, error messages, and the TaskSpec built."""

from __future__ import annotations

import hashlib
import pickle
import re

import pytest
from shoal.kernel.task_spec import INLINE_BYTES_MAX, NodeAffinity, TaskArg
from shoal.runtime.api import NodeAffinitySchedulingStrategy, ObjectRef, remote
from shoal.runtime.api.context import NOT_INITIALIZED, NotInitializedError
from shoal.runtime.api.remote_function import RemoteFunction

import shoal


@remote
def add(a, b=0):
    return a + b


@remote
def ident(*args, **kwargs):
    return args, kwargs


def test_bare_decorator_and_options_decorator_make_remote_functions() -> None:
    @remote(num_cpus=2, max_retries=0)
    def g() -> int:
        return 1

    assert isinstance(add, RemoteFunction)
    assert isinstance(g, RemoteFunction)
    assert g.__name__ == "g"


def test_calling_a_remote_function_directly_is_a_type_error() -> None:
    name = f"{__name__}.add"
    with pytest.raises(TypeError, match=re.escape(
            f"Remote functions cannot be called directly. Instead of running '{name}()', "
            f"try '{name}.remote()'.")):
        add(1, 2)


@pytest.mark.parametrize("call", [lambda: remote(), lambda: remote(1), lambda: remote(add, 2)])
def test_decorator_misuse_names_the_right_forms(call) -> None:
    with pytest.raises(TypeError, match=r"^The @remote decorator must be applied either with no "
                                        r"arguments.*'num_cpus'"):
        call()


def test_classes_become_actor_classes_and_async_ones_are_refused() -> None:
    from shoal.runtime.api.actor import ActorClass

    @remote(max_restarts=2)
    class Counter:
        def incr(self) -> int:
            return 1

    assert isinstance(Counter, ActorClass)
    with pytest.raises(TypeError, match=r"^Actors cannot be instantiated directly"):
        Counter()
    with pytest.raises(ValueError, match=r"^Invalid option keyword max_retries for actors"):
        Counter.options(max_retries=1)

    @remote
    class Aio:  # an async actor (tests/sim/test_async_actors.py runs them)
        async def f(self) -> None:
            pass

    assert isinstance(Aio, ActorClass)


def test_async_functions_are_refused() -> None:
    with pytest.raises(ValueError, match="'async def' should not be used for remote tasks"):
        @remote
        async def f() -> None:
            pass


def test_unknown_option_names_the_option_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"^Invalid option keyword num_cpu for remote functions\. "
                                         r"Valid ones are \[.*'num_cpus'.*\]\.$"):
        remote(num_cpu=1)(lambda: 1)
    with pytest.raises(ValueError, match="Invalid option keyword bogus"):
        add.options(bogus=True)


def test_cpu_and_gpu_in_resources_are_refused_like_ray() -> None:
    with pytest.raises(ValueError, match=re.escape(
            "Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' in "
            "'resources' keyword")):
        add.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match="'GPU'"):
        remote(resources={"GPU": 1})(lambda: 1)


@pytest.mark.parametrize("options, error, pattern", [
    ({"num_cpus": -1}, ValueError, "resource num_cpus cannot be negative"),
    ({"num_cpus": "2"}, TypeError, "The type of keyword 'num_cpus' must be int or float"),
    ({"num_gpus": 0.00001}, ValueError, "precision"),
    ({"memory": True}, TypeError, "keyword 'memory'"),
    ({"resources": {"TPU": -2}}, ValueError, "resource TPU cannot be negative"),
    ({"resources": [1]}, TypeError, "keyword 'resources' must be dict"),
    ({"num_returns": -1}, ValueError, "non-negative integer"),
    ({"num_returns": "many"}, ValueError, "'streaming' or 'dynamic'"),
    ({"num_returns": True}, TypeError, "keyword 'num_returns'"),
    ({"num_returns": "dynamic"}, NotImplementedError, "not supported yet"),
    ({"max_retries": -2}, ValueError, "-1 represents infinity"),
    ({"max_retries": 1.5}, TypeError, "keyword 'max_retries'"),
    ({"retry_exceptions": "yes"}, TypeError, "keyword 'retry_exceptions'"),
    ({"retry_exceptions": [int]}, ValueError, "boolean or a list of exceptions"),
    ({"max_calls": 2}, ValueError, r"Setting 'max_calls' is not supported in '\.options\(\)'"),
    ({"scheduling_strategy": "RANDOM"}, ValueError, "Invalid scheduling_strategy 'RANDOM'"),
    ({"scheduling_strategy": 3}, TypeError, "keyword 'scheduling_strategy'"),
    ({"placement_group": object()}, TypeError, "placement_group must be a PlacementGroup"),
    ({"label_selector": {"zone": "a"}}, NotImplementedError, "label_selector"),
    ({"object_store_memory": 10}, ValueError, "not implemented for tasks"),
])
def test_bad_option_values_fail_at_options_time(options, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        add.options(**options)


def test_max_calls_is_fine_on_the_decorator() -> None:
    assert isinstance(remote(max_calls=1)(lambda: 1), RemoteFunction)


def test_runtime_env_is_accepted_with_a_warning() -> None:
    add.options(runtime_env={})
    with pytest.warns(RuntimeWarning, match="runtime_env is not supported yet"):
        add.options(runtime_env={"env_vars": {"A": "1"}})


def test_remote_needs_a_context(no_ctx) -> None:
    with pytest.raises(NotInitializedError, match=re.escape(NOT_INITIALIZED)):
        add.remote(1)


def test_default_spec(ctx) -> None:
    ref = add.remote(1, 2)
    (spec,) = ctx.submitted
    assert isinstance(ref, ObjectRef)
    assert ref.object_id == spec.return_ids[0] == f"{spec.task_id}.r0"
    assert spec.task_id == "t1"
    assert spec.job_id == "job1"
    assert spec.owner == ctx.address
    assert spec.name == f"{__name__}.add"
    assert spec.num_returns == 1
    assert spec.resources == {"CPU": 1.0}
    assert spec.max_retries == 3
    assert spec.retry_exceptions is False
    assert spec.retry_exception_allowlist == b""
    assert spec.affinity is None
    assert spec.depth == 1
    assert spec.kwarg_names == ()
    function = ctx.functions[spec.function_id]
    assert spec.function_id == hashlib.sha256(function).hexdigest()
    assert shoal.get(ref) == 3


def test_function_is_pickled_once_and_shared_by_options_variants(ctx) -> None:
    add.remote(1)
    add.options(num_cpus=2).remote(1)
    add.options(name="renamed").options(num_gpus=1).remote(1)
    ids = {spec.function_id for spec in ctx.submitted}
    assert len(ids) == 1
    assert len({id(f) for f in ctx.functions.values()}) == 1


def test_resources_from_options(ctx) -> None:
    add.options(num_cpus=0.5, num_gpus=1, memory=10**9, resources={"TPU": 2, "zero": 0},
                accelerator_type="A100").remote(1)
    add.options(num_cpus=0).remote(1)
    first, second = ctx.submitted
    assert first.resources == {"CPU": 0.5, "GPU": 1.0, "memory": 1e9, "TPU": 2.0,
                               "accelerator_type:A100": 0.001}
    assert second.resources == {}


def test_options_merge_and_none_means_default(ctx) -> None:
    f = remote(num_cpus=2, max_retries=5, name="base")(lambda: 1)
    f.options(max_retries=None).remote()
    f.options(num_cpus=3).options(name="again").remote()
    first, second = ctx.submitted
    assert (first.resources, first.max_retries, first.name) == ({"CPU": 2.0}, 3, "base")
    assert (second.resources, second.max_retries, second.name) == ({"CPU": 3.0}, 5, "again")


def test_scheduling_strategies(ctx) -> None:
    add.options(scheduling_strategy=NodeAffinitySchedulingStrategy("n7", soft=True)).remote(1)
    add.options(scheduling_strategy="SPREAD").remote(1)
    add.options(scheduling_strategy="DEFAULT").remote(1)
    affinities = [spec.affinity for spec in ctx.submitted]
    assert affinities == [NodeAffinity(node_id="n7", soft=True), None, None]


def test_retry_exceptions_allowlist_is_pickled_into_the_spec(ctx) -> None:
    add.options(retry_exceptions=[ValueError, KeyError]).remote(1)
    add.options(retry_exceptions=True).remote(1)
    add.options(retry_exceptions=[]).remote(1)
    listed, every, empty = ctx.submitted
    assert listed.retry_exceptions is True
    assert pickle.loads(listed.retry_exception_allowlist) == (ValueError, KeyError)
    assert (every.retry_exceptions, every.retry_exception_allowlist) == (True, b"")
    assert (empty.retry_exceptions, empty.retry_exception_allowlist) == (False, b"")


def test_top_level_refs_become_ref_args_positional_and_keyword(ctx) -> None:
    x = shoal.put(10)
    y = shoal.put(20)
    ref = ident.remote(x, 5, [y], key=y, other="v")
    spec = ctx.submitted[-1]
    assert spec.kwarg_names == ("key", "other")
    first, second, third, key, other = spec.args
    assert first == TaskArg(ref=x.info)
    assert second.ref is None and pickle.loads(second.value.data) == 5
    assert third.ref is None and third.value.contained == (y.info,)  # nested: stays a value
    assert key == TaskArg(ref=y.info)
    assert other.ref is None and pickle.loads(other.value.data) == "v"
    args, kwargs = shoal.get(ref)
    assert args[:2] == (10, 5)
    assert args[2] == [y]  # the nested ref arrives as a ref, not its value
    assert kwargs == {"key": 20, "other": "v"}


def test_arguments_are_checked_against_the_signature(ctx) -> None:
    with pytest.raises(TypeError, match=rf"^{__name__}\.add\.remote\(\): .*argument"):
        add.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        add.remote(1, c=2)
    assert ctx.submitted == []


def test_unpicklable_argument_names_the_argument(ctx) -> None:
    import threading

    with pytest.raises(TypeError, match=rf"Could not serialize argument 0 of task {__name__}\.add"):
        add.remote(threading.Lock())
    assert ctx.submitted == []


def test_big_arguments_are_put_and_passed_by_ref(ctx) -> None:
    big = b"x" * (INLINE_BYTES_MAX + 1)
    ref = ident.remote(big)
    spec = ctx.submitted[-1]
    (arg,) = spec.args
    assert arg.value is None and arg.ref is not None
    assert arg.ref.object_id == "put1"
    assert ctx.calls[:3] == ["ref+ put1", "put put1", f"ref+ {spec.task_id}.r0"]
    assert shoal.get(ref) == ((big,), {})
    assert ctx.live_refs("put1") == 0  # the spec holds it now, not the driver


def test_return_refs_are_counted_before_the_task_is_submitted(ctx) -> None:
    add.options(num_returns=2).remote(1)
    assert ctx.calls == ["ref+ t1.r0", "ref+ t1.r1", "submit t1"]


def test_num_returns_shapes_the_result(ctx) -> None:
    @remote(num_returns=2)
    def pair():
        return "a", "b"

    @remote(num_returns=0)
    def nothing():
        return "ignored"

    refs = pair.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert [r.object_id for r in refs] == ["t1.r0", "t1.r1"]
    assert shoal.get(refs) == ["a", "b"]
    assert nothing.remote() is None
    assert ctx.submitted[-1].num_returns == 0
    three = pair.options(num_returns=3)
    with pytest.raises(ValueError, match=r"Task returned 2 objects, but num_returns=3\."):
        shoal.get(three.remote()[0])


def test_nested_tasks_get_deeper(ctx) -> None:
    @remote
    def outer():
        return shoal.get(add.remote(1, 1))

    assert shoal.get(outer.remote()) == 2
    depths = {spec.name.rsplit(".", 1)[-1]: spec.depth for spec in ctx.submitted}
    assert depths == {"outer": 1, "add": 2}


def test_a_generator_may_yield_the_returns(ctx) -> None:
    @remote(num_returns=3)
    def count():
        yield from range(3)

    assert shoal.get(count.remote()) == [0, 1, 2]


def test_recursive_remote_functions_pickle_and_run(ctx) -> None:
    @remote
    def fact(n):
        return 1 if n <= 1 else n * shoal.get(fact.remote(n - 1))

    assert shoal.get(fact.remote(5)) == 120
    assert [spec.depth for spec in ctx.submitted] == [1, 2, 3, 4, 5]


def test_partials_and_callables_can_be_remote(ctx) -> None:
    import functools

    class Scale:
        def __call__(self, x):
            return 3 * x

    times = remote(functools.partial(lambda a, b: a * b, 2))
    assert shoal.get(times.remote(21)) == 42
    assert shoal.get(remote(Scale()).remote(2)) == 6
