"""How many MB of simulated transfer our TCP core moves per CPU second (not a test).

Two of our stacks over the in-memory network (tests/protocol/netsim.py) with no loss:
once through the IPv4/TCP wire codecs (what a runtime pays), once with segments handed
across as values (the connection and demux alone). Prints one line per case and JSON with
--json.

    .venv/bin/python benchmarks/tcp_core.py [--mb 20] [--delay-ms 5] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.stack.tcp.connection import TcpConfig
from testbed.stack.wire.tcp import TcpSegment
from tests.protocol.hosts import BulkSender, Sink, TcpHost
from tests.protocol.netsim import Network, PathConditions

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def with_codecs(data: bytes, delay_s: float, config: TcpConfig) -> tuple[float, float, bool]:
    net = Network(1, max_events=100_000_000)
    client = TcpHost("client", A, seed=1, config=config)
    server = TcpHost("server", B, seed=2, config=config)
    net.attach(client)
    net.attach(server)
    net.connect("client", "server", PathConditions(delay_s=delay_s))
    net.trace = _NoTrace()  # type: ignore[assignment]
    sink = Sink(server.stack.listen(B, 5001))
    server.apps.append(sink)
    sender = BulkSender(B, 5001, data)
    client.apps.append(sender)
    start = time.process_time()
    net.run(3600.0, stop=lambda: sink.eof_at is not None)
    cpu = time.process_time() - start
    return cpu, net.now, sink.sha256() == hashlib.sha256(data).hexdigest()


class _NoTrace(list[object]):
    """netsim keeps every packet for its trace; a benchmark does not need it."""

    def append(self, item: object) -> None:
        pass


def core_only(data: bytes, delay_s: float, config: TcpConfig) -> tuple[float, float, bool]:
    """The same transfer on a tiny event loop of our own: segments cross as values."""
    client = TcpHost("client", A, seed=1, config=config)
    server = TcpHost("server", B, seed=2, config=config)
    sink = Sink(server.stack.listen(B, 5001))
    sender = BulkSender(B, 5001, data)
    queue: list[tuple[float, int, TcpHost, bytes, bytes, TcpSegment]] = []
    n = 0
    now = 0.0
    start = time.process_time()
    while sink.eof_at is None:
        sender.step(client, now)
        sink.step(server, now)
        for host, peer in ((client, server), (server, client)):
            for src, dst, seg in host.stack.segments_to_send(now):
                n += 1
                heapq.heappush(queue, (now + delay_s, n, peer, src, dst, seg))
        times = [t for t in (client.next_timer(), server.next_timer()) if t is not None]
        if queue:
            times.append(queue[0][0])
        if not times:
            break
        nxt = min(times)
        now = max(now, nxt)
        if queue and queue[0][0] <= now:
            # One segment per turn, as netsim does, so each may draw its own ACK.
            _, _, peer, src, dst, seg = heapq.heappop(queue)
            peer.stack.receive(src, dst, seg, now)
        client.handle_timer(now)
        server.handle_timer(now)
    cpu = time.process_time() - start
    return cpu, now, sink.sha256() == hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    data = random.Random(0).randbytes(size)
    config = TcpConfig()
    results = {}
    for name, run in (("netsim+codecs", with_codecs), ("core only", core_only)):
        cpu, sim_s, ok = run(data, args.delay_ms / 1000, config)
        results[name] = {"mb": args.mb, "cpu_s": round(cpu, 3), "sim_s": round(sim_s, 3),
                         "mb_per_cpu_s": round(args.mb / cpu, 2), "sha256_match": ok,
                         "mbit_per_cpu_s": round(args.mb * 8 / cpu, 1)}
        if not args.json:
            print(f"{name:14s} {args.mb:.0f} MB in {cpu:.2f} CPU s "
                  f"({args.mb / cpu:.1f} MB/s = {args.mb * 8 / cpu:.0f} Mbit/s per CPU second; "
                  f"simulated {sim_s:.2f} s; sha256 {'ok' if ok else 'MISMATCH'})")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
