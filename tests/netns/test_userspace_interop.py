"""Our TCP against Linux TCP on one shaped path (issue 3, "Tests"): our client uploading to a
Linux server and a Linux client uploading to our server, 100 MB with equal sha256, on a clean
path and on a path with 1% random loss and reordering each way. Every transfer is captured on
the Linux host's interface and checked by tshark (no malformed packet, every IPv4 and TCP
checksum good), and Linux's own counters must show no TCP error rising on its side beyond what
the loss explains.

Reordering: the shaper sends 2% of the frames of each direction without their 1 ms delay
(Shaping.reorder_pct, netem's "reorder"), so each of them overtakes the frames that left the
rate queue in the millisecond before it: up to eight full frames at 100 Mbit/s, more than the
three duplicate ACKs that trigger a fast retransmit.

Both stacks run cubic. PairTopo: host `a` (10.0.9.1) is always the client, `b` (10.0.9.2) the
server, so `a2b` is the data direction of an upload.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis.tshark import read_pcap
from testbed.emu.capture import start_capture
from testbed.emu.cleanup import ProcessRecord, RunRecord
from testbed.emu.linkparams import LinkShaping
from testbed.emu.network import Emulation, RecordedHost
from testbed.runtime import api
from testbed.stacks.base import PreparedHost, StackConfig, get_stack
from testbed.stacks.userspace import UserspacePreparedHost, UserspaceStack
from testbed.stats import counters_delta, nstat_snapshot
from testbed.workload import payload_sha256
from topologies.pair import A_ADDR, B_ADDR, LINK_NAME, PairTopo

SEED = 11
# Not 5201: tshark dissects that port as iperf3, reassembles its "messages" and then reports
# a retransmission that overlaps them as malformed ("New fragment overlaps old data").
# No Wireshark dissector claims this one.
PORT = 40001
CLEAN = LinkShaping.symmetric(rate_mbps=100, delay_ms=5)  # 10 ms RTT
# 2 ms RTT: 1% loss holds any Reno-friendly sender near MSS/RTT * 1.22/sqrt(p) = 70 Mbit/s
# (Mathis et al.), so 100 MB takes seconds, not the minute and more it took at 10 ms.
LOSSY = LinkShaping.symmetric(rate_mbps=100, delay_ms=1, loss_pct=1.0, reorder_pct=2.0)
LOSSY_NAME = "loss1pct_reorder2pct"
# Bytes of each upload.
PATHS = {"clean": (CLEAN, 100 * 1000 * 1000), LOSSY_NAME: (LOSSY, 100 * 1000 * 1000)}
CONFIG = StackConfig(congestion="cubic")

# Linux counters that must not move when a well-behaved peer talks to it. Each one names a
# way our stack could be wrong on the wire: bad checksums or headers (InErrs, InCsumErrors,
# IP header/address errors), resets or aborts of a connection that should have ended with a
# FIN handshake, SACK blocks Linux found invalid or too old, SACKed data reneged, timestamps
# that fail PAWS, segments or RSTs outside the window (RFC 5961 challenge ACKs), data past the
# advertised window or dropped for lack of room.
LINUX_ERRORS = (
    "TcpInErrs", "TcpInCsumErrors", "TcpEstabResets", "TcpOutRsts", "TcpAttemptFails",
    "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnMemory",
    "TcpExtTCPAbortOnTimeout", "TcpExtTCPAbortOnLinger", "TcpExtTCPAbortFailed",
    "TcpExtTCPSACKDiscard", "TcpExtTCPDSACKIgnoredOld", "TcpExtTCPDSACKIgnoredDubious",
    "TcpExtTCPSACKReneging", "TcpExtPAWSEstab", "TcpExtPAWSOldAck", "TcpExtPAWSActive",
    "TcpExtTCPChallengeACK", "TcpExtTCPSYNChallenge", "TcpExtTCPZeroWindowDrop",
    "TcpExtTCPRcvQDrop", "TcpExtTCPOFODrop", "TcpExtTCPBacklogDrop",
    "TcpExtListenOverflows", "TcpExtListenDrops",
    "IpInHdrErrors", "IpInAddrErrors", "IpExtInCsumErrors",
)
# ... except PAWS on a reordering path. A frame overtaken by a reordered one arrives after a
# segment with a newer timestamp; if that one moved ts_recent (a retransmission that filled the
# hole, or a newer cumulative ACK), the late frame fails PAWS by design (RFC 7323 §5: it is an
# old duplicate) once the clocks are more than one 1 ms tick apart. Without reordering frames
# arrive in timestamp order and these must stay at zero; with it, they are bounded below.
PAWS = ("TcpExtPAWSEstab", "PAWSEstabRejected")
# Our stack's counters for the same mistakes seen from the other side (Linux's packets).
OUR_ERRORS = ("InErrs", "InCsumErrors", "EstabResets", "OutRsts", "AttemptFails",
              "ParseErrors", "LoopErrors", "TCPAbortOnTimeout", "PAWSEstabRejected",
              "TCPChallengeACK", "TCPSYNChallenge", "TCPOFODrop")
# Shown with every result: what loss recovery did on each side.
LINUX_RECOVERY = ("TcpRetransSegs", "TcpExtTCPLostRetransmit", "TcpExtTCPSackRecovery",
                  "TcpExtTCPFastRetrans", "TcpExtTCPTimeouts", "TcpExtTCPLossProbes",
                  "TcpExtTCPSpuriousRTOs", "TcpExtTCPDSACKRecv", "TcpExtTCPDSACKRecvSegs",
                  "TcpExtTCPDSACKOfoRecv", "TcpExtTCPDSACKOldSent", "TcpExtTCPDSACKOfoSent",
                  "TcpExtTCPDSACKUndo", "TcpExtTCPDSACKIgnoredNoUndo", "TcpExtTCPLossUndo",
                  "TcpExtTCPOFOQueue", "TcpExtTCPSACKReorder", "TcpExtTCPRenoReorder",
                  "TcpExtTCPTSReorder")
OUR_RECOVERY = ("RetransSegs", "TCPFastRetrans", "TCPTimeouts", "TCPSackRecovery",
                "TCPOFOQueue", "DelayedACKs")


# --------------------------------------------------------------------------------------------
# The bench: one emulated path, our stack on one host, Linux's on the other


@dataclass
class Bench:
    emu: Emulation
    record: RunRecord
    ours: UserspacePreparedHost
    linux: PreparedHost
    path: str
    tmp: Path

    def prepared(self, host: str) -> PreparedHost:
        return self.ours if self.ours.host == host else self.linux

    @property
    def linux_host(self) -> RecordedHost:
        return self.emu.recorded(self.linux.host)

    def our_counters(self) -> dict[str, int]:
        counters: dict[str, int] = api.stats(self.ours.control_path)["counters"]
        return counters

    def link_counters(self, direction: str) -> tuple[int, int]:
        """Frames the shaper dropped (random loss and tail drop) and reordered in `direction`
        so far."""
        pipe = self.emu.shaper_stats()["links"][self.emu.link(LINK_NAME).name][direction]
        return int(pipe["dropped_loss"] + pipe["dropped_queue"]), int(pipe["reordered"])


def nothing_left_of(record: RunRecord, tmp: Path) -> list[str]:
    """What this test left running: its recorded processes (same pid and start time), and
    any process naming its temporary directory (workloads, tcpdump, the stack daemon).
    Other engineers' runs on the machine are none of its business."""
    left = [f"{p.pid} {p.what}" for p in record.processes if p.alive()]
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if entry.isdigit() and str(tmp).encode() in cmdline:
            left.append(f"{entry} {cmdline.decode(errors='replace')}")
    return left


