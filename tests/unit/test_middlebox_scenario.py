"""The middlebox scenario's parameters and verdicts, on hand-made results directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.middlebox import CASES, Middlebox, MiddleboxParams, classify
from experiments.scenario import RunOutcome, parse_overrides
from experiments.suites import SUITES
from testbed.errors import ParameterError


def test_unknown_case_is_refused_with_the_list() -> None:
    with pytest.raises(ParameterError, match="case must be one of none, strip-mp-capable"):
        parse_overrides(MiddleboxParams, ["case=firewall"])


@pytest.mark.parametrize("args, outcome", [
    ((True, True, False, 2), "mptcp"),
    ((True, True, False, 1), "one-path"),
    ((True, True, True, 1), "fallback"),
    ((False, True, False, 2), "corrupted"),
    ((False, False, False, 2), "broken"),
])
def test_classify(args: tuple[bool, bool, bool, int], outcome: str) -> None:
    assert classify(*args) == outcome


def write_run(run_dir: Path, *, stack: str, counters: dict[str, dict[str, int]],
              box_changed: int, fallback_flag: bool = False) -> None:
    stats = run_dir / "stats"
    stats.mkdir(parents=True)
    for side, values in counters.items():
        if stack == "kernel":
            (stats / f"nstat-{side}-before.json").write_text(json.dumps({}))
            (stats / f"nstat-{side}-after.json").write_text(json.dumps(
                {f"MPTcpExt{name}": value for name, value in values.items()}))
        else:
            conn = {"stats": {"fallback": fallback_flag}}
            (stats / f"stack-{side}.json").write_text(json.dumps(
                {"counters": values, "connections": [], "finished": [conn]}))
    (stats / "middlebox-mbox.json").write_text(json.dumps(
        {"counters": {}, "transforms": {"x": {"changed": box_changed}}}))


def evaluate(tmp_path: Path, case: str, summary: dict[str, Any], *,
             checksum: bool = False) -> dict[str, Any]:
    params = parse_overrides(MiddleboxParams, [f"case={case}", f"checksum={int(checksum)}"])
    outcome = RunOutcome(summary=summary, sender={}, receiver={}, timeline=[],
                         run_dir=tmp_path)
    return Middlebox(params).evaluate_run(outcome)


def summary(stack: str, *, sha: bool = True, subflows: int = 1) -> dict[str, Any]:
    return {"client_stack": stack, "server_stack": stack, "sha256_match": sha,
            "bytes_sent": 100, "bytes_received": 100, "subflows": subflows}


def test_kernel_fallback_seen_in_nstat(tmp_path: Path) -> None:
    write_run(tmp_path, stack="kernel", box_changed=1,
              counters={"client": {"MPCapableFallbackSYNACK": 1}, "server": {}})
    result = evaluate(tmp_path, "strip-mp-capable", summary("kernel"))
    assert result["outcome"] == "fallback" and result["as_expected"] is True
    assert result["box_exercised"] is True
    assert result["mptcp_counters"]["client"] == {"MPCapableFallbackSYNACK": 1}


def test_our_fallback_seen_in_the_connection_record(tmp_path: Path) -> None:
    write_run(tmp_path, stack="userspace", box_changed=3, fallback_flag=True,
              counters={"client": {}, "server": {"DSSNotMatching": 1}})
    result = evaluate(tmp_path, "strip-dss", summary("userspace"))
    assert result["outcome"] == "fallback" and result["as_expected"] is True


def test_mptcp_where_fallback_was_expected_is_not_as_expected(tmp_path: Path) -> None:
    write_run(tmp_path, stack="kernel", box_changed=1, counters={"client": {}, "server": {}})
    result = evaluate(tmp_path, "strip-mp-capable", summary("kernel", subflows=2))
    assert result["outcome"] == "mptcp" and result["as_expected"] is False


def test_a_box_that_changed_nothing_tested_nothing(tmp_path: Path) -> None:
    write_run(tmp_path, stack="kernel", box_changed=0, counters={"client": {}, "server": {}})
    result = evaluate(tmp_path, "seq-rewrite", summary("kernel", subflows=2))
    assert result["as_expected"] is True and result["box_exercised"] is False


def test_payload_change_expectations_follow_the_checksum(tmp_path: Path) -> None:
    write_run(tmp_path, stack="kernel", box_changed=1,
              counters={"client": {"MPFailRx": 1}, "server": {"DataCsumErr": 1}})
    caught = evaluate(tmp_path, "payload-change", summary("kernel", subflows=2), checksum=True)
    assert caught["outcome"] == "mptcp" and caught["as_expected"] is True
    assert caught["checksum_detected"] is True
    silent = evaluate(tmp_path, "payload-change", summary("kernel", sha=False, subflows=2))
    assert silent["outcome"] == "corrupted" and silent["as_expected"] is True


def test_plain_tcp_expects_one_path(tmp_path: Path) -> None:
    write_run(tmp_path, stack="tcp", box_changed=5, counters={})
    result = evaluate(tmp_path, "split", summary("tcp"))
    assert result["outcome"] == "one-path" and result["as_expected"] is True


def test_the_suite_covers_every_case_with_both_mptcp_stacks() -> None:
    cases = SUITES["middlebox"](False)
    assert {c.overrides[0].removeprefix("case=") for c in cases} == set(CASES)
    assert all(set(c.stacks) == {"kernel", "userspace"} for c in cases)
    with_checksum = [c for c in cases if "checksum=1" in c.overrides]
    assert [c.label for c in with_checksum] == ["payload-change"]
