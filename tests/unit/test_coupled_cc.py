"""LIA (RFC 6356), OLIA (Khalili et al.) and BALIA (Peng et al.): window changes for given
windows and RTTs against the papers' formulas, written out here again in packets."""

from __future__ import annotations

import math
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.stack.mptcp.coupled import (
    Balia,
    CoupledCongestionControl,
    Lia,
    Olia,
    PathSample,
    balia_window_kept,
    olia_alphas,
)
from testbed.stack.tcp.congestion import (
    CongestionControl,
    CongestionGroup,
    Reno,
    get_congestion_control,
)
from testbed.stack.tcp.rtt import RttEstimator

MSS = 1000
COUPLED: list[type[CoupledCongestionControl]] = [Lia, Olia, Balia]
C = TypeVar("C", bound=CoupledCongestionControl)


def coupled_group(cls: type[C], windows: list[float], rtts: list[float],
                  mss: int = MSS) -> list[C]:
    """Controllers of one group in congestion avoidance with `windows` (packets) and `rtts`."""
    group = CongestionGroup()
    controllers = []
    for window, rtt in zip(windows, rtts, strict=True):
        cc = cls(mss, 0.0)
        cc.cwnd = round(window * mss)
        cc.ssthresh = 2 * mss
        estimator = RttEstimator()
        estimator.on_sample(rtt)
        group.join(cc, estimator)
        controllers.append(cc)
    return controllers


# The formulas, per packet acknowledged, in packets (w: windows, r: RTTs).

def rates(w: list[float], r: list[float]) -> list[float]:
    return [wk / rk for wk, rk in zip(w, r, strict=True)]


def lia_packets(w: list[float], r: list[float], i: int) -> float:
    total = sum(w)
    alpha = total * max(wk / rk**2 for wk, rk in zip(w, r, strict=True)) / sum(rates(w, r))**2
    return min(alpha / total, 1 / w[i])


def olia_packets(w: list[float], r: list[float], i: int, alpha_i: float) -> float:
    return (w[i] / r[i]**2) / sum(rates(w, r))**2 + alpha_i / w[i]


def balia_packets(w: list[float], r: list[float], i: int) -> float:
    x = rates(w, r)
    alpha = max(x) / x[i]
    return x[i] / (r[i] * sum(x)**2) * (1 + alpha) / 2 * (4 + alpha) / 5


def to_bytes(per_packet: float, acked: int, mss: int = MSS) -> float:
    # `acked` bytes are acked/mss packets; each grows the window by per_packet * mss bytes.
    return per_packet * mss * acked / mss


CASES = {
    "two symmetric": ([10, 10], [0.05, 0.05]),
    "two asymmetric": ([20, 5], [0.02, 0.1]),
    "two, slow path has the larger window": ([8, 40], [0.01, 0.2]),
    "three symmetric": ([12, 12, 12], [0.03, 0.03, 0.03]),
    "three asymmetric": ([10, 20, 40], [0.01, 0.05, 0.2]),
}


@pytest.mark.parametrize("acked", [MSS, 2 * MSS, 1448])
@pytest.mark.parametrize(("windows", "rtts"), CASES.values(), ids=CASES.keys())
def test_lia_increase_per_ack(windows: list[float], rtts: list[float], acked: int) -> None:
    group = coupled_group(Lia, windows, rtts)
    for i, cc in enumerate(group):
        expected = to_bytes(lia_packets(windows, rtts, i), acked)
        assert cc.increase(acked) == pytest.approx(expected, rel=1e-12)
        before = cc.cwnd
        cc.on_ack(acked, rtts[i], 0, 1.0)
        assert cc.cwnd == before + int(expected)
        cc.cwnd = before  # leave the siblings' view of this window unchanged


def test_lia_symmetric_two_paths_grows_half_a_packet_per_rtt_in_total() -> None:
    # RFC 6356 §3: with equal RTTs and windows alpha = 1/n, so the n subflows together grow
    # by 1/n packet per RTT... times n subflows' worth of ACKs over cwnd_total: 1/2 packet.
    first, second = coupled_group(Lia, [10, 10], [0.05, 0.05])
    per_rtt = 10 * first.increase(MSS) + 10 * second.increase(MSS)
    assert per_rtt == pytest.approx(MSS / 2)


