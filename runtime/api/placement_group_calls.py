"""How a process's placement group requests reach the GCS: some answers are read later.

Theory of operation
-------------------
Each request is one GCS round trip (the host's ``placement_group_send`` posts
it and returns a function that blocks for the reply). Waiting for every answer
would make a loop that creates and removes groups pay a round trip per call, so
two kinds of request are *pipelined*: sent, and their answer read later.

* Creating a group without a name. It can fail at the GCS only for its limit on
  groups (the spec was checked here); its answer is read before anything else
  this process asks about groups, and a failure is raised then, by the first
  call that concerns that group (``wait``, ``remove``, the table).
* Removing a group. The GCS removes a group idempotently (and this process
  removes only groups it has a handle to), so there is no error to report; the
  answer is read before the next call that must see the removal.

Every other request (``wait``, get, list, creating a named group, whose name may
be taken) first reads every pipelined answer (``settle``), so it sees the GCS
state after what this process asked before, and is then sent and waited for.
A removal first reads the answer to its group's creation, so that it cannot
overtake the creation (the GCS client retransmits a lost request, and a
retransmitted create arriving after the remove would leave a group behind).

The GCS client keeps the requests of one process in order on one connection, so
pipelining saves the waiting, not the ordering: a group created and then waited
for is waited for after its creation is registered.

At most ``PIPELINED_MAX`` answers stay unread; the oldest is read first beyond
that. A failed creation is remembered (at most ``FAILED_MAX``) until asked about.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from shoal.kernel.gcs.placement_group_protocol import (
    CreatePlacementGroup,
    PlacementGroupReply,
    PlacementGroupRequest,
    RemovePlacementGroup,
)

PIPELINED_MAX = 1000
FAILED_MAX = 1000
Send = Callable[[PlacementGroupRequest], Callable[[], PlacementGroupReply]]


class _Answer:
    """One sent request's reply, read once (later reads return it again)."""

    __slots__ = ("_read", "_reply", "pg_id", "request")

    def __init__(self, request: PlacementGroupRequest, pg_id: str,
                 read: Callable[[], PlacementGroupReply]) -> None:
        self.request, self.pg_id = request, pg_id
        self._read: Callable[[], PlacementGroupReply] | None = read
        self._reply: PlacementGroupReply | None = None

    def reply(self) -> PlacementGroupReply:
        if self._reply is None:
            read = self._read
            assert read is not None
            self._reply, self._read = read(), None
        return self._reply


class PlacementGroupCalls:
    """One process's (one context's) requests to the GCS about placement groups."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()  # never held while blocking (the simulator's baton)
        self._unread: dict[int, _Answer] = {}  # pipelined, oldest first
        self._creating: dict[str, int] = {}  # group -> its unread create
        self._failed: dict[str, str] = {}  # group -> why its pipelined create failed
        self._next = 0

    def call(self, request: PlacementGroupRequest) -> PlacementGroupReply:
        """Sends ``request`` after reading every pipelined answer; returns its reply.

        Raises:
            ValueError: the request's group failed to be created (pipelined) or the
                reply carries an error.
        """
        self.settle()
        pg_id = _group_of(request)
        with self._lock:
            failed = self._failed.pop(pg_id, None) if pg_id else None
        if failed is not None:
            raise ValueError(failed)
        reply = self._send(request)()
        if reply.error:
            raise ValueError(reply.error)
        return reply

    def pipeline(self, request: CreatePlacementGroup | RemovePlacementGroup) -> None:
        """Sends ``request`` and reads its answer later (see the module docstring).

        Raises:
            ValueError: a removal of a group whose (pipelined) creation failed.
        """
        pg_id = _group_of(request)
        if isinstance(request, RemovePlacementGroup):
            self._read_create_of(pg_id)
            with self._lock:
                failed = self._failed.pop(pg_id, None)
            if failed is not None:
                raise ValueError(failed)
        answer = _Answer(request, pg_id, self._send(request))
        with self._lock:
            self._next += 1
            self._unread[self._next] = answer
            if isinstance(request, CreatePlacementGroup):
                self._creating[pg_id] = self._next
            oldest = next(iter(self._unread)) if len(self._unread) > PIPELINED_MAX else None
        if oldest is not None:
            self._read(oldest)

    def settle(self) -> None:
        """Reads every pipelined answer (oldest first); remembers failed creations."""
        while True:
            with self._lock:
                oldest = next(iter(self._unread), None)
            if oldest is None:
                return
            self._read(oldest)

    def _read_create_of(self, pg_id: str) -> None:
        with self._lock:
            key = self._creating.get(pg_id)
        if key is not None:
            self._read(key)

    def _read(self, key: int) -> None:
        with self._lock:
            answer = self._unread.get(key)
        if answer is None:
            return  # another thread read it
        reply = answer.reply()  # blocks (outside the lock)
        with self._lock:
            if self._unread.pop(key, None) is None:
                return
            if self._creating.get(answer.pg_id) == key:
                del self._creating[answer.pg_id]
            if isinstance(answer.request, CreatePlacementGroup) and reply.error:
                self._failed[answer.pg_id] = reply.error
                while len(self._failed) > FAILED_MAX:
                    del self._failed[next(iter(self._failed))]


def _group_of(request: PlacementGroupRequest) -> str:
    if isinstance(request, CreatePlacementGroup):
        return request.spec.pg_id
    return str(getattr(request, "pg_id", ""))


_by_context: weakref.WeakKeyDictionary[Any, PlacementGroupCalls] = weakref.WeakKeyDictionary()
_by_context_lock = threading.Lock()


def calls_of(ctx: Any) -> PlacementGroupCalls:
    """The context's ``PlacementGroupCalls`` (made on first use).

    Raises:
        NotImplementedError: the host does not support placement groups.
    """
    with _by_context_lock:
        calls = _by_context.get(ctx)
        if calls is None:
            calls = _by_context[ctx] = PlacementGroupCalls(_sender(ctx))
        return calls


def _sender(ctx: Any) -> Send:
    send = getattr(ctx, "placement_group_send", None)
    if send is not None:
        return send  # type: ignore[no-any-return]
    call = getattr(ctx, "placement_group_call", None)
    if call is None:
        raise NotImplementedError(
            f"this host ({type(ctx).__name__}) does not support placement groups yet")

    def at_once(request: PlacementGroupRequest) -> Callable[[], PlacementGroupReply]:
        reply: PlacementGroupReply = call(request)
        return lambda: reply
    return at_once
