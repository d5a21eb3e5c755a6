"""Per-flow accounting in the userspace shaper's pipe: which flow a frame belongs to, and each
flow's arrivals and drops by cause, on real frames built with our codecs and a fake clock."""

from __future__ import annotations

import random
import struct

import pytest

from testbed.emu.linkparams import Shaping
from testbed.emu.shaper import core
from testbed.emu.shaper.core import OTHER_FLOWS, FlowCounters, Pipe, flow_key, flow_name
from testbed.stack.wire.arp import ARP_REQUEST, ArpPacket, emit_arp
from testbed.stack.wire.ethernet import EthernetFrame, emit_ethernet
from testbed.stack.wire.ipv4 import PROTO_TCP, PROTO_UDP, Ipv4Packet, emit_ipv4
from testbed.stack.wire.tcp import ACK, TcpSegment, emit_tcp

A, B, C = bytes([10, 0, 1, 1]), bytes([10, 0, 3, 1]), bytes([10, 0, 4, 1])
MAC = bytes.fromhex("020000000001")


def ethernet(packet: Ipv4Packet) -> bytes:
    return emit_ethernet(EthernetFrame(MAC, MAC, 0x0800, emit_ipv4(packet)))


def tcp(src: bytes, sport: int, dst: bytes = B, dport: int = 5201, size: int = 1000,
        options: bytes = b"") -> bytes:
    seg = TcpSegment(sport, dport, 1, 1, ACK, 65535, payload=bytes(size))
    return ethernet(Ipv4Packet(src=src, dst=dst, protocol=PROTO_TCP,
                               payload=emit_tcp(seg, src, dst), options=options))


