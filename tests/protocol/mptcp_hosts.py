"""Netsim endpoints over our MptcpStack: a host with several IPv4 addresses (one per path),
a route that picks the path from a packet's addresses, and applications that move a byte
stream over MptcpConnections (bulk sender, sink)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.stack.mptcp.connection import MptcpConfig, MptcpConnection
from testbed.stack.mptcp.stack import MptcpListener, MptcpStack
from testbed.stack.tcp.connection import TcpConfig
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.ipv4 import PROTO_TCP, parse_ipv4
from testbed.stack.wire.tcp import parse_tcp
from tests.protocol.hosts import HostDrops, StackEndpoint


class MptcpApp:
    def step(self, host: MptcpHost, now: float) -> None:
        raise NotImplementedError


class MptcpHost(StackEndpoint):
    """Implements netsim's Endpoint over one MptcpStack with one address per path."""

    def __init__(self, name: str, addrs: list[bytes], *, seed: int,
                 config: MptcpConfig | None = None,
                 tcp_config: TcpConfig | None = None) -> None:
        self.name = name
        self.addrs = list(addrs)
        self.stack = MptcpStack(rng=random.Random(seed), config=config, tcp_config=tcp_config)
        self.apps: list[MptcpApp] = []
        self.drops = HostDrops()

    @property
    def addr(self) -> bytes:
        return self.addrs[0]

    def receive(self, packet: bytes, now: float) -> None:
        try:
            ip = parse_ipv4(packet)
            if ip.dst not in self.addrs or ip.protocol != PROTO_TCP or ip.is_fragment:
                self.drops.not_for_us += 1
                return
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
        except ParseError as exc:
            self.drops.parse_errors += 1
            self.stack.input_error(checksum="checksum" in str(exc))
            return
        self.stack.receive(ip.src, ip.dst, seg, now)



def route_by_address(paths: dict[bytes, str]) -> Callable[[str, bytes], str]:
    """netsim route: the path of the packet's source address, else of its destination
    (so one table names each path by the address that is unique to it)."""

    def route(src_name: str, packet: bytes) -> str:
        src, dst = packet[12:16], packet[16:20]
        if src in paths:
            return paths[src]
        if dst in paths:
            return paths[dst]
        raise KeyError(f"no path for {src.hex()} -> {dst.hex()}")

    return route


@dataclass
class MptcpSender(MptcpApp):
    """Connects, writes `data` as the connection takes it, then closes."""

    remote_addr: bytes
    remote_port: int
    data: bytes
    close_when_done: bool = True
    config: MptcpConfig | None = None
    start_at: float = 0.0  # write nothing before (so the handshake's ACK goes alone)
    conn: MptcpConnection | None = None
    offset: int = 0
    finished_at: float | None = None

    def step(self, host: MptcpHost, now: float) -> None:
        if self.conn is None:
            self.conn = host.stack.connect(host.addr, self.remote_addr, self.remote_port, now,
                                           config=self.config)
            return
        conn = self.conn
        if conn.closed or not conn.established or now < self.start_at:
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
class MptcpSink(MptcpApp):
    """Accepts, reads everything, closes once the peer closed; optionally sends a reply
    (`reply`) first, so both directions carry data."""

    listener: MptcpListener
    reply: bytes = b""
    close_on_eof: bool = True
    conns: list[MptcpConnection] = field(default_factory=list)
    received: dict[int, bytearray] = field(default_factory=dict)
    eof_at: float | None = None
    _sent: int = 0

    def step(self, host: MptcpHost, now: float) -> None:
        while (conn := self.listener.accept()) is not None:
            self.conns.append(conn)
            self.received[id(conn)] = bytearray()
        for conn in self.conns:
            while chunk := conn.recv(1 << 20):
                self.received[id(conn)] += chunk
            while self._sent < len(self.reply) and conn.writable_space > 0:
                self._sent += conn.send(self.reply[self._sent:self._sent + 65536], now)
            if conn.at_eof and self.eof_at is None:
                self.eof_at = now
            if (conn.at_eof and self.close_on_eof and self._sent == len(self.reply)
                    and not conn.closed and conn.writable_space > 0):
                conn.close(now)

    def data(self, index: int = 0) -> bytes:
        return bytes(self.received[id(self.conns[index])])

    def sha256(self, index: int = 0) -> str:
        return hashlib.sha256(self.data(index)).hexdigest()


@dataclass
class MptcpReader(MptcpApp):
    """The client's reading side: collects what the connection of `sender` receives."""

    sender: MptcpSender
    received: bytearray = field(default_factory=bytearray)

    def step(self, host: MptcpHost, now: float) -> None:
        conn = self.sender.conn
        if conn is None:
            return
        while chunk := conn.recv(1 << 20):
            self.received += chunk
