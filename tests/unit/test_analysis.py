"""Analysis on synthetic results directories: metrics, figures written, report (no root, no tshark).

Packet DataFrames are built directly in the `analysis.tshark.COLUMNS` layout, so these tests
check the metrics' arithmetic without depending on a capture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import figures, metrics, report, tshark


def _packet(t: float, stream: int, mptcp: int | None, src: str, sport: int, length: int,
            **flags: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c.name: None for c in tshark.COLUMNS}
    row.update(time_epoch=1000.0 + t, time=t, tcp_stream=stream, mptcp_stream=mptcp,
               ip_src=src, ip_dst="10.0.0.2", tcp_srcport=sport, tcp_dstport=5201,
               tcp_len=length, ack=True)
    row.update(flags)
    return row


def _packets(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return tshark._conform(pd.DataFrame(rows))


@pytest.fixture
def two_subflows() -> pd.DataFrame:
    rows = [
        _packet(0.00, 0, 0, "10.0.1.1", 40000, 0, syn=True, mp_capable=True),
        _packet(0.01, 1, 0, "10.0.2.1", 40001, 0, syn=True, mp_join=True, backup=True),
        # Reverse direction on stream 0: pure ACKs carrying DSS must not count as data.
        _packet(0.02, 0, 0, "10.0.0.2", 5201, 0, dss=True) | {"ip_dst": "10.0.1.1",
                                                                 "tcp_srcport": 5201,
                                                                 "tcp_dstport": 40000},
    ]
    for i in range(10):  # 1000 B every 10 ms on each subflow for 100 ms
        rows.append(_packet(0.05 + i * 0.01, 0, 0, "10.0.1.1", 40000, 1000, dss=True))
        rows.append(_packet(0.05 + i * 0.01, 1, 0, "10.0.2.1", 40001, 500, dss=True))
    rows.append(_packet(0.20, 1, 0, "10.0.2.1", 40001, 500, dss=True, retransmission=True))
    # A plain TCP connection alongside: no mptcp_stream.
    rows.append(_packet(0.21, 2, None, "10.0.3.1", 40002, 100))
    return _packets(rows)


def test_column_contract_is_unique_and_documented() -> None:
    names = [c.name for c in tshark.COLUMNS]
    assert len(names) == len(set(names))
    assert all(c.meaning for c in tshark.COLUMNS)
    table = tshark.column_table()
    assert "`mptcp.dsn`" in table and "| `dsn` |" in table
    assert list(tshark.empty_frame().columns) == names


def test_tshark_command_is_an_argument_list(tmp_path: Path) -> None:
    if tshark.shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    args = tshark.tshark_command(tmp_path / "x.pcap")
    assert "-r" in args and "mptcp.analyze_mappings:TRUE" in args
    assert "mptcp.stream" in args


def test_missing_tshark_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(tshark.shutil, "which", lambda name: None)
    pcap = tmp_path / "a.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1")
    with pytest.raises(tshark.TsharkError, match="tshark not found"):
        tshark.read_pcap(pcap, use_cache=False)


def test_unreadable_pcap_is_a_clear_error(tmp_path: Path) -> None:
    if tshark.shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    pcap = tmp_path / "garbage.pcap"
    pcap.write_text("not a capture")
    with pytest.raises(tshark.TsharkError, match="could not read"):
        tshark.read_pcap(pcap)
    with pytest.raises(tshark.TsharkError, match="not found"):
        tshark.read_pcap(tmp_path / "absent.pcap")


def test_cache_round_trip_keeps_dtypes(tmp_path: Path, two_subflows: pd.DataFrame) -> None:
    df = two_subflows.copy()
    df.loc[0, "dsn"] = 2**64 - 1  # 64-bit DSNs must not pass through float
    cache = tmp_path / "x.csv.gz"
    tshark._write_cache(df, cache)
    pd.testing.assert_frame_equal(tshark._read_cache(cache), df)


def test_option_counts(two_subflows: pd.DataFrame) -> None:
    counts = metrics.option_counts(two_subflows)
    assert counts["MP_CAPABLE"] == 1
    assert counts["MP_JOIN"] == 1
    assert counts["DSS"] == 22
    assert counts["ADD_ADDR"] == 0


def test_subflows_per_connection(two_subflows: pd.DataFrame) -> None:
    per_conn = metrics.subflows_per_connection(two_subflows)
    assert per_conn.to_dict() == {0: 2}


def test_subflows_table(two_subflows: pd.DataFrame) -> None:
    table = metrics.subflows(two_subflows).set_index("tcp_stream")
    assert table.loc[0, "bytes"] == 10_000
    assert table.loc[1, "bytes"] == 5_500
    assert table.loc[1, "retransmitted_bytes"] == 500
    assert bool(table.loc[1, "join"]) and bool(table.loc[1, "backup"])
    assert not bool(table.loc[0, "join"])
    assert table.loc[0, "src"] == "10.0.1.1:40000"


def test_throughput_bins_and_total(two_subflows: pd.DataFrame) -> None:
    tput = metrics.throughput(two_subflows, bin_s=0.1)
    total = tput[tput["subflow"] == metrics.TOTAL_LABEL].set_index("time_s")["bytes"]
    # Every byte of the data direction lands in exactly one bin.
    assert int(total.sum()) == 10_000 + 5_500 + 100
    assert list(total.index) == pytest.approx([0.0, 0.1, 0.2])
    sf0 = tput[tput["tcp_stream"] == 0]
    assert sf0["mbps"].max() == pytest.approx(5_000 * 8 / 0.1 / 1e6)
    fresh = metrics.throughput(two_subflows, exclude_retransmissions=True)
    assert int(fresh[fresh["subflow"] == "total"]["bytes"].sum()) == 15_100
    with pytest.raises(ValueError):
        metrics.throughput(two_subflows, bin_s=0)


def test_throughput_of_empty_capture() -> None:
    assert metrics.throughput(tshark.empty_frame()).empty
    assert metrics.subflows_per_connection(tshark.empty_frame()).empty


def test_goodput_series_uses_bin_spacing() -> None:
    report_ = {"series": [[0.0, 125_000], [0.1, 250_000], [0.2, 0]]}
    series = metrics.goodput_series(report_)
    assert list(series["mbps"]) == pytest.approx([10.0, 20.0, 0.0])
    wide = metrics.goodput_series({"series": [[0.0, 125_000], [0.5, 125_000]]})
    assert wide["mbps"].iloc[0] == pytest.approx(2.0)
    assert metrics.goodput_series({}).empty


def test_smoothed_goodput_averages_windows() -> None:
    # 100 ms bins alternating 20 and 0 Mbit/s (a comb) average to 10 Mbit/s per 0.5 s; the
    # last window holds two bins and is divided by 0.2 s, not 0.5 s.
    series = metrics.goodput_series({"series": [[round(i * 0.1, 1), 250_000 if i % 2 else 0]
                                                for i in range(12)]})
    smooth = metrics.smoothed_goodput(series, 0.5)
    assert list(smooth["time_s"]) == pytest.approx([0.0, 0.5, 1.0])
    assert list(smooth["mbps"]) == pytest.approx([8.0, 12.0, 10.0])
    assert metrics.smoothed_goodput(series.iloc[:0]).empty
    with pytest.raises(ValueError):
        metrics.smoothed_goodput(series, 0)


def test_mean_goodput_from_timestamps() -> None:
    assert metrics.mean_goodput_mbps({"bytes": 1_250_000, "t_start": 1.0, "t_end": 2.0}) == 10.0
    assert metrics.mean_goodput_mbps({"bytes": 1, "t_start": 2.0, "t_end": 2.0}) is None


def test_link_rates_handle_absent_and_bad_keys() -> None:
    meta = {"params": {"rate1_mbps": 10, "rate2_mbps": "5", "delay1_ms": 20,
                       "bw_mbps": "fast", "rate3_mbps": None}}
    assert metrics.link_rates_mbps(meta) == {"rate1_mbps": 10.0, "rate2_mbps": 5.0}
    assert metrics.link_rates_mbps({}) == {}
    assert metrics.link_rates_mbps({"params": None}) == {}


def test_nstat_deltas(tmp_path: Path) -> None:
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "nstat-h1-before.json").write_text(
        json.dumps({"MPTcpExtMPJoinSynTx": 1, "TcpActiveOpens": 5}))
    (tmp_path / "stats" / "nstat-h1-after.json").write_text(
        json.dumps({"MPTcpExtMPJoinSynTx": 3, "TcpActiveOpens": 5, "MPTcpExtMPCapableSYNTX": 1}))
    assert metrics.nstat_deltas(tmp_path) == {
        "h1": {"MPTcpExtMPCapableSYNTX": 1, "MPTcpExtMPJoinSynTx": 2}}
    assert metrics.nstat_deltas(tmp_path / "absent") == {}


def test_stack_label() -> None:
    assert metrics.stack_label({}, {"stack": "kernel"}) == "kernel"
    assert metrics.stack_label({"client_stack": "ours", "server_stack": "kernel"}, {}) == \
        "ours/kernel"
    assert metrics.stack_label({}, {}) == "unknown"


def test_run_pcaps_groups_by_host(tmp_path: Path) -> None:
    (tmp_path / "pcap").mkdir()
    for name in ("h1-eth0.pcap", "h1-eth1.pcap", "my-router-eth0.pcap"):
        (tmp_path / "pcap" / name).write_bytes(b"")
    groups = metrics.run_pcaps(tmp_path)
    assert sorted(groups) == ["h1", "my-router"]
    assert len(groups["h1"]) == 2


# ---------------------------------------------------------------------------------------------
# Results directories


MIB16 = 16 * 1024 * 1024


def make_run(root: Path, name: str, stack: str, rate1: float, goodput: float,
             fidelity_ok: bool = True, verdict: str | None = "pass", *, rate2: float = 5,
             delays: tuple[float, float] = (0, 0), label: str | None = None,
             bound: bool = False, duration: float = 8.1) -> Path:
    """A results directory following DESIGN.md's contract, without captures.

    With `bound` the summary carries the simult_flows.sh fields of the `aggregate` scenario
    (bound_s, within_bound, link_limited_s) and meta.json the configured rates.
    """
    run = root / name
    (run / "stats").mkdir(parents=True)
    (run / "pcap").mkdir()
    scenario = "aggregate" if bound else "two-paths"
    meta: dict[str, Any] = {
        "scenario": scenario,
        "params": {"rate1_mbps": rate1, "rate2_mbps": rate2, "delay1_ms": float(delays[0]),
                   "delay2_ms": float(delays[1]), "direction": "upload", "size_mib": 16.0},
        "seed": 1, "stack": stack, "link_backend": "tc", "versions": {},
        "kernel": "6.18", "started_at": "2026-11-25T00:00:00Z"}
    if label is not None:
        meta["label"] = label
    summary: dict[str, Any] = {
        "scenario": scenario, "stack": stack, "link_backend": "tc",
        "goodput_mbps": goodput, "bytes_sent": 10_000_000, "bytes_received": 10_000_000,
        "sha256_match": True, "subflows": 2 if stack == "kernel" else 1,
        "duration_s": duration, "fidelity_ok": fidelity_ok,
        "fidelity_notes": [] if fidelity_ok else ["CPU saturated (worst second 2.5% idle)"]}
    if bound:
        meta["configured_rates_mbps"] = {"path1": rate1, "path2": rate2}
        bound_s = metrics.simult_flows_bound_s(MIB16, [rate1, rate2])
        summary.update(bound_s=round(bound_s, 3), within_bound=duration <= bound_s,
                       link_limited_s=round(metrics.link_limited_s(MIB16, [rate1, rate2]), 3))
    if verdict is not None:
        summary["verdict"] = verdict
    per_bin = int(goodput * 1e6 / 8 * 0.1)
    series = [[round(i * 0.1, 1), per_bin if i > 2 else per_bin // 3] for i in range(40)]
    receiver = {"series": series, "bytes": 10_000_000, "sha256": "00",
                "t_start": 0.0, "t_end": 4.0, "goodput_mbps": goodput}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "stats" / "workload-server.json").write_text(json.dumps(receiver))
    (run / "stats" / "workload-client.json").write_text(json.dumps({"bytes": 10_000_000}))
    return run


SAMPLER_HEADER = ("t,netid,kind,state,local,remote,token,subflows,cwnd,ssthresh,srtt_ms,"
                  "rttvar_ms,rto_ms,bytes_acked,bytes_received,bytes_sent,retrans,"
                  "delivery_rate_bps,congestion,mptcp_flags")


def write_samples(run: Path) -> None:
    """The sampler's CSVs of a two-subflow upload: the client sends, the server receives."""
    client = [SAMPLER_HEADER]
    server = [SAMPLER_HEADER]
    for i in range(5):
        t = 100.0 + i * 0.1
        client.append(f"{t},tcp,subflow,ESTAB,10.0.1.1:4000,10.0.3.1:5201,ab,,{10 + i},,"
                      f"{12 + i},1,200,{1000 * i + 1},,{1000 * i},0,,cubic,Mec")
        # The joined subflow: its first sample has no srtt yet (empty = not reported).
        srtt = "" if i == 0 else f"{50 + i}"
        client.append(f"{t},tcp,subflow,ESTAB,10.0.2.1:4001,10.0.3.1:5201,ab,,{20 + i},,"
                      f"{srtt},1,200,{500 * i + 1},,{500 * i},0,,cubic,Jjc")
        client.append(f"{t},mptcp,mptcp,ESTAB,10.0.1.1:4000,10.0.3.1:5201,ab,2,,,,,,,,,,,,")
        server.append(f"{t + 0.02},tcp,subflow,ESTAB,10.0.3.1:5201,10.0.1.1:4000,cd,,10,,"
                      f"3,1,200,1,{1000 * i},,0,,cubic,Mec")
    (run / "stats" / "subflows-client.csv").write_text("\n".join(client) + "\n")
    (run / "stats" / "subflows-server.csv").write_text("\n".join(server) + "\n")