def test_lia_increase_in_bytes_with_different_mss() -> None:
    # RFC 6356 §3 in bytes, straight from the RFC's equation with each subflow's own MSS.
    group = CongestionGroup()
    a, b = Lia(1460, 0.0), Lia(536, 0.0)
    a.cwnd, b.cwnd = 29_200, 16_080
    a.ssthresh = b.ssthresh = 2000
    for cc, rtt in ((a, 0.04), (b, 0.12)):
        est = RttEstimator()
        est.on_sample(rtt)
        group.join(cc, est)
    total = 29_200 + 16_080
    alpha = total * max(29_200 / 0.04**2, 16_080 / 0.12**2) / (29_200 / 0.04 + 16_080 / 0.12)**2
    assert a.increase(1460) == pytest.approx(min(alpha * 1460 * 1460 / total, 1460 * 1460 / 29_200))
    assert b.increase(536) == pytest.approx(min(alpha * 536 * 536 / total, 536 * 536 / 16_080))


@pytest.mark.parametrize(("windows", "rtts"), CASES.values(), ids=CASES.keys())
def test_olia_increase_per_ack(windows: list[float], rtts: list[float]) -> None:
    group = coupled_group(Olia, windows, rtts)
    # Make the last path the best (largest l_r / rtt_r^2) by giving it a long loss interval.
    for cc in group:
        cc.bytes_between_losses = 100 * MSS
    group[-1].bytes_between_losses = 10_000 * MSS
    alphas = olia_alphas_by_hand(windows, rtts, [100.0] * (len(windows) - 1) + [10_000.0])
    for i, cc in enumerate(group):
        expected = to_bytes(olia_packets(windows, rtts, i, alphas[i]), MSS)
        assert cc.increase(MSS) == pytest.approx(expected, rel=1e-12)


def olia_alphas_by_hand(w: list[float], r: list[float], inter_loss: list[float]) -> list[float]:
    """Khalili et al. §5, eq. (5), with sets built as sets."""
    paths = range(len(w))
    m = {p for p in paths if w[p] == max(w)}
    quality = [inter_loss[p] / r[p]**2 for p in paths]
    b = {p for p in paths if quality[p] == max(quality)}
    b_not_m = b - m
    if not b_not_m:
        return [0.0 for _ in paths]
    n = len(w)
    return [1 / n / len(b_not_m) if p in b_not_m else -1 / n / len(m) if p in m else 0.0
            for p in paths]


OLIA_SETS = {
    # windows (packets), RTTs, l_r (packets), expected alpha_r
    "equal paths: B\\M empty": ([10, 10], [0.05, 0.05], [100, 100], [0, 0]),
    "best path has the largest window": ([30, 10], [0.05, 0.05], [400, 100], [0, 0]),
    "best path has a small window": ([30, 10], [0.05, 0.05], [100, 400], [-1 / 2, 1 / 2]),
    "best by l/rtt^2, not by l": ([30, 10], [0.1, 0.02], [300, 100], [-1 / 2, 1 / 2]),
    "two largest windows share the cut":
        ([30, 30, 10], [0.05] * 3, [1, 1, 9], [-1 / 6, -1 / 6, 1 / 3]),
    "two best share the gain": ([30, 10, 10], [0.05] * 3, [1, 9, 9], [-1 / 3, 1 / 6, 1 / 6]),
    "a path in neither set": ([30, 10, 5], [0.05] * 3, [1, 9, 2], [-1 / 3, 1 / 3, 0]),
}


@pytest.mark.parametrize(("windows", "rtts", "inter_loss", "expected"), OLIA_SETS.values(),
                         ids=OLIA_SETS.keys())
def test_olia_alpha_sets(windows: list[float], rtts: list[float], inter_loss: list[int],
                         expected: list[float]) -> None:
    by_hand = olia_alphas_by_hand(windows, rtts, [float(x) for x in inter_loss])
    assert by_hand == pytest.approx(expected)
    group = coupled_group(Olia, windows, rtts)
    for cc, l_r in zip(group, inter_loss, strict=True):
        cc.bytes_between_losses = l_r * MSS
    for cc in group:
        # Each controller sees its siblings' l_r, however it finds them.
        coupled = cc.coupled_paths()
        assert coupled is not None
        assert olia_alphas(coupled[0]) == pytest.approx(expected)


