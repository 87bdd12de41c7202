"""Ray's ``ray.util.queue`` under shoal's name: ``from shoal.util.queue import Queue, Empty``."""

from shoal.runtime.util.queue import Empty, Full, Queue

__all__ = ["Empty", "Full", "Queue"]
