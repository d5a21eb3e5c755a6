"""PcapWriter output read back field by field (classic libpcap, Ethernet, microseconds), and
a whole-frame fuzz through every parser the runtime chains together."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.runtime.pcap import LINKTYPE_ETHERNET, PcapWriter
from testbed.stack.wire.arp import ARP_REQUEST, ArpPacket, emit_arp, parse_arp
from testbed.stack.wire.errors import ParseError
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
from testbed.stack.wire.tcp import (
    ACK,
    SYN,
    MssOption,
    SackOption,
    TcpSegment,
    TimestampOption,
    UnknownOption,
    emit_tcp,
    parse_tcp,
)


def read_pcap(data: bytes) -> tuple[tuple[int, ...], list[tuple[int, int, int, bytes]]]:
    """Global header fields and (sec, usec, orig_len, bytes) records, little-endian."""
    header = struct.unpack_from("<IHHiIII", data)
    records = []
    at = 24
    while at < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, at)
        records.append((sec, usec, orig, data[at + 16:at + 16 + incl]))
        at += 16 + incl
    assert at == len(data)
    return header, records


def test_pcap_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    with PcapWriter(path) as writer:
        writer.write(b"\x01" * 60, 1700000000.25)
        writer.write(b"\x02" * 14, 0.0000015)  # rounds to 2 microseconds
        writer.write(b"\x03" * 10, 5.9999996)  # rounds up into the next second
        assert writer.frames_written == 3
    header, records = read_pcap(path.read_bytes())
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET)
    assert records == [(1700000000, 250000, 60, b"\x01" * 60), (0, 2, 14, b"\x02" * 14),
                       (6, 0, 10, b"\x03" * 10)]


def test_snaplen_truncates_but_keeps_original_length() -> None:
    stream = io.BytesIO()
    writer = PcapWriter(stream, snaplen=20)
    writer.write(bytes(range(100)), 1.0)
    writer.close()
    assert not stream.closed  # the caller's stream stays open
    header, records = read_pcap(stream.getvalue())
    assert header[5] == 20
    assert records == [(1, 0, 100, bytes(range(20)))]


def test_misuse_is_a_clear_error(tmp_path: Path) -> None:
    writer = PcapWriter(tmp_path / "x.pcap")
    with pytest.raises(ValueError):
        writer.write(b"x", -1.0)
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError):
        writer.write(b"x", 1.0)
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), snaplen=0)


# --- whole frames through the chain of parsers ----------------------------------------------

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_A, IP_B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def ip_frame(protocol: int, payload: bytes) -> bytes:
    return emit_ethernet(EthernetFrame(MAC_B, MAC_A, ETHERTYPE_IPV4,
                                       emit_ipv4(Ipv4Packet(IP_A, IP_B, protocol, payload))))


VALID_FRAMES = [
    emit_ethernet(EthernetFrame(BROADCAST_MAC, MAC_A, ETHERTYPE_ARP,
                                emit_arp(ArpPacket(ARP_REQUEST, MAC_A, IP_A, bytes(6), IP_B)))),
    ip_frame(PROTO_ICMP, emit_icmp(IcmpEcho(False, 7, 1, b"ping"))),
    ip_frame(PROTO_TCP, emit_tcp(TcpSegment(
        1, 2, 3, 0, SYN, 100, options=(MssOption(1460), UnknownOption(30, b"\x01\x81"))),
        IP_A, IP_B)),
    ip_frame(PROTO_TCP, emit_tcp(TcpSegment(
        1, 2, 3, 4, ACK, 100, options=(TimestampOption(5, 6), SackOption(((10, 20),))),
        payload=b"data" * 10), IP_A, IP_B)),
]


def receive(frame: bytes) -> object:
    """What the runtime will do with a frame: Ethernet, then ARP or IPv4, then ICMP or TCP."""
    eth = parse_ethernet(frame)
    if eth.ethertype == ETHERTYPE_ARP:
        return parse_arp(eth.payload)
    if eth.ethertype != ETHERTYPE_IPV4:
        return eth
    ip = parse_ipv4(eth.payload)
    if ip.protocol == PROTO_ICMP:
        return parse_icmp(ip.payload)
    if ip.protocol == PROTO_TCP:
        return parse_tcp(ip.payload, ip.src, ip.dst)
    return ip


def test_valid_frames_parse() -> None:
    kinds = [type(receive(frame)).__name__ for frame in VALID_FRAMES]
    assert kinds == ["ArpPacket", "IcmpEcho", "TcpSegment", "TcpSegment"]


@settings(max_examples=400)
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_mutated_frames_raise_only_parse_error(frame: bytes, data: st.DataObject) -> None:
    raw = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    mutated = bytes(raw[:data.draw(st.integers(0, len(raw)))])
    with contextlib.suppress(ParseError):
        receive(mutated)
