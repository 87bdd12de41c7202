"""Options of ``@remote(...)`` and ``.options(...)``: Ray 2.x names, defaults and checks.

``validate_task_options`` checks each option's type and value as it is given
(so a mistake fails at the decorator or the ``.options()`` call, not later),
``merge_options`` layers ``.options()`` over the decorator's, and
``resolve_task_options`` turns the merged dict into what a ``TaskSpec`` needs.
An option set to None means "use the default".

The options shared with actors live in ``COMMON_OPTIONS``; actor classes add
``ACTOR_ONLY_OPTIONS`` (``validate_actor_options``, ``resolve_actor_options``).
Actors follow Ray's resource defaults: without ``num_cpus`` an actor needs 1
CPU free on a node to be placed there and holds none while it lives (0 to be
placed, too, when it asks for other resources); with ``num_cpus`` it needs and
holds that many.

Accepted but without effect (there is nothing in shoal yet that they change):
``max_calls`` (workers are not recycled), ``enable_task_events``, ``_metadata``,
``_generator_backpressure_num_objects``, and ``runtime_env`` (a non-empty one
warns: tasks run in the worker's own environment). Options that would change
what a program computes are refused with a clear error instead of ignored:
``label_selector``, ``num_returns="dynamic"`` (Ray's deprecated generator
form; ``num_returns="streaming"`` is supported: see ``generator.py``, and a
generator function streams by default, as in Ray 2.x). Placement groups
(``placement_group.py``) rewrite the resource request into the group's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import cloudpickle  # type: ignore[import-untyped]
from shoal.kernel.ids import NodeId
from shoal.kernel.task_spec import NodeAffinity
from shoal.runtime.api.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "ACTOR_OPTIONS",
    "COMMON_OPTIONS",
    "TASK_OPTIONS",
    "ActorOptions",
    "TaskOptions",
    "merge_options",
    "resolve_actor_options",
    "resolve_task_options",
    "validate_actor_options",
    "validate_task_options",
]

RESOURCE_MAX: Final = float(2**40)  # what a TaskSpec can carry (kernel/gcs/protocol.py)
RESOURCE_UNIT: Final = 0.0001  # the finest fraction of a resource, as in Ray
STREAMING_RETURNS: Final = ("streaming", "dynamic")

Check = Callable[[str, Any], str | None]


@dataclass(frozen=True, slots=True)
class _Option:
    types: tuple[type, ...]
    check: Check | None = None
    default: Any = None

    def validate(self, name: str, value: Any) -> None:
        if value is None:
            return
        # bool is an int to Python, but num_cpus=True or num_returns=False is a mistake.
        bool_by_accident = isinstance(value, bool) and bool not in self.types and (
            self.types != (object,))
        if bool_by_accident or not isinstance(value, self.types):
            names = " or ".join(t.__name__ for t in self.types)
            raise TypeError(
                f"The type of keyword '{name}' must be {names}, but received type "
                f"{type(value).__name__}")
        if self.check is not None:
            problem = self.check(name, value)
            if problem:
                raise ValueError(problem)


def _quantity_problem(name: str, quantity: float) -> str | None:
    if isinstance(quantity, bool) or not isinstance(quantity, int | float):
        return f"The quantity of resource {name} must be a number, got {quantity!r}"
    if math.isnan(quantity) or quantity < 0:
        return f"The quantity of resource {name} cannot be negative (got {quantity})"
    if quantity > RESOURCE_MAX:
        return f"The quantity of resource {name} cannot exceed {RESOURCE_MAX:.0f} (got {quantity})"
    if quantity != 0 and int(quantity / RESOURCE_UNIT + 1e-9) == 0:
        return (f"The precision of the fractional quantity of resource {name} cannot go "
                f"beyond {RESOURCE_UNIT} (got {quantity})")
    return None


def _check_resources(name: str, resources: dict[Any, Any]) -> str | None:
    if "CPU" in resources or "GPU" in resources:
        return ("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' and 'GPU' "
                "in 'resources' keyword")
    for key, quantity in resources.items():
        if not isinstance(key, str) or not key:
            return f"Resource names in 'resources' must be non-empty strings, got {key!r}"
        problem = _quantity_problem(key, quantity)
        if problem:
            return problem
    return None


def _check_count(infinite: bool) -> Check:
    def check(name: str, value: int) -> str | None:
        if value >= (-1 if infinite else 0):
            return None
        if infinite:
            return (f"The keyword '{name}' only accepts None, 0, -1 or a positive integer, "
                    "where -1 represents infinity.")
        return f"The keyword '{name}' only accepts None, 0 or a positive integer."
    return check


def _check_num_returns(name: str, value: int | str) -> str | None:
    if isinstance(value, str):
        if value in STREAMING_RETURNS:
            return None  # "dynamic" is refused with NotImplementedError when resolved
        return (f"The keyword 'num_returns' only accepts None, a non-negative integer, "
                f"'streaming' or 'dynamic' (for generators); got {value!r}")
    return None if value >= 0 else (
        f"The keyword 'num_returns' only accepts a non-negative integer, got {value}")


def _check_retry_exceptions(name: str, value: bool | list[Any] | tuple[Any, ...]) -> str | None:
    if isinstance(value, bool):
        return None
    if all(isinstance(c, type) and issubclass(c, BaseException) for c in value):
        return None
    return ("retry_exceptions must be either a boolean or a list of exceptions, got "
            f"{value!r}")


def _check_strategy(name: str, value: Any) -> str | None:
    if isinstance(value, str) and value not in ("DEFAULT", "SPREAD"):
        return (f"Invalid scheduling_strategy {value!r}: use 'DEFAULT', 'SPREAD', or "
                "NodeAffinitySchedulingStrategy(node_id, soft)")
    return None


def _resource(name: str, default: Any = None) -> _Option:
    return _Option((int, float), _quantity_problem, default)


COMMON_OPTIONS: Final[dict[str, _Option]] = {
    "accelerator_type": _Option((str,)),
    "memory": _resource("memory"),
    "name": _Option((str,)),
    "num_cpus": _resource("num_cpus"),
    "num_gpus": _resource("num_gpus", 0),
    "object_store_memory": _Option((int,), _check_count(False)),
    "placement_group": _Option((object,), default="default"),
    "placement_group_bundle_index": _Option((int,), default=-1),
    "placement_group_capture_child_tasks": _Option((bool,)),
    "resources": _Option((dict,), _check_resources),
    "runtime_env": _Option((dict,)),
    "scheduling_strategy": _Option(
        (str, NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy), _check_strategy),
    "_metadata": _Option((dict,)),
    "enable_task_events": _Option((bool,), default=True),
    "label_selector": _Option((dict,)),
}

TASK_ONLY_OPTIONS: Final[dict[str, _Option]] = {
    "max_calls": _Option((int,), _check_count(False), 0),
    "max_retries": _Option((int,), _check_count(True), 3),
    "num_cpus": _resource("num_cpus", 1),
    "num_returns": _Option((int, str), _check_num_returns, 1),
    "object_store_memory": _Option((int,), lambda name, value: (
        "Setting 'object_store_memory' is not implemented for tasks")),
    "retry_exceptions": _Option((bool, list, tuple), _check_retry_exceptions, False),
    "_generator_backpressure_num_objects": _Option((int,)),
}

TASK_OPTIONS: Final[dict[str, _Option]] = {**COMMON_OPTIONS, **TASK_ONLY_OPTIONS}


def validate_task_options(options: Mapping[str, Any], *, in_options: bool) -> None:
    """Checks each option given to ``@remote(...)`` (or ``.options(...)``) of a function.

    Raises:
        ValueError: an unknown option, or a value out of range.
        TypeError: a value of the wrong type.
        NotImplementedError: an option shoal does not support yet.
    """
    for name, value in options.items():
        option = TASK_OPTIONS.get(name)
        if option is None:
            raise ValueError(
                f"Invalid option keyword {name} for remote functions. "
                f"Valid ones are {list(TASK_OPTIONS)}.")
        option.validate(name, value)
    if in_options and "max_calls" in options:
        raise ValueError("Setting 'max_calls' is not supported in '.options()'.")
    _refuse_unsupported(options)


def _refuse_unsupported(options: Mapping[str, Any]) -> None:
    if options.get("placement_group") not in (None, "default") or isinstance(
            options.get("scheduling_strategy"), PlacementGroupSchedulingStrategy):
        from shoal.runtime.api.placement_group import in_placement_group

        in_placement_group({}, options)  # placement groups: raises on a bad group or index
    if options.get("label_selector"):
        raise NotImplementedError(
            "label_selector is not supported yet; use custom resources (resources={...}) "
            "to steer tasks to nodes")
    if options.get("num_returns") == "dynamic":
        raise NotImplementedError(
            "num_returns='dynamic' (Ray's deprecated generator tasks) is not supported yet; "
            "use num_returns='streaming' (an ObjectRefGenerator), or return a list with a "
            "fixed num_returns instead")
    if options.get("runtime_env"):
        warnings.warn(
            "runtime_env is not supported yet and is ignored: tasks run in the worker's "
            "own environment", RuntimeWarning, stacklevel=4)


def merge_options(original: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` over ``original``; ``_metadata`` namespaces merge one by one, as in Ray."""
    merged = {**original, **new}
    old_meta, new_meta = original.get("_metadata"), new.get("_metadata")
    if old_meta is not None and new_meta is not None:
        metadata = dict(old_meta)
        for namespace, config in new_meta.items():
            metadata[namespace] = {**metadata.get(namespace, {}), **config}
        merged["_metadata"] = metadata
    return merged


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """What a ``TaskSpec`` takes from a remote function's merged options."""

    num_returns: int
    resources: dict[str, float]
    max_retries: int
    retry_exceptions: bool
    retry_exception_allowlist: bytes
    affinity: NodeAffinity | None
    name: str | None
    streaming: bool = False  # a generator task: returns an ObjectRefGenerator (issue 5)


