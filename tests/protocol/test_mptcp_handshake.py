"""MPTCP handshakes and signals checked option by option on the wire (netsim's trace parsed
with our codecs): MP_CAPABLE keys, tokens and IDSNs, joins and forged joins, ADD_ADDR with
its HMAC and echo, MP_PRIO, REMOVE_ADDR, and every fallback to TCP."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator

import pytest

from testbed.stack.mptcp import crypto
from testbed.stack.mptcp.connection import MptcpConfig
from testbed.stack.mptcp.options import (
    AddAddr,
    Dss,
    MpCapable,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MpTcpRst,
    RemoveAddr,
    TcpRstReason,
    mptcp_options,
)
from testbed.stack.tcp.connection import TcpState
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import ACK, OPT_MPTCP, RST, SYN, TcpSegment, emit_tcp, parse_tcp
from tests.protocol.hosts import BulkSender, Sink, TcpHost
from tests.protocol.mptcp_hosts import (
    MptcpHost,
    MptcpSender,
    MptcpSink,
    route_by_address,
)
from tests.protocol.netsim import Network, PathConditions

A1, A2 = bytes([10, 0, 1, 1]), bytes([10, 0, 2, 1])
B1, B2 = bytes([10, 0, 0, 2]), bytes([10, 0, 3, 2])
PORT = 8080


@dataclasses.dataclass
class Wire:
    time: float
    path: str
    src: bytes
    dst: bytes
    seg: TcpSegment
    opts: list[MptcpOption]


def on_wire(net: Network) -> Iterator[Wire]:
    """Every packet as sent, parsed."""
    for entry in net.trace:
        if entry.fate != "sent":
            continue
        ip = parse_ipv4(entry.packet)
        seg = parse_tcp(ip.payload, ip.src, ip.dst)
        yield Wire(entry.time, entry.path, ip.src, ip.dst, seg, list(mptcp_options(seg.options)))


def one(opts: list[MptcpOption], kind: type) -> MptcpOption:
    found = [o for o in opts if isinstance(o, kind)]
    assert len(found) == 1, opts
    return found[0]


def pair(seed: int = 1, *, client_addrs: tuple[bytes, ...] = (A1,),
         server_addrs: tuple[bytes, ...] = (B1,), client_config: MptcpConfig | None = None,
         server_config: MptcpConfig | None = None,
         delay: float = 0.01) -> tuple[Network, MptcpHost, MptcpHost, MptcpSink]:
    net = Network(seed)
    client = MptcpHost("client", list(client_addrs), seed=seed * 2 + 1, config=client_config)
    server = MptcpHost("server", list(server_addrs), seed=seed * 2 + 2, config=server_config)
    net.attach(client)
    net.attach(server)
    table: dict[bytes, str] = {}
    if len(client_addrs) >= len(server_addrs):
        for addr in client_addrs:
            table[addr] = net.connect("client", "server", PathConditions(delay_s=delay))
    else:
        for addr in server_addrs:
            table[addr] = net.connect("client", "server", PathConditions(delay_s=delay))
    net.route = route_by_address(table)
    sink = MptcpSink(server.stack.listen(B1, PORT))
    server.apps.append(sink)
    return net, client, server, sink


def test_mp_capable_handshake_and_first_data_exactly() -> None:
    net, client, server, sink = pair()
    conn = client.stack.connect(A1, B1, PORT, 0.0)
    net.run(0.5)
    peer = sink.conns[0]
    assert conn.established and peer.established and not conn.fallback
    wire = list(on_wire(net))
    assert len(wire) == 3
    syn, syn_ack, third = wire
    assert syn.seg.flags == SYN and syn_ack.seg.flags == SYN | ACK and third.seg.flags == ACK
    # §3.1: v1 SYN carries no key; H (HMAC-SHA256) set, no checksum asked for.
    assert one(syn.opts, MpCapable) == MpCapable(version=1, hmac_sha256=True)
    # SYN/ACK: the server's key; third ACK: both keys, the client's first.
    assert one(syn_ack.opts, MpCapable) == MpCapable(sender_key=peer.local_key)
    assert one(third.opts, MpCapable) == MpCapable(sender_key=conn.local_key,
                                                   receiver_key=peer.local_key)
    assert conn.remote_key == peer.local_key and peer.remote_key == conn.local_key
    conn.send(b"hello, multipath" * 10, net.now)
    net.run(1.0)
    wire = list(on_wire(net))
    # Tokens and IDSNs come from the keys (§3.1).
    assert conn.local_token == crypto.key_token(conn.local_key) == peer.remote_token
    assert peer.local_token == crypto.key_token(peer.local_key) == conn.remote_token
    assert server.stack.tokens.get(peer.local_token) is peer
    # First data: MP_CAPABLE with both keys and the data-level length; DSN is IDSN + 1.
    first = next(w for w in wire if w.src == A1 and w.seg.payload)
    cap = one(first.opts, MpCapable)
    assert isinstance(cap, MpCapable)
    assert (cap.sender_key, cap.receiver_key) == (conn.local_key, peer.local_key)
    assert cap.data_level_length == len(first.seg.payload) == 160
    # The server's answer data-acks IDSN + 1 + 160 with a 64-bit data ACK.
    answer = next(w for w in wire if w.src == B1 and w.time > first.time)
    dss = one(answer.opts, Dss)
    assert isinstance(dss, Dss) and dss.data_ack_64
    assert dss.data_ack == (crypto.key_idsn(conn.local_key) + 1 + 160) % (1 << 64)
    assert sink.data() == b"hello, multipath" * 10
    assert server.stack.counters["MPCapableSYNRX"] == 1
    assert server.stack.counters["MPCapableACKRX"] == 1
    assert client.stack.counters["MPCapableSYNTX"] == 1
    assert client.stack.counters["MPCapableSYNACKRX"] == 1


def test_close_without_data_exchanges_data_fins_and_closes_both_ends() -> None:
    net, client, server, sink = pair()
    conn = client.stack.connect(A1, B1, PORT, 0.0)
    net.run(0.5)
    conn.close(net.now)
    net.run(30.0, stop=lambda: conn.closed and not server.stack.connections())
    peer = sink.conns[0]
    assert conn.closed and peer.closed and conn.error is None and peer.error is None
    assert conn.at_eof and peer.at_eof and not conn.fallback
    fins = [w for w in on_wire(net) for o in w.opts if isinstance(o, Dss) and o.data_fin]
    assert {w.src for w in fins} == {A1, B1}
    assert not client.stack.subflow_connections() and not server.stack.subflow_connections()


def test_data_mappings_carry_dsn_relative_subflow_seq_and_length() -> None:
    net, client, _server, sink = pair()
    data = random.Random(3).randbytes(50_000)
    reply = random.Random(4).randbytes(20_000)
    sink.reply = reply
    sender = MptcpSender(B1, PORT, data)
    client.apps.append(sender)
    net.run(5.0)
    conn, peer = sender.conn, sink.conns[0]
    assert conn is not None
    iss_server = conn.subflows[0].tcp.irs if conn.subflows else None
    server_idsn = crypto.key_idsn(peer.local_key)
    seen = 0
    for w in on_wire(net):
        if w.src != B1 or not w.seg.payload:
            continue
        dss = one(w.opts, Dss)
        assert isinstance(dss, Dss) and dss.mapping is not None
        m = dss.mapping
        # One mapping per segment, exactly its bytes.
        assert m.data_level_length == len(w.seg.payload)
        if iss_server is not None:
            assert m.subflow_seq == (w.seg.seq - iss_server) % (1 << 32)
        offset = (m.data_seq - server_idsn - 1) % (1 << 64)
        assert reply[offset:offset + len(w.seg.payload)] == w.seg.payload
        seen += len(w.seg.payload)
    assert seen >= len(reply)
    assert sink.data() == data


def test_fallback_when_the_server_is_plain_tcp() -> None:
    net = Network(2)
    client = MptcpHost("client", [A1], seed=5)
    server = TcpHost("server", B1, seed=6)
    net.attach(client)
    net.attach(server)
    net.connect("client", "server", PathConditions(delay_s=0.01, loss=0.01))
    sink = Sink(server.stack.listen(B1, PORT))
    server.apps.append(sink)
    data = random.Random(8).randbytes(300_000)
    sender = MptcpSender(B1, PORT, data)
    client.apps.append(sender)
    net.run(120.0, stop=lambda: sender.conn is not None and sender.conn.closed
            and not server.stack.connections())
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    conn = sender.conn
    assert conn is not None and conn.fallback and conn.error is None and conn.closed
    assert client.stack.counters["MPCapableFallbackSYNACK"] == 1
    # After the SYN, no MPTCP option left the client.
    assert all(not w.opts for w in on_wire(net) if w.src == A1 and not w.seg.has(SYN))


def test_plain_tcp_client_gets_a_fallback_connection() -> None:
    net = Network(3)
    client = TcpHost("client", A1, seed=5)
    server = MptcpHost("server", [B1], seed=6)
    net.attach(client)
    net.attach(server)
    net.connect("client", "server", PathConditions(delay_s=0.01))
    sink = MptcpSink(server.stack.listen(B1, PORT))
    server.apps.append(sink)
    data = random.Random(9).randbytes(200_000)
    sender = BulkSender(B1, PORT, data)
    client.apps.append(sender)
    net.run(60.0, stop=lambda: sender.conn is not None and sender.conn.closed
            and not server.stack.connections())
    assert sink.data() == data
    assert sink.conns[0].fallback and sink.conns[0].closed and sink.conns[0].error is None
    assert "MPCapableSYNRX" not in server.stack.counters
    assert all(not w.opts for w in on_wire(net))


class StripMptcpFromData:
    """A middlebox on the client's egress: MPTCP options vanish from segments with data."""

    def __init__(self, inner: MptcpHost) -> None:
        self.inner = inner
        self.name = inner.name
        self.stripped = 0

    def receive(self, packet: bytes, now: float) -> None:
        self.inner.receive(packet, now)

    def packets_to_send(self, now: float) -> list[bytes]:
        out = []
        for packet in self.inner.packets_to_send(now):
            ip = parse_ipv4(packet)
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
            if seg.payload and any(getattr(o, "kind", None) == OPT_MPTCP for o in seg.options):
                kept = tuple(o for o in seg.options if getattr(o, "kind", None) != OPT_MPTCP)
                seg = dataclasses.replace(seg, options=kept)
                self.stripped += 1
                packet = emit_ipv4(Ipv4Packet(ip.src, ip.dst, PROTO_TCP,
                                              emit_tcp(seg, ip.src, ip.dst)))
            out.append(packet)
        return out

    def next_timer(self) -> float | None:
        return self.inner.next_timer()

    def handle_timer(self, now: float) -> None:
        self.inner.handle_timer(now)