def test_analyze_run_writes_figures_and_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", "kernel", 10, 14.2)
    result = report.analyze_run(run)
    assert result["stack"] == "kernel"
    assert result["workload_goodput_mbps"] == pytest.approx(14.2)
    for ext in ("png", "pdf"):
        assert (run / "figures" / f"goodput.{ext}").stat().st_size > 1000
    assert "figures/goodput.png" in result["figures"]
    assert "figures/subflows.png" not in result["figures"]  # no sampler CSV, no figure
    saved = json.loads((run / "figures" / "metrics.json").read_text())
    assert saved["scenario"] == "two-paths"


def test_throughput_figure_from_packets(tmp_path: Path, two_subflows: pd.DataFrame) -> None:
    tput = metrics.throughput(two_subflows, bin_s=0.05)
    paths = figures.plot_throughput(tput, {"params": {"rate1_mbps": 1}}, {"fidelity_ok": False},
                                    tmp_path / "t")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def _spy_saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Figures passed to `figures.save`, kept for inspection."""
    saved: list[Any] = []
    real_save = figures.save

    def spy(fig: Any, base: Path) -> list[Path]:
        saved.append(fig)
        return real_save(fig, base)

    monkeypatch.setattr(figures, "save", spy)
    return saved


def _banner_text(fig: Any) -> str:
    label = fig._supxlabel  # where the banner lives (it takes part in the layout)
    return label.get_text() if label is not None else ""


def test_fidelity_warning_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    figures.plot_goodput(pd.DataFrame(), {}, {"fidelity_ok": False}, tmp_path / "bad")
    figures.plot_goodput(pd.DataFrame(), {}, {"fidelity_ok": True}, tmp_path / "good")
    assert [_banner_text(f) for f in saved].count(figures.FIDELITY_WARNING) == 1


# ---------------------------------------------------------------------------------------------
# Case labels, configured rates and the selftest bound


def test_case_label_prefers_meta_label_then_compact_params() -> None:
    params = {"rate1_mbps": 10.0, "rate2_mbps": 10.0, "delay1_ms": 1.0, "delay2_ms": 25.0,
              "direction": "upload", "loss1_pct": 1.0, "loss2_pct": 0.0}
    assert metrics.case_label({"label": "10+10 Mbit/s, 1/25 ms", "params": params}) == \
        "10+10 Mbit/s, 1/25 ms"
    varying = ["delay1_ms", "delay2_ms", "rate1_mbps"]
    # One varying rate brings its sibling along; rates come first; no "key=value" strings.
    assert metrics.case_label({"params": params}, varying) == "10+10 Mbit/s, 1/25 ms"
    assert metrics.case_label({"params": params}, ["loss1_pct", "direction"]) == \
        "loss 1/0%, upload"
    assert metrics.case_label({"scenario": "aggregate", "params": params}, []) == "aggregate"
    assert "=" not in metrics.case_label({"params": params})


def test_configured_rates_prefer_meta_then_params() -> None:
    meta = {"configured_rates_mbps": {"path1": 15, "path2": "5"},
            "params": {"rate1_mbps": 1, "rate2_mbps": 1}}
    assert metrics.configured_rates(meta) == {"path1": 15.0, "path2": 5.0}
    assert metrics.configured_rates({"params": {"rate1_mbps": 10, "rate2_mbps": 10}}) == \
        {"rate1_mbps": 10.0, "rate2_mbps": 10.0}
    assert metrics.configured_rates({"configured_rates_mbps": {}}) == {}


def test_simult_flows_bound() -> None:
    # 16 MiB over 10+10 Mbit/s: 6.711 s link-limited, 7.857 s with the selftest's slack.
    assert metrics.link_limited_s(MIB16, [10, 10]) == pytest.approx(6.7109, abs=1e-4)
    assert metrics.simult_flows_bound_s(MIB16, [10, 10]) == pytest.approx(7.8566, abs=1e-4)
    assert metrics.simult_flows_bound_s(MIB16, [15, 5]) == \
        pytest.approx(metrics.simult_flows_bound_s(MIB16, [10, 10]))
    with pytest.raises(ValueError):
        metrics.link_limited_s(1, [0, 0])


def test_completion_derives_missing_fields() -> None:
    full = metrics.completion({"duration_s": 7.3, "bound_s": 7.857, "link_limited_s": 6.711,
                               "within_bound": True})
    assert full == {"duration_s": 7.3, "bound_s": 7.857, "link_limited_s": 6.711,
                    "within_bound": True}
    old = metrics.completion({"duration_s": 9.0, "bound_s": 7.857})
    assert old["link_limited_s"] == pytest.approx(6.7113)
    assert old["within_bound"] is False
    assert metrics.completion({"duration_s": 9.0})["within_bound"] is None


def _suite(tmp_path: Path) -> list[Path]:
    """Four aggregate runs: two cases x (kernel, tcp); kernel fails the bound at 15+5 and
    the TCP run at 10+10 failed its fidelity check. Directory layout as `make experiment`."""
    return [
        make_run(tmp_path, "r10-10/kernel", "kernel", 10, 18.8, rate2=10, bound=True,
                 duration=7.2),
        make_run(tmp_path, "r10-10/tcp", "tcp", 10, 9.6, rate2=10, bound=True, duration=14.0,
                 fidelity_ok=False),
        make_run(tmp_path, "r15-5/kernel", "kernel", 15, 13.1, rate2=5, delays=(1, 25),
                 bound=True, duration=10.3, label="15+5 Mbit/s, 1/25 ms"),
        make_run(tmp_path, "r15-5/tcp", "tcp", 15, 14.3, rate2=5, delays=(1, 25), bound=True,
                 duration=9.4, label="15+5 Mbit/s, 1/25 ms"),
    ]


def test_runs_table_and_markers(tmp_path: Path) -> None:
    runs = report.runs_table(_suite(tmp_path))
    assert list(runs["case"]) == ["10+10 Mbit/s, 0/0 ms"] * 2 + ["15+5 Mbit/s, 1/25 ms"] * 2
    assert list(runs["within_bound"]) == [True, False, False, False]
    markers = figures.case_markers(runs).set_index("case")
    assert markers.loc["10+10 Mbit/s, 0/0 ms", "rate_sum_mbps"] == 20
    assert markers.loc["10+10 Mbit/s, 0/0 ms", "best_path_mbps"] == 10
    assert markers.loc["15+5 Mbit/s, 1/25 ms", "best_path_mbps"] == 15
    assert markers["bound_s"].tolist() == pytest.approx([7.857, 7.857])
    assert markers["link_limited_s"].tolist() == pytest.approx([6.711, 6.711])


def test_bar_table_positions_and_verdicts(tmp_path: Path) -> None:
    runs = report.runs_table(_suite(tmp_path))
    bars = figures.bar_table(runs, "duration_s").set_index(["case", "stack"])
    kernel = bars.loc[("10+10 Mbit/s, 0/0 ms", "kernel")]
    tcp = bars.loc[("10+10 Mbit/s, 0/0 ms", "tcp")]
    # MPTCP left of TCP inside the case's slot centred on 0.
    assert kernel["x"] == pytest.approx(-0.2) and tcp["x"] == pytest.approx(0.2)
    assert bars.loc[("15+5 Mbit/s, 1/25 ms", "kernel"), "x"] == pytest.approx(0.8)
    assert (kernel["within"], kernel["judged"]) == (1, 1)
    assert (tcp["within"], tcp["fidelity_failed"]) == (0, 1)
    assert bars.loc[("15+5 Mbit/s, 1/25 ms", "kernel"), "value"] == pytest.approx(10.3)
    assert figures.ordered_stacks(["tcp", "mine", "kernel", "userspace"]) == \
        ["kernel", "userspace", "tcp", "mine"]


def test_fidelity_banner_names_the_cases(tmp_path: Path) -> None:
    runs = report.runs_table(_suite(tmp_path))
    banner = figures.fidelity_banner(runs)
    assert banner is not None and "TCP at 10+10 Mbit/s, 0/0 ms" in banner
    assert "kernel MPTCP" not in banner
    assert figures.fidelity_banner(runs[runs["fidelity_ok"]]) is None


def test_compare_runs_with_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    paths = report.compare_runs(_suite(tmp_path), tmp_path / "out")
    assert {p.name for p in paths} == {"comparison.png", "comparison.pdf",
                                       "comparison-goodput.png", "comparison-goodput.pdf"}
    assert all(p.stat().st_size > 1000 for p in paths)
    fig, small = saved
    # Small multiples: one panel per case with one line per run, shared y axis.
    panels = [ax for ax in small.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["10+10 Mbit/s, 0/0 ms", "15+5 Mbit/s, 1/25 ms"]
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[1])
    assert all(len([ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]) == 2
               for ax in panels)
    goodput_ax, completion_ax = fig.axes
    assert [t.get_text() for t in goodput_ax.get_xticklabels()] == \
        ["10+10 Mbit/s\n0/0 ms", "15+5 Mbit/s\n1/25 ms"]
    verdicts = [t.get_text() for t in completion_ax.texts if t.get_text() in ("OK", "FAIL")]
    assert verdicts == ["OK", "FAIL", "FAIL", "FAIL"]
    assert "TCP at 10+10 Mbit/s, 0/0 ms" in " ".join(_banner_text(fig).split())  # wrapped
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"kernel MPTCP", "TCP", "sum of path rates", "best single path",
            "selftest bound (simult_flows.sh)", "fidelity check failed"} <= set(legend)


def test_compare_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    runs = [make_run(tmp_path, f"{stack}-{rate}-{rep}", stack, rate,
                     goodput=(1.4 if stack == "kernel" else 0.9) * rate + rep)
            for stack in ("kernel", "tcp") for rate in (5, 10) for rep in (0, 1)]
    paths = report.compare_runs(runs, tmp_path / "out")
    assert {p.name for p in paths} >= {"comparison.png", "comparison.pdf"}
    table = report.runs_table(runs)
    # Only the parameters that vary make the case label (with the other path's rate).
    assert set(table["case"]) == {"5+5 Mbit/s", "10+5 Mbit/s"}
    assert len(saved[0].axes) == 1  # no bound in these summaries: no completion panel
    bars = figures.bar_table(table, "goodput_mbps").set_index(["case", "stack"])
    assert bars.loc[("5+5 Mbit/s", "kernel"), "values"] == pytest.approx([7.0, 8.0])
    assert bars.loc[("5+5 Mbit/s", "kernel"), "value"] == pytest.approx(7.5)
    with pytest.raises(ValueError):
        report.compare_runs([], tmp_path / "out")


def test_write_report(tmp_path: Path) -> None:
    runs = _suite(tmp_path / "default")
    out = report.write_report(runs, tmp_path / "default" / "report.md")
    text = out.read_text()
    assert "## Scenario `aggregate`" in text
    rows = [line for line in text.splitlines() if line.startswith("| 10+10 Mbit/s")]
    assert rows[0].split(" | ")[:6] == ["| 10+10 Mbit/s, 0/0 ms", "kernel MPTCP", "18.80",
                                        "7.20", "7.86", "yes"]
    assert "**no**" in rows[1] and "**failed**: CPU saturated" in rows[1]
    assert all(line.count("|") == 11 for line in rows)
    assert "simult_flows.sh" in text
    assert "kernel MPTCP 1 of 2 runs; TCP 0 of 2 runs" in text
    assert "![aggregate comparison](figures/report-comparison.png)" in text
    assert "![aggregate comparison](figures/report-comparison-goodput.png)" in text
    assert (tmp_path / "default" / "figures" / "report-comparison.png").exists()
    assert "(r10-10/kernel/figures/goodput.png)" in text


def test_report_counts_per_stack() -> None:
    runs = pd.DataFrame({"stack": ["tcp", "kernel", "kernel", "x"],
                         "within_bound": [False, True, False, None],
                         "fidelity_ok": [True, True, True, True]})
    assert report.anchor_counts(runs) == {"kernel": (1, 2), "tcp": (0, 1)}
    assert report.anchor_line("a-scenario-without-anchor", runs) is None


def test_handover_verdict_per_run_and_the_order_of_the_modes() -> None:
    slack = metrics.HANDOVER_GAP_SLACK_S
    ok = {"survived": True, "gap_s": 0.3, "expected_gap_s": 0.26}
    assert metrics.migration_verdict(ok, True, slack) is True  # 0.3 <= 0.26 + 0.2
    assert metrics.migration_verdict({**ok, "gap_s": 0.5}, True, slack) is False
    assert metrics.migration_verdict({"survived": False}, False, slack) is True  # TCP broke
    runs = pd.DataFrame({
        "stack": ["kernel"] * 4 + ["userspace"] * 2 + ["tcp"],
        "mode": ["full", "backup", "single-path", "single-path", "backup", "single-path",
                 None],
        "gap_s": [0.2, 0.3, 0.4, 0.6, 0.2, 0.1, None],
        "survived": [True, True, True, True, True, True, False],
        "anchor_met": [True, True, True, False, True, True, True],
        "multipath": [True] * 6 + [False], "fidelity_ok": [True] * 7})
    line = report.anchor_line("handover", runs)
    assert line is not None and "Paasch et al." in line
    assert "kernel MPTCP 3 of 4 runs (survived, gap <= expected + 0.2 s)" in line
    assert ("kernel MPTCP full 0.20 s, backup 0.30 s, single-path 0.50 s: single-path's "
            "larger than backup's, as published") in line  # 0.5: the median of 0.4 and 0.6
    assert "our stack backup 0.20 s, single-path 0.10 s: single-path's **not** larger" in line
    assert "TCP 1 of 1 runs (single path: connection lost)" in line


# ---------------------------------------------------------------------------------------------
# Socket samples


def test_sender_and_subflow_series(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "kernel", 10, 14.0)
    write_samples(run)
    samples = metrics.load_socket_samples(run)
    assert sorted(samples) == ["client", "server"]
    assert metrics.acked_growth(samples["client"]) == 4000 + 2000
    assert metrics.acked_growth(samples["server"]) == 0
    assert metrics.sender_host(samples) == "client"
    series = metrics.subflow_series(samples["client"])
    assert set(series["subflow"]) == {"10.0.1.1:4000 → 10.0.3.1:5201",
                                      "10.0.2.1:4001 → 10.0.3.1:5201"}  # no MPTCP meta rows
    joined = series[series["subflow"].str.startswith("10.0.2.1")]
    assert list(joined["cwnd"]) == [20, 21, 22, 23, 24]
    assert math.isnan(joined["srtt_ms"].iloc[0])
    assert series["time_s"].min() == 0 and series["time_s"].max() == pytest.approx(0.4)


def test_analyze_run_draws_subflow_state(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "kernel", 10, 14.0)
    write_samples(run)
    (run / "stats" / "subflows-broken.csv").write_text("t,cwnd\nnot,a number\n")
    result = report.analyze_run(run)
    assert result["sender_host"] == "client"
    assert "figures/subflows.png" in result["figures"]
    assert (run / "figures" / "subflows.pdf").stat().st_size > 1000


def test_partial_run_does_not_crash(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    result = report.analyze_run(run)
    assert result["figures"] == []
    assert result["stack"] == "unknown"
    row = report.run_row(run)
    assert math.isnan(row["goodput_mbps"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from analysis.__main__ import main

    run = make_run(tmp_path, "r", "kernel", 10, 12.0)
    assert main(["run", str(run)]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").exists()
    assert "r.md" in capsys.readouterr().out


def test_empty_capture_gives_empty_frame(tmp_path: Path) -> None:
    if tshark.shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    # A pcap global header and no packets: what tcpdump leaves on an idle interface.
    pcap = tmp_path / "idle.pcap"
    pcap.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000800000000100000000"[:48]))
    df = tshark.read_pcap(pcap)
    assert df.empty and list(df.columns) == [c.name for c in tshark.COLUMNS]
    assert tshark.cache_path(pcap).exists()
    assert tshark.read_pcap(pcap).empty  # from the cache


# ---------------------------------------------------------------------------------------------
# Scenario-aware figures and tables: vm-migration, multi-wifi, and the generic fallback


def make_migration_run(root: Path, name: str, stack: str, *, stop: float = 0.5,
                       survived: bool = True, gap: float | None = 0.5,
                       joined: bool = True) -> Path:
    """A vm-migration results directory as experiments/vm_migration.py writes it: the receiver
    series at 10 Mbit/s before the move (at 8 s), nothing during the gap, 20 Mbit/s after; a
    run that did not survive stops at the move and gives up 30 s later."""
    run = root / name
    (run / "stats").mkdir(parents=True)
    move = 7.85
    label = f"stop {stop:g} s, A 10 Mbit/s 20 ms -> B 20 Mbit/s 5 ms"
    meta = {"scenario": "vm-migration", "stack": stack, "label": label,
            "params": {"migrate_at_s": 8.0, "stop_time_s": stop, "duration_s": 20.0,
                       "rate_a_mbps": 10.0, "rate_b_mbps": 20.0, "client_rate_mbps": 50.0},
            "configured_rates_mbps": {"client": 50.0, "domain_a": 10.0, "domain_b": 20.0}}
    series = [[round(i * 0.1, 1), 125_000] for i in range(79)]
    gap_start = 7.9
    if survived:
        resumed = round(gap_start + (gap or 0), 1)
        series += [[round(i * 0.1, 1), 250_000] for i in range(round(resumed * 10), 200)]
    receiver = {"role": "receiver", "series": series, "t_start": 1000.0,
                "t_end": 1020.0 if survived else 1037.9,
                "t_last_data": 1020.0 if survived else 1007.9,
                "bytes": sum(b for _, b in series)}
    summary = {
        "scenario": "vm-migration", "stack": stack, "link_backend": "tc",
        "goodput_mbps": 14.4 if survived else 9.4, "sha256_match": survived, "subflows": 1,
        "fidelity_ok": True, "fidelity_notes": [], "survived": survived,
        "survived_reason": "the whole byte stream arrived intact" if survived else
        "receiver (client): no progress for 30.0 s (socket timeout)",
        "gap_s": gap if survived else None, "gap_start_s": gap_start if survived else None,
        "expected_gap_s": round(stop + 0.02, 3), "move_at_receiver_s": move,
        "goodput_before_mbps": 10.0, "goodput_after_mbps": 20.0 if survived else None,
        "bytes_after_move": 1_000_000 if survived else 0, "joined_new_address": joined,
        "mptcp_counters": {"client": {"MPTcpExtAddAddr": 1}} if stack == "kernel" else
        {"client": {}, "server": {}},
        "prepared": {"client": {"workload_proto": "mptcp" if stack == "kernel" else stack}},
    }
    timeline = [{"action": "down", "link": "domain_a", "at_s": 8.0, "applied_at_s": 8.0002},
                {"host_action": "VM resumes in domain B", "at_s": 8.0 + stop,
                 "applied_at_s": 8.0002 + stop + 0.01},
                {"host_action": "VM withdraws the old address", "at_s": 8.0 + stop,
                 "applied_at_s": 8.0002 + stop + 0.02}]
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "stats" / "timeline.json").write_text(json.dumps(timeline))
    (run / "stats" / "workload-client.json").write_text(json.dumps(receiver))
    (run / "stats" / "workload-server.json").write_text(json.dumps({"role": "sender"}))
    return run


def _migration_suite(root: Path) -> list[Path]:
    return [make_migration_run(root, "stop0.5s/kernel", "kernel"),
            make_migration_run(root, "stop0.5s/tcp", "tcp", survived=False, joined=False),
            make_migration_run(root, "stop2s/kernel", "kernel", stop=2.0, gap=3.0),
            make_migration_run(root, "stop2s/tcp", "tcp", stop=2.0, survived=False,
                               joined=False)]


def test_migration_events_and_verdicts(tmp_path: Path) -> None:
    kernel, tcp, *_ = _migration_suite(tmp_path)
    events = metrics.migration_events(kernel)
    assert events["move_s"] == pytest.approx(7.85)
    # The runner's own pause (resume applied 0.51 s after the link-down), not the nominal one.
    assert events["resume_s"] == pytest.approx(7.85 + 0.51)
    assert events["lost_s"] is None and events["gave_up_s"] is None
    lost = metrics.migration_events(tcp)
    assert lost["lost_s"] == pytest.approx(7.9) and lost["gave_up_s"] == pytest.approx(37.9)
    runs = report.runs_table(_migration_suite(tmp_path / "again"))
    assert list(runs["multipath"]) == [True, False, True, False]
    # MPTCP: survived with gap <= expected + 0.5 s; TCP: died. 3.0 s > 2.02 + 0.5 s fails.
    assert list(runs["anchor_met"]) == [True, True, False, True]
    assert metrics.migration_verdict({"survived": False}, multipath=True) is False
    assert metrics.migration_verdict({"survived": True}, multipath=False) is False
    assert metrics.migration_verdict({}, multipath=True) is None
    # Our stack, single-path today, is judged as TCP unless its run shows MPTCP.
    assert not metrics.speaks_mptcp({}, {"stack": "userspace", "subflows": 1})
    assert metrics.speaks_mptcp({}, {"stack": "userspace", "joined_new_address": True})
    assert metrics.last_data_s({"series": [[0.0, 5], [0.1, 5], [0.2, 0]]}) == \
        pytest.approx(0.2)


def test_compare_migration_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    paths = report.compare_runs(_migration_suite(tmp_path), tmp_path / "out")
    assert {p.name for p in paths} == {"comparison-goodput.png", "comparison-goodput.pdf"}
    assert all(p.stat().st_size > 1000 for p in paths)
    (fig,) = saved
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "kernel MPTCP (receiver, 100 ms bins)" in legend
    assert {"link to domain A down", "VM stopped", "VM resumes in domain B",
            "connection lost"} <= set(legend)
    assert not {"sum of path rates", "best single path"} & set(legend)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4  # per case (column): the whole run and a zoom on the move
    full, zoom = visible[0], visible[2]
    assert full.get_title().startswith("stop 0.5 s")
    assert zoom.get_xlim() == pytest.approx((7.85 - 1.0, 7.85 + 0.51 + 2.5))
    texts = " ".join(t.get_text() for ax in visible for t in ax.texts)
    assert "kernel MPTCP: gap 0.50 s (expected ≈ 0.52 s)" in texts
    assert "kernel MPTCP: gap 3.00 s (expected ≈ 2.02 s)" in texts
    assert "TCP: connection lost\n(gave up at 37.9 s)" in texts
    # The move is marked in every panel: link-down and resume lines at the measured times.
    xs = {round(float(line.get_xdata()[0]), 2) for line in full.get_lines()
          if len(set(line.get_xdata())) == 1}
    assert {7.85, 8.36} <= xs


def test_migration_report(tmp_path: Path) -> None:
    runs = _migration_suite(tmp_path / "default")
    text = report.write_report(runs, tmp_path / "default" / "report.md", analyze=False)\
        .read_text()
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert header == ("| case | stack | survived | gap [s] | expected gap [s] | goodput before "
                      "[Mbit/s] | goodput after [Mbit/s] | joined new address | sha256 match "
                      "| fidelity | run |")
    rows = [line for line in text.splitlines() if line.startswith("| stop 0.5 s")]
    assert rows[0].split(" | ")[1:8] == ["kernel MPTCP", "yes", "0.50", "0.52", "10.00",
                                         "20.00", "yes"]
    assert rows[1].split(" | ")[1:8] == [
        "TCP", "**no**: receiver (client): no progress for 30.0 s (socket timeout)", "–",
        "0.52", "10.00", "–", "no"]
    assert "plain TCP dies (Le & Nahum, INFOCOM 2019)" in text
    assert ("Met: kernel MPTCP 1 of 2 runs (survived, gap <= expected + 0.5 s); TCP 2 of 2 "
            "runs (single path: connection lost).") in text
    assert "![vm-migration comparison](figures/report-comparison-goodput.png)" in text
    assert "report-comparison.png" not in text  # no goodput bars against path sums


def make_wifi_run(root: Path, name: str, stack: str, goodputs: list[float],
                  positions_m: list[float] | None = None) -> Path:
    """A multi-wifi results directory: three APs whose rates cross as the client walks."""
    run = root / name
    (run / "stats").mkdir(parents=True)
    positions_m = positions_m or [0.0, 10.0, 20.0, 30.0]
    aps = [[20.0, 5.0, 1.0], [12.0, 12.0, 2.0], [4.0, 18.0, 6.0], [1.0, 8.0, 16.0]]
    positions = [{"step": i, "t_start_s": 5.0 * i, "t_end_s": 5.0 * (i + 1),
                  "position_m": positions_m[i], "ap_rates_mbps": aps[i],
                  "best_ap_mbps": max(aps[i]), "goodput_mbps": goodputs[i]}
                 for i in range(4)]
    fractions = [g / max(a) for g, a in zip(goodputs, aps, strict=True)]
    meta = {"scenario": "multi-wifi", "stack": stack, "label": "3 APs, walk 30 m",
            "params": {"ap_count": 3}}
    summary = {"scenario": "multi-wifi", "stack": stack, "goodput_mbps": sum(goodputs) / 4,
               "sha256_match": True, "subflows": 3 if stack == "kernel" else 1,
               "fidelity_ok": True, "fraction_of_best_ap": round(min(fractions), 3),
               "positions": [*positions, "not a position"]}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _wifi_suite(root: Path) -> list[Path]:
    return [make_wifi_run(root, "walk/kernel", "kernel", [19.0, 11.5, 17.0, 15.0]),
            make_wifi_run(root, "walk/tcp", "tcp", [19.5, 5.0, 0.5, 0.2])]


def test_wifi_positions_and_result(tmp_path: Path) -> None:
    kernel, tcp = _wifi_suite(tmp_path)
    frame = metrics.wifi_positions(metrics.load_summary(kernel))
    assert list(frame["position_m"]) == [0, 10, 20, 30]  # the malformed entry is skipped
    assert list(frame["fraction"]) == pytest.approx([0.95, 11.5 / 12, 17 / 18, 15 / 16])
    assert frame["ap_rates_mbps"].iloc[2] == [4.0, 18.0, 6.0]
    good = metrics.wifi_result(metrics.load_summary(kernel))
    assert good["within_best_ap"] is True and good["positions"] == 4
    bad = metrics.wifi_result(metrics.load_summary(tcp))
    assert bad["worst_fraction"] == pytest.approx(0.2 / 16)
    assert bad["worst_position_m"] == 30 and bad["within_best_ap"] is False
    assert metrics.wifi_result({"worst_step_fraction_of_best_ap": 0.9})["within_best_ap"]
    # The experiment's own verdict wins over the arithmetic here.
    told = metrics.wifi_result({**metrics.load_summary(kernel),
                                "within_15pct_at_every_step": False})
    assert told["within_best_ap"] is False and told["positions_within"] == 4
    assert metrics.wifi_positions({}).empty


def test_compare_wifi_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    paths = report.compare_runs(_wifi_suite(tmp_path), tmp_path / "out")
    assert {p.name for p in paths} == {"comparison-goodput.png", "comparison-goodput.pdf"}
    (fig,) = saved
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"kernel MPTCP", "TCP", "best AP (configured)", "within 15% of best AP",
            "AP 1 rate", "AP 2 rate", "AP 3 rate"} <= set(legend)
    ax = next(ax for ax in fig.axes if ax.get_visible())
    assert ax.get_xlabel() == "Position [m]"
    lines = ax.get_lines()
    assert len(lines) == 3 + 1 + 2  # three APs, the best AP, one line per run
    assert list(lines[3].get_ydata()) == [20, 12, 18, 16]  # the envelope of the AP rates


def test_wifi_axis_falls_back_to_time() -> None:
    walk = pd.DataFrame({"run": ["a"] * 3, "position_m": [0.0, 10.0, 0.0]})
    assert figures.wifi_axis(walk) == "time_s"
    assert figures.wifi_axis(walk.assign(position_m=[0.0, 5.0, 10.0])) == "position_m"
    assert figures.wifi_axis(walk.assign(position_m=[0.0, None, 10.0])) == "time_s"


def test_wifi_report(tmp_path: Path) -> None:
    runs = _wifi_suite(tmp_path / "default")
    back = make_wifi_run(tmp_path / "default", "back/kernel", "kernel", [19, 11, 16, 15],
                         positions_m=[0.0, 10.0, 5.0, 0.0])
    text = report.write_report([*runs, back], tmp_path / "default" / "report.md",
                               analyze=False).read_text()
    # The two kernel runs are repetitions of one case: their table comes first.
    repeated, each = text.split("### Each run")
    kernel = next(line for line in repeated.splitlines() if line.startswith("| 3 APs"))
    assert kernel.split(" | ")[1:3] == ["kernel MPTCP", "2"] and "| 2 of 2 |" in kernel
    header = next(line for line in each.splitlines() if line.startswith("| case"))
    assert "| fraction of best AP (mean) | worst position | goodput [Mbit/s] | positions " \
        "within 15% |" in header
    assert any(line.startswith("| 3 APs") and "| 1 of 4 |" in line for line in each.splitlines())
    rows = [line.split(" | ") for line in each.splitlines() if line.startswith("| 3 APs")]
    assert [r[1:4] for r in rows] == [["kernel MPTCP", "0.94", "0.94 at 30 m"],
                                      ["TCP", "0.01", "**0.01 at 30 m**"],
                                      ["kernel MPTCP", "0.89", "0.89 at 5 m"]]
    assert "(Croitoru et al., NSDI 2015)" in text
    assert "every position: kernel MPTCP 2 of 2 runs; TCP 0 of 1 runs." in text
    assert (tmp_path / "default" / "figures" / "report-comparison-goodput.png").exists()


def test_generic_scenario_has_no_aggregation_references(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    runs = [make_run(tmp_path, f"{stack}", stack, 10, 9.0) for stack in ("kernel", "tcp")]
    report.compare_runs(runs, tmp_path / "out")
    bars, small = saved
    for fig in (bars, small):
        legend = {t.get_text() for t in fig.legends[0].get_texts()}
        assert "kernel MPTCP" in legend
        assert not {"sum of path rates", "best single path"} & legend
    assert not [ln for ax in small.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]


def test_run_titles_fit_and_name_our_stack(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert figures.stack_name("userspace") == "our stack"
    meta = {"scenario": "vm-migration", "stack": "userspace",
            "label": "stop 0.5 s, A 10 Mbit/s 20 ms -> B 20 Mbit/s 5 ms, a long label too"}
    saved = _spy_saved(monkeypatch)
    run = tmp_path / "r"
    write_samples(make_run(tmp_path, "r", "userspace", 10, 9.0))
    figures.plot_subflow_state(metrics.subflow_series(metrics.load_socket_samples(run)["client"]),
                               meta, {}, tmp_path / "s", host="client")
    title = saved[0]._suptitle.get_text()
    assert title.startswith("Subflow state: our stack (sender client)\nvm-migration: stop 0.5")
    limit = int(7.0 * figures._TITLE_CHARS_PER_IN)
    assert all(len(line) <= limit for line in title.splitlines())
    assert "userspace MPTCP" not in title


def test_fidelity_cell_counts_link_verdicts() -> None:
    links = [{"rate_verdict": "achieved"}, {"rate_verdict": "not saturated"},
             {"rate_verdict": "achieved"}, {"rate_verdict": "unshaped"}]
    assert report._fidelity_cell({"fidelity_ok": True, "fidelity_links": links}) == \
        "ok (links: 2 achieved, 1 not saturated)"
    short = [{"rate_verdict": "short"}, {"rate_verdict": "achieved"}]
    assert report._fidelity_cell({"fidelity_ok": False, "fidelity_links": short,
                                  "fidelity_notes": ["a->b carried 80%"]}) == \
        "**failed** (links: 1 short, 1 achieved): a->b carried 80%"
    assert report._fidelity_cell({"fidelity_ok": True}) == "ok"


def test_mobility_runs_are_judged_on_the_envelope_mptcp_only(tmp_path: Path) -> None:
    rows = {}
    for name, stack, fraction in (("k", "kernel", 0.9), ("u", "userspace", 0.8),
                                  ("t", "tcp", 0.5)):
        run = make_run(tmp_path, name, stack, 10, 9.0)
        for file, update in (("meta.json", {"scenario": "mobility"}),
                             ("summary.json", {"scenario": "mobility", "subflows": 2
                                               if stack != "tcp" else 1,
                                               "fraction_of_envelope": fraction})):
            data = json.loads((run / file).read_text())
            (run / file).write_text(json.dumps({**data, **update}))
        rows[stack] = report.run_row(run)
    assert rows["kernel"]["anchor_met"] is True  # 0.9 >= 0.85
    assert rows["userspace"]["anchor_met"] is False
    assert rows["tcp"]["anchor_met"] is None  # the single-path reference
    assert rows["kernel"]["fraction_of_envelope"] == 0.9