def _value(options: Mapping[str, Any], name: str) -> Any:
    value = options.get(name)
    return TASK_OPTIONS[name].default if value is None else value


def task_resources(options: Mapping[str, Any]) -> dict[str, float]:
    """The resource request: CPU, GPU, memory and custom resources, zeros left out."""
    wanted: dict[str, float] = {
        "CPU": float(_value(options, "num_cpus")),
        "GPU": float(_value(options, "num_gpus")),
        "memory": float(_value(options, "memory") or 0),
    }
    accelerator = options.get("accelerator_type")
    if accelerator:
        wanted[f"accelerator_type:{accelerator}"] = 0.001
    for name, quantity in (options.get("resources") or {}).items():
        wanted[name] = float(quantity)
    return {name: quantity for name, quantity in wanted.items() if quantity > 0}


def _affinity(strategy: Any) -> NodeAffinity | None:
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return NodeAffinity(node_id=NodeId(strategy.node_id), soft=strategy.soft)
    # "SPREAD" has no TaskSpec field yet: such tasks are placed like "DEFAULT" ones.
    return None


def _in_group(resources: dict[str, float], options: Mapping[str, Any]) -> dict[str, float]:
    from shoal.runtime.api.placement_group import in_placement_group  # placement groups

    return in_placement_group(resources, options)