def udp(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    payload = struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"ping"
    return ethernet(Ipv4Packet(src=src, dst=dst, protocol=PROTO_UDP, payload=payload))


def test_a_frame_is_keyed_by_protocol_addresses_and_ports() -> None:
    assert flow_name(flow_key(tcp(A, 41126))) == "tcp 10.0.1.1:41126>10.0.3.1:5201"
    assert flow_name(flow_key(udp(C, 53, B, 5353))) == "udp 10.0.4.1:53>10.0.3.1:5353"
    # The ports are found after IP options too.
    assert flow_key(tcp(A, 41126, options=bytes(4))) == flow_key(tcp(A, 41126))
    # Each direction and each port pair is a flow of its own.
    assert flow_key(tcp(A, 41126)) != flow_key(tcp(A, 41127))
    assert flow_key(tcp(A, 41126)) != flow_key(tcp(B, 5201, A, 41126))


def test_what_is_not_ipv4_tcp_or_udp_is_one_other_flow() -> None:
    arp = emit_ethernet(EthernetFrame(MAC, MAC, 0x0806, emit_arp(
        ArpPacket(ARP_REQUEST, MAC, A, bytes(6), B))))
    icmp = ethernet(Ipv4Packet(src=A, dst=B, protocol=1, payload=bytes(8)))
    for frame in (arp, icmp, b"", tcp(A, 1)[:30]):
        assert flow_key(frame) == OTHER_FLOWS
    assert flow_name(OTHER_FLOWS) == "other"


def conserved_per_flow(pipe: Pipe) -> None:
    """The flows' counters add up to the pipe's."""
    c, flows = pipe.counters, pipe.flows.values()
    assert sum(f.frames_in for f in flows) == c.frames_in - c.dropped_down
    for cause in ("dropped_loss", "dropped_early", "dropped_forced", "dropped_queue"):
        assert sum(getattr(f, cause) for f in flows) == getattr(c, cause)


def test_tail_drops_are_charged_to_the_flow_that_overflowed_the_queue() -> None:
    # 1 Mbit/s: a 1054-byte frame takes 8.4 ms; three frames fit in the FIFO.
    pipe = Pipe(Shaping(rate_mbps=1, queue_pkts=3), random.Random(1))
    bulk, late = tcp(A, 40000), tcp(C, 40001)
    for _ in range(5):  # a burst: 3 queued, 2 tail-dropped
        pipe.offer(bulk, 0.0)
    pipe.offer(late, 0.001)  # the queue is still full
    pipe.offer(late, 0.020)  # two frames have left by now
    flows = {flow_name(k): v for k, v in pipe.flows.items()}
    assert flows == {
        "tcp 10.0.1.1:40000>10.0.3.1:5201": FlowCounters(frames_in=5, dropped_queue=2),
        "tcp 10.0.4.1:40001>10.0.3.1:5201": FlowCounters(frames_in=2, dropped_queue=1),
    }
    assert flows["tcp 10.0.1.1:40000>10.0.3.1:5201"].dropped == 2
    conserved_per_flow(pipe)


@pytest.mark.parametrize("shaping", [
    Shaping(loss_pct=20),
    Shaping(rate_mbps=10, queue_pkts=25, aqm="red", red_min_pkts=2, red_max_pkts=6,
            red_weight=0.2),
], ids=["random-loss", "red"])
def test_random_and_red_drops_land_on_each_flow_in_proportion(shaping: Shaping) -> None:
    pipe = Pipe(shaping, random.Random(7))
    twice, once = tcp(A, 40000), tcp(C, 40001)
    frames = [twice, twice, once]
    order = random.Random(3)
    t = 0.0
    for _ in range(3000):
        # 1.5 frames per ms offered, 10 Mbit/s serves 1.2 of 1054 bytes. The order within a
        # round is shuffled: a fixed one would hand the last place, where the queue is
        # longest, to one flow (a phase effect, not what is tested here).
        order.shuffle(frames)
        for frame in frames:
            pipe.offer(frame, t)
            t += 0.002 / 3
            pipe.pop_due(t)
    conserved_per_flow(pipe)
    a, c = pipe.flows[flow_key(twice)], pipe.flows[flow_key(once)]
    assert (a.frames_in, c.frames_in) == (6000, 3000)
    assert a.dropped > 100 and c.dropped > 50
    # Both flows lose the same share of their frames (a random drop does not look at flows).
    assert a.dropped / a.frames_in == pytest.approx(c.dropped / c.frames_in, rel=0.15)
    if shaping.aqm == "red":
        assert a.dropped_early > 0 and c.dropped_early > 0


def test_flows_beyond_the_limit_are_counted_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_TRACKED_FLOWS", 3)
    pipe = Pipe(Shaping(), random.Random(1))
    for port in range(40000, 40006):
        pipe.offer(tcp(A, port), 0.0)
    pipe.offer(tcp(A, 40000), 0.0)  # a tracked flow stays tracked
    names = {flow_name(k): v.frames_in for k, v in pipe.flows.items()}
    assert names == {"tcp 10.0.1.1:40000>10.0.3.1:5201": 2,
                     "tcp 10.0.1.1:40001>10.0.3.1:5201": 1,
                     "tcp 10.0.1.1:40002>10.0.3.1:5201": 1,
                     "other": 3}
    conserved_per_flow(pipe)


def test_each_flow_has_a_series_of_arrivals_and_drops_per_bin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_SERIES_FLOWS", 1)
    pipe = Pipe(Shaping(rate_mbps=1, queue_pkts=1), random.Random(1), now=100.0)
    first, second = tcp(A, 40000), tcp(C, 40001)
    pipe.offer(first, 100.2)
    pipe.offer(first, 100.201)  # the first is still being sent (8.4 ms each): tail drop
    pipe.offer(second, 101.0)
    pipe.offer(first, 102.5)
    assert pipe.series_epoch == 100.0
    # Bins of FLOW_BIN_S from the pipe's start; only the first MAX_SERIES_FLOWS flows.
    assert pipe.flows[flow_key(first)].series == {0: [2, 1], 2: [1, 0]}
    assert pipe.flows[flow_key(second)].series is None
    assert pipe.flows[flow_key(second)].frames_in == 1
