"""multi-wifi without root: the position-to-rate profile, the walk's step table, the timeline it
asks for, the connection manager's parsing, and the per-step metrics from synthetic series."""

from __future__ import annotations

import pytest

from experiments import SCENARIOS
from experiments.multi_wifi import (
    HT20_MCS,
    ApLink,
    Associate,
    Disassociate,
    MultiWifi,
    MultiWifiParams,
    RateProfile,
    RouteThrough,
    WalkStep,
    break_before_make,
    endpoint_id,
    fraction_of_best_ap,
    plain_tcp_sockets,
    step_at,
    step_results,
    timeline_offset_s,
    walk,
    window_goodput_mbps,
)
from experiments.scenario import HostEvent, LinkEvent, parse_overrides
from testbed.errors import ParameterError

BIN = 0.1


def series(rate_mbps: float, seconds: float) -> list[list[float]]:
    """A receiver series at a constant rate: [bin start, bytes] every 100 ms."""
    per_bin = rate_mbps * 1e6 / 8 * BIN
    return [[round(i * BIN, 3), per_bin] for i in range(round(seconds / BIN))]


# -- the profile ------------------------------------------------------------------------------

def test_profile_steps_down_through_the_mcs_table_and_ends_at_the_range() -> None:
    profile = RateProfile(range_m=20.0, peak_rate_mbps=65.0, path_loss_exponent=3.0,
                          edge_loss_pct=2.0)
    # Next to the AP: MCS7 at the peak rate, no loss.
    assert profile.link_at(0.0).mcs == 7 and profile.link_at(0.0).rate_mbps == 65.0
    # At the range: MCS0, the standard's 6.5/65 of the peak, and the edge loss.
    edge = profile.link_at(20.0)
    assert (edge.mcs, edge.rate_mbps, edge.loss_pct) == (0, 6.5, 2.0)
    assert profile.link_at(20.01).in_range is False
    assert profile.link_at(20.01).rate_mbps == 0.0
    # MCS1 gets half the edge loss, the rest none.
    reach1 = profile.mcs_reach_m(HT20_MCS[1])
    assert profile.link_at(reach1).loss_pct == 1.0
    assert profile.link_at(profile.mcs_reach_m(HT20_MCS[2])).loss_pct == 0.0
    # 3 dB more sensitivity needed for MCS1 than MCS0: its reach is 10^(-3/30) of the range.
    assert reach1 == pytest.approx(20.0 * 10 ** (-3 / 30))


def test_rate_never_rises_with_distance() -> None:
    profile = RateProfile(range_m=25.0, peak_rate_mbps=20.0, path_loss_exponent=2.5)
    rates = [profile.link_at(d / 10).rate_mbps for d in range(0, 300)]
    assert rates == sorted(rates, reverse=True)
    assert [row["mcs"] for row in profile.table()] == list(range(8))
    assert [row["up_to_m"] for row in profile.table()] == sorted(
        (row["up_to_m"] for row in profile.table()), reverse=True)


def test_a_steeper_path_loss_keeps_the_fast_rates_farther_out() -> None:
    # The same sensitivity gap is crossed over a shorter stretch when the signal falls faster
    # with distance, so MCS7 reaches a larger share of the range.
    free = RateProfile(range_m=20.0, peak_rate_mbps=20.0, path_loss_exponent=2.0)
    indoor = RateProfile(range_m=20.0, peak_rate_mbps=20.0, path_loss_exponent=4.0)
    assert indoor.mcs_reach_m(HT20_MCS[7]) > free.mcs_reach_m(HT20_MCS[7])


# -- the walk ---------------------------------------------------------------------------------

def test_default_walk_passes_three_aps_and_hands_over_from_ap1() -> None:
    params = MultiWifiParams()
    steps = walk(params)
    assert len(steps) == 30 and steps[-1].t_end_s == 30.0
    assert steps[0].position_m == pytest.approx(0.7)  # the first step's midpoint, at 1.4 m/s
    assert steps[0].in_range == (1, 2)
    assert steps[14].in_range == (2, 3)  # AP1 out of range after 14 s (19.8 m along)
    assert steps[-1].in_range == (3,)
    # Someone is always in range, and the best AP is the nearest one.
    for step in steps:
        assert step.best_ap_mbps > 0
        nearest = min(range(1, 4), key=lambda ap: abs(step.position_m - (ap - 1) * 20.0))
        assert step.aps[nearest - 1].rate_mbps == step.best_ap_mbps


