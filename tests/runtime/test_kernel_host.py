"""The trio driver loop (``runtime/kernel_host.py``) under trio's mock clock."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio
import trio.testing
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import (
    Address,
    CancelTimer,
    Msg,
    Received,
    Rejected,
    Send,
    SetTimer,
    Started,
    StoreDelete,
    StorePut,
    TimerFired,
)
from shoal.runtime.gcs_store import FileStore
from shoal.runtime.kernel_host import KernelLoop, TimerWheel, UnhandledEffect

A = Address(node=NodeId("n1"), component="raylet")
B = Address(node=NodeId("n1"), component="gcs")
S = 1_000_000_000


class Echo:
    """A toy kernel: records every input with its time, answers with scripted effects."""

    def __init__(self, script: dict[str, list[Msg]] | None = None) -> None:
        self.seen: list[tuple[int, Msg]] = []
        self.script = script or {}

    def handle(self, event: Any, *, now: int) -> list[Msg]:
        self.seen.append((now, event))
        key = event.key if isinstance(event, TimerFired) else type(event).__name__
        return list(self.script.get(key, []))


def _mock_clock_ns() -> int:
    return int(trio.current_time() * S)


def _run(test: Any) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_timer_wheel_replaces_and_forgets() -> None:
    wheel = TimerWheel()
    wheel.set(A, "t", 5)
    wheel.set(A, "t", 9)  # replaces the first
    wheel.set(B, "t", 7)
    wheel.set(A, "gone", 1)
    wheel.cancel(A, "gone")
    assert wheel.next_deadline_ns() == 7
    assert wheel.pop_due(8) == [(B, "t")]
    assert wheel.pop_due(100) == [(A, "t")]
    assert wheel.next_deadline_ns() is None and len(wheel) == 0


def test_timers_fire_at_their_deadline_and_set_timer_replaces() -> None:
    kernel = Echo({"Started": [SetTimer(key="x", at_ns=2 * S), SetTimer(key="y", at_ns=3 * S),
                               SetTimer(key="x", at_ns=5 * S), CancelTimer(key="y")]})

    async def main() -> None:
        loop = KernelLoop(lambda *_: None, clock=_mock_clock_ns)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.post(A, Started())
            await trio.sleep(10)
            nursery.cancel_scope.cancel()

    _run(main)
    assert [(now, event) for now, event in kernel.seen] == [
        (0, Started()), (5 * S, TimerFired(key="x"))]


def test_effects_are_carried_out_in_order_and_sends_are_routed() -> None:
    routed: list[tuple[Address, Address, Msg]] = []
    reply = Rejected(request_type="X", reason="no")
    first = Echo({"Started": [Send(dst=B, msg=reply), StorePut(table="t", key=b"k", value=b"v"),
                              StoreDelete(table="t", key=b"gone")]})
    second = Echo()

    def route(src: Address, dst: Address, msg: Msg) -> None:
        routed.append((src, dst, msg))
        loop.post(dst, Received(src=src, msg=msg))  # like a daemon: a kernel of the same process

    class Store:
        def __init__(self) -> None:
            self.ops: list[tuple[str, str, bytes]] = []

        def put(self, table: str, key: bytes, value: bytes) -> None:
            self.ops.append(("put", table, key))

        def delete(self, table: str, key: bytes) -> None:
            self.ops.append(("delete", table, key))

    store = Store()
    loop = KernelLoop(route, clock=lambda: 0)

    async def main() -> None:
        loop.add_kernel(A, first, store=store)
        loop.add_kernel(B, second)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.post(A, Started())
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

    _run(main)
    assert routed == [(A, B, reply)]
    assert second.seen == [(0, Received(src=A, msg=reply))]
    assert store.ops == [("put", "t", b"k"), ("delete", "t", b"gone")]


def test_host_effects_go_to_the_handler_and_unknown_ones_crash_the_loop() -> None:
    handled: list[Msg] = []
    effect = Rejected(request_type="host", reason="a host effect")

    async def main(with_handler: bool) -> None:
        loop = KernelLoop(lambda *_: None, clock=lambda: 0)
        if with_handler:
            loop.add_kernel(A, Echo({"Started": [effect]}),
                            on_effect=lambda address, e: handled.append(e))
        else:
            loop.add_kernel(A, Echo({"Started": [effect]}))
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            loop.post(A, Started())
            await trio.sleep(1)
            nursery.cancel_scope.cancel()

    _run(lambda: main(True))
    assert handled == [effect]
    with pytest.raises(BaseExceptionGroup) as caught:  # trio's nurseries group errors
        _run(lambda: main(False))
    assert caught.group_contains(UnhandledEffect, match="no host handler for Rejected")


def test_inputs_from_other_threads_arrive_in_order() -> None:
    kernel = Echo()

    async def main() -> None:
        loop = KernelLoop(lambda *_: None)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)

            def producer() -> None:
                for i in range(100):
                    loop.post_from_thread([(A, TimerFired(key=str(i)))])

            await trio.to_thread.run_sync(producer)
            while len(kernel.seen) < 100:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        assert not loop.post_from_thread([(A, Started())])  # the loop has finished

    trio.run(main)
    assert [event.key for _, event in kernel.seen] == [str(i) for i in range(100)]


def test_file_store_recovers_its_tables_and_drops_a_torn_record(tmp_path: Any) -> None:
    path = str(tmp_path / "gcs.store")
    store = FileStore.open(path)
    store.put("nodes", b"n1", b"alive")
    store.put("kv", b"a", b"1")
    store.put("kv", b"a", b"2")
    store.delete("kv", b"missing")
    store.put("kv", b"b", b"3")
    store.delete("kv", b"b")
    store.close()
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x01\x00partial")  # the process died mid-write
    again = FileStore.open(path)
    assert again.tables == {"nodes": {b"n1": b"alive"}, "kv": {b"a": b"2"}}
    again.close()


class ThreadRecorder(Echo):
    """Echo that also records which thread ran each input."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def handle(self, event: Any, *, now: int) -> list[Msg]:
        self.threads.append(threading.get_ident())
        return super().handle(event, now=now)


