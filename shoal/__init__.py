"""shoal: Ray's programming model on sans-IO kernels, with a deterministic simulator.

``import shoal as ray`` is the intended use: ``init`` starts (or joins) a
cluster of real processes; ``remote``, ``get``, ``put``, ``wait``, ``cancel``,
``ObjectRef``, ``get_runtime_context``, ``nodes``... work on it, and the same
program runs unmodified inside ``shoal.sim.Simulation(...).run(main)``, where
``init`` is a no-op. See README.md for what works today.
"""

from shoal import exceptions
from shoal.runtime.api import (
    ObjectRef,
    ObjectRefGenerator,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_runtime_context,
    kill,
    method,
    nodes,
    put,
    remote,
    wait,
)
from shoal.runtime.cluster import init, is_initialized, shutdown

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "ObjectRefGenerator",
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


def __getattr__(name: str) -> object:
    # ``shoal.sim`` (the simulator) and ``shoal.util`` load on first use, so that
    # ``import shoal`` stays light for programs that never simulate.
    if name in ("sim", "util"):
        import importlib

        return importlib.import_module(f"shoal.{name}")
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
