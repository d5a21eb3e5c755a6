"""The transfer program run inside an emulated host: one connection, deterministic bytes,
sha256 on both ends, and a JSON report.

    python -m testbed.workload server --listen ADDR --port P [options]
    python -m testbed.workload client --connect ADDR --port P [options]

By default the sender writes as fast as the connection takes (bulk). With `--messages SIZE`
(on both sides) it writes SIZE-byte messages at a constant rate, one every `--interval-ms`,
as an interactive application (voice, a game) does; each message starts with its number and
the time it was due, and the receiver reports every message's delay from due to arrival (both
ends share the host's clock: the emulated hosts are namespaces of one machine).

The server accepts exactly one connection (with `--reconnect`, one after another, see below) and
exits; it prints `LISTENING` (flushed) once the socket listens so a runner knows when to start
the client. `--direction upload` means the client sends. Network errors never end in a
traceback: the report carries `error` and the exit status is 1 (2 for bad arguments, as
argparse does).

`--reconnect` (both sides, bulk mode, kernel sockets) makes the transfer survive a broken
connection: the client connects again, retrying until `--timeout` passes without a connection,
and the server accepts it; a new connection arriving while the server still holds the old one
replaces it (the old one's peer address may be gone, so its end may never hear of the break).
Every connection starts with the receiver telling the sender how many bytes it has
(RESUME_HEADER); the sender regenerates the deterministic stream from there, so the sha256 of
the whole stream checks end to end. The report keeps one goodput series across connections,
counts the connections and lists every outage: when the connection broke, when a new one was
up, when data flowed again (seconds since t_start). With `--seconds`, a side stops waiting for
a new connection RECONNECT_GRACE_S after the transfer's time: a transfer whose time runs out
during an outage ends there (`ended_in_outage`; the sender's last bytes were never confirmed,
so the two sha256 differ, while the receiver's `stream_intact` still checks what it has).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, Literal

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_INFO_FLAG_FALLBACK = 1 << 0
# struct mptcp_info (include/uapi/linux/mptcp.h): six u8 counters, padding, u32 flags, u32 token.
_MPTCP_INFO_HEAD = struct.Struct("=6B2xII")

# One chunk of the pseudo-random stream. random.randbytes makes ~480 MB/s here, far above
# what the emulated links carry, and 128 KiB keeps `--seconds` overshoot below one chunk.
CHUNK = 128 * 1024
RECV_BUF = 1 << 20
BIN_S = 0.1  # width of the receiver's goodput time series bins
# A message's header: its number and the time.time() at which the application produced it.
MESSAGE_HEADER = struct.Struct("!Qd")
# --reconnect: the receiver's first bytes on every connection, the stream offset it has.
RESUME_MAGIC = b"RSM1"
RESUME_HEADER = struct.Struct("!4sQ")
RECONNECT_RETRY_S = 0.1  # pause between connection attempts that failed at once
CONNECT_ATTEMPT_S = 1.0  # one attempt's limit: a SYN lost on a dead path is not waited out
# --seconds: past the transfer's end, this long is left for a reconnection to close it cleanly.
RECONNECT_GRACE_S = 2.0

Role = Literal["sender", "receiver"]
Side = Literal["client", "server"]


class WorkloadError(Exception):
    """A failure the report explains in one sentence (no traceback)."""


class _Terminated(Exception):
    """SIGTERM/SIGINT arrived: stop, but still write the report."""


@dataclass
class Report:
    role: Role
    side: Side
    proto: str
    direction: str
    seed: int
    congestion_requested: str | None
    congestion: str | None = None  # what the socket reports after connecting
    local: str | None = None
    remote: str | None = None
    bytes: int = 0
    sha256: str = hashlib.sha256().hexdigest()
    t_start: float | None = None
    t_end: float | None = None
    t_last_data: float | None = None
    # The close delay is the workload's own wait, not transfer time: goodput leaves it out.
    close_wait_s: float = 0.0
    duration_s: float | None = None  # the interval goodput is computed over (see _finish_times)
    goodput_mbps: float | None = None
    # Receiver only: [seconds since t_start, bytes received in that 100 ms bin].
    series: list[list[float]] = field(default_factory=list)
    # Messages mode: size and interval, and (receiver) the delay statistics in ms and the
    # series [seconds since t_start of arrival, delay in ms] of every message.
    messages: dict[str, Any] | None = None
    message_series: list[list[float]] = field(default_factory=list)
    mptcp_subflows: int | None = None  # extra subflows (not counting the first), MPTCP_INFO
    mptcp_token: str | None = None
    mptcp_fallback: bool | None = None
    # --reconnect: connections used, and every outage as seconds since t_start: the break
    # (`broke_s`, with its error), the next connection (`connected_s`), the first data byte
    # on it (`data_s`, the receiver only) and where the stream resumed (`offset`).
    connections: int = 0
    outages: list[dict[str, Any]] = field(default_factory=list)
    # --reconnect with --seconds: the transfer's time ran out while there was no connection
    # (the stream ends where it broke: the sender's last bytes were never confirmed).
    ended_in_outage: bool = False
    # --reconnect, the receiver: its bytes are the first `bytes` of the seed's stream.
    stream_intact: bool | None = None
    error: str | None = None


def payload_chunks(seed: int, total: int | None = None) -> Iterator[bytes]:
    """The sender's byte stream: fixed-size chunks from random.Random(seed), the last one cut
    to `total`. Same seed and length give the same bytes whatever the network does."""
    rng = random.Random(seed)
    sent = 0
    while total is None or sent < total:
        n = CHUNK if total is None else min(CHUNK, total - sent)
        chunk = rng.randbytes(CHUNK)
        yield chunk if n == CHUNK else chunk[:n]
        sent += n


def payload_from(seed: int, offset: int, total: int | None = None) -> Iterator[bytes]:
    """The stream for `seed` from byte `offset` on (up to `total`): the chunks before it
    are generated and dropped, so the bytes are the same as payload_chunks' from there."""
    skipped = 0
    for chunk in payload_chunks(seed, total):
        if skipped + len(chunk) <= offset:
            skipped += len(chunk)
            continue
        yield chunk[offset - skipped:] if offset > skipped else chunk
        skipped = offset


