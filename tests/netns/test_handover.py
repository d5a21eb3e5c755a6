"""handover end to end through `testbed run`, short: a 6 s download, WiFi lost at 2.5 s and
noticed 0.2 s later. Kernel MPTCP and ours survive in every mode, each by its own mechanism
(ours shown by its daemon's counters); ours also without any connection manager, from the link
going down alone; plain TCP breaks. The interactive flow beside the download (200 B every
20 ms, a second connection on the same stacks) moves with it under MPTCP and breaks with it
under plain TCP. Timings are not asserted (the machine is shared): only what carried data, and
how, and delays against the links' own propagation delays. Run with -s to see the gaps and
the interactive delays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.netns.nsutil import left_behind, run_experiment

SHORT = ["--link-backend", "userspace", "--seed", "3", "--no-analyze",
         "--set", "duration_s=6", "--set", "fail_at_s=2.5", "--set", "detection_s=0.2",
         "--set", "timeout_s=8"]


# The cellular link's one-way delay (the scenario's default): no message that went over it
# can arrive sooner.
CELL_DELAY_MS = 30.0


def run_handover(stack: str, out: Path, *sets: str) -> tuple[int, dict[str, Any]]:
    result = run_experiment("handover", stack, out, *SHORT, sets=sets)
    assert left_behind(out) == []
    return result.returncode, json.loads((out / "summary.json").read_text())


def check_interactive(summary: dict[str, Any], survived: bool) -> dict[str, Any]:
    """The interactive flow's messages arrived with delays in a plausible order; under MPTCP
    every one of them (its connection moved to cellular too), under plain TCP only those
    before the break."""
    flow = summary["interactive"]
    print(f"  interactive: p50 {flow['delay_ms_p50']} ms, p95 {flow['delay_ms_p95']} ms, "
          f"max {flow['delay_ms_max']} ms, worst around the failure "
          f"{flow['worst_around_failure_ms']} ms, {flow['received']}/{flow['sent']} messages")
    assert flow["sent"] > 0 and flow["received"] > 0, flow
    assert 0 < flow["delay_ms_p50"] <= flow["delay_ms_p95"] <= flow["delay_ms_max"], flow
    assert flow["worst_around_failure_ms"] is not None and flow["messages_around_failure"] > 0
    assert flow["worst_around_failure_ms"] <= flow["delay_ms_max"]
    if not survived:
        assert flow["survived"] is False and flow["errors"], flow
        # Messages written between the failure and the sockets' destruction never arrive.
        assert flow["lost"] > 0 and flow["delay_ms_p50_after_failure"] is None, flow
        return flow
    assert flow["survived"] is True, flow
    assert flow["lost"] == 0 and flow["received"] == flow["sent"], flow
    # After the move every message crosses the cellular link, so none is faster than it;
    # the run's worst message is at least that late too.
    assert flow["delay_ms_p50_after_failure"] >= CELL_DELAY_MS, flow
    assert flow["delay_ms_max"] >= CELL_DELAY_MS, flow
    assert flow["delay_ms_p50"] < 2000, flow  # generous: most messages are not held up
    return flow


@pytest.mark.parametrize("mode", ["full", "backup", "single-path"])
def test_kernel_mptcp_moves_to_cellular_and_keeps_the_byte_stream(tmp_path: Path,
                                                                  mode: str) -> None:
    code, summary = run_handover("kernel", tmp_path / mode, f"mode={mode}")
    assert code == 0, summary["errors"]
    print(f"\nkernel, {mode}: gap {summary['gap_s']} s (expected {summary['expected_gap_s']})")
    assert summary["survived"] is True, summary["survived_reason"]
    assert summary["sha256_match"] is True and summary["mode"] == mode
    assert summary["carried_data_after"] == ["cellular"]  # WiFi is gone
    assert summary["gap_s"] is not None and summary["goodput_after_mbps"] > 0
    before = summary["path_bytes"]["cellular"]["before"]
    client = summary["mptcp_counters"]["client"]
    assert client.get("MPTcpExtMPJoinSynTx", 0) == 2  # one join each: bulk and interactive
    assert client.get("MPTcpExtRmAddrTx", 0) >= 1  # WiFi withdrawn
    if mode == "full":
        assert before > 0  # both paths carried data from the start
    else:
        # Backup: joined but idle; single-path: not joined yet.
        assert before == 0
    if mode == "backup":
        assert client.get("MPTcpExtMPPrioTx", 0) >= 1
        assert summary["mptcp_counters"]["server"].get("MPTcpExtMPPrioRx", 0) >= 1
    check_interactive(summary, survived=True)


def test_plain_tcp_breaks_with_wifi(tmp_path: Path) -> None:
    code, summary = run_handover("tcp", tmp_path / "tcp")
    assert code == 1
    assert summary["survived"] is False and summary["mode"] is None
    assert summary["gap_s"] is None
    assert summary["carried_data_before"] == ["wifi"] and summary["carried_data_after"] == []
    check_interactive(summary, survived=False)


# What our daemon may still read from WiFi after the link went down: frames the link had
# delivered into its packet socket before, read late on a loaded machine, and counted after
# the failure once they are more than one sample (0.1 s) late. A 20 Mbit/s link with its
# BDP queue holds well under this.
LATE_WIFI_BYTES = 128 * 1024


def check_moved_to_cellular(summary: dict[str, Any], mode: str) -> dict[str, int]:
    assert summary["survived"] is True, summary["survived_reason"]
    assert summary["sha256_match"] is True and summary["mode"] == mode
    paths = summary["path_bytes"]
    assert paths["wifi"]["after"] < LATE_WIFI_BYTES, paths  # WiFi is gone
    assert paths["cellular"]["after"] > 1_000_000, paths
    assert summary["gap_s"] is not None and summary["goodput_after_mbps"] > 0
    client = summary["mptcp_counters"]["client"]
    server = summary["mptcp_counters"]["server"]
    assert client.get("MPTcpExtMPJoinSynTx", 0) == 2  # one join each: bulk and interactive
    # WiFi withdrawn: REMOVE_ADDR, received by the server.
    assert client.get("MPTcpExtRmAddrTx", 0) >= 1 and server.get("MPTcpExtRmAddr", 0) >= 1
    if mode == "backup":
        assert client.get("MPTcpExtMPPrioTx", 0) >= 1 and server.get("MPTcpExtMPPrioRx", 0) >= 1
    check_interactive(summary, survived=True)
    return client


def cellular_bytes_until_failure(out: Path) -> int:
    """What the cellular subflow had received at the last sample before WiFi went down (the
    summary's `before` also counts one sample after it, in which our stack, acting on the
    link event itself, may already have moved data to cellular)."""
    from experiments.handover import CELL_ADDR
    from testbed.stats import read_samples

    fail = next(e["wall_time"] for e in json.loads((out / "stats" / "timeline.json")
                                                  .read_text()) if e.get("action") == "down")
    return max((int(row["bytes_received"] or 0)
                for row in read_samples(out / "stats" / "subflows-client.csv")
                if row.get("kind") == "subflow" and float(row["t"]) <= fail
                and row.get("local", "").startswith(f"{CELL_ADDR}:")), default=0)


def check_cellular_before(out: Path, mode: str) -> None:
    before = cellular_bytes_until_failure(out)
    if mode == "full":
        assert before > 0
    else:
        assert before == 0  # backup: joined but idle; single-path: not joined yet


@pytest.mark.parametrize("mode", ["full", "backup", "single-path"])
def test_our_mptcp_moves_to_cellular_and_keeps_the_byte_stream(tmp_path: Path,
                                                               mode: str) -> None:
    code, summary = run_handover("userspace", tmp_path / mode, f"mode={mode}")
    assert code == 0, summary["errors"]
    check_moved_to_cellular(summary, mode)
    check_cellular_before(tmp_path / mode, mode)
    stack = json.loads((tmp_path / mode / "stats" / "stack-client.json").read_text())
    assert stack["counters"]["LinkDown"] == 1  # the daemon saw WiFi go down itself
    print(f"\nours, {mode}: gap {summary['gap_s']} s (expected {summary['expected_gap_s']})")


@pytest.mark.parametrize(("mode", "path_manager"), [
    ("full", "kernel"), ("backup", "kernel"), ("single-path", "single-path")])
def test_a_link_going_down_alone_moves_our_transfer(tmp_path: Path, mode: str,
                                                    path_manager: str) -> None:
    """No connection manager: nothing but the WiFi link going down tells our stack."""
    code, summary = run_handover("userspace", tmp_path / mode, f"mode={mode}",
                                 "connection_manager=false", f"path_manager={path_manager}")
    assert code == 0, summary["errors"]
    check_moved_to_cellular(summary, mode)
    check_cellular_before(tmp_path / mode, mode)
    timeline = json.loads((tmp_path / mode / "stats" / "timeline.json").read_text())
    assert [e.get("action") for e in timeline] == ["down"]  # the link event, and nothing else
    print(f"\nours, {mode}, no script: gap {summary['gap_s']} s")
