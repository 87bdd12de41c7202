"""Ray's ``ray.actor`` names under shoal's: ``from shoal.actor import ActorHandle``."""

from shoal.runtime.api.actor import ActorClass, ActorHandle, ActorMethod

__all__ = ["ActorClass", "ActorHandle", "ActorMethod"]
