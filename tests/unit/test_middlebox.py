"""The middlebox transforms on real frames built with our codecs, read back with them."""

from __future__ import annotations

import pytest

from testbed.emu.middlebox.core import (
    Middlebox,
    available_transforms,
    mptcp_subtype,
    parse_transform,
)
from testbed.errors import ParameterError
from testbed.stack.mptcp.options import Dss, DssMapping, MpCapable, MpJoinSyn, to_tcp_option
from testbed.stack.wire.arp import ARP_REQUEST, ArpPacket, emit_arp, parse_arp
from testbed.stack.wire.ethernet import EthernetFrame, emit_ethernet, parse_ethernet
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    SYN,
    MssOption,
    SackOption,
    TcpSegment,
    TimestampOption,
    emit_tcp,
    parse_tcp,
)

A, B = bytes([10, 0, 1, 1]), bytes([10, 0, 3, 1])
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
CAPABLE = to_tcp_option(MpCapable())
JOIN = to_tcp_option(MpJoinSyn(receiver_token=7, sender_nonce=9, address_id=1))
DSS = to_tcp_option(Dss(data_ack=5, mapping=DssMapping(100, 1, 1000)))


def frame(seg: TcpSegment, src: bytes = A, dst: bytes = B) -> bytes:
    packet = Ipv4Packet(src=src, dst=dst, protocol=PROTO_TCP, payload=emit_tcp(seg, src, dst))
    mac_src, mac_dst = (MAC_A, MAC_B) if src == A else (MAC_B, MAC_A)
    return emit_ethernet(EthernetFrame(mac_dst, mac_src, 0x0800, emit_ipv4(packet)))


def segment_of(raw: bytes) -> TcpSegment:
    ip = parse_ipv4(parse_ethernet(raw).payload)  # checksums verified on the way
    return parse_tcp(ip.payload, ip.src, ip.dst)


def syn(*options: object) -> TcpSegment:
    return TcpSegment(40000, 80, 1000, 0, SYN, 65535, (MssOption(1460), *options))  # type: ignore[arg-type]


def data(seq: int, payload: bytes, *options: object, flags: int = ACK) -> TcpSegment:
    return TcpSegment(40000, 80, seq, 5000, flags, 1000, tuple(options), payload)  # type: ignore[arg-type]


def run(spec: str, seg: TcpSegment, direction: str = "a2b") -> list[TcpSegment]:
    box = Middlebox.from_specs([spec])
    src, dst = (A, B) if direction == "a2b" else (B, A)
    return [segment_of(f) for f in box.process(direction, frame(seg, src, dst))]


def test_strip_mp_capable_removes_it_from_syns_only() -> None:
    [out] = run("strip-mp-capable", syn(CAPABLE))
    assert [mptcp_subtype(o) for o in out.options] == [None]  # the MSS stays
    # Not on a non-SYN segment, and the bytes of an untouched frame are passed as they came.
    box = Middlebox.from_specs(["strip-mp-capable"])
    raw = frame(data(1001, b"x", CAPABLE))
    assert box.process("a2b", raw) == [raw]
    assert box.stats()["transforms"] == {"strip-mp-capable": {"changed": 0}}


def test_strip_mp_join_leaves_mp_capable() -> None:
    [out] = run("strip-mp-join", syn(JOIN))
    assert all(mptcp_subtype(o) is None for o in out.options)
    [kept] = run("strip-mp-join", syn(CAPABLE))
    assert [mptcp_subtype(o) for o in kept.options] == [None, 0]


def test_strip_dss_only_on_data() -> None:
    [out] = run("strip-dss", data(1001, b"hello", DSS))
    assert out.options == () and out.payload == b"hello"
    pure_ack = data(1001, b"", DSS)
    [ack] = run("strip-dss", pure_ack)
    assert ack == pure_ack


def test_strip_mptcp_everywhere_and_direction_filter() -> None:
    [out] = run("strip-mptcp", data(1, b"", DSS))
    assert out.options == ()
    [untouched] = run("strip-mptcp:dir=b2a", data(1, b"", DSS), direction="a2b")
    assert [mptcp_subtype(o) for o in untouched.options] == [2]


