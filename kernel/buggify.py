"""BUGGIFY: seeded fault points inside the kernels (after FoundationDB).

A kernel consults ``buggify.fire("gcs.drop_kv_reply")`` at places where the
protocol must tolerate a misbehaving world: a lost reply, a late timer, a failed
lease. In production the source is disabled and ``fire`` is always False. The
simulator enables it per run: each named point is switched on for the whole run
with ``activation_p`` (decided the first time it is reached), and an active point
then fires with ``fire_p`` each time. Everything is drawn from one seeded
``Random``, so a run replays exactly.
"""

from __future__ import annotations

from random import Random


class Buggify:
    """A seeded decision source for kernel fault points."""

    __slots__ = ("enabled", "_seed", "_rng", "_active", "_activation_p", "_fire_p", "fired")

    def __init__(
        self,
        seed: int = 0,
        *,
        enabled: bool = False,
        activation_p: float = 0.25,
        fire_p: float = 0.25,
    ) -> None:
        self.enabled = enabled
        # Seeded at the first draw: a simulated process gets a source whether or not its
        # run turns BUGGIFY on, and seeding a Random costs more than a short-lived worker.
        self._seed = seed
        self._rng: Random | None = None
        self._active: dict[str, bool] = {}
        self._activation_p = activation_p
        self._fire_p = fire_p
        self.fired: dict[str, int] = {}

    def fire(self, point: str) -> bool:
        """True when the fault at ``point`` should happen now (never in production)."""
        if not self.enabled:
            return False
        rng = self._rng
        if rng is None:
            rng = self._rng = Random(self._seed)
        active = self._active.get(point)
        if active is None:
            active = rng.random() < self._activation_p
            self._active[point] = active
        if not active or rng.random() >= self._fire_p:
            return False
        self.fired[point] = self.fired.get(point, 0) + 1
        return True


DISABLED = Buggify()
