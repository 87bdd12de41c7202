"""Messages and host interface of the node's object table (objects above the inline limit).

Core worker -> its raylet:
  ``PinObject`` keeps the primary copy of a stored object for its owner;
  ``PullObject`` asks for an object to be made local (pulled from a node that
  has it); the raylet answers ``ObjectLocal`` when it is in this node's store, or
  ``ObjectUnavailable`` when no listed location could provide it.
Owner -> raylets holding copies: ``FreeObjects`` when no reference remains.
Raylet <-> raylet: ``RequestObject`` asks a node for chunks of an object; it
  answers with ``ObjectChunk``s (the host reads its store) or ``ObjectMissing``.

Host interface of the raylet: effects ``SendObjectChunks`` (read the local store
and send those chunks), ``WriteObjectChunk`` (write received bytes into the local
store), ``DeleteObject`` (drop a copy from the local store); input
``ObjectEvicted`` (the store dropped a secondary copy to make room).
"""

from __future__ import annotations

from shoal.kernel.ids import Count, NodeId, ObjectId
from shoal.kernel.messages import Address, Msg

CHUNK_BYTES = 1024 * 1024


class PinObject(Msg):
    object_id: ObjectId
    owner: Address
    size: Count


class PullObject(Msg):
    object_id: ObjectId
    owner: Address
    locations: tuple[NodeId, ...]
    size: Count


class ObjectLocal(Msg):
    object_id: ObjectId


class ObjectLocationAdded(Msg):
    """Raylet -> owner: this node now holds a copy (so the owner frees it too)."""

    object_id: ObjectId
    node_id: NodeId


class ObjectLocationRemoved(Msg):
    """Raylet -> owner: this node's secondary copy was evicted (pullers should look
    elsewhere, and a reader on this node must pull it again)."""

    object_id: ObjectId
    node_id: NodeId


class ObjectUnavailable(Msg):
    object_id: ObjectId
    reason: str


class FreeObjects(Msg):
    object_ids: tuple[ObjectId, ...]


class RequestObject(Msg):
    object_id: ObjectId
    chunks: tuple[Count, ...]  # empty: every chunk


class ObjectChunk(Msg):
    object_id: ObjectId
    index: Count
    chunk_count: Count
    size: Count
    data: bytes


class ObjectMissing(Msg):
    object_id: ObjectId


# --- host interface ----------------------------------------------------------


class SendObjectChunks(Msg):
    """Effect: read ``object_id`` from the local store; send these chunks to ``dst``."""

    dst: Address
    object_id: ObjectId
    chunks: tuple[Count, ...]
    chunk_bytes: Count


class WriteObjectChunk(Msg):
    """Effect: write one received chunk into the local store (creating the object)."""

    object_id: ObjectId
    offset: Count
    total_size: Count
    data: bytes


class DeleteObject(Msg):
    """Effect: drop this object's copy from the local store."""

    object_id: ObjectId


class ObjectEvicted(Msg):
    """Host input: the local store evicted this secondary copy to make room.

    The copy is gone: the raylet forgets it, so a later ``PullObject`` fetches it
    again instead of answering ``ObjectLocal`` for bytes that are no longer there.
    """

    object_id: ObjectId