@pytest.mark.parametrize("third_ack_alone", [True, False])
def test_fallback_when_a_middlebox_strips_mptcp_from_data(third_ack_alone: bool) -> None:
    """§3.7: with the third ACK alone, the server knows the keys and then sees data
    without DSS; with data on the third ACK, the MP_CAPABLE is stripped from it (§3.1)."""
    net = Network(4)
    client = MptcpHost("client", [A1], seed=7)
    box = StripMptcpFromData(client)
    server = MptcpHost("server", [B1], seed=8)
    net.attach(box)
    net.attach(server)
    net.connect("client", "server", PathConditions(delay_s=0.01, loss=0.01))
    sink = MptcpSink(server.stack.listen(B1, PORT), reply=random.Random(2).randbytes(100_000))
    server.apps.append(sink)
    data = random.Random(10).randbytes(400_000)
    sender = MptcpSender(B1, PORT, data, start_at=0.2 if third_ack_alone else 0.0)
    reader_data = bytearray()

    class Reader:
        def step(self, host: MptcpHost, now: float) -> None:
            if sender.conn is not None:
                reader_data.extend(sender.conn.recv(1 << 20))

    client.apps += [sender, Reader()]  # type: ignore[list-item]
    net.run(0.2)  # the sender waits for this before writing when third_ack_alone
    net.run(120.0, stop=lambda: sender.conn is not None and sender.conn.closed
            and not server.stack.connections() and not client.stack.connections())
    assert box.stripped > 0
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    assert bytes(reader_data) == sink.reply
    conn, peer = sender.conn, sink.conns[0]
    assert conn is not None and conn.fallback and peer.fallback
    assert conn.error is None and peer.error is None
    if third_ack_alone:
        # The server had sent DSSes already: it tells the client with the infinite mapping.
        assert server.stack.counters["MPCapableACKRX"] == 1
        assert server.stack.counters["DssFallback"] == 1
        assert server.stack.counters["InfiniteMapTx"] == 1
        assert client.stack.counters["InfiniteMapRx"] == 1
    else:
        # The client learns it from ACKs of its data that carry no MPTCP option.
        assert server.stack.counters["MPCapableFallbackACK"] == 1
        assert client.stack.counters["DssFallback"] == 1


