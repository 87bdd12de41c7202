"""The gRPC transport between real sockets on loopback.

Each test starts its transports in one ``trio.run`` and closes them on exit.
Waits are bounded by ``trio.fail_after``; nothing here asserts timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

import grpc  # type: ignore[import-untyped]
import msgspec
import pytest
import structlog
import trio
import trio.lowlevel
from shoal.kernel.gcs.protocol import Heartbeat, KvPut
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, TimerFired
from shoal.kernel.wire import Envelope, encode_batch
from shoal.transports.grpc_transport import (
    ENDPOINT_KEY,
    METHOD_PATH,
    TOKEN_KEY,
    GrpcTransport,
    TransportLimits,
    generate_token,
    open_grpc_transport,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

A = Address(node=NodeId("node-a"), component="raylet")
B = Address(node=NodeId("node-b"), component="gcs")
FAST = TransportLimits(backoff_initial_s=0.02, backoff_max_s=0.2, close_grace_s=0.5)


def beat(seq: int, src: Address = A, dst: Address = B) -> Envelope:
    return Envelope(src=src, dst=dst,
                    msg=Heartbeat(node_id=src.node, incarnation=1, view_version=seq))


def seq(env: Envelope) -> int:
    msg: object = env.msg
    assert isinstance(msg, Heartbeat)
    return msg.view_version


def seqs(batches: list[list[Envelope]]) -> list[int]:
    return [seq(env) for batch in batches for env in batch]


async def receive_envelopes(
    t: GrpcTransport, count: int, timeout_s: float = 5.0
) -> list[list[Envelope]]:
    """Receives batches until ``count`` envelopes arrived."""
    batches: list[list[Envelope]] = []
    with trio.fail_after(timeout_s):
        while sum(map(len, batches)) < count:
            batches.append(await t.incoming.receive())
    return batches


async def nothing_arrives(t: GrpcTransport, wait_s: float) -> bool:
    with trio.move_on_after(wait_s):
        await t.incoming.receive()
        return False
    return True


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


def raw_stream(endpoint: str, token: str, frames: list[bytes]) -> grpc.StatusCode:
    """Writes raw frames on a stream of our own, then half-closes; returns the status."""
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.stream_stream(METHOD_PATH)(
            iter(frames), metadata=((TOKEN_KEY, token), (ENDPOINT_KEY, "")) if token else ()
        )
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def test_generate_token_is_random_hex() -> None:
    first, second = generate_token(), generate_token()
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second


def test_exchange_both_ways_keeps_order_on_one_stream() -> None:
    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token, limits=FAST) as a, \
                open_grpc_transport(token=token, limits=FAST) as b:
            assert a.endpoint.startswith("127.0.0.1:")
            for i in range(300):
                a.send(b.endpoint, beat(i))
                if i % 7 == 0:
                    await trio.lowlevel.checkpoint()
            at_b = await receive_envelopes(b, 300)
            for i in range(300):
                b.send(a.endpoint, beat(i, src=B, dst=A))
                if i % 5 == 0:
                    await trio.lowlevel.checkpoint()
            at_a = await receive_envelopes(a, 300)
            assert seqs(at_b) == list(range(300))
            assert seqs(at_a) == list(range(300))
            assert at_b[0][0] == beat(0)
            # b answered over the stream a opened: one stream for the pair.
            assert (a.stats.dials, b.stats.dials, b.stats.accepted) == (1, 0, 1)

    run(main)


def test_simultaneous_sends_both_ways_keep_order() -> None:
    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token, limits=FAST) as a, \
                open_grpc_transport(token=token, limits=FAST) as b:
            for i in range(200):
                a.send(b.endpoint, beat(i))
                b.send(a.endpoint, beat(i, src=B, dst=A))
                await trio.lowlevel.checkpoint()
            assert seqs(await receive_envelopes(b, 200)) == list(range(200))
            assert seqs(await receive_envelopes(a, 200)) == list(range(200))

    run(main)


def test_many_sends_arrive_in_fewer_frames() -> None:
    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token) as a, open_grpc_transport(token=token) as b:
            for i in range(2000):  # one scheduling round: one flush
                a.send(b.endpoint, beat(i))
            batches = await receive_envelopes(b, 2000)
            assert seqs(batches) == list(range(2000))
            assert len(batches) < 2000 / 10
            assert a.stats.frames_sent == len(batches) == b.stats.frames_received

    run(main)


def test_large_batches_are_split_into_frames_under_the_limit() -> None:
    async def main() -> None:
        token = generate_token()
        limits = TransportLimits(frame_bytes_max=4096, batch_envelopes_max=100_000)
        async with open_grpc_transport(token=token, limits=limits) as a, \
                open_grpc_transport(token=token) as b:
            value = b"v" * 1000
            for i in range(40):
                a.send(b.endpoint, Envelope(src=A, dst=B, msg=KvPut(
                    request_id=i, namespace="n", key=b"k", value=value)))
            a.send(b.endpoint, Envelope(src=A, dst=B, msg=KvPut(
                request_id=99, namespace="n", key=b"k", value=b"x" * 10_000)))  # too large alone
            a.send(b.endpoint, beat(7))
            batches = await receive_envelopes(b, 41)
            msgs: list[object] = [e.msg for batch in batches for e in batch]
            ids = [msg.request_id if isinstance(msg, KvPut) else -1 for msg in msgs]
            assert ids == [*range(40), -1]
            assert len(batches) >= 10
            assert a.stats.dropped_unencodable == 1

    run(main)


def test_wrong_or_missing_token_is_rejected_and_server_keeps_serving() -> None:
    async def main() -> None:
        token = generate_token()
        with structlog.testing.capture_logs() as logs:
            async with open_grpc_transport(token=token, limits=FAST) as server, \
                    open_grpc_transport(token="not-the-token", limits=FAST) as intruder, \
                    open_grpc_transport(token=token, limits=FAST) as friend:
                for i in range(5):
                    intruder.send(server.endpoint, beat(i))
                    await trio.sleep(0.05)
                assert await nothing_arrives(server, 0.3)
                status = await trio.to_thread.run_sync(raw_stream, server.endpoint, "", [b"x"])
                assert status == grpc.StatusCode.UNAUTHENTICATED
                friend.send(server.endpoint, beat(42))
                assert seqs(await receive_envelopes(server, 1)) == [42]
                assert server.stats.auth_rejected >= 2
                assert intruder.stats.auth_failures >= 1
                assert intruder.stats.connects == 0
        rejected = [entry for entry in logs if entry["event"] == "transport.auth_rejected"]
        assert {entry["reason"] for entry in rejected} == {"wrong token", "missing token"}
        assert all(entry["log_level"] == "warning" and entry["peer"] for entry in rejected)

    run(main)


def test_malformed_frames_are_dropped_and_server_keeps_serving() -> None:
    async def main() -> None:
        token = generate_token()
        wrong_type = msgspec.msgpack.encode([Envelope(src=A, dst=B, msg=TimerFired(key="t"))])
        mixed = msgspec.msgpack.encode([beat(1), {"not": "an envelope"}, beat(2)])
        frames = [b"\xc1garbage", b"", wrong_type, mixed, encode_batch([beat(3)])]
        with structlog.testing.capture_logs() as logs:
            async with open_grpc_transport(token=token) as server, \
                    open_grpc_transport(token=token) as friend:
                status = await trio.to_thread.run_sync(raw_stream, server.endpoint, token, frames)
                assert status == grpc.StatusCode.OK
                assert seqs(await receive_envelopes(server, 3)) == [1, 2, 3]
                assert server.stats.dropped_undecodable == 4
                friend.send(server.endpoint, beat(4))
                assert seqs(await receive_envelopes(server, 1)) == [4]
        dropped = [e for e in logs if e["event"] in ("transport.frame_dropped",
                                                      "transport.envelopes_dropped")]
        assert len(dropped) == 4
        assert all(entry["peer"] and entry["reasons"] for entry in dropped)

    run(main)


def test_peer_restart_reconnects_and_delivery_resumes() -> None:
    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token, limits=FAST) as a:
            async with open_grpc_transport(token=token, limits=FAST) as b:
                endpoint = b.endpoint
                a.send(endpoint, beat(0))
                assert seqs(await receive_envelopes(b, 1)) == [0]
            port = int(endpoint.rsplit(":", 1)[1])
            for i in range(1, 6):  # the peer is down: dropped, never blocking
                a.send(endpoint, beat(i))
                await trio.sleep(0.02)
            async with open_grpc_transport(token=token, port=port, limits=FAST) as b2:
                received: list[int] = []
                seq = 100
                with trio.fail_after(5):
                    while not received:
                        a.send(endpoint, beat(seq))
                        seq += 1
                        with trio.move_on_after(0.05):
                            received += seqs([await b2.incoming.receive()])
                    for i in range(1000, 1050):
                        a.send(endpoint, beat(i))
                    while len(received) < 50 or received[-1] != 1049:
                        received += seqs([await b2.incoming.receive()])
                assert received == sorted(received)
                assert received[-50:] == list(range(1000, 1050))
                assert a.stats.connects >= 2

    run(main)


def test_accepting_side_dials_back_when_the_dialer_restarts() -> None:
    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token, limits=FAST) as b:
            async with open_grpc_transport(token=token, limits=FAST) as a:
                endpoint = a.endpoint
                a.send(b.endpoint, beat(0))
                await receive_envelopes(b, 1)
                b.send(endpoint, beat(1, src=B, dst=A))  # over the stream a opened
                assert seqs(await receive_envelopes(a, 1)) == [1]
                assert b.stats.dials == 0
            port = int(endpoint.rsplit(":", 1)[1])
            async with open_grpc_transport(token=token, port=port, limits=FAST) as a2:
                received: list[int] = []
                with trio.fail_after(5):
                    seq = 2
                    while not received:
                        b.send(endpoint, beat(seq, src=B, dst=A))
                        seq += 1
                        with trio.move_on_after(0.05):
                            received += seqs([await a2.incoming.receive()])
                assert b.stats.dials >= 1 and b.stats.connects >= 1

    run(main)


def test_dial_that_is_never_accepted_times_out_and_is_retried() -> None:
    async def main() -> None:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts TCP, never speaks HTTP/2
        silent = f"127.0.0.1:{listener.getsockname()[1]}"
        limits = TransportLimits(connect_timeout_s=0.2, backoff_initial_s=0.02,
                                 backoff_max_s=0.05, close_grace_s=0.2)
        with listener:
            async with open_grpc_transport(token=generate_token(), limits=limits) as a:
                with trio.fail_after(5):
                    while a.stats.dials < 3:
                        a.send(silent, beat(a.stats.dials))
                        await trio.sleep(0.05)
                assert a.stats.connects == 0

    run(main)


def test_unreachable_peer_never_blocks_the_sender() -> None:
    async def main() -> None:
        token = generate_token()
        limits = TransportLimits(pending_max=100, backoff_initial_s=0.02, backoff_max_s=0.1)
        async with open_grpc_transport(token=token, limits=limits) as a:
            async with open_grpc_transport(token=token) as gone:
                dead = gone.endpoint
            with trio.fail_after(2):
                for i in range(5000):
                    a.send(dead, beat(i))
                    if i % 500 == 0:
                        await trio.sleep(0.01)
            await trio.sleep(0.01)  # the flusher bounds the queue once per round
            assert a.backlog(dead) <= 100
            assert a.stats.envelopes_received == 0

    run(main)


def test_closed_transport_ends_incoming_and_refuses_sends() -> None:
    async def main() -> None:
        async with open_grpc_transport(token=generate_token()) as a:
            pass
        with pytest.raises(trio.EndOfChannel):
            await a.incoming.receive()
        with pytest.raises(trio.ClosedResourceError):
            a.send("127.0.0.1:1", beat(0))

    run(main)


def test_shutdown_leaves_no_threads() -> None:
    before = set(threading.enumerate())

    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token) as a, open_grpc_transport(token=token) as b:
            for i in range(100):
                a.send(b.endpoint, beat(i))
                b.send(a.endpoint, beat(i, src=B, dst=A))
            await receive_envelopes(b, 100)
            await receive_envelopes(a, 100)
            await trio.to_thread.run_sync(raw_stream, a.endpoint, token, [encode_batch([beat(1)])])
            assert len(threading.enumerate()) > len(before)

    run(main)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        # trio keeps idle worker threads (from to_thread) for a while; they are daemons.
        stray = [t for t in set(threading.enumerate()) - before
                 if not t.name.startswith("Trio thread")]
        if not stray:
            break
        time.sleep(0.02)
    assert stray == []
    assert [t for t in set(threading.enumerate()) - before if not t.daemon] == []


def test_bind_failure_is_an_os_error() -> None:
    async def main() -> None:
        token = generate_token()
        async with open_grpc_transport(token=token) as a:
            port = int(a.endpoint.rsplit(":", 1)[1])
            with pytest.raises(OSError, match="cannot listen"):
                async with open_grpc_transport(token=token, port=port):
                    pass

    run(main)