@pytest.fixture
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    """param = (host of our stack, path name): our stack on `a` (client) or `b` (server)."""
    ours_on, path = request.param
    linux_on = "b" if ours_on == "a" else "a"
    shaping, _ = PATHS[path]
    record = RunRecord(f"test-{secrets.token_hex(3)}", ProcessRecord.of(os.getpid(), "pytest"))
    emu = Emulation(PairTopo(shaping=shaping), "userspace", seed=5, record=record)
    driver = UserspaceStack(control_dir=tmp_path / "run")
    prepared: UserspacePreparedHost | None = None
    try:
        emu.start()
        linux = get_stack("tcp").prepare(emu.recorded(linux_on), [], CONFIG)
        ours = driver.prepare(emu.recorded(ours_on), [], CONFIG)
        assert isinstance(ours, UserspacePreparedHost)
        prepared = ours
        yield Bench(emu, record, ours, linux, path, tmp_path)
    finally:
        if prepared is not None:
            driver.release(emu.recorded(ours_on), prepared)
        emu.stop()
        record.path.unlink(missing_ok=True)
    assert nothing_left_of(record, tmp_path) == []


@pytest.fixture(autouse=True)
def tshark_without_tcp_heuristics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Wireshark profile in which no heuristic dissector claims TCP payload.

    The payload is random bytes; now and then a heuristic (thrift, seen here) takes a
    segment for its protocol, asks TCP to reassemble its "message", and tshark then reports
    the next retransmission overlapping it as malformed ("New fragment overlaps old data").
    analysis.tshark runs tshark in our environment, so the profile comes through
    WIRESHARK_CONFIG_DIR, analysis/ unchanged."""
    heuristics = subprocess.run(["tshark", "-G", "heuristic-decodes"], capture_output=True,
                                text=True, check=True).stdout
    names = sorted({line.split("\t")[1] for line in heuristics.splitlines()
                    if line.startswith("tcp\t")})
    profile = tmp_path / "wireshark"
    profile.mkdir()
    (profile / "disabled_protos").write_text("".join(f"{name}\n" for name in names))
    monkeypatch.setenv("WIRESHARK_CONFIG_DIR", str(profile))


# --------------------------------------------------------------------------------------------
# One transfer, and what the capture and the counters say about it


@dataclass
class Transfer:
    client: dict[str, Any]
    server: dict[str, Any]
    pcap: Path
    linux_delta: dict[str, int]
    our_delta: dict[str, int]
    data_drops: int  # frames the shaper dropped in the data direction (a2b)
    ack_drops: int
    data_reordered: int  # frames the shaper sent without their delay, a2b
    ack_reordered: int


def _workload(bench: Bench, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
    return bench.emu.popen(bench.emu.host(host), [sys.executable, "-m", "testbed.workload",
                                                  *argv, *bench.prepared(host).workload_args()],
                           "workload", stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def upload(bench: Bench, size: int) -> Transfer:
    """`a` sends `size` bytes to `b`, captured on the Linux host's interface, with counters
    around it.

    Linux's interface, not always the client's: our daemon sends with PACKET_QDISC_BYPASS,
    and frames sent that way never reach the interface's packet taps, so tcpdump on our
    host sees only what it receives (test_tcpdump_sees_what_our_stack_sends below). On the
    Linux host the capture holds everything Linux sent and everything of ours it received,
    which is exactly what Linux had to parse."""
    linux_before, ours_before = nstat_snapshot(bench.linux_host), bench.our_counters()
    link_before = bench.link_counters("a2b"), bench.link_counters("b2a")
    intf = f"{bench.linux.host}-eth0"
    capture = start_capture(bench.emu, bench.linux.host, intf, bench.tmp / f"{intf}.pcap",
                            snaplen=2048)
    common = ["--port", str(PORT), "--seed", str(SEED), "--timeout", "60",
              "--direction", "upload"]
    server = _workload(bench, "b", ["server", "--listen", "0.0.0.0", *common,
                                    "--report", str(bench.tmp / "server.json")])
    assert server.stdout is not None
    assert b"LISTENING" in server.stdout.readline()
    client = _workload(bench, "a", ["client", "--connect", B_ADDR, "--bytes", str(size),
                                    *common, "--report", str(bench.tmp / "client.json")])
    try:
        for proc in (client, server):
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode(errors="replace")
    finally:
        capture_report = capture.stop()
    print(f"\ntcpdump: {capture_report}")
    (data_drops, data_reordered), (ack_drops, ack_reordered) = (
        (after[0] - before[0], after[1] - before[1])
        for before, after in zip(link_before, (bench.link_counters("a2b"),
                                               bench.link_counters("b2a")), strict=True))
    return Transfer(
        client=json.loads((bench.tmp / "client.json").read_text()),
        server=json.loads((bench.tmp / "server.json").read_text()),
        pcap=capture.path,
        linux_delta=counters_delta(linux_before, nstat_snapshot(bench.linux_host)),
        our_delta=counters_delta(ours_before, bench.our_counters()),
        data_drops=data_drops,
        ack_drops=ack_drops,
        data_reordered=data_reordered,
        ack_reordered=ack_reordered,
    )


def bad_checksums(pcap: Path) -> list[str]:
    """IPv4/TCP packets whose checksums tshark does not find good. Validation is off by
    default in Wireshark (offloads make local captures lie); the emulated interfaces have
    checksum offload off, so every checksum in the capture is the sender's own. A packet
    tshark could not verify counts as bad too, so a silently ignored preference fails here.

    One exception: a TCP checksum of 0xffff where tshark computes 0x0000. Both are zero in
    one's complement and a receiver's sum comes out the same (RFC 1624 §3); Linux sends it
    after an incremental update, and tshark only warns about it."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-n", "-o", "ip.check_checksum:TRUE",
         "-o", "tcp.check_checksum:TRUE",
         "-Y", "ip && tcp && !(ip.checksum.status == 1 && tcp.checksum.status == 1)",
         "-T", "fields", "-e", "frame.number", "-e", "ip.src", "-e", "ip.checksum.status",
         "-e", "tcp.checksum.status", "-e", "tcp.checksum", "-e", "tcp.checksum_calculated"],
        capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        _, _, ip_status, _, checksum, calculated = line.split("\t")
        if ip_status == "1" and int(checksum, 0) == 0xFFFF and int(calculated, 0) == 0:
            continue
        bad.append(line)
    return bad


