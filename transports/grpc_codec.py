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

    Returns:
        The frames, in order, and how many envelopes were dropped because a
        single one alone is larger than ``frame_bytes_max``.
    """
    if not batch:
        return [], 0
    try:
        frame: bytes | None = wire.encode_batch(batch)
    except (msgspec.EncodeError, TypeError, OverflowError, ValueError):
        frame = None  # one envelope cannot be encoded: find it by halving
    if frame is not None and len(frame) <= frame_bytes_max:
        return [frame], 0
    if len(batch) == 1:
        return [], 1
    middle = len(batch) // 2
    head, head_dropped = encode_frames(batch[:middle], frame_bytes_max)
    tail, tail_dropped = encode_frames(batch[middle:], frame_bytes_max)
    return head + tail, head_dropped + tail_dropped
