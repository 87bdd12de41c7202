"""Ray's ``ray.util`` helpers over shoal's API: ``ActorPool``, an actor-backed ``Queue``,
and placement groups (exported to users as ``shoal.util``)."""

from shoal.runtime.util.actor_pool import ActorPool

__all__ = ["ActorPool"]