def test_inline_rounds_run_in_the_posting_thread_while_trio_is_idle() -> None:
    kernel = ThreadRecorder()
    posters: list[int] = []

    async def main() -> None:
        loop = KernelLoop(lambda *_: None, inline_rounds=True)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            await trio.sleep(0.01)  # trio waits for I/O: the lock is free

            def producer() -> None:
                posters.append(threading.get_ident())
                for i in range(50):
                    assert loop.post_from_thread([(A, TimerFired(key=str(i)))])

            await trio.to_thread.run_sync(producer)
            assert len(kernel.seen) == 50, "handled before post_from_thread returned"
            assert loop.inline_rounds >= 1
            nursery.cancel_scope.cancel()
        assert not loop.post_from_thread([(A, Started())])  # the loop has finished

    trio.run(main)
    assert [event.key for _, event in kernel.seen] == [str(i) for i in range(50)]
    assert set(kernel.threads) == set(posters), "every round ran in the posting thread"


def test_inputs_posted_while_trio_holds_the_lock_are_handled_by_trio() -> None:
    kernel = ThreadRecorder()

    async def main() -> None:
        loop = KernelLoop(lambda *_: None, inline_rounds=True)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            trio_thread = threading.get_ident()
            started = threading.Event()

            def producer() -> None:
                started.set()
                for i in range(20):
                    loop.post_from_thread([(A, TimerFired(key=str(i)))])

            worker = threading.Thread(target=producer)
            worker.start()
            started.wait()
            time.sleep(0.05)  # noqa: ASYNC251  # trio holds the lock, blocked: no inline round
            worker.join()
            while len(kernel.seen) < 20:
                await trio.sleep(0.001)
            assert trio_thread in kernel.threads
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [event.key for _, event in kernel.seen] == [str(i) for i in range(20)]


def test_a_timer_armed_in_a_user_threads_round_fires() -> None:
    kernel = Echo({"arm": [SetTimer(key="soon", at_ns=0)]})

    async def main() -> None:
        loop = KernelLoop(lambda *_: None, inline_rounds=True)
        loop.add_kernel(A, kernel)
        async with trio.open_nursery() as nursery:
            await nursery.start(loop.run)
            await trio.sleep(0.01)

            def producer() -> None:
                loop.post_from_thread([(A, TimerFired(key="arm"))])

            await trio.to_thread.run_sync(producer)
            with trio.fail_after(5):
                while not any(getattr(e, "key", "") == "soon" for _, e in kernel.seen):
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()

    trio.run(main)
