"""IPv4 and ICMP codecs: a real ping captured on Linux, header checks, round trips, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.icmp import (
    ICMP_DEST_UNREACHABLE,
    UNREACH_FRAG_NEEDED,
    UNREACH_PORT,
    IcmpDestUnreachable,
    IcmpEcho,
    IcmpMessage,
    IcmpOther,
    dest_unreachable,
    emit_icmp,
    parse_icmp,
)
from testbed.stack.wire.ipv4 import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    Ipv4Packet,
    emit_ipv4,
    ip_from_str,
    parse_ipv4,
)
from testbed.stack.wire.tcp import SYN, TcpSegment, emit_tcp

LOCALHOST = ip_from_str("127.0.0.1")
# `ping -c 1 -s 12 -p 41424344 127.0.0.1` on Linux, request and reply, IPv4 onwards; tshark
# reports both checksums good.
PING_REQUEST = bytes.fromhex(
    "45000028c9fe4000400172d47f0000017f000001"
    "0800efce7a9c0001414243444142434441424344")
PING_REPLY = bytes.fromhex(
    "45000028c9ff00004001b2d37f0000017f000001"
    "0000f7ce7a9c0001414243444142434441424344")


def header_checksum_ok(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_parse_linux_ping() -> None:
    request = parse_ipv4(PING_REQUEST)
    assert request == Ipv4Packet(LOCALHOST, LOCALHOST, PROTO_ICMP, PING_REQUEST[20:], ttl=64,
                                 ident=0xC9FE, dont_fragment=True)
    assert request.total_length == 40 and not request.is_fragment
    echo = parse_icmp(request.payload)
    assert echo == IcmpEcho(reply=False, ident=0x7A9C, seq=1, data=b"ABCD" * 3)
    reply = parse_ipv4(PING_REPLY)
    assert not reply.dont_fragment
    assert parse_icmp(reply.payload) == echo.make_reply()


def test_emit_linux_ping_byte_for_byte() -> None:
    echo = IcmpEcho(reply=True, ident=0x7A9C, seq=1, data=b"ABCD" * 3)
    packet = Ipv4Packet(LOCALHOST, LOCALHOST, PROTO_ICMP, emit_icmp(echo), ident=0xC9FF,
                        dont_fragment=False)
    assert emit_ipv4(packet) == PING_REPLY


def test_ethernet_padding_after_total_length_is_dropped() -> None:
    assert parse_ipv4(PING_REQUEST + bytes(6)).payload == PING_REQUEST[20:]


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:19], "shorter than its header"),
    (lambda b: b"\x65" + b[1:], "version 6"),
    (lambda b: b"\x44" + b[1:], "below 20"),
    (lambda b: b"\x4f" + b[1:], "beyond"),
    (lambda b: b[:39], "total length 40 beyond"),
    (lambda b: b[:2] + (19).to_bytes(2, "big") + b[4:], "below header length"),
    (lambda b: b[:8] + b"\x3f" + b[9:], "checksum"),  # TTL changed, checksum not
])
def test_malformed_ipv4(mutate: object, reason: str) -> None:
    assert callable(mutate)
    with pytest.raises(ParseError, match=reason):
        parse_ipv4(mutate(PING_REQUEST))


def test_fragments_parse_and_say_so() -> None:
    first = Ipv4Packet(LOCALHOST, LOCALHOST, PROTO_UDP, bytes(16), dont_fragment=False,
                       more_fragments=True)
    later = Ipv4Packet(LOCALHOST, LOCALHOST, PROTO_UDP, bytes(16), dont_fragment=False,
                       fragment_offset=185)
    for packet in (first, later):
        parsed = parse_ipv4(emit_ipv4(packet))
        assert parsed == packet and parsed.is_fragment
    assert emit_ipv4(later)[6:8] == (185).to_bytes(2, "big")
    assert emit_ipv4(first)[6:8] == b"\x20\x00"


def test_header_options_kept_raw() -> None:
    router_alert = bytes([0x94, 4, 0, 0])  # RFC 2113
    packet = Ipv4Packet(LOCALHOST, LOCALHOST, PROTO_TCP, b"xyz", options=router_alert)
    data = emit_ipv4(packet)
    assert data[0] == 0x46 and data[20:24] == router_alert
    assert header_checksum_ok(data[:24])
    assert parse_ipv4(data) == packet


@pytest.mark.parametrize("packet", [
    Ipv4Packet(bytes(3), bytes(4), PROTO_TCP, b""),
    Ipv4Packet(bytes(4), bytes(4), PROTO_TCP, b"", options=b"\x01\x01"),
    Ipv4Packet(bytes(4), bytes(4), PROTO_TCP, b"", options=bytes(44)),
    Ipv4Packet(bytes(4), bytes(4), PROTO_TCP, bytes(65516)),
    Ipv4Packet(bytes(4), bytes(4), 256, b""),
    Ipv4Packet(bytes(4), bytes(4), PROTO_TCP, b"", ttl=-1),
    Ipv4Packet(bytes(4), bytes(4), PROTO_TCP, b"", fragment_offset=0x2000),
])
def test_emit_ipv4_rejects_what_does_not_fit(packet: Ipv4Packet) -> None:
    with pytest.raises(ValueError):
        emit_ipv4(packet)


def test_emit_ipv4_largest_datagram() -> None:
    packet = Ipv4Packet(bytes(4), bytes(4), PROTO_TCP, bytes(65515))
    assert parse_ipv4(emit_ipv4(packet)).total_length == 65535


def test_port_unreachable_quotes_header_and_eight_bytes() -> None:
    syn = emit_tcp(TcpSegment(40000, 9, 7, 0, SYN, 1000), LOCALHOST, ip_from_str("10.0.0.9"))
    datagram = emit_ipv4(Ipv4Packet(LOCALHOST, ip_from_str("10.0.0.9"), PROTO_TCP, syn))
    error = dest_unreachable(UNREACH_PORT, datagram)
    assert error.original == datagram[:28]
    data = emit_icmp(error)
    assert data[:2] == bytes([ICMP_DEST_UNREACHABLE, UNREACH_PORT])
    assert data[4:8] == bytes(4)
    parsed = parse_icmp(data)
    assert parsed == error
    assert isinstance(parsed, IcmpDestUnreachable)
    quoted = parsed.quoted()
    assert quoted.dst == ip_from_str("10.0.0.9") and quoted.protocol == PROTO_TCP
    assert quoted.total_length == len(datagram)
    assert quoted.payload == syn[:8]  # ports and sequence number of the original
    with pytest.raises(ParseError):
        IcmpDestUnreachable(UNREACH_PORT, b"\x60" + bytes(27)).quoted()


def test_frag_needed_carries_next_hop_mtu() -> None:
    error = IcmpDestUnreachable(UNREACH_FRAG_NEEDED, PING_REQUEST[:28], next_hop_mtu=1400)
    data = emit_icmp(error)
    assert data[4:8] == bytes([0, 0]) + (1400).to_bytes(2, "big")
    assert parse_icmp(data) == error


def test_other_icmp_types_kept_opaque() -> None:
    time_exceeded = IcmpOther(11, 0, bytes(4), PING_REQUEST[:28])
    assert parse_icmp(emit_icmp(time_exceeded)) == time_exceeded
    # An unreachable with the RFC 4884 length field set is not one we interpret.
    extended = IcmpOther(ICMP_DEST_UNREACHABLE, 1, bytes([0, 7, 0, 0]), bytes(28))
    assert parse_icmp(emit_icmp(extended)) == extended
    with pytest.raises(ValueError):
        emit_icmp(IcmpOther(11, 0, bytes(3), b""))


def test_malformed_icmp() -> None:
    with pytest.raises(ParseError, match="shorter"):
        parse_icmp(PING_REQUEST[20:27])
    corrupt = PING_REQUEST[20:-1] + b"E"
    with pytest.raises(ParseError, match="checksum"):
        parse_icmp(corrupt)
    assert parse_icmp(corrupt, verify_checksum=False) == IcmpEcho(
        False, 0x7A9C, 1, b"ABCDABCDABCE")


u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
ips = st.binary(min_size=4, max_size=4)
packets = st.builds(
    Ipv4Packet, ips, ips, u8, st.binary(max_size=1500), ttl=u8, ident=u16, dscp_ecn=u8,
    dont_fragment=st.booleans(), more_fragments=st.booleans(),
    fragment_offset=st.integers(0, 0x1FFF),
    options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)))
messages: st.SearchStrategy[IcmpMessage] = st.one_of(
    st.builds(IcmpEcho, st.booleans(), u16, u16, st.binary(max_size=200), u8),
    st.builds(IcmpDestUnreachable, u8, st.binary(max_size=200), u16),
    st.builds(IcmpOther, u8.filter(lambda t: t not in (0, 3, 8)), u8,
              st.binary(min_size=4, max_size=4), st.binary(max_size=200)),
)


@given(packets)
def test_ipv4_round_trip(packet: Ipv4Packet) -> None:
    data = emit_ipv4(packet)
    assert header_checksum_ok(data[:packet.header_len])
    parsed = parse_ipv4(data)
    assert parsed == packet and parsed.total_length == len(data)
    assert emit_ipv4(parsed) == data


@given(messages)
def test_icmp_round_trip(message: IcmpMessage) -> None:
    data = emit_icmp(message)
    assert header_checksum_ok(data + b"\x00" * (len(data) % 2))
    assert parse_icmp(data) == message
    assert emit_icmp(parse_icmp(data)) == data


@settings(max_examples=400)
@given(st.binary(max_size=100), st.booleans())
def test_random_bytes_raise_only_parse_error(data: bytes, verify: bool) -> None:
    with contextlib.suppress(ParseError):
        parse_ipv4(data, verify_checksum=verify)
    with contextlib.suppress(ParseError):
        parse_ipv4(data, verify_checksum=verify, allow_truncated=True)
    with contextlib.suppress(ParseError):
        message = parse_icmp(data, verify_checksum=verify)
        if isinstance(message, IcmpDestUnreachable):
            message.quoted()


@settings(max_examples=400)
@given(packets, st.data())
def test_mutated_ipv4_raises_only_parse_error(packet: Ipv4Packet, data: st.DataObject) -> None:
    raw = bytearray(emit_ipv4(packet))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, packet.header_len - 1))] = data.draw(u8)
    mutated = bytes(raw[:data.draw(st.integers(0, len(raw)))])
    for verify in (False, True):
        with contextlib.suppress(ParseError):
            emit_ipv4(parse_ipv4(mutated, verify_checksum=verify))
