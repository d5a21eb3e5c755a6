"""handover without root: parameters, each mode's endpoints and timeline, what the connection
manager does on detection (against a recording fake host), per-path bytes from sampler rows,
and the verdicts from a synthetic run directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from experiments import SCENARIOS
from experiments.handover import (
    CELL_ADDR,
    WIFI_ADDR,
    WIFI_LINK,
    Handover,
    HandoverParams,
    WifiLost,
    path_bytes,
)
from experiments.scenario import HostEvent, LinkEvent, RunOutcome, parse_overrides
from testbed.errors import ParameterError, TestbedError
from testbed.stats import CSV_FIELDS


def test_registered_with_the_three_modes_of_the_paper() -> None:
    assert SCENARIOS["handover"] is Handover
    for mode in ("full", "backup", "single-path"):
        assert parse_overrides(HandoverParams, [f"mode={mode}"]).mode == mode


@pytest.mark.parametrize(("overrides", "message"), [
    (["mode=fast"], "mode must be one of full, backup, single-path"),
    (["fail_at_s=0"], "fail_at_s must be > 0"),
    (["detection_s=-1"], "detection_s must be >= 0"),
    (["fail_at_s=11", "detection_s=1"], "must be before duration_s"),
    (["cell_rate_mbps=0"], "rate_mbps must be a positive number"),
    (["duration_s=30"], r"timeout_s \(20.0\) must be >= duration_s"),
])
def test_bad_values_are_refused_before_anything_runs(overrides: list[str], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(HandoverParams, overrides)


def test_each_mode_gets_its_cellular_endpoint() -> None:
    def flags(mode: str) -> list[frozenset[str]]:
        return [ep.flags for ep in Handover(HandoverParams(mode=mode)).client_endpoints()]

    assert flags("full") == [frozenset({"subflow"})]
    assert flags("backup") == [frozenset({"subflow", "backup"})]
    assert flags("single-path") == []  # opened only once WiFi is found lost


def test_wifi_goes_down_then_is_noticed_after_the_detection_delay() -> None:
    params = parse_overrides(HandoverParams, ["mode=backup", "fail_at_s=3", "detection_s=0.5"])
    link, host = Handover(params).timeline()
    assert isinstance(link, LinkEvent) and isinstance(host, HostEvent)
    assert (link.at_s, link.link, link.action) == (3.0, WIFI_LINK, "down")
    assert host.at_s == 3.5 and "MP_PRIO" in host.description


def test_plain_tcp_has_no_mode_its_sockets_are_destroyed_at_detection() -> None:
    scenario = Handover(parse_overrides(HandoverParams, ["mode=single-path"]))
    scenario.use_stacks("tcp", "tcp")
    _, host = scenario.timeline()
    assert isinstance(host, HostEvent) and "destroyed" in host.description
    # No cellular join to wait for: the action is the WiFi withdrawal alone.
    assert host.action == WifiLost("full")


def test_the_expected_gap_grows_from_backup_to_single_path() -> None:
    gaps = {mode: HandoverParams(mode=mode).expected_gap_s() for mode in
            ("full", "backup", "single-path")}
    assert gaps["full"] == gaps["backup"] < gaps["single-path"]


class FakeHost:
    """Records commands; answers `ip mptcp endpoint show` and `ss` from a small state."""

    def __init__(self, endpoints: str = "", joined: bool = True) -> None:
        self.commands: list[list[str]] = []
        self.endpoints = endpoints
        self.joined = joined

    def run(self, argv: list[str], check: bool = True) -> str:
        self.commands.append(list(argv))
        if argv[:4] == ["ip", "mptcp", "endpoint", "show"]:
            return self.endpoints
        if argv[:4] == ["ip", "mptcp", "endpoint", "delete"] and argv[4:6] == ["id", "0"] \
                and not self.endpoints:
            raise TestbedError("no MPTCP connection from this address")
        if argv[:2] == ["ss", "-tnH"]:
            return "ESTAB 0 0 10.0.2.1:40000 10.0.3.1:5201\n" if self.joined else ""
        return ""


class FakeEmulation:
    def __init__(self, host: FakeHost) -> None:
        self._host = host

    def host(self, name: str) -> FakeHost:
        assert name == "client"
        return self._host


def ip_commands(host: FakeHost) -> list[list[str]]:
    return [c for c in host.commands if c[:2] == ["ip", "mptcp"] and c[3] != "show"]


def test_backup_mode_clears_the_flag_then_withdraws_wifi() -> None:
    host = FakeHost(endpoints=f"{CELL_ADDR} id 1 subflow backup dev client-eth1 \n")
    WifiLost("backup")(FakeEmulation(host))  # type: ignore[arg-type]
    assert ip_commands(host) == [
        ["ip", "mptcp", "endpoint", "change", "id", "1", "nobackup"],
        ["ip", "mptcp", "endpoint", "delete", "id", "0", WIFI_ADDR],
    ]


def test_single_path_mode_joins_cellular_before_withdrawing_wifi() -> None:
    host = FakeHost(endpoints="")  # cellular gets its endpoint only now
    WifiLost("single-path")(FakeEmulation(host))  # type: ignore[arg-type]
    add, delete = ip_commands(host)
    assert add == ["ip", "mptcp", "endpoint", "add", CELL_ADDR, "dev", "client-eth1", "subflow"]
    assert delete == ["ip", "mptcp", "endpoint", "delete", "id", "0", WIFI_ADDR]


def test_plain_tcp_has_no_endpoint_to_withdraw_and_that_is_no_error() -> None:
    host = FakeHost(endpoints="")
    WifiLost("full")(FakeEmulation(host))  # type: ignore[arg-type]
    assert ["ss", "-tniH", "src", WIFI_ADDR] in host.commands


def sample_rows(*rows: tuple[float, str, int]) -> list[dict[str, str]]:
    """Sampler rows (t, local address, bytes_received) of established subflows."""
    out = []
    for t, local, received in rows:
        row = dict.fromkeys(CSV_FIELDS, "")
        row.update(t=str(t), kind="subflow", state="ESTAB", local=f"{local}:40000",
                   remote="10.0.3.1:5201", bytes_received=str(received))
        out.append(row)
    return out


def test_path_bytes_split_at_the_failure_with_one_sample_of_grace() -> None:
    rows = sample_rows((99.9, WIFI_ADDR, 1000), (100.05, WIFI_ADDR, 1200),
                       (100.3, CELL_ADDR, 500), (101.0, CELL_ADDR, 900))
    wifi = path_bytes(rows, WIFI_ADDR, fail_wall=100.0, direction="download",
                      sample_interval_s=0.1)
    cell = path_bytes(rows, CELL_ADDR, fail_wall=100.0, direction="download",
                      sample_interval_s=0.1)
    assert (wifi.before, wifi.after) == (1200, 0)  # what arrived just before the failure
    assert (cell.before, cell.after) == (0, 900)


def write_run(run_dir: Path, rows: list[dict[str, str]]) -> None:
    (run_dir / "stats").mkdir(parents=True)
    with open(run_dir / "stats" / "subflows-client.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for side in ("client", "server"):
        for when, value in (("before", 0), ("after", 1)):
            (run_dir / "stats" / f"nstat-{side}-{when}.json").write_text(
                json.dumps({"MPTcpExtMPPrioTx": value}))


def test_verdicts_from_a_backup_run(tmp_path: Path) -> None:
    write_run(tmp_path, sample_rows((1000.5, WIFI_ADDR, 5000), (1001.5, CELL_ADDR, 3000)))
    params = parse_overrides(HandoverParams, ["mode=backup", "fail_at_s=1"])
    # 1 s of data, WiFi fails at 1 s (receiver clock), 0.3 s of silence, data again.
    series: list[list[float]] = [[round(i * 0.1, 1), 1000] for i in range(10)]
    series += [[round(i * 0.1, 1), 1000] for i in range(13, 20)]
    outcome = RunOutcome(
        summary={"sha256_match": True, "client_stack": "kernel", "errors": []},
        sender={}, receiver={"t_start": 1000.0, "series": series},
        timeline=[{"link": WIFI_LINK, "action": "down", "wall_time": 1001.0}],
        run_dir=tmp_path)
    result: dict[str, Any] = Handover(params).evaluate_run(outcome)
    assert result["survived"] is True and result["mode"] == "backup"
    assert result["gap_s"] == pytest.approx(0.3)
    assert result["carried_data_before"] == ["wifi"]
    assert result["carried_data_after"] == ["cellular"]
    assert result["mptcp_counters"]["client"] == {"MPTcpExtMPPrioTx": 1}
