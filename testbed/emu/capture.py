"""Packet capture with tcpdump inside emulated hosts, and the host's CPU headroom during a run."""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.emu.network import Emulation
from testbed.errors import TestbedError


@dataclass
class Capture:
    host: str
    intf: str
    path: Path
    proc: subprocess.Popen[bytes]

    def stop(self, timeout: float = 5.0) -> str:
        """Stop tcpdump (it writes its buffers on SIGTERM) and return its closing report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace").strip()


def start_capture(emu: Emulation, host: str, intf: str, path: Path, snaplen: int,
                  ready_timeout: float = 10.0) -> Capture:
    """Start tcpdump and wait until it listens, so the capture misses no handshake."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # --immediate-mode: without it a quiet interface can lose its buffered packets at SIGTERM.
    argv = ["tcpdump", "-i", intf, "-s", str(snaplen), "-n", "-U", "--immediate-mode",
            "-Z", "root", "-w", str(path)]
    proc = emu.popen(emu.host(host), argv, f"tcpdump {intf}",
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + ready_timeout
    seen = b""
    while b"listening on" not in seen:
        remaining = deadline - time.monotonic()
        if proc.poll() is not None or remaining <= 0:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise TestbedError(f"tcpdump on {host}:{intf} did not start: "
                               f"{seen.decode(errors='replace').strip()}")
        ready, _, _ = select.select([proc.stderr], [], [], remaining)
        if ready:
            chunk = proc.stderr.read1(4096)  # type: ignore[attr-defined]
            seen += chunk
    return Capture(host, intf, path, proc)


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return idle, sum(fields[:8])  # guest time is already inside user


@dataclass
class CpuMonitor:
    """Idle CPU share over the whole run and over its busiest one-second window.

    An emulation is trustworthy only if the machine kept up (Handigol et al., CoNEXT 2012):
    a worst window with almost no idle CPU means shapers and stacks may have been starved.
    """

    interval_s: float = 1.0
    worst_idle_pct: float = 100.0
    _start: tuple[int, int] = (0, 0)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    mean_idle_pct: float | None = None

    def start(self) -> None:
        self._start = _cpu_times()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last = _cpu_times()
        while not self._stop.wait(self.interval_s):
            now = _cpu_times()
            total = now[1] - last[1]
            if total > 0:
                self.worst_idle_pct = min(self.worst_idle_pct, 100 * (now[0] - last[0]) / total)
            last = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end = _cpu_times()
        total = end[1] - self._start[1]
        self.mean_idle_pct = 100 * (end[0] - self._start[0]) / total if total > 0 else None
