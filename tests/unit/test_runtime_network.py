"""The stack's L2/L3 endpoint driven with exact frames and times: ARP answers and resolution,
route choice by source address, ICMP echo replies byte for byte, bad frames counted."""

from __future__ import annotations

import ipaddress

import pytest

from testbed.errors import ParameterError
from testbed.runtime.neighbours import MAX_REQUESTS, QUEUE_LEN, RETRY_S, NeighbourTable
from testbed.runtime.network import NetworkLayer
from testbed.runtime.routes import Interface, RouteTable, parse_iface_spec
from testbed.stack.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, emit_arp, parse_arp
from testbed.stack.wire.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetFrame,
    emit_ethernet,
    parse_ethernet,
)
from testbed.stack.wire.icmp import IcmpEcho, emit_icmp, parse_icmp
from testbed.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import ACK, PSH, TcpSegment, TimestampOption, emit_tcp

OUR_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000099")
GW_MAC = bytes.fromhex("0200000000fe")
OUR_IP = ipaddress.IPv4Address("10.0.1.1").packed
PEER_IP = ipaddress.IPv4Address("10.0.1.7").packed
GW_IP = ipaddress.IPv4Address("10.0.1.254").packed
FAR_IP = ipaddress.IPv4Address("10.0.3.1").packed


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def two_interfaces() -> list[Interface]:
    return [
        Interface("eth0", OUR_MAC, ipaddress.IPv4Interface("10.0.1.1/24"),
                  ipaddress.IPv4Address("10.0.1.254")),
        Interface("eth1", bytes.fromhex("020000000002"), ipaddress.IPv4Interface("10.0.2.1/24"),
                  ipaddress.IPv4Address("10.0.2.254")),
    ]


def layer() -> NetworkLayer:
    return NetworkLayer(two_interfaces()[:1])


def arp_frame(op: int, sender_mac: bytes, sender_ip: bytes, target_ip: bytes,
              dst: bytes = BROADCAST_MAC) -> bytes:
    arp = ArpPacket(op, sender_mac, sender_ip, b"\0" * 6, target_ip)
    return emit_ethernet(EthernetFrame(dst, sender_mac, ETHERTYPE_ARP, emit_arp(arp)))


def echo_request_frame(data: bytes = b"abcdefgh" * 7) -> bytes:
    icmp = emit_icmp(IcmpEcho(reply=False, ident=0x1234, seq=7, data=data))
    packet = emit_ipv4(Ipv4Packet(src=PEER_IP, dst=OUR_IP, protocol=PROTO_ICMP, payload=icmp))
    return emit_ethernet(EthernetFrame(OUR_MAC, PEER_MAC, ETHERTYPE_IPV4, packet))


def test_arp_request_for_our_address_is_answered_and_the_asker_learned() -> None:
    net = layer()
    net.receive_frame("eth0", arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, OUR_IP), now=1.0)
    [(iface, frame)] = net.frames_to_send()
    eth = parse_ethernet(frame)
    assert (iface, eth.dst, eth.src, eth.ethertype) == ("eth0", PEER_MAC, OUR_MAC, ETHERTYPE_ARP)
    assert parse_arp(eth.payload) == ArpPacket(ARP_REPLY, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP)
    # The reply to the ping that usually follows needs no ARP round of its own.
    net.receive_frame("eth0", echo_request_frame(), now=1.001)
    [(_, reply)] = net.frames_to_send()
    assert parse_ethernet(reply).dst == PEER_MAC


def test_arp_for_someone_else_is_not_answered_and_creates_no_entry() -> None:
    net = layer()
    net.receive_frame("eth0", arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, ip("10.0.1.50")), 1.0)
    assert net.frames_to_send() == []
    # Our echo reply to PEER then has to ask first: nothing was learned from the broadcast.
    net.receive_frame("eth0", echo_request_frame(), now=1.1)
    [(_, frame)] = net.frames_to_send()
    eth = parse_ethernet(frame)
    assert eth.dst == BROADCAST_MAC and parse_arp(eth.payload).target_ip == PEER_IP


def test_echo_reply_bytes() -> None:
    net = layer()
    net.receive_frame("eth0", arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_IP, OUR_MAC), 0.5)
    data = bytes(range(56))
    net.receive_frame("eth0", echo_request_frame(data), now=1.0)
    [(_, frame)] = net.frames_to_send()
    eth = parse_ethernet(frame)
    packet = parse_ipv4(eth.payload)
    assert (packet.src, packet.dst, packet.protocol) == (OUR_IP, PEER_IP, PROTO_ICMP)
    assert parse_icmp(packet.payload) == IcmpEcho(reply=True, ident=0x1234, seq=7, data=data)
    # Exactly the request's ICMP bytes with type 0 and the checksum adjusted by 8 << 8.
    request_icmp = emit_icmp(IcmpEcho(reply=False, ident=0x1234, seq=7, data=data))
    assert packet.payload[0] == 0 and packet.payload[4:] == request_icmp[4:]
    assert net.counters["IcmpInEchos"] == net.counters["IcmpOutEchoReps"] == 1


