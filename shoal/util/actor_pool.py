"""Ray's ``ray.util.actor_pool`` under shoal's name."""

from shoal.runtime.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
