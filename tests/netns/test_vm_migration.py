"""vm-migration end to end through `testbed run`, short: a 6 s download, the VM stopped at 2 s
for 0.5 s. Kernel MPTCP survives through ADD_ADDR, a join to the new address and REMOVE_ADDR;
plain TCP does not, and says so; neither run leaves anything behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.netns.nsutil import left_behind, run_experiment

STOP_TIME_S = 0.5
SHORT = ["--link-backend", "userspace", "--seed", "5", "--no-analyze",
         "--set", "duration_s=6", "--set", "migrate_at_s=2", "--set", f"stop_time_s={STOP_TIME_S}",
         "--set", "timeout_s=6", "--set", "client_rate_mbps=20", "--set", "rate_a_mbps=8",
         "--set", "rate_b_mbps=8"]


def run_migration(stack: str, out: Path) -> tuple[subprocess.CompletedProcess[str],
                                                   dict[str, Any]]:
    result = run_experiment("vm-migration", stack, out, *SHORT)
    summary = json.loads((out / "summary.json").read_text())
    # Nothing of this run is left: no process naming its directory, no cleanup record.
    run_id = json.loads((out / "meta.json").read_text())["run_id"]
    assert left_behind(out, run_id) == []
    return result, summary


def test_kernel_mptcp_survives_the_move_through_a_join_to_the_new_address(
        tmp_path: Path) -> None:
    out = tmp_path / "kernel"
    result, summary = run_migration("kernel", out)
    assert result.returncode == 0, result.stderr
    assert summary["survived"] is True, summary["survived_reason"]
    assert summary["sha256_match"] is True
    assert summary["bytes_after_move"] > 0
    assert summary["joined_new_address"] is True
    client, server = summary["mptcp_counters"]["client"], summary["mptcp_counters"]["server"]
    assert client.get("MPTcpExtAddAddr", 0) >= 1  # the new address was announced
    assert client.get("MPTcpExtMPJoinSynAckRx", 0) >= 1  # and joined
    assert server.get("MPTcpExtMPJoinAckRx", 0) >= 1
    assert client.get("MPTcpExtRmAddr", 0) >= 1  # the old one withdrawn
    # No path existed for the stop time, so no whole bin of it can have carried data (the
    # gap counts whole empty 100 ms bins: at most two short of the real silence).
    assert summary["gap_s"] >= STOP_TIME_S - 0.2
    assert summary["goodput_before_mbps"] > 0 and summary["goodput_after_mbps"] > 0
    timeline = json.loads((out / "stats" / "timeline.json").read_text())
    assert [event.get("link") or event["host_action"].split(":")[0] for event in timeline] == [
        "domain_a", "VM resumes in domain B", "VM withdraws 10.0.2.1 0 s after the client "
        "joined the new address"]


def test_plain_tcp_dies_with_the_old_address_and_the_run_says_why(tmp_path: Path) -> None:
    out = tmp_path / "tcp"
    result, summary = run_migration("tcp", out)
    assert result.returncode == 1  # a run whose byte stream did not arrive intact
    assert summary["survived"] is False
    assert summary["sha256_match"] is False
    assert "no progress" in summary["survived_reason"]
    assert summary["joined_new_address"] is False
    assert summary["gap_s"] is None
    assert summary["bytes_received"] < summary["bytes_sent"]
    assert summary["mptcp_counters"] == {"client": {}, "server": {}}


def test_our_server_moves_and_a_kernel_client_follows(tmp_path: Path) -> None:
    """Our stack as the VM: it adopts the new address from the kernel, announces it, and
    withdraws the old one once the kernel client joined."""
    out = tmp_path / "ours"
    result = run_experiment("vm-migration", "kernel", out, *SHORT,
                            "--server-stack", "userspace")
    summary = json.loads((out / "summary.json").read_text())
    assert left_behind(out, json.loads((out / "meta.json").read_text())["run_id"]) == []
    assert result.returncode == 0, result.stderr
    assert summary["survived"] is True, summary["survived_reason"]
    assert summary["sha256_match"] is True and summary["joined_new_address"] is True
    client, server = summary["mptcp_counters"]["client"], summary["mptcp_counters"]["server"]
    assert client.get("MPTcpExtAddAddr", 0) >= 1 and server.get("MPTcpExtAddAddrTx", 0) >= 1
    assert server.get("MPTcpExtMPJoinAckRx", 0) >= 1
    assert client.get("MPTcpExtRmAddr", 0) >= 1 and server.get("MPTcpExtRmAddrTx", 0) >= 1
    stack = json.loads((out / "stats" / "stack-server.json").read_text())
    assert stack["counters"]["AddressesAdopted"] == 1 and stack["counters"]["LinkDown"] == 1
    print(f"\nour server: gap {summary['gap_s']} s (expected {summary['expected_gap_s']}), "
          f"{summary['goodput_before_mbps']} -> {summary['goodput_after_mbps']} Mbit/s")
