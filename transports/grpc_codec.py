"""Frames of the gRPC transport: one msgpack-encoded batch of envelopes each.

Encoding uses ``kernel/wire.py``. Decoding is strict but forgiving per
envelope: a frame that is not a msgpack array is dropped whole, and inside a
well-formed array an envelope that fails validation (unknown message type,
wrong field types, out-of-range integers) is dropped alone, so one bad
envelope does not cost its neighbours. The caller logs the reasons.
"""

from __future__ import annotations

import msgspec
from shoal.kernel import wire
from shoal.kernel.wire import Envelope

_raw_list_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])


def decode_frame(frame: bytes) -> tuple[list[Envelope], list[str]]:
    """Decodes one frame.

    Returns:
        The valid envelopes, in frame order, and one reason per dropped part.
    """
    try:
        return wire.decode_batch(frame), []
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        whole_error = str(exc)
    try:
        parts = _raw_list_decoder.decode(frame)
    except msgspec.DecodeError:
        return [], [f"malformed frame: {whole_error}"]
    envelopes: list[Envelope] = []
    reasons: list[str] = []
    for index, part in enumerate(parts):
        try:
            envelopes.append(wire.decode(part))  # a Raw is a buffer
        except msgspec.DecodeError as exc:
            reasons.append(f"envelope {index}: {exc}")
    return envelopes, reasons


def encode_frames(batch: list[Envelope], frame_bytes_max: int) -> tuple[list[bytes], int]:
    """Encodes a batch as one frame, or several if it would pass ``frame_bytes_max``.

    A batch that fits is encoded in one call. One that does not (a transfer's object
    chunks, say) is encoded one envelope at a time, each exactly once, and packed
    greedily into frames: a msgpack array header followed by encoded elements is the
    encoding of the list. (Halving and re-encoding instead copied a batch of hundreds
    of megabytes several times over, holding the GIL all along.)

    Returns:
        The frames, in order, and how many envelopes were dropped because a
        single one alone is larger than ``frame_bytes_max`` or cannot be encoded.
    """
    if not batch:
        return [], 0
    if _data_bytes(batch) <= frame_bytes_max:
        try:
            frame = wire.encode_batch(batch)
        except _ENCODE_ERRORS:
            pass  # one envelope cannot be encoded: _pack drops it alone
        else:
            if len(frame) <= frame_bytes_max:
                return [frame], 0
    return _pack(batch, frame_bytes_max)


_ENCODE_ERRORS = (msgspec.EncodeError, TypeError, OverflowError, ValueError)
_ARRAY_HEADER_BYTES_MAX = 5


def _data_bytes(batch: list[Envelope]) -> int:
    """A cheap lower bound of a batch's encoded size: its messages' ``data`` bytes."""
    total = 0
    for envelope in batch:
        data = getattr(envelope.msg, "data", None)
        if isinstance(data, bytes | bytearray | memoryview):
            total += data.nbytes if isinstance(data, memoryview) else len(data)
    return total


def _pack(batch: list[Envelope], frame_bytes_max: int) -> tuple[list[bytes], int]:
    frames: list[bytes] = []
    parts: list[bytes] = []
    size = dropped = 0
    room = frame_bytes_max - _ARRAY_HEADER_BYTES_MAX
    for envelope in batch:
        try:
            encoded = wire.encode(envelope)
        except _ENCODE_ERRORS:
            dropped += 1
            continue
        if len(encoded) > room:
            dropped += 1
            continue
        if parts and size + len(encoded) > room:
            frames.append(_array(parts))
            parts, size = [], 0
        parts.append(encoded)
        size += len(encoded)
    if parts:
        frames.append(_array(parts))
    return frames, dropped


def _array(parts: list[bytes]) -> bytes:
    count = len(parts)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return b"".join([header, *parts])
