"""The core worker kernel: ownership, task submission and execution, objects."""

from shoal.kernel.core_worker.core_worker import CoreWorker, CoreWorkerConfig, CoreWorkerInput

__all__ = ["CoreWorker", "CoreWorkerConfig", "CoreWorkerInput"]
