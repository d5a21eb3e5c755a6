"""The schedulers and opportunistic retransmission end to end over the in-memory network:
every scheduler delivers the stream intact under loss, reordering and duplication; round-robin
splits a transfer that leaves it a choice about evenly; redundant sends everything on both
subflows; BLEST and ECF keep a small receive buffer off a much slower path that round-robin
fills; opportunistic retransmission with penalisation raises goodput when a small receive
buffer waits on a slow, lossy second path. Deterministic by seed; the margins are wide."""

from __future__ import annotations

import pytest

from testbed.stack.mptcp.connection import MptcpConfig
from testbed.stack.mptcp.scheduler import available_schedulers
from tests.protocol.netsim import PathConditions
from tests.protocol.test_mptcp_transfer import (
    CONDITIONS,
    Run,
    assert_intact,
    client_addr,
    shaped,
    transfer,
)

SCHEDULERS = ["default", "roundrobin", "redundant", "blest", "ecf"]



def small_receiver() -> MptcpConfig:
    """A receiver whose connection-level buffer stays at 128 KiB (no auto-tuning): the
    window, not the paths, then limits the sender, and schedulers have choices to make."""
    return MptcpConfig(receive_buffer=128 << 10, receive_buffer_max=128 << 10)

def client(scheduler: str, **kwargs: object) -> MptcpConfig:
    return MptcpConfig(extra_local_addrs=(client_addr(1),), scheduler=scheduler,
                       **kwargs)  # type: ignore[arg-type]


def data_segments(run: Run) -> list[int]:
    """Segments the client sent on each path (the server only acknowledges)."""
    return [run.net.counters(p, "ab").sent for p in run.paths]


def goodput_mbps(run: Run) -> float:
    assert run.sink.eof_at is not None
    return len(run.sender.data) * 8 / run.sink.eof_at / 1e6


def test_every_scheduler_is_covered() -> None:
    assert set(SCHEDULERS) <= set(available_schedulers())


@pytest.mark.parametrize("opportunistic", [False, True])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_each_scheduler_delivers_the_stream_intact(scheduler: str,
                                                  opportunistic: bool) -> None:
    conds = [shaped(0.010, **CONDITIONS["everything"]),
             shaped(0.030, **CONDITIONS["everything"])]
    run = transfer(11, 1_000_000, conds, client_config=client(
        scheduler, opportunistic=opportunistic), server_config=small_receiver())
    assert_intact(run)
    assert any(run.net.counters(p).lost for p in run.paths)
    assert run.server.stack.counters["MPJoinAckRx"] == 1
    assert run.sender.conn is not None and not run.sender.conn.fallback
    assert all(sent > 50 for sent in data_segments(run))


def test_round_robin_splits_about_evenly_where_the_default_takes_the_fastest() -> None:
    """A send buffer of 16 KiB leaves both windows room at every decision: the default
    puts nearly everything on the 10 ms path, round-robin alternates."""
    conds = [PathConditions(delay_s=0.005, rate_bps=10e6, queue_packets=30),
             PathConditions(delay_s=0.020, rate_bps=10e6, queue_packets=30)]
    shares = {}
    for scheduler in ("default", "roundrobin"):
        run = transfer(3, 1_000_000, conds, client_config=client(scheduler,
                                                                 send_buffer=16 << 10))
        assert_intact(run)
        fast, slow = data_segments(run)
        shares[scheduler] = slow / (fast + slow)
    assert shares["default"] < 0.05
    assert 0.40 <= shares["roundrobin"] <= 0.60


def test_redundant_sends_everything_on_both_subflows() -> None:
    """With a 32 KiB send buffer neither subflow falls so far behind that the data ACK
    overtakes its copies (those are skipped, not sent late)."""
    size = 1_000_000
    conds = [shaped(0.010), shaped(0.010)]
    run = transfer(5, size, conds, client_config=client("redundant", send_buffer=32 << 10))
    assert_intact(run)
    conn = run.sender.conn
    assert conn is not None
    per_subflow = [sf.tcp.counters.bytes_acked for sf in conn._closed_subflows]
    assert len(per_subflow) == 2
    # Each subflow carried the whole stream but what was acknowledged before the join
    # completed (about 70 kB here).
    assert all(sent >= 0.9 * size for sent in per_subflow)
    assert conn.counters.bytes_redundant >= 0.9 * size
    assert conn.counters.bytes_sent >= 1.9 * size
    # The receiver kept each byte once.
    assert run.sink.conns[0].counters.bytes_received == size


# A fast path (20 Mbit/s, 20 ms RTT) and a much slower one (5 Mbit/s, 200 ms RTT), a
# 128 KiB receive buffer at the server, and a 256 KiB send buffer at the client (the
# connection's queue that ECF reasons about: Linux autotunes it to a few BDPs).
def heterogeneous(slow_loss: float = 0.0) -> list[PathConditions]:
    return [PathConditions(delay_s=0.010, rate_bps=20e6, queue_packets=33),
            PathConditions(delay_s=0.100, rate_bps=5e6, queue_packets=83, loss=slow_loss)]


@pytest.mark.parametrize("scheduler", ["blest", "ecf"])
def test_blest_and_ecf_use_a_much_slower_path_less_than_round_robin(scheduler: str) -> None:
    results = {}
    for name in ("roundrobin", scheduler):
        run = transfer(3, 2_000_000, heterogeneous(), client_config=client(
            name, send_buffer=256 << 10), server_config=small_receiver())
        assert_intact(run)
        fast, slow = data_segments(run)
        results[name] = (slow / (fast + slow), goodput_mbps(run))
    rr_share, rr_goodput = results["roundrobin"]
    share, goodput = results[scheduler]
    assert rr_share > 0.15  # round-robin does fill the slow path
    assert share < 0.25 * rr_share
    assert goodput > 1.5 * rr_goodput


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_opportunistic_retransmission_raises_goodput_with_a_small_receive_buffer(
        seed: int) -> None:
    goodput = {}
    for opportunistic in (False, True):
        run = transfer(seed, 2_000_000, heterogeneous(slow_loss=0.01),
                       client_config=client("default", opportunistic=opportunistic),
                       server_config=small_receiver())
        assert_intact(run)
        goodput[opportunistic] = goodput_mbps(run)
        conn = run.sender.conn
        assert conn is not None
        counters = run.client.stack.counters
        if opportunistic:
            assert conn.counters.bytes_opportunistic > 0
            assert counters["MPTCPOpportunisticRetrans"] > 0
            assert counters["MPTCPPenalised"] > 0
        else:
            assert conn.counters.bytes_opportunistic == 0
            assert "MPTCPOpportunisticRetrans" not in counters
            assert "MPTCPPenalised" not in counters
    assert goodput[True] > 1.2 * goodput[False]
