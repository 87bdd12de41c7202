"""Direct links between core workers (``runtime/direct_link.py``), in one trio run.

Two ``DirectLinks`` (a driver that connects, a worker that listens) talk over a
real Unix socket; the daemon's relay is simulated by ``Relay``, a gate that
holds relayed envelopes until the test lets them through (or drops them), so
the tests can make the relay slower than the link and check the order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from shoal.kernel.gcs.protocol import KvGet
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address
from shoal.kernel.wire import Envelope
from shoal.runtime.direct_link import RETRY_AFTER_S, DirectLinks, direct_socket_path

NODE = NodeId("n1")
DRIVER = Address(node=NODE, component="driver", worker="p1")
WORKER = Address(node=NODE, component="worker", worker="w1")
RAYLET = Address(node=NODE, component="raylet")
TOKEN = "t" * 32


def _msg(src: Address, dst: Address, n: int) -> Envelope:
    return Envelope(src=src, dst=dst, msg=KvGet(request_id=n, namespace="", key=b"k"))


def _ids(envelopes: list[Envelope]) -> list[int]:
    return [e.msg.request_id for e in envelopes]  # type: ignore[attr-defined]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Relay:
    """The daemon, simulated: relayed envelopes wait until ``flush`` delivers them."""

    def __init__(self) -> None:
        self.pending: list[Envelope] = []
        self.processes: dict[Address, DirectLinks] = {}

    def __call__(self, envelope: Envelope) -> None:
        self.pending.append(envelope)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for envelope in pending:
            self.processes[envelope.dst].on_relayed(envelope)


class Process:
    """One process's links and what its kernel received, in order."""

    def __init__(self, me: Address, session_dir: str, relay: Relay, token: str = TOKEN) -> None:
        self.received: list[Envelope] = []
        self.clock = Clock()
        self.links = DirectLinks(me=me, token=token, session_dir=session_dir, relay=relay,
                                 deliver=self.received.append, clock=self.clock)
        relay.processes[me] = self.links


@pytest.fixture
def session_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dl-", dir="/tmp")  # short: socket paths are limited
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _until(condition: Any) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.002)


def test_messages_go_direct_after_the_first_one_both_ways(session_dir: str) -> None:
    relay = Relay()
    driver, worker = Process(DRIVER, session_dir, relay), Process(WORKER, session_dir, relay)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: worker.links.run(
                listen=True, task_status=task_status))
            await nursery.start(lambda task_status: driver.links.run(
                listen=False, task_status=task_status))
            assert os.path.exists(direct_socket_path(session_dir, "w1"))
            assert oct(os.stat(direct_socket_path(session_dir, "w1")).st_mode & 0o777) == "0o600"
            for n in range(5):
                driver.links.send(_msg(DRIVER, WORKER, n))
            driver.links.send(_msg(DRIVER, RAYLET, 99))  # not a worker: relayed
            await _until(lambda: len(worker.received) == 5)
            for n in range(5, 8):
                worker.links.send(_msg(WORKER, DRIVER, n))  # back on the link it accepted
            await _until(lambda: len(driver.received) == 3)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _ids(worker.received) == [0, 1, 2, 3, 4]
    assert _ids(driver.received) == [5, 6, 7]
    assert driver.links.stats.sent_direct == 5 and worker.links.stats.sent_direct == 3
    assert [e.dst for e in relay.pending] == [RAYLET]
    assert driver.links.stats.links_opened == 1 and worker.links.stats.links_opened == 1
    assert not os.path.exists(direct_socket_path(session_dir, "w1")), "listener removes its file"


def test_a_link_never_overtakes_what_the_relay_still_carries(session_dir: str) -> None:
    relay = Relay()
    driver, worker = Process(DRIVER, session_dir, relay), Process(WORKER, session_dir, relay)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            # The worker does not listen yet: the driver's first sends fail over to the relay.
            await nursery.start(lambda task_status: driver.links.run(
                listen=False, task_status=task_status))
            driver.links.send(_msg(DRIVER, WORKER, 1))
            await _until(lambda: driver.links.stats.connect_failures == 1)
            driver.links.send(_msg(DRIVER, WORKER, 2))  # within RETRY_AFTER_S: relayed
            worker.links.send(_msg(WORKER, DRIVER, 101))  # a driver does not listen: relayed
            assert _ids(relay.pending) == [1, 2, 101]
            await nursery.start(lambda task_status: worker.links.run(
                listen=True, task_status=task_status))
            driver.clock.now += RETRY_AFTER_S
            for n in (3, 4, 5):
                driver.links.send(_msg(DRIVER, WORKER, n))
            await _until(lambda: worker.links.stats.received_direct == 3)
            worker.links.send(_msg(WORKER, DRIVER, 102))
            await _until(lambda: driver.links.stats.received_direct == 1)
            await trio.sleep(0.02)
            assert worker.received == [] and driver.received == [], "held behind the relay"
            relay.flush()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _ids(worker.received) == [1, 2, 3, 4, 5]
    assert _ids(driver.received) == [101, 102]
    assert worker.links.stats.held == 3 and driver.links.stats.held == 1


