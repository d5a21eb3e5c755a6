"""Ethernet II frames (IEEE 802.3 with an EtherType) and MAC address helpers.

Frames are parsed as destination, source, EtherType and everything after it. There is no
VLAN support: an 802.1Q-tagged frame parses with ethertype 0x8100 and its payload begins with
the tag control field, so the stack sees an EtherType it does not handle and drops it. A type
field of 1500 or less (an 802.3 length) is passed through the same way. The frame check
sequence is never present (TAP devices and pcap strip it), and emit does not pad to the
60-byte minimum: the kernel pads on real links, and a TAP or veth peer does not need it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from testbed.stack.wire.errors import ParseError

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD

ETHERNET_HEADER_LEN = 14
BROADCAST_MAC = b"\xff" * 6

_HEADER = struct.Struct("!6s6sH")


@dataclass(frozen=True)
class EthernetFrame:
    dst: bytes  # 6 bytes
    src: bytes  # 6 bytes
    ethertype: int
    payload: bytes


def parse_ethernet(data: bytes) -> EthernetFrame:
    """Parse an Ethernet II frame without FCS; raises ParseError if shorter than a header."""
    if len(data) < ETHERNET_HEADER_LEN:
        raise ParseError(f"Ethernet frame of {len(data)} bytes is shorter than its header")
    dst, src, ethertype = _HEADER.unpack_from(data)
    return EthernetFrame(dst, src, ethertype, bytes(data[ETHERNET_HEADER_LEN:]))


def emit_ethernet(frame: EthernetFrame) -> bytes:
    """Encode a frame; ValueError if an address is not 6 bytes or the type not 16 bits."""
    if len(frame.dst) != 6 or len(frame.src) != 6:
        raise ValueError("MAC addresses must be 6 bytes")
    if not 0 <= frame.ethertype <= 0xFFFF:
        raise ValueError(f"ethertype {frame.ethertype} is not a 16-bit value")
    return _HEADER.pack(frame.dst, frame.src, frame.ethertype) + frame.payload


def mac_from_str(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' (or with '-') to 6 bytes; ValueError otherwise."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


def mac_to_str(mac: bytes) -> str:
    """6 bytes to lower-case 'aa:bb:cc:dd:ee:ff'."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}")
    return mac.hex(":")


def is_multicast_mac(mac: bytes) -> bool:
    """The I/G bit: group (multicast or broadcast) addresses (IEEE 802 §8.2)."""
    return bool(mac[0] & 0x01)
