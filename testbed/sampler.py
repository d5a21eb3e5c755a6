"""Long-lived per-host sampler of TCP/MPTCP socket state: runs inside the host's network
namespace and appends one CSV row per socket per tick, from `ss -tinHM`.

    python -m testbed.sampler --interval 0.1 --out FILE.csv [--port P] [--duration S]

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
from collections.abc import Sequence

from testbed.stats import CSV_FIELDS, parse_ss, sample_to_row, ss_argv

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def sample_loop(out: str, interval: float, port: int | None, duration: float | None) -> int:
    # Block the stop signals and collect them with sigtimedwait as the "sleep" between ticks:
    # a signal can then never land halfway through writing a row, and needs no handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    argv = ss_argv(port)
    start = time.monotonic()
    tick = 0
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        f.flush()
        while True:
            t = time.time()
            try:
                # ss inherits the blocked mask; it is short-lived and never needs a signal.
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"sampler: ss failed: {exc}", file=sys.stderr)
                return 1
            if proc.returncode != 0:
                print(f"sampler: {' '.join(argv)}: {proc.stderr.strip()}", file=sys.stderr)
                return 1
            writer.writerows(sample_to_row(s) for s in parse_ss(proc.stdout, t))
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
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error("--interval must be > 0")
    return sample_loop(args.out, args.interval, args.port, args.duration)


if __name__ == "__main__":
    sys.exit(main())
