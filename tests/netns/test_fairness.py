"""fairness end to end through `testbed run`, with the scenario's defaults (10 Mbit/s, 20 ms,
25-packet queue, RED at the shared bottleneck, 40 s judged after 10 s): our MPTCP (two
subflows) against one plain Linux TCP with Reno at a shared bottleneck, and with that TCP as
cross traffic on the first of two disjoint (drop-tail) paths.

- OLIA takes about one TCP share, asserted as 0.85-1.4 (below the 1.6 of the uncoupled
  control), with RED's early drops at the bottleneck, each flow's drops counted
  apart by the shaper. RFC 6356's 1 +- 0.15 is a statement about means over seeds, not
  asserted per run: one run is one draw of which flow RED hit more often, and even one
  Linux TCP against another ranged over 0.84-1.07 in five seeds. OLIA measured 0.94-1.33
  over ten seeds, mean 1.135, sd 0.11 (README, "Measured"; suites/fairness-repetitions.toml):
  1.4 is more than two standard deviations above that mean;
- uncoupled Reno subflows take about two TCP shares, at least 1.6 (the negative control: it
  fails if the coupling leaked into Reno or the second subflow carried nothing). It runs at
  a drop-tail bottleneck, where it measured 2.2-2.4: with RED it measured 1.62-1.85, too close
  to the bound for a test;
- with cross traffic, BALIA puts clearly more of its bytes on the free path than uncoupled
  Reno (measured 0.80-0.82 against 0.64).

LIA is not asserted: with RED its mean over five seeds is 1.15 (1.10-1.19), at the edge of
the band, which the per-run bound above would hide. At a
drop-tail bottleneck it measured outside the band in all six runs (0.82-1.89), and with cross
traffic it kept 0.67-0.76 on the free path, close to uncoupled Reno's 0.64 (README,
"Measured", says what we found). Each run takes about a minute; the competing flow, its
statistics files and the leftovers are checked in each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.netns.nsutil import left_behind, run_experiment

ARGS = ["--link-backend", "userspace", "--seed", "3", "--no-analyze", "--set", "capture=off"]


def run_case(out: Path, congestion: str, mode: str, *sets: str) -> dict[str, Any]:
    result = run_experiment("fairness", "userspace", out, *ARGS,
                            sets=[f"congestion={congestion}", f"mode={mode}", *sets])
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    run_id = json.loads((out / "meta.json").read_text())["run_id"]
    assert left_behind(out, run_id) == []
    assert summary["sha256_match"] is True and summary["errors"] == []
    assert summary["subflows"] == 2
    flow = summary["flows"]["tcp"]
    assert flow["sha256_match"] is True and flow["congestion"] == "reno"
    assert flow["goodput_mbps"] > 0
    for name in ("workload-tcp-client.json", "workload-tcp-server.json",
                 "subflows-tcp-tcpclient.csv"):
        assert (out / "stats" / name).stat().st_size > 0
    return summary


def test_coupled_olia_takes_about_one_tcp_share_at_a_red_bottleneck(tmp_path: Path) -> None:
    congestion = "olia"
    summary = run_case(tmp_path / congestion, congestion, "shared")
    assert summary["expected"] == "coupled" and summary["aqm"] == "red"
    assert 0.85 <= summary["ratio"] <= 1.4, summary
    # RED did the dropping: early drops at the bottleneck, in the data direction.
    shaper = json.loads((tmp_path / congestion / "stats" / "shaper.json").read_text())
    bottleneck = shaper["links"]["left-eth3~right-eth0"]["a2b"]
    assert bottleneck["dropped_early"] > 0
    # The shaper told the flows apart: each of the three (two subflows, the TCP) lost
    # packets there in the judged window, and the per-flow drops add up to the link's.
    assert summary["mptcp_loss_pct"] > 0 and summary["tcp_loss_pct"] > 0
    flows = {name: f for name, f in bottleneck["flows"].items() if name.startswith("tcp ")}
    assert len(flows) == 3 and all(f["series"] for f in flows.values())
    assert sum(f["dropped_early"] for f in bottleneck["flows"].values()) \
        == bottleneck["dropped_early"]


def test_uncoupled_reno_subflows_take_about_two_tcp_shares(tmp_path: Path) -> None:
    summary = run_case(tmp_path / "reno", "reno", "shared", "aqm=droptail")
    assert summary["expected"] == "uncoupled"
    assert summary["ratio"] >= 1.6, summary
    assert summary["within_anchor"] is True


def test_coupled_mptcp_moves_more_of_its_traffic_off_the_loaded_path(tmp_path: Path) -> None:
    coupled = run_case(tmp_path / "balia", "balia", "cross")
    uncoupled = run_case(tmp_path / "reno", "reno", "cross")
    assert coupled["expected"] == "coupled" and uncoupled["expected"] == "uncoupled"
    assert coupled["path2_share"] >= uncoupled["path2_share"] + 0.08, (coupled, uncoupled)
    assert coupled["path2_share"] > 2 / 3
    # Both use most of the capacity the TCP leaves them (measured 0.83-0.98 of it).
    for summary in (coupled, uncoupled):
        assert summary["mptcp_mbps"] > 0.6 * summary["capacity_left_mbps"], summary
