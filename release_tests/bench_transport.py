"""Benchmark of the gRPC transport between two processes on loopback.

Usage: ``python release_tests/bench_transport.py [--quick]``; prints one JSON object.

The driver starts an echo process (this file with ``--serve``) and measures:

* ``rtt_single``: ping-pong of one envelope at a time (round-trip latency, us);
* ``rtt_batch_100``: ping-pong of 100 envelopes sent in one round;
* ``one_way_paced``: one-way envelopes/s when every send is its own trio round
  (the flusher runs between sends; batching only happens in the writer thread
  while gRPC is busy);
* ``one_way_burst``: one-way envelopes/s when the sender sends as fast as it can
  (many sends per round), ``one_way_burst_1kib`` the same with 1 KiB payloads.

Throughput runs keep a window of unacknowledged envelopes: the echo process
acknowledges each received batch with the count received so far, which the
sender needs anyway, because the transport drops rather than blocks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time

import structlog
import trio
import trio.lowlevel
from shoal.kernel.gcs.protocol import Heartbeat, KvExists, KvExistsReply, KvPut, UnregisterNode
from shoal.kernel.ids import NodeId
from shoal.kernel.messages import Address
from shoal.kernel.wire import Envelope
from shoal.transports.grpc_transport import GrpcTransport, generate_token, open_grpc_transport

DRIVER = Address(node=NodeId("bench-driver"), component="driver")
ECHO = Address(node=NodeId("bench-echo"), component="raylet")


def _quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# --- echo process -----------------------------------------------------------


async def _serve(token: str) -> None:
    async with open_grpc_transport(token=token) as t:
        print(t.endpoint, flush=True)
        received: dict[str, int] = {}  # per run: the namespace is "driver-endpoint run"
        async for batch in t.incoming:
            reply_to = ""
            for env in batch:
                msg: object = env.msg
                if isinstance(msg, Heartbeat):  # ping: echo it back
                    t.send(msg.node_id, Envelope(src=ECHO, dst=env.src, msg=msg))
                elif isinstance(msg, (KvExists, KvPut)):  # throughput: count it
                    received[msg.namespace] = received.get(msg.namespace, 0) + 1
                    reply_to = msg.namespace
                elif isinstance(msg, UnregisterNode):
                    return
            if reply_to:  # one acknowledgement per batch
                ack = KvExistsReply(request_id=received[reply_to], exists=True)
                t.send(reply_to.split()[0], Envelope(src=ECHO, dst=DRIVER, msg=ack))


# --- driver -----------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


async def _ping_pong(t: GrpcTransport, peer: str, rounds: int, per_round: int) -> dict[str, float]:
    ping = Envelope(src=DRIVER, dst=ECHO,
                    msg=Heartbeat(node_id=NodeId(t.endpoint), incarnation=1, view_version=0))
    samples: list[float] = []
    for index in range(rounds + rounds // 10):
        started = time.perf_counter()
        for _ in range(per_round):
            t.send(peer, ping)
        got = 0
        while got < per_round:
            got += len(await t.incoming.receive())
        if index >= rounds // 10:  # the first tenth warms up
            samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return {
        "rounds": rounds,
        "envelopes_per_round": per_round,
        "p50_us": round(_percentile(samples, 0.50), 1),
        "p90_us": round(_percentile(samples, 0.90), 1),
        "p99_us": round(_percentile(samples, 0.99), 1),
        "mean_us": round(sum(samples) / len(samples), 1),
    }


async def _one_way(
    t: GrpcTransport, peer: str, total: int, *, paced: bool, payload: int, window: int
) -> dict[str, float]:
    run_name = f"{t.endpoint} {time.monotonic_ns()}"

    def make(i: int) -> Envelope:
        if payload:
            msg: KvExists | KvPut = KvPut(request_id=i, namespace=run_name, key=b"k",
                                          value=b"v" * payload)
        else:
            msg = KvExists(request_id=i, namespace=run_name, key=b"k")
        return Envelope(src=DRIVER, dst=ECHO, msg=msg)

    envelopes = [make(i) for i in range(2048)]
    frames_before = t.stats.frames_sent
    started = time.perf_counter()
    sent = acked = 0
    while acked < total:
        while sent < total and sent - acked < window:
            t.send(peer, envelopes[sent % len(envelopes)])
            sent += 1
            if paced:
                await trio.lowlevel.checkpoint()
        for env in await t.incoming.receive():
            msg: object = env.msg
            if isinstance(msg, KvExistsReply):
                acked = max(acked, msg.request_id)
    elapsed = time.perf_counter() - started
    frames = t.stats.frames_sent - frames_before
    return {
        "envelopes": total,
        "payload_bytes": payload,
        "envelopes_per_s": round(total / elapsed),
        "mb_per_s": round(total * payload / elapsed / 1e6, 1) if payload else 0.0,
        "envelopes_per_frame": round(total / max(frames, 1), 1),
        "seconds": round(elapsed, 3),
    }


async def _drive(peer: str, token: str, quick: bool) -> dict[str, object]:
    scale = 10 if quick else 1
    async with open_grpc_transport(token=token) as t:
        results: dict[str, object] = {}
        results["rtt_single"] = await _ping_pong(t, peer, 3000 // scale, 1)
        results["rtt_batch_100"] = await _ping_pong(t, peer, 1000 // scale, 100)
        results["one_way_paced"] = await _one_way(
            t, peer, 50_000 // scale, paced=True, payload=0, window=5_000)
        results["one_way_burst"] = await _one_way(
            t, peer, 1_000_000 // scale, paced=False, payload=0, window=50_000)
        results["one_way_burst_1kib"] = await _one_way(
            t, peer, 200_000 // scale, paced=False, payload=1024, window=20_000)
        stats = t.stats
        results["dropped"] = stats.dropped_overflow + stats.dropped_undecodable
        t.send(peer, Envelope(src=DRIVER, dst=ECHO,
                              msg=UnregisterNode(node_id=NodeId("bench"), incarnation=0)))
        await trio.sleep(0.05)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="run the echo process")
    parser.add_argument("--token", default="")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    args = parser.parse_args()
    _quiet_logs()
    if args.serve:
        trio.run(_serve, args.token)
        return
    token = generate_token()
    echo = subprocess.Popen([sys.executable, __file__, "--serve", "--token", token],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        peer = echo.stdout.readline().strip()
        results = trio.run(_drive, peer, token, args.quick)
        echo.wait(timeout=10)
    finally:
        if echo.poll() is None:
            echo.kill()
            echo.wait()
    report = {
        "benchmark": "transport_grpc_loopback",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
