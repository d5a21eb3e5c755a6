"""Bad input never crashes the connection or the stack: random and mutated segments go in,
nothing escapes, and a connection that survives still carries data correctly."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.stack.tcp.connection import TcpConfig, TcpState
from testbed.stack.tcp.stack import TcpStack
from testbed.stack.wire.tcp import (
    ACK,
    MssOption,
    SackOption,
    SackPermittedOption,
    TcpOption,
    TcpSegment,
    TimestampOption,
    UnknownOption,
    WindowScaleOption,
)

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
u32 = st.integers(0, 2**32 - 1)
options = st.lists(st.one_of(
    st.builds(MssOption, st.integers(0, 65535)),
    st.builds(WindowScaleOption, st.integers(0, 255)),
    st.just(SackPermittedOption()),
    st.builds(SackOption, st.lists(st.tuples(u32, u32), min_size=1, max_size=4).map(tuple)),
    st.builds(TimestampOption, u32, u32),
    st.builds(UnknownOption, st.integers(2, 255), st.binary(max_size=6)),
), max_size=4).map(tuple)


def established_pair() -> tuple[TcpStack, TcpStack, int]:
    client = TcpStack(rng=random.Random(1), config=TcpConfig(time_wait_s=0.1))
    server = TcpStack(rng=random.Random(2), config=TcpConfig(time_wait_s=0.1))
    server.listen(B, 80)
    conn = client.connect(A, B, 80, 0.0)
    for _ in range(4):
        for src, dst, seg in client.segments_to_send(0.0):
            server.receive(src, dst, seg, 0.0)
        for src, dst, seg in server.segments_to_send(0.0):
            client.receive(src, dst, seg, 0.0)
    assert conn.state is TcpState.ESTABLISHED
    return client, server, conn.local_port


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(u32, u32, st.integers(0, 255), st.integers(0, 65535), options,
                          st.binary(max_size=64), st.booleans()), max_size=12))
def test_random_segments_never_raise(segs: list[tuple[int, int, int, int,
                                                      tuple[TcpOption, ...], bytes,
                                                      bool]]) -> None:
    client, _server, port = established_pair()
    (conn,) = client.connections()
    now = 1.0
    for seq, ack, flags, window, opts, payload, near in segs:
        if near:
            # Near the real sequence numbers, where the interesting checks live.
            seq = (conn.rcv_nxt + seq % 2000 - 1000) & 0xFFFFFFFF
            ack = (conn.snd_una + ack % 2000 - 1000) & 0xFFFFFFFF
        client.receive(B, A, TcpSegment(80, port, seq, ack, flags, window, opts, payload), now)
        client.segments_to_send(now)
        deadline = client.next_timer()
        if deadline is not None and deadline <= now + 0.5:
            now = max(now, deadline)
            client.handle_timer(now)
        now += 0.01
    client.segments_to_send(now)
    assert client.counters["InSegs"] >= len(segs)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 1460)), max_size=10))
def test_injected_segments_do_not_corrupt_a_transfer(junk: list[tuple[int, int]]) -> None:
    """Blind data injection below and beyond the window with wrong ACKs (RFC 5961 §5)."""
    client, server, port = established_pair()
    (conn,) = client.connections()
    (peer,) = server.connections()
    data = random.Random(3).randbytes(30_000)
    conn.send(data, 1.0)
    got = bytearray()
    now = 1.0
    for offset, size in junk:
        bogus_ack = (peer.snd_nxt + 100_000) & 0xFFFFFFFF
        seg = TcpSegment(port, 80, (peer.rcv_nxt + offset) & 0xFFFFFFFF, bogus_ack, ACK,
                         1000, (), b"\xee" * size)
        server.receive(A, B, seg, now)
    for _ in range(200):
        for src, dst, seg in client.segments_to_send(now):
            server.receive(src, dst, seg, now)
        for src, dst, seg in server.segments_to_send(now):
            client.receive(src, dst, seg, now)
        got += peer.recv()
        if len(got) == len(data):
            break
        now += 0.05
        client.handle_timer(now)
        server.handle_timer(now)
    assert bytes(got) == data