def rising(delta: Mapping[str, int], names: tuple[str, ...]) -> dict[str, int]:
    return {name: delta.get(name, 0) for name in names if delta.get(name, 0)}


def overtaken_at_most(shaping: LinkShaping) -> int:
    """Data frames a reordered frame can overtake: those that left the rate queue less than
    one delay before it (full 1514-byte frames at the link rate)."""
    a2b = shaping.a2b
    if not a2b.reorder_pct:
        return 0
    assert a2b.rate_mbps is not None and a2b.jitter_ms == 0
    return math.ceil(a2b.delay_ms / 1000 * a2b.rate_mbps * 1e6 / 8 / 1514)


def check_transfer(transfer: Transfer, size: int, ours_sends: bool,
                   shaping: LinkShaping) -> dict[str, Any]:
    """Every assertion a transfer must pass; returns the numbers worth printing."""
    client, server = transfer.client, transfer.server
    assert client["error"] is None and server["error"] is None, (client, server)
    assert server["bytes"] == client["bytes"] == size
    assert server["sha256"] == client["sha256"] == payload_sha256(SEED, size)

    packets = read_pcap(transfer.pcap, use_cache=False)
    tcp = packets[packets["tcp_stream"].notna()]
    assert (tcp["ip_src"] == A_ADDR).sum() > size // 1500 * 0.9, "the capture missed data"
    assert (tcp["ip_src"] == B_ADDR).sum() > 0, "the capture missed the ACKs"
    assert tcp["tcp_stream"].nunique() == 1, tcp["tcp_stream"].unique()
    malformed = packets[packets["malformed"]]
    assert malformed.empty, malformed[["frame", "ip_src", "expert_message"]].to_string()
    assert bad_checksums(transfer.pcap) == []
    assert not tcp["rst"].any(), tcp[tcp["rst"]][["frame", "ip_src"]].to_string()

    # Retransmissions seen in the capture (tshark's analysis, data direction), bounded by
    # what the link dropped: a segment resent for a lost ACK or after a spurious timeout
    # counts too, hence 5x and a little slack. Reordering adds spurious ones: a reordered
    # data frame makes the receiver SACK past the frames it overtook, and a sender counting
    # three duplicate ACKs (or RACK before it has seen reordering) resends some of them,
    # each at most once per overtaking frame. tshark, too, calls an overtaken frame that
    # arrives late a retransmission when it cannot tell. Hence one per overtaken frame.
    data = tcp[(tcp["ip_src"] == A_ADDR) & (tcp["tcp_len"] > 0)]
    retransmitted = int(data["retransmission"].sum())
    bound = (5 * transfer.data_drops + overtaken_at_most(shaping) * transfer.data_reordered
             + 10)
    assert retransmitted <= bound, (retransmitted, transfer.data_drops)

    linux, ours = transfer.linux_delta, transfer.our_delta
    unknown = [name for name in LINUX_ERRORS if name not in linux]
    assert unknown == [], f"nstat does not know {unknown}"
    # At most one PAWS drop per overtaken frame; ACKs are clocked by data frames, so no more
    # of them than of data frames are in flight within one delay.
    paws_bound = overtaken_at_most(shaping) * (transfer.data_reordered + transfer.ack_reordered)
    assert rising(linux, tuple(n for n in LINUX_ERRORS if n not in PAWS)) == {}
    assert rising(ours, tuple(n for n in OUR_ERRORS if n not in PAWS)) == {}
    paws = linux.get("TcpExtPAWSEstab", 0) + ours.get("PAWSEstabRejected", 0)
    assert paws <= paws_bound, (rising(linux, PAWS), rising(ours, PAWS), paws_bound)
    sender_retrans = ours.get("RetransSegs", 0) if ours_sends else linux["TcpRetransSegs"]
    assert sender_retrans <= bound, (sender_retrans, transfer.data_drops)
    receiver = server
    return {
        "goodput_mbps": round(receiver["goodput_mbps"], 1),
        "duration_s": round(receiver["duration_s"], 2),
        "packets": len(tcp),
        "drops_a2b": transfer.data_drops,
        "drops_b2a": transfer.ack_drops,
        "reordered_a2b": transfer.data_reordered,
        "reordered_b2a": transfer.ack_reordered,
        "retrans_on_wire": retransmitted,
        "retrans_bound": bound,
        "paws": paws,
        "linux": rising(linux, LINUX_RECOVERY),
        "ours": rising(ours, OUR_RECOVERY),
    }