def test_packets_wait_for_arp_and_leave_in_order_once_resolved() -> None:
    net = layer()
    for seq in range(3):
        icmp = emit_icmp(IcmpEcho(reply=True, ident=1, seq=seq))
        net.send_ipv4(Ipv4Packet(src=OUR_IP, dst=FAR_IP, protocol=PROTO_ICMP, payload=icmp), 2.0)
    [(_, request)] = net.frames_to_send()
    assert parse_arp(parse_ethernet(request).payload).target_ip == GW_IP  # via the gateway
    net.receive_frame("eth0", arp_frame(ARP_REPLY, GW_MAC, GW_IP, OUR_IP, OUR_MAC), 2.01)
    frames = net.frames_to_send()
    assert [parse_ethernet(f).dst for _, f in frames] == [GW_MAC] * 3
    seqs = [parse_icmp(parse_ipv4(parse_ethernet(f).payload).payload) for _, f in frames]
    assert [m.seq for m in seqs if isinstance(m, IcmpEcho)] == [0, 1, 2]


def test_neighbour_table_retries_then_gives_up_and_drops_the_queue() -> None:
    table = NeighbourTable()
    assert table.enqueue(GW_IP, b"p0", now=0.0) is not None
    assert table.enqueue(GW_IP, b"p1", now=0.1) is None  # one request in flight is enough
    times = [0.0]
    while (due := table.next_timer()) is not None:
        times.append(due)
        table.poll(due)
    assert times == [RETRY_S * i for i in range(MAX_REQUESTS + 1)]
    assert table.counters["ArpRequestsSent"] == MAX_REQUESTS
    assert table.counters["ArpFailed"] == 1 and table.counters["ArpQueueDrops"] == 2
    assert table.learn(GW_IP, GW_MAC, now=10.0) == []  # nothing left waiting


def test_neighbour_queue_is_bounded_keeping_the_newest() -> None:
    table = NeighbourTable()
    for n in range(QUEUE_LEN + 2):
        table.enqueue(GW_IP, bytes([n]), now=0.0)
    assert table.learn(GW_IP, GW_MAC, now=0.5) == [bytes([n]) for n in range(2, QUEUE_LEN + 2)]
    assert table.counters["ArpQueueDrops"] == 2
    assert table.lookup(GW_IP, now=0.6) == GW_MAC


def test_routes_choose_by_source_address_then_by_prefix() -> None:
    routes = RouteTable(two_interfaces())
    far = ip("10.0.3.1")
    default = routes.lookup(far)
    assert default is not None and default.iface.name == "eth0" and default.next_hop == GW_IP
    second = routes.lookup(far, src=ip("10.0.2.1"))
    assert second is not None and second.iface.name == "eth1"
    assert second.next_hop == ip("10.0.2.254") and second.src == ip("10.0.2.1")
    on_link = routes.lookup(ip("10.0.2.9"))
    assert on_link is not None and on_link.iface.name == "eth1"
    assert on_link.next_hop == ip("10.0.2.9")
    assert routes.lookup(far, src=ip("10.9.9.9")) is None  # not our address
    assert RouteTable(two_interfaces()[:1][:0]).lookup(far) is None


def test_a_down_link_is_avoided_and_its_address_leaves_through_another() -> None:
    routes = RouteTable(two_interfaces())
    far = ip("10.0.3.1")
    routes.set_down("eth0", True)
    default = routes.lookup(far)
    assert default is not None and default.iface.name == "eth1"
    # Weak host, as Linux: a packet from eth0's address leaves by eth1 with that address.
    moved = routes.lookup(far, src=ip("10.0.1.1"))
    assert moved is not None and moved.iface.name == "eth1" and moved.src == ip("10.0.1.1")
    assert moved.next_hop == ip("10.0.2.254")
    routes.set_down("eth0", False)
    back = routes.lookup(far, src=ip("10.0.1.1"))
    assert back is not None and back.iface.name == "eth0"
    routes.set_down("eth1", True)
    routes.set_down("eth0", True)
    assert routes.lookup(far, src=ip("10.0.1.1")) is None  # nowhere to go


@pytest.mark.parametrize("frame", [
    b"", b"\x01" * 13,                                               # shorter than Ethernet
    emit_ethernet(EthernetFrame(OUR_MAC, PEER_MAC, ETHERTYPE_ARP, b"\0" * 10)),  # short ARP
    emit_ethernet(EthernetFrame(OUR_MAC, PEER_MAC, ETHERTYPE_IPV4, b"\x45" + b"\0" * 30)),
    echo_request_frame()[:-1] + b"\xff",                              # ICMP checksum wrong
])
def test_malformed_frames_are_counted_never_raised(frame: bytes) -> None:
    net = layer()
    net.receive_frame("eth0", frame, now=0.0)
    assert net.counters["ParseErrors"] == 1 and net.frames_to_send() == []


