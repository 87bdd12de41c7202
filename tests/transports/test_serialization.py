"""Tests of shoal.transports.serialization: pickle 5 with out-of-band buffers."""

from __future__ import annotations

import mmap
import struct
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from shoal.transports.serialization import (
    ALIGNMENT,
    DeserializationError,
    SerializationError,
    SerializedObject,
    deserialize_from,
    dumps,
    loads,
    serialize,
)


def _aligned_memory(size: int) -> mmap.mmap:
    """Page-aligned writable memory, like a shared-memory mapping."""
    return mmap.mmap(-1, max(size, 1))


def _byte_array(memory: mmap.mmap | memoryview) -> np.ndarray:
    return np.frombuffer(memory, dtype=np.uint8)


@dataclass
class Point:
    x: int
    y: np.ndarray


class Unloadable:
    """Pickles fine, but fails when unpickled."""

    def __reduce__(self) -> tuple[Callable[[], object], tuple[()]]:
        return (_explode, ())


def _explode() -> object:
    raise RuntimeError("boom while loading")


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -(2**100),
        1.5,
        "text",
        b"\x00bytes",
        [1, "two", 3.0],
        {"nested": {"deep": (1, 2, [3])}},
        set(range(10)),
        Point(1, np.arange(3)),
    ],
    ids=repr,
)
def test_plain_values_round_trip(value: object) -> None:
    result = deserialize_from(serialize(value).to_bytes())
    if isinstance(value, Point):
        assert isinstance(result, Point)
        assert result.x == value.x and np.array_equal(result.y, value.y)
    else:
        assert result == value


def test_numpy_array_goes_out_of_band() -> None:
    array = np.arange(1000, dtype=np.int64)
    serialized = serialize(array)
    assert len(serialized.buffers) == 1
    assert serialized.buffers[0].nbytes == array.nbytes
    assert len(serialized.inband) < 200  # the data is not in the pickle stream
    assert np.shares_memory(_byte_array(serialized.buffers[0]), array)  # serialize copies nothing


def test_layout_aligns_every_buffer() -> None:
    value = [np.ones(n, dtype=np.uint8) for n in (1, 3, 64, 65, 1000)]
    serialized = serialize(value)
    assert [o % ALIGNMENT for o in serialized.buffer_offsets] == [0] * 5
    memory = _aligned_memory(serialized.total_bytes)
    assert serialized.write_into(memory) == serialized.total_bytes
    result = deserialize_from(memory)
    assert isinstance(result, list)
    assert [a.ctypes.data % ALIGNMENT for a in result] == [0] * 5
    assert all(np.array_equal(a, b) for a, b in zip(result, value, strict=True))


def test_deserialize_is_zero_copy_into_the_given_memory() -> None:
    array = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    serialized = serialize(array)
    memory = _aligned_memory(serialized.total_bytes)
    serialized.write_into(memory)
    result = deserialize_from(memory)
    assert isinstance(result, np.ndarray)
    assert np.shares_memory(result, _byte_array(memory))
    assert result.flags.writeable  # the memory is writable, so is the view
    assert np.array_equal(result, array)


def test_read_only_memory_gives_read_only_arrays() -> None:
    array = np.arange(100, dtype=np.int32)
    data = serialize(array).to_bytes()  # bytes are read-only
    result = deserialize_from(data)
    assert isinstance(result, np.ndarray)
    assert not result.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        result[0] = 5
    with pytest.raises(ValueError):
        result.flags.writeable = True


def test_nested_arrays_of_many_kinds() -> None:
    value: dict[str, Any] = {
        "c_order": np.arange(12, dtype=np.int16).reshape(3, 4),
        "f_order": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        "strided": np.arange(20)[::3],  # not contiguous: pickled in band
        "structured": np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        "scalar_array": np.array(7),
        "empty": np.empty((0, 3)),
        "objects": np.array([{"a": 1}, None], dtype=object),
        "list": [np.ones(5), (np.zeros(2), "tail")],
    }
    result = deserialize_from(serialize(value).to_bytes())
    assert isinstance(result, dict)
    assert result.keys() == value.keys()
    for key in ("c_order", "f_order", "strided", "structured", "scalar_array", "empty"):
        assert np.array_equal(result[key], value[key]), key
        assert result[key].dtype == value[key].dtype, key
    assert result["f_order"].flags.f_contiguous
    assert list(result["objects"]) == [{"a": 1}, None]
    assert np.array_equal(result["list"][0], np.ones(5))
    assert result["list"][1][1] == "tail"


