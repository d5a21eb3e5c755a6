"""handover end to end through `testbed run`, short: a 6 s download, WiFi lost at 2.5 s and
noticed 0.2 s later. Kernel MPTCP survives in every mode, each by its own mechanism; plain TCP
breaks. Timings are not asserted (the machine is shared): only what carried data, and how."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.netns.nsutil import left_behind, run_experiment

SHORT = ["--link-backend", "userspace", "--seed", "3", "--no-analyze",
         "--set", "duration_s=6", "--set", "fail_at_s=2.5", "--set", "detection_s=0.2",
         "--set", "timeout_s=8"]


def run_handover(stack: str, out: Path, *sets: str) -> tuple[int, dict[str, Any]]:
    result = run_experiment("handover", stack, out, *SHORT, sets=sets)
    assert left_behind(out) == []
    return result.returncode, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("mode", ["full", "backup", "single-path"])
def test_kernel_mptcp_moves_to_cellular_and_keeps_the_byte_stream(tmp_path: Path,
                                                                  mode: str) -> None:
    code, summary = run_handover("kernel", tmp_path / mode, f"mode={mode}")
    assert code == 0, summary["errors"]
    assert summary["survived"] is True, summary["survived_reason"]
    assert summary["sha256_match"] is True and summary["mode"] == mode
    assert summary["carried_data_after"] == ["cellular"]  # WiFi is gone
    assert summary["gap_s"] is not None and summary["goodput_after_mbps"] > 0
    before = summary["path_bytes"]["cellular"]["before"]
    client = summary["mptcp_counters"]["client"]
    assert client.get("MPTcpExtMPJoinSynTx", 0) == 1
    assert client.get("MPTcpExtRmAddrTx", 0) >= 1  # WiFi withdrawn
    if mode == "full":
        assert before > 0  # both paths carried data from the start
    else:
        # Backup: joined but idle; single-path: not joined yet.
        assert before == 0
    if mode == "backup":
        assert client.get("MPTcpExtMPPrioTx", 0) >= 1
        assert summary["mptcp_counters"]["server"].get("MPTcpExtMPPrioRx", 0) >= 1


def test_plain_tcp_breaks_with_wifi(tmp_path: Path) -> None:
    code, summary = run_handover("tcp", tmp_path / "tcp")
    assert code == 1
    assert summary["survived"] is False and summary["mode"] is None
    assert summary["gap_s"] is None
    assert summary["carried_data_before"] == ["wifi"] and summary["carried_data_after"] == []
