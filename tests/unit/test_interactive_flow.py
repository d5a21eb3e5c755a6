"""The interactive flow beside a measured bulk one, without root: a competing flow on the
measured hosts and stacks (validation, the runner's checks and command lines, its summary),
handover's parameters and metrics from made-up workload reports, and the analysis of it
(reports and packets of the measured flow only, the figures and the report's table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import figures, interactive, metrics, report, tshark
from experiments.handover import (
    AROUND_FAILURE_S,
    INTERACTIVE,
    WIFI_LINK,
    Handover,
    HandoverParams,
    interactive_metrics,
)
from experiments.runner import Run, RunOptions, _check_flows, flow_summary
from experiments.scenario import CompetingFlow, RunOutcome, parse_overrides
from testbed.errors import ParameterError
from topologies.two_path import SERVER_ADDR

# -- the flow and the runner -------------------------------------------------------------------


def interactive_flow(**changes: Any) -> CompetingFlow:
    args: dict[str, Any] = {"name": "interactive", "client": "client", "server": "server",
                            "server_address": SERVER_ADDR, "port": 5202,
                            "on_measured_stack": True, "messages": 200, "interval_ms": 20.0}
    return CompetingFlow(**{**args, **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"messages": 15}, "messages must be at least 16 bytes"),
    ({"interval_ms": 0}, "interval_ms must be a positive number"),
    ({"interval_ms": float("nan")}, "interval_ms must be a positive number"),
])
def test_bad_message_parameters_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        interactive_flow(**changes)


def test_a_flow_on_the_measured_stacks_runs_between_the_measured_hosts_only() -> None:
    scenario = Handover(HandoverParams())
    workload = scenario.workload()
    _check_flows([interactive_flow()], workload, scenario)
    with pytest.raises(ParameterError, match="from the measured client 'client' to the "
                                             "measured server 'server'"):
        _check_flows([interactive_flow(client="server", server="client")], workload, scenario)
    with pytest.raises(ParameterError, match="port 5201 on server is taken by the measured"):
        _check_flows([interactive_flow(port=5201)], workload, scenario)
    with pytest.raises(ParameterError, match="port 5202 on server is taken by another flow"):
        _check_flows([interactive_flow(), interactive_flow(name="second")], workload, scenario)
    # Other competing flows still need hosts of their own.
    with pytest.raises(ParameterError, match="carries the measured flow"):
        _check_flows([interactive_flow(on_measured_stack=False)], workload, scenario)


def test_the_runner_starts_the_flow_with_the_measured_stacks_and_in_messages_mode() -> None:
    run = Run(Handover(HandoverParams()), RunOptions(client_stack="tcp", server_stack="tcp"))
    assert run.flow_drivers == {}  # nothing of its own to prepare or release
    (flow,) = run.flows
    from testbed.stacks.base import PreparedHost

    prepared = PreparedHost(host="server", stack="tcp", workload_proto="tcp",
                            congestion="cubic")
    argv = run._workload_argv("server", prepared, Path("r.json"), flow)
    assert argv[argv.index("--proto") + 1] == "tcp"
    assert argv[argv.index("--port") + 1] == "5202"
    assert argv[argv.index("--direction") + 1] == "download"  # the bulk flow's
    assert argv[argv.index("--messages") + 1] == "200"
    assert argv[argv.index("--interval-ms") + 1] == "20.0"
    assert argv[argv.index("--seconds") + 1] == "12.0"  # the whole bulk transfer
    assert argv[argv.index("--seed") + 1] == "2"  # its own bytes
    bulk = run._workload_argv("server", prepared, Path("r.json"))
    assert "--messages" not in bulk and bulk[bulk.index("--port") + 1] == "5201"


def test_flow_summary_of_messages_names_the_measured_stacks() -> None:
    sender = {"bytes": 400, "sha256": "s", "messages": {"sent": 2}}
    receiver = {"bytes": 400, "sha256": "s", "messages": {"received": 2, "delay_ms_p50": 7.0}}
    summary = flow_summary(interactive_flow(), sender, receiver, stack="kernel")
    assert summary["stack"] == "kernel" and summary["on_measured_stack"] is True
    assert summary["messages"] == {"received": 2, "delay_ms_p50": 7.0, "sent": 2}
    assert flow_summary(CompetingFlow("tcp", "a", "b", "x"), sender, receiver)["messages"] \
        is None


# -- handover ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["interactive_size=8"], "interactive_size must be at least 16 bytes"),
    (["interactive_interval_ms=0"], "interactive_interval_ms must be a positive number"),
    (["interactive_port=5201"], r"interactive_port \(5201\) must differ"),
    (["interactive_port=70000"], "interactive_port must be within"),
])
def test_bad_interactive_parameters_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(HandoverParams, overrides)


def test_handover_declares_its_interactive_flow() -> None:
    params = parse_overrides(HandoverParams, ["direction=upload", "interactive_size=100",
                                              "interactive_interval_ms=10"])
    (flow,) = Handover(params).competing_flows()
    assert (flow.name, flow.client, flow.server, flow.port) == \
        (INTERACTIVE, "client", "server", 5202)
    assert flow.on_measured_stack and flow.direction == "upload"
    assert (flow.messages, flow.interval_ms, flow.seconds) == (100, 10.0, None)
    assert Handover(parse_overrides(HandoverParams, ["interactive=false"])
                    ).competing_flows() == []


FAIL = 1002.0  # the failure's wall time in the made-up runs below


def reports(delays: list[float], sent: int | None = None, broke: bool = False
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sender and a receiver report of messages due every 20 ms from 1000.0 (wall time),
    each arriving `delays[i]` ms later; the receiver started at 1000.0."""
    series = [[round(i * 0.02 + d / 1000, 4), d] for i, d in enumerate(delays)]
    count = len(delays) if sent is None else sent
    sender: dict[str, Any] = {"bytes": 200 * count, "sha256": "a" if not broke else "b",
                              "messages": {"sent": count}}
    receiver: dict[str, Any] = {"bytes": 200 * len(delays), "sha256": "a", "t_start": 1000.0,
                                "message_series": series}
    if broke:
        sender["error"] = "ConnectionResetError: Connection reset by peer"
        receiver["error"] = "ConnectionAbortedError: Software caused connection abort"
    return sender, receiver