def established_pair(seed: int = 5) -> tuple[Network, MptcpHost, MptcpHost, MptcpSink,
                                             MptcpSender]:
    net, client, server, sink = pair(seed)
    sender = MptcpSender(B1, PORT, b"x" * 5000, close_when_done=False)
    client.apps.append(sender)
    net.run(1.0)
    assert sender.conn is not None and sender.conn.established and sink.conns
    return net, client, server, sink, sender


def join_syn(token: int, nonce: int = 0x01020304, sport: int = 40000,
             seq: int = 1000) -> TcpSegment:
    return TcpSegment(sport, PORT, seq, 0, SYN, 65535,
                      (MpJoinSyn(token, nonce, address_id=7).to_tcp_option(),))


def test_join_with_an_unknown_token_is_reset_with_a_reason() -> None:
    net, _client, server, sink, _sender = established_pair()
    peer = sink.conns[0]
    bad_token = (peer.local_token + 1) % (1 << 32)
    server.stack.receive(A2, B1, join_syn(bad_token), net.now)
    out = server.stack.segments_to_send(net.now)
    assert len(out) == 1
    src, dst, rst = out[0]
    assert (src, dst) == (B1, A2) and rst.flags == RST | ACK and rst.ack == 1001
    assert one(list(mptcp_options(rst.options)), MpTcpRst) == \
        MpTcpRst(TcpRstReason.MPTCP_SPECIFIC_ERROR)
    c = server.stack.counters
    assert c["MPJoinSynRx"] == 1 and c["MPJoinNoTokenFound"] == 1 and c["MPRstTx"] == 1
    assert len(peer.subflows) == 1


