"""Our MPTCP codecs and crypto judged by the two independent parties we have: the Linux
kernel's MPTCP (its options, keys, HMACs and checksums on the wire must all be what ours
compute) and tshark's MPTCP dissector (the options we emit must decode as we meant them).

The kernel part captures two real connections between two namespaces over two veth paths,
with a join and an announced address, the second connection with DSS checksums on.
"""

from __future__ import annotations

import ipaddress
import random
import shutil
import struct
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.runtime.pcap import PcapWriter
from testbed.stack.mptcp.crypto import (
    add_addr_hmac,
    join_ack_hmac,
    join_syn_ack_hmac,
    key_idsn,
    key_token,
    verify_dss_checksum,
)
from testbed.stack.mptcp.options import (
    AddAddr,
    Dss,
    DssMapping,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MpTcpRst,
    RemoveAddr,
    TcpRstReason,
    expand_to_64,
    parse_mptcp_option,
)
from testbed.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, emit_ethernet, parse_ethernet
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, ip_from_str, parse_ipv4
from testbed.stack.wire.tcp import (
    ACK,
    SYN,
    TcpSegment,
    UnknownOption,
    emit_tcp,
    parse_tcp,
)
from tests.netns.nsutil import NsHost, mptcp_endpoint, mptcp_two_paths, namespaces, reaped, tcpdump

pytestmark = pytest.mark.netns

TSHARK = shutil.which("tshark")
CLIENT_ADDRS = ("10.31.1.1", "10.31.2.1")
SERVER_ADDRS = ("10.31.1.2", "10.31.2.2")
SIGNAL_ID = 7  # the address ID the server announces its second address with
CLIENT_BYTES, SERVER_BYTES = 300_000, 120_000
CLIENT_SEED, SERVER_SEED = 1, 2

# The kernel's MPTCP from Python: IPPROTO_MPTCP is 262. The client connects, waits for the
# join, sends its bytes, half-closes, reads the answer to EOF and waits before closing so the
# last data ACKs cross; the server reads to EOF and answers.
_SERVER_CODE = """
import random, socket, sys
port, size, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as srv:
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    received = 0
    while chunk := conn.recv(65536):
        received += len(chunk)
    conn.sendall(random.Random(seed).randbytes(size))
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
    conn.close()
    print(received, flush=True)
"""
_CLIENT_CODE = """
import random, socket, sys, time
host, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262) as sock:
    sock.connect((host, port))
    time.sleep(0.3)
    sock.sendall(random.Random(seed).randbytes(size))
    sock.shutdown(socket.SHUT_WR)
    received = 0
    while chunk := sock.recv(65536):
        received += len(chunk)
    time.sleep(0.2)
print(received, flush=True)
"""


def _wire(client: NsHost, server: NsHost) -> list[str]:
    """Two veth paths (offloads off so every frame is one wire segment), the server's second
    address announced; returns the client's interfaces."""
    client_ifs = mptcp_two_paths(client, server, CLIENT_ADDRS, SERVER_ADDRS,
                                 [(f"mpc{i}", f"mps{i}") for i in (0, 1)])
    # The server announces its second address: an ADD_ADDR whose HMAC we can check.
    mptcp_endpoint(server, SERVER_ADDRS[1], "signal", id=SIGNAL_ID)
    return client_ifs


@dataclass
class Capture:
    pcaps: list[Path]
    server_received: int
    client_received: int


