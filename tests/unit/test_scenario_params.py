"""Scenario parameters: typed --set overrides, validation before anything starts, link shaping
values and the published bound of the aggregation scenario."""

from __future__ import annotations

import pytest

from experiments.aggregate import Aggregate, AggregateParams
from experiments.scenario import LinkEvent, Workload, parse_overrides
from testbed.emu.linkparams import MIN_QUEUE_PKTS, LinkShaping, Shaping
from testbed.errors import ParameterError


def test_overrides_are_converted_to_the_field_types() -> None:
    params = parse_overrides(AggregateParams, ["rate1_mbps=15", "queue_pkts=50",
                                               "capture=off", "direction=download"])
    assert params.rate1_mbps == 15.0 and isinstance(params.rate1_mbps, float)
    assert params.queue_pkts == 50
    assert params.capture is False
    assert params.direction == "download"
    assert parse_overrides(AggregateParams, ["queue_pkts=none"]).queue_pkts is None
    assert parse_overrides(AggregateParams, ["opportunistic=1"]).opportunistic is True
    assert parse_overrides(AggregateParams, []).opportunistic is False


@pytest.mark.parametrize(("override", "message"), [
    ("bogus=1", "unknown parameter 'bogus'"),
    ("rate1_mbps", "expects key=value"),
    ("rate1_mbps=fast", "expected float"),
    ("delay1_ms=-5", "delay_ms must be >= 0"),
    ("loss2_pct=150", "loss_pct must be within 0..100"),
    ("rate2_mbps=0", "rate_mbps must be a positive number"),
    ("jitter1_ms=3", "jitter_ms (3.0) larger than delay_ms"),
    ("direction=sideways", "direction must be upload or download"),
    ("size_mib=0", "size_mib must be positive"),
    ("port=70000", "port must be within"),
])
def test_bad_values_are_refused_with_a_clear_message(override: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_overrides(AggregateParams, [override])


def test_queue_defaults_to_the_bandwidth_delay_product() -> None:
    # 10 Mbit/s with 25 ms each way: 10e6/8 * 0.05 s = 62500 bytes = 42 frames of 1500.
    assert Shaping(rate_mbps=10, delay_ms=25).queue_limit == 42
    assert Shaping(rate_mbps=10, delay_ms=0).queue_limit == MIN_QUEUE_PKTS
    assert Shaping(rate_mbps=10, delay_ms=25, queue_pkts=7).queue_limit == 7


def test_shaping_round_trips_and_refuses_unknown_keys() -> None:
    shaping = Shaping(rate_mbps=5, delay_ms=3, jitter_ms=1, loss_pct=0.5, queue_pkts=20)
    assert Shaping.from_dict(shaping.to_dict()) == shaping
    with pytest.raises(ParameterError, match="unknown shaping parameter"):
        Shaping.from_dict({"rate": 5})
    with pytest.raises(ParameterError, match="either rate_mbps or trace"):
        Shaping(rate_mbps=5, trace="trace.down")
    link = LinkShaping.symmetric(rate_mbps=5)
    assert link.direction("a2b") is link.a2b
    with pytest.raises(ParameterError):
        link.direction("up")


def test_reordering_is_a_percentage_and_needs_a_delay() -> None:
    shaping = Shaping(delay_ms=1, reorder_pct=2)
    assert Shaping.from_dict(shaping.to_dict()) == shaping
    assert Shaping().reorder_pct == 0
    for bad in (-1, 101):
        with pytest.raises(ParameterError, match=r"reorder_pct must be within 0\.\.100"):
            Shaping(delay_ms=1, reorder_pct=bad)
    with pytest.raises(ParameterError, match="reorder_pct needs delay_ms > 0"):
        Shaping(reorder_pct=2)
    with pytest.raises(ParameterError, match="reorder_pct needs delay_ms > 0"):
        shaping.with_changes(delay_ms=0)


def test_link_events_and_workloads_validate() -> None:
    LinkEvent(at_s=1.0, link="path1", action="down")
    with pytest.raises(ParameterError):
        LinkEvent(at_s=-1, link="path1", action="down")
    with pytest.raises(ParameterError):
        LinkEvent(at_s=1, link="path1", action="set")  # no shaping
    with pytest.raises(ParameterError):
        LinkEvent(at_s=1, link="path1", action="explode")
    with pytest.raises(ParameterError):
        Workload(bytes=10, seconds=1.0)


def test_aggregate_bound_is_the_selftest_formula() -> None:
    scenario = Aggregate(AggregateParams())
    # simult_flows.sh: 16 MiB over 10+10 Mbit/s -> 16*2**20*8/20e6 * 10/9 + 0.4 s
    assert scenario.bound_s() == pytest.approx(16 * 2**20 * 8 / 20e6 * 10 / 9 + 0.4)
    verdict = scenario.evaluate({"duration_s": 7.5})
    assert verdict["within_bound"] is True
    assert scenario.evaluate({"duration_s": 8.5})["within_bound"] is False
    assert scenario.evaluate({"duration_s": None})["within_bound"] is False
    assert scenario.workload().bytes == 16 * 2**20
    topo = scenario.topology()
    assert sorted(topo.hosts()) == ["client", "router", "server"]
    shaped = [info["shaping"] for _, _, info in topo.links(withInfo=True) if info["shaping"]]
    assert [s.a2b.rate_mbps for s in shaped] == [10.0, 10.0]


def test_capture_points_default_to_the_scenario_and_can_be_chosen() -> None:
    assert Aggregate(AggregateParams()).capture_points() == [
        ("client", "client-eth0"), ("client", "client-eth1")]
    chosen = Aggregate(parse_overrides(AggregateParams, ["capture_on=server-eth0,router-eth2"]))
    assert chosen.capture_points() == [("server", "server-eth0"), ("router", "router-eth2")]
    with pytest.raises(ParameterError, match="capture_on"):
        parse_overrides(AggregateParams, ["capture_on=eth0"])
