"""ARP (RFC 826) for IPv4 over Ethernet: the only hardware/protocol pair the stack speaks."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from testbed.stack.wire.errors import ParseError

ARP_REQUEST = 1  # ares_op$REQUEST (RFC 826)
ARP_REPLY = 2  # ares_op$REPLY

HTYPE_ETHERNET = 1  # ares_hrd$Ethernet
PTYPE_IPV4 = 0x0800  # the EtherType of the protocol being resolved
ARP_LEN = 28  # 8 fixed bytes plus 2 * (6 + 4) addresses

_PACKET = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True)
class ArpPacket:
    op: int
    sender_mac: bytes  # 6 bytes
    sender_ip: bytes  # 4 bytes
    target_mac: bytes  # 6 bytes; zero in a request (RFC 5227 §2.1.1 makes that explicit)
    target_ip: bytes  # 4 bytes

    @property
    def is_request(self) -> bool:
        return self.op == ARP_REQUEST

    @property
    def is_reply(self) -> bool:
        return self.op == ARP_REPLY


def parse_arp(data: bytes) -> ArpPacket:
    """Parse an Ethernet/IPv4 ARP packet. Bytes after the 28 of the packet (Ethernet padding
    to 60 bytes) are ignored; any other hardware or protocol type, or address lengths other
    than 6 and 4, raise ParseError. The op is not checked: RFC 826 answers only requests, and
    that is the stack's decision, not the codec's."""
    if len(data) < ARP_LEN:
        raise ParseError(f"ARP packet of {len(data)} bytes, need {ARP_LEN}")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _PACKET.unpack_from(data)
    if htype != HTYPE_ETHERNET or ptype != PTYPE_IPV4 or hlen != 6 or plen != 4:
        raise ParseError(f"ARP for hardware {htype}/{hlen} and protocol {ptype:#x}/{plen}")
    return ArpPacket(op, sha, spa, tha, tpa)


def emit_arp(packet: ArpPacket) -> bytes:
    """Encode as 28 bytes; ValueError on addresses of the wrong size or an op above 16 bits."""
    if len(packet.sender_mac) != 6 or len(packet.target_mac) != 6:
        raise ValueError("ARP hardware addresses must be 6 bytes")
    if len(packet.sender_ip) != 4 or len(packet.target_ip) != 4:
        raise ValueError("ARP protocol addresses must be 4 bytes")
    if not 0 <= packet.op <= 0xFFFF:
        raise ValueError(f"ARP op {packet.op} is not a 16-bit value")
    return _PACKET.pack(HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, packet.op, packet.sender_mac,
                        packet.sender_ip, packet.target_mac, packet.target_ip)
