"""Subflows that fail under an MPTCP connection: a payload rewritten by a middlebox (the DSS
checksum catches it, §3.7), a subflow reset by the peer mid-transfer (its data is reinjected),
a mapping that does not match its data (§3.3.1)."""

from __future__ import annotations

import dataclasses
import hashlib
import random

from testbed.stack.mptcp.connection import MptcpConfig
from testbed.stack.mptcp.options import (
    Dss,
    MpTcpRst,
    TcpRstReason,
    mptcp_options,
    parse_mptcp_option,
)
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import (
    OPT_MPTCP,
    RST,
    TcpSegment,
    UnknownOption,
    emit_tcp,
    parse_tcp,
)
from tests.protocol.mptcp_hosts import (
    MptcpHost,
    MptcpSender,
    MptcpSink,
    route_by_address,
)
from tests.protocol.netsim import Network, PathConditions

A1, A2 = bytes([10, 0, 1, 1]), bytes([10, 0, 2, 1])
B = bytes([10, 0, 0, 2])
PORT = 9000


class RewriteOnePayload:
    """A middlebox on the client's egress that changes one byte of the `nth` data segment
    from `src` and fixes the TCP checksum, as an application-level gateway would."""

    def __init__(self, inner: MptcpHost, src: bytes, nth: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.src = src
        self.nth = nth
        self.seen = 0

    def receive(self, packet: bytes, now: float) -> None:
        self.inner.receive(packet, now)

    def packets_to_send(self, now: float) -> list[bytes]:
        out = []
        for packet in self.inner.packets_to_send(now):
            ip = parse_ipv4(packet)
            if ip.src == self.src:
                seg = parse_tcp(ip.payload, ip.src, ip.dst)
                if seg.payload:
                    self.seen += 1
                    if self.seen == self.nth:
                        body = bytearray(seg.payload)
                        body[len(body) // 2] ^= 0x20
                        seg = type(seg)(seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags,
                                        seg.window, seg.options, bytes(body))
                        packet = emit_ipv4(Ipv4Packet(ip.src, ip.dst, PROTO_TCP,
                                                      emit_tcp(seg, ip.src, ip.dst)))
            out.append(packet)
        return out

    def next_timer(self) -> float | None:
        return self.inner.next_timer()

    def handle_timer(self, now: float) -> None:
        self.inner.handle_timer(now)


def two_paths(seed: int, config: MptcpConfig, wrap_client: bool = False,
              ) -> tuple[Network, MptcpHost, MptcpHost, RewriteOnePayload | None, list[str]]:
    net = Network(seed)
    client = MptcpHost("client", [A1, A2], seed=seed + 1, config=config)
    server = MptcpHost("server", [B], seed=seed + 2)
    box = RewriteOnePayload(client, A2, nth=20) if wrap_client else None
    net.attach(box if box is not None else client)
    net.attach(server)
    cond = PathConditions(delay_s=0.01, rate_bps=20e6, queue_packets=60)
    paths = [net.connect("client", "server", cond), net.connect("client", "server", cond)]
    net.route = route_by_address({A1: paths[0], A2: paths[1]})
    return net, client, server, box, paths


def test_checksum_failure_resets_that_subflow_and_the_stream_survives() -> None:
    config = MptcpConfig(checksum=True, extra_local_addrs=(A2,))
    net, client, server, box, _paths = two_paths(31, config, wrap_client=True)
    assert box is not None
    sink = MptcpSink(server.stack.listen(B, PORT))
    server.apps.append(sink)
    data = random.Random(1).randbytes(1_500_000)
    sender = MptcpSender(B, PORT, data)
    client.apps.append(sender)
    net.run(120.0, stop=lambda: sender.conn is not None and sender.conn.closed
            and not server.stack.connections())
    assert box.seen >= 20
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    assert server.stack.counters["DataCsumErr"] == 1
    assert server.stack.counters["MPRstTx"] == 1
    assert client.stack.counters["MPRstRx"] == 1
    assert client.stack.counters["MPTCPReinject"] >= 1
    rsts = [parse_tcp(parse_ipv4(e.packet).payload, B, A2) for e in net.trace
            if e.fate == "sent" and parse_ipv4(e.packet).dst == A2]
    reasons = [o for seg in rsts if seg.flags & RST for o in mptcp_options(seg.options)]
    assert MpTcpRst(TcpRstReason.MIDDLEBOX_INTERFERENCE) in reasons
    assert sender.conn is not None and not sender.conn.fallback


def test_a_subflow_reset_mid_transfer_has_its_data_reinjected() -> None:
    config = MptcpConfig(extra_local_addrs=(A2,))
    net, client, server, _box, paths = two_paths(32, config)
    sink = MptcpSink(server.stack.listen(B, PORT))
    server.apps.append(sink)
    data = random.Random(2).randbytes(2_000_000)
    sender = MptcpSender(B, PORT, data)
    client.apps.append(sender)
    net.run(0.3)
    conn = sender.conn
    assert conn is not None and len(conn.subflows) == 2
    # The server resets its end of the second subflow while data is in flight on it.
    peer = sink.conns[0]
    victim = next(sf for sf in peer.subflows if sf.join)
    victim.rst_reason = TcpRstReason.ADMINISTRATIVELY_PROHIBITED
    victim.tcp.abort(net.now)
    net.run(120.0, stop=lambda: conn.closed and not server.stack.connections())
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    assert conn.error is None and len(conn.stats()["subflows"]) == 0  # type: ignore[arg-type]
    assert client.stack.counters["MPRstRx"] == 1
    assert conn.counters.bytes_reinjected > 0
    assert net.counters(paths[1], "ab").sent > 50


class ShortenOneMapping(RewriteOnePayload):
    """Rewrites the DSS of the `nth` data segment from `src` so that its mapping covers
    ten bytes less than the segment carries."""

    def packets_to_send(self, now: float) -> list[bytes]:
        out = []
        for packet in self.inner.packets_to_send(now):
            ip = parse_ipv4(packet)
            if ip.src == self.src:
                seg = parse_tcp(ip.payload, ip.src, ip.dst)
                if seg.payload:
                    self.seen += 1
                    if self.seen == self.nth:
                        seg = self._shorten(seg)
                        packet = emit_ipv4(Ipv4Packet(ip.src, ip.dst, PROTO_TCP,
                                                      emit_tcp(seg, ip.src, ip.dst)))
            out.append(packet)
        return out

    @staticmethod
    def _shorten(seg: TcpSegment) -> TcpSegment:
        options = []
        for opt in seg.options:
            if isinstance(opt, UnknownOption) and opt.kind == OPT_MPTCP:
                dss = parse_mptcp_option(opt.data)
                if isinstance(dss, Dss) and dss.mapping is not None:
                    m = dss.mapping
                    opt = dataclasses.replace(dss, mapping=dataclasses.replace(
                        m, data_level_length=m.data_level_length - 10)).to_tcp_option()
            options.append(opt)
        return dataclasses.replace(seg, options=tuple(options))


def test_a_mapping_that_does_not_match_its_data_resets_the_subflow() -> None:
    config = MptcpConfig(extra_local_addrs=(A2,))
    net = Network(33)
    client = MptcpHost("client", [A1, A2], seed=34, config=config)
    server = MptcpHost("server", [B], seed=35)
    box = ShortenOneMapping(client, A2, nth=10)
    net.attach(box)
    net.attach(server)
    cond = PathConditions(delay_s=0.01, rate_bps=20e6, queue_packets=60)
    paths = [net.connect("client", "server", cond), net.connect("client", "server", cond)]
    net.route = route_by_address({A1: paths[0], A2: paths[1]})
    sink = MptcpSink(server.stack.listen(B, PORT))
    server.apps.append(sink)
    data = random.Random(3).randbytes(1_000_000)
    sender = MptcpSender(B, PORT, data)
    client.apps.append(sender)
    net.run(120.0, stop=lambda: sender.conn is not None and sender.conn.closed
            and not server.stack.connections())
    assert box.seen >= 10
    assert sink.sha256() == hashlib.sha256(data).hexdigest()
    assert server.stack.counters["DSSNotMatching"] == 1
    assert server.stack.counters["MPRstTx"] == 1 and client.stack.counters["MPRstRx"] == 1
    assert sender.conn is not None and not sender.conn.fallback
