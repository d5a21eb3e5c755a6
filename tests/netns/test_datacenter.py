"""datacenter end to end through `testbed run`, short: the k=4 FatTree (16 hosts, 20 routers,
48 shaped links), the same permutation of 16 flows for 8 s with plain TCP and with Linux
MPTCP at 4 subflows. MPTCP must beat TCP: its flows hash onto four paths each and move
traffic off ECMP collisions (Raiciu et al., SIGCOMM 2011), so the share among the flows must
be clearly fairer (Jain's index), its slowest flows no slower and the fabric no less used.
Neither run leaves anything behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.netns.nsutil import left_behind, run_experiment

SHORT = ["--link-backend", "userspace", "--seed", "3", "--no-analyze",
         "--set", "seconds=8", "--set", "warmup_s=2", "--set", "permutation_seed=1"]
UTILISATION_SLACK = 0.1


def run_permutation(stack: str, out: Path, *sets: str) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    result = run_experiment("datacenter", stack, out, *SHORT, sets=sets)
    summary = json.loads((out / "summary.json").read_text())
    run_id = json.loads((out / "meta.json").read_text())["run_id"]
    assert left_behind(out, run_id) == []
    return result, summary


def test_mptcp_with_four_subflows_beats_tcp_on_the_same_permutation(tmp_path: Path) -> None:
    tcp_result, tcp = run_permutation("tcp", tmp_path / "tcp")
    mptcp_result, mptcp = run_permutation("kernel", tmp_path / "kernel", "subflows=4")
    for result, summary in ((tcp_result, tcp), (mptcp_result, mptcp)):
        assert result.returncode == 0, result.stderr
        assert summary["errors"] == []
        assert summary["sha256_match"] is True
        assert summary["flow_count"] == 16 and len(summary["flows"]) == 16
        assert summary["interval_s"] >= 4.0
    # The same permutation on both: same pairs.
    assert [(f["client"], f["server"]) for f in tcp["flows"]] == \
        [(f["client"], f["server"]) for f in mptcp["flows"]]
    assert {f["subflows"] for f in tcp["flows"]} == {1}
    # Every MPTCP flow opened joins, most of them all three: the kernel rejects a few
    # (MPJoinRejected; a CI run had one flow left with 2 subflows, the others with 4).
    counts = [f["subflows"] for f in mptcp["flows"]]
    assert min(counts) >= 2 and sum(counts) >= 3 * len(counts) and mptcp["subflows"] == 4
    assert not any(f["fallback"] for f in mptcp["flows"])
    shown = "; ".join(
        f"{name} utilisation {s['utilisation']}, Jain {s['jain_index']}, lowest decile "
        f"{s['lowest_decile_fraction']}, CPU idle {s['cpu_idle_mean_pct']}%"
        for name, s in (("TCP", tcp), ("MPTCP", mptcp)))
    assert 0 < tcp["utilisation"] < 1 and 0 < mptcp["utilisation"] < 1, shown
    # Fairer: Jain's index over the 16 flows was 0.95-0.99 for MPTCP and 0.85-0.90 for TCP in
    # seven pairs of runs here at 2 and 5 Mbit/s, but a CI run had TCP at 0.945 (its flows
    # happened to collide little) against MPTCP's 0.969, so no margin is asserted;
    # the slowest flows, which TCP leaves on collided links, no slower; and no less of the
    # fabric used, within the noise. Utilisation moved by -0.07 to +0.22 in the same pairs:
    # TCP's depends on where ECMP put its flows (their source ports differ in every run), and
    # MPTCP's suffers more than TCP's when the machine is saturated (README).
    assert mptcp["jain_index"] > tcp["jain_index"], shown
    assert mptcp["lowest_decile_fraction"] >= tcp["lowest_decile_fraction"], shown
    assert mptcp["utilisation"] > tcp["utilisation"] - UTILISATION_SLACK, shown
