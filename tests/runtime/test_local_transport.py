"""The daemon's Unix-socket transport (``runtime/local_transport.py``), in one trio run."""

from __future__ import annotations

import os
import struct
import threading
from typing import Any

import pytest
import trio
from shoal.kernel.gcs.protocol import KvGet
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address
from shoal.kernel.wire import Envelope
from shoal.runtime.local_transport import (
    Connection,
    FrameError,
    HandshakeError,
    HelloReply,
    LocalLimits,
    LocalServer,
    connect_local,
    split_frames,
)

NODE = NodeId("n1")
RAYLET = Address(node=NODE, component="raylet")
GCS = Address(node=NODE, component="gcs")
WORKER = Address(node=NODE, component="worker", worker="w1")
TOKEN = "t" * 32


class Daemon:
    """A LocalServer that records what arrives."""

    def __init__(self, path: str) -> None:
        self.batches: list[list[Envelope]] = []
        self.disconnected: list[Address] = []
        welcome = HelloReply(ok=True, node_id=NODE, raylet=RAYLET, gcs=GCS)
        self.server = LocalServer(path=path, token=TOKEN, welcome=welcome,
                                  on_batch=lambda conn, envs: self.batches.append(envs),
                                  on_connect=lambda conn: None,
                                  on_disconnect=lambda conn: self.disconnected.append(conn.peer))


async def _until(condition: Any) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.005)


def test_a_client_exchanges_batches_and_spoofed_envelopes_are_dropped(tmp_path: Any) -> None:
    path = str(tmp_path / "n1.sock")
    daemon = Daemon(path)
    received: list[Envelope] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.server.serve)
            assert oct(os.stat(path).st_mode & 0o777) == "0o600"
            conn, reply = await connect_local(path, token=TOKEN, address=WORKER)
            assert reply.ok and reply.raylet == RAYLET and reply.gcs == GCS
            nursery.start_soon(conn.run_writer)
            nursery.start_soon(conn.run_reader, lambda c, envs: received.extend(envs), False)
            good = Envelope(src=WORKER, dst=GCS, msg=KvGet(request_id=1, namespace="",
                                                               key=b"a"))
            spoofed = Envelope(src=RAYLET, dst=GCS, msg=KvGet(request_id=2, namespace="",
                                                                  key=b"b"))
            conn.send(good)
            conn.send(spoofed)
            await _until(lambda: daemon.batches)
            assert daemon.batches == [[good]]
            back = Envelope(src=GCS, dst=WORKER, msg=KvGet(request_id=3, namespace="",
                                                               key=b"c"))
            assert daemon.server.send(back)
            await _until(lambda: received)
            assert received == [back]
            await conn.aclose()
            await _until(lambda: daemon.disconnected)
            assert daemon.disconnected == [WORKER]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert not os.path.exists(path), "the socket file is removed when the server stops"


@pytest.mark.parametrize(("token", "address", "reason"), [
    ("x" * 32, WORKER, "wrong cluster token"),
    ("", WORKER, "missing cluster token"),
    (TOKEN, Address(node=NodeId("n2"), component="worker", worker="w1"), "is not on node n1"),
    (TOKEN, Address(node=NODE, component="raylet"), "only drivers and workers"),
])
def test_bad_hellos_are_refused_with_the_reason(tmp_path: Any, token: str, address: Address,
                                                reason: str) -> None:
    path = str(tmp_path / "n1.sock")
    daemon = Daemon(path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.server.serve)
            with pytest.raises(HandshakeError, match=reason):
                await connect_local(path, token=token, address=address)
            conn, reply = await connect_local(path, token=TOKEN, address=WORKER)  # still serving
            assert reply.ok
            await conn.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert daemon.server.rejected == 1


def test_garbage_and_oversized_frames_never_stop_the_server(tmp_path: Any) -> None:
    path = str(tmp_path / "n1.sock")
    daemon = Daemon(path)

    async def raw(payload: bytes) -> bytes:
        stream = await trio.open_unix_socket(path)
        await stream.send_all(payload)
        await stream.send_eof()
        data = b""
        with trio.move_on_after(2):
            while chunk := await stream.receive_some():
                data += chunk
        await stream.aclose()
        return data

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.server.serve)
            assert b"malformed hello" in await raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
            assert await raw(struct.pack(">I", 2**31)) == b""  # oversized: closed at once
            assert await raw(b"\x00\x00") == b""  # a torn header, then the peer leaves
            conn: Connection
            conn, reply = await connect_local(path, token=TOKEN, address=WORKER)
            assert reply.ok
            await conn.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert daemon.server.rejected == 3


def test_batches_are_split_to_fit_and_an_envelope_too_large_alone_is_dropped(
        tmp_path: Any) -> None:
    path = str(tmp_path / "n1.sock")
    daemon = Daemon(path)

    def envelope(key: bytes) -> Envelope:
        return Envelope(src=WORKER, dst=GCS, msg=KvGet(request_id=1, namespace="", key=key))

    small = [envelope(bytes([i]) * 60) for i in range(4)]
    huge = envelope(b"h" * 1000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.server.serve)
            conn, _ = await connect_local(path, token=TOKEN, address=WORKER,
                                          limits=LocalLimits(frame_bytes_max=300))
            nursery.start_soon(conn.run_writer)
            for item in [small[0], small[1], huge, small[2], small[3]]:
                conn.send(item)
            await _until(lambda: sum(map(len, daemon.batches)) == 4)
            assert conn.dropped == 1 and not conn.closed
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [e for batch in daemon.batches for e in batch] == small
    assert len(daemon.batches) > 1


def test_split_frames_takes_whole_frames_and_refuses_oversized_ones() -> None:
    buffer = bytearray(struct.pack(">I", 2) + b"ab" + struct.pack(">I", 3) + b"cd")
    assert split_frames(buffer, 100) == [b"ab"]
    assert bytes(buffer) == struct.pack(">I", 3) + b"cd", "the torn frame waits for more"
    buffer += b"e"
    assert split_frames(buffer, 100) == [b"cde"] and not buffer
    with pytest.raises(FrameError, match="over the limit"):
        split_frames(bytearray(struct.pack(">I", 101)), 100)


def test_a_reader_thread_delivers_under_the_lock_and_ends_when_closed(tmp_path: Any) -> None:
    path = str(tmp_path / "n1.sock")
    daemon = Daemon(path)
    received: list[Envelope] = []
    held_lock: list[bool] = []
    lock = threading.Lock()

    def on_batch(conn: Connection, envelopes: list[Envelope]) -> None:
        held_lock.append(lock.locked())
        received.extend(envelopes)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.server.serve)
            conn, _ = await connect_local(path, token=TOKEN, address=WORKER)
            reasons: list[str] = []

            async def read() -> None:
                reasons.append(await conn.run_reader_in_thread(
                    on_batch, False, lock, trio.CapacityLimiter(1)))

            nursery.start_soon(read)
            sent = [Envelope(src=GCS, dst=WORKER, msg=KvGet(request_id=i, namespace="",
                                                              key=bytes(2000)))
                    for i in range(50)]
            await _until(lambda: daemon.server.send(sent[0]))  # once the server has us
            for envelope in sent[1:]:
                assert daemon.server.send(envelope)
            await _until(lambda: len(received) == len(sent))
            assert received == sent and all(held_lock)
            await conn.aclose()
            await _until(lambda: reasons)
            assert reasons[0] in ("closed", "peer closed the connection")
            nursery.cancel_scope.cancel()

    trio.run(main)
