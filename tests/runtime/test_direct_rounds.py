"""The hot path's loop mechanics: rounds run at once (``KernelLoop.run_now``) and
writes deferred to a round's end (``RoundFlush``, ``Connection.flush_now``)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing
from shoal.kernel.gcs.protocol import KvGet
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address, Msg, Received, Send, SetTimer, Started, TimerFired
from shoal.kernel.wire import Envelope, decode_batch
from shoal.runtime.kernel_host import KernelLoop
from shoal.runtime.local_transport import Connection, FramedStream, LocalLimits

A = Address(node=NodeId("n1"), component="raylet")
W = Address(node=NodeId("n1"), component="worker", worker="w1")
S = 1_000_000_000


class Echo:
    """A toy kernel: records its inputs, answers with scripted effects."""

    def __init__(self, script: dict[str, list[Msg]] | None = None) -> None:
        self.seen: list[tuple[int, Msg]] = []
        self.script = script or {}

    def handle(self, event: Any, *, now: int) -> list[Msg]:
        self.seen.append((now, event))
        key = event.key if isinstance(event, TimerFired) else type(event).__name__
        return list(self.script.get(key, []))


def _mock_clock_ns() -> int:
    return int(trio.current_time() * S)


def _kv(n: int) -> Envelope:
    return Envelope(src=W, dst=A, msg=KvGet(request_id=n, namespace="", key=b"k"))


def test_run_now_handles_inputs_before_returning_and_flushes_at_the_round_end() -> None:
    sent: list[tuple[Address, Msg]] = []
    flushed: list[int] = []
    kernel = Echo({"Received": [Send(dst=W, msg=KvGet(request_id=9, namespace="", key=b""))]})

    async def main() -> None:
        def route(src: Address, dst: Address, msg: Msg) -> None:  # sees the round active
            sent.append((dst, msg))
            assert loop.round_flush.defer(lambda: flushed.append(len(sent)))

        loop = KernelLoop(route)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.post(A, Received(src=W, msg=KvGet(request_id=1, namespace="", key=b"")),
                      wake=False)
            loop.post(A, Received(src=W, msg=KvGet(request_id=2, namespace="", key=b"")),
                      wake=False)
            loop.run_now()  # no await: the round ran here
            assert len(kernel.seen) == 2 and len(sent) == 2
            assert flushed == [2, 2], "deferred work ran once the round's inputs were handled"
            assert not loop.round_flush.defer(lambda: None), "outside a round: do it now"
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_timer_armed_by_an_inline_round_wakes_the_sleeping_loop() -> None:
    kernel = Echo({"Started": [SetTimer(key="late", at_ns=100 * S)],
                   "Received": [SetTimer(key="soon", at_ns=2 * S)]})

    async def main() -> None:
        loop = KernelLoop(lambda *_: None, clock=_mock_clock_ns)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.post(A, Started())
            await trio.sleep(1)  # the loop task now sleeps toward 100 s
            loop.post(A, Received(src=W, msg=KvGet(request_id=1, namespace="", key=b"")),
                      wake=False)
            loop.run_now()
            await trio.sleep(5)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    fired = [(now, event.key) for now, event in kernel.seen if isinstance(event, TimerFired)]
    assert fired == [(2 * S, "soon")]


def test_round_end_writes_go_inline_and_a_large_rest_goes_to_the_writer() -> None:
    received: list[Envelope] = []
    big = Envelope(src=W, dst=A, msg=KvGet(request_id=99, namespace="", key=b"x" * (8 << 20)))

    async def main() -> None:
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        loop = KernelLoop(lambda *_: None)
        limits = LocalLimits()
        sender = Connection(FramedStream(trio.SocketStream(trio.socket.from_stdlib_socket(left)),
                                         limits.frame_bytes_max), A, limits, None,
                            loop.round_flush)
        reader = FramedStream(trio.SocketStream(trio.socket.from_stdlib_socket(right)),
                              limits.frame_bytes_max)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run_writer)
            loop.round_flush.active = True  # as during a round
            for n in range(3):
                sender.send(_kv(n))
            loop.round_flush.active = False
            loop.round_flush.run()
            assert sender.inline_writes == 1 and sender.idle, "one inline write, no writer"
            loop.round_flush.active = True
            sender.send(big)  # larger than the socket buffer: the writer finishes it
            sender.send(_kv(100))
            loop.round_flush.active = False
            loop.round_flush.run()
            while len(received) < 5:
                frame = await reader.receive()
                assert frame is not None
                received.extend(decode_batch(frame))
            nursery.cancel_scope.cancel()
        left.close()
        right.close()

    trio.run(main)
    assert [e.msg.request_id for e in received] == [0, 1, 2, 99, 100]  # type: ignore[attr-defined]
    assert received[3] == big


class Broken:
    def handle(self, event: Any, *, now: int) -> list[Msg]:
        if isinstance(event, Received):
            raise RuntimeError("kernel bug")  # noqa: TRY004
        return []


def test_a_kernel_that_raises_in_an_inline_round_ends_the_loop_not_the_reader() -> None:
    absorbed: list[BaseException] = []

    async def main() -> None:
        loop = KernelLoop(lambda *_: None)
        loop.add_kernel(A, Broken())
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.post(A, Received(src=W, msg=KvGet(request_id=1, namespace="", key=b"")),
                      wake=False)
            try:
                loop.run_now()  # as a reader would, which may absorb what it catches
            except Exception as exc:  # noqa: BLE001
                absorbed.append(exc)
            await trio.sleep(5)  # the loop's task raises long before

    with pytest.raises(BaseExceptionGroup) as caught:
        trio.run(main)
    assert caught.group_contains(RuntimeError, match="kernel bug")
    assert absorbed == []