def test_olia_counts_bytes_between_losses() -> None:
    first, _ = coupled_group(Olia, [10, 10], [0.05, 0.05])
    for _ in range(7):
        first.on_ack(MSS, 0.05, 0, 1.0)
    first.on_ack_not_cwnd_limited(MSS, 0.05, 0, 1.0)
    assert (first.bytes_between_losses, first.bytes_since_loss) == (0, 8 * MSS)
    first.on_congestion_event(10 * MSS, 2.0)
    assert (first.bytes_between_losses, first.bytes_since_loss) == (8 * MSS, 0)
    assert first.inter_loss == 8 * MSS
    first.on_ack(3 * MSS, 0.05, 0, 3.0)
    assert first.inter_loss == 8 * MSS  # l_r = max(l_1r, l_2r)
    first.on_rto(5 * MSS, 4.0)
    first.on_rto(5 * MSS, 5.0)  # the same data timing out again is not a second loss
    assert (first.bytes_between_losses, first.bytes_since_loss) == (3 * MSS, 0)
    # Decrease as Reno: ssthresh = FlightSize / 2.
    first.on_ack(MSS, 0.05, 0, 6.0)
    first.on_congestion_event(20 * MSS, 7.0)
    assert first.cwnd == first.ssthresh == 10 * MSS


def test_olia_largest_window_can_shrink_in_congestion_avoidance() -> None:
    # alpha_r < 0 on a largest-window path that is not the best: the net increase can be
    # negative (Khalili et al. §5): here 40/70^2 - 1/(2*40) < 0 packets per packet.
    big, small = coupled_group(Olia, [40, 30], [0.01, 0.01])
    big.bytes_between_losses, small.bytes_between_losses = MSS, 1000 * MSS
    assert big.increase(MSS) < 0
    before = big.cwnd
    for _ in range(200):
        big.on_ack(MSS, 0.01, 0, 1.0)
    assert before - MSS < big.cwnd < before


@pytest.mark.parametrize(("windows", "rtts"), CASES.values(), ids=CASES.keys())
def test_balia_increase_per_ack(windows: list[float], rtts: list[float]) -> None:
    group = coupled_group(Balia, windows, rtts)
    for i, cc in enumerate(group):
        expected = to_bytes(balia_packets(windows, rtts, i), 2 * MSS)
        assert cc.increase(2 * MSS) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("windows", "rtts", "kept"), [
    # x = w/rtt; alpha_r = max x / x_r; w_r -= w_r/2 * min(alpha_r, 1.5)
    ([10, 10], [0.05, 0.05], [1 / 2, 1 / 2]),  # alpha 1, 1: Reno's halving
    ([12, 10], [0.05, 0.05], [1 / 2, 1 - 1.2 / 2]),  # alpha 1, 1.2
    ([40, 10], [0.05, 0.05], [1 / 2, 1 / 4]),  # alpha 1, 4 capped at 1.5
    ([10, 10], [0.01, 0.1], [1 / 2, 1 / 4]),  # alpha 1, 10 from the RTTs alone
])
def test_balia_decrease_factor(windows: list[float], rtts: list[float], kept: list[float]) -> None:
    group = coupled_group(Balia, windows, rtts)
    for cc, fraction in zip(group, kept, strict=True):
        flight = cc.cwnd
        assert cc.loss_ssthresh(flight) == int(flight * fraction)
    for cc, fraction in zip(group, kept, strict=True):
        flight = cc.cwnd
        cc.on_congestion_event(flight, 1.0)
        assert cc.cwnd == cc.ssthresh == max(int(flight * fraction), 2 * MSS)
        cc.cwnd = flight  # the sibling decides from the windows before the loss


def test_balia_window_kept_is_between_a_quarter_and_a_half() -> None:
    assert balia_window_kept(1.0) == 0.5
    assert balia_window_kept(1.5) == 0.25
    assert balia_window_kept(100.0) == 0.25


def test_balia_timeout_keeps_the_coupled_ssthresh() -> None:
    _, slow = coupled_group(Balia, [40, 10], [0.05, 0.05])
    slow.on_rto(10 * MSS, 1.0)
    assert (slow.cwnd, slow.ssthresh) == (MSS, int(10 * MSS * 0.25))


# --- RFC 6356 goals, as properties -----------------------------------------------------------

paths_strategy = st.lists(
    st.tuples(st.integers(2, 2000), st.floats(0.001, 1.0)), min_size=2, max_size=4)


@settings(max_examples=300, deadline=None)
@given(paths_strategy)
def test_lia_never_beats_tcp_on_the_best_path(paths: list[tuple[int, float]]) -> None:
    windows = [float(w) for w, _ in paths]
    rtts = [r for _, r in paths]
    group = coupled_group(Lia, windows, rtts)
    # Per ACK, no subflow grows faster than a TCP on its path would (the min of RFC 6356 §3).
    for cc in group:
        assert cc.increase(MSS) <= MSS * MSS / cc.cwnd * (1 + 1e-12)
    # Goals 1 and 2 of RFC 6356 §2 in equilibrium: with the loss rate p_i at which subflow i
    # is in balance (increase per ACK = p_i * w_i/2 packets), a TCP on path i would get
    # sqrt(2/p_i)/rtt_i; LIA's alpha makes the multipath rate equal to the best of these.
    rate = sum(rates(windows, rtts))
    tcp_rates = []
    for cc, w, r in zip(group, windows, rtts, strict=True):
        per_packet = cc.increase(MSS) / MSS
        p = 2 * per_packet / w
        tcp_rates.append(math.sqrt(2 / p) / r)
    assert rate == pytest.approx(max(tcp_rates), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 100), st.floats(0.001, 1.0), st.integers(0, 1000)),
                min_size=1, max_size=5))
