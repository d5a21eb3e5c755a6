"""The middlebox scenario end to end: a real box process between the client and the router,
Linux MPTCP and ours on both ends, 2 MiB uploads. Each run must show the mechanism its case is
about (counters), deliver the bytes, and leave nothing behind (the box process included)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.netns.nsutil import left_behind, run_experiment

SHORT = ["--link-backend", "userspace", "--seed", "3", "--no-analyze", "--set", "size_mib=2"]


def run_case(stack: str, case: str, out: Path, *sets: str) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    result = run_experiment("middlebox", stack, out, *SHORT, sets=[f"case={case}", *sets])
    summary = json.loads((out / "summary.json").read_text())
    run_id = json.loads((out / "meta.json").read_text())["run_id"]
    assert left_behind(out, run_id) == []
    return result, summary


def test_kernel_falls_back_when_the_box_strips_mp_capable(tmp_path: Path) -> None:
    result, summary = run_case("kernel", "strip-mp-capable", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert summary["sha256_match"] is True
    assert summary["outcome"] == "fallback" and summary["as_expected"] is True
    assert summary["middlebox"]["transforms"]["strip-mp-capable"]["changed"] >= 1
    assert summary["mptcp_counters"]["client"].get("MPCapableFallbackSYNACK") == 1
    # The box saw every frame of the path and passed each on.
    counters = summary["middlebox"]["counters"]
    assert counters["frames_a2b"] > 1000 and counters["frames_out"] == \
        counters["frames_a2b"] + counters["frames_b2a"]


def test_ours_keeps_the_first_path_when_the_box_strips_mp_join(tmp_path: Path) -> None:
    result, summary = run_case("userspace", "strip-mp-join", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert summary["sha256_match"] is True
    assert summary["outcome"] == "one-path" and summary["as_expected"] is True
    assert summary["mptcp_counters"]["client"].get("MPJoinSynTx", 0) >= 1
    assert "MPJoinAckRx" not in summary["mptcp_counters"]["server"]


def test_kernel_and_ours_shrug_off_sequence_rewriting(tmp_path: Path) -> None:
    for stack in ("kernel", "userspace"):
        result, summary = run_case(stack, "seq-rewrite", tmp_path / stack)
        assert result.returncode == 0, result.stderr
        assert summary["outcome"] == "mptcp", (stack, summary["mptcp_counters"])
        assert summary["middlebox"]["transforms"]["seq-rewrite"]["changed"] > 500


def test_ours_catches_a_payload_change_with_dss_checksums(tmp_path: Path) -> None:
    result, summary = run_case("userspace", "payload-change", tmp_path / "run", "checksum=1")
    assert result.returncode == 0, result.stderr
    # The changed segment's subflow is reset and its data resent on the other path.
    assert summary["sha256_match"] is True and summary["checksum_detected"] is True
    assert summary["mptcp_counters"]["server"].get("DataCsumErr") == 1
    assert summary["as_expected"] is True


def test_ours_delivers_through_a_box_that_recuts_the_stream(tmp_path: Path) -> None:
    result, summary = run_case("userspace", "coalesce", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert summary["sha256_match"] is True and summary["as_expected"] is True
    # Merged segments carry bytes outside their mapping: the server sees it (and falls back
    # with MP_FAIL, or resets the subflow once the join is up).
    assert summary["middlebox"]["transforms"]["coalesce"]["changed"] > 100
    assert summary["mptcp_counters"]["server"].get("DSSNotMatching", 0) >= 1
