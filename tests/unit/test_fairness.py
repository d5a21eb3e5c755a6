"""The fairness scenario without root: its parameters, topologies, the competing flows a scenario
may run, routes between several routers, and the verdicts computed from workload reports and
per-subflow samples."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from experiments import get_scenario
from experiments.aggregate import Aggregate, AggregateParams
from experiments.fairness import (
    COUPLED_BAND,
    UNCOUPLED_MIN_RATIO,
    Fairness,
    FairnessParams,
    common_window,
    expectation,
    flow_losses,
    path2_share,
    ratio_anchor,
    subflow_bytes,
    window_bytes,
)
from experiments.runner import _check_flows, flow_summary
from experiments.scenario import CompetingFlow, RunOutcome, Workload, parse_overrides
from testbed.emu.network import router_routes
from testbed.errors import ParameterError
from testbed.stats import CSV_FIELDS

# -- parameters and topologies -----------------------------------------------------------------


def test_defaults_and_overrides() -> None:
    params = parse_overrides(FairnessParams, ["mode=cross", "rtt_ms=40", "congestion=lia"])
    assert (params.mode, params.rtt_ms, params.congestion) == ("cross", 40.0, "lia")
    link = params.link()
    assert (link.rate_mbps, link.delay_ms, link.queue_pkts) == (10.0, 20.0, 25)
    assert parse_overrides(FairnessParams, ["loss_pct=0.5"]).link().loss_pct == 0.5
    assert get_scenario("fairness") is Fairness


def test_aqm_applies_to_the_shaped_links_of_both_modes() -> None:
    for mode, names in (("shared", ("bottleneck",)), ("cross", ("path1", "path2"))):
        scenario = Fairness(parse_overrides(FairnessParams, [f"mode={mode}", "aqm=red"]))
        links = _links(scenario.topology())
        for name in names:
            for shaping in (links[name]["shaping"].a2b, links[name]["shaping"].b2a):
                assert shaping.aqm == "red"
                assert (shaping.red.min_pkts, shaping.red.max_pkts) == (6.25, 18.75)
        assert scenario.label().endswith(", RED")
    params = parse_overrides(FairnessParams, ["aqm=red", "red_min_pkts=4", "red_max_p=0.2"])
    assert (params.link().red.min_pkts, params.link().red.max_pkts) == (4, 12)
    assert params.link().red.max_p == 0.2
    # Defaults: RED at the shared bottleneck, drop-tail for cross traffic; either can be set.
    assert FairnessParams().link().aqm == "red"
    assert FairnessParams(mode="cross").link().aqm == "droptail"
    droptail = Fairness(parse_overrides(FairnessParams, ["aqm=droptail"]))
    assert droptail.params.link().aqm == "droptail"
    assert not droptail.label().endswith("RED")
    assert not Fairness(FairnessParams(mode="cross")).label().endswith("RED")


@pytest.mark.parametrize(("override", "message"), [
    ("aqm=codel", "aqm must be one of droptail, red"),
    ("red_max_pkts=40", "above the queue limit"),
    ("mode=both", "mode must be one of shared, cross"),
    ("rtt_ms=0", "rtt_ms must be positive"),
    ("rate_mbps=-1", "rate_mbps must be a positive number"),
    ("seconds=0", "seconds must be positive"),
    ("warmup_s=40", "warmup_s must be within"),
    ("competitor_congestion=", "competitor_congestion must not be empty"),
    ("competitor_stack=kernel", "competitor_stack must be tcp or userspace"),
    ("paths=3", "paths must be 1 or 2"),
    ("access_jitter_ms=11", "access_jitter_ms must be within 0..rtt_ms/2"),
    ("loss_pct=101", "loss_pct must be within 0..100"),
])
def test_bad_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(FairnessParams, [override])


def _links(topo: Any) -> dict[str, dict[str, Any]]:
    return {info["link_name"]: info for _, _, info in topo.links(withInfo=True)}


def test_shared_topology_has_one_shaped_bottleneck_for_all_flows() -> None:
    topo = Fairness(FairnessParams()).topology()
    assert sorted(topo.hosts()) == ["client", "left", "right", "server", "tcpclient",
                                    "tcpserver"]
    links = _links(topo)
    shaped = {name for name, info in links.items() if info["shaping"]}
    assert shaped == {"bottleneck"}
    assert links["bottleneck"]["shaping"].a2b.delay_ms == 10.0
    # The client's two interfaces and the TCP client all hang off the bottleneck's left end.
    for intf in ("client-eth0", "client-eth1", "tcpclient-eth0"):
        assert "left" in (links[intf]["node1"], links[intf]["node2"])
    assert all(len(info["intfName1"]) <= 15 and len(info["intfName2"]) <= 15
               for info in links.values())


def test_access_jitter_shapes_the_senders_links_and_keeps_the_mean_rtt() -> None:
    scenario = Fairness(parse_overrides(FairnessParams, ["access_jitter_ms=2"]))
    links = _links(scenario.topology())
    for intf in ("client-eth0", "client-eth1", "tcpclient-eth0"):
        a2b = links[intf]["shaping"].a2b
        assert (a2b.rate_mbps, a2b.delay_ms, a2b.jitter_ms) == (None, 2.0, 2.0)
    assert links["bottleneck"]["shaping"].a2b.delay_ms == 8.0  # 10 - 2: mean RTT still 20
    assert links["server-eth0"]["shaping"] is None


def test_cross_topology_loads_path1_only() -> None:
    scenario = Fairness(parse_overrides(FairnessParams, ["mode=cross"]))
    links = _links(scenario.topology())
    assert {name for name, info in links.items() if info["shaping"]} == {"path1", "path2"}
    assert scenario.configured_rates() == {"path1": 10.0, "path2": 10.0}
    assert "cross traffic" in scenario.label()


def test_the_competitor_is_reno_tcp_and_can_be_left_out() -> None:
    (flow,) = Fairness(FairnessParams()).competing_flows()
    assert (flow.stack, flow.congestion, flow.client, flow.server) == (
        "tcp", "reno", "tcpclient", "tcpserver")
    assert Fairness(parse_overrides(FairnessParams, ["competitor=off"])).competing_flows() == []
    (ours,) = Fairness(parse_overrides(FairnessParams, ["competitor_stack=userspace"])
                       ).competing_flows()
    assert ours.stack == "userspace"
    # One path: no second subflow endpoint for the client.
    assert Fairness(FairnessParams()).client_endpoints()[0].addr == "10.0.2.1"
    assert Fairness(parse_overrides(FairnessParams, ["paths=1"])).client_endpoints() == []
    assert Aggregate(AggregateParams()).competing_flows() == []


# -- competing flows ---------------------------------------------------------------------------


def test_competing_flow_validation_and_duration() -> None:
    flow = CompetingFlow("cross", "a", "b", "10.0.0.2")
    assert flow.duration_s(Workload(seconds=30)) == 30
    assert CompetingFlow("x", "a", "b", "10.0.0.2", seconds=5).duration_s(
        Workload(bytes=100)) == 5
    with pytest.raises(ParameterError, match="give the competing flow its own"):
        flow.duration_s(Workload(bytes=100))
    for kwargs, message in [({"name": "a b"}, "letters, digits"),
                            ({"server": "a"}, "client and server are both"),
                            ({"port": 0}, "port must be within"),
                            ({"direction": "up"}, "direction must be"),
                            ({"start_s": -1}, "start_s must be"),
                            ({"seconds": 0}, "seconds must be positive")]:
        args = {"name": "f", "client": "a", "server": "b", "server_address": "10.0.0.2",
                **kwargs}
        with pytest.raises(ParameterError, match=message):
            CompetingFlow(**args)


def test_competing_flows_are_checked_against_the_topology() -> None:
    scenario = Fairness(FairnessParams())
    workload = scenario.workload()
    ok = CompetingFlow("tcp", "tcpclient", "tcpserver", "10.0.5.1")
    _check_flows([ok], workload, scenario)
    cases = [
        ([CompetingFlow("t", "nobody", "tcpserver", "x")], "no host 'nobody'.*tcpclient"),
        ([CompetingFlow("t", "client", "tcpserver", "x")], "carries the measured flow"),
        ([ok, CompetingFlow("tcp", "tcpclient", "tcpserver", "x", port=6000)],
         "two competing flows are named"),
        ([ok, CompetingFlow("u", "tcpclient", "tcpserver", "x")], "port 5301 on tcpserver"),
    ]
    for flows, message in cases:
        with pytest.raises(ParameterError, match=message):
            _check_flows(flows, workload, scenario)
    with pytest.raises(ParameterError, match="own `seconds`"):
        _check_flows([ok], Workload(bytes=1000), scenario)
    # Two kernel flows may share a host; our stack's daemon may not.
    _check_flows([ok, CompetingFlow("u", "tcpclient", "tcpserver", "x", port=6000)],
                 workload, scenario)
    with pytest.raises(ParameterError, match="runs our stack for one flow"):
        _check_flows([CompetingFlow("ours", "tcpclient", "tcpserver", "x", stack="userspace"),
                      CompetingFlow("u", "tcpclient", "tcpserver", "x", port=6000)],
                     workload, scenario)


def test_flow_summary_reports_goodput_and_integrity() -> None:
    flow = CompetingFlow("tcp", "a", "b", "x")
    sender = {"bytes": 100, "sha256": "s", "congestion": "reno"}
    receiver = {"bytes": 100, "sha256": "s", "goodput_mbps": 4.5, "duration_s": 9.0}
    summary = flow_summary(flow, sender, receiver)
    assert summary["goodput_mbps"] == 4.5 and summary["sha256_match"] is True
    assert summary["congestion"] == "reno"
    assert flow_summary(flow, sender, {**receiver, "bytes": 99})["sha256_match"] is False


# -- routes between routers -------------------------------------------------------------------


def test_a_single_router_needs_no_routes() -> None:
    assert router_routes("r", {"r": ["10.0.1.254/24", "10.0.2.254/24"]}, {"r": []}) == []


def test_routes_follow_the_fewest_hops() -> None:
    # left1 - right - left2, and a longer way left1 - spare - spare2 - left2.
    subnets = {"left1": ["10.0.1.254/24", "10.0.11.1/24", "10.0.20.1/24"],
               "right": ["10.0.3.254/24", "10.0.11.2/24", "10.0.12.2/24"],
               "left2": ["10.0.2.254/24", "10.0.12.1/24", "10.0.22.2/24"],
               "spare": ["10.0.20.2/24", "10.0.21.1/24"],
               "spare2": ["10.0.21.2/24", "10.0.22.1/24"]}
    neighbours = {"left1": [("right", "10.0.11.2"), ("spare", "10.0.20.2")],
                  "right": [("left1", "10.0.11.1"), ("left2", "10.0.12.1")],
                  "left2": [("right", "10.0.12.2"), ("spare2", "10.0.22.1")],
                  "spare": [("left1", "10.0.20.1"), ("spare2", "10.0.21.2")],
                  "spare2": [("spare", "10.0.21.1"), ("left2", "10.0.22.2")]}
    routes = dict(router_routes("left1", subnets, neighbours))
    assert routes["10.0.3.0/24"] == "10.0.11.2"
    assert routes["10.0.2.0/24"] == "10.0.11.2"  # two hops through right, not three
    assert routes["10.0.21.0/24"] == "10.0.20.2"
    assert "10.0.1.0/24" not in routes and "10.0.11.0/24" not in routes
    assert len(routes) == len(set(routes))


# -- verdicts ----------------------------------------------------------------------------------


def test_expectations_and_anchor_bands() -> None:
    assert expectation("lia", "userspace") == "coupled"
    assert expectation("olia", "userspace") == "coupled"
    assert expectation("reno", "kernel") == "uncoupled"
    assert expectation("cubic", "userspace") == "uncoupled"
    assert expectation("reno", "tcp") == "single-path"
    assert expectation("lia", "userspace", paths=1) == "single-path"
    assert ratio_anchor("coupled") == COUPLED_BAND == (0.85, 1.15)
    assert ratio_anchor("single-path") == COUPLED_BAND
    assert ratio_anchor("uncoupled") == (UNCOUPLED_MIN_RATIO, None)


def _report(t_start: float, mbps: float, seconds: float) -> dict[str, Any]:
    per_bin = int(mbps * 1e6 / 8 * 0.1)
    bins = int(seconds / 0.1)
    return {"t_start": t_start, "t_last_data": t_start + seconds,
            "series": [[round(i * 0.1, 3), per_bin] for i in range(bins)]}


def test_window_counts_only_the_bins_inside() -> None:
    report = _report(100.0, 8.0, 10.0)  # 100 kB per 100 ms
    assert window_bytes(report, 102.0, 104.0) == 20 * 100_000
    assert window_bytes({}, 0, 1) == 0
    other = _report(101.0, 4.0, 12.0)
    assert common_window([report, other], 2.0) == (103.0, 110.0)
    assert common_window([report, {"t_start": 1.0}], 2.0) is None
    assert common_window([report], 9.5) is None  # under a second left


def _write_samples(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({name: row.get(name, "") for name in CSV_FIELDS})


def _subflow_rows(t0: float, per_s: dict[str, int], seconds: int) -> list[dict[str, Any]]:
    rows = []
    for second in range(seconds + 1):
        for addr, rate in per_s.items():
            rows.append({"t": t0 + second, "netid": "tcp", "kind": "subflow",
                         "state": "ESTAB", "local": "10.0.3.1:5201",
                         "remote": f"{addr}:40000", "bytes_received": rate * second})
    rows.append({"t": t0, "netid": "mptcp", "kind": "mptcp", "state": "ESTAB",
                 "local": "10.0.3.1:5201", "remote": "10.0.1.1:40000",
                 "bytes_received": 10**9})
    return rows


def test_subflow_bytes_per_client_address_in_a_window() -> None:
    rows = [{k: str(v) for k, v in r.items()}
            for r in _subflow_rows(100.0, {"10.0.1.1": 1000, "10.0.2.1": 3000}, 10)]
    assert subflow_bytes(rows, 5201) == {"10.0.1.1": 10_000, "10.0.2.1": 30_000}
    assert subflow_bytes(rows, 5201, 102.0, 105.0) == {"10.0.1.1": 3000, "10.0.2.1": 9000}
    assert subflow_bytes(rows, 9999) == {}
    assert path2_share({"10.0.1.1": 1000, "10.0.2.1": 3000}) == 0.75
    assert path2_share({"10.0.1.1": 1000}) == 0.0
    assert path2_share({}) is None


def _outcome(tmp_path: Path, mptcp_mbps: float, tcp_mbps: float | None,
             stack: str = "userspace") -> RunOutcome:
    flows = {} if tcp_mbps is None else {
        "tcp": {"sender": {}, "receiver": _report(100.2, tcp_mbps, 40.0)}}
    return RunOutcome(summary={"client_stack": stack}, sender={},
                      receiver=_report(100.0, mptcp_mbps, 40.0), timeline=[],
                      run_dir=tmp_path, flows=flows)


@pytest.mark.parametrize(("congestion", "stack", "mptcp", "tcp", "met"), [
    ("lia", "userspace", 4.8, 4.8, True),
    ("olia", "userspace", 3.2, 6.4, False),  # 0.5: too timid for the anchor
    ("reno", "userspace", 6.4, 3.2, True),  # 2: the uncoupled expectation
    ("cubic", "kernel", 4.8, 4.8, False),  # uncoupled yet fair: not what is expected
    ("reno", "tcp", 4.8, 4.6, True),
])
def test_shared_verdict_is_the_ratio_against_its_band(
        tmp_path: Path, congestion: str, stack: str, mptcp: float, tcp: float,
        met: bool) -> None:
    scenario = Fairness(parse_overrides(FairnessParams, [f"congestion={congestion}"]))
    result = scenario.evaluate_run(_outcome(tmp_path, mptcp, tcp, stack))
    assert result["ratio"] == pytest.approx(mptcp / tcp, abs=0.01)
    assert result["within_anchor"] is met
    # The window starts after the warm-up, from the later of the two starts.
    assert result["window_s"] == [pytest.approx(10.2), pytest.approx(40.0)]
    assert result["mptcp_mbps"] == pytest.approx(mptcp, rel=0.02)


def test_shared_without_a_competitor_has_no_ratio(tmp_path: Path) -> None:
    scenario = Fairness(parse_overrides(FairnessParams, ["competitor=off"]))
    result = scenario.evaluate_run(_outcome(tmp_path, 9.0, None))
    assert "ratio" not in result and result["mptcp_mbps"] == pytest.approx(9.0, rel=0.02)
    missing = RunOutcome(summary={}, sender={}, receiver={}, timeline=[], run_dir=tmp_path)
    assert "fairness_error" in scenario.evaluate_run(missing)


def test_cross_verdict_is_the_share_on_the_free_path(tmp_path: Path) -> None:
    scenario = Fairness(parse_overrides(FairnessParams, ["mode=cross", "congestion=olia"]))
    _write_samples(tmp_path / "stats" / "subflows-server.csv",
                   _subflow_rows(100.0, {"10.0.1.1": 100_000, "10.0.2.1": 900_000}, 45))
    result = scenario.evaluate_run(_outcome(tmp_path, 8.0, 9.0))
    assert result["path2_share"] == pytest.approx(0.9)
    assert result["shifted"] is True
    assert result["capacity_left_mbps"] == pytest.approx(2 * 10 * 1448 / 1514 - 9.0, abs=0.01)
    assert result["fraction_of_capacity_left"] == pytest.approx(
        8.0 / result["capacity_left_mbps"], abs=0.01)
    assert "ratio" not in result
    _write_samples(tmp_path / "stats" / "subflows-server.csv",
                   _subflow_rows(100.0, {"10.0.1.1": 500_000, "10.0.2.1": 500_000}, 45))
    assert scenario.evaluate_run(_outcome(tmp_path, 8.0, 9.0))["shifted"] is False


def _shaper_json(run_dir: Path, flows: dict[str, dict[str, Any]]) -> None:
    """stats/shaper.json with a path-2 link that only MPTCP crosses and the link where MPTCP
    and the TCP flow meet, each with per-flow counters in the data direction (a2b)."""
    def direction(per_flow: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {"frames_in": sum(f["frames_in"] for f in per_flow.values()), "flows": per_flow}
    alone = {"tcp 10.0.2.1:40001>10.0.3.1:5201": {"frames_in": 500, "dropped_queue": 400}}
    (run_dir / "stats").mkdir(parents=True, exist_ok=True)
    (run_dir / "stats" / "shaper.json").write_text(json.dumps({"links": {
        "left2-eth1~right-eth1": {"a2b": direction(alone), "b2a": direction({})},
        "left-eth3~right-eth0": {"a2b": direction(flows), "b2a": direction({})},
    }}))


def _series(frames: int, dropped: int) -> list[list[float]]:
    """1 s bins from 100 to 144 s: `frames` and `dropped` in each bin of the judged window of
    `_outcome` (110.2-140 s: the bins starting at 111-139), everything dropped outside it."""
    return [[float(t), frames, dropped] if 111 <= t <= 139 else [float(t), 20, 20]
            for t in range(100, 145)]


def test_flow_losses_group_the_senders_where_the_flows_meet(tmp_path: Path) -> None:
    zero = {"dropped_loss": 0, "dropped_early": 0, "dropped_forced": 0, "dropped_queue": 0}
    flows: dict[str, dict[str, Any]] = {
        "tcp 10.0.1.1:40000>10.0.3.1:5201": {**zero, "frames_in": 600, "dropped_early": 6,
                                             "series": _series(10, 0)},
        "tcp 10.0.2.1:40001>10.0.3.1:5201": {**zero, "frames_in": 400, "dropped_queue": 4,
                                             "series": _series(10, 1)},
        "tcp 10.0.4.1:43000>10.0.5.1:5301": {**zero, "frames_in": 1000, "dropped_early": 15,
                                             "dropped_forced": 5, "series": _series(20, 4)},
        "udp 10.0.4.1:53>10.0.5.1:53": {**zero, "frames_in": 10, "dropped_loss": 10},
        "other": {**zero, "frames_in": 3},
    }
    # The whole run's counters ...
    assert flow_losses({"flows": flows}) == {"mptcp": {"frames": 1000, "dropped": 10},
                                             "tcp": {"frames": 1010, "dropped": 30}}
    # ... or the bins wholly inside a window.
    assert flow_losses({"flows": flows}, (110.5, 112.0)) == {
        "mptcp": {"frames": 20, "dropped": 1}, "tcp": {"frames": 20, "dropped": 4}}
    assert flow_losses({}) == {}
    _shaper_json(tmp_path, flows)
    scenario = Fairness(parse_overrides(FairnessParams, ["congestion=olia"]))
    result = scenario.evaluate_run(_outcome(tmp_path, 4.8, 4.8))
    # The link both cross (not path 2's, which MPTCP crosses alone), in the judged window.
    assert (result["mptcp_loss_pct"], result["tcp_loss_pct"]) == (5.0, 20.0)
    assert result["loss_ratio"] == 0.25
    # Without the shaper's counters (netem backend): no loss fields, the verdict stands.
    result = scenario.evaluate_run(_outcome(tmp_path / "netem", 4.8, 4.8))
    assert "loss_ratio" not in result and result["within_anchor"] is True


# -- suite, report rows and figure ------------------------------------------------------------


def test_fairness_suite_covers_every_controller_and_stays_out_of_the_default() -> None:
    from experiments.suites import SUITES

    cases = SUITES["fairness"](False)
    assert not any(case.scenario == "fairness" for case in SUITES["default"](False))
    runs = {(case.label, stack) for case in cases for stack in case.stacks}
    for mode in ("shared", "cross"):
        for cc in ("lia", "olia", "balia", "reno", "cubic"):
            assert (f"{mode}_{cc}", "userspace") in runs
        assert {(f"{mode}_reno", "kernel"), (f"{mode}_cubic", "kernel"),
                (f"{mode}_reno", "tcp")} <= runs
    assert not any(stack == "kernel" and "lia" in label for label, stack in runs)
    for case in cases:  # every case's parameters are valid
        parse_overrides(FairnessParams, list(case.overrides))
    full = SUITES["fairness"](True)
    assert len(full) == 3 * len(cases)
    # Each repetition runs with its own seed: --seed, +1, +2.
    seeds = {case.label: case.seed_for(7) for case in full}
    assert [seeds[f"shared_olia_rep{rep}"] for rep in (1, 2, 3)] == [7, 8, 9]


def _fake_run(root: Path, name: str, stack: str, congestion: str,
              verdicts: dict[str, Any]) -> Path:
    import json

    run = root / name
    (run / "figures").mkdir(parents=True)
    params = {**FairnessParams().__dict__, "congestion": congestion,
              "mode": verdicts["mode"]}
    scenario = Fairness(FairnessParams(congestion=congestion, mode=verdicts["mode"]))
    (run / "meta.json").write_text(json.dumps({
        "scenario": "fairness", "label": scenario.label(), "params": params, "stack": stack,
        "client_stack": stack, "server_stack": stack}))
    (run / "summary.json").write_text(json.dumps({
        "scenario": "fairness", "stack": stack, "client_stack": stack, "server_stack": stack,
        "goodput_mbps": 5.0, "sha256_match": True, "fidelity_ok": True, **verdicts}))
    return run


def test_report_rows_and_figure(tmp_path: Path) -> None:
    from analysis.report import write_report

    runs = [
        _fake_run(tmp_path, "a", "userspace", "lia",
                  {"mode": "shared", "aqm": "red", "expected": "coupled", "ratio": 0.97,
                   "anchor_low": 0.85, "anchor_high": 1.15, "within_anchor": True,
                   "mptcp_mbps": 4.6, "tcp_mbps": 4.74, "mptcp_loss_pct": 1.046,
                   "tcp_loss_pct": 1.3}),
        _fake_run(tmp_path, "b", "kernel", "reno",
                  {"mode": "shared", "expected": "uncoupled", "ratio": 1.3, "anchor_low": 1.6,
                   "anchor_high": None, "within_anchor": False}),
        _fake_run(tmp_path, "c", "userspace", "olia",
                  {"mode": "cross", "expected": "coupled", "path2_share": 0.91,
                   "shifted": True, "fraction_of_capacity_left": 0.93}),
    ]
    runs.append(_fake_run(tmp_path, "d", "kernel", "reno",
                          {"mode": "cross", "expected": "uncoupled", "path2_share": 0.7,
                           "shifted": True, "fraction_of_capacity_left": 0.9}))
    report = write_report(runs, tmp_path / "out" / "report.md", analyze=False)
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| shared") or
            line.startswith("| cross")]
    assert len(rows) == 4
    assert rows[3].endswith("| – | – | 0.70 | 0.90 | – | yes | ok | `../d` |")  # not judged
    # The loss rates MPTCP and TCP saw where they met, when the shaper counted them.
    assert "| 0.97 | 0.85–1.15 | 1.05/1.30 | – | – | yes |" in rows[0]
    assert "| 1.30 | >= 1.6 |" in rows[1] and "**NO**" in rows[1]
    # The queue discipline; a summary without one (older runs) was drop-tail.
    assert "| red | lia |" in rows[0] and "| droptail | reno |" in rows[1]
    assert "| 0.91 | 0.93 | yes |" in rows[2] and "path-2 share > 0.67" in rows[2]
    assert "our stack 2 of 2 runs" in text and "kernel MPTCP 0 of 1 runs" in text
    assert (tmp_path / "out" / "figures" / "report-comparison.png").stat().st_size > 0


def test_fairness_table_orders_controllers_and_names_plain_tcp() -> None:
    import pandas as pd

    from analysis.figures import fairness_table

    runs = pd.DataFrame({"case": ["x"] * 4, "stack": ["tcp", "userspace", "kernel", "userspace"],
                         "congestion": ["reno", "cubic", "reno", "lia"],
                         "expected": ["single-path", "uncoupled", "uncoupled", "coupled"],
                         "ratio": [1.0, 2.0, 1.8, 0.9]})
    table = fairness_table(runs, "ratio")
    assert list(table["case"]) == ["lia", "reno", "cubic", "TCP (reno)"]