def resolve_task_options(options: Mapping[str, Any], *, generator: bool = False) -> TaskOptions:
    """Turns validated, merged options into the fields of a ``TaskSpec``.

    ``generator``: the function is a generator function, which streams unless
    ``num_returns`` says otherwise (Ray 2.x's default).
    """
    streaming = options.get("num_returns") == "streaming" or (
        generator and options.get("num_returns") is None)
    retry = _value(options, "retry_exceptions")
    allowlist = b""
    if isinstance(retry, list | tuple):
        allowlist = cloudpickle.dumps(tuple(retry), protocol=5) if retry else b""
        retry = bool(retry)
    return TaskOptions(
        num_returns=1 if streaming else int(_value(options, "num_returns")),
        resources=_in_group(task_resources(options), options),
        max_retries=int(_value(options, "max_retries")),
        retry_exceptions=bool(retry),
        retry_exception_allowlist=allowlist,
        affinity=_affinity(options.get("scheduling_strategy")),
        name=options.get("name") or None,
        streaming=streaming,
    )


# --- actor classes (issue #4) -------------------------------------------------


def _check_lifetime(name: str, value: str) -> str | None:
    if value in ("detached", "non_detached"):
        return None
    return ("actor `lifetime` argument must be one of 'detached', 'non_detached' and "
            f"'None', got {value!r}")


def _check_concurrency(name: str, value: int) -> str | None:
    return None if value >= 1 else "max_concurrency must be >= 1"


def _check_concurrency_groups(groups: Any) -> None:
    """``concurrency_groups={"io": 2, ...}``: names and how many calls each runs at once."""
    if not isinstance(groups, dict):
        raise TypeError(f"concurrency_groups must be a dict of group name to max "
                        f"concurrency, like {{'io': 2}}, got {groups!r}")
    for group, limit in groups.items():
        if not isinstance(group, str) or not group:
            raise ValueError(f"concurrency_groups: a group name must be a non-empty string, "
                             f"got {group!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"concurrency_groups: the max concurrency of group {group!r} "
                             f"must be an integer >= 1, got {limit!r}")