def payload_sha256(seed: int, total: int) -> str:
    """sha256 of the first `total` bytes of the stream for `seed` (tests and analysis)."""
    h = hashlib.sha256()
    for chunk in payload_chunks(seed, total):
        h.update(chunk)
    return h.hexdigest()


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def make_socket(proto: str, family: socket.AddressFamily) -> socket.socket:
    """A stream socket of the requested protocol, with a clear message if MPTCP is missing."""
    if proto == "tcp":
        return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as exc:
        # ENOPROTOOPT: MPTCP built in but net.mptcp.enabled=0 in this namespace;
        # EPROTONOSUPPORT: the kernel has no MPTCP at all.
        raise WorkloadError(
            f"the kernel refused an MPTCP socket ({exc.strerror}, errno {exc.errno}): "
            "is net.mptcp.enabled=1 in this network namespace and CONFIG_MPTCP set?"
        ) from None


def set_congestion(sock: socket.socket, name: str) -> None:
    """Choose the congestion control for this socket (and, for MPTCP, its subflows).

    A namespace other than the initial one may only default to algorithms listed in
    net.ipv4.tcp_allowed_congestion_control; per socket, CAP_NET_ADMIN may pick any loaded
    one. For MPTCP the kernel stores the name on the MPTCP socket and applies it to every
    subflow, including those created later (net/mptcp/sockopt.c).
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
    except OSError as exc:
        raise WorkloadError(
            f"cannot set congestion control {name!r} on the socket ({exc.strerror}); "
            "check net.ipv4.tcp_available_congestion_control and that we run as root"
        ) from None


def get_congestion(sock: socket.socket) -> str | None:
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode() or None


def _mptcp_info(sock: socket.socket, report: Report) -> None:
    """Best effort: how many extra subflows the connection has, its token, fallback."""
    if report.proto != "mptcp":
        return
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)
    except OSError:
        # Kernels refuse MPTCP_INFO on a connection that fell back to TCP.
        report.mptcp_fallback = True
        return
    if len(raw) < _MPTCP_INFO_HEAD.size:
        return
    subflows, _s, _a, _smax, _amax, _aamax, flags, token = _MPTCP_INFO_HEAD.unpack_from(raw)
    report.mptcp_subflows = subflows
    report.mptcp_token = f"{token:08x}"
    report.mptcp_fallback = bool(flags & MPTCP_INFO_FLAG_FALLBACK)


def _addr(sockaddr: Any) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def send_stream(
    sock: socket.socket,
    report: Report,
    seed: int,
    total: int | None,
    seconds: float | None,
    close_delay: float,
    established_mono: float,
) -> None:
    h = hashlib.sha256()
    sent = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    for chunk in payload_chunks(seed, total):
        if deadline is not None and time.monotonic() >= deadline:
            break
        sock.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
        report.bytes = sent
    report.sha256 = h.hexdigest()
    _mptcp_info(sock, report)
    # The kernel path manager opens no subflow once the connection is closing, so a short
    # transfer that shuts down at once stays on one path. Like the selftests' mptcp_connect,
    # wait before closing, but only what is left of `close_delay` since the connection was
    # established: a long transfer has given the path manager its time already.
    remaining = close_delay - (time.monotonic() - established_mono)
    if remaining > 0:
        time.sleep(remaining)
        report.close_wait_s = remaining
    sock.shutdown(socket.SHUT_WR)
    # The receiver closes only after reading everything; its close is our proof of delivery.
    while sock.recv(4096):
        pass
    report.t_end = time.time()


def send_messages(sock: socket.socket, report: Report, seed: int, size: int,
                  interval_s: float, total: int | None, seconds: float | None,
                  established_mono: float) -> None:
    """One `size`-byte message every `interval_s`, on a fixed schedule: a message that could
    not leave in time (a blocked socket) is stamped with the time it was due, so its delay
    counts the wait. Ends after `seconds`, or once `total` bytes are sent."""
    h = hashlib.sha256()
    filler = random.Random(seed).randbytes(max(0, size - MESSAGE_HEADER.size))
    with contextlib.suppress(OSError):  # not every socket has it (our stack's API socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start_wall, start_mono = time.time(), time.monotonic()
    count = 0
    # Kept up to date, so that a connection that breaks still reports how many were sent.
    report.messages = {"size": size, "interval_ms": interval_s * 1000, "sent": 0}
    while True:
        due = count * interval_s
        if seconds is not None and due >= seconds:
            break
        if total is not None and (count + 1) * size > total:
            break
        wait = due - (time.monotonic() - start_mono)
        if wait > 0:
            time.sleep(wait)
        message = MESSAGE_HEADER.pack(count, start_wall + due) + filler
        sock.sendall(message)
        h.update(message)
        count += 1
        report.bytes = count * size
        report.messages["sent"] = count
    report.sha256 = h.hexdigest()
    _mptcp_info(sock, report)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(4096):
        pass
    report.t_end = time.time()


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def message_delays(series: list[list[float]], size: int, interval_s: float,
                   sent_hint: int | None = None) -> dict[str, Any]:
    """The receiver's summary of its message series: count and delay percentiles (ms)."""
    delays = sorted(delay for _, delay in series)
    out: dict[str, Any] = {"size": size, "interval_ms": interval_s * 1000,
                           "received": len(delays)}
    if sent_hint is not None:
        out["sent"] = sent_hint
    if delays:
        out.update({f"delay_ms_p{int(q * 100)}": round(_percentile(delays, q), 3)
                    for q in (0.5, 0.95, 0.99)})
        out["delay_ms_max"] = round(delays[-1], 3)
        out["delay_ms_mean"] = round(sum(delays) / len(delays), 3)
    return out