def test_same_array_twice_is_one_object_after_round_trip() -> None:
    array = np.arange(5)
    result = deserialize_from(serialize([array, array]).to_bytes())
    assert isinstance(result, list)
    assert result[0] is result[1]


def test_functions_lambdas_and_local_classes_use_cloudpickle() -> None:
    offset = 10

    def add_offset(x: int) -> int:
        return x + offset

    class Local:
        def __init__(self, value: int) -> None:
            self.value = value

        def doubled(self) -> int:
            return self.value * 2

    value = {"lambda": lambda x: x * 3, "closure": add_offset, "cls": Local, "obj": Local(4)}
    result = deserialize_from(serialize(value).to_bytes())
    assert isinstance(result, dict)
    assert result["lambda"](2) == 6
    assert result["closure"](1) == 11
    assert result["cls"](5).doubled() == 10
    assert result["obj"].doubled() == 8


def test_pyarrow_buffers_round_trip() -> None:
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"a": np.arange(1000), "b": [str(i) for i in range(1000)]})
    serialized = serialize(table)
    assert serialized.buffers  # arrow buffers travel out of band
    assert deserialize_from(serialized.to_bytes()).equals(table)


def test_dumps_and_loads_small_values() -> None:
    value = {"k": [1, 2, 3], "f": lambda: "called", "a": np.arange(3)}
    result = loads(dumps(value))
    assert isinstance(result, dict)
    assert result["k"] == [1, 2, 3]
    assert result["f"]() == "called"
    assert np.array_equal(result["a"], np.arange(3))
    assert loads(dumps(42)) == 42
    assert loads(memoryview(dumps("s"))) == "s"


def test_writing_into_a_larger_memory_and_reading_back() -> None:
    serialized = serialize("hello")
    memory = bytearray(serialized.total_bytes + 100)
    serialized.write_into(memory)
    assert deserialize_from(memory) == "hello"


# --------------------------------------------------------------------- errors


def test_unpicklable_value_raises_a_clear_error() -> None:
    with pytest.raises(
        SerializationError,
        match=r"^serialization: cannot serialize value of type 'builtins.dict': TypeError: .*lock",
    ):
        serialize({"lock": threading.Lock()})
    with pytest.raises(SerializationError, match=r"cannot serialize value of type '_thread.lock'"):
        dumps(threading.Lock())


def test_failing_unpickle_names_the_error() -> None:
    data = serialize([Unloadable(), np.arange(3)]).to_bytes()
    with pytest.raises(
        DeserializationError,
        match=r"^serialization: cannot deserialize value \(\d+-byte pickle stream, 1 "
        r"out-of-band buffers\): RuntimeError: boom while loading",
    ) as info:
        deserialize_from(data)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(DeserializationError, match="RuntimeError: boom while loading"):
        loads(dumps(Unloadable()))


def test_missing_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("shoal_test_vanishing")
    gone = type("Gone", (), {"__module__": module.__name__})
    module.Gone = gone  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    data = serialize(gone()).to_bytes()  # importable, so pickled by reference
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(
        DeserializationError,
        match="ModuleNotFoundError: No module named 'shoal_test_vanishing'",
    ):
        deserialize_from(data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XXXXXXXX" + b[8:], r"bad magic b'XXXXXXXX'; expected b'SHOALOB1'"),
        (lambda b: b[:20], r"shorter than the 32-byte header"),
        (lambda b: b[:-8], r"buffer 0 \[\d+, \d+\) runs past the end"),
        (lambda b: b[:12] + struct.pack("<I", 10**9) + b[16:], r"claims 1000000000 buffers"),
    ],
    ids=["magic", "short", "truncated-buffer", "buffer-count"],
)
def test_corrupt_memory_is_rejected(mutate: Callable[[bytes], bytes], message: str) -> None:
    data = mutate(serialize(np.arange(100)).to_bytes())
    with pytest.raises(
        DeserializationError, match=r"^serialization: cannot deserialize: .*" + message
    ):
        deserialize_from(data)


def test_write_into_checks_the_memory() -> None:
    serialized = serialize(np.arange(100))
    with pytest.raises(ValueError, match=r"cannot write \d+ bytes into memory of 10 bytes"):
        serialized.write_into(bytearray(10))
    with pytest.raises(ValueError, match="read-only"):
        serialized.write_into(bytes(serialized.total_bytes))


def test_serialized_object_is_immutable() -> None:
    serialized = serialize(1)
    assert isinstance(serialized, SerializedObject)
    with pytest.raises(AttributeError):
        serialized.total_bytes = 5  # type: ignore[misc]
