"""Identifiers and time units shared by every kernel.

Ids are strings wrapped in ``NewType`` so that the type checker keeps a node id
from being passed where a task id is expected. Kernels never draw ids from
random UUIDs or the clock: they mint them from counters (``IdCounter``), so the same
inputs always produce the same ids, which is what makes a simulation replayable.
"""

from __future__ import annotations

from typing import Annotated, NewType

import msgspec

NodeId = NewType("NodeId", str)
WorkerId = NewType("WorkerId", str)
JobId = NewType("JobId", str)
TaskId = NewType("TaskId", str)
ObjectId = NewType("ObjectId", str)
ActorId = NewType("ActorId", str)

# Virtual or real time, always integer nanoseconds. Durations carry `_ns` in their name.
Nanos = int
NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_MILLI = 1_000_000

# Bounded integers: msgpack cannot encode values past 2**64, and hypothesis finds them.
Count = Annotated[int, msgspec.Meta(ge=0, le=2**32)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
TimeNs = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


def seconds(value: float) -> Nanos:
    """Converts seconds to integer nanoseconds (rounded to the nearest nanosecond)."""
    return round(value * NANOS_PER_SECOND)


def millis(value: float) -> Nanos:
    """Converts milliseconds to integer nanoseconds."""
    return round(value * NANOS_PER_MILLI)


class IdCounter:
    """Mints ids ``f"{prefix}{n}"`` from a counter: deterministic, unique per prefix."""

    __slots__ = ("_prefix", "_next")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._next = 1

    def mint(self) -> str:
        value = f"{self._prefix}{self._next}"
        self._next += 1
        return value