# --------------------------------------------------------------------------------------------
# The matrix

MATRIX = [pytest.param((ours, path), id=f"{who}-{path}")
          for path in PATHS
          for ours, who in (("a", "our_client_to_linux"), ("b", "linux_client_to_ours"))]


@pytest.mark.parametrize("bench", MATRIX, indirect=True)
def test_upload_100mb_interoperates(bench: Bench) -> None:
    ours_sends = bench.ours.host == "a"
    size = PATHS[bench.path][1]
    transfer = upload(bench, size)
    numbers = check_transfer(transfer, size, ours_sends, PATHS[bench.path][0])
    print(f"\n{'ours -> Linux' if ours_sends else 'Linux -> ours'}: {json.dumps(numbers)}")
    transfer.pcap.unlink()  # 100 MB each; a failed run keeps its capture for the post-mortem


# --------------------------------------------------------------------------------------------
# ICMP and RST: what Linux sees of our stack besides a transfer

_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@pytest.mark.parametrize("bench", [pytest.param(("b", LOSSY_NAME), id=LOSSY_NAME)],
                         indirect=True)
def test_linux_pings_our_stack_through_1pct_loss(bench: Bench) -> None:
    before = bench.our_counters()
    out = bench.emu.host("a").run(["ping", "-n", "-q", "-i", "0.005", "-W", "1",
                                   "-c", "1000", B_ADDR], check=False, timeout=60)
    match = _PING_SUMMARY.search(out)
    assert match, out
    sent, received = int(match.group(1)), int(match.group(2))
    delta = counters_delta(before, bench.our_counters())
    # Every echo request that arrived was answered; what ping lost is the link's doing.
    assert delta["IcmpOutEchoReps"] == delta["IcmpInEchos"] >= received
    # 1% each way: an echo and its reply both have to get through (expected 1.99% lost).
    # 1000 pings: about 20 lost, a loose window well outside the binomial spread.
    lost_pct = 100 * (sent - received) / sent
    print(f"\nping through 1% loss each way: {sent - received}/{sent} lost ({lost_pct:.1f}%)")
    assert 0.5 <= lost_pct <= 5.0, out


