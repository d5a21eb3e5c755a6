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

from testbed.stats import CSV_FIELDS, SocketSample, parse_ss, sample_to_row, ss_argv

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
        return [s for conn in report.get("connections", [])
                if (s := stack_sample(conn, t)) is not None
                and (port is None or port in (conn["local"][1], conn["remote"][1]))]

    return sample


def stack_sample(conn: dict[str, Any], t: float) -> SocketSample | None:
    stats = conn.get("stats") or {}
    mss = stats.get("mss") or 1
    state = {"ESTABLISHED": "ESTAB"}.get(conn.get("state", ""), conn.get("state", ""))

    def segments(value: Any) -> int | None:
        return None if value is None else int(value) // int(mss)

    return SocketSample(
        t=t, netid="tcp", kind="tcp", state=state,
        local=f"{conn['local'][0]}:{conn['local'][1]}",
        remote=f"{conn['remote'][0]}:{conn['remote'][1]}",
        cwnd=segments(stats.get("cwnd")), ssthresh=segments(stats.get("ssthresh")),
        srtt_ms=stats.get("srtt_ms"), rttvar_ms=stats.get("rttvar_ms"),
        rto_ms=stats.get("rto_ms"), bytes_acked=stats.get("bytes_acked"),
        bytes_received=stats.get("bytes_received"), retrans=stats.get("retransmissions"),
        congestion=conn.get("congestion"),
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
