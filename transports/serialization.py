"""Object serialization: pickle protocol 5 with out-of-band buffers.

Theory of operation
-------------------
``serialize(value)`` pickles ``value`` with cloudpickle (so lambdas, local
functions and classes defined in ``__main__`` travel by value) at protocol 5,
handing every contiguous ``PickleBuffer`` (numpy arrays, Arrow buffers,
``PickleBuffer``-aware user types) to a ``buffer_callback``. Those buffers stay
*out of band*: the result, a ``SerializedObject``, holds the small in-band pickle
stream plus memoryviews of the original buffers, so serializing copies nothing
big. ``write_into(memory)`` then copies everything exactly once, into its final
place (for the object store: straight into the shared-memory mapping).

Layout written by ``write_into`` (all integers little endian)::

    offset 0   magic  b"SHOALOB1"                      8 bytes
           8   flags  u32 (0; reserved)                4 bytes
          12   n      u32 number of out-of-band buffers
          16   inband offset u64, inband length u64   16 bytes
          32   n x (buffer offset u64, buffer length u64)
               in-band pickle stream
               padding to a 64-byte boundary, buffer 0
               padding to a 64-byte boundary, buffer 1, ...

Offsets are relative to the start of the memory. Every buffer starts on a
64-byte boundary (a large one maybe a little further on, so that copying it
into page-aligned memory runs at full speed: see ``_layout``), so when the
memory itself is page aligned (a shared-memory
mapping is) numpy views the data aligned for any dtype and SIMD width.

``deserialize_from(memory)`` parses the header and unpickles with the buffers
given as memoryview slices *of that memory*: numpy arrays come back zero-copy,
and read-only when the memory is read-only (a read-only mapping, or ``bytes``).

``dumps``/``loads`` are the plain variant for small values that travel inline
in messages: one ``bytes`` object, buffers kept in band.
"""

from __future__ import annotations

import pickle
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import cloudpickle  # type: ignore[import-untyped]

__all__ = [
    "ALIGNMENT",
    "CodecError",
    "DeserializationError",
    "SerializationError",
    "SerializedObject",
    "deserialize_from",
    "dumps",
    "loads",
    "serialize",
    "split_layout",
]

ALIGNMENT: Final = 64
"""Every out-of-band buffer starts at a multiple of this many bytes."""

MAGIC: Final = b"SHOALOB1"
_HEADER: Final = struct.Struct("<8sIIQQ")  # magic, flags, n_buffers, inband offset, inband len
_ENTRY: Final = struct.Struct("<QQ")  # buffer offset, buffer length
_BUFFERS_MAX: Final = 1 << 20  # a header claiming more buffers than this is corrupt
_NUMPY_COPY_MIN_BYTES: Final = 1 << 16  # above this, copy with numpy, which releases the GIL
_PAGE_BYTES: Final = 4096
_ALIASING_BYTES: Final = 1024  # see _layout
_ALIASING_MIN_BYTES: Final = 16 << 20  # smaller copies stay in cache: no slowdown measured

# Values of these exact types pickle identically with plain pickle, which is several
# times faster than setting up a CloudPickler for a tiny value.
_ATOMIC_TYPES: Final = frozenset({type(None), bool, int, float, complex, str, bytes})


class CodecError(Exception):
    """Base of the errors raised while turning values into bytes or back."""


class SerializationError(CodecError):
    """A value could not be pickled (e.g. it holds a lock, a socket or a generator)."""


class DeserializationError(CodecError):
    """Bytes could not be turned back into a value (corrupt data, missing module, ...)."""


