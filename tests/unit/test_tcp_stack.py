"""The host-level TCP: demux, listeners and accept, RSTs for strays, ISNs, ports, reaping."""

from __future__ import annotations

import random

from testbed.stack.tcp.connection import TcpConfig, TcpConnection, TcpState
from testbed.stack.tcp.hooks import TcpHooks
from testbed.stack.tcp.stack import EPHEMERAL_HIGH, EPHEMERAL_LOW, TcpStack
from testbed.stack.wire.tcp import ACK, RST, SYN, TcpOption, TcpSegment, UnknownOption

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
CFG = TcpConfig(time_wait_s=0.5)


def pump(a: TcpStack, b: TcpStack, now: float, rounds: int = 10) -> None:
    """Move segments between two stacks with no delay until both are quiet."""
    for _ in range(rounds):
        out_a = a.segments_to_send(now)
        out_b = b.segments_to_send(now)
        if not out_a and not out_b:
            return
        for src, dst, seg in out_a:
            b.receive(src, dst, seg, now)
        for src, dst, seg in out_b:
            a.receive(src, dst, seg, now)


def test_syn_to_a_closed_port_gets_rst_ack() -> None:
    stack = TcpStack(rng=random.Random(1))
    stack.receive(B, A, TcpSegment(1234, 80, 5000, 0, SYN, 1000), 0.0)
    assert stack.segments_to_send(0.0) == [
        (A, B, TcpSegment(80, 1234, 0, 5001, RST | ACK, 0))]
    assert stack.counters["OutRsts"] == 1


def test_ack_to_no_connection_gets_rst_at_its_ack_and_rst_gets_nothing() -> None:
    stack = TcpStack(rng=random.Random(1))
    stack.receive(B, A, TcpSegment(1234, 80, 5000, 777, ACK, 1000, payload=b"x"), 0.0)
    stack.receive(B, A, TcpSegment(1234, 80, 5000, 777, RST, 0), 0.0)
    assert stack.segments_to_send(0.0) == [(A, B, TcpSegment(80, 1234, 777, 0, RST, 0))]


def test_listen_accept_transfer_and_reap_after_time_wait() -> None:
    client = TcpStack(rng=random.Random(1), config=CFG)
    server = TcpStack(rng=random.Random(2), config=CFG)
    listener = server.listen(bytes(4), 80)
    conn = client.connect(A, B, 80, 0.0)
    assert EPHEMERAL_LOW <= conn.local_port <= EPHEMERAL_HIGH
    assert listener.accept() is None
    pump(client, server, 0.0)
    accepted = listener.accept()
    assert accepted is not None and accepted.state is TcpState.ESTABLISHED
    assert accepted.local_addr == B and accepted.remote_port == conn.local_port
    conn.send(b"ping", 0.1)
    pump(client, server, 0.1)
    assert accepted.recv() == b"ping"
    conn.close(0.2)
    pump(client, server, 0.2)
    accepted.close(0.3)
    pump(client, server, 0.3)
    assert conn.state is TcpState.TIME_WAIT and server.connections() == []
    assert client.next_timer() == 0.8
    client.handle_timer(0.8)
    client.segments_to_send(0.8)
    assert client.connections() == []
    assert client.counters["ActiveOpens"] == 1 and server.counters["PassiveOpens"] == 1


def test_backlog_limits_the_syn_queue() -> None:
    server = TcpStack(rng=random.Random(2))
    server.listen(B, 80, backlog=2)
    for port in (1001, 1002, 1003):
        server.receive(A, B, TcpSegment(port, 80, 5000, 0, SYN, 1000), 0.0)
    assert len(server.connections()) == 2
    assert server.counters["ListenOverflows"] == 1


def test_isn_depends_on_the_four_tuple_and_ports_do_not_collide() -> None:
    stack = TcpStack(rng=random.Random(3))
    conns = [stack.connect(A, B, 80, 0.0) for _ in range(50)]
    assert len({c.local_port for c in conns}) == 50
    assert len({c.iss for c in conns}) == 50


def test_same_seed_same_isns_and_ports() -> None:
    def first(seed: int) -> tuple[int, int]:
        conn = TcpStack(rng=random.Random(seed)).connect(A, B, 80, 1.0)
        return conn.iss, conn.local_port

    assert first(7) == first(7)
    assert first(7) != first(8)


def test_hooks_factory_is_used_for_both_sides_and_sees_events() -> None:
    events: list[tuple[str, str]] = []

    class Recorder(TcpHooks):
        def __init__(self, side: str) -> None:
            self.side = side

        def syn_options(self, conn: TcpConnection, syn_ack: bool) -> list[TcpOption]:
            return [UnknownOption(30, b"\x00\x81")]

        def on_event(self, conn: TcpConnection, event: str) -> None:
            events.append((self.side, event))

    client = TcpStack(rng=random.Random(1), hooks_factory=lambda c: Recorder("client"))
    server = TcpStack(rng=random.Random(2), hooks_factory=lambda c: Recorder("server"))
    server.listen(B, 80)
    client.connect(A, B, 80, 0.0)
    syn = client.segments_to_send(0.0)[0][2]
    assert UnknownOption(30, b"\x00\x81") in syn.options
    server.receive(A, B, syn, 0.0)
    pump(client, server, 0.0)
    assert ("client", "established") in events and ("server", "established") in events


def test_new_syn_takes_over_a_time_wait_pair() -> None:
    client = TcpStack(rng=random.Random(1), config=CFG)
    server = TcpStack(rng=random.Random(2), config=CFG)
    listener = server.listen(B, 80)
    conn = client.connect(A, B, 80, 0.0, local_port=5555)
    pump(client, server, 0.0)
    server_side = listener.accept()
    assert server_side is not None
    server_side.close(0.1)  # the server closes first and ends in TIME-WAIT
    pump(client, server, 0.1)
    conn.close(0.1)
    pump(client, server, 0.1)
    assert server_side.state is TcpState.TIME_WAIT
    syn = TcpSegment(5555, 80, (server_side.rcv_nxt + 100000) & 0xFFFFFFFF, 0, SYN, 1000)
    server.receive(A, B, syn, 0.2)
    (new,) = server.connections()
    assert new is not server_side and new.state is TcpState.SYN_RECEIVED
