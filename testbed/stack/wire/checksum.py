"""The Internet checksum (RFC 1071) and the TCP/UDP pseudo-header sum (RFC 9293 §3.1).

Pure Python, but fast: instead of adding 16-bit words one by one we read the whole buffer as
one big integer and reduce it modulo 0xffff. Because 2**16 ≡ 1 (mod 0xffff), the integer is
congruent to the sum of its 16-bit words, and one's complement addition is addition modulo
0xffff, with the single twist that a non-zero sum is written 0xffff rather than 0 ("negative
zero", RFC 1071 §1). `benchmarks/wire_codec.py` compares this with `array('H')` summing.
"""

from __future__ import annotations

from typing import TypeAlias

# Byte buffers of unsigned bytes; `collections.abc.Buffer` is Python 3.12.
BytesLike: TypeAlias = bytes | bytearray | memoryview

_MOD = 0xFFFF

PROTO_TCP = 6


def ones_complement_sum(data: BytesLike) -> int:
    """The unfolded sum of `data` as 16-bit big-endian words, zero-padded if odd (RFC 1071).

    Only its value modulo 0xffff matters; add several of these (pseudo-header, header, payload)
    and finish with `fold_checksum`. Even-length pieces may be summed separately and added,
    since shifting by a multiple of 16 bits does not change the residue.
    """
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8  # the pad byte goes after the last byte (RFC 1071 §4.1 "odd byte")
    return total


def fold_checksum(total: int) -> int:
    """The checksum field for an unfolded sum: the one's complement of its 16-bit fold."""
    if total == 0:
        return _MOD  # every word zero: the fold is +0 and its complement 0xffff
    # A non-zero sum folds to a value in 1..0xffff congruent to `total`; its complement is
    # therefore (-total) mod 0xffff (and 0 when the fold is 0xffff).
    return -total % _MOD


def internet_checksum(data: BytesLike) -> int:
    """The value to store in a checksum field, computed with that field zeroed (RFC 1071).

    Over data that already contains a correct checksum this returns 0, which is how
    receivers verify: `internet_checksum(header) == 0`.
    """
    return fold_checksum(ones_complement_sum(data))


def pseudo_header_sum(src_ip: bytes, dst_ip: bytes, protocol: int, length: int) -> int:
    """Unfolded sum of the IPv4 pseudo-header: source, destination, zero, PTCL, TCP length
    (RFC 9293 §3.1, "Checksum")."""
    return int.from_bytes(src_ip, "big") + int.from_bytes(dst_ip, "big") + protocol + length


def transport_checksum(src_ip: bytes, dst_ip: bytes, protocol: int, segment: BytesLike) -> int:
    """Checksum of a TCP (or UDP) segment with its pseudo-header; 0 over a correct segment."""
    length = len(segment)
    return fold_checksum(pseudo_header_sum(src_ip, dst_ip, protocol, length)
                         + ones_complement_sum(segment))


def tcp_checksum(src_ip: bytes, dst_ip: bytes, segment: BytesLike) -> int:
    """`transport_checksum` for TCP (protocol 6)."""
    return transport_checksum(src_ip, dst_ip, PROTO_TCP, segment)
