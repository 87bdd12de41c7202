"""A driver's or worker's side of the node's object store: what the hosts do with values
above the inline limit.

Theory of operation
-------------------
Values of at most ``INLINE_BYTES_MAX`` bytes travel inline in messages. Larger
ones are written once into the node's shared-memory store (the node daemon
owns it, ``runtime/node_objects.py``; this process maps its arena through a
``StoreClient``, ``transports/object_store_client.py``), and the kernels only
see ``stored=True`` with the object's size and location, exactly as the
simulator's host does (``sim/task_host.py``):

* the API's ``BufferCodec`` (``encode``/``decode``, the worker context's
  ``buffer_codec``): pickle hands buffers larger than the inline limit (numpy
  arrays...) over out of band, and ``encode`` copies the pickle stream and the
  buffers straight into a new region of the store: the one copy of a put. The
  payload's data is a read-only view of that region, not yet an object;
* ``store(object_id, payload)``: a put above the limit (``ObjectPut(stored=True)``)
  or a task return (``ObjectResult(stored=True, locations=(node,))``) is sealed
  under its id as a pinned primary copy. A payload that ``encode`` did not write
  (a large value pickled in band) is copied into the store first;
* ``read(object_id)``: ``GetCompleted`` results and ``LocalObject`` arguments that
  are stored are read from the store zero-copy: the payload's data is a
  read-only view of the arena, and ``decode`` gives pickle views of it, so numpy
  arrays come back sharing the store's memory, not writeable.

The client connects on first use, and ``flush`` (called every few tens of
milliseconds from the process's loop) hands the daemon the leases this process
no longer uses, without ever blocking.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from shoal.kernel.core_worker.protocol import LocalObject, ObjectError, ObjectResult
from shoal.kernel.ids import NodeId, ObjectId
from shoal.kernel.task_spec import INLINE_BYTES_MAX, Payload, TaskSpec
from shoal.runtime.api.exceptions import ObjectLostError, ObjectStoreFullError, RaySystemError
from shoal.runtime.api.serialization import serialize_error
from shoal.transports.object_store_errors import (
    ObjectNotFoundError,
    ObjectStoreError,
)
from shoal.transports.object_store_errors import (
    ObjectStoreFullError as StoreFullError,
)
from shoal.transports.serialization import SerializedObject, split_layout

if TYPE_CHECKING:  # imported on first use: it needs numpy, which init() should not wait for
    from shoal.transports.object_store_client import StoreClient

OBJECT_BYTES_MAX: Final = 2**32  # the kernels' bound on an object's size (ids.Count)


class ProcessObjects:
    """This process's link to its node's object store (see the module docstring).

    Args:
        socket_path: The store server's socket ("" if the daemon has no store).
        token: The cluster token.
        node_id: This node (the location of what this process stores).
    """

    out_of_band_min_bytes: int = INLINE_BYTES_MAX + 1

    def __init__(self, socket_path: str, token: str, node_id: NodeId) -> None:
        self._socket_path = socket_path
        self._token = token
        self._node_id = node_id
        self._lock = threading.Lock()
        self._client: StoreClient | None = None
        self._closed = False

    def _store(self) -> StoreClient:
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed or not self._socket_path:
                raise RaySystemError("this process has no object store: the values above "
                                     f"{INLINE_BYTES_MAX} bytes cannot be stored or read")
            if self._client is None:
                try:
                    from shoal.transports.object_store_client import StoreClient

                    self._client = StoreClient(self._socket_path, self._token)
                except (OSError, ObjectStoreError) as exc:
                    raise RaySystemError(f"cannot reach the node's object store: {exc}") from exc
            return self._client

    # --- the API's buffer codec -------------------------------------------------------

    def encode(self, inband: bytes, buffers: list[memoryview]) -> memoryview:
        """Writes the value into a new region of the store (not an object yet)."""
        serialized = SerializedObject.from_parts(inband, buffers)
        with _store_errors("store a value"):
            return self._store().write(serialized)

    def decode(self, data: Any) -> tuple[Any, list[Any]] | None:
        if len(data) <= INLINE_BYTES_MAX:
            return None  # encode never made it: a plain pickle
        return split_layout(data)

    # --- the hosts' operations ------------------------------------------------------------

    def store(self, object_id: ObjectId, payload: Payload) -> tuple[Payload, int]:
        """Seals a payload above the inline limit as a pinned primary copy.

        Returns:
            The payload that goes to the kernel (its nested refs only) and the size.

        Raises:
            ObjectStoreFullError: It had to be copied in and did not fit.
            ValueError: It is larger than the kernels can track.
        """
        size = len(payload.data)
        if size > OBJECT_BYTES_MAX:
            raise ValueError(f"object {object_id} is {size} bytes; objects larger than "
                             f"{OBJECT_BYTES_MAX} bytes are not supported: split the value")
        with _store_errors(f"store object {object_id}"):
            self._store().seal(object_id, payload.data, primary=True)
        return Payload(data=b"", contained=payload.contained), size

    def store_result(self, result: ObjectResult, spec: TaskSpec) -> ObjectResult:
        """A task's return value above the inline limit goes to the store (the
        simulator's ``_store_large``); one that cannot becomes the task's error."""
        value = result.value
        if value is None or result.error is not None or len(value.data) <= INLINE_BYTES_MAX:
            return result
        try:
            stored, size = self.store(result.object_id, value)
        except (ObjectStoreFullError, ValueError, RaySystemError) as exc:
            message = f"task {spec.name} could not store its return value: {exc}"
            return ObjectResult(object_id=result.object_id, error=ObjectError(
                kind="task_error", message=message, data=serialize_error(exc, spec.name)))
        return ObjectResult(object_id=result.object_id, value=stored, stored=True,
                            locations=(self._node_id,), size=size)

    def read(self, object_id: ObjectId, contained: tuple[Any, ...]) -> Payload:
        """A stored object's payload, its data a zero-copy read-only view of the store.

        Raises:
            ObjectLostError: This node's store does not hold it (any more).
        """
        try:
            with _store_errors(f"read object {object_id}"):
                data = self._store().open(object_id)
        except ObjectNotFoundError as exc:
            raise ObjectLostError(object_id, reason=str(exc)) from None
        return Payload(data=data, contained=contained)  # type: ignore[arg-type]

    def read_result(self, result: ObjectResult) -> ObjectResult:
        """A ``GetCompleted`` result with the value of a stored object read in."""
        if not result.stored or result.error is not None:
            return result
        contained = result.value.contained if result.value is not None else ()
        return ObjectResult(object_id=result.object_id,
                            value=self.read(result.object_id, contained))

    def read_arg(self, arg: Payload | LocalObject) -> Payload:
        if isinstance(arg, LocalObject):
            return self.read(arg.object_id, arg.contained)
        return arg

    def flush(self) -> None:
        """Hands the daemon the released leases, if it can without blocking (any thread)."""
        client = self._client
        if client is not None:
            client.flush_releases(block=False)

    def close(self) -> None:
        """Disconnects; values already read stay readable. Idempotent."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Turns the store's errors into the API's (``ObjectStoreFullError``, ``RaySystemError``);
    ``ObjectNotFoundError`` passes through."""
    try:
        yield
    except StoreFullError as exc:
        raise ObjectStoreFullError(str(exc)) from None
    except ObjectNotFoundError:
        raise
    except ObjectStoreError as exc:
        raise RaySystemError(f"could not {what}: {exc}") from exc