class _Receipt:
    """What a receiver keeps of the bytes it reads, over one connection or several: their
    sha256, their count, the 100 ms goodput bins and when data last came."""

    def __init__(self, start_mono: float) -> None:
        self.sha256 = hashlib.sha256()
        self.received = 0
        self.bins: list[int] = []
        self.start_mono = start_mono
        self.last_data_mono = start_mono

    def add(self, data: memoryview, now: float, report: Report) -> None:
        self.sha256.update(data)
        self.received += len(data)
        self.last_data_mono = now
        idx = int((now - self.start_mono) / BIN_S)
        if idx >= len(self.bins):
            self.bins.extend([0] * (idx + 1 - len(self.bins)))
        self.bins[idx] += len(data)
        report.bytes = self.received

    def finish(self, report: Report) -> None:
        """Also when the connection died: what arrived until then (and when) is what a
        scenario such as a migration without MPTCP needs to measure."""
        report.t_end = time.time()
        assert report.t_start is not None
        report.t_last_data = report.t_start + (self.last_data_mono - self.start_mono)
        report.sha256 = self.sha256.hexdigest()
        report.series = [[round(i * BIN_S, 3), b] for i, b in enumerate(self.bins)]


def receive_stream(sock: socket.socket, report: Report, start_mono: float,
                   message_size: int | None = None, interval_s: float = 0.0) -> None:
    buf = bytearray(RECV_BUF)
    view = memoryview(buf)
    receipt = _Receipt(start_mono)
    pending = bytearray()  # messages mode: the start of a message not complete yet
    try:
        while True:
            n = sock.recv_into(buf)
            now = time.monotonic()
            if n == 0:
                break
            receipt.add(view[:n], now, report)
            if message_size:
                pending += view[:n]
                arrived = time.time()
                while len(pending) >= message_size:
                    _number, due = MESSAGE_HEADER.unpack_from(pending)
                    del pending[:message_size]
                    assert report.t_start is not None
                    report.message_series.append([round(arrived - report.t_start, 4),
                                                  round((arrived - due) * 1000, 3)])
    finally:
        receipt.finish(report)
        if message_size:
            report.messages = message_delays(report.message_series, message_size, interval_s)
    _mptcp_info(sock, report)


