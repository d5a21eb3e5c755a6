"""TCP codec: a real Linux SYN, every option, round trips, malformed input and fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    SYN,
    MssOption,
    SackOption,
    SackPermittedOption,
    TcpOption,
    TcpSegment,
    TimestampOption,
    UnknownOption,
    WindowScaleOption,
    emit_tcp,
    encode_tcp_options,
    parse_tcp,
)

SRC = bytes([10, 9, 0, 1])
DST = bytes([10, 9, 0, 2])
# The TCP part of a SYN Linux sent from 10.9.0.1 (see test_wire_checksum.py).
LINUX_SYN = bytes.fromhex(
    "af301451e97259af00000000a002a564e1ad0000020405b40402080a14e39150000000000103 0309"
    .replace(" ", ""))


def checksum_ok(segment: bytes, src: bytes = SRC, dst: bytes = DST) -> bool:
    """Word-by-word check with the pseudo-header, independent of the codec's arithmetic."""
    data = src + dst + bytes([0, 6]) + len(segment).to_bytes(2, "big") + segment
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def with_checksum(segment: bytes, src: bytes = SRC, dst: bytes = DST) -> bytes:
    """`segment` (checksum field ignored) with a correct checksum, computed by brute force."""
    for value in range(0x10000):
        candidate = segment[:16] + value.to_bytes(2, "big") + segment[18:]
        if checksum_ok(candidate, src, dst):
            return candidate
    raise AssertionError("no checksum fits")


def raw_segment(options: bytes, payload: bytes = b"", offset_words: int | None = None) -> bytes:
    """A segment with hand-made option bytes and a correct checksum."""
    words = offset_words if offset_words is not None else 5 + len(options) // 4
    header = struct.pack("!HHIIBBHHH", 1000, 2000, 1, 2, words << 4, ACK, 512, 0, 0)
    segment = header + options + payload
    return with_checksum(segment)


# --- a real segment -------------------------------------------------------------------------

def test_parse_linux_syn() -> None:
    seg = parse_tcp(LINUX_SYN, SRC, DST)
    assert seg == TcpSegment(
        src_port=44848, dst_port=5201, seq=3916585391, ack=0, flags=SYN, window=42340,
        options=(MssOption(1460), SackPermittedOption(), TimestampOption(350458192, 0),
                 WindowScaleOption(9)),
        payload=b"", urgent=0)
    assert seg.seg_len == 1


def test_linux_syn_with_wrong_addresses_fails_checksum() -> None:
    with pytest.raises(ParseError, match="checksum"):
        parse_tcp(LINUX_SYN, SRC, bytes([10, 9, 0, 3]))
    assert parse_tcp(LINUX_SYN, SRC, bytes([10, 9, 0, 3]), verify_checksum=False).seq == \
        3916585391


def test_emit_syn_layout_and_checksum() -> None:
    seg = parse_tcp(LINUX_SYN, SRC, DST)
    data = emit_tcp(seg, SRC, DST)
    # Options in the order given, NOP padding at the end: MSS, SACK-perm, TS, WS, NOP.
    assert data[20:] == bytes.fromhex("020405b4" "0402" "080a14e3915000000000" "030309" "01")
    assert data[:12] == LINUX_SYN[:12]
    assert data[12] == 0xA0  # 10 words
    assert checksum_ok(data)
    assert emit_tcp(parse_tcp(data, SRC, DST), SRC, DST) == data


def test_data_segment_with_sack_blocks_and_odd_payload() -> None:
    seg = TcpSegment(80, 40000, 2**32 - 1, 12345, ACK | PSH, 65535,
                     options=(TimestampOption(1, 2),
                              SackOption(((100, 200), (300, 400), (2**32 - 8, 5)))),
                     payload=b"hello")
    data = emit_tcp(seg, SRC, DST)
    assert len(data) == 20 + 10 + 26 + 0 + 5  # options exactly 36 bytes, no padding
    assert data[30:32] == bytes([5, 26])  # right after the 10 bytes of timestamps
    assert checksum_ok(data)
    assert parse_tcp(data, SRC, DST) == seg


def test_mptcp_option_kept_opaque() -> None:
    # MP_CAPABLE (RFC 8684 §3.1) in a SYN: subtype 0, version 1, flags A|H, no key.
    mp_capable = UnknownOption(30, bytes([0x01, 0x81]))
    seg = TcpSegment(1, 2, 3, 0, SYN, 100, options=(MssOption(1460), mp_capable))
    data = emit_tcp(seg, SRC, DST)
    assert data[24:28] == bytes([30, 4, 0x01, 0x81])
    assert parse_tcp(data, SRC, DST).option(UnknownOption) == mp_capable


