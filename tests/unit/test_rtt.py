"""RFC 6298 estimator: sequences worked out by hand, clamping and back-off."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.tcp.rtt import RttEstimator


def test_before_any_sample_the_rto_is_the_initial_one() -> None:
    rtt = RttEstimator()
    assert rtt.rto == 1.0
    assert rtt.srtt is None and rtt.rttvar is None
    assert rtt.min_rtt is None and rtt.latest is None


def test_first_sample_sets_srtt_to_r_and_rttvar_to_half() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.1)
    # §2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + max(G, 4*RTTVAR) = 0.1 + 0.2.
    assert rtt.srtt == pytest.approx(0.1)
    assert rtt.rttvar == pytest.approx(0.05)
    assert rtt.rto == pytest.approx(0.3)


def test_sequence_of_samples_follows_the_rfc_by_hand() -> None:
    rtt = RttEstimator(min_rto=0.001)
    rtt.on_sample(0.100)
    rtt.on_sample(0.200)
    # RTTVAR = 3/4 * 0.05 + 1/4 * |0.1 - 0.2| = 0.0375 + 0.025 = 0.0625
    # SRTT = 7/8 * 0.1 + 1/8 * 0.2 = 0.1125
    assert rtt.rttvar == pytest.approx(0.0625)
    assert rtt.srtt == pytest.approx(0.1125)
    assert rtt.rto == pytest.approx(0.1125 + 0.25)
    rtt.on_sample(0.050)
    # RTTVAR = 3/4 * 0.0625 + 1/4 * |0.1125 - 0.05| = 0.046875 + 0.015625 = 0.0625
    # SRTT = 7/8 * 0.1125 + 1/8 * 0.05 = 0.1046875
    assert rtt.rttvar == pytest.approx(0.0625)
    assert rtt.srtt == pytest.approx(0.1046875)
    assert rtt.rto == pytest.approx(0.1046875 + 0.25)
    assert rtt.min_rtt == pytest.approx(0.05)
    assert rtt.latest == pytest.approx(0.05)


def test_clock_granularity_bounds_the_variance_term() -> None:
    rtt = RttEstimator(min_rto=0.0001, clock_granularity=0.01)
    for _ in range(200):
        rtt.on_sample(0.02)
    # RTTVAR decays towards 0, so 4*RTTVAR < G and G takes over: RTO = SRTT + G.
    assert rtt.rttvar is not None and 4 * rtt.rttvar < 0.01
    assert rtt.rto == pytest.approx(0.02 + 0.01)


def test_rto_is_clamped_to_min_and_max() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.001)
    assert rtt.rto == 0.2
    big = RttEstimator(max_rto=60.0)
    big.on_sample(100.0)
    assert big.rto == 60.0


def test_backoff_doubles_up_to_max_and_resets() -> None:
    rtt = RttEstimator(max_rto=5.0)
    rtt.on_sample(0.1)  # RTO 0.3
    rtt.backoff()
    assert rtt.rto == pytest.approx(0.6)
    rtt.backoff()
    assert rtt.rto == pytest.approx(1.2)
    for _ in range(100):
        rtt.backoff()
    assert rtt.rto == 5.0
    rtt.reset_backoff()
    assert rtt.rto == pytest.approx(0.3)


def test_backoff_before_first_sample_doubles_initial_rto() -> None:
    rtt = RttEstimator()
    rtt.backoff()
    assert rtt.rto == 2.0


def test_a_new_sample_keeps_the_backoff_until_reset() -> None:
    # RFC 6298 §5.7: the backed-off RTO may stay until new data is acknowledged, which the
    # caller signals with reset_backoff(); a sample alone does not undo it.
    rtt = RttEstimator()
    rtt.on_sample(0.1)
    rtt.backoff()
    rtt.on_sample(0.1)
    # SRTT = 0.1, RTTVAR = 3/4 * 0.05 = 0.0375, so the base RTO is 0.25, doubled.
    assert rtt.rto == pytest.approx(0.5)
    rtt.reset_backoff()
    assert rtt.rto == pytest.approx(0.25)


def test_bad_parameters_and_samples_are_rejected() -> None:
    with pytest.raises(ValueError):
        RttEstimator(min_rto=2.0, max_rto=1.0)
    with pytest.raises(ValueError):
        RttEstimator().on_sample(-0.1)


@given(st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=50))
def test_rto_always_within_bounds_and_srtt_within_sample_range(samples: list[float]) -> None:
    rtt = RttEstimator()
    for sample in samples:
        rtt.on_sample(sample)
        assert rtt.min_rto <= rtt.rto <= rtt.max_rto
    assert rtt.srtt is not None
    assert min(samples) - 1e-9 <= rtt.srtt <= max(samples) + 1e-9
    assert rtt.min_rtt == min(samples)