def test_seq_rewrite_shifts_seq_and_unshifts_acks_and_sack() -> None:
    box = Middlebox.from_specs(["seq-rewrite:seed=3"])
    [out] = [segment_of(f) for f in box.process("a2b", frame(syn()))]
    offset = (out.seq - 1000) & 0xFFFFFFFF
    assert offset != 0
    # The reply's ack (and SACK blocks) refer to the shifted numbers and are shifted back.
    reply = TcpSegment(80, 40000, 7000, (out.seq + 1) & 0xFFFFFFFF, SYN | ACK, 65535,
                       (SackOption((((out.seq + 10) & 0xFFFFFFFF, (out.seq + 20) & 0xFFFFFFFF),)),))
    [back] = [segment_of(f) for f in box.process("b2a", frame(reply, B, A))]
    assert back.ack == 1001
    assert back.option(SackOption) == SackOption(((1010, 1020),))
    # The b side's own numbers were shifted by its own offset.
    assert back.seq != 7000


def test_payload_change_flips_one_byte_of_the_nth_data_segment() -> None:
    box = Middlebox.from_specs(["payload-change:nth=2"])
    payload = bytes(range(100))
    outs = [segment_of(box.process("a2b", frame(data(1 + 100 * i, payload)))[0])
            for i in range(3)]
    assert outs[0].payload == payload and outs[2].payload == payload
    changed = [i for i, (x, y) in enumerate(zip(outs[1].payload, payload, strict=True)) if x != y]
    assert changed == [50] and len(outs[1].payload) == 100


def test_split_keeps_options_and_moves_fin_to_the_last_piece() -> None:
    ts = TimestampOption(11, 22)
    seg = data(5000, bytes(1200), ts, DSS, flags=ACK | PSH | FIN)
    pieces = run("split:size=500", seg)
    assert [len(p.payload) for p in pieces] == [500, 500, 200]
    assert [p.seq for p in pieces] == [5000, 5500, 6000]
    assert all(p.options == seg.options for p in pieces)
    assert [bool(p.flags & FIN) for p in pieces] == [False, False, True]
    assert b"".join(p.payload for p in pieces) == seg.payload


def test_coalesce_merges_contiguous_data_keeping_the_first_options() -> None:
    box = Middlebox.from_specs(["coalesce:size=1000"])
    first = data(5000, b"a" * 400, TimestampOption(1, 2), DSS)
    second = data(5400, b"b" * 400, TimestampOption(3, 4),
                  to_tcp_option(Dss(data_ack=6, mapping=DssMapping(500, 401, 400))))
    assert box.process("a2b", frame(first)) == []  # held: the next may fit
    assert box.hold_s == 0.005
    assert box.process("a2b", frame(second)) == []  # merged, 800 < 1000: still held
    third = data(5800, b"c" * 300, DSS)  # would make 1100: the merged one leaves first
    out = [segment_of(f) for f in box.process("a2b", frame(third))]
    assert [(s.seq, s.payload) for s in out] == [(5000, b"a" * 400 + b"b" * 400)]
    assert out[0].options == first.options  # the second segment's DSS is gone
    flushed = box.flush()
    assert [(d, segment_of(f).seq, len(segment_of(f).payload)) for d, f in flushed] == [
        ("a2b", 5800, 300)]
    assert box.hold_s is None and box.flush() == []
    assert box.stats()["transforms"] == {"coalesce": {"changed": 1}}


def test_coalesce_keeps_order_and_passes_what_it_cannot_merge() -> None:
    box = Middlebox.from_specs(["coalesce:size=1000"])
    assert box.process("a2b", frame(data(5000, b"a" * 100))) == []
    # A gap (a loss before the box): the held segment leaves, the new one is held.
    out = box.process("a2b", frame(data(5200, b"b" * 100)))
    assert [segment_of(f).seq for f in out] == [5000]
    # FIN is not merged: the held one leaves before it, in order.
    out = box.process("a2b", frame(data(5300, b"c" * 100, flags=ACK | FIN)))
    assert [(segment_of(f).seq, bool(segment_of(f).flags & FIN)) for f in out] == [
        (5200, False), (5300, True)]
    # A full-size segment passes untouched; the other direction is another flow.
    full = frame(data(9000, bytes(1000)))
    assert box.process("a2b", full) == [full]
    assert box.process("b2a", frame(data(1, b"x" * 10), B, A)) == []
    assert [d for d, _ in box.flush()] == ["b2a"]
    assert box.stats()["transforms"] == {"coalesce": {"changed": 0}}


