"""Long-lived per-host sampler of TCP/MPTCP socket state: runs inside the host's network
namespace and appends one CSV row per socket per tick, from `ss -tinHM`.

    python -m testbed.sampler --interval 0.1 --out FILE.csv [--port P] [--duration S]
    python -m testbed.sampler ... --stack-control PATH   # our userspace stack, same columns

Columns: testbed.stats.CSV_FIELDS. SIGTERM or SIGINT ends it after the current tick with
the file flushed and closed (exit status 0).
"""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from testbed.stats import CSV_FIELDS, SocketSample, addr_port, parse_ss, sample_to_row, ss_argv

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

# A source of samples for one tick; raises SamplerError when it cannot sample any more.
Source = Callable[[float], list[SocketSample]]


class SamplerError(Exception):
    pass


def kernel_source(port: int | None) -> Source:
    """The kernel's sockets, from `ss -tinHM`."""
    argv = ss_argv(port)

    def sample(t: float) -> list[SocketSample]:
        try:
            # ss inherits the blocked mask; it is short-lived and never needs a signal.
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SamplerError(f"ss failed: {exc}") from None
        if proc.returncode != 0:
            raise SamplerError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return parse_ss(proc.stdout, t)

    return sample


def stack_source(control: str, port: int | None) -> Source:
    """Our userspace stack's connections, from its control channel, in ss's units (cwnd and
    ssthresh in segments) so that one CSV format serves every stack."""
    from testbed.runtime import api

    def sample(t: float) -> list[SocketSample]:
        try:
            report = api.stats(control)
        except (OSError, ValueError) as exc:
            raise SamplerError(f"stack control {control}: {exc}") from None
        return [s for conn in report.get("connections", []) for s in stack_sample(conn, t)
                if port is None or port in (addr_port(s.local), addr_port(s.remote))]

    return sample


def _ss_state(state: Any) -> str:
    return {"ESTABLISHED": "ESTAB"}.get(str(state or ""), str(state or ""))


def stack_sample(conn: dict[str, Any], t: float) -> list[SocketSample]:
    """One connection of our stack as `ss -tinM` shows the kernel's: an MPTCP connection is
    an "mptcp" row (its extra subflows counted) and a "subflow" row per subflow, all with
    the connection's local token; a plain TCP connection, or one fallen back to TCP, is a
    single "tcp" row."""
    stats = conn.get("stats") or {}
    congestion = conn.get("congestion")
    local = f"{conn['local'][0]}:{conn['local'][1]}"
    remote = f"{conn['remote'][0]}:{conn['remote'][1]}"
    subflows = stats.get("subflows")
    if subflows is None or stats.get("fallback"):
        # A TcpConnection's stats, or the one subflow a fallen-back connection has.
        tcp = subflows[0] if subflows else stats
        return [_tcp_sample(t, "tcp", _ss_state(conn.get("state")), local, remote, tcp,
                            congestion)]
    token = f"{int(stats.get('local_token') or 0):x}"
    rows = [SocketSample(t=t, netid="mptcp", kind="mptcp", state=_ss_state(conn.get("state")),
                         local=local, remote=remote, token=token,
                         subflows=max(0, len(subflows) - 1),
                         bytes_acked=stats.get("bytes_acked"),
                         bytes_received=stats.get("bytes_received"),
                         bytes_sent=stats.get("bytes_sent"))]
    for sf in subflows:
        row = _tcp_sample(t, "subflow", _ss_state(sf.get("state")),
                          f"{sf['local_addr']}:{sf['local_port']}",
                          f"{sf['remote_addr']}:{sf['remote_port']}", sf,
                          sf.get("congestion") or congestion)
        row.token = token
        # ss's subflow flags: M for the MP_CAPABLE subflow, J for a join, e once established.
        row.mptcp_flags = ("M" if sf.get("initial") else "J") + (
            "e" if sf.get("fully_established") else "")
        rows.append(row)
    return rows


def _tcp_sample(t: float, kind: str, state: str, local: str, remote: str,
                stats: dict[str, Any], congestion: str | None) -> SocketSample:
    mss = stats.get("mss") or 1

    def segments(value: Any) -> int | None:
        return None if value is None else int(value) // int(mss)

    return SocketSample(
        t=t, netid="tcp", kind=kind, state=state, local=local, remote=remote,
        cwnd=segments(stats.get("cwnd")), ssthresh=segments(stats.get("ssthresh")),
        srtt_ms=stats.get("srtt_ms"), rttvar_ms=stats.get("rttvar_ms"),
        rto_ms=stats.get("rto_ms"), bytes_acked=stats.get("bytes_acked"),
        bytes_received=stats.get("bytes_received"), retrans=stats.get("retransmissions"),
        congestion=congestion,
    )


def sample_loop(out: str, interval: float, source: Source, duration: float | None) -> int:
    # Block the stop signals and collect them with sigtimedwait as the "sleep" between ticks:
    # a signal can then never land halfway through writing a row, and needs no handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    start = time.monotonic()
    tick = 0
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        f.flush()
        while True:
            t = time.time()
            try:
                samples = source(t)
            except SamplerError as exc:
                print(f"sampler: {exc}", file=sys.stderr)
                return 1
            writer.writerows(sample_to_row(s) for s in samples)
            # Flush every tick: the runner may kill us hard, and a tick is a few rows.
            f.flush()
            tick += 1
            # Fixed schedule (not "sleep interval after the work") so ss's run time does not
            # stretch the sampling period.
            next_tick = start + tick * interval
            if duration is not None and next_tick - start > duration:
                return 0
            wait = next_tick - time.monotonic()
            if wait > 0 and signal.sigtimedwait(_STOP_SIGNALS, wait) is not None:
                return 0
            if signal.sigpending() & _STOP_SIGNALS:
                return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m testbed.sampler", description=__doc__.split("\n")[0]
    )
    p.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--port", type=int, help="only sockets with this source or destination port")
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    p.add_argument("--stack-control", help="sample our userspace stack through this socket")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error("--interval must be > 0")
    source = (stack_source(args.stack_control, args.port) if args.stack_control
              else kernel_source(args.port))
    return sample_loop(args.out, args.interval, source, args.duration)


if __name__ == "__main__":
    sys.exit(main())
