"""Two MptcpStacks over the in-memory network, several paths between them: whole transfers
checked by sha256, under seeded loss, reordering and duplication on every path, a path going
down mid-transfer, DATA_FIN both ways, fast close, and runs that repeat bit for bit."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest

from testbed.stack.mptcp.connection import MetaState, MptcpConfig
from tests.protocol.mptcp_hosts import (
    MptcpHost,
    MptcpReader,
    MptcpSender,
    MptcpSink,
    route_by_address,
)
from tests.protocol.netsim import Network, PathConditions

SERVER = bytes([10, 0, 0, 2])
PORT = 8080


def client_addr(i: int) -> bytes:
    return bytes([10, 0, i + 1, 1])


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Run:
    net: Network
    client: MptcpHost
    server: MptcpHost
    sender: MptcpSender
    sink: MptcpSink
    paths: list[str]
    reader: MptcpReader

    def finished(self) -> bool:
        conn = self.sender.conn
        return (conn is not None and conn.closed and not self.client.stack.connections()
                and not self.server.stack.connections())


def setup(seed: int, size: int, conditions: list[PathConditions], *,
          client_config: MptcpConfig | None = None, server_config: MptcpConfig | None = None,
          reply: bytes = b"") -> Run:
    net = Network(seed)
    addrs = [client_addr(i) for i in range(len(conditions))]
    config = client_config or MptcpConfig(extra_local_addrs=tuple(addrs[1:]))
    client = MptcpHost("client", addrs, seed=seed * 2 + 1, config=config)
    server = MptcpHost("server", [SERVER], seed=seed * 2 + 2, config=server_config)
    net.attach(client)
    net.attach(server)
    paths = [net.connect("client", "server", cond) for cond in conditions]
    net.route = route_by_address(dict(zip(addrs, paths, strict=True)))
    sink = MptcpSink(server.stack.listen(SERVER, PORT), reply=reply)
    server.apps.append(sink)
    sender = MptcpSender(SERVER, PORT, payload(size))
    reader = MptcpReader(sender)
    client.apps += [sender, reader]
    return Run(net, client, server, sender, sink, paths, reader)


def transfer(seed: int, size: int, conditions: list[PathConditions], until: float = 300.0,
             **kwargs: object) -> Run:
    run = setup(seed, size, conditions, **kwargs)  # type: ignore[arg-type]
    run.net.run(until, stop=run.finished)
    return run


def shaped(delay_s: float, **kwargs: object) -> PathConditions:
    return PathConditions(delay_s=delay_s, rate_bps=20e6, queue_packets=60,
                          **kwargs)  # type: ignore[arg-type]


def assert_intact(run: Run) -> None:
    assert run.sink.conns, "the server accepted nothing"
    assert run.sink.sha256() == hashlib.sha256(run.sender.data).hexdigest()
    conn = run.sender.conn
    assert conn is not None and conn.error is None and conn.closed
    assert run.sink.conns[0].error is None


@pytest.mark.parametrize("paths", [2, 3])
def test_2mb_over_clean_paths_uses_every_subflow(paths: int) -> None:
    run = transfer(1, 2_000_000, [shaped(0.010 + 0.005 * i) for i in range(paths)])
    assert_intact(run)
    c, s = run.client.stack.counters, run.server.stack.counters
    assert c["MPCapableSYNTX"] == 1 and c["MPCapableSYNACKRX"] == 1
    assert s["MPCapableSYNRX"] == 1 and s["MPCapableACKRX"] == 1
    assert c["MPJoinSynTx"] == c["MPJoinSynAckRx"] == paths - 1
    assert s["MPJoinSynRx"] == s["MPJoinAckRx"] == paths - 1
    for name in ("DSSNotMatching", "InfiniteMapRx", "DataCsumErr", "MPJoinAckHMacFailure"):
        assert name not in c and name not in s
    # Every path carried a real share of the data.
    for path in run.paths:
        assert run.net.counters(path, "ab").sent > 100
    assert run.sender.conn is not None and not run.sender.conn.fallback


CONDITIONS = {
    "loss": dict(loss=0.02),
    "reorder": dict(reorder=0.05, jitter_s=0.002),
    "duplicate": dict(duplicate=0.05),
    "everything": dict(loss=0.01, reorder=0.02, duplicate=0.01, jitter_s=0.002),
}


@pytest.mark.parametrize("name", sorted(CONDITIONS))
@pytest.mark.parametrize("paths", [2, 3])
def test_2mb_survives_path_impairments(name: str, paths: int) -> None:
    conds = [shaped(0.010 + 0.004 * i, **CONDITIONS[name]) for i in range(paths)]
    run = transfer(11, 2_000_000, conds)
    assert_intact(run)
    if name in ("loss", "everything"):
        assert any(run.net.counters(p).lost for p in run.paths)


def test_checksums_negotiated_and_checked() -> None:
    run = transfer(4, 500_000, [shaped(0.01), shaped(0.02)],
                   client_config=MptcpConfig(checksum=True,
                                             extra_local_addrs=(client_addr(1),)))
    assert_intact(run)
    assert run.sender.conn is not None and run.sender.conn.checksum
    assert run.sink.conns[0].checksum
    assert "DataCsumErr" not in run.server.stack.counters


def test_path_down_mid_transfer_reinjects_and_keeps_the_stream() -> None:
    run = setup(5, 2_000_000, [shaped(0.01), shaped(0.012)])
    run.net.run(0.3)
    assert run.sender.conn is not None and len(run.sender.conn.subflows) == 2
    for direction in ("ab", "ba"):
        run.net.set_conditions(run.paths[1], direction, PathConditions(down=True))  # type: ignore[arg-type]
    run.net.run(300.0, stop=run.finished)
    assert run.sink.sha256() == hashlib.sha256(run.sender.data).hexdigest()
    assert run.sender.conn.counters.bytes_reinjected > 0
    assert run.client.stack.counters["MPTCPReinject"] > 0


def test_data_fin_both_ways() -> None:
    reply = payload(300_000, seed=9)
    run = transfer(6, 400_000, [shaped(0.01), shaped(0.015)], reply=reply)
    assert_intact(run)
    assert bytes(run.reader.received) == reply
    client, server = run.sender.conn, run.sink.conns[0]
    assert client is not None
    assert client.at_eof and server.at_eof
    assert client.state is MetaState.CLOSED and server.state is MetaState.CLOSED
    # Both DATA_FINs took one DSN each: the data ACKs are one past the last byte.
    assert client.snd_una == server.rcv_nxt and server.snd_una == client.rcv_nxt


def test_fast_close_resets_every_subflow() -> None:
    run = setup(7, 5_000_000, [shaped(0.01), shaped(0.012)])
    run.net.run(0.4)
    client = run.sender.conn
    assert client is not None and len(client.subflows) == 2
    client.abort(run.net.now)
    run.net.run(5.0)
    server = run.sink.conns[0]
    assert client.closed and client.error == "aborted"
    assert server.closed and server.error is not None and "MP_FASTCLOSE" in server.error
    # One MP_FASTCLOSE per subflow (counted per option sent, as Linux does); the first to
    # arrive closes everything on the server.
    assert run.client.stack.counters["MPFastcloseTx"] == 2
    assert run.server.stack.counters["MPFastcloseRx"] >= 1
    assert not run.server.stack.subflow_connections()


def test_same_seed_same_run() -> None:
    conds = [shaped(0.01, loss=0.01, reorder=0.02), shaped(0.013, loss=0.01, duplicate=0.02)]
    first = transfer(21, 600_000, conds)
    second = transfer(21, 600_000, conds)
    assert [(e.time, e.path, e.fate, e.packet) for e in first.net.trace] == \
        [(e.time, e.path, e.fate, e.packet) for e in second.net.trace]
    assert first.client.stack.counters == second.client.stack.counters


SIMULT_FLOWS = {
    "10/10 1/1 ms": ((10e6, 10e6), (0.001, 0.001)),
    "15/5 1/1 ms": ((15e6, 5e6), (0.001, 0.001)),
    "10/10 1/25 ms": ((10e6, 10e6), (0.001, 0.025)),
    "10/10 25/1 ms": ((10e6, 10e6), (0.025, 0.001)),
}


@pytest.mark.parametrize("case", sorted(SIMULT_FLOWS))
def test_two_shaped_paths_aggregate_within_the_simult_flows_bound(case: str) -> None:
    """Linux's selftest simult_flows.sh: the transfer ends within size*8/(r1+r2) * 10/9
    + 0.4 s, which no single path could do (here in simulated time, 4 MB)."""
    rates, delays = SIMULT_FLOWS[case]
    conds = [PathConditions(delay_s=d, rate_bps=r,
                            queue_packets=max(20, int(r * (2 * d + 0.01) / 12000)))
             for r, d in zip(rates, delays, strict=True)]
    size = 4_000_000
    run = transfer(3, size, conds)
    assert_intact(run)
    assert run.sink.eof_at is not None
    assert run.sink.eof_at <= size * 8 / sum(rates) * 10 / 9 + 0.4
    # Each path carried at least 3/4 of its fair share of the data segments.
    sent = [run.net.counters(p, "ab").sent for p in run.paths]
    for rate, count in zip(rates, sent, strict=True):
        assert count >= 0.75 * sum(sent) * rate / sum(rates)
