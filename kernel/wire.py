"""The wire form of kernel messages: one tagged union the transports decode.

Every protocol message any component may send is listed in ``WIRE_TYPES``; a
frame naming any other type is rejected by the decoder, before it reaches a
kernel. ``Envelope`` is what crosses a process boundary.
"""

from __future__ import annotations

from typing import Union

import msgspec
from shoal.kernel.core_worker import protocol as core
from shoal.kernel.core_worker.actor_protocol import ACTOR_CALL_WIRE_TYPES
from shoal.kernel.core_worker.stream_protocol import STREAM_WIRE_TYPES
from shoal.kernel.gcs import protocol as gcs
from shoal.kernel.gcs import resource_protocol as resources
from shoal.kernel.gcs.actor_protocol import ACTOR_WIRE_TYPES
from shoal.kernel.gcs.job_protocol import JOB_WIRE_TYPES
from shoal.kernel.gcs.placement_group_protocol import PLACEMENT_GROUP_WIRE_TYPES
from shoal.kernel.host_protocol import HOST_WIRE_TYPES
from shoal.kernel.messages import Address, Msg, Rejected
from shoal.kernel.raylet import object_protocol as objects
from shoal.kernel.raylet import protocol as raylet

WIRE_TYPES: tuple[type[Msg], ...] = (
    Rejected,
    gcs.RegisterNode, gcs.NodeRegistered, gcs.Heartbeat, gcs.NodeDeclaredDead,
    gcs.UnregisterNode, gcs.SubscribeNodes, gcs.NodeTableUpdate,
    gcs.KvPut, gcs.KvPutReply, gcs.KvGet, gcs.KvGetReply, gcs.KvDelete, gcs.KvDeleteReply,
    gcs.KvList, gcs.KvListReply, gcs.KvExists, gcs.KvExistsReply,
    resources.ResourceReport, resources.ResourceViewUpdate,
    resources.GetResourceView, resources.ResourceViewReply,
    raylet.RequestWorkerLease, raylet.LeaseGranted, raylet.LeaseSpillback, raylet.LeaseRejected,
    raylet.CancelLeaseRequest, raylet.ReturnWorker, raylet.ReturnWorkerAck,
    raylet.LeasedWorkerDied, raylet.RegisterWorker, raylet.WorkerBlocked, raylet.WorkerUnblocked,
    raylet.LeaseCheck, raylet.LeaseCheckReply,
    objects.PinObject, objects.PullObject, objects.ObjectLocal, objects.ObjectLocationAdded,
    objects.ObjectLocationRemoved,
    objects.ObjectUnavailable, objects.FreeObjects, objects.RequestObject, objects.ObjectChunk,
    objects.ObjectMissing,
    core.PushTask, core.TaskRunning, core.TaskDone, core.CancelTask, core.CancelForwarded, core.GetObject,
    core.ObjectStatus, core.RefReleased,
    core.RegisterBorrow, core.BorrowRegistered, core.AddBorrower, core.BorrowerAdded,
    *ACTOR_WIRE_TYPES, *ACTOR_CALL_WIRE_TYPES,  # actors (issue #4)
    *PLACEMENT_GROUP_WIRE_TYPES,
    *JOB_WIRE_TYPES,  # drivers that exited (jobs that ended)
    *STREAM_WIRE_TYPES,  # streaming generators (issue 5)
    *HOST_WIRE_TYPES,  # between hosts, never seen by a kernel
)

WireMessage = Union[WIRE_TYPES]  # type: ignore[valid-type]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    src: Address
    dst: Address
    msg: WireMessage  # type: ignore[valid-type]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_batch_decoder = msgspec.msgpack.Decoder(list[Envelope])


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(frame: bytes) -> Envelope:
    """Decodes one envelope; raises ``msgspec.DecodeError``/``ValidationError`` if bad."""
    return _decoder.decode(frame)


def encode_batch(envelopes: list[Envelope]) -> bytes:
    return _encoder.encode(envelopes)


def decode_batch(frame: bytes) -> list[Envelope]:
    return _batch_decoder.decode(frame)
