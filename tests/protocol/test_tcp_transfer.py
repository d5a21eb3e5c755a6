"""Two of our TCP stacks over the in-memory network: whole transfers under seeded path
conditions, checked by sha256, plus the connection-level behaviours that need a network."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import pytest

from testbed.stack.tcp.connection import TcpConfig, TcpState
from testbed.stack.wire.ipv4 import parse_ipv4
from testbed.stack.wire.tcp import SYN, parse_tcp
from tests.protocol.hosts import BulkSender, Sink, TcpHost
from tests.protocol.netsim import Direction, Network, PathConditions

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
PORT = 5001


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def transfer(seed: int, size: int, cond: PathConditions, config: TcpConfig | None = None,
             until: float = 600.0, drop_if: Callable[[str, Direction, bytes], bool] | None = None,
             ) -> tuple[Network, TcpHost, TcpHost, BulkSender, Sink]:
    net = Network(seed)
    net.drop_if = drop_if
    client = TcpHost("client", A, seed=seed * 2 + 1, config=config)
    server = TcpHost("server", B, seed=seed * 2 + 2, config=config)
    net.attach(client)
    net.attach(server)
    net.connect("client", "server", cond)
    sink = Sink(server.stack.listen(B, PORT))
    server.apps.append(sink)
    sender = BulkSender(B, PORT, payload(size))
    client.apps.append(sender)

    def done() -> bool:
        return (sender.conn is not None and sender.conn.closed
                and not client.stack.connections() and not server.stack.connections())

    net.run(until, stop=done)
    return net, client, server, sender, sink


def test_clean_1mb_transfer_closes_both_ends() -> None:
    _net, client, server, sender, sink = transfer(1, 1_000_000, PathConditions(delay_s=0.01))
    assert sink.sha256() == hashlib.sha256(sender.data).hexdigest()
    assert sender.conn is not None and sender.conn.error is None
    assert sender.conn.stats()["retransmissions"] == 0
    assert client.stack.counters.get("RetransSegs", 0) == 0
    assert client.stack.connections() == [] and server.stack.connections() == []
    assert client.stack.counters["ActiveOpens"] == 1
    assert server.stack.counters["PassiveOpens"] == 1
    # Receive-buffer auto-tuning grew the receiver's window beyond its start.
    assert sink.conns[0].receive_buffer_size > TcpConfig().receive_buffer


CONDITIONS = {
    "loss1": PathConditions(delay_s=0.01, loss=0.01),
    "loss5": PathConditions(delay_s=0.01, loss=0.05),
    "jitter": PathConditions(delay_s=0.01, jitter_s=0.004),
    "reorder": PathConditions(delay_s=0.01, reorder=0.05),
    "duplicate": PathConditions(delay_s=0.01, duplicate=0.05),
    "corrupt": PathConditions(delay_s=0.01, corrupt=0.02),
    "everything": PathConditions(delay_s=0.02, jitter_s=0.002, loss=0.02, duplicate=0.01,
                                 reorder=0.02, corrupt=0.01),
    "bottleneck": PathConditions(delay_s=0.01, rate_bps=20e6, queue_packets=50),
}


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_1mb_transfer_survives(name: str) -> None:
    net, client, server, sender, sink = transfer(3, 1_000_000, CONDITIONS[name])
    assert sink.sha256() == hashlib.sha256(sender.data).hexdigest()
    assert sender.conn is not None and sender.conn.error is None
    if name.startswith("loss"):
        assert client.stack.counters["RetransSegs"] > 0
    if name == "corrupt":
        corrupted = net.counters("client-server").corrupted
        drops = client.drops.parse_errors + server.drops.parse_errors
        assert 0 < drops <= corrupted
        in_errs = client.stack.counters.get("InErrs", 0) + server.stack.counters.get("InErrs", 0)
        assert in_errs == drops - client.drop_reasons.get("ipv4", 0) \
            - server.drop_reasons.get("ipv4", 0)


def test_10mb_transfer_with_loss() -> None:
    cond = PathConditions(delay_s=0.01, loss=0.01, rate_bps=100e6, queue_packets=200)
    _net, _client, _server, sender, sink = transfer(11, 10_000_000, cond)
    assert len(sink.data()) == 10_000_000
    assert sink.sha256() == hashlib.sha256(sender.data).hexdigest()


def test_newreno_without_sack_completes_under_loss() -> None:
    config = TcpConfig(sack=False)
    _net, client, _server, sender, sink = transfer(5, 1_000_000,
                                                 PathConditions(delay_s=0.01, loss=0.02),
                                                 config)
    assert sink.sha256() == hashlib.sha256(sender.data).hexdigest()
    assert client.stack.counters.get("TCPRenoRecovery", 0) > 0
    assert client.stack.counters.get("TCPSackRecovery", 0) == 0
    assert sender.conn is not None and sender.conn.stats()["sack_blocks_received"] == 0


def drop_data(seq_offset: int, times: int) -> Callable[[str, Direction, bytes], bool]:
    """A drop_if that drops the client's data segment starting `seq_offset` bytes into the
    stream, its first `times` transmissions, and nothing else."""
    isn: int | None = None
    dropped = 0

    def drop(_path: str, direction: Direction, packet: bytes) -> bool:
        nonlocal isn, dropped
        if direction != "ab":
            return False
        ip = parse_ipv4(packet)
        seg = parse_tcp(ip.payload, ip.src, ip.dst)
        if seg.flags & SYN:
            isn = seg.seq
            return False
        if isn is None or not seg.payload or dropped >= times:
            return False
        if (seg.seq - isn - 1) % 2**32 == seq_offset:
            dropped += 1
            return True
        return False
    return drop


def test_a_lost_retransmission_is_resent_without_a_timeout() -> None:
    """The retransmission of a lost segment is lost too: segments sent after it are SACKed,
    so the sender resends it in the same recovery (RFC 8985's rule on retransmissions) instead
    of waiting for the RTO. Without that rule the same trace ends in one timeout."""
    # A queue that never overflows: the two drops are the only losses. The rate spaces the
    # transmissions, so those after the retransmission went later than it by more than the
    # reordering window (a quarter of the minimum RTT).
    cond = PathConditions(delay_s=0.01, rate_bps=20e6, queue_packets=1000)
    # A receive buffer that does not limit the flight: with the default 128 KiB start the
    # sender has no window left to send new data after the retransmission, so nothing can
    # overtake it and only the RTO finds it (Linux would be stuck the same way).
    config = TcpConfig(receive_buffer=1 << 20)
    net, client, _server, sender, sink = transfer(4, 1_000_000, cond, config,
                                                 drop_if=drop_data(300 * 1448, times=2))
    assert sink.sha256() == hashlib.sha256(sender.data).hexdigest()
    assert net.counters("client-server", "ab").lost == 2
    counters = client.stack.counters
    assert counters.get("TCPLostRetransmit") == 1
    assert counters.get("TCPTimeouts", 0) == 0
    assert counters["RetransSegs"] == 2 and counters["TCPSackRecovery"] == 1


def trace_digest(net: Network) -> str:
    h = hashlib.sha256()
    for entry in net.trace:
        h.update(f"{entry.time:.9f}{entry.path}{entry.direction}{entry.fate}".encode())
        h.update(entry.packet)
    return h.hexdigest()


def test_same_seed_same_trace() -> None:
    cond = PathConditions(delay_s=0.01, jitter_s=0.002, loss=0.03, reorder=0.02)
    first = trace_digest(transfer(9, 200_000, cond)[0])
    second = trace_digest(transfer(9, 200_000, cond)[0])
    third = trace_digest(transfer(10, 200_000, cond)[0])
    assert first == second
    assert first != third


def two_hosts(seed: int = 1) -> tuple[Network, TcpHost, TcpHost]:
    net = Network(seed)
    a = TcpHost("a", A, seed=1)
    b = TcpHost("b", B, seed=2)
    net.attach(a)
    net.attach(b)
    net.connect("a", "b", PathConditions(delay_s=0.005))
    return net, a, b


def test_connection_to_closed_port_is_refused() -> None:
    net, a, b = two_hosts()
    conn = a.stack.connect(A, B, 9, 0.0)
    net.run(5.0, stop=lambda: conn.closed)
    assert conn.closed
    assert conn.error == "connection refused"
    assert b.stack.counters["OutRsts"] == 1
    assert a.stack.counters["AttemptFails"] == 1


def test_both_ends_close_at_once() -> None:
    net, a, b = two_hosts()
    listener = b.stack.listen(B, PORT)
    ca = a.stack.connect(A, B, PORT, 0.0)
    net.run(1.0, stop=lambda: ca.established and listener.pending > 0)
    cb = listener.accept()
    assert cb is not None
    ca.close(net.now)
    cb.close(net.now)
    states: set[TcpState] = set()

    def both_closed() -> bool:
        states.update({ca.state, cb.state})
        return ca.closed and cb.closed

    net.run(10.0, stop=both_closed)
    assert ca.closed and cb.closed
    assert ca.error is None and cb.error is None
    assert TcpState.CLOSING in states and TcpState.TIME_WAIT in states


def test_simultaneous_open_over_the_network() -> None:
    net, a, b = two_hosts()
    ca = a.stack.connect(A, B, 4000, 0.0, local_port=3000)
    cb = b.stack.connect(B, A, 3000, 0.0, local_port=4000)
    net.run(5.0, stop=lambda: ca.established and cb.established)
    assert ca.state is TcpState.ESTABLISHED and cb.state is TcpState.ESTABLISHED
    ca.send(b"hello", net.now)
    net.run(net.now + 1.0, stop=lambda: cb.readable)
    assert cb.recv() == b"hello"
