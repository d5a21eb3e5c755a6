"""Coupled congestion control at a shared bottleneck, in a packet-level toy: an MPTCP
connection with two subflows and one TCP share one link (RFC 6356 §2 goal 2, "do no harm").

No network and no stacks: each flow sends its window once per RTT and the controllers see the
ACKs and losses a sender would pass them. The bottleneck is an AQM whose loss rate grows with
the offered load; losses are deterministic (each flow drops one packet whenever the loss rates
of the packets it sent add up to a whole one), so runs are exactly repeatable. Coupled, the two
subflows together should get about what the TCP gets; uncoupled Reno subflows take about twice.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass

import pytest

import testbed.stack.mptcp.coupled  # noqa: F401  (registers lia, olia, balia)
from testbed.stack.tcp.congestion import (
    CongestionControl,
    CongestionGroup,
    get_congestion_control,
)
from testbed.stack.tcp.rtt import RttEstimator

MSS = 1000
CAPACITY = 2_000 * MSS  # bytes per second: 100 packets per 50 ms
BASE_RTT = 0.05
ROUNDS = 3000  # RTTs of the base RTT
WARM_UP = 0.25  # the first quarter of the run is not measured


def loss_rate(offered: float) -> float:
    """The AQM's drop probability for an offered load in bytes/s: 1 % at capacity, steep
    around it (like RED's slope, but smooth so the equilibrium does not hunt)."""
    return min(0.5, 0.01 * (offered / CAPACITY) ** 4)


@dataclass
class Flow:
    cc: CongestionControl
    rtt: float
    loss_credit: float  # a packet is lost whenever this reaches 1
    delivered: int = 0  # bytes delivered in the measured part of the run


def subflow(name: str, rtt: float, credit: float, group: CongestionGroup | None) -> Flow:
    cc = get_congestion_control(name)(MSS, 0.0)
    if group is not None:
        estimator = RttEstimator()
        estimator.on_sample(rtt)
        group.join(cc, estimator)
    return Flow(cc, rtt, credit)


def one_round(flow: Flow, p: float, now: float, measured: bool) -> None:
    """The window goes out; its ACKs come back two segments at a time; the first loss starts
    recovery (one congestion event per window, RFC 6582) which ends with the round."""
    cc = flow.cc
    packets = max(1, cc.cwnd // MSS)
    in_flight = packets * MSS
    in_recovery = False
    pending = 0
    for k in range(packets):
        flow.loss_credit += p
        lost = flow.loss_credit >= 1
        if lost:
            flow.loss_credit -= 1
            if not in_recovery:
                if pending:
                    cc.on_ack(pending, flow.rtt, in_flight, now)
                    pending = 0
                cc.on_congestion_event(in_flight, now)
                in_recovery = True
        else:
            if measured:
                flow.delivered += MSS
            in_flight -= MSS
            pending += MSS
            if not in_recovery and (pending == 2 * MSS or k == packets - 1):
                cc.on_ack(pending, flow.rtt, in_flight, now + flow.rtt * k / packets)
                pending = 0
    if in_recovery:
        cc.on_recovery_end(now + flow.rtt)


def simulate(flows: list[Flow]) -> None:
    duration = ROUNDS * BASE_RTT
    start_measuring = WARM_UP * duration
    # Each flow sends one window per its own RTT; the loss rate follows the load right now.
    queue = [(0.0, i) for i in range(len(flows))]
    while queue:
        now, i = heapq.heappop(queue)
        if now >= duration:
            continue
        offered = sum(f.cc.cwnd / f.rtt for f in flows)
        one_round(flows[i], loss_rate(offered), now, now >= start_measuring)
        heapq.heappush(queue, (now + flows[i].rtt, i))


@functools.cache
def ratio(algorithm: str, subflow_rtts: tuple[float, float]) -> float:
    """MPTCP's throughput (both subflows) over the TCP's, the TCP having the base RTT."""
    group = CongestionGroup()
    mptcp = [subflow(algorithm, rtt, credit, group)
             for rtt, credit in zip(subflow_rtts, (0.0, 0.5), strict=True)]
    tcp = subflow("reno", BASE_RTT, 0.25, None)
    simulate([*mptcp, tcp])
    return sum(f.delivered for f in mptcp) / tcp.delivered


SYMMETRIC = (BASE_RTT, BASE_RTT)
ASYMMETRIC = (BASE_RTT, 2 * BASE_RTT)
COUPLED = ["lia", "olia", "balia"]


@pytest.mark.parametrize("algorithm", COUPLED)
@pytest.mark.parametrize("rtts", [SYMMETRIC, ASYMMETRIC], ids=["equal RTTs", "RTTs 1:2"])
def test_coupled_subflows_take_about_one_tcp_share(algorithm: str,
                                                   rtts: tuple[float, float]) -> None:
    assert ratio(algorithm, rtts) == pytest.approx(1.0, abs=0.2)


def test_uncoupled_reno_subflows_take_about_two_shares() -> None:
    # The negative control: without coupling, two subflows are two TCPs.
    assert ratio("reno", SYMMETRIC) == pytest.approx(2.0, abs=0.3)


def test_print_ratio_table() -> None:
    rows = [("reno (uncoupled)", "reno"), *((name, name) for name in COUPLED)]
    lines = ["", f"{'MPTCP/TCP throughput':<22}{'equal RTTs':>12}{'RTTs 1:2':>12}"]
    for label, name in rows:
        lines.append(f"{label:<22}{ratio(name, SYMMETRIC):>12.2f}{ratio(name, ASYMMETRIC):>12.2f}")
    print("\n".join(lines))
