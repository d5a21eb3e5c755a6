"""Parsing of real `ss -tinHM` and `nstat --json` output captured on kernel 6.18 / iproute2
6.1 (tests/unit/data), and the subflow count the sampler CSV yields."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from testbed.errors import TestbedError
from testbed.stats import (
    CSV_FIELDS,
    counters_delta,
    filter_counters,
    max_established_subflows,
    mptcp_counters,
    nstat_snapshot,
    parse_nstat_json,
    parse_ss,
    read_samples,
    sample_to_row,
    ss_argv,
)

DATA = Path(__file__).parent / "data"


def _ss(name: str, t: float = 100.0) -> list[Any]:
    return parse_ss((DATA / name).read_text(), t)


def test_ss_mptcp_client_subflows_and_socket() -> None:
    first, join, msk = _ss("ss_tinHM_mptcp_client.txt")
    assert (first.kind, join.kind, msk.kind) == ("subflow", "subflow", "mptcp")
    # every subflow carries the local token of its connection, the MPTCP socket the same one
    assert first.token == join.token == msk.token == "3a0fcbdd"
    assert msk.subflows == 1
    assert first.mptcp_flags == "Mmec" and join.mptcp_flags == "Jjec"
    # `%c2` (bound to device) is dropped so addresses compare across samples
    assert join.local == "10.0.2.1:53769" and join.remote == "10.0.1.2:5201"
    assert first.state == "ESTAB" and first.congestion == "cubic" and join.congestion == "cubic"
    assert (first.cwnd, first.ssthresh) == (331, 331)
    assert (first.srtt_ms, first.rttvar_ms, first.rto_ms) == (0.064, 0.018, 204.0)
    assert (first.bytes_sent, first.bytes_acked) == (283190240, 283100297)
    assert first.delivery_rate_bps == 13479563632.0
    assert first.retrans == 0
    assert msk.cwnd is None and msk.congestion is None


def test_ss_mptcp_server_receiver_side() -> None:
    join, first, msk = _ss("ss_tinHM_mptcp_server.txt")
    assert join.token == first.token == msk.token == "b719615c"
    assert join.bytes_received == 181760064 and join.bytes_sent is None
    assert join.ssthresh is None  # not printed while in initial slow start
    assert join.local == "10.0.1.2:5201" and join.remote == "10.0.2.1:53769"


def test_ss_plain_tcp_bbr_tokens() -> None:
    server, client = _ss("ss_tinHM_tcp_bbr.txt")
    assert server.kind == client.kind == "tcp" and server.token is None
    # "bbr:(bw:...)" must not be mistaken for the algorithm name or break parsing
    assert server.congestion == client.congestion == "bbr"
    assert client.delivery_rate_bps == 39289800000.0 and client.ssthresh == 8


def test_ss_unknown_and_spaced_tokens() -> None:
    text = (
        "tcp   ESTAB 0 0 [::1]:80 [::1]:4000\n"
        "\t ts sack ecn reno newthing:7 retrans:1/12 weird sack pacing_rate 1.5Mbps "
        "delivery_rate 2.5Gbps rtt:10.5/2 cwnd:notanumber\n"
        "garbage line that is not ss\n"
        "udp UNCONN 0 0 0.0.0.0:53 0.0.0.0:*\n"
    )
    (s,) = parse_ss(text, 1.0)
    assert s.congestion == "reno" and s.retrans == 12
    assert s.delivery_rate_bps == 2.5e9 and s.srtt_ms == 10.5 and s.rttvar_ms == 2.0
    assert s.cwnd is None and s.local == "[::1]:80"
    assert parse_ss("", 0.0) == [] and parse_ss("\tnot a header\n", 0.0) == []


def _write_csv(path: Path, samples: Sequence[Any]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        w.writerows(sample_to_row(s) for s in samples)
    return path


def test_max_established_subflows_from_csv(tmp_path: Path) -> None:
    early = _ss("ss_tinHM_mptcp_client.txt", 1.0)[::2]  # first subflow and the MPTCP socket
    later = _ss("ss_tinHM_mptcp_client.txt", 2.0)
    path = _write_csv(tmp_path / "s.csv", [*early, *later])
    rows = read_samples(path)
    assert rows[0]["t"] == "1.0" and rows[0]["cwnd"] == "331" and rows[0]["subflows"] == ""
    assert max_established_subflows(path) == 2
    assert max_established_subflows(path, token="3a0fcbdd") == 2
    assert max_established_subflows(path, port=5201) == 2
    assert max_established_subflows(path, port=9) == 0
    assert max_established_subflows(rows, token="ffffffff") == 0
    tcp = _write_csv(tmp_path / "t.csv", _ss("ss_tinHM_tcp_bbr.txt"))
    assert max_established_subflows(tcp, port=6001) == 1


def test_ss_argv_port_filter() -> None:
    assert ss_argv() == ["ss", "-tinHM"]
    assert ss_argv(5201)[2:] == ["(", "sport", "=", ":5201", "or", "dport", "=", ":5201", ")"]


def test_nstat_json_fixture() -> None:
    counters = parse_nstat_json((DATA / "nstat_json_server.json").read_text())
    assert counters["MPTcpExtMPCapableSYNRX"] == 1
    assert counters["MPTcpExtMPJoinSynRx"] == 1
    assert counters["TcpActiveOpens"] == 0
    only = filter_counters(counters)
    assert only and all(k.startswith(("MPTcpExt", "Tcp")) for k in only)
    assert "IpInReceives" in counters and "IpInReceives" not in only
    mib = mptcp_counters(counters)
    assert mib["MPJoinSynRx"] == 1 and "TcpActiveOpens" not in mib


def test_counters_delta() -> None:
    assert counters_delta({"a": 1, "b": 5}, {"a": 4, "c": 2}) == {"a": 3, "b": -5, "c": 2}


def test_nstat_bad_output() -> None:
    with pytest.raises(TestbedError, match="no valid JSON"):
        parse_nstat_json("IpInReceives 3\n")
    with pytest.raises(TestbedError, match="no 'kernel'"):
        parse_nstat_json("[]")


class FakeHost:
    name = "h1"

    def __init__(self) -> None:
        self.argv: list[str] = []

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        self.argv = list(argv)
        return (DATA / "nstat_json_server.json").read_text()

    def popen(self, argv: Sequence[str], **kwargs: Any) -> Any:
        raise NotImplementedError


def test_nstat_snapshot_leaves_history_alone() -> None:
    host = FakeHost()
    snap = nstat_snapshot(host)
    assert snap["MPTcpExtMPJoinAckRx"] == 1
    # -a ignores and -s does not update the history file shared by all namespaces
    assert host.argv[0] == "nstat" and {"-a", "-s", "-z"} <= set(host.argv)
    assert "--json" in host.argv or "-j" in host.argv