def _check_pending(name: str, value: int) -> str | None:
    if value == -1 or value >= 1:
        return None
    return "max_pending_calls must be an integer >= -1 and not 0 (-1 means no limit)"


def _check_name(name: str, value: str) -> str | None:
    return None if value else "Actor name cannot be an empty string."


ACTOR_ONLY_OPTIONS: Final[dict[str, _Option]] = {
    "concurrency_groups": _Option((dict, list, tuple)),
    "lifetime": _Option((str,), _check_lifetime),
    "max_concurrency": _Option((int,), _check_concurrency),
    "max_restarts": _Option((int,), _check_count(True), 0),
    "max_task_retries": _Option((int,), _check_count(True), 0),
    "max_pending_calls": _Option((int,), _check_pending, -1),
    "name": _Option((str,), _check_name),
    "namespace": _Option((str,)),
    "get_if_exists": _Option((bool,), default=False),
    "allow_out_of_order_execution": _Option((bool,), default=False),
}

ACTOR_OPTIONS: Final[dict[str, _Option]] = {**COMMON_OPTIONS, **ACTOR_ONLY_OPTIONS}


def validate_actor_options(options: Mapping[str, Any], *, in_options: bool) -> None:
    """Checks each option given to ``@remote(...)`` on a class (or ``.options(...)``).

    Raises:
        ValueError: an unknown option, or a value out of range.
        TypeError: a value of the wrong type.
        NotImplementedError: an option shoal does not support yet.
    """
    for name, value in options.items():
        option = ACTOR_OPTIONS.get(name)
        if option is None:
            raise ValueError(
                f"Invalid option keyword {name} for actors. Valid ones are "
                f"{list(ACTOR_OPTIONS)}.")
        option.validate(name, value)
    if options.get("get_if_exists") and not options.get("name") and in_options:
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    if options.get("concurrency_groups"):
        _check_concurrency_groups(options["concurrency_groups"])
    if options.get("allow_out_of_order_execution"):
        raise NotImplementedError(
            "allow_out_of_order_execution is not supported: calls from one caller run in "
            "submission order")
    _refuse_unsupported(options)


@dataclass(frozen=True, slots=True)
class ActorOptions:
    """What an ``ActorSpec`` takes from an actor class's merged options."""

    resources: dict[str, float]  # held for the actor's lifetime
    placement: dict[str, float]  # needed free on a node to place it there
    name: str
    namespace: str | None
    detached: bool
    max_restarts: int
    max_task_retries: int
    max_concurrency: int
    max_pending_calls: int
    get_if_exists: bool
    affinity: NodeAffinity | None
    concurrency_groups: dict[str, int] = field(default_factory=dict)


def _actor_value(options: Mapping[str, Any], name: str) -> Any:
    value = options.get(name)
    return ACTOR_OPTIONS[name].default if value is None else value


ASYNC_ACTOR_MAX_CONCURRENCY: Final = 1000  # Ray's default for async actors (1 otherwise)


def resolve_actor_options(options: Mapping[str, Any], *, is_async: bool = False) -> ActorOptions:
    """Turns validated, merged actor options into the fields of an ``ActorSpec``.

    Args:
        options: the merged options.
        is_async: the class has ``async def`` methods: ``max_concurrency`` defaults
            to ``ASYNC_ACTOR_MAX_CONCURRENCY`` instead of 1.
    """
    default_concurrency = ASYNC_ACTOR_MAX_CONCURRENCY if is_async else 1
    held = task_resources({**options, "num_cpus": options.get("num_cpus") or 0})
    placement = dict(held)
    if options.get("num_cpus") is None and not held:
        placement["CPU"] = 1.0  # Ray: 1 CPU to be placed, none held while it lives
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    from shoal.runtime.api.placement_group import actor_in_placement_group  # placement groups

    held, placement = actor_in_placement_group(held, placement, options)
    return ActorOptions(
        resources=held, placement=placement, name=options.get("name") or "",
        namespace=options.get("namespace"),
        detached=options.get("lifetime") == "detached",
        max_restarts=int(_actor_value(options, "max_restarts")),
        max_task_retries=int(_actor_value(options, "max_task_retries")),
        max_concurrency=int(options.get("max_concurrency") or default_concurrency),
        max_pending_calls=int(_actor_value(options, "max_pending_calls")),
        get_if_exists=bool(options.get("get_if_exists")),
        affinity=_affinity(options.get("scheduling_strategy")),
        concurrency_groups=dict(options.get("concurrency_groups") or {}),
    )
