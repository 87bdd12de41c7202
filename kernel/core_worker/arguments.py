"""Resolving a task's arguments on the executing worker (normal tasks and actor calls).

Each argument is a value inline in the spec, a ref whose inline value the caller
sent along (``resolved``), or a ref to fetch: those are pinned in this
process's object table (``counted``, to release when the task ends), fetched from
their owners and pulled to this node, and listed in ``waiting`` by the indexes
they fill. A ref argument that already failed is reported in ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.kernel.core_worker.objects import ObjectTable
from shoal.kernel.core_worker.protocol import LocalObject, ObjectError, ObjectResult
from shoal.kernel.ids import Nanos, ObjectId
from shoal.kernel.messages import Msg
from shoal.kernel.task_spec import ObjectRefInfo, Payload, TaskArg


@dataclass(slots=True, eq=False)
class ArgResolution:
    args: list[Payload | LocalObject | None] = field(default_factory=list)
    waiting: dict[ObjectId, list[int]] = field(default_factory=dict)
    counted: list[ObjectRefInfo] = field(default_factory=list)
    error: ObjectError | None = None


def resolve_args(objects: ObjectTable, args: tuple[TaskArg, ...],
                 resolved: tuple[Payload | None, ...], now: Nanos) -> tuple[ArgResolution, list[Msg]]:
    """Starts resolving ``args``; returns what is known now and the effects (fetches)."""
    out, effects = ArgResolution(), []
    for index, arg in enumerate(args):
        given = resolved[index] if index < len(resolved) else None
        if arg.ref is None or given is not None:
            out.args.append(arg.value if arg.ref is None else given)
            continue
        out.args.append(None)
        out.counted.append(arg.ref)
        effects += objects.change_tasks(arg.ref, +1)
        result = objects.result(arg.ref.object_id)
        if result is not None and result.error is not None:
            out.error = out.error or result.error
            continue
        if result is not None and objects.readable(arg.ref.object_id):
            out.args[index] = arg_value(result)
            continue
        out.waiting.setdefault(arg.ref.object_id, []).append(index)
        effects += objects.fetch(arg.ref, now)
        effects += objects.ensure_local(arg.ref.object_id)
    return out, effects


def arg_value(result: ObjectResult) -> Payload | LocalObject | None:
    """An argument for the host: inline bytes, or a pointer into this node's store."""
    if result.stored:
        contained = result.value.contained if result.value is not None else ()
        return LocalObject(object_id=result.object_id, contained=contained)
    return result.value
