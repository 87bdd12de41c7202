"""shoal: Ray's programming model on sans-IO kernels, with a deterministic simulator.

``import shoal as ray`` is the intended use: ``remote``, ``get``, ``put``,
``wait``, ``cancel``, ``ObjectRef``, ``get_runtime_context``, ``nodes``... run
today inside ``shoal.sim.Simulation(...).run(main)``. ``init()`` is a no-op
there; outside a simulation it needs the production host, which is not built
yet, and says so. Actors (``kill``, ``get_actor``, ``@remote`` on a class) are
not supported yet. See README.md for what works today.
"""

from shoal import exceptions
from shoal.runtime.api import (
    ObjectRef,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "__version__",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
