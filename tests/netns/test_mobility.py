"""mobility end to end through `testbed run`, short: a few seconds of the shipped commute, and
a recorded cellular trace from ../shared/traces read where it lies (skipped when absent). The
traces drive the links; MPTCP uses both paths; per-second capacities come from the traces."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.netns.nsutil import left_behind, run_experiment

REAL_TRACE = Path("/work/shared/traces/Verizon-LTE-short.down")


def run_mobility(stack: str, out: Path, *sets: str,
                 backend: str = "userspace") -> tuple[subprocess.CompletedProcess[str],
                                                      dict[str, Any]]:
    result = run_experiment("mobility", stack, out, "--link-backend", backend, "--seed", "4",
                         "--no-analyze", sets=sets)
    assert left_behind(out) == []
    path = out / "summary.json"
    return result, json.loads(path.read_text()) if path.exists() else {}


def test_kernel_mptcp_over_the_shipped_commute_uses_both_paths(tmp_path: Path) -> None:
    result, summary = run_mobility("kernel", tmp_path / "kernel", "duration_s=6",
                                   "timeout_s=10")
    assert result.returncode == 0, summary.get("errors")
    assert summary["sha256_match"] is True and summary["subflows"] == 2
    seconds = summary["per_second"]
    assert [s["t_s"] for s in seconds] == list(range(6))
    # The commute starts at home: both paths have capacity, WiFi the larger.
    assert all(s["wifi_capacity_mbps"] > s["cell_capacity_mbps"] > 0 for s in seconds)
    assert summary["fraction_of_envelope"] is not None
    assert summary["fraction_of_sum"] < summary["fraction_of_envelope"]


@pytest.mark.skipif(not REAL_TRACE.exists(), reason=f"{REAL_TRACE} is not on this machine")
def test_a_recorded_cellular_trace_drives_the_cellular_path(tmp_path: Path) -> None:
    result, summary = run_mobility("kernel", tmp_path / "real", f"cell_trace={REAL_TRACE}",
                                   "duration_s=6", "timeout_s=10")
    assert result.returncode == 0, summary.get("errors")
    assert summary["traces"]["cell"] == str(REAL_TRACE)
    assert summary["sha256_match"] is True
    assert sum(s["cell_capacity_mbps"] for s in summary["per_second"]) > 0


def test_netem_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result, _ = run_mobility("tcp", tmp_path / "netem", "duration_s=3", backend="netem")
    assert result.returncode != 0
    # Here: no sch_netem at all; where netem exists: netem cannot replay a trace.
    assert "userspace" in result.stderr
