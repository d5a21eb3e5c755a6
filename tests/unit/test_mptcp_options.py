"""MPTCP option codecs (RFC 8684 §3): canonical bytes built here by hand parse to the values
we expect and emit back to the same bytes, every value survives emit -> parse, and random
bodies raise ParseError and nothing else."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.stack.mptcp.options import (
    AddAddr,
    Dss,
    DssMapping,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MpTcpRst,
    RemoveAddr,
    TcpRstReason,
    UnknownMptcpOption,
    expand_to_64,
    from_tcp_option,
    mptcp_options,
    parse_mptcp_option,
    to_tcp_option,
)
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.tcp import MssOption, UnknownOption, encode_tcp_options

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


# --- canonical bytes, built independently of the codec, with the value they mean ----------

@st.composite
def mp_capable_cases(draw: st.DrawFn) -> tuple[bytes, MptcpOption]:
    a, b, c, h = (draw(st.booleans()) for _ in range(4))
    form = draw(st.integers(0, 4))  # SYN, SYN/ACK, ACK, data, data with checksum
    keys = [draw(u64), draw(u64)]
    dll, csum = draw(u16), draw(u16)
    body = bytes((0x01, a << 7 | b << 6 | c << 5 | h))
    if form >= 1:
        body += struct.pack("!Q", keys[0])
    if form >= 2:
        body += struct.pack("!Q", keys[1])
    if form >= 3:
        body += struct.pack("!H", dll)
    if form == 4:
        body += struct.pack("!H", csum)
    return body, MpCapable(1, a, b, c, h, keys[0] if form >= 1 else None,
                           keys[1] if form >= 2 else None, dll if form >= 3 else None,
                           csum if form == 4 else None)


@st.composite
def mp_join_cases(draw: st.DrawFn) -> tuple[bytes, MptcpOption]:
    backup, addr_id, nonce = draw(st.booleans()), draw(u8), draw(u32)
    form = draw(st.integers(0, 2))
    if form == 0:
        token = draw(u32)
        return (struct.pack("!BBII", 0x10 | backup, addr_id, token, nonce),
                MpJoinSyn(token, nonce, addr_id, backup))
    if form == 1:
        mac = draw(st.binary(min_size=8, max_size=8))
        return (struct.pack("!BB8sI", 0x10 | backup, addr_id, mac, nonce),
                MpJoinSynAck(mac, nonce, addr_id, backup))
    mac = draw(st.binary(min_size=20, max_size=20))
    return b"\x10\x00" + mac, MpJoinAck(mac)


@st.composite
def dss_cases(draw: st.DrawFn) -> tuple[bytes, MptcpOption]:
    fin = draw(st.booleans())
    ack_width = draw(st.sampled_from([0, 4, 8]))
    map_width = draw(st.sampled_from([0, 4, 8]))
    with_checksum = draw(st.booleans())
    flags = fin << 4
    rest = b""
    data_ack = None
    if ack_width:
        data_ack = draw(u64 if ack_width == 8 else u32)
        flags |= 0x01 | (0x02 if ack_width == 8 else 0)
        rest += data_ack.to_bytes(ack_width, "big")
    mapping = None
    if map_width:
        dsn, ssn, dll = draw(u64 if map_width == 8 else u32), draw(u32), draw(u16)
        csum = draw(u16) if with_checksum else None
        flags |= 0x04 | (0x08 if map_width == 8 else 0)
        rest += dsn.to_bytes(map_width, "big") + struct.pack("!IH", ssn, dll)
        if csum is not None:
            rest += struct.pack("!H", csum)
        mapping = DssMapping(dsn, ssn, dll, csum, data_seq_64=map_width == 8)
    return bytes((0x20, flags)) + rest, Dss(data_ack, mapping, fin, data_ack_64=ack_width == 8)


@st.composite
def add_addr_cases(draw: st.DrawFn) -> tuple[bytes, MptcpOption]:
    echo, addr_id = draw(st.booleans()), draw(u8)
    raw = draw(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
    address = ipaddress.ip_address(raw)
    port = draw(st.none() | u16)
    mac = None if echo else draw(st.binary(min_size=8, max_size=8))
    body = bytes((0x30 | echo, addr_id)) + raw
    if port is not None:
        body += struct.pack("!H", port)
    return body + (mac or b""), AddAddr(addr_id, address, port, mac, echo)


@st.composite
def other_cases(draw: st.DrawFn) -> tuple[bytes, MptcpOption]:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        ids = draw(st.lists(u8, min_size=1, max_size=37))
        return bytes((0x40, *ids)), RemoveAddr(tuple(ids))
    if kind == 1:
        backup, addr_id = draw(st.booleans()), draw(st.none() | u8)
        return (bytes((0x50 | backup,)) + (b"" if addr_id is None else bytes((addr_id,))),
                MpPrio(backup, addr_id))
    if kind == 2:
        dsn = draw(u64)
        return struct.pack("!BBQ", 0x60, 0, dsn), MpFail(dsn)
    if kind == 3:
        key = draw(u64)
        return struct.pack("!BBQ", 0x70, 0, key), MpFastclose(key)
    if kind == 4:
        u, v, w, t, reason = (*(draw(st.booleans()) for _ in range(4)), draw(u8))
        return (bytes((0x80 | u << 3 | v << 2 | w << 1 | t, reason)),
                MpTcpRst(reason, t, u, v, w))
    body = bytes((draw(st.integers(9, 15)) << 4 | draw(st.integers(0, 15)),))
    body += draw(st.binary(max_size=37))
    return body, UnknownMptcpOption(body)


cases = mp_capable_cases() | mp_join_cases() | dss_cases() | add_addr_cases() | other_cases()


@settings(max_examples=400)
@given(cases)
def test_canonical_bytes_parse_to_their_meaning_and_emit_back(
        case: tuple[bytes, MptcpOption]) -> None:
    body, value = case
    assert parse_mptcp_option(body) == value
    assert value.emit() == body
    assert from_tcp_option(UnknownOption(30, body)) == value
    assert to_tcp_option(value) == UnknownOption(30, body)


@settings(max_examples=400)
@given(cases)
def test_emit_then_parse_is_identity(case: tuple[bytes, MptcpOption]) -> None:
    _body, value = case
    again = parse_mptcp_option(value.emit())
    assert again == value
    assert type(again) is type(value)


@settings(max_examples=1000)
@given(st.binary(max_size=60), st.sampled_from([None, True, False]))
def test_random_bodies_raise_only_parse_error(body: bytes, checksum: bool | None) -> None:
    try:
        option = parse_mptcp_option(body, dss_checksum=checksum)
    except ParseError:
        return
    # Whatever parses is a value that emits; reserved bits aside, the same length.
    assert len(option.emit()) == len(body)


@settings(max_examples=300)
@given(cases, st.integers(0, 39), u8)
def test_mutated_bodies_raise_only_parse_error(case: tuple[bytes, MptcpOption], where: int,
                                               byte: int) -> None:
    body = bytearray(case[0])
    if where < len(body):
        body[where] = byte
    for variant in (bytes(body), bytes(body[:where]), bytes(body) + bytes((byte,))):
        with contextlib.suppress(ParseError):
            parse_mptcp_option(variant)


# --- the rules in detail -----------------------------------------------------------------

def test_mp_capable_third_ack_as_linux_sends_it() -> None:
    body = bytes.fromhex("0181") + bytes.fromhex("0123456789abcdef fedcba9876543210")
    option = parse_mptcp_option(body)
    assert option == MpCapable(checksum_required=True, sender_key=0x0123456789ABCDEF,
                               receiver_key=0xFEDCBA9876543210)


def test_reserved_bits_are_ignored_and_not_emitted() -> None:
    # MP_CAPABLE flags D-G (§3.1) and the DSS reserved bits (§3.3).
    assert parse_mptcp_option(bytes((0x01, 0x1F))) == MpCapable(hmac_sha256=True)
    assert parse_mptcp_option(bytes((0x2F, 0xE0))) == Dss()
    assert MpCapable().emit() == bytes((0x01, 0x01))


def test_mp_capable_length_must_be_one_of_its_forms() -> None:
    for size in (3, 9, 11, 17, 19, 21, 23):
        with pytest.raises(ParseError):
            parse_mptcp_option(bytes((0x01, 0x81)) + bytes(size - 2))


def test_dss_checksum_inferred_from_length_or_stated() -> None:
    without = bytes((0x20, 0x04)) + struct.pack("!IIH", 5, 1, 100)
    with_ = without + b"\xab\xcd"
    assert parse_mptcp_option(with_) == Dss(mapping=DssMapping(5, 1, 100, 0xABCD, False))
    assert parse_mptcp_option(without) == Dss(mapping=DssMapping(5, 1, 100, None, False))
    assert parse_mptcp_option(with_, dss_checksum=True) == parse_mptcp_option(with_)
    with pytest.raises(ParseError, match="missing"):
        parse_mptcp_option(without, dss_checksum=True)
    with pytest.raises(ParseError, match="not negotiated"):
        parse_mptcp_option(with_, dss_checksum=False)
    # A body whose length matches neither.
    with pytest.raises(ParseError):
        parse_mptcp_option(with_ + b"\x00")
    with pytest.raises(ParseError):
        parse_mptcp_option(without[:-1])


def test_dss_data_ack_only_and_flags() -> None:
    assert parse_mptcp_option(bytes((0x20, 0x03)) + (7).to_bytes(8, "big")) == Dss(
        data_ack=7, data_ack_64=True)
    assert parse_mptcp_option(bytes((0x20, 0x11)) + (7).to_bytes(4, "big")) == Dss(
        data_ack=7, data_fin=True)
    with pytest.raises(ParseError):
        parse_mptcp_option(bytes((0x20, 0x03)) + (7).to_bytes(4, "big"))  # 'a' says 8


def test_add_addr_echo_flag_must_match_the_hmac() -> None:
    v4_with_hmac = bytes((0x30, 1)) + bytes(4) + bytes(8)
    assert parse_mptcp_option(v4_with_hmac) == AddAddr(
        1, ipaddress.IPv4Address("0.0.0.0"), None, bytes(8))
    with pytest.raises(ParseError, match="echo"):
        parse_mptcp_option(bytes((0x31,)) + v4_with_hmac[1:])
    with pytest.raises(ValueError):
        AddAddr(1, ipaddress.IPv4Address("10.0.0.1"), echo=True, truncated_hmac=bytes(8))
    with pytest.raises(ValueError):
        AddAddr(1, ipaddress.IPv4Address("10.0.0.1"))  # not an echo, so the HMAC is due


def test_tcprst_reasons_are_named() -> None:
    option = parse_mptcp_option(bytes((0x81, 0x02)))
    assert option == MpTcpRst(TcpRstReason.LACK_OF_RESOURCES, transient=True)
    assert [r.value for r in TcpRstReason] == list(range(7))


@pytest.mark.parametrize("body", [b"", bytes((0x40,)), bytes((0x50, 1, 2)), bytes((0x60, 0)),
                                  bytes((0x70,)) + bytes(10), bytes((0x80,)),
                                  bytes((0x10,)) + bytes(12), bytes((0xF0,)) + bytes(38)])
def test_malformed_lengths(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_mptcp_option(body)


def test_values_that_cannot_be_emitted_are_refused() -> None:
    with pytest.raises(ValueError):
        MpCapable(receiver_key=1)  # the receiver's key only after the sender's
    with pytest.raises(ValueError):
        MpCapable(sender_key=1, receiver_key=2, checksum=3)  # checksum needs a length
    with pytest.raises(ValueError):
        Dss(data_ack=2**32)  # 32-bit unless data_ack_64
    with pytest.raises(ValueError):
        Dss(data_ack_64=True)
    with pytest.raises(ValueError):
        DssMapping(2**32, 0, 0, data_seq_64=False)
    with pytest.raises(ValueError):
        MpJoinSynAck(bytes(7), 0, 0)
    with pytest.raises(ValueError):
        RemoveAddr(())
    with pytest.raises(ValueError):
        UnknownMptcpOption(bytes((0x20, 0)))  # DSS is a known subtype


def test_tcp_option_helpers() -> None:
    options = (MssOption(1460), Dss(data_ack=1).to_tcp_option(), UnknownOption(31, b"x"),
               MpPrio(True).to_tcp_option())
    assert list(mptcp_options(options)) == [Dss(data_ack=1), MpPrio(True)]
    with pytest.raises(ValueError):
        from_tcp_option(UnknownOption(31, b"x"))
    # What we emit fits TCP's own encoder.
    encode_tcp_options((MpJoinAck(bytes(20)).to_tcp_option(),))


# --- 32 -> 64 bit expansion (§3.3) ---------------------------------------------------------

@pytest.mark.parametrize(("value", "reference", "expected"), [
    (0x10, 0x1_0000_0000, 0x1_0000_0010),
    (0xFFFF_FFF0, 0x2_0000_0010, 0x1_FFFF_FFF0),  # just behind, across the 32-bit wrap
    (0x0000_0010, 0x1_FFFF_FFF0, 0x2_0000_0010),  # just ahead, across the wrap
    (5, 2**64 - 3, 5),  # the 64-bit space wraps too
    (2**32 - 3, 2, 2**64 - 3),
])
def test_expand_to_64_examples(value: int, reference: int, expected: int) -> None:
    assert expand_to_64(value, reference) == expected


@given(u64, st.integers(-(2**31), 2**31 - 1))
def test_expand_to_64_recovers_values_near_the_reference(reference: int, offset: int) -> None:
    actual = (reference + offset) % 2**64
    assert expand_to_64(actual % 2**32, reference) == actual
