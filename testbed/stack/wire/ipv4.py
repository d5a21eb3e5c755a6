"""IPv4 datagrams (RFC 791) and dotted-quad address helpers.

The stack neither fragments nor reassembles: a fragment parses (so it can be counted) and says
so through `is_fragment`; the stack drops it. Header options are kept as raw bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from testbed.stack.wire.checksum import fold_checksum, internet_checksum
from testbed.stack.wire.errors import ParseError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

IPV4_HEADER_LEN = 20
IPV4_MAX_OPTIONS = 40  # IHL is 4 bits: at most 15 words of header (RFC 791 §3.1)

# Flags field (RFC 791 §3.1): bit 0 reserved, DF, MF; then 13 bits of fragment offset.
_FLAG_RESERVED = 0x8000
_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_OFFSET_MASK = 0x1FFF

_HEADER = struct.Struct("!BBHHHBBH4s4s")


@dataclass(frozen=True)
class Ipv4Packet:
    src: bytes  # 4 bytes
    dst: bytes  # 4 bytes
    protocol: int
    payload: bytes
    ttl: int = 64
    ident: int = 0
    dscp_ecn: int = 0  # the former TOS byte: DSCP (RFC 2474) and ECN (RFC 3168) bits
    dont_fragment: bool = True
    more_fragments: bool = False
    fragment_offset: int = 0  # in 8-byte units, as on the wire
    options: bytes = b""  # raw, a multiple of 4 bytes; the stack sends none
    # Parse sets the header's value (for a truncated ICMP quote it says how long the original
    # was); emit always computes it. Not part of equality, so round trips compare values.
    total_length: int | None = field(default=None, compare=False)

    @property
    def is_fragment(self) -> bool:
        """Part of a fragmented datagram: MF set or a non-zero offset (RFC 791 §2.3)."""
        return self.more_fragments or self.fragment_offset != 0

    @property
    def header_len(self) -> int:
        return IPV4_HEADER_LEN + len(self.options)


def parse_ipv4(data: bytes, verify_checksum: bool = True,
               allow_truncated: bool = False) -> Ipv4Packet:
    """Parse an IPv4 datagram; ParseError if it is not a well-formed one.

    Checked: version 4, IHL of at least 5 words and within the buffer, total length at least
    the header and at most the buffer (bytes beyond it are Ethernet padding and dropped), and
    the header checksum. `allow_truncated` is for the datagram quoted in an ICMP error, which
    is cut after its first 8 payload bytes (RFC 792): the payload is then what is there.
    The reserved flag bit is ignored (RFC 791 says it must be zero, nothing more).
    """
    if len(data) < IPV4_HEADER_LEN:
        raise ParseError(f"IPv4 datagram of {len(data)} bytes is shorter than its header")
    (ver_ihl, dscp_ecn, total_length, ident, flags_offset, ttl, protocol, _checksum,
     src, dst) = _HEADER.unpack_from(data)
    if ver_ihl >> 4 != 4:
        raise ParseError(f"IP version {ver_ihl >> 4}, not 4")
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < IPV4_HEADER_LEN:
        raise ParseError(f"IPv4 header length {header_len} below 20")
    if header_len > len(data):
        raise ParseError(f"IPv4 header length {header_len} beyond the {len(data)} bytes")
    if total_length < header_len:
        raise ParseError(f"IPv4 total length {total_length} below header length {header_len}")
    if total_length > len(data) and not allow_truncated:
        raise ParseError(f"IPv4 total length {total_length} beyond the {len(data)} bytes")
    if verify_checksum and internet_checksum(data[:header_len]) != 0:
        raise ParseError("IPv4 header checksum mismatch")
    return Ipv4Packet(
        src=src, dst=dst, protocol=protocol, payload=bytes(data[header_len:total_length]),
        ttl=ttl, ident=ident, dscp_ecn=dscp_ecn,
        dont_fragment=bool(flags_offset & _FLAG_DF),
        more_fragments=bool(flags_offset & _FLAG_MF),
        fragment_offset=flags_offset & _OFFSET_MASK,
        options=bytes(data[IPV4_HEADER_LEN:header_len]),
        total_length=total_length,
    )


def emit_ipv4(packet: Ipv4Packet) -> bytes:
    """Encode a datagram with its total length and header checksum computed.

    ValueError on anything that does not fit its field: addresses not 4 bytes, options not a
    multiple of 4 or longer than 40, a datagram over 65535 bytes, out-of-range numbers.
    """
    if len(packet.src) != 4 or len(packet.dst) != 4:
        raise ValueError("IPv4 addresses must be 4 bytes")
    options_len = len(packet.options)
    if options_len % 4 or options_len > IPV4_MAX_OPTIONS:
        raise ValueError(f"IPv4 options of {options_len} bytes: need a multiple of 4, <= 40")
    header_len = IPV4_HEADER_LEN + options_len
    total_length = header_len + len(packet.payload)
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 datagram of {total_length} bytes exceeds 65535")
    if not 0 <= packet.fragment_offset <= _OFFSET_MASK:
        raise ValueError(f"fragment offset {packet.fragment_offset} exceeds 13 bits")
    flags_offset = packet.fragment_offset
    if packet.dont_fragment:
        flags_offset |= _FLAG_DF
    if packet.more_fragments:
        flags_offset |= _FLAG_MF
    try:
        header = _HEADER.pack(0x40 | header_len >> 2, packet.dscp_ecn, total_length,
                              packet.ident, flags_offset, packet.ttl, packet.protocol, 0,
                              packet.src, packet.dst)
    except struct.error as exc:
        raise ValueError(f"IPv4 field out of range: {exc}") from None
    if options_len:
        header += packet.options
    checksum = fold_checksum(int.from_bytes(header, "big"))
    return header[:10] + checksum.to_bytes(2, "big") + header[12:] + packet.payload


def ip_from_str(text: str) -> bytes:
    """'10.0.0.1' to 4 bytes; ValueError for anything but a strict dotted quad."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ipaddress.AddressValueError as exc:
        raise ValueError(str(exc)) from None


def ip_to_str(address: bytes) -> str:
    """4 bytes to '10.0.0.1'."""
    if len(address) != 4:
        raise ValueError(f"an IPv4 address is 4 bytes, not {len(address)}")
    return ".".join(str(b) for b in address)
