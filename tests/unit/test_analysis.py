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


def make_run(root: Path, name: str, stack: str, rate1: float, goodput: float,
             fidelity_ok: bool = True, verdict: str | None = "pass") -> Path:
    """A results directory following DESIGN.md's contract, without captures."""
    run = root / name
    (run / "stats").mkdir(parents=True)
    (run / "pcap").mkdir()
    meta = {"scenario": "two-paths", "params": {"rate1_mbps": rate1, "rate2_mbps": 5,
                                                "delay_ms": 10},
            "seed": 1, "stack": stack, "link_backend": "tc", "versions": {},
            "kernel": "6.18", "started_at": "2026-11-25T00:00:00Z"}
    summary: dict[str, Any] = {
        "scenario": "two-paths", "stack": stack, "link_backend": "tc",
        "goodput_mbps": goodput, "bytes_sent": 10_000_000, "bytes_received": 10_000_000,
        "sha256_match": True, "subflows": 2 if stack == "kernel" else 1, "duration_s": 8.1,
        "fidelity_ok": fidelity_ok}
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
    (run / "stats" / "subflows-h1.csv").write_text("t,local,remote,cwnd,srtt_ms,bytes_acked\n")
    return run


def test_analyze_run_writes_figures_and_metrics(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", "kernel", 10, 14.2)
    result = report.analyze_run(run)
    assert result["stack"] == "kernel"
    assert result["workload_goodput_mbps"] == pytest.approx(14.2)
    for ext in ("png", "pdf"):
        assert (run / "figures" / f"goodput.{ext}").stat().st_size > 1000
    assert "figures/goodput.png" in result["figures"]
    saved = json.loads((run / "figures" / "metrics.json").read_text())
    assert saved["scenario"] == "two-paths"


def test_throughput_figure_from_packets(tmp_path: Path, two_subflows: pd.DataFrame) -> None:
    tput = metrics.throughput(two_subflows, bin_s=0.05)
    paths = figures.plot_throughput(tput, {"params": {"rate1_mbps": 1}}, {"fidelity_ok": False},
                                    tmp_path / "t")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_fidelity_warning_is_drawn(tmp_path: Path) -> None:
    texts: list[str] = []
    real_save = figures.save

    def spy(fig: Any, base: Path) -> list[Path]:
        label = fig._supxlabel  # where the banner lives (it takes part in the layout)
        texts.append(label.get_text() if label is not None else "")
        return real_save(fig, base)

    figures.save = spy  # type: ignore[assignment]
    try:
        figures.plot_goodput(pd.DataFrame(), {}, {"fidelity_ok": False}, tmp_path / "bad")
        figures.plot_goodput(pd.DataFrame(), {}, {"fidelity_ok": True}, tmp_path / "good")
    finally:
        figures.save = real_save  # type: ignore[assignment]
    assert texts.count(figures.FIDELITY_WARNING) == 1


def test_compare_runs(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, f"{stack}-{rate}-{rep}", stack, rate,
                     goodput=(1.4 if stack == "kernel" else 0.9) * rate + rep)
            for stack in ("kernel", "tcp") for rate in (5, 10) for rep in (0, 1)]
    paths = report.compare_runs(runs, tmp_path / "out")
    assert {p.name for p in paths} == {"comparison.png", "comparison.pdf"}
    table = report.runs_table(runs)
    # Only the parameter that varies goes into the group label.
    assert set(table["group"]) == {"rate1_mbps=5", "rate1_mbps=10"}
    with pytest.raises(ValueError):
        report.compare_runs([], tmp_path / "out")


def test_write_report(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "mp", "kernel", 10, 14.0),
            make_run(tmp_path, "tcp", "tcp", 10, 9.5, fidelity_ok=False, verdict=None)]
    out = report.write_report(runs, tmp_path / "report" / "index.md")
    text = out.read_text()
    assert "| mp | two-paths | kernel |" in text
    assert "14.00" in text and "9.50" in text
    assert "fidelity check failed" in text
    assert "![mp goodput](../mp/figures/goodput.png)" in text
    assert (tmp_path / "report" / "figures" / "index-comparison.png").exists()
    for line in text.splitlines():
        if line.startswith("| tcp "):
            assert line.count("|") == 10


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