def test_metrics_of_an_interactive_flow_that_moved() -> None:
    # 4 s of messages: 10 ms on WiFi, 300 ms for those due in the 0.2 s after the failure,
    # 40 ms on cellular after.
    delays = []
    for i in range(200):
        due = 1000.0 + i * 0.02
        delays.append(10.0 if due < FAIL else 300.0 if due < FAIL + 0.2 else 40.0)
    sender, receiver = reports(delays)
    out = interactive_metrics(sender, receiver, FAIL, FAIL + 0.2, 200, 20.0)
    assert out["survived"] is True and out["lost"] == 0 and out["errors"] == []
    assert (out["sent"], out["received"]) == (200, 200)
    assert out["delay_ms_max"] == 300.0 and out["delay_ms_p50"] == 40.0
    assert out["worst_around_failure_ms"] == 300.0
    assert out["worst_due_after_failure_s"] == pytest.approx(0.0, abs=1e-6)
    # Due within [failure - 1 s, detection + 1 s]: 2.2 s of messages.
    assert out["messages_around_failure"] == pytest.approx((2 * AROUND_FAILURE_S + 0.2) / 0.02,
                                                           abs=1)
    assert out["delay_ms_p50_before_failure"] == 10.0
    assert out["delay_ms_p50_after_failure"] == 40.0


def test_metrics_of_an_interactive_flow_that_broke() -> None:
    sender, receiver = reports([10.0] * 100, sent=110, broke=True)  # 2 s, then nothing
    out = interactive_metrics(sender, receiver, FAIL, FAIL + 0.2, 200, 20.0)
    assert out["survived"] is False and len(out["errors"]) == 2
    assert out["lost"] == 10 and out["received"] == 100
    assert out["delay_ms_p50_after_failure"] is None
    assert out["worst_around_failure_ms"] == 10.0  # only what arrived before the break
    # Without a failure in the timeline there is no "around".
    quiet = interactive_metrics(*reports([10.0] * 5), None, None, 200, 20.0)
    assert quiet["survived"] is True and quiet["messages_around_failure"] is None


