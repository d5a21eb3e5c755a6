"""vm-migration without root: parameters, the timeline it asks for, and the gap, goodput and
survival verdicts computed from synthetic receiver series and run directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments import SCENARIOS
from experiments.scenario import HostEvent, LinkEvent, RunOutcome, parse_overrides
from experiments.vm_migration import (
    VmMigration,
    VmMigrationParams,
    WithdrawOldAddress,
    mechanism_counters,
    move_metrics,
    survival,
)
from testbed.errors import ParameterError

BIN = 0.1


def series(*counts: int) -> list[list[float]]:
    """A receiver series as the workload writes it: [bin start, bytes] every 100 ms."""
    return [[round(i * BIN, 3), count] for i, count in enumerate(counts)]


def test_registered_under_its_name_with_a_download_by_default() -> None:
    assert SCENARIOS["vm-migration"] is VmMigration
    params = VmMigrationParams()
    assert params.direction == "download"
    workload = VmMigration(params).workload()
    assert workload.seconds == params.duration_s and workload.bytes is None


def test_overrides_are_typed() -> None:
    params = parse_overrides(VmMigrationParams, ["stop_time_s=1.5", "rate_b_mbps=40",
                                                 "direction=upload", "queue_pkts=30"])
    assert params.stop_time_s == 1.5 and params.rate_b_mbps == 40.0
    assert params.direction == "upload" and params.queue_pkts == 30
    assert params.resume_at_s == params.migrate_at_s + 1.5


@pytest.mark.parametrize(("overrides", "message"), [
    (["stop_time_s=-1"], "stop_time_s must be >= 0"),
    (["migrate_at_s=0"], "migrate_at_s must be > 0"),
    (["migrate_at_s=19", "stop_time_s=2"], "must end before duration_s"),
    (["duration_s=40"], r"timeout_s \(30.0\) must be >= duration_s"),
    (["rate_a_mbps=0"], "rate_mbps must be a positive number"),
    (["delay_b_ms=-3"], "delay_ms must be >= 0"),
    (["direction=sideways"], "direction must be upload or download"),
    (["remove_after_s=nan"], "remove_after_s must be >= 0"),
])
def test_bad_values_are_refused_before_anything_runs(overrides: list[str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(VmMigrationParams, overrides)


def test_timeline_cuts_domain_a_then_resumes_in_b_and_withdraws_the_old_address() -> None:
    scenario = VmMigration(parse_overrides(VmMigrationParams, [
        "migrate_at_s=4", "stop_time_s=0.7", "remove_after_s=0.2"]))
    down, resume, withdraw = scenario.timeline()
    assert down == LinkEvent(4.0, "domain_a", "down")
    assert isinstance(resume, HostEvent) and resume.at_s == pytest.approx(4.7)
    assert "10.0.3.1" in resume.description
    assert isinstance(withdraw, HostEvent) and withdraw.at_s == pytest.approx(4.7)
    assert withdraw.action == WithdrawOldAddress(after_join_s=0.2)
    # What the records keep of a host event is its description, not the callable.
    assert withdraw.record() == {"at_s": withdraw.at_s, "host_action": withdraw.description}


def test_host_event_needs_a_time_and_a_description() -> None:
    with pytest.raises(ParameterError, match="time must be >= 0"):
        HostEvent(-1.0, "x", lambda emu: None)
    with pytest.raises(ParameterError, match="description"):
        HostEvent(1.0, "", lambda emu: None)


def test_gap_and_goodput_around_the_move() -> None:
    # 1 s at 125 000 bytes per bin (10 Mbit/s), the move at 1.05 s, six empty bins, then
    # 0.5 s at 250 000 bytes per bin (20 Mbit/s).
    metrics = move_metrics(series(*[125_000] * 10, 60_000, *[0] * 6, *[250_000] * 5), 1.05)
    assert metrics.gap_s == pytest.approx(0.6)
    assert metrics.gap_start_s == pytest.approx(1.1)
    assert metrics.goodput_before_mbps == pytest.approx(10.0)
    assert metrics.goodput_after_mbps == pytest.approx(20.0)
    assert metrics.bytes_after_move == 5 * 250_000


def test_the_longest_silence_after_the_move_counts_not_one_before_it() -> None:
    # A longer stall early in the transfer (slow start, say) is not the move's gap.
    counts = [100, *[0] * 9, *[1000] * 10, *[0] * 3, 1000, 0, 1000, 1000]
    metrics = move_metrics(series(*counts), 2.0)
    assert metrics.gap_s == pytest.approx(0.3)
    assert metrics.gap_start_s == pytest.approx(2.0)


def test_a_silence_that_began_just_before_the_move_is_counted_whole() -> None:
    metrics = move_metrics(series(*[1000] * 10, 0, 0, 0, 0, 1000), 1.15)
    assert metrics.gap_s == pytest.approx(0.4)
    assert metrics.gap_start_s == pytest.approx(1.0)


def test_no_data_after_the_move_means_no_gap_to_measure() -> None:
    metrics = move_metrics(series(*[125_000] * 10, 50_000), 1.05)
    assert metrics.gap_s is None and metrics.goodput_after_mbps is None
    assert metrics.bytes_after_move == 0
    assert metrics.goodput_before_mbps == pytest.approx(10.0)
    # A receiver that gave up writes no series at all.
    assert move_metrics([], 1.0).bytes_after_move == 0


def test_survival_needs_the_whole_stream_and_data_after_the_move() -> None:
    assert survival(True, 1000, [])[0] is True
    survived, why = survival(False, 0, ["receiver (client): no progress for 8.0 s"])
    assert survived is False and "no progress" in why
    assert survival(False, 1000, []) == (
        False, "the byte stream did not arrive intact (sha256 or length differ)")
    assert survival(True, 0, []) == (False, "no data arrived after the move")


def test_mechanism_counters_are_the_nonzero_changes() -> None:
    before = {"MPTcpExtAddAddr": 1, "MPTcpExtRmAddr": 0, "TcpExtTCPTimeouts": 5}
    after = {"MPTcpExtAddAddr": 2, "MPTcpExtRmAddr": 0, "MPTcpExtMPJoinSynAckRx": 1,
             "TcpExtTCPTimeouts": 9}
    assert mechanism_counters(before, after) == {"MPTcpExtAddAddr": 1,
                                                 "MPTcpExtMPJoinSynAckRx": 1}


def write_run(run_dir: Path, client_after: dict[str, int], ss_rows: list[str]) -> None:
    stats_dir = run_dir / "stats"
    stats_dir.mkdir(parents=True)
    for side in ("client", "server"):
        (stats_dir / f"nstat-{side}-before.json").write_text(json.dumps({}))
    (stats_dir / "nstat-client-after.json").write_text(json.dumps(client_after))
    (stats_dir / "nstat-server-after.json").write_text(json.dumps({"MPTcpExtRmAddrTx": 1}))
    header = "t,netid,kind,state,local,remote"
    (stats_dir / "subflows-client.csv").write_text("\n".join([header, *ss_rows]) + "\n")


def outcome(run_dir: Path, receiver: dict[str, Any], sha256_match: bool,
            errors: list[str] | None = None) -> RunOutcome:
    timeline = [{"at_s": 1.0, "link": "domain_a", "action": "down", "wall_time": 1001.05}]
    return RunOutcome(summary={"sha256_match": sha256_match, "errors": errors or []},
                      sender={"side": "server"}, receiver=receiver, timeline=timeline,
                      run_dir=run_dir)


def test_evaluate_run_reports_a_survived_move(tmp_path: Path) -> None:
    write_run(tmp_path, {"MPTcpExtAddAddr": 1, "MPTcpExtMPJoinSynAckRx": 1}, [
        "1.0,tcp,subflow,ESTAB,10.0.1.1:40000,10.0.2.1:5201",
        "2.0,tcp,subflow,ESTAB,10.0.1.1:40001,10.0.3.1:5201",
    ])
    receiver = {"side": "client", "t_start": 1000.0,
                "series": series(*[125_000] * 10, 1000, *[0] * 5, *[250_000] * 4)}
    result = VmMigration(VmMigrationParams()).evaluate_run(outcome(tmp_path, receiver, True))
    assert result["survived"] is True
    assert result["gap_s"] == pytest.approx(0.5)
    assert result["move_at_receiver_s"] == pytest.approx(1.05)
    assert result["goodput_before_mbps"] == pytest.approx(10.0)
    assert result["goodput_after_mbps"] == pytest.approx(20.0)
    assert result["joined_new_address"] is True
    assert result["mptcp_counters"] == {
        "client": {"MPTcpExtAddAddr": 1, "MPTcpExtMPJoinSynAckRx": 1},
        "server": {"MPTcpExtRmAddrTx": 1}}
    # Stop time 0.5 s plus one round trip of the new path (2 * (5 + 5) ms).
    assert result["expected_gap_s"] == pytest.approx(0.52)


def test_frames_delivered_while_the_domain_went_down_are_not_after_the_move(
        tmp_path: Path) -> None:
    """The down took 17 ms to apply (a CI run): what arrived meanwhile, in the bin after the
    one the event started in, left through domain A and is no sign of survival."""
    write_run(tmp_path, {}, ["1.0,tcp,tcp,ESTAB,10.0.1.1:40000,10.0.2.1:5201"])
    receiver = {"side": "client", "t_start": 1000.0,
                "series": series(*[125_000] * 10, 20_000, 10_136), "error": "no progress"}
    run = outcome(tmp_path, receiver, False)
    run.timeline[0].update(wall_time=1001.097, took_s=0.0167)
    result = VmMigration(VmMigrationParams()).evaluate_run(run)
    assert result["move_at_receiver_s"] == pytest.approx(1.114, abs=0.001)
    assert result["bytes_after_move"] == 0 and result["gap_s"] is None
    assert result["survived"] is False


def test_evaluate_run_reports_a_dead_connection_with_the_workload_error(tmp_path: Path) -> None:
    write_run(tmp_path, {}, ["1.0,tcp,tcp,ESTAB,10.0.1.1:40000,10.0.2.1:5201"])
    receiver = {"side": "client", "t_start": 1000.0, "series": [],
                "error": "no progress for 8.0 s (socket timeout)"}
    result = VmMigration(VmMigrationParams()).evaluate_run(
        outcome(tmp_path, receiver, False, ["workload client exited with 1"]))
    assert result["survived"] is False
    assert result["survived_reason"] == "receiver (client): no progress for 8.0 s (socket timeout)"
    assert result["gap_s"] is None and result["goodput_after_mbps"] is None
    assert result["joined_new_address"] is False
    assert result["mptcp_counters"] == {"client": {}, "server": {"MPTcpExtRmAddrTx": 1}}


def test_evaluate_run_without_the_move_in_the_timeline_cannot_survive(tmp_path: Path) -> None:
    write_run(tmp_path, {}, [])
    run = outcome(tmp_path, {"t_start": 1000.0, "series": series(1000, 1000)}, True)
    result = VmMigration(VmMigrationParams()).evaluate_run(
        RunOutcome(run.summary, run.sender, run.receiver, [], tmp_path))
    assert result["survived"] is False and result["move_at_receiver_s"] is None