# -- --reconnect: a transfer that outlives its connections -------------------------------------

class _Superseded(Exception):
    """A new connection arrived at the server while it still held the old one."""


class _TransferOver(Exception):
    """--seconds: the transfer's time (and its grace) ran out while waiting for a connection."""


class _Link:
    """Where --reconnect's connections come from: the client connects (retrying), the server
    accepts; `conn` is the current one. Sockets are non-blocking and waited on with select,
    so that a server busy on a connection whose peer is gone still sees the new one."""

    def __init__(self, args: argparse.Namespace, side: Side, report: Report) -> None:
        self.args, self.side, self.report = args, side, report
        self.timeout: float = args.timeout
        self.addr: str = args.listen if side == "server" else args.connect
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.peer: Any = None
        # Set once the transfer runs with --seconds: no reconnection is waited for past this
        # (monotonic) time.
        self.give_up_at: float | None = None
        if side == "server":
            listener = make_socket(args.proto, _family(self.addr))
            self.listener = listener
            if args.congestion:
                set_congestion(listener, args.congestion)  # accepted sockets inherit it
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.addr, args.port))
            listener.listen(4)
            print("LISTENING", flush=True)

    def open(self) -> socket.socket:
        """The next connection; WorkloadError when none comes within --timeout."""
        self.drop()
        deadline = time.monotonic() + self.timeout
        if self.give_up_at is not None and self.give_up_at < deadline:
            deadline = self.give_up_at
        if self.listener is not None:
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.listener.settimeout(left)
                conn, self.peer = self.listener.accept()
            except TimeoutError:
                self._out_of_time(deadline)
                raise WorkloadError(f"no connection within {self.timeout} s") from None
        else:
            conn = self._connect(deadline)
            self.peer = conn.getpeername()
        conn.setblocking(False)
        self.conn = conn
        self.report.connections += 1
        return conn

    def _connect(self, deadline: float) -> socket.socket:
        last = "none made"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._out_of_time(deadline)
                raise WorkloadError(f"no connection within {self.timeout} s "
                                    f"(last attempt: {last})")
            sock = make_socket(self.args.proto, _family(self.addr))
            if self.args.congestion:
                set_congestion(sock, self.args.congestion)
            sock.settimeout(min(CONNECT_ATTEMPT_S, left))
            started = time.monotonic()
            try:
                sock.connect((self.addr, self.args.port))
                return sock
            except OSError as exc:  # unreachable while no route, refused, a lost SYN
                sock.close()
                last = f"{type(exc).__name__}: {exc.strerror or exc}"
            if time.monotonic() - started < RECONNECT_RETRY_S:
                time.sleep(RECONNECT_RETRY_S)

    def _out_of_time(self, deadline: float) -> None:
        if self.give_up_at is not None and deadline == self.give_up_at:
            raise _TransferOver()

    def drop(self) -> None:
        """Close the current connection with a reset: its peer may be unreachable, and a
        FIN retransmitted to it for minutes helps nobody."""
        if self.conn is None:
            return
        with contextlib.suppress(OSError):
            self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def wait(self, write: bool) -> None:
        """Until the connection can be written (or read); _Superseded when a new connection
        is waiting at the server first; TimeoutError after --timeout without either."""
        assert self.conn is not None
        readers: list[socket.socket] = [] if write else [self.conn]
        if self.listener is not None:
            readers.append(self.listener)
        started = time.monotonic()
        queued: int | None = None
        while True:
            now = time.monotonic()
            left = self.timeout - (now - started)
            if left <= 0:
                raise TimeoutError
            if self.give_up_at is not None:
                left = min(left, max(self.give_up_at - now, RECONNECT_GRACE_S))
            readable, writable, _ = select.select(readers, [self.conn] if write else [], [],
                                                  left)
            if self.listener is not None and self.listener in readable:
                raise _Superseded("a new connection replaced this one")
            if readable or writable:
                return
            if self.give_up_at is not None and time.monotonic() >= self.give_up_at:
                # Past the transfer's time and its grace, nothing to read or write: unless
                # data still leaves (the send queue shrinks: a slow link draining the last
                # bytes), the peer is gone, as when its address went with its AP.
                before, queued = queued, _send_queue(self.conn)
                if queued is None or queued == before:
                    raise _TransferOver()

    def send_all(self, data: bytes) -> None:
        assert self.conn is not None
        view = memoryview(data)
        while view:
            self.wait(write=True)
            try:
                n = self.conn.send(view)
            except BlockingIOError:
                continue
            view = view[n:]

    def recv_into(self, buf: bytearray | memoryview) -> int:
        assert self.conn is not None
        while True:
            self.wait(write=False)
            try:
                return self.conn.recv_into(buf)
            except BlockingIOError:
                continue

    def read_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = bytearray(size - len(data))
            n = self.recv_into(chunk)
            if n == 0:
                raise ConnectionResetError(0, "closed before the resume header")
            data += chunk[:n]
        return bytes(data)