def test_olia_alphas_move_window_without_adding_any(
        paths: list[tuple[int, float, int]]) -> None:
    samples = [PathSample(w * MSS, MSS, r, loss * MSS) for w, r, loss in paths]
    alphas = olia_alphas(samples)
    assert sum(alphas) == pytest.approx(0, abs=1e-12)
    largest = max(w for w, _, _ in paths)
    for (w, _, _), alpha in zip(paths, alphas, strict=True):
        if alpha < 0:
            assert w == largest
        if alpha > 0:
            assert w < largest


# --- one subflow: exactly Reno ---------------------------------------------------------------

events = st.lists(st.one_of(
    st.tuples(st.just("ack"), st.integers(0, 3 * MSS)),
    st.tuples(st.just("idle_ack"), st.integers(0, 3 * MSS)),
    st.tuples(st.just("loss"), st.integers(0, 200 * MSS)),
    st.tuples(st.just("recovered"), st.just(0)),
    st.tuples(st.just("rto"), st.integers(0, 200 * MSS)),
), max_size=300)


def apply(cc: CongestionControl, event: str, value: int, now: float) -> None:
    if event == "ack":
        cc.on_ack(value, 0.05, 0, now)
    elif event == "idle_ack":
        cc.on_ack_not_cwnd_limited(value, 0.05, 0, now)
    elif event == "loss":
        cc.on_congestion_event(value, now)
    elif event == "recovered":
        cc.on_recovery_end(now)
    else:
        cc.on_rto(value, now)


@pytest.mark.parametrize("setting", ["no group", "group of one", "sibling without RTT"])
@pytest.mark.parametrize("cls", COUPLED, ids=lambda c: c.name)
@settings(max_examples=60, deadline=None)
@given(steps=events)
def test_one_subflow_is_exactly_reno(cls: type[CoupledCongestionControl], setting: str,
                                     steps: list[tuple[str, int]]) -> None:
    reno, coupled = Reno(MSS, 0.0), cls(MSS, 0.0)
    if setting != "no group":
        group = CongestionGroup()
        estimator = RttEstimator()
        estimator.on_sample(0.05)
        group.join(coupled, estimator)
        if setting == "sibling without RTT":
            group.join(cls(MSS, 0.0), RttEstimator())
    for t, (event, value) in enumerate(steps):
        apply(reno, event, value, float(t))
        apply(coupled, event, value, float(t))
        assert (coupled.cwnd, coupled.ssthresh) == (reno.cwnd, reno.ssthresh)
        assert coupled.in_slow_start() == reno.in_slow_start()


@pytest.mark.parametrize("cls", COUPLED, ids=lambda c: c.name)
def test_the_formulas_reduce_to_reno_for_one_path(cls: type[CoupledCongestionControl]) -> None:
    # With n = 1 each rule is Reno's 1/w per packet: alpha = 1 (LIA), B\M empty (OLIA),
    # alpha = 1 and (1+1)/2 * (4+1)/5 = 1 (BALIA).
    sample = [PathSample(25 * MSS, MSS, 0.07, 5 * MSS)]
    increase = cls(MSS, 0.0)._increase(MSS, sample, 0)
    assert increase == pytest.approx(MSS / 25)


@pytest.mark.parametrize("cls", COUPLED, ids=lambda c: c.name)
def test_slow_start_is_reno_even_when_coupled(cls: type[CoupledCongestionControl]) -> None:
    first, second = coupled_group(cls, [10, 10], [0.05, 0.05])
    first.ssthresh = second.ssthresh = 10**9
    first.on_ack(2 * MSS, 0.05, 0, 1.0)
    first.on_ack(3 * MSS, 0.05, 0, 1.0)  # RFC 3465: at most 2*SMSS per ACK
    assert first.cwnd == 14 * MSS


def test_registered_by_importing_mptcp_coupled() -> None:
    assert get_congestion_control("lia") is Lia
    assert get_congestion_control("olia") is Olia
    assert get_congestion_control("balia") is Balia
