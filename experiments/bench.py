"""`testbed bench links`: does an emulated link do what it was configured to do?

Each check builds the two-host `topologies.pair` network afresh with the shaping under test (so
no queue, counter or ARP entry carries over from the previous check), measures with ping or
iperf3 on the resolved backend, and compares with a stated target. The measurement functions
take a started `Emulation` of that topology so that the netns tests can call them directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import select
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.emu.cleanup import ProcessRecord, RunRecord, signals_as_keyboard_interrupt
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.links import resolve_backend
from testbed.emu.network import Emulation, require_root, require_tools
from testbed.emu.nodes import TestbedHost
from testbed.errors import ParameterError, TestbedError
from topologies.pair import B_ADDR, LINK_NAME, PairTopo

# Frame sizes on the wire as both backends count them (Ethernet header, no FCS).
ETH_HEADER = 14
FRAME_BYTES = 1500 + ETH_HEADER
# Linux TCP over a 1500-byte MTU carries 1448 bytes per segment (20 IP + 20 TCP + 12 bytes of
# timestamps option); used to estimate the wire rate where no shaper counters exist (netem).
TCP_PAYLOAD = 1448
# UDP datagram that fills one frame exactly: 1500 - 20 (IP) - 8 (UDP).
UDP_PAYLOAD = 1472
CAPACITY_PAYLOAD = 64

RTT_INTERVAL_S = 0.02
# The loss check sends faster than the RTT check: the width of the binomial interval shrinks
# with the square root of the count, and 500 echoes/s are nothing for either backend.
LOSS_INTERVAL_S = 0.002
RATE_TOLERANCE = 0.05
RTT_ABS_TOLERANCE_MS = 1.0
RTT_REL_TOLERANCE = 0.05
LOSS_CONFIDENCE = 0.99
UDP_OVERLOAD = 1.2
# The shaper must move at least this many times the frames/s that the configured rate needs
# in full-size frames: TCP adds an ACK for every second segment the other way through the same
# loop, and the rest is headroom so that a busy second does not delay frames.
CAPACITY_HEADROOM = 2.0
CAPACITY_MAX_SECONDS = 2.0
IPERF_PORT = 5201
SERVER_READY_TIMEOUT_S = 10.0


@dataclass
class CheckResult:
    """One row of the table. `passed` is None for a check that does not apply (skipped)."""

    check: str
    configured: str
    measured: str
    target: str
    passed: bool | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "skip" if self.passed is None else ("PASS" if self.passed else "FAIL")


# -- statistics and verdicts (pure, unit-tested) ------------------------------------------------

def wilson_interval(successes: int, trials: int,
                    confidence: float = LOSS_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at zero
    successes, which is exactly the case of a lossless link.
    """
    if trials <= 0:
        raise ParameterError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ParameterError(f"successes must be within 0..{trials}, got {successes}")
    if not 0 < confidence < 1:
        raise ParameterError(f"confidence must be within (0, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    # In exact arithmetic p = 0 gives a lower bound of exactly 0 and p = 1 an upper bound of
    # exactly 1; floating point misses by an ulp, which would fail a 0 % or 100 % link.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def rtt_tolerance_ms(configured_ms: float) -> float:
    return max(RTT_ABS_TOLERANCE_MS, RTT_REL_TOLERANCE * configured_ms)


def rtt_ok(mean_ms: float, configured_ms: float) -> bool:
    return abs(mean_ms - configured_ms) <= rtt_tolerance_ms(configured_ms)


def rate_ok(measured_mbps: float, configured_mbps: float,
            tolerance: float = RATE_TOLERANCE) -> bool:
    return abs(measured_mbps - configured_mbps) <= tolerance * configured_mbps


def loss_ok(lost: int, sent: int, configured_pct: float) -> bool:
    low, high = wilson_interval(lost, sent)
    return low <= configured_pct / 100 <= high


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    if not samples:
        raise ParameterError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def capacity_needed_fps(rate_mbps: float) -> float:
    return CAPACITY_HEADROOM * rate_mbps * 1e6 / 8 / FRAME_BYTES


def exit_status(results: Sequence[CheckResult]) -> int:
    """0 when no check failed (skipped checks do not count), 1 otherwise."""
    return 1 if any(r.passed is False for r in results) else 0


COLUMNS = ("check", "configured", "measured", "target", "verdict")


def format_table(results: Sequence[CheckResult]) -> str:
    rows = [list(COLUMNS)] + [[r.check, r.configured, r.measured, r.target, r.verdict]
                              for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_json(results: Sequence[CheckResult], params: dict[str, Any]) -> dict[str, Any]:
    return {
        "params": params,
        "checks": [{**asdict(r), "verdict": r.verdict} for r in results],
        "ok": exit_status(results) == 0,
    }


def validate(rate_mbps: float, delay_ms: float, loss_pct: float, seconds: float) -> None:
    """Refuse what cannot be measured, before anything is created."""
    if not (math.isfinite(rate_mbps) and rate_mbps > 0):
        raise ParameterError(f"rate must be a positive number of Mbit/s, got {rate_mbps!r}")
    if not (math.isfinite(delay_ms) and delay_ms >= 0):
        raise ParameterError(f"delay must be >= 0 ms, got {delay_ms!r}")
    if not (math.isfinite(loss_pct) and 0 <= loss_pct <= 100):
        raise ParameterError(f"loss must be within 0..100 %, got {loss_pct!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ParameterError(f"seconds must be positive, got {seconds!r}")


# -- running things inside the emulated hosts -------------------------------------------------

def _run(emu: Emulation, host: TestbedHost, argv: Sequence[str], what: str,
         timeout: float) -> str:
    """Run a command to completion in a host, recorded for cleanup like every other process."""
    proc = emu.popen(host, argv, what, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TestbedError(f"{what} on {host.name} did not finish in {timeout:.0f} s") from None
    except BaseException:
        # Ctrl-C while waiting: do not leave the child to the sweep alone.
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        text = (err or out).decode(errors="replace").strip()
        raise TestbedError(f"{what} on {host.name} failed ({proc.returncode}): {text[-500:]}")
    return out.decode(errors="replace")


@contextlib.contextmanager
def _iperf_server(emu: Emulation) -> Iterator[subprocess.Popen[bytes]]:
    """`iperf3 -s -1` on b, returned once it listens; stopped on the way out if still alive."""
    server = emu.popen(emu.host("b"),
                       ["iperf3", "-s", "-1", "--forceflush", "-p", str(IPERF_PORT)],
                       "iperf3 server", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        # Raw reads on the descriptor: a buffered readline() may swallow the line we wait for
        # into Python's buffer, where select() cannot see it.
        fd = server.stdout.fileno()
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        seen = b""
        while b"listening" not in seen.lower():
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0]
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                raise TestbedError("iperf3 server on b did not start listening")
            seen += chunk
        yield server
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()


def _iperf_client(emu: Emulation, args: Sequence[str], seconds: float) -> dict[str, Any]:
    argv = ["iperf3", "-c", B_ADDR, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J", *args]
    out = _run(emu, emu.host("a"), argv, "iperf3 client", timeout=seconds + 30)
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        raise TestbedError(f"iperf3 printed no JSON: {out[:300]!r}") from None
    if "error" in report:
        raise TestbedError(f"iperf3: {report['error']}")
    return report


def _link_counters(emu: Emulation, direction: str) -> dict[str, Any] | None:
    """Counters of the shaper for one direction of the link (None with a kernel backend)."""
    stats = emu.shaper_stats()
    if not stats:
        return None
    link = emu.link(LINK_NAME)
    return dict(stats["links"][link.name][direction])


def _ping(emu: Emulation, count: int, interval_s: float) -> str:
    # No -w: with a deadline ping keeps sending until `count` replies came back, which would
    # hide losses. -W bounds the wait for the last replies; the timeout below bounds the rest.
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval_s:g}", "-W", "2", B_ADDR]
    # ping exits 1 when some echo went unanswered, which is the point of the loss check.
    proc = emu.popen(emu.host("a"), argv, "ping", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=count * interval_s + 30)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode not in (0, 1):
        raise TestbedError(f"ping failed ({proc.returncode}): {err.decode(errors='replace')}")
    return out.decode(errors="replace")


# -- the measurements ---------------------------------------------------------------------------

@dataclass
class RttMeasurement:
    samples_ms: list[float]
    sent: int

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples_ms, 99)


def measure_rtt(emu: Emulation, count: int) -> RttMeasurement:
    out = _ping(emu, count, RTT_INTERVAL_S)
    samples = [float(v) for v in re.findall(r"time=([\d.]+) ms", out)]
    if not samples:
        raise TestbedError(f"ping got no reply: {out[-300:]}")
    return RttMeasurement(samples, count)


@dataclass
class TcpMeasurement:
    goodput_mbps: float
    wire_mbps: float
    wire_source: str  # "shaper counters" or "estimate 1514/1448"
    congestion: str
    retransmits: int | None


def tcp_congestion_choice(emu: Emulation) -> str | None:
    """cubic when the namespace may use it, else None (the namespace's default).

    A new namespace may only pick from `tcp_allowed_congestion_control`; changing that list in
    the root namespace would change the machine for everyone else, so we do not.
    """
    allowed = emu.host("a").run(["sysctl", "-n", "net.ipv4.tcp_allowed_congestion_control"])
    return "cubic" if "cubic" in allowed.split() else None


def measure_tcp(emu: Emulation, seconds: float) -> TcpMeasurement:
    congestion = tcp_congestion_choice(emu)
    before = _link_counters(emu, "a2b")
    with _iperf_server(emu):
        report = _iperf_client(emu, ["-C", congestion] if congestion else [], seconds)
    after = _link_counters(emu, "a2b")
    end = report["end"]
    received = end["sum_received"]
    goodput = received["bits_per_second"] / 1e6
    if before is not None and after is not None and received["bytes"] > 0:
        # Everything the shaper put on the wire a2b per payload byte delivered: headers,
        # retransmissions and the control connection, measured rather than assumed.
        overhead = (after["bytes_out"] - before["bytes_out"]) / received["bytes"]
        wire, source = goodput * overhead, "shaper counters"
    else:
        wire, source = goodput * FRAME_BYTES / TCP_PAYLOAD, f"estimate {FRAME_BYTES}/{TCP_PAYLOAD}"
    used = end.get("sender_tcp_congestion") or congestion or "default"
    return TcpMeasurement(goodput, wire, source, used, end["sum_sent"].get("retransmits"))


@dataclass
class UdpMeasurement:
    offered_mbps: float
    received_mbps: float  # UDP payload
    wire_mbps: float
    lost_pct: float


def measure_udp(emu: Emulation, rate_mbps: float, seconds: float) -> UdpMeasurement:
    offered = UDP_OVERLOAD * rate_mbps
    # -b counts UDP payload: offer 1.2x the link rate in payload so the link is surely full.
    with _iperf_server(emu):
        report = _iperf_client(emu, ["-u", "-b", f"{offered * 1e6:.0f}",
                                     "-l", str(UDP_PAYLOAD)], seconds)
    received = report["end"]["sum_received"]
    payload_mbps = received["bits_per_second"] / 1e6
    return UdpMeasurement(offered, payload_mbps,
                          payload_mbps * FRAME_BYTES / UDP_PAYLOAD,
                          float(received.get("lost_percent", 0.0)))


@dataclass
class LossMeasurement:
    sent: int
    lost: int

    @property
    def fraction(self) -> float:
        return self.lost / self.sent

    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.lost, self.sent)


def measure_loss(emu: Emulation, count: int) -> LossMeasurement:
    """Echoes lost on a link with loss configured a2b only, so that one echo is one trial."""
    out = _ping(emu, count, LOSS_INTERVAL_S)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if not match:
        raise TestbedError(f"cannot read ping's summary: {out[-300:]}")
    sent, received = int(match.group(1)), int(match.group(2))
    return LossMeasurement(sent, sent - received)


@dataclass
class CapacityMeasurement:
    frames_per_s: float
    cpu_s: float
    cpu_load: float
    frames_per_cpu_s: float


def measure_capacity(emu: Emulation, seconds: float) -> CapacityMeasurement | None:
    """Frames/s the userspace shaper moves a2b when nothing limits it; None for netem."""
    stats = emu.shaper_stats()
    if not stats:
        return None
    before_link = _link_counters(emu, "a2b")
    before_loop = stats["loop"]
    t0 = time.monotonic()
    with _iperf_server(emu):
        _iperf_client(emu, ["-u", "-b", "0", "-l", str(CAPACITY_PAYLOAD)], seconds)
    elapsed = time.monotonic() - t0
    after = emu.shaper_stats()
    after_link = after["links"][emu.link(LINK_NAME).name]["a2b"]
    after_loop = after["loop"]
    assert before_link is not None
    # The window includes iperf3's setup and teardown, when the link is idle: a conservative
    # (lower) figure, never an inflated one.
    moved = after_link["frames_out"] - before_link["frames_out"]
    cpu = after_loop["cpu_s"] - before_loop["cpu_s"]
    handled = (after_loop["frames_read"] + after_loop["frames_written"]
               - before_loop["frames_read"] - before_loop["frames_written"])
    return CapacityMeasurement(moved / elapsed, cpu, cpu / elapsed,
                               handled / cpu if cpu > 0 else 0.0)


# -- the bench ----------------------------------------------------------------------------------

def _fmt(value: float, unit: str, digits: int = 2) -> str:
    return f"{value:.{digits}f} {unit}"


def _check_rtt(emu: Emulation, delay_ms: float, seconds: float) -> CheckResult:
    configured = 2 * delay_ms
    m = measure_rtt(emu, max(50, round(seconds / RTT_INTERVAL_S)))
    return CheckResult(
        "rtt (ping)", _fmt(configured, "ms"),
        f"min {m.min_ms:.2f} / mean {m.mean_ms:.2f} / p99 {m.p99_ms:.2f} ms",
        f"|mean-cfg| <= {rtt_tolerance_ms(configured):.2f} ms",
        rtt_ok(m.mean_ms, configured),
        {"samples": len(m.samples_ms), "sent": m.sent, "min_ms": m.min_ms,
         "mean_ms": m.mean_ms, "p99_ms": m.p99_ms},
    )


def _check_tcp(emu: Emulation, rate_mbps: float, seconds: float) -> CheckResult:
    m = measure_tcp(emu, seconds)
    return CheckResult(
        f"tcp rate (iperf3, {m.congestion})", _fmt(rate_mbps, "Mbit/s"),
        f"wire {m.wire_mbps:.2f} Mbit/s (goodput {m.goodput_mbps:.2f})",
        f"wire within {RATE_TOLERANCE:.0%}", rate_ok(m.wire_mbps, rate_mbps), asdict(m),
    )


def _check_udp(emu: Emulation, rate_mbps: float, seconds: float) -> CheckResult:
    m = measure_udp(emu, rate_mbps, seconds)
    return CheckResult(
        f"udp rate (iperf3 -u at {UDP_OVERLOAD:g}x)", _fmt(rate_mbps, "Mbit/s"),
        f"wire {m.wire_mbps:.2f} Mbit/s (payload {m.received_mbps:.2f})",
        f"wire within {RATE_TOLERANCE:.0%}", rate_ok(m.wire_mbps, rate_mbps), asdict(m),
    )


def _check_loss(emu: Emulation, loss_pct: float, seconds: float) -> CheckResult:
    m = measure_loss(emu, max(200, round(seconds / LOSS_INTERVAL_S)))
    low, high = m.interval()
    return CheckResult(
        "loss (ping, a2b)", _fmt(loss_pct, "%"),
        f"{100 * m.fraction:.2f} % ({m.lost}/{m.sent})",
        f"cfg in {LOSS_CONFIDENCE:.0%} CI [{100 * low:.2f}, {100 * high:.2f}] %",
        loss_ok(m.lost, m.sent, loss_pct),
        {"sent": m.sent, "lost": m.lost, "ci_low": low, "ci_high": high},
    )


def _check_capacity(emu: Emulation, rate_mbps: float, seconds: float) -> CheckResult:
    needed = capacity_needed_fps(rate_mbps)
    m = measure_capacity(emu, min(seconds, CAPACITY_MAX_SECONDS))
    if m is None:
        return CheckResult("shaper capacity", "unshaped", "kernel", "-", None)
    return CheckResult(
        f"shaper capacity ({CAPACITY_PAYLOAD} B UDP)", "unshaped",
        f"{m.frames_per_s:.0f} frames/s, cpu {m.cpu_load:.0%}, "
        f"{m.frames_per_cpu_s:.0f} frames/cpu-s",
        f">= {needed:.0f} frames/s", m.frames_per_s >= needed, asdict(m),
    )


Check = Callable[[Emulation], CheckResult]


def plan(rate_mbps: float, delay_ms: float, loss_pct: float,
         seconds: float) -> list[tuple[LinkShaping, Check]]:
    """Each check with the fresh link configuration it runs on."""
    def sym(**params: Any) -> LinkShaping:
        return LinkShaping.symmetric(**params)

    return [
        (sym(delay_ms=delay_ms), lambda emu: _check_rtt(emu, delay_ms, seconds)),
        (sym(rate_mbps=rate_mbps, delay_ms=delay_ms),
         lambda emu: _check_tcp(emu, rate_mbps, seconds)),
        (sym(rate_mbps=rate_mbps, delay_ms=delay_ms),
         lambda emu: _check_udp(emu, rate_mbps, seconds)),
        # Loss one way only: an echo then fails exactly when its request is dropped.
        (LinkShaping(Shaping(delay_ms=delay_ms, loss_pct=loss_pct), Shaping(delay_ms=delay_ms)),
         lambda emu: _check_loss(emu, loss_pct, seconds)),
        (sym(), lambda emu: _check_capacity(emu, rate_mbps, seconds)),
    ]


def run_checks(backend: str, seed: int, record: RunRecord,
               checks: Sequence[tuple[LinkShaping, Check]]) -> list[CheckResult]:
    results = []
    for shaping, check in checks:
        emu = Emulation(PairTopo(shaping=shaping), backend, seed, record)
        # Not `with emu:`: a context manager's __exit__ does not run when __enter__ raises, and
        # a Ctrl-C during start() must still remove the hosts and the shaper made so far.
        try:
            emu.start()
            results.append(check(emu))
        finally:
            emu.stop()
    return results


def bench_links(link_backend: str, seed: int, rate_mbps: float, delay_ms: float,
                loss_pct: float, seconds: float, out: Path | None = None) -> int:
    """Measure a link against its configuration; print the table, return 0 if all pass."""
    validate(rate_mbps, delay_ms, loss_pct, seconds)
    require_root("testbed bench links")
    require_tools(["ping", "iperf3"])
    backend = resolve_backend(link_backend)
    record = RunRecord(f"bench-links-{secrets.token_hex(3)}",
                       ProcessRecord.of(os.getpid(), "testbed bench links"))
    record.save()
    try:
        with signals_as_keyboard_interrupt():
            results = run_checks(backend, seed, record,
                                 plan(rate_mbps, delay_ms, loss_pct, seconds))
    finally:
        # Each Emulation swept its processes when it stopped, also on Ctrl-C.
        record.path.unlink(missing_ok=True)
    print(f"link backend {backend}, seed {seed}, {seconds:g} s per measurement")
    print(format_table(results))
    if out is not None:
        params = {"link_backend": backend, "link_backend_requested": link_backend,
                  "seed": seed, "rate_mbps": rate_mbps, "delay_ms": delay_ms,
                  "loss_pct": loss_pct, "seconds": seconds}
        out.write_text(json.dumps(results_json(results, params), indent=2) + "\n")
    return exit_status(results)