def test_join_with_a_bad_hmac_is_reset_and_a_good_one_gets_the_fourth_ack() -> None:
    net, _client, server, sink, sender = established_pair()
    conn, peer = sender.conn, sink.conns[0]
    assert conn is not None
    now = net.now
    for third_hmac_ok, sport in ((False, 40001), (True, 40002)):
        nonce_a = 0x0A0B0C0D + sport
        server.stack.receive(A2, B1, join_syn(peer.local_token, nonce_a, sport), now)
        (_, _, syn_ack), = server.stack.segments_to_send(now)
        assert syn_ack.flags == SYN | ACK
        answer = one(list(mptcp_options(syn_ack.options)), MpJoinSynAck)
        assert isinstance(answer, MpJoinSynAck)
        # §3.2: HMAC(Key-B + Key-A, R-B + R-A), leftmost 64 bits; A is the joining client.
        assert answer.sender_truncated_hmac == crypto.join_syn_ack_hmac(
            key_a=conn.local_key, key_b=peer.local_key, nonce_a=nonce_a,
            nonce_b=answer.sender_nonce)
        good = crypto.join_ack_hmac(key_a=conn.local_key, key_b=peer.local_key,
                                    nonce_a=nonce_a, nonce_b=answer.sender_nonce)
        mac = good if third_hmac_ok else bytes(20)
        third = TcpSegment(sport, PORT, 1001, (syn_ack.seq + 1) % (1 << 32), ACK, 65535,
                           (MpJoinAck(mac).to_tcp_option(),))
        server.stack.receive(A2, B1, third, now)
        out = [seg for _, _, seg in server.stack.segments_to_send(now)]
        assert len(out) == 1
        if third_hmac_ok:
            assert out[0].flags == ACK  # the fourth ACK
            assert isinstance(one(list(mptcp_options(out[0].options)), Dss), Dss)
        else:
            assert out[0].flags & RST
            assert one(list(mptcp_options(out[0].options)), MpTcpRst) == \
                MpTcpRst(TcpRstReason.MPTCP_SPECIFIC_ERROR)
    c = server.stack.counters
    assert c["MPJoinSynRx"] == 2 and c["MPJoinAckHMacFailure"] == 1 and c["MPJoinAckRx"] == 1
    assert len(peer.subflows) == 2
    assert all(sf.tcp.state is TcpState.ESTABLISHED for sf in peer.subflows)


