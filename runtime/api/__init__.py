"""shoal's host-agnostic API layer: ``remote``, ``get``, ``put``, ``wait``, ``ObjectRef``...

It imports only the standard library, cloudpickle, msgspec and ``shoal.kernel``,
and reaches the cluster through one ``WorkerContext`` (``context.py``) that each
host implements: the simulator binds one per user thread, the production host
sets a process-global one in ``init()``. ``executor.execute`` is what a host
calls to run a task's user code in a worker.
"""

from shoal.runtime.api import exceptions
from shoal.runtime.api.api import (
    RuntimeContext,
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
    set_host_starter,
    shutdown,
    wait,
)
from shoal.runtime.api.context import (
    NotInitializedError,
    WorkerContext,
    bind_thread_context,
    current_context,
    get_context,
    set_global_context,
    using_context,
)
from shoal.runtime.api.executor import current_task_spec, execute
from shoal.runtime.api.generator import ObjectRefGenerator
from shoal.runtime.api.object_ref import ObjectRef
from shoal.runtime.api.remote_function import RemoteFunction, remote
from shoal.runtime.api.scheduling_strategies import NodeAffinitySchedulingStrategy
from shoal.runtime.api.serialization import deserialize, serialize

__all__ = [
    "NodeAffinitySchedulingStrategy",
    "NotInitializedError",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "WorkerContext",
    "available_resources",
    "bind_thread_context",
    "cancel",
    "cluster_resources",
    "current_context",
    "current_task_spec",
    "deserialize",
    "exceptions",
    "execute",
    "get",
    "get_actor",
    "get_context",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "serialize",
    "set_global_context",
    "set_host_starter",
    "shutdown",
    "using_context",
    "wait",
]