def _transfer(client: NsHost, server: NsHost, client_ifs: list[str], out_dir: Path,
              port: int) -> Capture:
    pcaps = [out_dir / f"{port}-{ifname}.pcap" for ifname in client_ifs]
    with tcpdump(client, list(zip(client_ifs, pcaps, strict=True)), snaplen=0):
        with reaped(server.popen([sys.executable, "-c", _SERVER_CODE, str(port),
                                  str(SERVER_BYTES), str(SERVER_SEED)],
                                 stdout=subprocess.PIPE, text=True)) as srv:
            assert srv.stdout is not None
            assert srv.stdout.readline().strip() == "listening"
            client_received = int(client.run([sys.executable, "-c", _CLIENT_CODE,
                                              SERVER_ADDRS[0], str(port), str(CLIENT_BYTES),
                                              str(CLIENT_SEED)]))
            server_received = int(srv.communicate(timeout=30)[0])
        time.sleep(0.3)  # the last ACKs
    return Capture(pcaps, server_received, client_received)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Capture]]:
    for tool in ("unshare", "nsenter", "ip", "tcpdump", "ethtool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    out_dir = tmp_path_factory.mktemp("mptcp")
    with namespaces("client", "server") as (client, server):
        client_ifs = _wire(client, server)
        result = {"plain": _transfer(client, server, client_ifs, out_dir, 5301)}
        for host in (client, server):
            host.run(["sysctl", "-q", "-w", "net.mptcp.checksum_enabled=1"])
        result["checksum"] = _transfer(client, server, client_ifs, out_dir, 5302)
        yield result


# --- reading the capture with our own codecs -----------------------------------------------

@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    seg: TcpSegment
    mptcp: tuple[tuple[bytes, MptcpOption], ...]  # (body as captured, what we parsed)


def read_frames(pcap: Path) -> Iterator[tuple[float, bytes]]:
    data = pcap.read_bytes()
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    i = 24
    while i + 16 <= len(data):
        seconds, fraction, captured, _original = struct.unpack_from(order + "IIII", data, i)
        i += 16
        yield seconds + fraction / (1e9 if nano else 1e6), data[i:i + captured]
        i += captured


def read_packets(pcaps: list[Path]) -> list[Packet]:
    """Every TCP packet of the captures, merged in time order, its MPTCP options parsed."""
    frames = sorted((frame for pcap in pcaps for frame in read_frames(pcap)),
                    key=lambda item: item[0])
    packets = []
    for _ts, raw in frames:
        frame = parse_ethernet(raw)
        if frame.ethertype != ETHERTYPE_IPV4:
            continue
        ip = parse_ipv4(frame.payload)
        if ip.protocol != PROTO_TCP:
            continue
        # Checksums are left to the NIC on veth (CHECKSUM_PARTIAL): not ours to verify here.
        seg = parse_tcp(ip.payload, ip.src, ip.dst, verify_checksum=False)
        options = tuple((opt.data, parse_mptcp_option(opt.data)) for opt in seg.options
                        if isinstance(opt, UnknownOption) and opt.kind == 30)
        packets.append(Packet(str(ipaddress.IPv4Address(ip.src)),
                              str(ipaddress.IPv4Address(ip.dst)), seg, options))
    return packets


Flow = tuple[str, int, str, int]


def flow_of(packet: Packet) -> Flow:
    return packet.src, packet.seg.src_port, packet.dst, packet.seg.dst_port


@dataclass
class Connection:
    """What the capture tells about its one MPTCP connection."""

    client_key: int = 0
    server_key: int = 0
    isn: dict[Flow, int] = field(default_factory=dict)  # subflow direction -> its ISN
    streams: dict[Flow, bytearray] = field(default_factory=lambda: defaultdict(bytearray))
    # (flow, DSN as sent, 64-bit?, relative subflow seq, data-level length, checksum, fin)
    mappings: list[tuple[Flow, int, bool, int, int, int | None, bool]] = field(
        default_factory=list)


def analyse(packets: list[Packet]) -> Connection:
    conn = Connection()
    for packet in packets:
        seg, flow = packet.seg, flow_of(packet)
        if seg.has(SYN):
            conn.isn[flow] = seg.seq
        for _body, option in packet.mptcp:
            if isinstance(option, MpCapable) and option.receiver_key is not None:
                assert option.sender_key is not None
                conn.client_key, conn.server_key = option.sender_key, option.receiver_key
                if option.data_level_length is not None:
                    # §3.1: the first data carries its mapping implicitly: DSN IDSN + 1,
                    # subflow sequence number 1.
                    conn.mappings.append((flow, key_idsn(option.sender_key) + 1 & (2**64 - 1),
                                          True, 1, option.data_level_length,
                                          option.checksum, False))
            if isinstance(option, Dss) and option.mapping is not None:
                m = option.mapping
                conn.mappings.append((flow, m.data_seq, m.data_seq_64, m.subflow_seq,
                                      m.data_level_length, m.checksum, option.data_fin))
        if seg.payload and flow in conn.isn:
            offset = (seg.seq - conn.isn[flow] - 1) % 2**32
            stream = conn.streams[flow]
            if len(stream) < offset + len(seg.payload):
                stream.extend(bytes(offset + len(seg.payload) - len(stream)))
            stream[offset:offset + len(seg.payload)] = seg.payload
    assert conn.client_key and conn.server_key, "no MP_CAPABLE third ACK in the capture"
    return conn


def sender_key(conn: Connection, flow: Flow) -> int:
    return conn.client_key if flow[0] in CLIENT_ADDRS else conn.server_key


@pytest.fixture(scope="module")
def parsed(captures: dict[str, Capture]) -> dict[str, list[Packet]]:
    return {name: read_packets(capture.pcaps) for name, capture in captures.items()}


NAMES = ["plain", "checksum"]


@pytest.mark.parametrize("name", NAMES)
def test_transfer_completed(captures: dict[str, Capture], name: str) -> None:
    assert captures[name].server_received == CLIENT_BYTES
    assert captures[name].client_received == SERVER_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_option_parses_and_reemits_byte_for_byte(
        parsed: dict[str, list[Packet]], name: str) -> None:
    seen: set[type] = set()
    for packet in parsed[name]:
        for body, option in packet.mptcp:
            assert option.emit() == body, option
            seen.add(type(option))
    # The scenario has them all: handshake, a join, data, and an announced address.
    assert {MpCapable, MpJoinSyn, MpJoinSynAck, MpJoinAck, Dss, AddAddr} <= seen


@pytest.mark.parametrize("name", NAMES)
def test_join_token_and_hmacs_match_ours(parsed: dict[str, list[Packet]], name: str) -> None:
    packets = parsed[name]
    conn = analyse(packets)
    syns: dict[Flow, MpJoinSyn] = {}
    syn_acks: dict[Flow, MpJoinSynAck] = {}  # keyed by the SYN's direction
    acks: dict[Flow, MpJoinAck] = {}
    for packet in packets:
        flow = flow_of(packet)
        reverse = (flow[2], flow[3], flow[0], flow[1])
        for _body, option in packet.mptcp:
            if isinstance(option, MpJoinSyn):
                syns[flow] = option
            elif isinstance(option, MpJoinSynAck):
                syn_acks[reverse] = option
            elif isinstance(option, MpJoinAck):
                acks[flow] = option
    assert syns and syns.keys() == syn_acks.keys() == acks.keys()
    for flow, syn in syns.items():
        # A is the host sending the MP_JOIN SYN, B the one answering (§3.2).
        key_a = sender_key(conn, flow)
        key_b = conn.server_key if key_a == conn.client_key else conn.client_key
        assert syn.receiver_token == key_token(key_b)
        nonces = {"nonce_a": syn.sender_nonce, "nonce_b": syn_acks[flow].sender_nonce}
        assert syn_acks[flow].sender_truncated_hmac == join_syn_ack_hmac(
            key_a=key_a, key_b=key_b, **nonces)
        assert acks[flow].sender_hmac == join_ack_hmac(key_a=key_a, key_b=key_b, **nonces)


@pytest.mark.parametrize("name", NAMES)
def test_add_addr_hmac_matches_ours(parsed: dict[str, list[Packet]], name: str) -> None:
    conn = analyse(parsed[name])
    announced = [opt for p in parsed[name] for _b, opt in p.mptcp
                 if isinstance(opt, AddAddr) and not opt.echo]
    echoed = [opt for p in parsed[name] for _b, opt in p.mptcp
              if isinstance(opt, AddAddr) and opt.echo]
    assert announced and echoed
    for option in announced:  # only the server announces
        assert option.address == ipaddress.IPv4Address(SERVER_ADDRS[1])
        assert option.address_id == SIGNAL_ID
        assert option.truncated_hmac == add_addr_hmac(
            sender_key=conn.server_key, receiver_key=conn.client_key,
            address_id=option.address_id, address=option.address, port=option.port)


def _mapping_payloads(conn: Connection) -> Iterator[tuple[int, int, int, int | None, bytes, Flow]]:
    """(64-bit DSN, subflow seq, data-level length, checksum, the bytes mapped, flow)."""
    for flow, data_seq, wide, subflow_seq, length, checksum, fin in conn.mappings:
        idsn = key_idsn(sender_key(conn, flow))
        dsn = data_seq if wide else expand_to_64(data_seq, idsn)
        size = length - 1 if fin else length  # DATA_FIN takes one of the length (§3.3.3)
        if size == 0 and subflow_seq == 0:
            yield dsn, subflow_seq, length, checksum, b"", flow
            continue
        stream = conn.streams[flow]
        start = subflow_seq - 1  # relative subflow sequence 1 is the first data byte
        assert len(stream) >= start + size, "a mapping covers bytes the capture lacks"
        yield dsn, subflow_seq, length, checksum, bytes(stream[start:start + size]), flow


@pytest.mark.parametrize("name", NAMES)
def test_dss_mappings_start_at_our_idsn_and_map_the_sent_bytes(
        parsed: dict[str, list[Packet]], name: str) -> None:
    conn = analyse(parsed[name])
    sent = {conn.client_key: random.Random(CLIENT_SEED).randbytes(CLIENT_BYTES),
            conn.server_key: random.Random(SERVER_SEED).randbytes(SERVER_BYTES)}
    lowest: dict[int, int] = {}
    for dsn, _ssn, _length, _csum, payload, flow in _mapping_payloads(conn):
        key = sender_key(conn, flow)
        relative = (dsn - key_idsn(key)) % 2**64  # 1 is the first data byte (§3.3)
        lowest[key] = min(lowest.get(key, relative), relative)
        assert 1 <= relative <= len(sent[key]) + 1
        assert payload == sent[key][relative - 1:relative - 1 + len(payload)]
    assert lowest == {conn.client_key: 1, conn.server_key: 1}


def test_kernel_dss_checksums_verify_with_ours(parsed: dict[str, list[Packet]]) -> None:
    conn = analyse(parsed["checksum"])
    checked = 0
    for dsn, ssn, length, checksum, payload, _flow in _mapping_payloads(conn):
        assert checksum is not None, "checksums negotiated, yet a mapping without one"
        assert verify_dss_checksum(dsn, ssn, length, payload, checksum), (dsn, ssn, length)
        checked += 1
    assert checked > 10


def test_plain_connection_has_no_dss_checksum(parsed: dict[str, list[Packet]]) -> None:
    conn = analyse(parsed["plain"])
    assert conn.mappings
    assert all(checksum is None for *_rest, checksum, _fin in conn.mappings)


# --- our options decoded by tshark ---------------------------------------------------------

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
KEY_A, KEY_B = 0x0123456789ABCDEF, 0xFEDCBA9876543210
HMAC20 = bytes(range(20))


@dataclass(frozen=True)
class Case:
    name: str
    option: MptcpOption
    flags: int
    expected: dict[str, str]


CASES = [
    Case("mp_capable syn", MpCapable(checksum_required=True), SYN, {
        "tcp.options.mptcp.subtype": "0", "tcp.options.mptcp.version": "1",
        "tcp.options.mptcp.checksumreq.flags": "1", "tcp.options.mptcp.sha256.flag": "1"}),
    Case("mp_capable data", MpCapable(sender_key=KEY_A, receiver_key=KEY_B,
                                      data_level_length=5, checksum=0xBEEF), ACK, {
        "tcp.options.mptcp.sendkey": str(KEY_A), "tcp.options.mptcp.recvkey": str(KEY_B),
        "tcp.options.mptcp.datalvllen": "5", "tcp.options.mptcp.checksum": "0xbeef"}),
    Case("mp_join syn", MpJoinSyn(0xA1B2C3D4, 0x11223344, 3, backup=True), SYN, {
        "tcp.options.mptcp.subtype": "1", "tcp.options.mptcp.recvtok": str(0xA1B2C3D4),
        "tcp.options.mptcp.sendrand": str(0x11223344), "tcp.options.mptcp.addrid": "3",
        "tcp.options.mptcp.backup.flag": "1"}),
    Case("mp_join syn-ack", MpJoinSynAck(bytes.fromhex("0102030405060708"), 0x55667788, 4),
         SYN | ACK, {"tcp.options.mptcp.sendtrunchmac": str(0x0102030405060708),
                     "tcp.options.mptcp.sendrand": str(0x55667788),
                     "tcp.options.mptcp.addrid": "4"}),
    Case("mp_join ack", MpJoinAck(HMAC20), ACK, {
        "tcp.options.mptcp.sendhmac": HMAC20.hex()}),
    Case("dss", Dss(data_ack=0x1122334455667788, data_ack_64=True, data_fin=True,
                    mapping=DssMapping(0x99AABBCCDDEEFF00, 1000, 1400, checksum=0x1234)), ACK, {
        "tcp.options.mptcp.subtype": "2", "tcp.options.mptcp.rawdataack": str(0x1122334455667788),
        "tcp.options.mptcp.rawdataseqno": str(0x99AABBCCDDEEFF00),
        "tcp.options.mptcp.subflowseqno": "1000", "tcp.options.mptcp.datalvllen": "1400",
        # tshark 4.0 shows no DSS checksum field at all (even after a handshake with A set),
        # so only its consuming the two bytes without calling the option malformed is checked.
        "tcp.options.mptcp.datafin.flag": "1",
        "tcp.options.mptcp.dataack8.flag": "1", "tcp.options.mptcp.dseqn8.flag": "1"}),
    Case("dss 32-bit", Dss(data_ack=7, mapping=DssMapping(9, 1, 10, data_seq_64=False)), ACK, {
        "tcp.options.mptcp.rawdataack": "7", "tcp.options.mptcp.rawdataseqno": "9",
        "tcp.options.mptcp.dataack8.flag": "0", "tcp.options.mptcp.dseqn8.flag": "0"}),
    Case("add_addr v4", AddAddr(9, ipaddress.IPv4Address("192.0.2.7"), 8080,
                                bytes.fromhex("a1a2a3a4a5a6a7a8")), ACK, {
        "tcp.options.mptcp.subtype": "3", "tcp.options.mptcp.addrid": "9",
        "tcp.options.mptcp.ipv4": "192.0.2.7", "tcp.options.mptcp.port": "8080",
        "tcp.options.mptcp.echo": "0",
        "tcp.options.mptcp.addaddrtrunchmac": str(0xA1A2A3A4A5A6A7A8)}),
    Case("add_addr v6 echo", AddAddr(2, ipaddress.IPv6Address("2001:db8::5"), echo=True), ACK,
         {"tcp.options.mptcp.ipv6": "2001:db8::5", "tcp.options.mptcp.echo": "1"}),
    Case("remove_addr", RemoveAddr((4, 5, 6)), ACK, {
        "tcp.options.mptcp.subtype": "4", "tcp.options.mptcp.addrid": "4,5,6"}),
    Case("mp_prio", MpPrio(backup=True), ACK, {
        "tcp.options.mptcp.subtype": "5", "tcp.options.mptcp.backup.flag": "1"}),
    Case("mp_fail", MpFail(0x0102030405060708), ACK, {"tcp.options.mptcp.subtype": "6"}),
    Case("mp_fastclose", MpFastclose(KEY_B), ACK, {
        "tcp.options.mptcp.subtype": "7", "tcp.options.mptcp.recvkey": str(KEY_B)}),
    Case("mp_tcprst", MpTcpRst(TcpRstReason.MIDDLEBOX_INTERFERENCE, transient=True), ACK, {
        "tcp.options.mptcp.subtype": "8", "tcp.options.mptcp.flag_T.flag": "1",
        "tcp.options.mptcp.rst_reason": "0x06"}),
]
TSHARK_FIELDS = sorted({name for case in CASES for name in case.expected} | {"_ws.malformed"})


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    pcap = tmp_path_factory.mktemp("mptcp-emit") / "options.pcap"
    client, server = ip_from_str(CLIENT), ip_from_str(SERVER)
    with PcapWriter(pcap) as writer:
        for i, case in enumerate(CASES):
            seg = TcpSegment(40000 + i, 5201, 1000, 2000 if case.flags & ACK else 0,
                             case.flags, 65535, options=(case.option.to_tcp_option(),))
            datagram = emit_ipv4(Ipv4Packet(client, server, PROTO_TCP,
                                            emit_tcp(seg, client, server)))
            writer.write(emit_ethernet(EthernetFrame(bytes.fromhex("020000000002"),
                                                     bytes.fromhex("020000000001"),
                                                     ETHERTYPE_IPV4, datagram)),
                         1_700_000_000 + i / 1000)
    command = [TSHARK, "-r", str(pcap), "-n", "-T", "fields", "-E", "occurrence=a",
               "-E", "aggregator=,"]
    for name in TSHARK_FIELDS:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
            for line in out.splitlines()]
    assert len(rows) == len(CASES)
    return rows


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.name for case in CASES])
def test_tshark_decodes_our_options(decoded: list[dict[str, str]], index: int) -> None:
    row, case = decoded[index], CASES[index]
    assert row["_ws.malformed"] == ""
    assert {name: row[name] for name in case.expected} == case.expected
