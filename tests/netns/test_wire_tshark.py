"""Our codecs judged by an independent dissector: frames we emit, written with PcapWriter,
must decode in tshark field for field, with good checksums and nothing malformed.

No root is needed, only tshark (skipped when it is missing). It lives in tests/netns because it
runs a system tool; that folder's conftest also skips it without root or Mininet.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.runtime.pcap import PcapWriter
from testbed.stack.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, emit_arp
from testbed.stack.wire.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetFrame,
    emit_ethernet,
    mac_from_str,
)
from testbed.stack.wire.icmp import UNREACH_PORT, IcmpEcho, dest_unreachable, emit_icmp
from testbed.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, Ipv4Packet, emit_ipv4, ip_from_str
from testbed.stack.wire.tcp import (
    ACK,
    PSH,
    SYN,
    MssOption,
    SackOption,
    SackPermittedOption,
    TcpSegment,
    TimestampOption,
    UnknownOption,
    WindowScaleOption,
    emit_tcp,
)

TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLIENT_IP, SERVER_IP = "10.0.0.1", "10.0.0.2"
CLIENT_KEY = bytes.fromhex("0123456789abcdef")
SERVER_KEY = bytes.fromhex("fedcba9876543210")

FIELDS = [
    "eth.src", "eth.dst", "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4",
    "arp.dst.hw_mac", "arp.dst.proto_ipv4", "ip.src", "ip.dst", "ip.ttl", "ip.id",
    "ip.flags.df", "ip.len", "ip.checksum.status", "icmp.type", "icmp.code", "icmp.ident",
    "icmp.seq", "icmp.checksum.status", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.seq_raw",
    "tcp.ack_raw", "tcp.hdr_len", "tcp.flags.syn", "tcp.flags.ack", "tcp.flags.push",
    "tcp.window_size_value", "tcp.option_kind", "tcp.options.mss_val",
    "tcp.options.wscale.shift", "tcp.options.timestamp.tsval", "tcp.options.timestamp.tsecr",
    "tcp.options.sack_le", "tcp.options.sack_re", "tcp.options.mptcp.subtype",
    "tcp.options.mptcp.version", "tcp.options.mptcp.sendkey", "tcp.options.mptcp.recvkey",
    "tcp.payload", "tcp.checksum.status", "_ws.malformed",
]


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    expected: dict[str, str]  # tshark field -> its text in `-T fields` output


def ethernet(src: str, dst: bytes, ethertype: int, payload: bytes) -> bytes:
    return emit_ethernet(EthernetFrame(dst, mac_from_str(src), ethertype, payload))


def ip_frame(src: str, dst: str, protocol: int, payload: bytes, ident: int = 0) -> bytes:
    packet = Ipv4Packet(ip_from_str(src), ip_from_str(dst), protocol, payload, ident=ident)
    dst_mac = mac_from_str(SERVER_MAC if dst == SERVER_IP else CLIENT_MAC)
    src_mac = CLIENT_MAC if src == CLIENT_IP else SERVER_MAC
    return ethernet(src_mac, dst_mac, ETHERTYPE_IPV4, emit_ipv4(packet))


def tcp_frame(src: str, dst: str, seg: TcpSegment) -> bytes:
    return ip_frame(src, dst, PROTO_TCP, emit_tcp(seg, ip_from_str(src), ip_from_str(dst)))


GOOD = "1"  # tshark's checksum status: 0 bad, 1 good, 2 unverified


def build_cases() -> list[Case]:
    client, server = ip_from_str(CLIENT_IP), ip_from_str(SERVER_IP)
    syn = TcpSegment(40000, 5201, 0xFFFFFFF0, 0, SYN, 64240, options=(
        MssOption(1460), SackPermittedOption(), TimestampOption(123456789, 0),
        WindowScaleOption(7)))
    syn_ack = TcpSegment(5201, 40000, 1000, 0xFFFFFFF1, SYN | ACK, 65160, options=(
        MssOption(1400), SackPermittedOption(), TimestampOption(987654321, 123456789),
        WindowScaleOption(9)))
    data = TcpSegment(40000, 5201, 0xFFFFFFF1, 1001, ACK | PSH, 502, options=(
        TimestampOption(123456800, 987654321),
        SackOption(((2000, 3448), (4896, 6344), (0xFFFFFF00, 0x10)))), payload=b"hello, tshark")
    mp_syn = TcpSegment(40001, 5201, 77, 0, SYN, 64240, options=(
        MssOption(1460), UnknownOption(30, bytes([0x01, 0x81]))))  # MP_CAPABLE v1, A and H
    mp_ack = TcpSegment(40001, 5201, 78, 501, ACK, 502, options=(
        TimestampOption(5, 6), UnknownOption(30, bytes([0x01, 0x81]) + CLIENT_KEY + SERVER_KEY)))
    syn_datagram = emit_ipv4(Ipv4Packet(client, server, PROTO_TCP,
                                        emit_tcp(syn, client, server)))
    return [
        Case("arp request", ethernet(CLIENT_MAC, BROADCAST_MAC, ETHERTYPE_ARP, emit_arp(
            ArpPacket(ARP_REQUEST, mac_from_str(CLIENT_MAC), client, bytes(6), server))), {
                "eth.dst": "ff:ff:ff:ff:ff:ff", "arp.opcode": "1",
                "arp.src.hw_mac": CLIENT_MAC, "arp.src.proto_ipv4": CLIENT_IP,
                "arp.dst.hw_mac": "00:00:00:00:00:00", "arp.dst.proto_ipv4": SERVER_IP}),
        Case("arp reply", ethernet(SERVER_MAC, mac_from_str(CLIENT_MAC), ETHERTYPE_ARP, emit_arp(
            ArpPacket(ARP_REPLY, mac_from_str(SERVER_MAC), server, mac_from_str(CLIENT_MAC),
                      client))), {
                "eth.src": SERVER_MAC, "eth.dst": CLIENT_MAC, "arp.opcode": "2",
                "arp.src.hw_mac": SERVER_MAC, "arp.src.proto_ipv4": SERVER_IP,
                "arp.dst.hw_mac": CLIENT_MAC, "arp.dst.proto_ipv4": CLIENT_IP}),
        Case("echo request", ip_frame(CLIENT_IP, SERVER_IP, PROTO_ICMP, emit_icmp(
            IcmpEcho(False, 0x1234, 7, b"0123456789abcdefg")), ident=0xBEEF), {
                "ip.src": CLIENT_IP, "ip.dst": SERVER_IP, "ip.ttl": "64", "ip.id": "0xbeef",
                "ip.flags.df": "1", "ip.len": "45", "ip.checksum.status": GOOD,
                "icmp.type": "8", "icmp.code": "0", "icmp.ident": "4660", "icmp.seq": "7",
                "icmp.checksum.status": GOOD}),
        Case("echo reply", ip_frame(SERVER_IP, CLIENT_IP, PROTO_ICMP, emit_icmp(
            IcmpEcho(True, 0x1234, 7, b"0123456789abcdefg"))), {
                "ip.src": SERVER_IP, "icmp.type": "0", "icmp.ident": "4660", "icmp.seq": "7",
                "ip.checksum.status": GOOD, "icmp.checksum.status": GOOD}),
        Case("port unreachable", ip_frame(SERVER_IP, CLIENT_IP, PROTO_ICMP, emit_icmp(
            dest_unreachable(UNREACH_PORT, syn_datagram))), {
                # tshark also dissects the quoted datagram: the second values are the quote's
                "icmp.type": "3", "icmp.code": "3", "icmp.checksum.status": GOOD,
                "ip.src": f"{SERVER_IP},{CLIENT_IP}", "tcp.srcport": "40000",
                "tcp.dstport": "5201", "tcp.seq": str(0xFFFFFFF0)}),
        Case("syn", tcp_frame(CLIENT_IP, SERVER_IP, syn), {
                "tcp.srcport": "40000", "tcp.dstport": "5201", "tcp.seq_raw": "4294967280",
                "tcp.ack_raw": "0", "tcp.hdr_len": "40", "tcp.flags.syn": "1",
                "tcp.flags.ack": "0", "tcp.window_size_value": "64240",
                "tcp.option_kind": "2,4,8,3,1", "tcp.options.mss_val": "1460",
                "tcp.options.wscale.shift": "7", "tcp.options.timestamp.tsval": "123456789",
                "tcp.options.timestamp.tsecr": "0", "tcp.checksum.status": GOOD,
                "ip.checksum.status": GOOD}),
        Case("syn-ack", tcp_frame(SERVER_IP, CLIENT_IP, syn_ack), {
                "tcp.srcport": "5201", "tcp.seq_raw": "1000", "tcp.ack_raw": "4294967281",
                "tcp.flags.syn": "1", "tcp.flags.ack": "1", "tcp.options.mss_val": "1400",
                "tcp.options.wscale.shift": "9", "tcp.options.timestamp.tsval": "987654321",
                "tcp.options.timestamp.tsecr": "123456789", "tcp.checksum.status": GOOD}),
        Case("data with sack", tcp_frame(CLIENT_IP, SERVER_IP, data), {
                "tcp.seq_raw": "4294967281", "tcp.ack_raw": "1001", "tcp.hdr_len": "56",
                "tcp.flags.push": "1", "tcp.option_kind": "8,5",
                "tcp.options.sack_le": f"2000,4896,{0xFFFFFF00}",
                "tcp.options.sack_re": "3448,6344,16",
                "tcp.options.timestamp.tsval": "123456800",
                "tcp.payload": b"hello, tshark".hex(), "tcp.checksum.status": GOOD}),
        Case("mptcp syn", tcp_frame(CLIENT_IP, SERVER_IP, mp_syn), {
                "tcp.option_kind": "2,30", "tcp.options.mptcp.subtype": "0",
                "tcp.options.mptcp.version": "1", "tcp.checksum.status": GOOD}),
        Case("mptcp third ack", tcp_frame(CLIENT_IP, SERVER_IP, mp_ack), {
                "tcp.option_kind": "8,30,1,1", "tcp.options.mptcp.subtype": "0",
                "tcp.options.mptcp.sendkey": str(int.from_bytes(CLIENT_KEY, "big")),
                "tcp.options.mptcp.recvkey": str(int.from_bytes(SERVER_KEY, "big")),
                "tcp.checksum.status": GOOD}),
    ]


def tshark_fields(pcap: Path) -> list[dict[str, str]]:
    assert TSHARK is not None
    command = [TSHARK, "-r", str(pcap), "-n", "-T", "fields", "-E", "occurrence=a",
               "-E", "aggregator=,", "-o", "tcp.check_checksum:TRUE",
               "-o", "ip.check_checksum:TRUE", "-o", "tcp.relative_sequence_numbers:FALSE",
               "-o", "tcp.analyze_sequence_numbers:FALSE"]
    for name in FIELDS:
        command += ["-e", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return [dict(zip(FIELDS, line.split("\t"), strict=True))
            for line in result.stdout.splitlines()]


CASES = build_cases()


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    pcap = tmp_path_factory.mktemp("wire") / "codecs.pcap"
    with PcapWriter(pcap) as writer:
        for i, case in enumerate(CASES):
            writer.write(case.frame, 1_700_000_000 + i / 1000)
    rows = tshark_fields(pcap)
    assert len(rows) == len(CASES)
    return rows


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c.name for c in CASES])
def test_tshark_decodes_like_we_encode(decoded: list[dict[str, str]], index: int) -> None:
    row, case = decoded[index], CASES[index]
    assert row["_ws.malformed"] == ""
    assert {name: row[name] for name in case.expected} == case.expected
    # No checksum tshark verified may be anything but good.
    for name in ("ip.checksum.status", "icmp.checksum.status", "tcp.checksum.status"):
        assert set(row[name].split(",")) <= {"", GOOD}, (name, row[name])
