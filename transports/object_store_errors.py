"""The errors of the node's shared-memory object store (``object_store.py``) and of its
multi-process service and clients (``object_store_service.py``, ``object_store_client.py``)."""

from __future__ import annotations

__all__ = [
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectSpillError",
    "ObjectStateError",
    "ObjectStoreClosedError",
    "ObjectStoreError",
    "ObjectStoreFullError",
]


class ObjectStoreError(Exception):
    """Base of every error the shared-memory object store raises."""


class ObjectStoreFullError(ObjectStoreError):
    """A create or restore could not fit, even after evicting and spilling what it could."""

    def __init__(
        self, message: str, *, object_id: str, size: int, capacity_bytes: int, used_bytes: int
    ) -> None:
        super().__init__(message)
        self.object_id = object_id
        self.size = size
        self.capacity_bytes = capacity_bytes
        self.used_bytes = used_bytes


class ObjectExistsError(ObjectStoreError):
    """``create`` was given an object id that the store already holds."""


class ObjectNotFoundError(ObjectStoreError):
    """The object id is not in the store (never created, deleted or evicted)."""


class ObjectStateError(ObjectStoreError):
    """The object is in the wrong phase for the call (e.g. ``get`` before ``seal``)."""


class ObjectSpillError(ObjectStoreError):
    """Writing an object to the spill directory, or reading it back, failed."""


class ObjectStoreClosedError(ObjectStoreError):
    """The store was used after ``close``."""