def _send_queue(sock: socket.socket) -> int | None:
    """Bytes sent and not yet acknowledged, or not yet sent (SIOCOUTQ); None if unknown."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


def _broken(exc: BaseException) -> str:
    if isinstance(exc, _Superseded):
        return str(exc)
    assert isinstance(exc, OSError)
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def _prefix_hash(seed: int, offset: int) -> Any:
    h = hashlib.sha256()
    for chunk in payload_chunks(seed, offset):
        h.update(chunk)
    return h


def send_resumable(link: _Link, report: Report, seed: int, total: int | None,
                   seconds: float | None, close_delay: float, established_mono: float) -> None:
    """The bulk sender over as many connections as it takes: each starts at the offset the
    receiver names, and the stream ends at the deadline (or `total`) counted from the first
    connection. `report.bytes` and `sha256` are those of the stream up to where the last
    connection ended, which the receiver confirmed by closing."""
    deadline = None if seconds is None else established_mono + seconds
    if deadline is not None:
        link.give_up_at = deadline + RECONNECT_GRACE_S
    h = hashlib.sha256()
    while True:
        outage = report.outages[-1] if report.outages else None
        try:
            magic, offset = RESUME_HEADER.unpack(link.read_exactly(RESUME_HEADER.size))
            if magic != RESUME_MAGIC:
                raise WorkloadError("the receiver sent no resume header: does it run with "
                                    "--reconnect too?")
            if outage is not None:
                outage["offset"] = offset
            h = _prefix_hash(seed, offset)
            sent = offset
            report.bytes = sent
            for chunk in payload_from(seed, offset, total):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                link.send_all(chunk)
                h.update(chunk)
                sent += len(chunk)
                report.bytes = sent
            report.sha256 = h.hexdigest()
            assert link.conn is not None
            _mptcp_info(link.conn, report)
            remaining = close_delay - (time.monotonic() - established_mono)
            if remaining > 0:
                time.sleep(remaining)
                report.close_wait_s = remaining
            link.conn.shutdown(socket.SHUT_WR)
            scratch = bytearray(4096)
            while link.recv_into(scratch):
                pass
            report.t_end = time.time()
            return
        except TimeoutError:
            raise
        except _TransferOver:  # the connection went silent past the transfer's time
            report.sha256 = h.hexdigest()
            report.ended_in_outage = True
            report.t_end = time.time()
            return
        except (_Superseded, OSError) as exc:
            report.sha256 = h.hexdigest()
            try:
                _reconnect(link, report, exc)
            except _TransferOver:
                report.ended_in_outage = True
                report.t_end = time.time()
                return


def _reconnect(link: _Link, report: Report, exc: BaseException) -> dict[str, Any]:
    assert report.t_start is not None
    outage: dict[str, Any] = {"broke_s": round(time.time() - report.t_start, 4),
                              "error": _broken(exc)}
    report.outages.append(outage)
    link.open()
    outage["connected_s"] = round(time.time() - report.t_start, 4)
    return outage


def receive_resumable(link: _Link, report: Report, start_mono: float,
                      seed: int, seconds: float | None) -> None:
    """The bulk receiver over as many connections as it takes: on each it first names the
    offset it has (RESUME_HEADER), then reads until the sender's clean end (EOF)."""
    buf = bytearray(RECV_BUF)
    view = memoryview(buf)
    receipt = _Receipt(start_mono)
    outage: dict[str, Any] | None = None
    if seconds is not None:
        link.give_up_at = start_mono + seconds + RECONNECT_GRACE_S
    try:
        while True:
            try:
                link.send_all(RESUME_HEADER.pack(RESUME_MAGIC, receipt.received))
                while True:
                    n = link.recv_into(buf)
                    now = time.monotonic()
                    if n == 0:
                        return
                    if outage is not None and "data_s" not in outage:
                        assert report.t_start is not None
                        outage["data_s"] = round(time.time() - report.t_start, 4)
                    receipt.add(view[:n], now, report)
            except TimeoutError:
                raise
            except _TransferOver:
                report.ended_in_outage = True
                return
            except (_Superseded, OSError) as exc:
                try:
                    outage = _reconnect(link, report, exc)
                except _TransferOver:
                    report.ended_in_outage = True
                    return
                outage["offset"] = receipt.received
    finally:
        receipt.finish(report)
        report.stream_intact = report.sha256 == payload_sha256(seed, receipt.received)
        if link.conn is not None:
            _mptcp_info(link.conn, report)


