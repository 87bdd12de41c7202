"""The core worker kernel: ownership, task submission and execution, objects.

The machine's names load on first use (PEP 562): importing a protocol module of
this package (the wire format does, in every process) must not import the core
worker machine, which a node daemon never runs.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.kernel.core_worker.core_worker import CoreWorker, CoreWorkerConfig, CoreWorkerInput

__all__ = ["CoreWorker", "CoreWorkerConfig", "CoreWorkerInput"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from shoal.kernel.core_worker import core_worker

    return getattr(core_worker, name)
