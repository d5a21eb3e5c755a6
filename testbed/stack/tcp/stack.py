"""A host's TCP, sans-I/O: listeners, the demux of segments to connections by 4-tuple,
RSTs for segments that reach no connection, ISNs and ephemeral ports, MIB counters.

The caller (a runtime, or a test's in-memory network) gives it segments with their IP
addresses and takes segments to send; time only comes in as `now`.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from testbed.stack.tcp import seq as sq
from testbed.stack.tcp.connection import TcpConfig, TcpConnection, TcpState
from testbed.stack.tcp.hooks import TcpHooks
from testbed.stack.wire.tcp import ACK, RST, SYN, TcpSegment

ANY_ADDR = b"\x00\x00\x00\x00"
# RFC 6056 §2.1 / Linux's ip_local_port_range default.
EPHEMERAL_LOW = 32768
EPHEMERAL_HIGH = 60999

ConnKey = tuple[bytes, int, bytes, int]  # local addr, local port, remote addr, remote port


@dataclass
class Listener:
    """A passive open on (addr, port); addr 0.0.0.0 takes any local address."""

    addr: bytes
    port: int
    backlog: int
    _embryonic: set[TcpConnection] = field(default_factory=set)  # the SYN queue
    _ready: deque[TcpConnection] = field(default_factory=deque)  # the accept queue
    closed: bool = False

    def accept(self) -> TcpConnection | None:
        """An established connection, oldest first, or None."""
        while self._ready:
            conn = self._ready.popleft()
            if not conn.closed or conn.readable:
                return conn
        return None

    @property
    def pending(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        self.closed = True


class TcpStack:
    def __init__(self, *, rng: random.Random, config: TcpConfig | None = None,
                 hooks_factory: Callable[[TcpConnection], TcpHooks] | None = None) -> None:
        self.rng = rng
        self.config = config if config is not None else TcpConfig()
        self.hooks_factory = hooks_factory
        # RFC 6528 §3: the secret key of the ISN hash, drawn once per host.
        self._isn_secret = rng.getrandbits(128).to_bytes(16, "big")
        self._conns: dict[ConnKey, TcpConnection] = {}
        self._listeners: dict[tuple[bytes, int], Listener] = {}
        self._owner: dict[TcpConnection, Listener] = {}
        self._rsts: list[tuple[bytes, bytes, TcpSegment]] = []
        # Connections that took a segment since output was last collected (an ordered set).
        self._touched: dict[TcpConnection, None] = {}
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ user calls

    def listen(self, addr: bytes, port: int, backlog: int = 128) -> Listener:
        if (addr, port) in self._listeners and not self._listeners[(addr, port)].closed:
            raise OSError(f"port {port} is already listening")
        listener = Listener(addr, port, backlog)
        self._listeners[(addr, port)] = listener
        return listener

    def connect(self, local_addr: bytes, remote_addr: bytes, remote_port: int, now: float,
                local_port: int | None = None,
                config: TcpConfig | None = None) -> TcpConnection:
        if local_port is None:
            local_port = self._ephemeral_port(local_addr, remote_addr, remote_port)
        key = (local_addr, local_port, remote_addr, remote_port)
        if key in self._conns:
            raise OSError(f"connection {key} already exists")
        conn = self._new_connection(key, now, config or self.config)
        conn.open_active(now)
        return conn

    def connections(self) -> list[TcpConnection]:
        return list(self._conns.values())

    def _ephemeral_port(self, local_addr: bytes, remote_addr: bytes, remote_port: int) -> int:
        # RFC 6056 §3.3.1 (algorithm 1): a random start, then the next free port.
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = EPHEMERAL_LOW + (start + i) % span
            if (local_addr, port, remote_addr, remote_port) not in self._conns:
                return port
        raise OSError("no ephemeral port left")

    def _isn(self, key: ConnKey, now: float) -> int:
        # RFC 6528 §3: ISN = M + F(4-tuple, secret), M a 4-microsecond timer.
        local_addr, local_port, remote_addr, remote_port = key
        digest = hashlib.sha256(
            local_addr + local_port.to_bytes(2, "big") + remote_addr
            + remote_port.to_bytes(2, "big") + self._isn_secret).digest()
        return (int(now * 250_000) + int.from_bytes(digest[:4], "big")) & sq.SEQ_MASK

    def _new_connection(self, key: ConnKey, now: float, config: TcpConfig) -> TcpConnection:
        conn = TcpConnection(key[0], key[1], key[2], key[3], iss=self._isn(key, now),
                             config=config, now=now, ts_offset=self.rng.getrandbits(32),
                             mib=self.counters)
        if self.hooks_factory is not None:
            conn.hooks = self.hooks_factory(conn)
        self._conns[key] = conn
        return conn

    # ------------------------------------------------------------------ input

    def receive(self, src_addr: bytes, dst_addr: bytes, seg: TcpSegment, now: float) -> None:
        self._count("InSegs")
        key = (dst_addr, seg.dst_port, src_addr, seg.src_port)
        conn = self._conns.get(key)
        if conn is not None and conn.state is TcpState.TIME_WAIT and self._reopens(conn, seg):
            # RFC 9293 §3.6.1 / RFC 6191: a new SYN above the old connection's sequence
            # space may take over a TIME-WAIT 4-tuple.
            self._drop(conn)
            conn = None
        if conn is not None and not conn.closed:
            conn.receive(seg, now)
            self._after_input(conn)
            self._touched[conn] = None
            return
        listener = self._listeners.get((dst_addr, seg.dst_port)) or \
            self._listeners.get((ANY_ADDR, seg.dst_port))
        if listener is not None and not listener.closed:
            self._listen_input(listener, key, seg, now)
            return
        self._reset_unknown(src_addr, dst_addr, seg)

    @staticmethod
    def _reopens(conn: TcpConnection, seg: TcpSegment) -> bool:
        return (seg.has(SYN) and not seg.has(ACK) and not seg.has(RST)
                and sq.gt(seg.seq, conn.rcv_nxt))

    def _listen_input(self, listener: Listener, key: ConnKey, seg: TcpSegment,
                      now: float) -> None:
        # RFC 9293 §3.10.7.2: LISTEN ignores RST, answers an ACK with RST, takes a SYN.
        if seg.has(RST):
            return
        if seg.has(ACK):
            self._reset_unknown(key[2], key[0], seg)
            return
        if not seg.has(SYN):
            return
        if len(listener._embryonic) + len(listener._ready) >= listener.backlog:
            self._count("ListenOverflows")
            self._count("ListenDrops")
            return
        conn = self._new_connection(key, now, self.config)
        conn.open_passive(seg, now)
        self._touched[conn] = None
        self._count("PassiveOpens")
        listener._embryonic.add(conn)
        self._owner[conn] = listener

    def _after_input(self, conn: TcpConnection) -> None:
        listener = self._owner.get(conn)
        if listener is None:
            return
        if conn.established or conn.closed:
            listener._embryonic.discard(conn)
            del self._owner[conn]
            if conn.established:
                listener._ready.append(conn)

    def _reset_unknown(self, src_addr: bytes, dst_addr: bytes, seg: TcpSegment) -> None:
        """RFC 9293 §3.10.7.1: a segment for no connection gets an RST (never an RST)."""
        if seg.has(RST):
            return
        if seg.has(ACK):
            rst = TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, RST, 0)
        else:
            rst = TcpSegment(seg.dst_port, seg.src_port, 0, sq.add(seg.seq, seg.seg_len),
                             RST | ACK, 0)
        self._rsts.append((dst_addr, src_addr, rst))
        self._count("OutRsts")

    # ------------------------------------------------------------------ output and time

    def segments_to_send(self, now: float) -> list[tuple[bytes, bytes, TcpSegment]]:
        self._touched.clear()
        return self._collect(list(self._conns.values()), now)

    def segments_after_input(self, now: float) -> list[tuple[bytes, bytes, TcpSegment]]:
        """What the connections that took segments since output was last collected have to
        send, and the RSTs: a runtime calls this after each packet so that ACKs, and data the
        ACKs clock out, leave at once instead of after a whole batch of input, without asking
        every idle connection. (`segments_to_send` still collects from all of them.)"""
        touched = list(self._touched)
        self._touched.clear()
        return self._collect(touched, now)

    def _collect(self, conns: list[TcpConnection],
                 now: float) -> list[tuple[bytes, bytes, TcpSegment]]:
        out = self._rsts
        self._rsts = []
        for conn in conns:
            for seg in conn.segments_to_send(now):
                out.append((conn.local_addr, conn.remote_addr, seg))
            self._after_input(conn)
            if conn.closed:
                self._drop(conn)
        if out:
            self._count("OutSegs", len(out))
        return out

    def next_timer(self) -> float | None:
        times = [t for t in (c.next_timer() for c in self._conns.values()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for conn in list(self._conns.values()):
            deadline = conn.next_timer()
            if deadline is not None and deadline <= now:
                conn.handle_timer(now)
                self._after_input(conn)

    def _drop(self, conn: TcpConnection) -> None:
        """Reap a closed connection (its RST, if any, was already taken)."""
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        listener = self._owner.pop(conn, None)
        if listener is not None:
            listener._embryonic.discard(conn)

    def input_error(self, checksum: bool = False) -> None:
        """The caller dropped a TCP segment it could not parse (Linux: InErrs, and
        InCsumErrors when the checksum was wrong)."""
        self._count("InErrs")
        if checksum:
            self._count("InCsumErrors")

    @property
    def curr_estab(self) -> int:
        return sum(1 for c in self._conns.values()
                   if c.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT))

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
