"""Ethernet and ARP codecs, and the MAC/IPv4 address helpers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, emit_arp, parse_arp
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_VLAN,
    EthernetFrame,
    emit_ethernet,
    is_multicast_mac,
    mac_from_str,
    mac_to_str,
    parse_ethernet,
)
from testbed.stack.wire.ipv4 import ip_from_str, ip_to_str

macs = st.binary(min_size=6, max_size=6)
ips = st.binary(min_size=4, max_size=4)
frames = st.builds(EthernetFrame, macs, macs, st.integers(0, 0xFFFF), st.binary(max_size=1500))
arps = st.builds(ArpPacket, st.integers(0, 0xFFFF), macs, ips, macs, ips)

# An ARP request as Linux sends it for 10.0.0.2 from 10.0.0.1 (RFC 826 packet layout),
# inside a broadcast frame.
ARP_WHO_HAS = bytes.fromhex(
    "ffffffffffff" "0200000000010806"
    "0001" "0800" "06" "04" "0001" "020000000001" "0a000001" "000000000000" "0a000002")


def test_parse_arp_request_frame() -> None:
    frame = parse_ethernet(ARP_WHO_HAS)
    assert frame.dst == BROADCAST_MAC
    assert frame.src == mac_from_str("02:00:00:00:00:01")
    assert frame.ethertype == ETHERTYPE_ARP
    arp = parse_arp(frame.payload)
    assert arp == ArpPacket(ARP_REQUEST, bytes.fromhex("020000000001"), ip_from_str("10.0.0.1"),
                            bytes(6), ip_from_str("10.0.0.2"))
    assert arp.is_request and not arp.is_reply
    assert emit_ethernet(EthernetFrame(frame.dst, frame.src, frame.ethertype,
                                       emit_arp(arp))) == ARP_WHO_HAS


def test_arp_ignores_ethernet_padding() -> None:
    payload = parse_ethernet(ARP_WHO_HAS + bytes(18)).payload
    assert len(payload) == 46
    assert parse_arp(payload).target_ip == ip_from_str("10.0.0.2")


@pytest.mark.parametrize("at, value, what", [
    (0, 6, "hardware"),  # htype IEEE 802 instead of Ethernet
    (2, 0x86, "protocol"),  # ptype 0x86dd (IPv6)
    (4, 8, "hardware"),  # hlen 8
    (5, 16, "protocol"),  # plen 16
])
def test_arp_other_hardware_or_protocol_rejected(at: int, value: int, what: str) -> None:
    packet = bytearray(ARP_WHO_HAS[14:])
    packet[at] = value
    with pytest.raises(ParseError, match=what):
        parse_arp(bytes(packet))


def test_short_frames_and_arp() -> None:
    with pytest.raises(ParseError):
        parse_ethernet(ARP_WHO_HAS[:13])
    assert parse_ethernet(ARP_WHO_HAS[:14]).payload == b""
    with pytest.raises(ParseError):
        parse_arp(ARP_WHO_HAS[14:41])


def test_vlan_tag_passes_as_ethertype_8100() -> None:
    tagged = BROADCAST_MAC + bytes(6) + bytes.fromhex("8100" "0064" "0800") + b"ip"
    frame = parse_ethernet(tagged)
    assert frame.ethertype == ETHERTYPE_VLAN
    assert frame.payload == bytes.fromhex("00640800") + b"ip"


@pytest.mark.parametrize("frame", [
    EthernetFrame(bytes(5), bytes(6), 0x0800, b""),
    EthernetFrame(bytes(6), bytes(7), 0x0800, b""),
    EthernetFrame(bytes(6), bytes(6), 0x10000, b""),
])
def test_emit_ethernet_rejects_bad_fields(frame: EthernetFrame) -> None:
    with pytest.raises(ValueError):
        emit_ethernet(frame)


@pytest.mark.parametrize("arp", [
    ArpPacket(ARP_REPLY, bytes(5), bytes(4), bytes(6), bytes(4)),
    ArpPacket(ARP_REPLY, bytes(6), bytes(4), bytes(6), bytes(3)),
    ArpPacket(-1, bytes(6), bytes(4), bytes(6), bytes(4)),
])
def test_emit_arp_rejects_bad_fields(arp: ArpPacket) -> None:
    with pytest.raises(ValueError):
        emit_arp(arp)


@given(frames)
def test_ethernet_round_trip(frame: EthernetFrame) -> None:
    data = emit_ethernet(frame)
    assert len(data) == 14 + len(frame.payload)
    assert parse_ethernet(data) == frame
    assert emit_ethernet(parse_ethernet(data)) == data


@given(arps)
def test_arp_round_trip(arp: ArpPacket) -> None:
    data = emit_arp(arp)
    assert len(data) == 28
    assert parse_arp(data) == arp
    assert emit_arp(parse_arp(data)) == data


@given(st.binary(max_size=64))
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_ethernet(data)
    with contextlib.suppress(ParseError):
        parse_arp(data)


@given(arps, st.data())
def test_mutated_arp_raises_only_parse_error(arp: ArpPacket, data: st.DataObject) -> None:
    raw = bytearray(emit_arp(arp))
    raw[data.draw(st.integers(0, 27))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ParseError):
        emit_arp(parse_arp(bytes(raw[:data.draw(st.integers(0, 28))])))


def test_mac_helpers() -> None:
    assert mac_from_str("AA:bb:0c:0D:ee:ff") == bytes.fromhex("aabb0c0deeff")
    assert mac_from_str("aa-bb-cc-dd-ee-ff") == bytes.fromhex("aabbccddeeff")
    assert mac_to_str(bytes.fromhex("02000000000a")) == "02:00:00:00:00:0a"
    assert is_multicast_mac(BROADCAST_MAC)
    assert is_multicast_mac(mac_from_str("01:00:5e:00:00:01"))
    assert not is_multicast_mac(mac_from_str("02:00:00:00:00:01"))
    for bad in ("aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb:cc:dd:ee:gg", "aabbccddeeff",
                "aa:bb:cc:dd:ee:fff", "aa::cc:dd:ee:ff"):
        with pytest.raises(ValueError):
            mac_from_str(bad)
    with pytest.raises(ValueError):
        mac_to_str(bytes(5))


@given(macs)
def test_mac_string_round_trip(mac: bytes) -> None:
    assert mac_from_str(mac_to_str(mac)) == mac


def test_ip_helpers() -> None:
    assert ip_from_str("10.0.0.1") == bytes([10, 0, 0, 1])
    assert ip_to_str(bytes([192, 168, 1, 255])) == "192.168.1.255"
    for bad in ("10.0.0", "10.0.0.256", "1", "10.0.0.1.2", "::1", "ten.0.0.1"):
        with pytest.raises(ValueError):
            ip_from_str(bad)
    with pytest.raises(ValueError):
        ip_to_str(bytes(16))


@given(ips)
def test_ip_string_round_trip(address: bytes) -> None:
    assert ip_from_str(ip_to_str(address)) == address
