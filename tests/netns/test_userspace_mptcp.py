"""Our MPTCP against Linux MPTCP (issue 4, "Tests"): the interop matrix through `testbed run`,
both directions, with kernel-kernel on the same topology as the baseline.

- Two shaped paths (topologies.two_path, `testbed run aggregate`): the client opens the join
  from its second address (a `subflow` endpoint). Cases: our client to a kernel server, a
  kernel client to our server, our stack at both ends, the kernel at both ends.
- Three shaped paths and a server with a second address it announces (a `signal` endpoint):
  the client joins from its two other addresses and to the announced one, four subflows.

Every case moves 100 MB (10^8 bytes) with equal sha256. The kernel end's `nstat` deltas show
the MPTCP handshake and every join on its side (and, with an announcement, the ADD_ADDR and its
echo) and no MPTCP error counter; its `ss -tiM` rows (the sampler's CSV) show the subflows; our
end's counters show no error either. Captures are taken on the router's client-side
interfaces: every subflow crosses exactly one of them whichever stack is at either end, and
what they hold is what each end had to parse. tshark, with MPTCP mapping analysis, must find
no malformed packet and a mapping for every data segment.

Goodput is printed for each case next to kernel-kernel (run with -s to see it); no timing is
asserted except that our stack at both ends beats one path's rate.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mininet.topo import Topo

from analysis.tshark import read_merged
from experiments.aggregate import Aggregate, AggregateParams
from experiments.runner import Run, RunOptions
from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import Router
from testbed.stacks.base import Endpoint
from testbed.stats import counters_delta, max_established_subflows, read_samples

# Not 5201: tshark dissects that port as iperf3 (see test_userspace_interop).
PORT = 40001
SIZE = 100 * 1000 * 1000
RATE_MBPS = 25.0  # per path of the two-path cases: 100 MB in about 17 s at 50 Mbit/s
RATE3_MBPS = 15.0  # per path of the three-path cases
COMMON = ["--set", f"size_mib={SIZE / 2**20!r}", "--set", f"port={PORT}",
          "--link-backend", "userspace", "--seed", "3", "--no-analyze"]

# Linux's MPTcpExt counters that would name a mistake of ours on the wire.
KERNEL_ERRORS = tuple(f"MPTcpExt{name}" for name in (
    "DSSNotMatching", "InfiniteMapRx", "DataCsumErr", "MPJoinAckHMacFailure",
    "MPJoinSynAckHMacFailure", "MPFailRx", "MPFastcloseRx", "MPRstRx", "MPJoinNoTokenFound",
    "DSSCorruptionFallback", "DSSCorruptionReset", "MPCapableFallbackACK",
    "MPCapableFallbackSYNACK", "DSSNoMatchTCP", "AddAddrDrop"))
# The same mistakes seen by our stack in Linux's packets, and the daemon's own failures.
OUR_ERRORS = ("DSSNotMatching", "InfiniteMapRx", "DataCsumErr", "MPJoinAckHMacFailure",
              "MPJoinSynAckHMacFailure", "MPFailRx", "MPFastcloseRx", "MPRstRx",
              "MPTCPOptionErrors", "MPJoinNoTokenFound", "MPCapableFallbackACK",
              "MPCapableFallbackSYNACK", "DssFallback", "ParseErrors", "LoopErrors",
              "AppBadRequests")

GOODPUT: dict[str, float] = {}


# --------------------------------------------------------------------------------------------
# Three paths, and a server address to announce

CLIENT3_ADDRS = ("10.0.1.1", "10.0.2.1", "10.0.5.1")
SERVER3_ADDRS = ("10.0.3.1", "10.0.4.1")


class ThreePathAnnounceTopo(Topo):
    """A three-homed client, each address on its own shaped path to the router, and a
    two-homed server behind it on plain links."""

    def build(self, shaping: LinkShaping) -> None:  # type: ignore[override]
        client = self.addHost("client")
        router = self.addHost("router", cls=Router)
        server = self.addHost("server")
        for number, addr in enumerate(CLIENT3_ADDRS, start=1):
            subnet = addr.rsplit(".", 1)[0]
            self.addLink(client, router, link_name=f"path{number}", shaping=shaping,
                         params1={"ip": f"{addr}/24"}, params2={"ip": f"{subnet}.254/24"})
        for number, addr in enumerate(SERVER3_ADDRS, start=1):
            subnet = addr.rsplit(".", 1)[0]
            self.addLink(router, server, link_name=f"server{number}",
                         params1={"ip": f"{subnet}.254/24"}, params2={"ip": f"{addr}/24"})


@dataclass
class ThreePathAnnounce(Aggregate):
    name = "aggregate-3path-announce"
    description = "three shaped paths, and a second server address announced with ADD_ADDR"

    def topology(self) -> Topo:
        return ThreePathAnnounceTopo(shaping=LinkShaping.symmetric(**self.params.path(1).to_dict()))

    def server_address(self) -> str:
        return SERVER3_ADDRS[0]

    def client_endpoints(self) -> list[Endpoint]:
        return [Endpoint(addr=addr, dev=f"client-eth{i}", flags=frozenset({"subflow"}))
                for i, addr in enumerate(CLIENT3_ADDRS[1:], start=1)]

    def server_endpoints(self) -> list[Endpoint]:
        return [Endpoint(addr=SERVER3_ADDRS[1], dev="server-eth1", flags=frozenset({"signal"}))]

    def configured_rates(self) -> dict[str, float]:
        return {f"path{n}": self.params.rate1_mbps for n in (1, 2, 3)}


def run_three_paths(client_stack: str, server_stack: str, out: Path) -> None:
    params = AggregateParams(rate1_mbps=RATE3_MBPS, rate2_mbps=RATE3_MBPS,
                             size_mib=SIZE / 2**20, port=PORT,
                             capture_on="router-eth0,router-eth1,router-eth2")
    run = Run(ThreePathAnnounce(params), RunOptions(client_stack=client_stack,
                                                    server_stack=server_stack,
                                                    link_backend="userspace", seed=3,
                                                    out_dir=out))
    # Three joins: the kernel's limits (extra subflows, ADD_ADDRs taken) must allow them.
    run.stack_config = dataclasses.replace(run.stack_config, subflows=4, add_addr_accepted=2)
    run.execute()


def run_two_paths(client_stack: str, server_stack: str, out: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "run", "aggregate", "--client-stack",
         client_stack, "--server-stack", server_stack, "--out", str(out), *COMMON,
         "--set", f"rate1_mbps={RATE_MBPS}", "--set", f"rate2_mbps={RATE_MBPS}",
         "--set", "capture_on=router-eth0,router-eth1"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# What a results directory must show


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def nstat_delta(out: Path, host: str) -> dict[str, int]:
    return counters_delta(_json(out / "stats" / f"nstat-{host}-before.json"),
                          _json(out / "stats" / f"nstat-{host}-after.json"))


def check_kernel_end(out: Path, host: str, role: str, joins: int, announced: bool) -> None:
    delta = nstat_delta(out, host)
    shown = {k: v for k, v in delta.items() if k.startswith("MPTcpExt") and v}
    if role == "server":
        assert delta.get("MPTcpExtMPCapableSYNRX") == 1, shown
        assert delta.get("MPTcpExtMPCapableACKRX") == 1, shown
        assert delta.get("MPTcpExtMPJoinSynRx") == joins, shown
        assert delta.get("MPTcpExtMPJoinAckRx") == joins, shown
        if announced:  # it announced, our client echoed (§3.4.1)
            assert delta.get("MPTcpExtEchoAdd", 0) >= 1, shown
    else:
        assert delta.get("MPTcpExtMPCapableSYNACKRX") == 1, shown
        assert delta.get("MPTcpExtMPJoinSynAckRx") == joins, shown
        if announced:  # our server's ADD_ADDR passed its HMAC check
            assert delta.get("MPTcpExtAddAddr", 0) >= 1, shown
    for name in KERNEL_ERRORS:
        assert delta.get(name, 0) == 0, (name, shown)
    print(f"\n  kernel {role}: " + ", ".join(
        f"{k.removeprefix('MPTcpExt')}={v}" for k, v in sorted(shown.items())
        if "Join" in k or "Capable" in k or "Add" in k))


def check_our_end(out: Path, host: str) -> None:
    counters = _json(out / "stats" / f"stack-{host}.json")["counters"]
    for name in OUR_ERRORS:
        assert counters.get(name, 0) == 0, (name, counters)


def check_capture(out: Path, tmp: Path, subflows: int, announced: bool) -> None:
    packets = read_merged(sorted((out / "pcap").glob("*.pcap")), tmp / "fields.csv.gz")
    assert not packets["malformed"].any()
    syns = packets[packets["syn"] & ~packets["ack"]]
    assert syns["mp_capable"].sum() == 1
    assert syns["mp_join"].sum() == subflows - 1
    data = packets[packets["tcp_len"] > 0]
    assert (data["dss"] | data["mp_capable"]).all()
    # Every data byte mapped: tshark's mapping analysis gives a data segment its DSN, from a
    # mapping it saw earlier on the subflow or from the segment's own. tshark 4.0 leaves a
    # few re-sent segments without one (their original dropped before the capture point; one
    # CI run had such a segment that its TCP analysis did not flag as a retransmission), so
    # there the segment's DSS must cover its bytes itself: ours map each segment on its own.
    own = ((data["dss_ssn"] <= data["tcp_seq"])
           & (data["tcp_seq"] + data["tcp_len"] <= data["dss_ssn"] + data["dss_length"]))
    unmapped = data[~(data["dsn"].notna() | own.fillna(False).astype(bool))]
    assert unmapped.empty, unmapped[["frame", "tcp_stream", "tcp_seq", "tcp_len"]]
    assert data["mptcp_stream"].nunique() == 1
    assert data["tcp_stream"].nunique() == subflows
    if announced:
        assert packets["add_addr"].any()


def check_run(out: Path, tmp: Path, client_stack: str, server_stack: str, subflows: int,
              announced: bool, label: str) -> None:
    summary = _json(out / "summary.json")
    assert summary["sha256_match"] is True
    assert summary["bytes_received"] == SIZE
    assert summary["subflows"] == subflows
    for host, stack in (("client", client_stack), ("server", server_stack)):
        samples = out / "stats" / f"subflows-{host}.csv"
        # ss -tiM on a kernel end, the control channel on ours: the same subflows.
        assert max_established_subflows(samples, port=PORT) == subflows, host
        if stack == "kernel":
            check_kernel_end(out, host, host, subflows - 1, announced)
        else:
            check_our_end(out, host)
    check_capture(out, tmp, subflows, announced)
    GOODPUT[label] = summary["goodput_mbps"]
    baseline = GOODPUT.get(label.split(":")[0] + ":kernel-kernel")
    print(f"\n{label}: {summary['goodput_mbps']:.1f} Mbit/s, {subflows} subflows"
          + (f" (kernel-kernel {baseline:.1f})" if baseline else ""))


# --------------------------------------------------------------------------------------------
# The matrix (kernel-kernel first: the baseline the others are printed next to)

PAIRS = [("kernel", "kernel"), ("userspace", "kernel"), ("kernel", "userspace"),
         ("userspace", "userspace")]


@pytest.mark.parametrize(("client_stack", "server_stack"), PAIRS,
                         ids=[f"{c}-{s}" for c, s in PAIRS])
def test_two_paths(client_stack: str, server_stack: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_two_paths(client_stack, server_stack, out)
    check_run(out, tmp_path, client_stack, server_stack, subflows=2, announced=False,
              label=f"2 paths:{client_stack}-{server_stack}")
    if client_stack == server_stack == "userspace":
        # Aggregation, not just two subflows: more than one path could carry.
        assert _json(out / "summary.json")["goodput_mbps"] > RATE_MBPS


PAIRS3 = PAIRS


@pytest.mark.parametrize(("client_stack", "server_stack"), PAIRS3,
                         ids=[f"{c}-{s}" for c, s in PAIRS3])
def test_three_paths_and_an_announced_address(client_stack: str, server_stack: str,
                                              tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_three_paths(client_stack, server_stack, out)
    # Joins from the client's second and third addresses, and one to the announced address.
    check_run(out, tmp_path, client_stack, server_stack, subflows=4, announced=True,
              label=f"3 paths+announce:{client_stack}-{server_stack}")


# --------------------------------------------------------------------------------------------
# Choices by name


@pytest.mark.parametrize("congestion", ["lia", "olia", "balia"])
def test_our_subflows_are_coupled_by_name(congestion: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "run", "aggregate", "--stack", "userspace",
         "--out", str(out), "--link-backend", "userspace", "--seed", "3", "--no-analyze",
         "--set", "size_mib=8", "--set", f"port={PORT}", "--set", "capture=false",
         "--set", f"congestion={congestion}", "--set", f"rate1_mbps={RATE_MBPS}",
         "--set", f"rate2_mbps={RATE_MBPS}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = _json(out / "summary.json")
    assert summary["sha256_match"] is True and summary["subflows"] == 2
    rows = read_samples(out / "stats" / "subflows-client.csv")
    # The controllers the subflows really run, each reading the other's window.
    assert {row["congestion"] for row in rows if row["kind"] == "subflow"} == {congestion}
    report = _json(out / "stats" / "stack-client.json")
    (conn,) = report["connections"] + report["finished"]
    assert [sf["coupled_with"] for sf in conn["stats"]["subflows"]] == [1, 1]


def test_the_redundant_scheduler_sends_the_whole_stream_on_both_subflows(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    size = 2 << 20
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "run", "aggregate", "--stack", "userspace",
         "--out", str(out), "--link-backend", "userspace", "--seed", "3", "--no-analyze",
         "--set", "size_mib=2", "--set", f"port={PORT}", "--set", "capture=false",
         "--set", "scheduler=redundant", "--set", "rate1_mbps=10",
         "--set", "rate2_mbps=10"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = _json(out / "summary.json")
    assert summary["sha256_match"] is True and summary["subflows"] == 2
    report = _json(out / "stats" / "stack-client.json")
    (conn,) = report["connections"] + report["finished"]
    stats = conn["stats"]
    assert stats["scheduler"] == "redundant"
    # Both subflows carried (and had acknowledged) the stream, but what the first path
    # delivered before the join completed; the copies are counted as such.
    acked = [sf["bytes_acked"] for sf in stats["subflows"]]
    assert len(acked) == 2 and all(n >= 0.9 * size for n in acked), acked
    assert stats["bytes_redundant"] >= 0.9 * size


def test_a_name_our_stack_lacks_is_refused_with_the_list(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "run", "aggregate", "--stack", "userspace",
         "--out", str(tmp_path / "run"), "--link-backend", "userspace", "--no-analyze",
         "--set", "scheduler=weighted", "--set", "size_mib=1"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "unknown MPTCP scheduler 'weighted'; available: blest, default, ecf" in result.stderr


@pytest.mark.parametrize(("client_stack", "server_stack"),
                         [("userspace", "tcp"), ("tcp", "userspace")])
def test_our_stack_falls_back_to_tcp_against_a_plain_peer(client_stack: str, server_stack: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "testbed.cli", "run", "aggregate", "--client-stack",
         client_stack, "--server-stack", server_stack, "--out", str(out),
         "--link-backend", "userspace", "--seed", "3", "--no-analyze", "--set", "size_mib=8",
         "--set", f"port={PORT}", "--set", "capture=false"],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = _json(out / "summary.json")
    assert summary["sha256_match"] is True and summary["subflows"] == 1
    ours = "client" if client_stack == "userspace" else "server"
    counters = _json(out / "stats" / f"stack-{ours}.json")["counters"]
    # §3.1: a client seeing no MP_CAPABLE in the SYN/ACK goes on as TCP, and opens no join.
    assert counters.get("MPCapableFallbackSYNACK", 0) == (1 if ours == "client" else 0)
    assert counters.get("MPJoinSynTx", 0) == counters.get("MPCapableSYNRX", 0) == 0


# --------------------------------------------------------------------------------------------
# A backup endpoint


@dataclass
class BackupPath(Aggregate):
    name = "aggregate-backup"
    description = "two shaped paths, the second one a backup endpoint"

    def client_endpoints(self) -> list[Endpoint]:
        return [dataclasses.replace(endpoint, flags=endpoint.flags | {"backup"})
                for endpoint in super().client_endpoints()]


def test_our_client_joins_a_backup_endpoint_as_backup(tmp_path: Path) -> None:
    out = tmp_path / "run"
    params = AggregateParams(rate1_mbps=RATE_MBPS, rate2_mbps=RATE_MBPS, size_mib=8, port=PORT,
                             capture_on="router-eth0,router-eth1")
    Run(BackupPath(params), RunOptions(client_stack="userspace", server_stack="kernel",
                                       link_backend="userspace", seed=3, out_dir=out)).execute()
    summary = _json(out / "summary.json")
    assert summary["sha256_match"] is True and summary["subflows"] == 2
    packets = read_merged(sorted((out / "pcap").glob("*.pcap")), tmp_path / "fields.csv.gz")
    join = packets[packets["syn"] & ~packets["ack"] & packets["mp_join"]]
    assert join["backup"].astype(bool).tolist() == [True]  # RFC 8684 §3.2: the B bit
    report = _json(out / "stats" / "stack-client.json")
    (conn,) = report["connections"] + report["finished"]
    backup = [sf for sf in conn["stats"]["subflows"] if not sf["initial"]]
    assert [sf["backup"] for sf in backup] == [True]
    # §3.3.8: no data on a backup while the other subflow works.
    assert backup[0]["bytes_acked"] == 0
