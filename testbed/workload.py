"""The bulk-transfer program run inside an emulated host: one connection, deterministic bytes,
sha256 on both ends, and a JSON report.

    python -m testbed.workload server --listen ADDR --port P [options]
    python -m testbed.workload client --connect ADDR --port P [options]

The server accepts exactly one connection and exits; it prints `LISTENING` (flushed) once the
socket listens so a runner knows when to start the client. `--direction upload` means the
client sends. Network errors never end in a traceback: the report carries `error` and the
exit status is 1 (2 for bad arguments, as argparse does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import tempfile
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
    mptcp_subflows: int | None = None  # extra subflows (not counting the first), MPTCP_INFO
    mptcp_token: str | None = None
    mptcp_fallback: bool | None = None
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


def receive_stream(sock: socket.socket, report: Report, start_mono: float) -> None:
    h = hashlib.sha256()
    buf = bytearray(RECV_BUF)
    view = memoryview(buf)
    bins: list[int] = []
    received = 0
    last_data_mono = start_mono
    try:
        while True:
            n = sock.recv_into(buf)
            now = time.monotonic()
            if n == 0:
                break
            h.update(view[:n])
            received += n
            last_data_mono = now
            idx = int((now - start_mono) / BIN_S)
            if idx >= len(bins):
                bins.extend([0] * (idx + 1 - len(bins)))
            bins[idx] += n
            report.bytes = received
    finally:
        # Also when the connection dies: what arrived until then (and when) is what a
        # scenario such as a migration without MPTCP needs to measure.
        report.t_end = time.time()
        assert report.t_start is not None
        report.t_last_data = report.t_start + (last_data_mono - start_mono)
        report.sha256 = h.hexdigest()
        report.series = [[round(i * BIN_S, 3), b] for i, b in enumerate(bins)]
    _mptcp_info(sock, report)


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
    try:
        addr = args.listen if side == "server" else args.connect
        if args.proto == "userspace":
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
        if sender:
            send_stream(
                conn, report, args.seed, args.bytes, args.seconds, args.close_delay, established
            )
        else:
            receive_stream(conn, report, established)
    except WorkloadError as exc:
        report.error = str(exc)
    except _Terminated:
        report.error = "terminated by signal before the transfer finished"
    except TimeoutError:
        report.error = f"no progress for {args.timeout} s (socket timeout)"
    except OSError as exc:
        report.error = f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
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
