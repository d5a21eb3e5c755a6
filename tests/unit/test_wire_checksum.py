"""The Internet checksum against RFC 1071's example, a word-by-word reference and a SYN that
Linux sent (over a veth with checksum offload off, checked good by tshark)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.wire.checksum import (
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
    tcp_checksum,
    transport_checksum,
)

# Ethernet + IPv4 + TCP SYN from 10.9.0.1:44848 to 10.9.0.2:5201, IP checksum 0x1d09 and TCP
# checksum 0xe1ad, both reported good by tshark with checksum validation on.
LINUX_SYN = bytes.fromhex(
    "020000000002aee0b7e629f50800"
    "4500003c099f400040061d090a0900010a090002"
    "af301451e97259af00000000a002a564e1ad0000020405b40402080a14e39150000000000103 0309"
    .replace(" ", ""))
IP_HEADER = LINUX_SYN[14:34]
TCP_SEGMENT = LINUX_SYN[34:]


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word with end-around carry: slow and obviously right."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def zero_field(data: bytes, at: int) -> bytes:
    return data[:at] + b"\x00\x00" + data[at + 2:]


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is 220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert internet_checksum(data) == 0x220D
    assert internet_checksum(data + bytes.fromhex("220d")) == 0


def test_all_zero_and_empty_give_negative_zero_complement() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(40)) == 0xFFFF
    assert reference_checksum(bytes(40)) == 0xFFFF


def test_sum_that_folds_to_ffff_gives_zero() -> None:
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\x12\x34\xed\xcb") == 0


def test_odd_length_pads_after_last_byte() -> None:
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00") == 0xFEFF
    assert ones_complement_sum(b"\xab\xcd\xef") % 0xFFFF == (0xABCD + 0xEF00) % 0xFFFF


@given(st.binary(max_size=3000))
def test_matches_word_by_word_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)
    assert internet_checksum(bytearray(data)) == internet_checksum(memoryview(data))


@given(st.binary(max_size=600).filter(lambda d: len(d) % 2 == 0))
def test_data_with_its_checksum_verifies(data: bytes) -> None:
    checksum = internet_checksum(data)
    assert internet_checksum(data + checksum.to_bytes(2, "big")) == 0


def test_linux_ipv4_header_checksum() -> None:
    assert internet_checksum(IP_HEADER) == 0
    assert internet_checksum(zero_field(IP_HEADER, 10)) == 0x1D09


def test_linux_tcp_checksum_with_pseudo_header() -> None:
    src, dst = IP_HEADER[12:16], IP_HEADER[16:20]
    assert tcp_checksum(src, dst, TCP_SEGMENT) == 0
    assert tcp_checksum(src, dst, zero_field(TCP_SEGMENT, 16)) == 0xE1AD
    # With the addresses swapped the pseudo-header sum is the same (addition commutes),
    # but any other address breaks it.
    assert tcp_checksum(dst, src, TCP_SEGMENT) == 0
    assert tcp_checksum(src, bytes([10, 9, 0, 3]), TCP_SEGMENT) != 0


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.binary(max_size=1500))
def test_pseudo_header_matches_explicit_bytes(src: bytes, dst: bytes, segment: bytes) -> None:
    # RFC 9293 §3.1: source, destination, zero, PTCL, TCP length, then the segment.
    pseudo = src + dst + bytes([0, 6]) + len(segment).to_bytes(2, "big")
    assert tcp_checksum(src, dst, segment) == reference_checksum(pseudo + segment)
    assert transport_checksum(src, dst, 17, segment) == reference_checksum(
        src + dst + bytes([0, 17]) + len(segment).to_bytes(2, "big") + segment)
    assert pseudo_header_sum(src, dst, 6, len(segment)) % 0xFFFF == \
        ones_complement_sum(pseudo) % 0xFFFF