def test_handover_summary_carries_the_interactive_flow(tmp_path: Path) -> None:
    (tmp_path / "stats").mkdir()
    sender, receiver = reports([10.0] * 200)
    outcome = RunOutcome(
        summary={"sha256_match": True, "client_stack": "kernel", "errors": []},
        sender={}, receiver={"t_start": 1000.0, "series": [[0.0, 1000], [3.0, 1000]]},
        timeline=[{"link": WIFI_LINK, "action": "down", "wall_time": FAIL}],
        run_dir=tmp_path, flows={INTERACTIVE: {"sender": sender, "receiver": receiver}})
    result = Handover(HandoverParams()).evaluate_run(outcome)
    assert "interactive_delay" not in result
    assert result["interactive"]["port"] == 5202 and result["interactive"]["survived"] is True
    off = Handover(parse_overrides(HandoverParams, ["interactive=false"])).evaluate_run(outcome)
    assert off["interactive"] is None


# -- analysis ----------------------------------------------------------------------------------


def make_handover_run(root: Path, name: str, stack: str, mode: str | None,
                      broke: bool = False) -> Path:
    """A handover results directory with its interactive flow, as the runner writes it."""
    run = root / name
    (run / "stats").mkdir(parents=True)
    delays = [10.0 if i < 100 else 250.0 if i < 110 else 40.0 for i in range(200)]
    sender, receiver = reports(delays[:100] if broke else delays, sent=110 if broke else None,
                               broke=broke)
    receiver["role"], sender["role"] = "receiver", "sender"
    numbers = interactive_metrics(sender, receiver, FAIL, FAIL + 0.2, 200, 20.0)
    meta = {"scenario": "handover", "stack": stack, "label": f"{mode or 'full'}: WiFi",
            "params": {"port": 5201, "mode": mode or "full"},
            "timeline": [{"action": "down", "link": WIFI_LINK}],
            "competing_flows": [{"name": INTERACTIVE, "on_measured_stack": True}]}
    summary = {"scenario": "handover", "stack": stack, "mode": mode, "goodput_mbps": 10.0,
               "sha256_match": not broke, "subflows": 2, "fidelity_ok": True,
               "survived": not broke, "gap_s": None if broke else 0.2, "expected_gap_s": 0.26,
               "goodput_after_mbps": None if broke else 7.5, "interactive": numbers,
               "flows": {INTERACTIVE: {"messages": {"size": 200}}}}
    timeline = [{"action": "down", "link": WIFI_LINK, "wall_time": FAIL},
                {"host_action": "client notices WiFi is lost", "wall_time": FAIL + 0.2}]
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "stats" / "timeline.json").write_text(json.dumps(timeline))
    (run / "stats" / f"workload-{INTERACTIVE}-client.json").write_text(json.dumps(receiver))
    (run / "stats" / f"workload-{INTERACTIVE}-server.json").write_text(json.dumps(sender))
    bulk = {"role": "receiver", "series": [[0.0, 1000], [0.1, 1000]], "t_start": 1000.0}
    (run / "stats" / "workload-client.json").write_text(json.dumps(bulk))
    (run / "stats" / "workload-server.json").write_text(json.dumps({"role": "sender"}))
    return run


def test_the_measured_flows_report_comes_before_other_flows(tmp_path: Path) -> None:
    (tmp_path / "stats").mkdir()
    # Upload: the measured receiver is the server; "interactive-server" sorts before it.
    for name, series in (("workload-interactive-server.json", [[0.0, 1]]),
                         ("workload-server.json", [[0.0, 2]]),
                         ("workload-client.json", [])):
        (tmp_path / "stats" / name).write_text(json.dumps({"series": series}))
    assert metrics.load_workload_report(tmp_path)["series"] == [[0.0, 2]]