# --- options parsing details ----------------------------------------------------------------

def test_nops_dropped_and_eol_ends_options() -> None:
    options = bytes([1, 1, 2, 4, 0x05, 0xB4, 0, 3, 3, 7, 0, 0])  # the WS after EOL is padding
    seg = parse_tcp(raw_segment(options), SRC, DST)
    assert seg.options == (MssOption(1460),)


def test_options_stop_at_data_offset() -> None:
    seg = parse_tcp(raw_segment(bytes([1, 1, 1, 1]), payload=bytes([2, 4, 1, 1])), SRC, DST)
    assert seg.options == ()
    assert seg.payload == bytes([2, 4, 1, 1])


@pytest.mark.parametrize("options, reason", [
    (bytes([1, 1, 2, 4]), "past the header"),  # MSS of length 4 with 2 bytes left
    (bytes([1, 1, 1, 30]), "no room"),  # a kind in the last byte, no length
    (bytes([30, 0, 1, 1]), "length 0"),
    (bytes([30, 1, 1, 1]), "length 1"),
    (bytes([2, 3, 5, 1]), "length 3, not 4"),
    (bytes([3, 4, 5, 1]), "length 4, not 3"),
    (bytes([4, 3, 0, 1]), "length 3, not 2"),
    (bytes([8, 8, 0, 0, 0, 0, 0, 0]), "length 8, not 10"),
    (bytes([5, 2, 1, 1]), "SACK option of length 2"),
    (bytes([5, 9]) + bytes(7) + bytes(3), "SACK option of length 9"),
    (bytes([30, 41]) + bytes(38), "past the header"),
])
def test_malformed_options(options: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_tcp(raw_segment(options), SRC, DST)


def test_malformed_headers() -> None:
    good = raw_segment(b"")
    with pytest.raises(ParseError, match="shorter than its header"):
        parse_tcp(good[:19], SRC, DST)
    with pytest.raises(ParseError, match="below 5 words"):
        parse_tcp(raw_segment(b"", offset_words=4), SRC, DST)
    with pytest.raises(ParseError, match="beyond"):
        parse_tcp(raw_segment(b"", offset_words=6), SRC, DST)
    corrupt = good[:4] + bytes([good[4] ^ 0x01]) + good[5:]
    with pytest.raises(ParseError, match="checksum"):
        parse_tcp(corrupt, SRC, DST)


def test_checksum_zero_field_encodings() -> None:
    # 0x0000 and 0xffff are the same one's complement number: a receiver accepts either.
    seg = TcpSegment(1, 2, 0, 0, ACK, 0)
    for payload in (b"", b"x", bytes(range(50))):
        data = emit_tcp(TcpSegment(1, 2, 0, 0, ACK, 0, payload=payload), SRC, DST)
        assert checksum_ok(data)
    assert parse_tcp(emit_tcp(seg, SRC, DST), SRC, DST) == seg


# --- emit refuses what cannot be sent -------------------------------------------------------

@pytest.mark.parametrize("options", [
    (TimestampOption(1, 2), SackOption(((1, 2), (3, 4), (5, 6), (7, 8)))),  # 10 + 34 > 40
    (UnknownOption(30, bytes(39)),),
    (SackOption(()),),
    (UnknownOption(1, b""),),
    (UnknownOption(0, b"xx"),),
    (MssOption(70000),),
    (WindowScaleOption(256),),
    (TimestampOption(2**32, 0),),
    (SackOption(((2**32, 0),)),),
])
def test_emit_rejects_bad_options(options: tuple[TcpOption, ...]) -> None:
    with pytest.raises(ValueError) as info:
        emit_tcp(TcpSegment(1, 2, 3, 4, ACK, 5, options=options), SRC, DST)
    assert not isinstance(info.value, ParseError)


def test_emit_accepts_exactly_40_bytes_of_options() -> None:
    options = (SackOption(((1, 2), (3, 4), (5, 6), (7, 8))), UnknownOption(200, bytes(4)))
    assert len(encode_tcp_options(options)) == 40
    seg = TcpSegment(1, 2, 3, 4, ACK, 5, options=options)
    assert parse_tcp(emit_tcp(seg, SRC, DST), SRC, DST) == seg


@pytest.mark.parametrize("seg", [
    TcpSegment(70000, 2, 3, 4, ACK, 5),
    TcpSegment(1, 2, 2**32, 4, ACK, 5),
    TcpSegment(1, 2, 3, -1, ACK, 5),
    TcpSegment(1, 2, 3, 4, 256, 5),
    TcpSegment(1, 2, 3, 4, ACK, 65536),
    TcpSegment(1, 2, 3, 4, ACK, 5, urgent=-2),
])
def test_emit_rejects_fields_out_of_range(seg: TcpSegment) -> None:
    with pytest.raises(ValueError):
        emit_tcp(seg, SRC, DST)


def test_emit_rejects_bad_addresses() -> None:
    with pytest.raises(ValueError):
        emit_tcp(TcpSegment(1, 2, 3, 4, ACK, 5), SRC[:3], DST)


# --- properties -----------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 0xFFFF)
addresses = st.binary(min_size=4, max_size=4)
option_values: st.SearchStrategy[TcpOption] = st.one_of(
    st.builds(MssOption, u16),
    st.builds(WindowScaleOption, st.integers(0, 255)),
    st.just(SackPermittedOption()),
    st.builds(SackOption, st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(tuple)),
    st.builds(TimestampOption, u32, u32),
    st.builds(UnknownOption, st.integers(2, 255).filter(lambda k: k not in (2, 3, 4, 5, 8)),
              st.binary(max_size=38)),
)


def wire_size(option: TcpOption) -> int:
    match option:
        case MssOption():
            return 4
        case WindowScaleOption():
            return 3
        case SackPermittedOption():
            return 2
        case SackOption():
            return 2 + 8 * len(option.blocks)
        case TimestampOption():
            return 10
        case UnknownOption():
            return 2 + len(option.data)
    raise AssertionError(option)


option_lists = st.lists(option_values, max_size=8).filter(
    lambda opts: sum(map(wire_size, opts)) <= 40).map(tuple)
segments = st.builds(TcpSegment, u16, u16, u32, u32, st.integers(0, 255), u16, option_lists,
                     st.binary(max_size=1500), u16)


@given(segments, addresses, addresses)
def test_emit_then_parse_is_identity(seg: TcpSegment, src: bytes, dst: bytes) -> None:
    data = emit_tcp(seg, src, dst)
    assert checksum_ok(data, src, dst)
    assert len(data) == 20 + -(-sum(map(wire_size, seg.options)) // 4) * 4 + len(seg.payload)
    assert parse_tcp(data, src, dst) == seg


@given(segments, addresses, addresses)
def test_parse_then_emit_gives_canonical_bytes(seg: TcpSegment, src: bytes, dst: bytes) -> None:
    canonical = emit_tcp(seg, src, dst)
    assert emit_tcp(parse_tcp(canonical, src, dst), src, dst) == canonical


@settings(max_examples=400)
@given(st.binary(max_size=120), addresses, addresses, st.booleans())
def test_random_bytes_raise_only_parse_error(data: bytes, src: bytes, dst: bytes,
                                             verify: bool) -> None:
    with contextlib.suppress(ParseError):
        parse_tcp(data, src, dst, verify_checksum=verify)


@settings(max_examples=400)
@given(segments, st.data())
def test_mutated_segments_raise_only_parse_error(seg: TcpSegment, data: st.DataObject) -> None:
    raw = bytearray(emit_tcp(seg, SRC, DST))
    # Mutate mostly the header and options, where the parser makes its decisions.
    header_end = min(len(raw), 60)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, header_end - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut])
    for verify in (False, True):
        try:
            parsed = parse_tcp(mutated, SRC, DST, verify_checksum=verify)
        except ParseError:
            continue
        # Whatever parses is a value emit can send again (or refuses with ValueError only
        # for kinds it cannot re-encode, which parse never produces).
        emit_tcp(parsed, SRC, DST)


@given(segments)
def test_parse_accepts_memoryview_and_bytearray(seg: TcpSegment) -> None:
    data = emit_tcp(seg, SRC, DST)
    assert parse_tcp(memoryview(data), SRC, DST) == seg
    assert parse_tcp(bytearray(data), SRC, DST) == seg


def test_flags_and_seg_len_survive() -> None:
    seg = TcpSegment(1, 2, 3, 4, SYN | FIN | ACK, 5, payload=b"abc")
    assert parse_tcp(emit_tcp(seg, SRC, DST), SRC, DST).seg_len == 5