def test_last_step_ends_with_the_workload_even_when_steps_do_not_divide_it() -> None:
    steps = walk(parse_overrides(MultiWifiParams, ["duration_s=7.5", "step_s=2"]))
    assert [(s.t_start_s, s.t_end_s) for s in steps] == [(0, 2), (2, 4), (4, 6), (6, 7.5)]


@pytest.mark.parametrize(("overrides", "message"), [
    (["n_aps=1"], "n_aps must be within 2..8"),
    (["n_aps=9"], "n_aps must be within 2..8"),
    (["step_s=0"], "step_s must be a positive number"),
    (["range_m=nan"], "range_m must be a positive number"),
    (["walk_speed_mps=-1"], "walk_speed_mps must be >= 0"),
    (["step_s=40"], "walk would have no steps"),
    (["duration_s=40"], r"timeout_s \(30.0\) must be >= duration_s"),
    (["start_m=-30"], "AP1 is out of range at the start"),
    (["peak_rate_mbps=0"], "rate_mbps must be a positive number"),
    (["edge_loss_pct=150"], "loss_pct must be within 0..100"),
    (["direction=sideways"], "direction must be upload or download"),
])
def test_bad_values_are_refused_before_anything_runs(overrides: list[str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(MultiWifiParams, overrides)


# -- the timeline -----------------------------------------------------------------------------

def short() -> MultiWifi:
    """The netns test's walk: AP2 out of range at first, then in; AP1 lost near the end."""
    return MultiWifi(parse_overrides(MultiWifiParams, [
        "n_aps=2", "duration_s=8", "timeout_s=8", "start_m=-5", "walk_speed_mps=4",
        "step_s=0.5"]))


def test_registered_with_a_download_by_default_and_ap2_as_a_subflow_endpoint() -> None:
    assert SCENARIOS["multi-wifi"] is MultiWifi
    scenario = MultiWifi(MultiWifiParams())
    assert scenario.workload().direction == "download"
    assert scenario.workload().seconds == 30.0
    # AP1 carries the initial subflow; AP3 is out of range at the start.
    assert [(e.addr, e.dev, e.flags) for e in scenario.client_endpoints()] == [
        ("10.0.2.1", "client-eth1", frozenset({"subflow"}))]
    assert short().client_endpoints() == []


def test_timeline_takes_aps_down_out_of_range_and_associates_when_they_come_back() -> None:
    scenario = short()
    events = scenario.timeline()
    hosts = [e for e in events if isinstance(e, HostEvent)]
    links = [e for e in events if isinstance(e, LinkEvent)]
    assert links[0] == LinkEvent(0.0, "ap2", "down")
    # AP2 comes into range at 1.5 s: its rate first, then up, then its endpoint.
    ap2_back = [e for e in links if e.link == "ap2" and e.at_s == 1.5]
    assert [e.action for e in ap2_back] == ["set", "up"]
    assert ap2_back[0].shaping is not None and ap2_back[0].shaping.rate_mbps == 2.0
    assert [(e.at_s, e.action) for e in hosts] == [(1.5, Associate(2)), (6.0, Disassociate(1))]
    assert LinkEvent(6.0, "ap1", "down") in links
    # Links before hosts at one instant: a subflow is joined over a link that is up.
    assert events.index(ap2_back[1]) < events.index(hosts[0])
    # Only changes are played: no event for a link whose step looks like the previous one.
    steps = scenario.steps()
    for event in links:
        if event.action == "set":
            step = int(event.at_s / 0.5)
            assert steps[step].aps[int(event.link[2:]) - 1] != \
                steps[step - 1].aps[int(event.link[2:]) - 1]


def test_subflow_limit_is_raised_only_when_more_aps_than_it_are_in_range_at_once() -> None:
    assert not [e for e in MultiWifi(MultiWifiParams()).timeline()
                if isinstance(e, HostEvent) and "limit" in e.description]
    crowded = MultiWifi(parse_overrides(MultiWifiParams, ["n_aps=5", "ap_spacing_m=5"]))
    raised = [e for e in crowded.timeline() if isinstance(e, HostEvent)
              and "limit" in e.description]
    assert len(raised) == 1 and raised[0].at_s == 0.0


# -- the connection manager's parsing ---------------------------------------------------------

def test_endpoint_id_reads_ip_mptcp_endpoint_show() -> None:
    listing = ("10.0.2.1 id 1 subflow dev client-eth1 \n"
               "10.0.3.1 id 4 subflow dev client-eth2 \n")
    assert endpoint_id(listing, "10.0.3.1") == 4
    assert endpoint_id(listing, "10.0.1.1") is None
    assert endpoint_id("", "10.0.2.1") is None


def test_only_established_plain_tcp_sockets_are_destroyed() -> None:
    listing = (
        "ESTAB 0 0 10.0.1.1:40000 10.0.100.1:5201\n"
        "\t cubic wscale:7,7 rto:204 cwnd:10\n"
        "ESTAB 0 0 10.0.1.1:40002 10.0.100.1:5201\n"
        "\t cubic wscale:7,7 rto:204 tcp-ulp-mptcp flags:Mec token:0000(id:0)\n"
        "FIN-WAIT-1 0 0 10.0.1.1:40004 10.0.100.1:5201\n"
        "\t cubic rto:204\n"
    )
    assert plain_tcp_sockets(listing) == [("10.0.1.1:40000", "10.0.100.1:5201")]
    assert plain_tcp_sockets("") == []


# -- metrics ----------------------------------------------------------------------------------

def test_window_goodput_counts_bins_in_proportion_to_their_overlap() -> None:
    data = series(8.0, 2.0)
    assert window_goodput_mbps(data, 0.0, 2.0) == pytest.approx(8.0)
    assert window_goodput_mbps(data, 0.05, 1.05) == pytest.approx(8.0)
    assert window_goodput_mbps(data, 1.5, 2.5) == pytest.approx(4.0)  # half of it after the end
    assert window_goodput_mbps(data, 3.0, 4.0) == 0.0
    assert window_goodput_mbps(data, 1.0, 1.0) == 0.0


def test_fraction_of_best_ap_from_a_synthetic_series() -> None:
    steps = walk(parse_overrides(MultiWifiParams, ["duration_s=4", "step_s=1", "n_aps=2"]))
    best = [step.best_ap_mbps for step in steps]
    assert best == [20.0, 20.0, 20.0, 16.0]
    # The receiver got 18 Mbit/s for 3 s, then nothing.
    results = step_results(steps, series(18.0, 3.0))
    assert [round(r.goodput_mbps, 3) for r in results] == [18.0, 18.0, 18.0, 0.0]
    assert fraction_of_best_ap(results) == pytest.approx((0.9 * 3 + 0) / 4)
    record = results[0].record()
    assert record == {"step": 0, "t_start_s": 0.0, "t_end_s": 1.0, "position_m": 0.7,
                      "ap_rates_mbps": [20.0, 2.0], "best_ap_mbps": 20.0,
                      "goodput_mbps": 18.0, "fraction_of_best_ap": 0.9}
    # Half a second late on the receiver's clock: each step's window moves with it.
    shifted = step_results(steps, [[t + 0.5, b] for t, b in series(18.0, 3.0)], offset_s=0.5)
    assert [round(r.goodput_mbps, 3) for r in shifted] == [18.0, 18.0, 18.0, 0.0]


def test_steps_where_no_ap_is_in_range_are_not_judged() -> None:
    steps = walk(parse_overrides(MultiWifiParams, [
        "n_aps=2", "ap_spacing_m=60", "walk_speed_mps=3", "duration_s=20", "timeout_s=20"]))
    assert any(step.best_ap_mbps == 0 for step in steps)
    results = step_results(steps, series(1.0, 20.0))
    assert all(r.fraction_of_best_ap is None for r in results if r.step.best_ap_mbps == 0)
    judged = [r.fraction_of_best_ap for r in results if r.fraction_of_best_ap is not None]
    assert fraction_of_best_ap(results) == pytest.approx(sum(judged) / len(judged))
    assert fraction_of_best_ap([]) is None


def test_timeline_offset_lines_the_timeline_up_with_the_receivers_clock() -> None:
    timeline = [{"at_s": 1.5, "applied_at_s": 1.5012, "wall_time": 1000.3012}]
    assert timeline_offset_s(timeline, t_start=999.0) == pytest.approx(-0.2)
    assert timeline_offset_s([], t_start=999.0) is None
    assert timeline_offset_s(timeline, t_start=None) is None


# -- break-before-make: the plain-TCP client's connection manager ------------------------------

def synthetic(*rates: tuple[float, ...]) -> list[WalkStep]:
    """One-second steps whose APs give these rates (0: out of range)."""
    return [WalkStep(i, float(i), float(i + 1), float(i),
                     tuple(ApLink(mcs=None if r == 0 else 7, rate_mbps=r, loss_pct=0.0)
                           for r in row))
            for i, row in enumerate(rates)]


def plan(steps: list[WalkStep], delay_s: float) -> list[tuple[int, float, float, float | None]]:
    return [(a.ap, a.chosen_s, a.associated_s, a.lost_s)
            for a in break_before_make(steps, delay_s)]


def test_default_walk_sticks_to_ap2_while_ap3_is_better_and_ap3_comes_too_late() -> None:
    # AP1 lost at 14 s: AP2 (20 Mbit/s) is the best then, usable 5 s later; the client keeps
    # it while AP3 overtakes it (from 23 s) until it leaves AP2's range at 28 s; AP3 would be
    # ready at 33 s, after the 30 s walk.
    assert plan(walk(MultiWifiParams()), 5.0) == [(1, 0.0, 0.0, 14.0), (2, 14.0, 19.0, 28.0)]


def test_the_best_ap_in_range_at_the_loss_is_chosen_and_the_first_is_the_best_at_start() -> None:
    steps = synthetic((4, 8, 0), (4, 8, 2), (0, 2, 6), (0, 2, 6), (0, 2, 6), (0, 2, 6))
    # AP2 is the best at the start; AP1 is lost at 2 s where AP3 beats AP2.
    assert plan(steps, 1.5) == [(2, 0.0, 0.0, None)]
    steps = synthetic((8, 4, 0), (8, 4, 2), (0, 2, 6), (0, 2, 6), (0, 2, 6), (0, 2, 6))
    assert plan(steps, 1.5) == [(1, 0.0, 0.0, 2.0), (3, 2.0, 3.5, None)]


def test_an_ap_that_leaves_during_the_delay_is_given_up_and_the_client_picks_again() -> None:
    # At 1 s AP2 is the best, but it is gone by 2.5 s: the client picks AP3 then, ready at 4 s.
    steps = synthetic((8, 0, 0), (0, 6, 2), (0, 0, 2), (0, 0, 2), (0, 0, 2), (0, 0, 2))
    assert plan(steps, 1.5) == [(1, 0.0, 0.0, 1.0), (3, 2.5, 4.0, None)]


def test_with_no_ap_in_range_the_client_scans_when_one_comes() -> None:
    steps = synthetic((8, 0), (0, 0), (0, 0), (0, 4), (0, 4), (0, 4), (0, 4))
    assert plan(steps, 2.0) == [(1, 0.0, 0.0, 1.0), (2, 3.0, 5.0, None)]
    # An AP back in range keeps nothing of the earlier association: the delay is paid again.
    steps = synthetic((8, 0), (0, 0), (8, 0), (8, 0), (8, 0), (8, 0))
    assert plan(steps, 1.0) == [(1, 0.0, 0.0, 1.0), (1, 2.0, 3.0, None)]


def test_an_association_that_would_end_after_the_walk_is_not_listed() -> None:
    steps = synthetic((8, 0), (0, 4), (0, 4))
    assert plan(steps, 2.0) == [(1, 0.0, 0.0, 1.0)]
    assert plan(steps, 1.9) == [(1, 0.0, 0.0, 1.0), (2, 1.0, 2.9, None)]
    with pytest.raises(ParameterError, match="association delay must be positive"):
        break_before_make(steps, 0.0)


def with_stack(scenario: MultiWifi, stack: str) -> MultiWifi:
    scenario.use_stacks(stack, stack)
    return scenario


def test_tcp_runs_break_before_make_with_a_reconnecting_workload_and_mptcp_does_not() -> None:
    assert with_stack(short(), "tcp").workload().reconnect is True
    assert with_stack(short(), "kernel").workload().reconnect is False
    assert with_stack(short(), "userspace").workload().reconnect is False
    bound = MultiWifi(parse_overrides(MultiWifiParams, [
        "n_aps=2", "duration_s=8", "timeout_s=8", "start_m=-5", "walk_speed_mps=4",
        "step_s=0.5", "tcp_handover=bound-to-ap1"]))
    assert with_stack(bound, "tcp").workload().reconnect is False
    # Bound to AP1: the timeline is MPTCP's (the client is associated with every AP in range).
    assert with_stack(bound, "tcp").timeline() == with_stack(short(), "kernel").timeline()


def test_break_before_make_timeline_keeps_one_ap_up_and_moves_the_route_after_the_delay() -> None:
    scenario = MultiWifi(parse_overrides(MultiWifiParams, [
        "n_aps=2", "duration_s=10", "timeout_s=10", "start_m=-5", "walk_speed_mps=4",
        "step_s=0.5", "association_delay_s=1.5"]))
    events = with_stack(scenario, "tcp").timeline()
    links = [(e.at_s, e.link, e.action) for e in events if isinstance(e, LinkEvent)]
    hosts = [(e.at_s, e.action) for e in events if isinstance(e, HostEvent)]
    # AP2 is not associated at the start, even once in range (1.5 s); AP1's link follows the
    # walk until it is lost at 6 s; AP2's comes up 1.5 s later, at its rate of then.
    assert links[0] == (0.0, "ap2", "down")
    ap2 = [x for x in links if x[1] == "ap2"]
    assert ap2[:3] == [(0.0, "ap2", "down"), (7.5, "ap2", "set"), (7.5, "ap2", "up")]
    assert ap2[3:] and all(at > 7.5 and action == "set" for at, _, action in ap2[3:])
    assert (6.0, "ap1", "down") in links
    assert all(at < 6.0 for at, link, action in links if link == "ap1" and action == "set")
    assert hosts == [(6.0, Disassociate(1)), (7.5, RouteThrough(2))]
    ap2_set = next(e for e in events if isinstance(e, LinkEvent) and e.link == "ap2"
                   and e.action == "set")
    assert ap2_set.shaping is not None
    walked = step_at(scenario.steps(), 7.5)
    assert walked is not None and ap2_set.shaping.rate_mbps == walked.aps[1].rate_mbps > 0


def test_break_before_make_refuses_a_walk_where_ap1_is_not_the_best_at_the_start() -> None:
    scenario = MultiWifi(parse_overrides(MultiWifiParams, ["start_m=12"]))
    assert with_stack(scenario, "kernel").timeline()  # MPTCP starts on AP1 wherever it is
    with pytest.raises(ParameterError, match=r"must be AP1.*here it is AP2"):
        with_stack(MultiWifi(parse_overrides(MultiWifiParams, ["start_m=12"])), "tcp").timeline()


@pytest.mark.parametrize(("overrides", "message"), [
    (["tcp_handover=make-before-break"], "tcp_handover must be one of break-before-make, "
                                         "bound-to-ap1"),
    (["association_delay_s=0"], "association_delay_s must be a positive number"),
])
def test_bad_handover_values_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(MultiWifiParams, overrides)
