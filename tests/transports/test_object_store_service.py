"""The multi-process side of the object store: the daemon's service and server, the client.

The server runs on its own thread in the test process and the clients connect over a
real Unix socket, so everything but the process boundary is exercised (the
integration tests in ``tests/runtime/test_object_store_cluster.py`` cross it).
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from shoal.transports.object_store import SharedMemoryStore
from shoal.transports.object_store_client import StoreClient
from shoal.transports.object_store_errors import (
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreFullError,
)
from shoal.transports.object_store_memory import remove_stale_arenas
from shoal.transports.object_store_protocol import (
    PROTOCOL_VERSION,
    StoreHello,
    StoreRefused,
    decode_replies,
    encode_packet,
)
from shoal.transports.object_store_service import StoreServer, StoreService
from shoal.transports.serialization import deserialize_from, serialize

MIB = 1 << 20
TOKEN = "secret-token"
_names = itertools.count()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SharedMemoryStore]:
    name = f"svc-{os.getpid()}-{next(_names)}"
    shm_store = SharedMemoryStore(name, 16 * MIB, tmp_path / "spill")
    try:
        yield shm_store
    finally:
        shm_store.close()
        assert not os.path.exists(shm_store.path)


@pytest.fixture
def server(store: SharedMemoryStore, tmp_path: Path) -> Iterator[StoreServer]:
    srv = StoreServer(StoreService(store), str(tmp_path / "store.sock"), TOKEN)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        assert not os.path.exists(srv.path)


@pytest.fixture
def client(server: StoreServer) -> Iterator[StoreClient]:
    c = StoreClient(server.path, TOKEN)
    try:
        yield c
    finally:
        c.close()


def _settle(client: StoreClient, server: StoreServer, leases: int, timeout_s: float = 15.0):
    """Flushes released leases and waits until the server holds ``leases`` of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        gc.collect()
        client.flush_releases()
        if server.service.lease_count() == leases or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert server.service.lease_count() == leases


