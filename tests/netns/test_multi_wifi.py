"""multi-wifi end to end through `testbed run`, short: two APs, an 8 s download on a brisk walk.
AP2 is out of range at first and comes into range at 1.5 s; AP1, where the connection started,
goes out of range at 6 s. MPTCP (Linux's and ours) joins AP2 when it appears and carries on
over it once AP1 is gone, data intact; plain TCP bound to AP1 breaks there; plain TCP with
break-before-make handover (a 10 s walk) reassociates with AP2 after the association delay and
its reconnecting workload resumes the stream, data intact. No run leaves anything behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.netns.nsutil import left_behind, run_experiment

AP1_LOST_S = 6.0
STEP_S = 0.5
SHORT = ["--link-backend", "userspace", "--seed", "5", "--no-analyze",
         "--set", "n_aps=2", "--set", "duration_s=8", "--set", "timeout_s=8",
         "--set", "start_m=-5", "--set", "walk_speed_mps=4", "--set", f"step_s={STEP_S}"]


def run_walk(stack: str, out: Path, *extra: str,
             ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = run_experiment("multi-wifi", stack, out, *SHORT, *extra)
    summary = json.loads((out / "summary.json").read_text())
    # Nothing of this run is left: no process naming its directory, no cleanup record.
    run_id = json.loads((out / "meta.json").read_text())["run_id"]
    assert left_behind(out, run_id) == []
    return result, summary


@pytest.mark.parametrize("stack", ["kernel", "userspace"])
def test_mptcp_joins_the_new_ap_and_keeps_the_transfer_going_past_ap1(
        tmp_path: Path, stack: str) -> None:
    """Linux MPTCP, and ours (its daemon takes the same connection manager's commands through
    its control socket; its counters carry the kernel's names)."""
    out = tmp_path / stack
    result, summary = run_walk(stack, out)
    assert result.returncode == 0, result.stderr
    assert summary["sha256_match"] is True
    assert summary["errors"] == []
    assert summary["subflows"] >= 2  # AP1's and AP2's at once
    client = summary["mptcp_counters"]["client"]
    assert client.get("MPTcpExtMPJoinSynAckRx", 0) >= 1  # AP2 joined when it came into range
    assert client.get("MPTcpExtRmAddrTx", 0) >= 1  # AP1's address withdrawn when lost
    assert summary["ap1_out_of_range_at_s"] == AP1_LOST_S
    assert summary["bytes_after_ap1_out_of_range"] > 0
    positions = summary["positions"]
    assert len(positions) == 16 and positions[-1]["ap_rates_mbps"][0] == 0.0
    # Data flowed in every whole second after AP1 was lost (through AP2 alone); no bound on
    # how much: the machine is shared.
    after = [p for p in positions if p["t_start_s"] >= AP1_LOST_S]
    assert sum(p["goodput_mbps"] for p in after) > 0
    assert summary["fraction_of_best_ap"] > 0
    timeline = json.loads((out / "stats" / "timeline.json").read_text())
    hosts = [event["host_action"] for event in timeline if "host_action" in event]
    assert hosts == ["client enters AP2's range: subflow endpoint added",
                     "client leaves AP1's range: endpoint deleted"]


def test_plain_tcp_bound_to_ap1_breaks_when_ap1_goes_out_of_range(tmp_path: Path) -> None:
    out = tmp_path / "tcp"
    result, summary = run_walk("tcp", out, "--set", "tcp_handover=bound-to-ap1")
    assert result.returncode == 1  # a run whose byte stream did not arrive intact
    assert summary["sha256_match"] is False
    assert summary["subflows"] == 1
    assert summary["bytes_after_ap1_out_of_range"] == 0
    assert summary["bytes_received"] > 0  # it worked while AP1 was in range
    # The connection manager destroyed the socket: both ends learnt at once (no timeout).
    assert any("ConnectionAbortedError" in error for error in summary["errors"])
    # Positions follow the schedule, the link event lands when the timeline thread gets to
    # it: on a loaded machine the last in-range bytes can spill into the step at the loss, so
    # judge from the step after it (bytes_after_ap1_out_of_range, above, uses the real time).
    after = [p for p in summary["positions"] if p["t_start_s"] >= AP1_LOST_S + STEP_S]
    assert after
    assert all(p["goodput_mbps"] == 0 for p in after)
    assert all(p["best_ap_mbps"] > 0 for p in after)  # while AP2 was there to be used
    assert summary["mptcp_counters"] == {"client": {}, "server": {}}


ASSOCIATION_DELAY_S = 1.5


def test_plain_tcp_break_before_make_reassociates_with_ap2_and_resumes_the_stream(
        tmp_path: Path) -> None:
    out = tmp_path / "bbm"
    # SHORT's later values win: a 10 s walk, so that AP2 has 2.5 s after the reassociation.
    result, summary = run_walk("tcp", out, "--set", "duration_s=10", "--set", "timeout_s=10",
                               "--set", f"association_delay_s={ASSOCIATION_DELAY_S}")
    assert result.returncode == 0, result.stderr
    assert summary["errors"] == []
    assert summary["tcp_handover"] == "break-before-make"
    assert summary["associations"] == [
        {"ap": 1, "chosen_s": 0.0, "associated_s": 0.0, "lost_s": AP1_LOST_S},
        {"ap": 2, "chosen_s": AP1_LOST_S, "associated_s": AP1_LOST_S + ASSOCIATION_DELAY_S,
         "lost_s": None}]
    # One stream over two connections, intact end to end.
    assert summary["sha256_match"] is True
    assert summary["connections"] == 2
    (outage,) = summary["outages"]
    assert "ConnectionAbortedError" in outage["error"]  # the connection manager destroyed it
    # Resumed inside the stream: after what AP1 carried, before what AP2 then added.
    assert 0 < outage["offset"] < summary["bytes_received"]
    # No data can flow before AP2's link is up: the gap is at least the association delay
    # (less the timeline thread's lateness in applying the loss, tolerated to 0.3 s).
    assert outage["gap_s"] >= ASSOCIATION_DELAY_S - 0.3
    assert outage["data_walk_s"] >= AP1_LOST_S + ASSOCIATION_DELAY_S
    # ...and about that: a reconnection that waited out a connect timeout chain (1 s attempts,
    # then SYN backoff) would show here. A wide margin, for a loaded 2-core machine.
    assert outage["gap_s"] < ASSOCIATION_DELAY_S + 3.0
    assert summary["bytes_after_ap1_out_of_range"] > 0
    after = [p for p in summary["positions"]
             if p["t_start_s"] >= AP1_LOST_S + ASSOCIATION_DELAY_S + 0.5]
    assert after and sum(p["goodput_mbps"] for p in after) > 0
    timeline = json.loads((out / "stats" / "timeline.json").read_text())
    hosts = [event["host_action"] for event in timeline if "host_action" in event]
    assert hosts == ["client leaves AP1's range: its sockets there destroyed",
                     f"client associated with AP2 {ASSOCIATION_DELAY_S:g} s after choosing it: "
                     "default route through it"]
    assert summary["mptcp_counters"] == {"client": {}, "server": {}}