def test_add_addr_with_hmac_leads_to_a_join_and_is_echoed() -> None:
    net, client, server, sink = pair(
        6, server_addrs=(B1, B2), server_config=MptcpConfig(announce_addrs=(B2,)))
    data = random.Random(6).randbytes(1_000_000)
    sender = MptcpSender(B1, PORT, data)
    client.apps.append(sender)
    net.run(60.0, stop=lambda: sender.conn is not None and sender.conn.closed
            and not server.stack.connections() and not client.stack.connections())
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    conn, peer = sender.conn, sink.conns[0]
    assert conn is not None
    wire = list(on_wire(net))
    add = next(o for w in wire if w.src == B1 for o in w.opts
               if isinstance(o, AddAddr) and not o.echo)
    assert isinstance(add, AddAddr) and add.address.packed == B2 and add.address_id == 1
    assert add.truncated_hmac == crypto.add_addr_hmac(
        sender_key=peer.local_key, receiver_key=conn.local_key, address_id=1,
        address=add.address, port=None)
    echo = next(o for w in wire if w.src == A1 for o in w.opts
                if isinstance(o, AddAddr) and o.echo)
    assert isinstance(echo, AddAddr) and echo.truncated_hmac is None
    assert any(w.dst == B2 and w.seg.flags == SYN for w in wire)
    assert any(w.dst == B2 and w.seg.payload for w in wire)
    c, s = client.stack.counters, server.stack.counters
    assert s["AddAddrTx"] == 1 and c["AddAddr"] == 1 and c["EchoAddTx"] == 1
    assert s["EchoAdd"] == 1
    assert c["MPJoinSynTx"] == 1 and s["MPJoinAckRx"] == 1


def test_mp_prio_makes_a_subflow_backup_and_remove_addr_closes_it() -> None:
    net, client, server, sink = pair(
        7, client_addrs=(A1, A2), client_config=MptcpConfig(extra_local_addrs=(A2,)))
    data = random.Random(7).randbytes(3_000_000)
    sender = MptcpSender(B1, PORT, data)
    client.apps.append(sender)
    net.run(0.2)
    conn = sender.conn
    assert conn is not None and len(conn.subflows) == 2
    second = conn.subflows[1]
    conn.set_backup(second, True, net.now)
    net.run(net.now + 0.2)
    before = second.tcp.counters.segs_out
    net.run(net.now + 0.3)
    # A backup subflow carries nothing new while the other one works.
    assert second.tcp.counters.segs_out - before <= 2
    peer = sink.conns[0]
    peer_second = next(sf for sf in peer.subflows if sf.join)
    assert peer_second.peer_backup
    assert client.stack.counters["MPPrioTx"] == 1 and server.stack.counters["MPPrioRx"] == 1
    conn.remove_address(second.local_id, net.now)
    net.run(120.0, stop=lambda: conn.closed and not server.stack.connections())
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    assert client.stack.counters["RmAddrTx"] == 1 and server.stack.counters["RmAddr"] == 1
    wire = list(on_wire(net))
    assert any(isinstance(o, RemoveAddr) and o.address_ids == (second.local_id,)
               for w in wire for o in w.opts)
    assert any(isinstance(o, MpPrio) and o.backup for w in wire for o in w.opts)