def test_a_value_written_and_sealed_reads_back_zero_copy_and_read_only(
        client: StoreClient, server: StoreServer, store: SharedMemoryStore) -> None:
    array = np.arange(MIB // 8, dtype=np.int64)
    view = client.write(serialize(array))
    assert not store.contains("obj")  # written, not an object yet
    assert client.seal("obj", view) == serialize(array).total_bytes
    assert store.contains("obj")
    first, second = deserialize_from(client.open("obj")), deserialize_from(client.open("obj"))
    assert np.array_equal(first, array)
    assert not first.flags.writeable and np.shares_memory(first, second)
    assert np.shares_memory(first, np.frombuffer(view, dtype=np.uint8))  # sealed in place
    del view, first, second
    _settle(client, server, 0)
    store.check_invariants()


def test_bytes_from_elsewhere_are_copied_in(client: StoreClient, store: SharedMemoryStore):
    data = os.urandom(300_000)
    assert client.seal("blob", data, primary=False) == len(data)
    assert bytes(client.open("blob")) == data
    assert store.stats().num_pinned == 0  # a secondary copy


def test_a_primary_copy_is_pinned_and_spilled_not_evicted(
        client: StoreClient, server: StoreServer, store: SharedMemoryStore) -> None:
    for i in range(3):  # 3 x 6 MiB in a 16 MiB store
        client.seal(f"p{i}", np.full(6 * MIB, i, dtype=np.uint8))
    _settle(client, server, 0)
    stats = store.stats()
    assert stats.num_pinned == 3 and stats.spills_total >= 1 and stats.evictions_total == 0
    for i in range(3):
        value = np.frombuffer(client.open(f"p{i}"), dtype=np.uint8)
        assert value[0] == i and value[-1] == i
        del value
        _settle(client, server, 0)


def test_a_lease_keeps_its_region_until_released(
        client: StoreClient, server: StoreServer, store: SharedMemoryStore) -> None:
    client.seal("held", np.ones(10 * MIB, dtype=np.uint8))
    held = client.open("held")
    _settle(client, server, 1)
    with pytest.raises(ObjectStoreFullError, match="held by live readers"):
        client.write(serialize(np.zeros(10 * MIB, dtype=np.uint8)))
    del held
    _settle(client, server, 0)
    view = client.write(serialize(np.zeros(10 * MIB, dtype=np.uint8)))  # spills "held"
    client.seal("next", view)
    assert store.stats().spills_total == 1


def test_an_unsealed_region_is_freed_when_dropped(
        client: StoreClient, server: StoreServer, store: SharedMemoryStore) -> None:
    view = client.write(serialize(np.zeros(8 * MIB, dtype=np.uint8)))
    assert store.used_bytes > 8 * MIB
    del view
    _settle(client, server, 0)
    assert store.used_bytes == 0 and store.stats().num_objects == 0


def test_sealing_replaces_an_older_copy(client: StoreClient, store: SharedMemoryStore) -> None:
    client.seal("r", np.zeros(MIB, dtype=np.uint8))
    client.seal("r", np.ones(MIB, dtype=np.uint8))
    assert np.frombuffer(client.open("r"), dtype=np.uint8)[0] == 1
    assert store.stats().num_objects == 1


def test_a_missing_object_says_so(client: StoreClient, server: StoreServer) -> None:
    server.service.missing_reasons["gone"] = "its transfer could not be stored"
    with pytest.raises(ObjectNotFoundError, match="its transfer could not be stored"):
        client.open("gone")
    with pytest.raises(ObjectNotFoundError, match="not in the object store"):
        client.open("never")


def test_a_disconnected_client_loses_its_leases(server: StoreServer, store: SharedMemoryStore):
    other = StoreClient(server.path, TOKEN)
    other.seal("kept", np.ones(MIB, dtype=np.uint8))
    reader, pending = other.open("kept"), other.write(serialize(np.ones(MIB, np.uint8)))
    assert server.service.lease_count() == 2
    other.close()
    deadline = time.monotonic() + 15  # generous: a loaded machine, a large heap to collect
    while server.service.lease_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.service.lease_count() == 0
    assert store.stats().num_objects == 1  # the sealed object stays, the pending one went
    assert bytes(reader[:1]) == b"\x01" and pending.nbytes  # our views stay readable


def test_a_full_store_names_the_sizes(client: StoreClient, store: SharedMemoryStore) -> None:
    with pytest.raises(ObjectStoreFullError) as info:
        client.write(serialize(np.zeros(20 * MIB, dtype=np.uint8)))
    assert str(store.capacity_bytes) in str(info.value)
    assert info.value.capacity_bytes == store.capacity_bytes and info.value.size > 20 * MIB


def test_bad_peers_are_refused_and_the_server_keeps_serving(
        client: StoreClient, server: StoreServer) -> None:
    with pytest.raises(ObjectStoreError, match="refused"):
        StoreClient(server.path, "wrong-token")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw.connect(server.path)
    raw.send(b"\xc1 not msgpack")
    assert raw.recv(100) == b""  # dropped
    raw.close()
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw.connect(server.path)
    raw.send(encode_packet([StoreHello(version=PROTOCOL_VERSION + 1, token=TOKEN, pid=1)]))
    reply = decode_replies(raw.recv(1000))
    assert isinstance(reply[0], StoreRefused) and reply[0].kind == "unauthorized"
    raw.close()
    client.seal("still", b"x" * 200_000)  # the good client was never disturbed
    assert bytes(client.open("still")[:1]) == b"x"


def test_stale_arenas_of_dead_processes_are_removed(tmp_path: Path) -> None:
    code = ("import sys, time; from shoal.transports.object_store import SharedMemoryStore; "
            "s = SharedMemoryStore(sys.argv[1], 1 << 20, sys.argv[2], shm_dir=sys.argv[2]); "
            "print('up', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-P", "-c", code, "dead", str(tmp_path)],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"up\n"
    live = SharedMemoryStore("live", 1 << 20, tmp_path, shm_dir=tmp_path)
    try:
        old = time.time() - 60
        for path in (tmp_path / "shoal-dead-arena", Path(live.path)):
            os.utime(path, (old, old))
        assert remove_stale_arenas(str(tmp_path)) == []  # both owners are alive
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert remove_stale_arenas(str(tmp_path)) == [str(tmp_path / "shoal-dead-arena")]
        assert os.path.exists(live.path)
    finally:
        live.close()


def test_an_unused_read_lease_is_cached_briefly_and_reused(
        client: StoreClient, server: StoreServer, store: SharedMemoryStore) -> None:
    client.seal("c", np.full(MIB, 3, dtype=np.uint8))
    for _ in range(5):  # get in a loop, dropping the value: one lease, reused
        view = client.open("c")
        assert bytes(view[:1]) == b"\x03"
        del view
        _settle(client, server, 1)
    time.sleep(0.6)  # idle past CACHE_IDLE_S: released
    _settle(client, server, 0)


def test_cached_leases_give_way_when_the_store_is_full(
        client: StoreClient, server: StoreServer, store: SharedMemoryStore) -> None:
    client.seal("a", np.ones(MIB, dtype=np.uint8))
    view = client.open("a")
    del view  # cached: its region is still leased
    _settle(client, server, 1)
    client.seal("b", np.ones(15 * MIB + 4096, dtype=np.uint8))  # "a" must be spilled
    assert store.stats().spills_total == 1
    _settle(client, server, 0)
