"""ICMP for IPv4 (RFC 792): echo and echo reply (so `ping` measures RTT to our stack) and
destination unreachable with the quoted original datagram. Other types are kept opaque."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from testbed.stack.wire.checksum import internet_checksum
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.ipv4 import Ipv4Packet, parse_ipv4

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8

# Destination unreachable codes (RFC 792; 4 with the next-hop MTU of RFC 1191 §4)
UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4

ICMP_HEADER_LEN = 8
# RFC 792: the quote is the original internet header plus its first 64 bits of data.
QUOTED_DATA_LEN = 8

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, and 4 type-specific bytes as 2 words


@dataclass(frozen=True)
class IcmpEcho:
    """Echo request or echo reply; a reply returns ident, seq and data unchanged."""

    reply: bool
    ident: int
    seq: int
    data: bytes = b""
    code: int = 0  # always 0 in RFC 792; kept so odd input round-trips

    def make_reply(self) -> IcmpEcho:
        return IcmpEcho(reply=True, ident=self.ident, seq=self.seq, data=self.data)


@dataclass(frozen=True)
class IcmpDestUnreachable:
    code: int
    original: bytes  # the quoted original IP header and the start of its payload
    next_hop_mtu: int = 0  # RFC 1191 §4: the low 16 bits of the unused word, for code 4

    def quoted(self) -> Ipv4Packet:
        """The quoted datagram's header, payload cut where the quote ends. ParseError if the
        quote is not an IPv4 header (its checksum is not checked: routers may rewrite TTL)."""
        return parse_ipv4(self.original, verify_checksum=False, allow_truncated=True)


@dataclass(frozen=True)
class IcmpOther:
    """Any other type, kept byte for byte: `rest` is the 4 bytes after the checksum."""

    icmp_type: int
    code: int
    rest: bytes
    body: bytes = b""


IcmpMessage = IcmpEcho | IcmpDestUnreachable | IcmpOther


def dest_unreachable(code: int, datagram: bytes, next_hop_mtu: int = 0) -> IcmpDestUnreachable:
    """An unreachable error quoting `datagram` (an emitted IPv4 datagram): its header and the
    first 8 bytes of its payload, as RFC 792 asks and RFC 1122 §3.2.2 lets hosts do."""
    header_len = (datagram[0] & 0x0F) * 4 if datagram else 0
    return IcmpDestUnreachable(code, bytes(datagram[:header_len + QUOTED_DATA_LEN]),
                               next_hop_mtu)


def parse_icmp(data: bytes, verify_checksum: bool = True) -> IcmpMessage:
    """Parse an ICMP message (the IPv4 payload); ParseError if short or the checksum is bad."""
    if len(data) < ICMP_HEADER_LEN:
        raise ParseError(f"ICMP message of {len(data)} bytes is shorter than its header")
    if verify_checksum and internet_checksum(data) != 0:
        raise ParseError("ICMP checksum mismatch")
    icmp_type, code, _checksum, word1, word2 = _HEADER.unpack_from(data)
    body = bytes(data[ICMP_HEADER_LEN:])
    if icmp_type in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
        return IcmpEcho(icmp_type == ICMP_ECHO_REPLY, word1, word2, body, code)
    if icmp_type == ICMP_DEST_UNREACHABLE and word1 == 0:
        return IcmpDestUnreachable(code, body, word2)
    # Includes unreachables with the RFC 4884 length field set: passed on as they are.
    return IcmpOther(icmp_type, code, bytes(data[4:8]), body)


def emit_icmp(message: IcmpMessage) -> bytes:
    """Encode with the checksum; ValueError if a field does not fit."""
    match message:
        case IcmpEcho():
            icmp_type = ICMP_ECHO_REPLY if message.reply else ICMP_ECHO_REQUEST
            code, word1, word2, body = message.code, message.ident, message.seq, message.data
        case IcmpDestUnreachable():
            icmp_type, code = ICMP_DEST_UNREACHABLE, message.code
            word1, word2, body = 0, message.next_hop_mtu, message.original
        case IcmpOther():
            if len(message.rest) != 4:
                raise ValueError("IcmpOther.rest must be 4 bytes")
            icmp_type, code, body = message.icmp_type, message.code, message.body
            word1 = int.from_bytes(message.rest[:2], "big")
            word2 = int.from_bytes(message.rest[2:], "big")
    try:
        header = _HEADER.pack(icmp_type, code, 0, word1, word2)
    except struct.error as exc:
        raise ValueError(f"ICMP field out of range: {exc}") from None
    checksum = internet_checksum(header + body)
    return header[:2] + checksum.to_bytes(2, "big") + header[4:] + body
