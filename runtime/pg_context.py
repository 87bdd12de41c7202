"""Placement groups in production: the ``PlacementGroupContext`` half of
``ProdWorkerContext``.

A request goes through the process's core worker and its GCS client exactly
like an internal-KV call (``KvCallRequested`` posted to the trio loop,
retransmitted to the GCS until answered); the ``CallCompleted`` value is the
encoded ``PlacementGroupReply``. ``placement_group_send`` posts the request and
returns a function that blocks for the reply, so the API may leave an answer
unread for a while (``placement_group.py`` pipelines unnamed creates and
removals that way).

Lifetime: Ray scopes a group that is not detached to the job of the driver
that created it. A driver remembers the non-detached groups it created (and
has not removed); when it shuts down with the cluster living on (it joined with
``init(address=...)``), ``remove_owned_placement_groups`` removes them, which
frees their bundles and ends their actors. A driver that dies without shutdown
leaves them (the GCS has no job table to notice it yet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.kernel.gcs.placement_group_protocol import (
    CreatePlacementGroup,
    PlacementGroupReply,
    RemovePlacementGroup,
)
from shoal.kernel.gcs_client import KvCallRequested
from shoal.kernel.messages import Address, Msg
from shoal.runtime.api.exceptions import RaySystemError
from shoal.runtime.api.placement_group import decode_reply

if TYPE_CHECKING:
    from shoal.runtime.driver import _Waiter


class ProdPlacementGroupContext:
    """Mixed into ``ProdWorkerContext``; uses its ``kv_call``, ``_post``, ``_new_waiter``
    and ``_lock``."""

    address: Address
    _lock: threading.Lock
    _owned_groups: dict[str, None] | None = None  # a driver's non-detached groups

    if TYPE_CHECKING:
        def _post(self, event: Msg | None) -> None: ...
        def _new_waiter(self) -> _Waiter: ...
        def _block(self, waiter: _Waiter) -> Any: ...

    def placement_group_send(self, request: Any) -> Callable[[], PlacementGroupReply]:
        """Posts one request; the returned function blocks until its reply comes (call it
        as often as you like: later calls return the same reply at once)."""
        waiter = self._new_waiter()
        self._post(KvCallRequested(call_id=waiter.call_id, request=request))
        if self.address.component == "driver":
            self._note_owned(request)  # a create that fails is removed harmlessly at the end
        return lambda: decode_reply(self._block(waiter))

    def placement_group_call(self, request: Any) -> PlacementGroupReply:
        return self.placement_group_send(request)()

    def _note_owned(self, request: Any) -> None:
        with self._lock:
            if isinstance(request, CreatePlacementGroup) and not request.spec.detached:
                if self._owned_groups is None:
                    self._owned_groups = {}
                self._owned_groups[request.spec.pg_id] = None
            elif isinstance(request, RemovePlacementGroup) and self._owned_groups:
                self._owned_groups.pop(request.pg_id, None)

    def remove_owned_placement_groups(self, timeout_s: float) -> int:
        """The job ends: removes every non-detached group this driver created; waits up
        to ``timeout_s`` for the GCS's answers.

        Returns:
            How many removals were asked for.
        """
        with self._lock:
            owned, self._owned_groups = list(self._owned_groups or ()), None
        waiters = []
        try:
            for pg_id in owned:
                waiter = self._new_waiter()
                self._post(KvCallRequested(call_id=waiter.call_id, request=RemovePlacementGroup(
                    request_id=0, pg_id=pg_id)))
                waiters.append(waiter)
        except RaySystemError:
            return 0  # the cluster is gone already, and its groups with it
        deadline = time.monotonic() + timeout_s
        for waiter in waiters:
            waiter.wait(max(0.0, deadline - time.monotonic()))
        return len(owned)