def _finish_times(report: Report) -> None:
    """Goodput over the transfer itself: the receiver counts until its last data byte (EOF
    may come later, after the sender's close delay); the sender until the receiver closed,
    minus the close delay it slept."""
    if report.t_start is None or report.t_end is None:
        return
    if report.role == "receiver" and report.t_last_data is not None and report.bytes:
        end = report.t_last_data
    else:
        end = report.t_end - report.close_wait_s
    report.duration_s = max(end - report.t_start, 1e-9)
    report.goodput_mbps = report.bytes * 8 / report.duration_s / 1e6


def write_report(report: Report, path: str | None) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a report; a
    path that is not a regular file (a device, a pipe) is written in place."""
    text = json.dumps(asdict(report), indent=1) + "\n"
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if os.path.exists(path) and not os.path.isfile(path):
        # /dev/null, a FIFO, /dev/stdout: renaming over these would replace the device
        # node itself with a regular file, so write into them instead.
        with open(path, "w") as f:
            f.write(text)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _userspace_connection(args: argparse.Namespace, side: Side,
                          addr: str) -> tuple[socket.socket, Any]:
    """Our userspace stack's connection: a socket from its daemon (testbed.runtime.api)
    carrying the TCP byte stream, used below exactly like a kernel socket."""
    from testbed.runtime import api

    if side == "server":
        with api.listen(args.stack_control, addr, args.port, timeout=args.timeout) as listener:
            print("LISTENING", flush=True)
            conn, peer = listener.accept(timeout=args.timeout)
    else:
        conn = api.connect(args.stack_control, addr, args.port, congestion=args.congestion,
                           timeout=args.timeout)
        peer = conn.getpeername()
    conn.settimeout(args.timeout)
    return conn, peer


def run(args: argparse.Namespace) -> Report:
    """Run one side of the transfer; errors end up in the report, never as an exception."""
    side: Side = args.mode
    sender = (args.direction == "upload") == (side == "client")
    report = Report(
        role="sender" if sender else "receiver",
        side=side,
        proto=args.proto,
        direction=args.direction,
        seed=args.seed,
        congestion_requested=args.congestion,
    )
    sock: socket.socket | None = None
    conn: socket.socket | None = None
    link: _Link | None = None
    try:
        addr = args.listen if side == "server" else args.connect
        if args.reconnect:
            link = _Link(args, side, report)
            conn = link.open()
            peer = link.peer
        elif args.proto == "userspace":
            conn, peer = _userspace_connection(args, side, addr)
        else:
            sock = make_socket(args.proto, _family(addr))
            if args.congestion:
                set_congestion(sock, args.congestion)
            sock.settimeout(args.timeout)
            if side == "server":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((addr, args.port))
                sock.listen(1)
                print("LISTENING", flush=True)
                conn, peer = sock.accept()
                conn.settimeout(args.timeout)
            else:
                sock.connect((addr, args.port))
                peer = sock.getpeername()
                conn, sock = sock, None
        established = time.monotonic()
        report.t_start = time.time()
        report.local = _addr(conn.getsockname())
        report.remote = _addr(peer)
        report.congestion = get_congestion(conn)
        interval_s = args.interval_ms / 1000
        if link is not None and sender:
            send_resumable(link, report, args.seed, args.bytes, args.seconds, args.close_delay,
                           established)
        elif link is not None:
            receive_resumable(link, report, established, args.seed, args.seconds)
        elif sender and args.messages:
            send_messages(conn, report, args.seed, args.messages, interval_s, args.bytes,
                          args.seconds, established)
        elif sender:
            send_stream(
                conn, report, args.seed, args.bytes, args.seconds, args.close_delay, established
            )
        else:
            receive_stream(conn, report, established, args.messages, interval_s)
    except WorkloadError as exc:
        report.error = str(exc)
    except _Terminated:
        report.error = "terminated by signal before the transfer finished"
    except TimeoutError:
        report.error = f"no progress for {args.timeout} s (socket timeout)"
    except OSError as exc:
        report.error = f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        if link is not None:
            link.close()
        for s in (conn, sock):
            if s is not None:
                s.close()
    _finish_times(report)
    return report


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m testbed.workload", description=__doc__.split("\n")[0]
    )
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--proto", choices=["mptcp", "tcp", "userspace"], default="mptcp")
    p.add_argument("--stack-control", help="userspace: the stack daemon's control socket")
    p.add_argument("--listen", help="server: address to bind")
    p.add_argument("--connect", help="client: server address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--direction",
        choices=["upload", "download"],
        default="upload",
        help="upload: the client sends; download: the server sends",
    )
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--bytes", type=int, help="sender: send exactly N bytes")
    amount.add_argument("--seconds", type=_positive_float, help="sender: send for T seconds")
    p.add_argument("--congestion", help="congestion control set per socket (TCP_CONGESTION)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report", help="JSON report path (default: stdout)")
    p.add_argument(
        "--close-delay",
        type=_positive_float,
        default=0.2,
        help="sender: minimum seconds between connection setup and shutdown",
    )
    p.add_argument("--messages", type=int, metavar="SIZE",
                   help="both sides: constant-rate messages of SIZE bytes instead of bulk")
    p.add_argument("--interval-ms", type=float, default=20.0,
                   help="messages mode: one message every this many ms")
    p.add_argument("--reconnect", action="store_true",
                   help="both sides, bulk: survive a broken connection by connecting again "
                        "(until --timeout passes without one) and resuming the stream")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        help="give up when accept/connect/send/recv makes no progress this long",
    )
    args = p.parse_args(argv)
    if args.proto == "userspace" and not args.stack_control:
        p.error("--proto userspace needs --stack-control PATH")
    if args.mode == "server" and not args.listen:
        p.error("server needs --listen ADDR")
    if args.mode == "client" and not args.connect:
        p.error("client needs --connect ADDR")
    if args.bytes is not None and args.bytes < 0:
        p.error("--bytes must be >= 0")
    if args.messages is not None and args.messages < MESSAGE_HEADER.size:
        p.error(f"--messages must be at least {MESSAGE_HEADER.size} bytes (number and time)")
    if args.reconnect and args.messages is not None:
        p.error("--reconnect resumes bulk transfers only, not --messages")
    if args.reconnect and args.proto == "userspace":
        p.error("--reconnect needs kernel sockets (--proto tcp or mptcp)")
    if args.interval_ms <= 0:
        p.error("--interval-ms must be positive")
    if args.bytes is None and args.seconds is None:
        args.bytes = 16 * 1024 * 1024
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    report = run(args)
    # Once the transfer is over, a late signal must not interrupt writing the report.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        write_report(report, args.report)
    except OSError as exc:
        print(f"workload: cannot write report {args.report}: {exc}", file=sys.stderr)
        return 1
    if report.error:
        print(f"workload {report.side}: {report.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
