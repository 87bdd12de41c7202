"""Faults as data: profiles, and the plan each seed draws from its profile.

A ``FaultProfile`` gives ranges; ``draw_plan`` turns a profile and a seed's
``Random`` into a concrete ``FaultPlan``: the link intensities for the safety
phase and a timeline of fault events (partitions, clogs, crashes with their
restarts). Within a profile, each seed switches every fault kind on or off and
picks its intensity on its own (swarm testing, after TigerBeetle's VOPR and
FoundationDB): some seeds hammer one fault, others mix several gently, which
finds more bugs than one fixed blend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random

import msgspec

from shoal.kernel.ids import NANOS_PER_SECOND, NodeId
from shoal.kernel.messages import Address

Range = tuple[float, float]


class FaultProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Ranges for each fault kind; a zero range switches the kind off."""

    name: str
    loss_p: Range = (0.0, 0.0)
    dup_p: Range = (0.0, 0.0)
    reorder_p: Range = (0.0, 0.0)
    partitions_per_min: Range = (0.0, 0.0)
    partition_s: Range = (1.0, 10.0)
    clogs_per_min: Range = (0.0, 0.0)
    clog_s: Range = (0.5, 5.0)
    crashes_per_min: Range = (0.0, 0.0)
    downtime_s: Range = (0.5, 8.0)
    buggify: bool = False
    swarm: bool = False  # each kind on or off per seed


PROFILES: dict[str, FaultProfile] = {
    "none": FaultProfile(name="none"),
    "lossy": FaultProfile(
        name="lossy", loss_p=(0.01, 0.2), dup_p=(0.0, 0.1), reorder_p=(0.0, 0.3),
        clogs_per_min=(0.0, 6.0),
    ),
    "partition": FaultProfile(name="partition", partitions_per_min=(1.0, 6.0)),
    "crash": FaultProfile(name="crash", crashes_per_min=(1.0, 8.0)),
    "chaos": FaultProfile(
        name="chaos", loss_p=(0.01, 0.15), dup_p=(0.0, 0.1), reorder_p=(0.0, 0.3),
        partitions_per_min=(0.5, 4.0), clogs_per_min=(0.0, 6.0),
        crashes_per_min=(0.5, 6.0), buggify=True, swarm=True,
    ),
}


@dataclass(slots=True, frozen=True)
class FaultEvent:
    """One fault on the timeline. ``kind``: partition, clog, or crash."""

    at_ns: int
    kind: str
    duration_ns: int
    sides: tuple[tuple[NodeId, int], ...] = ()
    link: tuple[NodeId, NodeId] | None = None
    target: Address | None = None


@dataclass(slots=True)
class FaultPlan:
    """What one seed does to the cluster during the safety phase."""

    profile: str
    loss_p: float = 0.0
    dup_p: float = 0.0
    reorder_p: float = 0.0
    buggify: bool = False
    events: list[FaultEvent] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        kinds: dict[str, int] = {}
        for event in self.events:
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
        return {
            "profile": self.profile, "loss_p": round(self.loss_p, 4),
            "dup_p": round(self.dup_p, 4), "reorder_p": round(self.reorder_p, 4),
            "buggify": self.buggify, "events": kinds,
        }


def _pick(rng: Random, span: Range, swarm: bool) -> float:
    lo, hi = span
    if hi <= 0.0 or (swarm and rng.random() < 0.5):
        return 0.0
    return lo + rng.random() * (hi - lo)


def draw_plan(
    profile: FaultProfile,
    rng: Random,
    *,
    nodes: list[NodeId],
    crash_targets: list[Address],
    safety_ns: int,
) -> FaultPlan:
    """Draws one seed's concrete faults from ``profile``."""
    swarm = profile.swarm
    plan = FaultPlan(
        profile=profile.name,
        loss_p=_pick(rng, profile.loss_p, swarm),
        dup_p=_pick(rng, profile.dup_p, swarm),
        reorder_p=_pick(rng, profile.reorder_p, swarm),
        buggify=profile.buggify and (not swarm or rng.random() < 0.75),
    )
    minutes = safety_ns / (60 * NANOS_PER_SECOND)
    rates = [
        ("partition", _pick(rng, profile.partitions_per_min, swarm), profile.partition_s),
        ("clog", _pick(rng, profile.clogs_per_min, swarm), profile.clog_s),
        ("crash", _pick(rng, profile.crashes_per_min, swarm), profile.downtime_s),
    ]
    for kind, per_min, duration_s in rates:
        count = int(per_min * minutes + rng.random())
        for _ in range(count):
            plan.events.append(_draw_event(rng, kind, duration_s, nodes, crash_targets, safety_ns))
    plan.events.sort(key=lambda e: (e.at_ns, e.kind))
    return plan


def _draw_event(
    rng: Random, kind: str, duration_s: Range, nodes: list[NodeId],
    crash_targets: list[Address], safety_ns: int,
) -> FaultEvent:
    at_ns = int(rng.random() * safety_ns)
    lo, hi = duration_s
    duration_ns = int((lo + rng.random() * (hi - lo)) * NANOS_PER_SECOND)
    if kind == "partition":
        sides = _draw_sides(rng, nodes)
        return FaultEvent(at_ns=at_ns, kind=kind, duration_ns=duration_ns, sides=sides)
    if kind == "clog":
        a, b = rng.sample(nodes, 2) if len(nodes) > 1 else (nodes[0], nodes[0])
        return FaultEvent(at_ns=at_ns, kind=kind, duration_ns=duration_ns, link=(a, b))
    target = crash_targets[rng.randrange(len(crash_targets))]
    return FaultEvent(at_ns=at_ns, kind=kind, duration_ns=duration_ns, target=target)


def _draw_sides(rng: Random, nodes: list[NodeId]) -> tuple[tuple[NodeId, int], ...]:
    """Either isolates one node from all others, or splits the nodes in two halves."""
    if len(nodes) < 2:
        return ()
    if rng.random() < 0.5:
        lonely = nodes[rng.randrange(len(nodes))]
        return tuple((n, int(n == lonely)) for n in nodes)
    return tuple((n, rng.randrange(2)) for n in nodes)
