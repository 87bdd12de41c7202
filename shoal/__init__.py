"""shoal: Ray's programming model on sans-IO kernels, with a deterministic simulator.

``import shoal as ray`` is the intended use: ``init`` starts (or joins) a
cluster of real processes; ``remote``, ``get``, ``put``, ``wait``, ``cancel``,
``ObjectRef``, ``get_runtime_context``, ``nodes``... work on it, and the same
program runs unmodified inside ``shoal.sim.Simulation(...).run(main)``, where
``init`` is a no-op. See README.md for what works today.

Importing the API. ``import shoal`` binds the whole API at once (so that
``init()`` does not pay for it), except in a node daemon's process
(``python -m shoal.runtime.node``): importing any ``shoal.*`` module runs this
file first, and the daemon, which hosts the GCS and raylet kernels and never
the API, would otherwise spend a tenth of a second of its start-up (while
``init()`` waits for it) importing the API, the core worker kernel and
cloudpickle. There the names are bound on first use instead
(``__getattr__``); the daemon's zygote binds them at once for its workers
(``_bind_api``), whose user code does ``import shoal``.
"""

import sys
from itertools import pairwise
from typing import TYPE_CHECKING

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

_NODE_DAEMON_MODULE = "shoal.runtime.node"
_FROM_CLUSTER = ("init", "is_initialized", "shutdown")  # the rest: shoal.runtime.api


def _started_as_node_daemon() -> bool:
    """Whether this interpreter was started as ``python [opts] -m shoal.runtime.node``."""
    argv = getattr(sys, "orig_argv", [])
    return f"-m{_NODE_DAEMON_MODULE}" in argv or any(
        flag == "-m" and module == _NODE_DAEMON_MODULE for flag, module in pairwise(argv))


if TYPE_CHECKING or not _started_as_node_daemon():
    # Every process that uses the API hosts a core worker (a driver, a worker, the
    # simulator's): its machine loads here, not on the way to the first result.
    import shoal.kernel.core_worker.core_worker  # noqa: F401
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


def _bind_api() -> None:
    """Binds every public name here (what ``import shoal`` does, but in a node daemon)."""
    import importlib

    exceptions_module = importlib.import_module("shoal.exceptions")
    api = importlib.import_module("shoal.runtime.api")
    cluster = importlib.import_module("shoal.runtime.cluster")
    names = globals()
    names.setdefault("exceptions", exceptions_module)
    for name in __all__:
        if name not in names:
            names[name] = getattr(cluster if name in _FROM_CLUSTER else api, name)


def __getattr__(name: str) -> object:
    # ``shoal.sim`` (the simulator) and ``shoal.util`` load on first use, so that
    # ``import shoal`` stays light for programs that never simulate.
    if name in ("sim", "util"):
        import importlib

        return importlib.import_module(f"shoal.{name}")
    if name in __all__:  # only in a node daemon's process (see the module docstring)
        _bind_api()
        return globals()[name]
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
