"""The simulated network: latency, loss, duplication, reordering, partitions, clogging.

Every decision is drawn from the one seeded ``Random`` the simulation hands in,
in the order messages are sent, so a run replays exactly. Messages between
components on the same node never cross the network: they take a small fixed
delay and are never lost. Between nodes, a message can be dropped by a
partition or by loss, delayed by latency, jitter, reordering or a clogged link,
and duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random

from shoal.kernel.ids import NodeId


@dataclass(slots=True)
class LinkModel:
    """The intensities in force; the fault plan sets them, the heal clears them."""

    latency_ns: int = 200_000
    jitter_ns: int = 100_000
    local_latency_ns: int = 20_000
    loss_p: float = 0.0
    dup_p: float = 0.0
    reorder_p: float = 0.0
    reorder_max_ns: int = 20_000_000


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    duplicated: int = 0


@dataclass(slots=True)
class Network:
    """Decides, for each message, when it arrives (possibly twice) or that it is lost."""

    rng: Random
    model: LinkModel = field(default_factory=LinkModel)
    stats: NetworkStats = field(default_factory=NetworkStats)
    # Each active partition maps a node to its side; nodes it does not list are unaffected.
    partitions: dict[int, dict[NodeId, int]] = field(default_factory=dict)
    clogged_until: dict[tuple[NodeId, NodeId], int] = field(default_factory=dict)

    def delays(self, src: NodeId, dst: NodeId, now: int) -> tuple[int, ...]:
        """Returns the arrival delays of one message: () if lost, two entries if duplicated."""
        self.stats.sent += 1
        model = self.model
        if src == dst:
            return (model.local_latency_ns,)
        if self.partitions and self.is_partitioned(src, dst):
            self.stats.dropped_partition += 1
            return ()
        rng = self.rng
        if model.loss_p and rng.random() < model.loss_p:
            self.stats.dropped_loss += 1
            return ()
        first = self._one_delay(src, dst, now)
        if model.dup_p and rng.random() < model.dup_p:
            self.stats.duplicated += 1
            return (first, self._one_delay(src, dst, now))
        return (first,)

    def _one_delay(self, src: NodeId, dst: NodeId, now: int) -> int:
        model, rng = self.model, self.rng
        delay = model.latency_ns + int(rng.random() * model.jitter_ns)
        if model.reorder_p and rng.random() < model.reorder_p:
            delay += int(rng.random() * model.reorder_max_ns)
        if self.clogged_until:
            until = self.clogged_until.get((src, dst), 0)
            if until > now + delay:
                delay = until - now
        return delay

    def is_partitioned(self, a: NodeId, b: NodeId) -> bool:
        for sides in self.partitions.values():
            side_a, side_b = sides.get(a), sides.get(b)
            if side_a is not None and side_b is not None and side_a != side_b:
                return True
        return False

    def heal(self) -> None:
        """Ends every fault: partitions, clogs, loss, duplication, reordering."""
        self.partitions.clear()
        self.clogged_until.clear()
        self.model.loss_p = self.model.dup_p = self.model.reorder_p = 0.0
