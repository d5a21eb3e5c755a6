"""Reno (RFC 5681 + RFC 3465) and CUBIC (RFC 9438) decisions against the RFCs' formulas."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.errors import ParameterError
from testbed.stack.tcp.congestion import (
    ALPHA_CUBIC,
    BETA_CUBIC,
    CUBIC_C,
    INFINITE_SSTHRESH,
    CongestionControl,
    CongestionGroup,
    Cubic,
    Reno,
    available_congestion_controls,
    get_congestion_control,
    register_congestion_control,
)
from testbed.stack.tcp.rtt import RttEstimator

MSS = 1000


def ack_one_window(cc: CongestionControl, start: float, rtt: float, per_ack: int = MSS) -> float:
    """Acknowledge the whole current window in `per_ack` pieces spread over one RTT."""
    window = cc.cwnd
    pieces = [per_ack] * (window // per_ack) + ([window % per_ack] if window % per_ack else [])
    in_flight = window
    for i, piece in enumerate(pieces):
        in_flight -= piece
        cc.on_ack(piece, rtt, in_flight, start + rtt * (i + 1) / len(pieces))
    return start + rtt


# --- Reno -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mss", "expected"), [(1460, 14600), (1000, 10000), (9000, 18000)])
def test_initial_window_per_rfc_6928(mss: int, expected: int) -> None:
    for name in ("reno", "cubic"):
        cc = get_congestion_control(name)(mss, 0.0)
        assert cc.cwnd == expected
        assert cc.ssthresh == INFINITE_SSTHRESH
        assert cc.in_slow_start()


@pytest.mark.parametrize("segments_per_ack", [1, 2])
def test_reno_slow_start_doubles_every_rtt(segments_per_ack: int) -> None:
    reno = Reno(MSS, 0.0)
    now = 0.0
    windows = [reno.cwnd]
    for _ in range(4):
        now = ack_one_window(reno, now, 0.1, per_ack=segments_per_ack * MSS)
        windows.append(reno.cwnd)
    assert windows == [10_000, 20_000, 40_000, 80_000, 160_000]


def test_reno_slow_start_counts_at_most_two_segments_per_ack() -> None:
    # RFC 3465 §2.2, L = 2*SMSS: a stretch ACK of 5 segments grows cwnd by 2 segments only.
    reno = Reno(MSS, 0.0)
    reno.on_ack(5 * MSS, 0.1, 5 * MSS, 0.1)
    assert reno.cwnd == 12 * MSS
    # ... and an ACK of less than a segment grows it by exactly the bytes acknowledged.
    reno.on_ack(300, 0.1, 0, 0.2)
    assert reno.cwnd == 12 * MSS + 300


def test_reno_congestion_avoidance_adds_one_mss_per_rtt() -> None:
    reno = Reno(MSS, 0.0)
    reno.cwnd = 40 * MSS
    reno.on_congestion_event(in_flight=40 * MSS, now=0.0)
    reno.on_recovery_end(0.1)
    assert (reno.cwnd, reno.ssthresh) == (20 * MSS, 20 * MSS)
    assert not reno.in_slow_start()
    now = 0.1
    for rtt_count in range(1, 6):
        now = ack_one_window(reno, now, 0.1)
        assert reno.cwnd == (20 + rtt_count) * MSS
    # Delayed ACKs (two segments each) give the same one segment per RTT (byte counting).
    before = reno.cwnd
    ack_one_window(reno, now, 0.1, per_ack=2 * MSS)
    assert reno.cwnd == before + MSS


def test_reno_congestion_event_halves_flight_size_with_a_floor_of_two_segments() -> None:
    reno = Reno(MSS, 0.0)
    reno.cwnd = 50 * MSS
    # RFC 5681 eq. 4 uses FlightSize, not cwnd.
    reno.on_congestion_event(in_flight=31 * MSS, now=1.0)
    assert reno.ssthresh == 31 * MSS // 2
    assert reno.cwnd == reno.ssthresh
    reno.on_congestion_event(in_flight=MSS, now=2.0)
    assert reno.ssthresh == 2 * MSS
    assert reno.cwnd == 2 * MSS


def test_reno_recovery_end_deflates_to_ssthresh() -> None:
    reno = Reno(MSS, 0.0)
    reno.cwnd = 30 * MSS
    reno.on_congestion_event(30 * MSS, 1.0)
    reno.cwnd += 3 * MSS  # a NewReno connection inflating during recovery
    reno.on_recovery_end(1.2)
    assert reno.cwnd == 15 * MSS


def test_reno_rto_sets_loss_window_and_holds_ssthresh_on_repeated_timeouts() -> None:
    reno = Reno(MSS, 0.0)
    reno.cwnd = 40 * MSS
    reno.on_rto(in_flight=40 * MSS, now=1.0)
    assert (reno.cwnd, reno.ssthresh) == (MSS, 20 * MSS)
    # RFC 5681 §3.1: the same data timing out again keeps ssthresh, whatever the connection
    # now counts as in flight (only the retransmission, say).
    reno.on_rto(in_flight=MSS, now=3.0)
    assert (reno.cwnd, reno.ssthresh) == (MSS, 20 * MSS)
    # Slow start back up to ssthresh, then linear growth.
    reno.on_ack(MSS, None, 0, 3.5)
    assert reno.cwnd == 2 * MSS
    assert reno.in_slow_start()
    # Once new data was acknowledged, a later timeout computes ssthresh afresh.
    reno.on_rto(in_flight=8 * MSS, now=5.0)
    assert (reno.cwnd, reno.ssthresh) == (MSS, 4 * MSS)


def test_reno_ignores_acks_of_nothing() -> None:
    reno = Reno(MSS, 0.0)
    reno.on_ack(0, 0.1, 0, 0.1)
    assert reno.cwnd == 10 * MSS


# --- CUBIC ----------------------------------------------------------------------------------


def cubic_after_loss(w_max_segments: int, now: float = 0.0, **kwargs: bool) -> Cubic:
    cubic = Cubic(MSS, 0.0, **kwargs)
    cubic.cwnd = w_max_segments * MSS
    cubic.on_congestion_event(in_flight=cubic.cwnd, now=now)
    return cubic


def w_cubic(t: float, w_max: float, cwnd_epoch: float) -> float:
    k = ((w_max - cwnd_epoch) / CUBIC_C) ** (1 / 3)
    return CUBIC_C * (t - k) ** 3 + w_max


def test_cubic_multiplicative_decrease_and_k() -> None:
    cubic = cubic_after_loss(100)
    # RFC 9438 §4.6: beta_cubic = 0.7; §4.2 eq. 2: K = cbrt((W_max - cwnd_epoch) / C).
    assert cubic.ssthresh == 70 * MSS
    assert cubic.cwnd == 70 * MSS
    assert cubic.w_max == 100
    assert cubic.k == pytest.approx(math.cbrt(30 / 0.4))
    assert cubic.k == pytest.approx(4.2172, abs=1e-4)
    assert cubic.w_cubic(0.0) == pytest.approx(70.0)
    assert cubic.w_cubic(cubic.k) == pytest.approx(100.0)


def test_cubic_single_ack_grows_by_target_minus_cwnd_over_cwnd() -> None:
    cubic = cubic_after_loss(100)
    rtt = 0.1
    cubic.on_ack(MSS, rtt, 69 * MSS, 0.5)
    # RFC 9438 §4.4: cwnd += (target - cwnd) / cwnd per segment acknowledged, with
    # target = W_cubic(t + RTT) (between cwnd and 1.5 cwnd).
    target = w_cubic(0.5 + rtt, 100, 70)
    assert 70 < target < 105
    expected_bytes = 70 * MSS + (target - 70) / 70 * MSS
    assert cubic.cwnd == math.floor(expected_bytes)


def test_cubic_target_is_capped_at_one_and_a_half_cwnd() -> None:
    cubic = cubic_after_loss(100)
    # Far into the convex region W_cubic(t + RTT) is huge; the growth per window acknowledged
    # is then at most half a window (the RFC's bound: never faster than slow start).
    cubic.on_ack(MSS, 0.1, 0, 100.0)
    assert cubic.cwnd == 70 * MSS + math.floor((105 - 70) / 70 * MSS)


# K = cbrt((1000 - 700) / 0.4) = 9.086 s: concave before, plateau at K, convex after.
@pytest.mark.parametrize("t_check", [1.0, 3.0, 6.0, 9.1, 11.0, 12.0])
def test_cubic_window_follows_w_cubic_over_time(t_check: float) -> None:
    # A window large enough that the cubic curve, not the Reno-friendly W_est, leads.
    cubic = cubic_after_loss(1000)
    rtt = 0.1
    now = 0.0
    while now < t_check - 1e-9:
        now = ack_one_window(cubic, now, rtt, per_ack=4 * MSS)
    expected = w_cubic(now, 1000, 700)
    # Per-ACK growth aims one RTT ahead and reaches it in about one RTT of ACKs, so the
    # window tracks W_cubic(t) to within the growth of one RTT plus a segment of rounding.
    one_rtt_growth = abs(w_cubic(now + rtt, 1000, 700) - w_cubic(now, 1000, 700))
    assert cubic.cwnd / MSS == pytest.approx(expected, abs=one_rtt_growth + 1.0)
    # And not in the Reno-friendly region: W_est lags behind.
    assert cubic.w_est < cubic.cwnd / MSS


def test_cubic_concave_then_plateau_then_convex() -> None:
    cubic = cubic_after_loss(1000)
    rtt = 0.1
    now = 0.0
    samples: dict[int, float] = {}
    while now < 14.0:
        now = ack_one_window(cubic, now, rtt, per_ack=4 * MSS)
        samples[round(now * 10)] = cubic.cwnd / MSS
    growth_early = samples[15] - samples[10]  # concave, fast
    growth_plateau = samples[93] - samples[88]  # around K = 9.09 s, flat
    growth_late = samples[140] - samples[135]  # convex, accelerating
    assert growth_early > 5 * growth_plateau
    assert growth_late > 5 * growth_plateau
    assert samples[88] < 1000 < samples[140]  # past W_max: probing for more
    assert cubic.w_est < cubic.cwnd / MSS  # all of it on the cubic curve


def test_cubic_reno_friendly_region_takes_over_on_short_rtts() -> None:
    cubic = cubic_after_loss(20)
    rtt = 0.001
    # RFC 9438 §4.3, replayed: W_est starts at cwnd_epoch, grows alpha/cwnd per segment.
    w_est = 14.0
    now = 0.0
    for _ in range(30):
        window_segments = cubic.cwnd // MSS
        for i in range(window_segments):
            cwnd_segments = cubic.cwnd / MSS
            alpha = 1.0 if w_est >= 20 else ALPHA_CUBIC
            w_est += alpha / cwnd_segments
            ack_time = now + rtt * (i + 1) / window_segments
            cubic.on_ack(MSS, rtt, 0, ack_time)
            assert cubic.w_cubic(ack_time) < w_est
            assert cubic.cwnd == math.floor(w_est * MSS)
        now += rtt
    # 30 RTTs in: W_cubic has barely moved, the AIMD estimate has grown ~alpha per RTT.
    assert w_cubic(now, 20, 14) < 14.5
    assert cubic.cwnd / MSS > 14 + 20 * ALPHA_CUBIC


def test_cubic_reno_friendly_alpha_becomes_one_past_cwnd_prior() -> None:
    cubic = cubic_after_loss(20)
    cubic.w_est = 20.0  # reached the window before the reduction
    before = cubic.w_est
    cubic.on_ack(MSS, 0.001, 0, 0.001)
    assert cubic.w_est - before == pytest.approx(1.0 / 14)


def test_cubic_fast_convergence_reduces_w_max() -> None:
    cubic = cubic_after_loss(100)
    assert cubic.w_max == 100
    # A second loss before regaining W_max: W_max = cwnd * (1 + beta) / 2 (RFC 9438 §4.7).
    cubic.on_congestion_event(in_flight=cubic.cwnd, now=1.0)
    assert cubic.w_max == pytest.approx(70 * (1 + BETA_CUBIC) / 2)
    assert cubic.cwnd == 49 * MSS
    assert cubic.k == pytest.approx(math.cbrt((59.5 - 49) / CUBIC_C))
    assert cubic.t_epoch == 1.0

    plain = cubic_after_loss(100, fast_convergence=False)
    plain.on_congestion_event(in_flight=plain.cwnd, now=1.0)
    assert plain.w_max == 70


def test_cubic_timeout_uses_beta_and_restarts_with_k_zero() -> None:
    cubic = cubic_after_loss(100)
    cubic.on_rto(in_flight=60 * MSS, now=2.0)
    # RFC 9438 §4.8: Reno's loss window, ssthresh from beta_cubic.
    assert cubic.cwnd == MSS
    assert cubic.ssthresh == 42 * MSS
    cubic.on_rto(in_flight=MSS, now=4.0)
    assert cubic.ssthresh == 42 * MSS
    now = 4.0
    while cubic.in_slow_start():
        now += 0.01
        cubic.on_ack(MSS, 0.1, 0, now)
    cwnd_at_ca_start = cubic.cwnd
    assert cwnd_at_ca_start == 42 * MSS
    cubic.on_ack(MSS, 0.1, 0, now + 0.01)
    # The first congestion avoidance after a timeout: K = 0, W_max = cwnd at its start.
    assert cubic.k == 0
    assert cubic.w_max == cwnd_at_ca_start / MSS
    assert cubic.t_epoch == pytest.approx(now + 0.01)


def test_cubic_slow_start_matches_reno() -> None:
    cubic, reno = Cubic(MSS, 0.0), Reno(MSS, 0.0)
    now = 0.0
    for _ in range(3):
        ack_one_window(cubic, now, 0.1)
        now = ack_one_window(reno, now, 0.1)
    assert cubic.cwnd == reno.cwnd == 80 * MSS


# --- both -----------------------------------------------------------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(["ack", "loss", "end", "rto"]),
        st.integers(min_value=0, max_value=200 * MSS),
        st.floats(min_value=0.0001, max_value=1.0),
    ),
    max_size=200,
)


@pytest.mark.parametrize("name", ["reno", "cubic"])
@given(sequence=events)
def test_windows_stay_sane_under_any_event_sequence(
    name: str, sequence: list[tuple[str, int, float]]
) -> None:
    cc = get_congestion_control(name)(MSS, 0.0)
    now = 0.0
    for kind, amount, dt in sequence:
        now += dt
        if kind == "ack":
            cc.on_ack(amount, dt, amount, now)
        elif kind == "loss":
            cc.on_congestion_event(amount, now)
        elif kind == "end":
            cc.on_recovery_end(now)
        else:
            cc.on_rto(amount, now)
        assert cc.cwnd >= MSS
        assert cc.ssthresh >= 2 * MSS
        assert isinstance(cc.cwnd, int) and isinstance(cc.ssthresh, int)


# --- registry and groups --------------------------------------------------------------------


def test_registry_knows_reno_and_cubic() -> None:
    assert get_congestion_control("reno") is Reno
    assert get_congestion_control("cubic") is Cubic
    assert {"reno", "cubic"} <= set(available_congestion_controls())


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(ParameterError, match=r"unknown congestion control 'vegas'.*cubic.*reno"):
        get_congestion_control("vegas")


def test_register_a_new_controller() -> None:
    class Fixed(Reno):
        name = "fixed-test"

    register_congestion_control(Fixed.name, Fixed)
    try:
        assert get_congestion_control("fixed-test") is Fixed
        assert "fixed-test" in available_congestion_controls()
    finally:
        from testbed.stack.tcp import congestion

        congestion._REGISTRY.unregister("fixed-test")
    with pytest.raises(ParameterError):
        register_congestion_control("", Fixed)


def test_bad_mss_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError):
        Reno(0, 0.0)


def test_group_shows_siblings_windows_and_rtts() -> None:
    first, second = Reno(MSS, 0.0), Cubic(1400, 0.0)
    rtt_first, rtt_second = RttEstimator(), RttEstimator()
    rtt_first.on_sample(0.02)
    rtt_second.on_sample(0.08)
    group = CongestionGroup()
    group.join(first, rtt_first)
    group.join(second, rtt_second)
    assert first.group is group and second.group is group

    second.cwnd = 50_000
    (sibling,) = group.siblings(first)
    assert (sibling.cwnd, sibling.mss, sibling.srtt) == (50_000, 1400, 0.08)
    assert group.view_of(first).srtt == 0.02
    assert [view.cwnd for view in group.members] == [10 * MSS, 50_000]
    # Views follow the live values and cannot be written through.
    second.on_congestion_event(50_000, 1.0)
    assert sibling.cwnd == 35_000 and not sibling.in_slow_start()
    with pytest.raises(AttributeError):
        sibling.cwnd = 1  # type: ignore[misc]

    with pytest.raises(ValueError):
        group.join(first, rtt_first)
    group.leave(second)
    assert second.group is None
    assert group.siblings(first) == []
    with pytest.raises(KeyError):
        group.view_of(second)


# --- HyStart++ delay increase (RFC 9406 §4.2) ---------------------------------------------


def _slow_start_rounds(cubic: Cubic, rtts: list[float]) -> float:
    """One round per RTT value: a window's worth of ACKs of 2 segments, each with that RTT."""
    now = 0.0
    for rtt in rtts:
        for _ in range(max(1, cubic.cwnd // (2 * MSS))):
            cubic.on_ack(2 * MSS, rtt, cubic.cwnd, now)
            if not cubic.in_slow_start():
                return now
        now += rtt
    return now


def test_hystart_leaves_slow_start_when_the_rtt_rises() -> None:
    cubic = Cubic(MSS, 0.0)
    # 20 ms while the queue is empty, then 26 ms: more than eta = max(20/8, 4) ms above.
    _slow_start_rounds(cubic, [0.020] * 4 + [0.026] * 4)
    assert not cubic.in_slow_start()
    assert cubic.ssthresh == cubic.cwnd < 400 * MSS


def test_hystart_keeps_slow_start_on_a_flat_or_barely_rising_rtt() -> None:
    for rtts in ([0.020] * 8, [0.020] * 4 + [0.0235] * 4):
        cubic = Cubic(MSS, 0.0)
        _slow_start_rounds(cubic, rtts)
        assert cubic.in_slow_start() and cubic.ssthresh == INFINITE_SSTHRESH
    off = Cubic(MSS, 0.0, hystart=False)
    _slow_start_rounds(off, [0.020] * 4 + [0.030] * 4)
    assert off.in_slow_start()