def _align(offset: int) -> int:
    return (offset + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def _layout(inband_len: int, buffer_lengths: Sequence[int],
            source_phases: Sequence[int] = ()) -> tuple[int, tuple[int, ...], int]:
    """Returns (inband offset, buffer offsets, total bytes) of the format above.

    ``source_phases``: each buffer's address modulo the page size. A large buffer (of
    ``_ALIASING_MIN_BYTES`` or more) is placed so that, in page-aligned memory, its
    copy does not start up to ``_ALIASING_BYTES`` ahead of its source within a page:
    there glibc's large ``memcpy`` (non-temporal stores) runs 3-4x slower (4K
    aliasing between its loads and stores; measured 3.6 against 14 GB/s for 800 MB,
    and no difference below 16 MiB, on this project's machine).
    """
    inband_offset = _HEADER.size + _ENTRY.size * len(buffer_lengths)
    end = inband_offset + inband_len
    offsets = []
    for index, length in enumerate(buffer_lengths):
        start = _align(end)
        if index < len(source_phases) and length >= _ALIASING_MIN_BYTES:
            ahead = (start - source_phases[index]) % _PAGE_BYTES
            if 0 < ahead < _ALIASING_BYTES:
                start = _align(start + _ALIASING_BYTES - ahead)
        offsets.append(start)
        end = start + length
    return inband_offset, tuple(offsets), end


def _type_name(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _as_byte_view(memory: object) -> memoryview:
    """A flat unsigned-byte memoryview of any C-contiguous buffer."""
    view = memory if isinstance(memory, memoryview) else memoryview(memory)  # type: ignore[arg-type]
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _address(view: memoryview) -> int:
    if view.nbytes == 0:
        return 0
    import numpy as np  # imported on first use (a process that never needs it, never does)

    address: int = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
    return address


def _copy(dest: memoryview, src: memoryview) -> None:
    if src.nbytes >= _NUMPY_COPY_MIN_BYTES:
        # np.copyto releases the GIL, so a big copy does not stall other threads.
        import numpy as np

        np.copyto(np.frombuffer(dest, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))
    else:
        dest[:] = src


def _ndarray_type() -> type | None:
    """``numpy.ndarray`` if numpy is imported (a value cannot be an array otherwise)."""
    numpy = sys.modules.get("numpy")
    return numpy.ndarray if numpy is not None else None


@dataclass(frozen=True, slots=True, eq=False)
class SerializedObject:
    """A pickled value whose large buffers are still out of band.

    Attributes:
        inband: The protocol-5 pickle stream (small: it refers to the buffers by order).
        buffers: Flat byte memoryviews of the out-of-band buffers, in pickle order. They
            view the original value's memory: mutating the value before ``write_into``
            changes what is written.
        buffer_offsets: Where each buffer goes in the written layout.
        inband_offset: Where the pickle stream goes in the written layout.
        total_bytes: How many bytes ``write_into`` writes.
    """

    inband: bytes
    buffers: tuple[memoryview, ...]
    buffer_offsets: tuple[int, ...]
    inband_offset: int
    total_bytes: int

    @classmethod
    def from_parts(cls, inband: bytes, buffers: Sequence[object]) -> SerializedObject:
        """Lays out a pickle stream made elsewhere and its out-of-band buffers (any
        C-contiguous buffers: ``PickleBuffer.raw()`` views, memoryviews)."""
        views = tuple(_as_byte_view(buffer) for buffer in buffers)
        phases = [_address(view) % _PAGE_BYTES for view in views]
        inband_offset, offsets, total = _layout(len(inband), [v.nbytes for v in views], phases)
        return cls(
            inband=inband,
            buffers=views,
            buffer_offsets=offsets,
            inband_offset=inband_offset,
            total_bytes=total,
        )

    def write_into(self, memory: object) -> int:
        """Writes the self-describing layout to the start of ``memory``.

        Args:
            memory: A writable, C-contiguous buffer of at least ``total_bytes`` bytes,
                ideally 64-byte aligned (a shared-memory mapping is page aligned).

        Returns:
            The number of bytes written (``total_bytes``).

        Raises:
            ValueError: The memory is read-only or too small.
        """
        dest = _as_byte_view(memory)
        if dest.readonly:
            raise ValueError("serialization: cannot write into read-only memory")
        if dest.nbytes < self.total_bytes:
            raise ValueError(
                f"serialization: cannot write {self.total_bytes} bytes into memory of "
                f"{dest.nbytes} bytes; allocate at least total_bytes"
            )
        _HEADER.pack_into(
            dest, 0, MAGIC, 0, len(self.buffers), self.inband_offset, len(self.inband)
        )
        for index, (offset, buffer) in enumerate(zip(self.buffer_offsets, self.buffers)):
            _ENTRY.pack_into(dest, _HEADER.size + index * _ENTRY.size, offset, buffer.nbytes)
        dest[self.inband_offset : self.inband_offset + len(self.inband)] = self.inband
        for offset, buffer in zip(self.buffer_offsets, self.buffers):
            _copy(dest[offset : offset + buffer.nbytes], buffer)
        return self.total_bytes

    def to_bytes(self) -> bytes:
        """Returns the layout as one ``bytes`` object (a copy; for tests and the network)."""
        out = bytearray(self.total_bytes)
        self.write_into(out)
        return bytes(out)


def serialize(value: object) -> SerializedObject:
    """Pickles ``value`` (protocol 5), keeping contiguous buffers out of band.

    Args:
        value: Any value cloudpickle can pickle.

    Returns:
        The in-band stream plus views of the out-of-band buffers; nothing big is copied.

    Raises:
        SerializationError: The value (or something inside it) cannot be pickled.
    """
    buffers: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # not contiguous: let pickle copy it in band
        buffers.append(raw)
        return False

    try:
        if type(value) in _ATOMIC_TYPES:
            inband = pickle.dumps(value, protocol=5)
        elif type(value) is _ndarray_type() and not value.dtype.hasobject:  # type: ignore[attr-defined]
            # A plain array refers only to numpy's importable reconstructors, so the C
            # pickler (several times cheaper to start than cloudpickle's) is exact.
            inband = pickle.dumps(value, protocol=5, buffer_callback=keep_out_of_band)
        else:
            inband = cloudpickle.dumps(value, protocol=5, buffer_callback=keep_out_of_band)
    except Exception as exc:
        raise SerializationError(
            f"serialization: cannot serialize value of type {_type_name(value)!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return SerializedObject.from_parts(inband, buffers)


def _corrupt(what: str) -> DeserializationError:
    return DeserializationError(
        f"serialization: cannot deserialize: {what}; the memory does not hold an object "
        "written by SerializedObject.write_into, or it was truncated or overwritten"
    )


def _parse(view: memoryview) -> tuple[memoryview, list[memoryview]]:
    """Validates the header and returns views of the pickle stream and the buffers."""
    if view.nbytes < _HEADER.size:
        raise _corrupt(
            f"memory of {view.nbytes} bytes is shorter than the {_HEADER.size}-byte header"
        )
    magic, _flags, count, inband_offset, inband_len = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise _corrupt(f"bad magic {magic!r}; expected {MAGIC!r}")
    table_end = _HEADER.size + _ENTRY.size * count
    if count > _BUFFERS_MAX or table_end > view.nbytes:
        raise _corrupt(f"header claims {count} buffers, which do not fit in {view.nbytes} bytes")
    if inband_offset + inband_len > view.nbytes:
        raise _corrupt(
            f"pickle stream [{inband_offset}, {inband_offset + inband_len}) runs past the "
            f"end of the memory ({view.nbytes} bytes)"
        )
    buffers = []
    for index in range(count):
        offset, length = _ENTRY.unpack_from(view, _HEADER.size + index * _ENTRY.size)
        if offset + length > view.nbytes:
            raise _corrupt(
                f"buffer {index} [{offset}, {offset + length}) runs past the end of the "
                f"memory ({view.nbytes} bytes)"
            )
        buffers.append(view[offset : offset + length])
    return view[inband_offset : inband_offset + inband_len], buffers


def split_layout(memory: object) -> tuple[memoryview, list[memoryview]] | None:
    """The pickle stream and out-of-band buffers of memory written by ``write_into``.

    Returns:
        Views of ``memory`` (zero-copy), or None when ``memory`` does not start with the
        layout's magic (so it holds something else, e.g. a plain pickle stream).

    Raises:
        DeserializationError: The magic is there but the header is corrupt.
    """
    view = _as_byte_view(memory)
    if view.nbytes < len(MAGIC) or view[: len(MAGIC)].tobytes() != MAGIC:
        return None
    return _parse(view)


def deserialize_from(memory: object) -> Any:
    """Rebuilds a value from the layout written by ``SerializedObject.write_into``.

    Out-of-band buffers are handed to pickle as memoryviews of ``memory`` itself, so
    numpy arrays share that memory (zero-copy) and are read-only when it is read-only.
    The returned value keeps ``memory`` alive for as long as it references it.

    Args:
        memory: A C-contiguous buffer starting with the layout (it may be longer).

    Returns:
        The value.

    Raises:
        DeserializationError: The header is corrupt, or unpickling failed (for example a
            module or class that the value needs cannot be imported here).
    """
    view = _as_byte_view(memory)
    inband, buffers = _parse(view)
    try:
        return pickle.loads(inband, buffers=buffers)
    except Exception as exc:
        raise DeserializationError(
            f"serialization: cannot deserialize value ({inband.nbytes}-byte pickle stream, "
            f"{len(buffers)} out-of-band buffers): {type(exc).__name__}: {exc}"
        ) from exc


def dumps(value: object) -> bytes:
    """Pickles a small value into one ``bytes`` object (buffers in band).

    Raises:
        SerializationError: The value cannot be pickled.
    """
    try:
        if type(value) in _ATOMIC_TYPES:
            return pickle.dumps(value, protocol=5)
        data: bytes = cloudpickle.dumps(value, protocol=5)
        return data
    except Exception as exc:
        raise SerializationError(
            f"serialization: cannot serialize value of type {_type_name(value)!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Unpickles bytes produced by ``dumps``.

    Raises:
        DeserializationError: The bytes are corrupt or name something not importable here.
    """
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise DeserializationError(
            f"serialization: cannot deserialize value ({len(data)}-byte pickle stream): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
