"""The request/reply protocol between a node's object store and the processes of its node.

Theory of operation
-------------------
The node daemon owns the node's ``SharedMemoryStore``: it alone allocates,
evicts, spills and frees. Drivers and workers map the store's arena file
themselves and read and write objects in place; what they ask of the daemon
goes over a Unix-domain ``SOCK_SEQPACKET`` socket (one message per packet, in
order, no framing needed), served by ``object_store_service.StoreServer``. This
is a host-level protocol: kernels never see these messages.

A packet is a msgpack array of requests; the reply packet is an array with one
reply per request that wants one (every request but ``ReleaseLeases``). The
first packet of a connection is ``[StoreHello]`` (cluster token, pid), answered
``[StoreWelcome]`` (the arena file and its size) or ``[StoreRefused]``, after
which the daemon closes the connection.

Leases. Every region a client touches is covered by a lease it numbers itself:
while the lease lives, the daemon holds a view of the region, so the store never
evicts, spills or reuses it (``object_store_memory`` explains why a view is
enough). ``CreateRegion`` reserves a new region under a temporary id and leases
it for writing; ``SealRegion`` gives it its object id, seals it (and pins it,
for a primary copy), and keeps the lease for reading; ``OpenObject`` leases a
sealed object for reading (restoring it first if it was spilled). Each answer
is ``RegionGranted`` (where the bytes lie in the arena) or ``StoreRefused``.
``ReleaseLeases`` ends leases; a lease on a region never sealed deletes it. A
client's leases end with its connection.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

PROTOCOL_VERSION: Final = 1
PACKET_BYTES_MAX: Final = 1 << 16  # requests and replies are small; see RELEASES_MAX
RELEASES_MAX: Final = 4_096  # leases per ReleaseLeases (~5 bytes each)

LeaseId = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
RefusalKind = Literal["full", "missing", "bad_request", "unauthorized", "error"]


class StoreMsg(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Base of every message of the object-store protocol."""


class StoreHello(StoreMsg):
    version: int
    token: str
    pid: int


class CreateRegion(StoreMsg):
    """Reserve ``size`` bytes for a new object and lease them for writing."""

    lease: LeaseId
    size: Bytes


class SealRegion(StoreMsg):
    """The leased region is written: it becomes ``object_id`` (replacing any old copy)."""

    lease: LeaseId
    object_id: str
    primary: bool = True  # pin it: a primary copy is spilled when memory runs short, never evicted


class OpenObject(StoreMsg):
    """Lease sealed object ``object_id`` for reading."""

    lease: LeaseId
    object_id: str


class ReleaseLeases(StoreMsg):
    leases: tuple[LeaseId, ...]


class StoreWelcome(StoreMsg):
    arena_path: str
    capacity_bytes: Bytes


class RegionGranted(StoreMsg):
    offset: Bytes
    size: Bytes


class StoreRefused(StoreMsg):
    kind: RefusalKind
    message: str
    size: Bytes = 0
    capacity_bytes: Bytes = 0
    used_bytes: Bytes = 0


Request = StoreHello | CreateRegion | SealRegion | OpenObject | ReleaseLeases
Reply = StoreWelcome | RegionGranted | StoreRefused

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(list[Request])
_reply_decoder = msgspec.msgpack.Decoder(list[Reply])


def encode_packet(messages: list[Request] | list[Reply]) -> bytes:
    return _encoder.encode(messages)


def decode_requests(packet: bytes) -> list[Request]:
    """Raises ``msgspec.DecodeError`` (a ``ValueError``) on a malformed packet."""
    return _request_decoder.decode(packet)


def decode_replies(packet: bytes) -> list[Reply]:
    """Raises ``msgspec.DecodeError`` (a ``ValueError``) on a malformed packet."""
    return _reply_decoder.decode(packet)
