"""A netsim endpoint around our TcpStack: IPv4 in and out through the wire codecs, and small
applications (a bulk sender, a sink) stepped each time the network asks for packets."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.stack.tcp.connection import TcpConfig, TcpConnection
from testbed.stack.tcp.hooks import TcpHooks
from testbed.stack.tcp.stack import Listener, TcpStack
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import emit_tcp, parse_tcp


class App:
    """Something that uses connections; `step` runs before every collection of packets."""

    def step(self, host: TcpHost, now: float) -> None:
        raise NotImplementedError


@dataclass
class HostDrops:
    parse_errors: int = 0  # bad IPv4 or TCP header, TCP checksum included
    not_for_us: int = 0


class StackEndpoint:
    """The half of netsim's Endpoint that any stack driven like TcpStack shares: apps step,
    then the stack's segments go out as IPv4; timers go straight to the stack."""

    stack: Any
    apps: list[Any]

    def packets_to_send(self, now: float) -> list[bytes]:
        for app in self.apps:
            app.step(self, now)
        return [emit_ipv4(Ipv4Packet(src, dst, PROTO_TCP, emit_tcp(seg, src, dst)))
                for src, dst, seg in self.stack.segments_to_send(now)]

    def next_timer(self) -> float | None:
        next_timer: float | None = self.stack.next_timer()
        return next_timer

    def handle_timer(self, now: float) -> None:
        self.stack.handle_timer(now)


class TcpHost(StackEndpoint):
    """Implements netsim's Endpoint over one TcpStack with one IPv4 address."""

    def __init__(self, name: str, addr: bytes, *, seed: int, config: TcpConfig | None = None,
                 hooks_factory: Callable[[TcpConnection], TcpHooks] | None = None) -> None:
        self.name = name
        self.addr = addr
        self.stack = TcpStack(rng=random.Random(seed), config=config,
                              hooks_factory=hooks_factory)
        self.apps: list[App] = []
        self.drops = HostDrops()
        self.drop_reasons: dict[str, int] = {}

    def receive(self, packet: bytes, now: float) -> None:
        try:
            ip = parse_ipv4(packet)
            if ip.dst != self.addr or ip.protocol != PROTO_TCP or ip.is_fragment:
                self.drops.not_for_us += 1
                return
        except ParseError:
            self.drops.parse_errors += 1
            self.drop_reasons["ipv4"] = self.drop_reasons.get("ipv4", 0) + 1
            return
        try:
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
        except ParseError as exc:
            self.drops.parse_errors += 1
            checksum = "checksum" in str(exc)
            reason = "tcp checksum" if checksum else "tcp"
            self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1
            self.stack.input_error(checksum=checksum)
            return
        self.stack.receive(ip.src, ip.dst, seg, now)



@dataclass
class BulkSender(App):
    """Connects, writes `data` as the send buffer takes it, then closes."""

    remote_addr: bytes
    remote_port: int
    data: bytes
    close_when_done: bool = True
    conn: TcpConnection | None = None
    offset: int = 0
    finished_at: float | None = None

    def step(self, host: TcpHost, now: float) -> None:
        if self.conn is None:
            self.conn = host.stack.connect(host.addr, self.remote_addr, self.remote_port, now)
            return
        conn = self.conn
        if conn.closed or not conn.established:
            return
        while self.offset < len(self.data) and conn.writable_space > 0:
            n = conn.send(self.data[self.offset:self.offset + 65536], now)
            if n == 0:
                break
            self.offset += n
        if self.offset == len(self.data) and self.finished_at is None:
            self.finished_at = now
            if self.close_when_done:
                conn.close(now)


@dataclass
class Sink(App):
    """Accepts on a listener, reads everything, closes when the peer has closed."""

    listener: Listener
    conns: list[TcpConnection] = field(default_factory=list)
    received: dict[int, bytearray] = field(default_factory=dict)
    eof_at: float | None = None
    close_on_eof: bool = True

    def step(self, host: TcpHost, now: float) -> None:
        while (conn := self.listener.accept()) is not None:
            self.conns.append(conn)
            self.received[id(conn)] = bytearray()
        for conn in self.conns:
            while chunk := conn.recv(1 << 20):
                self.received[id(conn)] += chunk
            if conn.at_eof and self.eof_at is None:
                self.eof_at = now
            if conn.at_eof and self.close_on_eof and conn.state.value == "CLOSE-WAIT":
                conn.close(now)

    def data(self, index: int = 0) -> bytes:
        return bytes(self.received[id(self.conns[index])])

    def sha256(self, index: int = 0) -> str:
        return hashlib.sha256(self.data(index)).hexdigest()