def test_without_a_listener_everything_goes_through_the_relay(session_dir: str) -> None:
    relay = Relay()
    driver, worker = Process(DRIVER, session_dir, relay), Process(WORKER, session_dir, relay)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: driver.links.run(
                listen=False, task_status=task_status))
            for n in range(4):
                driver.links.send(_msg(DRIVER, WORKER, n))
            await _until(lambda: driver.links.stats.connect_failures == 1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _ids(relay.pending) == [0, 1, 2, 3], "queued ones go to the relay in order"
    assert driver.links.stats.sent_direct == 0 and driver.links.stats.relayed == 4
    relay.flush()
    assert _ids(worker.received) == [0, 1, 2, 3]


def test_a_peer_with_the_wrong_token_is_refused_and_relays(session_dir: str) -> None:
    relay = Relay()
    worker = Process(WORKER, session_dir, relay)
    intruder = Process(DRIVER, session_dir, relay, token="x" * 32)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: worker.links.run(
                listen=True, task_status=task_status))
            await nursery.start(lambda task_status: intruder.links.run(
                listen=False, task_status=task_status))
            intruder.links.send(_msg(DRIVER, WORKER, 7))
            await _until(lambda: intruder.links.stats.connect_failures == 1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert worker.links.stats.rejected == 1 and worker.received == []
    assert _ids(relay.pending) == [7]


def test_garbage_on_the_socket_never_stops_the_listener(session_dir: str) -> None:
    relay = Relay()
    driver, worker = Process(DRIVER, session_dir, relay), Process(WORKER, session_dir, relay)
    path = direct_socket_path(session_dir, "w1")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: worker.links.run(
                listen=True, task_status=task_status))
            for junk in (b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff", b"\x00\x00"):
                stream = await trio.open_unix_socket(path)
                await stream.send_all(junk)
                await stream.send_eof()
                with trio.move_on_after(2):
                    while await stream.receive_some():
                        pass
                await stream.aclose()
            await nursery.start(lambda task_status: driver.links.run(
                listen=False, task_status=task_status))
            driver.links.send(_msg(DRIVER, WORKER, 1))
            await _until(lambda: worker.received)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert worker.links.stats.rejected == 3
    assert _ids(worker.received) == [1]


def test_held_envelopes_go_in_when_a_relayed_one_was_lost(session_dir: str) -> None:
    relay = Relay()
    driver, worker = Process(DRIVER, session_dir, relay), Process(WORKER, session_dir, relay)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: driver.links.run(
                listen=False, task_status=task_status))
            driver.links.send(_msg(DRIVER, WORKER, 1))  # relayed (no listener), then lost
            await _until(lambda: driver.links.stats.connect_failures == 1)
            relay.pending.clear()
            await nursery.start(lambda task_status: worker.links.run(
                listen=True, task_status=task_status))
            driver.clock.now += RETRY_AFTER_S
            driver.links.send(_msg(DRIVER, WORKER, 2))
            await _until(lambda: worker.links.stats.received_direct == 1)
            worker.links.release_overdue()
            assert worker.received == []
            worker.clock.now += 5.0
            worker.links.release_overdue()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _ids(worker.received) == [2]
    assert worker.links.stats.hold_timeouts == 1


def test_a_dead_peer_sends_its_link_back_to_the_relay(session_dir: str) -> None:
    relay = Relay()
    driver, worker = Process(DRIVER, session_dir, relay), Process(WORKER, session_dir, relay)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: driver.links.run(
                listen=False, task_status=task_status))
            async with trio.open_nursery() as worker_nursery:
                await worker_nursery.start(lambda task_status: worker.links.run(
                    listen=True, task_status=task_status))
                driver.links.send(_msg(DRIVER, WORKER, 1))
                await _until(lambda: worker.received)
                worker_nursery.cancel_scope.cancel()  # the worker process dies
            await _until(lambda: not driver.links.peers())
            driver.links.send(_msg(DRIVER, WORKER, 2))  # no listener any more
            await _until(lambda: driver.links.stats.connect_failures == 1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _ids(relay.pending) == [2]