@pytest.mark.parametrize("bench", [pytest.param(("b", "clean"), id="clean")], indirect=True)
def test_linux_connecting_to_a_closed_port_of_ours_is_refused(bench: Bench) -> None:
    linux_before, ours_before = nstat_snapshot(bench.linux_host), bench.our_counters()
    out = bench.emu.host("a").run(
        [sys.executable, "-m", "testbed.workload", "client", "--proto", "tcp",
         "--connect", B_ADDR, "--port", "5999", "--bytes", "1", "--timeout", "10"],
        check=False, timeout=30)
    report = json.loads(out)
    assert report["error"] is not None and "ConnectionRefused" in report["error"], report
    linux = counters_delta(linux_before, nstat_snapshot(bench.linux_host))
    ours = counters_delta(ours_before, bench.our_counters())
    assert linux["TcpAttemptFails"] == 1 and linux["TcpActiveOpens"] == 1, linux
    assert ours["OutRsts"] == 1, ours


@pytest.mark.parametrize("bench", [pytest.param(("b", "clean"), id="clean")], indirect=True)
def test_tcpdump_sees_what_our_stack_sends(bench: Bench) -> None:
    capture = start_capture(bench.emu, "b", "b-eth0", bench.tmp / "b-eth0.pcap", snaplen=128)
    bench.emu.host("a").run(["ping", "-n", "-q", "-i", "0.01", "-c", "20", B_ADDR], check=False)
    capture.stop()
    packets = read_pcap(capture.path, use_cache=False)
    assert (packets["ip_src"] == A_ADDR).sum() >= 19  # the echo requests, received
    assert (packets["ip_src"] == B_ADDR).sum() >= 19  # our echo replies, sent