def test_split_then_coalesce_moves_the_segment_boundaries() -> None:
    box = Middlebox.from_specs(["split:size=600", "coalesce:size=1400"])
    out = box.process("a2b", frame(data(0, bytes(1448), DSS)))
    assert [len(segment_of(f).payload) for f in out] == [1200]  # 600 + 600, 248 held
    out = box.process("a2b", frame(data(1448, bytes(1448), DSS)))
    # The held 248 bytes and the next segment's first 600, under the first segment's DSS.
    assert [(segment_of(f).seq, len(segment_of(f).payload)) for f in out] == [(1200, 848)]
    assert [len(segment_of(f).payload) for _, f in box.flush()] == [848]


def test_other_frames_pass_and_are_counted() -> None:
    box = Middlebox.from_specs(["strip-mptcp"])
    arp = emit_ethernet(EthernetFrame(b"\xff" * 6, MAC_A, 0x0806, emit_arp(
        ArpPacket(ARP_REQUEST, MAC_A, A, bytes(6), B))))
    assert box.process("a2b", arp) == [arp]
    broken = bytearray(frame(data(1, b"abc", DSS)))
    broken[-1] ^= 0xFF  # TCP checksum no longer verifies
    assert box.process("a2b", bytes(broken)) == [bytes(broken)]
    assert box.counters["passed_unparsed"] == 1 and box.counters["frames_a2b"] == 2


@pytest.mark.parametrize("spec, message", [
    ("teleport", "unknown middlebox transform"),
    ("split:size", "not key=value"),
    ("split:size=big", "must be an integer"),
    ("split:colour=3", "unknown parameter"),
    ("split:size=0", "size must be >= 1"),
    ("strip-dss:dir=up", "dir must be"),
    ("coalesce:size=1500", "must fit a 1500-byte MTU"),
    ("coalesce:hold_ms=0", "hold_ms must be >= 1"),
])
def test_bad_specs_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_transform(spec)


def test_every_transform_is_listed() -> None:
    assert set(available_transforms()) == {
        "strip-mp-capable", "strip-mp-join", "strip-dss", "strip-mptcp", "seq-rewrite",
        "payload-change", "split", "coalesce", "nat"}


def test_nat_translates_side_a_flows_and_answers_arp_for_its_address() -> None:
    public = bytes([10, 0, 1, 100])
    box = Middlebox.from_specs(["nat:public=10.0.1.100,first_port=30000"])
    [out] = box.process("a2b", frame(syn()))
    ip = parse_ipv4(parse_ethernet(out).payload)
    seg = parse_tcp(ip.payload, ip.src, ip.dst)  # the checksum holds for the new address
    assert ip.src == public and seg.src_port == 30000 and seg.seq == 1000
    # The reply to the public address and port goes back to the private ones.
    reply = TcpSegment(80, 30000, 7000, 1001, SYN | ACK, 65535)
    [back] = [segment_of(f) for f in box.process("b2a", frame(reply, B, public))]
    assert back.dst_port == 40000
    assert parse_ipv4(parse_ethernet(box.process("b2a", frame(reply, B, public))[0]).payload
                      ).dst == A
    # The router asks who has the public address: the box answers with the hidden host's MAC.
    request = ArpPacket(ARP_REQUEST, MAC_B, B, bytes(6), public)
    assert box.process("b2a", emit_ethernet(EthernetFrame(b"\xff" * 6, MAC_B, 0x0806,
                                                          emit_arp(request)))) == []
    [answer] = box.take_back()
    arp = parse_arp(parse_ethernet(answer).payload)
    assert arp.is_reply and arp.sender_ip == public and arp.sender_mac == MAC_A
    assert parse_ethernet(answer).dst == MAC_B and box.counters["arp_answered"] == 1
    # A segment of a flow the NAT never saw open is not translated.
    stray = TcpSegment(41000, 80, 5, 1, ACK, 100, (), b"x")
    [passed] = [segment_of(f) for f in box.process("a2b", frame(stray))]
    assert passed.src_port == 41000


def test_nat_needs_an_address() -> None:
    with pytest.raises(ParameterError, match="public must be an IPv4 address"):
        parse_transform("nat:public=home")