def test_frames_for_other_stations_and_other_protocols_are_dropped() -> None:
    net = layer()
    net.receive_frame("eth0", emit_ethernet(EthernetFrame(PEER_MAC, GW_MAC, ETHERTYPE_IPV4,
                                                          b"")), 0.0)
    net.receive_frame("eth0", emit_ethernet(EthernetFrame(OUR_MAC, GW_MAC, 0x86DD, b"")), 0.0)
    not_ours = emit_ipv4(Ipv4Packet(src=PEER_IP, dst=ip("10.0.1.2"), protocol=PROTO_ICMP,
                                    payload=b""))
    net.receive_frame("eth0", emit_ethernet(EthernetFrame(OUR_MAC, PEER_MAC, ETHERTYPE_IPV4,
                                                          not_ours)), 0.0)
    assert net.counters["FramesNotForUs"] == 1
    assert net.counters["FramesBadEthertype"] == 1
    assert net.counters["IpInAddrErrors"] == 1
    assert net.frames_to_send() == []


def test_pcap_tap_sees_both_directions() -> None:
    seen: list[tuple[bytes, float]] = []
    net = NetworkLayer(two_interfaces()[:1], tap=lambda frame, ts: seen.append((frame, ts)))
    request = arp_frame(ARP_REQUEST, PEER_MAC, PEER_IP, OUR_IP)
    net.receive_frame("eth0", request, now=3.0)
    [(_, reply)] = net.frames_to_send()
    assert seen == [(request, 3.0), (reply, 3.0)]


def test_iface_spec() -> None:
    name, addr, gw = parse_iface_spec("client-eth0=10.0.1.1/24,gw=10.0.1.254")
    assert (name, str(addr), str(gw)) == ("client-eth0", "10.0.1.1/24", "10.0.1.254")
    assert parse_iface_spec("e=10.0.3.1/24")[2] is None
    for bad in ("e", "e=10.0.1.1", "e=10.0.1.1/24,gw=10.0.9.1", "e=x/24", "e=1.2.3.4/8,mtu=9"):
        with pytest.raises(ParameterError):
            parse_iface_spec(bad)


class _Tcp:
    """A TCP core that records what it is given and sends what it is told to."""

    def __init__(self, out: list[tuple[bytes, bytes, TcpSegment]]) -> None:
        self.out = out
        self.received: list[tuple[bytes, bytes, TcpSegment]] = []

    def receive(self, src: bytes, dst: bytes, seg: TcpSegment, now: float) -> None:
        self.received.append((src, dst, seg))

    def segments_to_send(self, now: float) -> list[tuple[bytes, bytes, TcpSegment]]:
        out, self.out = self.out, []
        return out


def _segment(payload: bytes = b"x" * 1000) -> TcpSegment:
    return TcpSegment(40000, 80, 123456789, 987654321, ACK | PSH, 501,
                      (TimestampOption(7, 9),), payload)


def test_tcp_frames_out_are_the_codecs_frames_byte_for_byte() -> None:
    seg = _segment()
    net = NetworkLayer(two_interfaces()[:1], _Tcp([(OUR_IP, PEER_IP, seg)]))
    net.receive_frame("eth0", arp_frame(ARP_REPLY, PEER_MAC, PEER_IP, OUR_IP, OUR_MAC), 0.0)
    assert net.flush_tcp(0.1) == 1
    packet = Ipv4Packet(src=OUR_IP, dst=PEER_IP, protocol=PROTO_TCP,
                        payload=emit_tcp(seg, OUR_IP, PEER_IP))
    expected = emit_ethernet(EthernetFrame(PEER_MAC, OUR_MAC, ETHERTYPE_IPV4,
                                           emit_ipv4(packet)))
    assert net.frames_to_send() == [("eth0", expected)]
    assert net.counters["TcpOutSegs"] == net.counters["IpOutRequests"] == 1


def test_tcp_frames_in_take_the_fast_path_with_the_same_checks() -> None:
    tcp = _Tcp([])
    net = NetworkLayer(two_interfaces()[:1], tcp)
    seg = _segment()
    good = emit_ethernet(EthernetFrame(OUR_MAC, PEER_MAC, ETHERTYPE_IPV4, emit_ipv4(Ipv4Packet(
        src=PEER_IP, dst=OUR_IP, protocol=PROTO_TCP, payload=emit_tcp(seg, PEER_IP, OUR_IP)))))
    net.receive_frame("eth0", good + b"\0" * 4, 0.0)  # Ethernet padding is ignored
    assert tcp.received == [(PEER_IP, OUR_IP, seg)]
    bad_tcp = bytearray(good)
    bad_tcp[-1] ^= 1
    bad_ip = bytearray(good)
    bad_ip[22] ^= 1  # the TTL: the header checksum fails
    not_ours = emit_ethernet(EthernetFrame(OUR_MAC, PEER_MAC, ETHERTYPE_IPV4, emit_ipv4(
        Ipv4Packet(src=PEER_IP, dst=FAR_IP, protocol=PROTO_TCP,
                   payload=emit_tcp(seg, PEER_IP, FAR_IP)))))
    for frame in (bad_tcp, bad_ip, good[:40], not_ours):
        net.receive_frame("eth0", bytes(frame), 0.0)
    assert len(tcp.received) == 1
    assert net.counters["ParseErrors"] == 3
    assert net.counters["IpInAddrErrors"] == 1
    assert net.counters["TcpInSegs"] == 2  # the good one and the one with a bad TCP sum
