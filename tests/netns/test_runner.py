"""End to end through `testbed run`: kernel MPTCP over two shaped paths, plain TCP as the
baseline, the results directory contract, and cleanup after success, Ctrl-C and kill -9."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.tshark import read_merged
from testbed.emu.cleanup import STATE_DIR
from testbed.emu.links import kernel_has_netem
from tests.netns.nsutil import left_behind, machine_unchanged

TESTBED = [sys.executable, "-m", "testbed.cli"]
SMALL = ["--set", "size_mib=4", "--link-backend", "userspace", "--seed", "3"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TESTBED, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def records() -> set[str]:
    return {p.name for p in STATE_DIR.glob("*.json")} if STATE_DIR.is_dir() else set()


@pytest.fixture
def clean_machine() -> Iterator[None]:
    before_records = records()
    with machine_unchanged():
        yield
    assert records() == before_records


def test_kernel_mptcp_aggregates_two_shaped_paths(tmp_path: Path, clean_machine: None) -> None:
    out = tmp_path / "run"
    result = run_cli("run", "aggregate", "--stack", "kernel", "--out", str(out),
                     "--set", "rate1_mbps=8", "--set", "rate2_mbps=8", *SMALL)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert summary["sha256_match"] is True
    assert summary["bytes_received"] == 4 * 1024 * 1024
    assert summary["subflows"] == 2
    assert summary["link_backend"] == meta["link_backend"] == "userspace"
    # Two 8 Mbit/s paths: more than one path's worth, never more than both.
    assert 8.5 < summary["goodput_mbps"] <= 16.0
    before = json.loads((out / "stats" / "nstat-server-before.json").read_text())
    after = json.loads((out / "stats" / "nstat-server-after.json").read_text())
    assert after["MPTcpExtMPCapableSYNRX"] - before.get("MPTcpExtMPCapableSYNRX", 0) == 1
    assert after["MPTcpExtMPJoinSynRx"] - before.get("MPTcpExtMPJoinSynRx", 0) >= 1
    for error_counter in ("MPTcpExtDSSNotMatching", "MPTcpExtInfiniteMapRx",
                          "MPTcpExtMPJoinAckHMacFailure", "MPTcpExtDataCsumErr"):
        assert after.get(error_counter, 0) == before.get(error_counter, 0), error_counter
    # The dissector is tshark, not our code: it must see the MPTCP handshake, the join and
    # the data mappings on the client's two interfaces.
    pcaps = sorted((out / "pcap").glob("*.pcap"))
    assert [p.name for p in pcaps] == ["client-eth0.pcap", "client-eth1.pcap"]
    packets = read_merged(pcaps, tmp_path / "fields.csv.gz")
    assert packets["mp_capable"].any() and packets["mp_join"].any() and packets["dss"].any()
    assert not packets["malformed"].any()
    assert packets.loc[packets["mp_join"], "pcap"].str.contains("client-eth1").all()
    assert (out / "figures" / "throughput.png").exists()
    # Per-link fidelity from the shaper: the upload directions were kept backlogged and are
    # judged on their rate (how close depends on the machine's load: not asserted here), the
    # ACK directions never were.
    links = {(r["from"], r["to"]): r for r in summary["fidelity_links"]}
    assert len(links) == 4
    for path in ("eth0", "eth1"):
        upload = links[(f"client-{path}", f"router-{path}")]
        assert upload["rate_verdict"] in ("achieved", "short")
        assert upload["backlogged_s"] > 1.0 and 0.5 < upload["achieved_fraction"] < 1.1
        assert links[(f"router-{path}", f"client-{path}")]["rate_verdict"] == "not saturated"
    # The sequence graph from the client's captures; the server was not captured, so no
    # out-of-order or one-way delay, and metrics.json says why.
    assert (out / "figures" / "sequence.png").exists()
    numbers = json.loads((out / "figures" / "metrics.json").read_text())["datalevel"]
    assert numbers["reinjections"]["captured_at"] == "client"
    assert "one_way_delay" not in numbers and len(numbers["notes"]) == 2


def test_plain_tcp_is_the_single_path_baseline(tmp_path: Path, clean_machine: None) -> None:
    out = tmp_path / "run"
    result = run_cli("run", "aggregate", "--stack", "tcp", "--out", str(out),
                     "--no-analyze", "--set", "rate1_mbps=8", *SMALL)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sha256_match"] is True
    assert summary["subflows"] == 1
    assert summary["goodput_mbps"] <= 8.0


def test_kernel_client_falls_back_against_a_tcp_server(tmp_path: Path,
                                                       clean_machine: None) -> None:
    out = tmp_path / "run"
    result = run_cli("run", "aggregate", "--client-stack", "kernel", "--server-stack", "tcp",
                     "--out", str(out), "--no-analyze", *SMALL)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stack"] == "kernel-tcp"
    assert summary["sha256_match"] is True
    assert summary["subflows"] == 1


def start_long_run(out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*TESTBED, "run", "aggregate", "--stack", "kernel", "--out", str(out), "--no-analyze",
         "--set", "size_mib=200", "--link-backend", "userspace"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    seen = ""
    while "workload running" not in seen:
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            seen += proc.stderr.readline()
    time.sleep(1.0)
    return proc


def test_ctrl_c_cleans_up_and_keeps_results(tmp_path: Path, clean_machine: None) -> None:
    out = tmp_path / "run"
    proc = start_long_run(out)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=180)  # cleanup of a loaded machine, not a timing test
    assert proc.returncode != 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert (out / "pcap" / "client-eth0.pcap").stat().st_size > 0


def test_kill_9_then_testbed_clean_removes_everything(tmp_path: Path,
                                                     clean_machine: None) -> None:
    out = tmp_path / "run"
    proc = start_long_run(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    # The workload, samplers and tcpdump outlive their runner (Mininet's shells die with the
    # runner's terminals) and keep the namespaces alive: that is what `testbed clean` is for.
    assert left_behind(out)
    result = run_cli("clean")
    assert result.returncode == 0, result.stderr
    assert "stopped" in result.stdout
    assert left_behind(out) == []


def test_netem_backend_is_refused_where_the_kernel_lacks_it(tmp_path: Path,
                                                            clean_machine: None) -> None:
    if kernel_has_netem():
        pytest.skip("this kernel has sch_netem")
    result = run_cli("run", "aggregate", "--link-backend", "netem", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "sch_netem" in result.stderr
    assert not (tmp_path / "r").exists()