def test_packets_of_the_measured_connection_only() -> None:
    rows = []
    for port, stream in ((5201, 0), (5202, 1)):
        row: dict[str, Any] = {c.name: None for c in tshark.COLUMNS}
        row.update(time_epoch=1000.0, tcp_stream=stream, ip_src="10.0.3.1",
                   ip_dst="10.0.1.1", tcp_srcport=port, tcp_dstport=40000, tcp_len=100)
        rows.append(row)
    df = tshark._conform(pd.DataFrame(rows))
    meta = {"params": {"port": 5201}, "competing_flows": [{"on_measured_stack": True}]}
    assert list(metrics.measured_packets(df, meta)["tcp_stream"]) == [0]
    # Competing flows between other hosts (or none): nothing to tell apart, all kept.
    assert len(metrics.measured_packets(df, {"params": {"port": 5201}})) == 2
    samples = {"client": pd.DataFrame(), "interactive-client": pd.DataFrame()}
    assert list(metrics.measured_samples(samples, {"competing_flows": [
        {"name": "interactive"}]})) == ["client"]


def test_message_frame_is_on_the_failures_clock(tmp_path: Path) -> None:
    run = make_handover_run(tmp_path, "full/kernel", "kernel", "full")
    summary = metrics.load_summary(run)
    frame, detected = interactive.run_frame(run, summary)
    assert detected == pytest.approx(0.2)
    assert len(frame) == 200
    assert frame["time_s"].iloc[0] == pytest.approx(-2.0)  # due at 1000.0, failure at 1002.0
    assert frame["time_s"].iloc[100] == pytest.approx(0.0, abs=1e-6)
    assert frame["delay_ms"].iloc[100] == 250.0


def test_interactive_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[Any] = []
    real_save = figures.save
    monkeypatch.setattr(figures, "save",
                        lambda fig, base: saved.append(fig) or real_save(fig, base))
    runs = [make_handover_run(tmp_path, "full/kernel", "kernel", "full"),
            make_handover_run(tmp_path, "full/tcp", "tcp", None, broke=True)]
    result = report.analyze_run(runs[1])
    assert "figures/interactive.png" in result["figures"]
    texts = " ".join(t.get_text() for ax in saved[-1].axes for t in ax.texts)
    assert "connection broke: 10 of 110 messages never arrived" in texts
    paths = report.compare_runs(runs, tmp_path / "out")
    assert {p.name for p in paths} >= {"comparison-interactive.png"}
    legend = [t.get_text() for t in saved[-1].legends[0].get_texts()]
    assert {"kernel MPTCP", "WiFi lost", "connection manager acts",
            "connection broke (last message)"} <= set(legend)
    whole, zoom = [ax for ax in saved[-1].axes if ax.get_visible()]
    assert zoom.get_xlim() == pytest.approx((-0.5, 0.2 + 1.5))  # around the failure
    assert whole.get_xlim()[0] < -1.9  # the whole run, from 2 s before it


def test_handover_report_table(tmp_path: Path) -> None:
    runs = [make_handover_run(tmp_path, "full/kernel", "kernel", "full"),
            make_handover_run(tmp_path, "full/tcp", "tcp", None, broke=True)]
    text = report.write_report(runs, tmp_path / "report.md", analyze=False).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert header == ("| case | stack | mode | survived | gap [s] | expected gap [s] | goodput "
                      "after [Mbit/s] | interactive p50/p95/max [ms] | interactive worst "
                      "around failure [ms] | interactive received/sent | interactive "
                      "survived | met | sha256 match | fidelity | run |")
    kernel, tcp = [line.split(" | ") for line in text.splitlines()
                   if line.startswith("| full: WiFi")]
    # 100 messages at 10 ms, 90 at 40, 10 at 250: the 95th percentile is still 40.
    assert kernel[2:11] == ["full", "yes", "0.20", "0.26", "7.50", "40/40/250", "250",
                            "200/200", "yes"]
    assert tcp[2:4] == ["–", "**no**"] and tcp[7:11] == ["10/10/10", "10", "100/110",
                                                          "**NO**"]
