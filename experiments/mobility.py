"""`mobility`: WiFi and cellular capacities that change along a commute, replayed from traces.

The seed talk's "throughput during a subway trip" has no published trace, so the repository
ships a synthetic one (traces/, written by `write_traces`; see traces/README.md), and any
Mahimahi trace a user has (Winstein et al., NSDI 2013, recorded real cellular ones) is
accepted through `wifi_trace` and `cell_trace`. Mahimahi's format: one integer per line, a time
in ms; each line is one chance to deliver 1500 bytes; the trace repeats after its last time.

Each trace shapes the data direction of its path (router to client for a download); the other
direction, which carries only ACKs, is a constant `uplink_rate_mbps`. Only the userspace link
backend replays traces: with netem the run is refused before anything starts (the topology's
links carry the traces, and the netem backend refuses them with BackendUnsupported).

Criterion (../shared/SCENARIOS.md): MPTCP's goodput tracks the upper envelope of the single-path
curves. Summary: per second, goodput and each path's capacity from its trace;
`fraction_of_envelope` is the mean over seconds of goodput / max(WiFi, cellular capacity),
`fraction_of_sum` of goodput / (WiFi + cellular). Capacities count whole 1500-byte frames, so
even a perfect transfer reaches about 0.96 of them in goodput (TCP/IP headers and options).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mininet.topo import Topo

from experiments.scenario import (
    CommonParams,
    LinkEvent,
    RunOutcome,
    Scenario,
    TimelineEvent,
    Workload,
)
from experiments.timeline_metrics import nstat_changes, timeline_offset_s, window_goodput_mbps
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.shaper.core import TRACE_OPPORTUNITY_BYTES, Trace
from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint
from topologies.two_path import CLIENT_ADDRS, SERVER_ADDR, TwoPathTopo

TRACES_DIR = Path(__file__).resolve().parents[1] / "traces"
TRACE_FILES = {"wifi": "commute-wifi.down", "cell": "commute-cell.down"}
LINKS = {"wifi": "path1", "cell": "path2"}
CELL_ADDR = CLIENT_ADDRS[1]
CELL_INTF = "client-eth1"
MECHANISM_COUNTERS: tuple[str, ...] = (
    "MPTcpExtMPJoinSynTx", "MPTcpExtMPJoinSynAckRx", "MPTcpExtMPJoinAckRx",
)  # fmt: skip


# -- synthetic traces -------------------------------------------------------------------------

# The commute, one segment a line: (until second, WiFi Mbit/s, cellular Mbit/s) at the
# segment's end; rates move linearly from the previous segment's end (a fade, not a step).
# Home WiFi, walking to the station (WiFi fades out, LTE outdoors), underground between
# stations (no WiFi, poor cellular), station WiFi at a stop, underground again, office WiFi.
COMMUTE: tuple[tuple[float, float, float], ...] = (
    (0, 12.0, 5.0), (10, 12.0, 5.0), (16, 0.0, 8.0), (20, 0.0, 6.0), (22, 0.0, 1.5),
    (34, 0.0, 1.0), (36, 0.0, 4.0), (38, 6.0, 3.0), (44, 6.0, 3.0), (46, 0.0, 1.5),
    (52, 0.0, 1.0), (54, 10.0, 4.0), (60, 10.0, 5.0),
)  # fmt: skip


def synthetic_commute(path: str, seconds: float | None = None,
                      ripple: float = 0.15) -> list[float]:
    """Capacity of `path` ("wifi" or "cell") in Mbit/s for each 10 ms of the commute: the
    piecewise-linear COMMUTE profile with a deterministic ripple (a sum of two sines, `ripple`
    of the rate) standing for fading, so no run depends on a random generator."""
    column = {"wifi": 1, "cell": 2}[path]
    length = COMMUTE[-1][0] if seconds is None else seconds
    rates = []
    for step in range(round(length * 100)):
        t = (step / 100) % COMMUTE[-1][0]
        base = 0.0
        for (t0, *r0), (t1, *r1) in itertools.pairwise(COMMUTE):
            if t0 <= t < t1:
                base = r0[column - 1] + (r1[column - 1] - r0[column - 1]) * (t - t0) / (t1 - t0)
                break
        wobble = 1 + ripple * (0.6 * math.sin(2 * math.pi * t / 3.7 + column)
                               + 0.4 * math.sin(2 * math.pi * t / 1.3))
        rates.append(max(0.0, base * wobble))
    return rates


def opportunities_ms(rates_mbps: Sequence[float], step_ms: int = 10) -> list[int]:
    """A Mahimahi trace for a capacity given every `step_ms`: credit accumulates at the rate
    and each full 1500 bytes of it becomes one delivery opportunity at the end of its
    millisecond (so times run from 1 to the period, as in Mahimahi's own traces). The last line
    is the period (Mahimahi repeats a trace after its last time): a trace ending in silence
    gets one opportunity there to keep its length."""
    times: list[int] = []
    credit = 0.0
    for index, rate in enumerate(rates_mbps):
        for ms in range(index * step_ms + 1, (index + 1) * step_ms + 1):
            credit += rate * 1e6 / 8 / 1000
            while credit >= TRACE_OPPORTUNITY_BYTES:
                times.append(ms)
                credit -= TRACE_OPPORTUNITY_BYTES
    period = len(rates_mbps) * step_ms
    if not times or times[-1] < period:
        times.append(period)
    return times


def write_traces(directory: Path) -> list[Path]:
    """Write the commute's WiFi and cellular traces (the files shipped in traces/)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for path, name in TRACE_FILES.items():
        out = directory / name
        out.write_text("".join(f"{ms}\n" for ms in opportunities_ms(synthetic_commute(path))))
        written.append(out)
    return written


def capacity_mbps(trace: Trace, start_s: float, end_s: float) -> float:
    """Mean capacity of a (repeating) trace over [start_s, end_s) of its own time."""
    if end_s <= start_s:
        return 0.0
    ms = trace.opportunities_ms
    period = trace.period_ms / 1000
    count = 0
    cycle = math.floor(start_s / period)
    while cycle * period < end_s:
        base = cycle * period
        # Opportunity times are sorted: count those within the window by bisection.
        count += bisect_left(ms, (end_s - base) * 1000) - bisect_left(ms, (start_s - base) * 1000)
        cycle += 1
    return count * TRACE_OPPORTUNITY_BYTES * 8 / (end_s - start_s) / 1e6


def load_trace(path: str) -> Trace:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"cannot read trace {path}: {exc}") from None
    return Trace.parse(text, source=path)


# -- parameters -------------------------------------------------------------------------------

@dataclass
class MobilityParams(CommonParams):
    """Traces (Mahimahi files; empty: the shipped commute), one-way delays (ms), the ACK
    direction's rate, the queue of each shaped direction, and the workload."""

    wifi_trace: str = ""
    cell_trace: str = ""
    wifi_delay_ms: float = 5.0
    cell_delay_ms: float = 30.0
    uplink_rate_mbps: float = 10.0
    # A trace gives no rate to size a BDP queue from (the default would be 1000 frames of
    # bufferbloat); 50 frames is a deep WiFi/LTE buffer without seconds of standing queue.
    queue_pkts: int = 50
    duration_s: float = 60.0
    direction: str = "download"
    timeout_s: float = 90.0

    def __post_init__(self) -> None:
        super().__post_init__()
        Workload(direction=self.direction, seconds=self.duration_s)
        for path in ("wifi", "cell"):
            self.shaping(path, data=True)
            self.shaping(path, data=False)
            load_trace(self.trace_path(path))  # a bad file is refused before anything starts
        if self.timeout_s < self.duration_s:
            raise ParameterError(
                f"timeout_s ({self.timeout_s}) must be >= duration_s ({self.duration_s}): the "
                "runner stops a run after timeout_s + 10 s")

    def trace_path(self, path: str) -> str:
        """Absolute: the shaper process reads it, from its own working directory."""
        given = {"wifi": self.wifi_trace, "cell": self.cell_trace}[path]
        return str(Path(given).resolve() if given else TRACES_DIR / TRACE_FILES[path])

    def shaping(self, path: str, data: bool) -> Shaping:
        delay = {"wifi": self.wifi_delay_ms, "cell": self.cell_delay_ms}[path]
        if data:
            return Shaping(trace=self.trace_path(path), delay_ms=delay, queue_pkts=self.queue_pkts)
        return Shaping(rate_mbps=self.uplink_rate_mbps, delay_ms=delay)

    @property
    def data_direction(self) -> str:
        return "b2a" if self.direction == "download" else "a2b"  # a2b: client to router

    def link_shaping(self, path: str) -> LinkShaping:
        data, acks = self.shaping(path, data=True), self.shaping(path, data=False)
        return LinkShaping(a2b=acks, b2a=data) if self.direction == "download" \
            else LinkShaping(a2b=data, b2a=acks)


# -- metrics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Second:
    t_s: int
    goodput_mbps: float
    wifi_mbps: float
    cell_mbps: float

    @property
    def envelope_mbps(self) -> float:
        return max(self.wifi_mbps, self.cell_mbps)

    def record(self) -> dict[str, float]:
        return {"t_s": self.t_s, "goodput_mbps": round(self.goodput_mbps, 3),
                "wifi_capacity_mbps": round(self.wifi_mbps, 3),
                "cell_capacity_mbps": round(self.cell_mbps, 3)}


def mean_fraction(seconds: Sequence[Second], of_sum: bool) -> float | None:
    """Mean over the seconds with any capacity of goodput / envelope (or / sum)."""
    fractions = []
    for s in seconds:
        whole = s.wifi_mbps + s.cell_mbps if of_sum else s.envelope_mbps
        if whole > 0:
            fractions.append(s.goodput_mbps / whole)
    return round(sum(fractions) / len(fractions), 3) if fractions else None


def trace_epochs(timeline: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Link -> when its trace (re)started, on the timeline's clock: the last 'set' with a trace."""
    epochs = {}
    for event in timeline:
        shaping = event.get("shaping") or {}
        if event.get("action") == "set" and shaping.get("trace") \
                and event.get("applied_at_s") is not None:
            epochs[str(event["link"])] = float(event["applied_at_s"])
    return epochs


# -- the scenario -----------------------------------------------------------------------------

@dataclass
class Mobility(Scenario):
    name = "mobility"
    description = ("WiFi and cellular capacities follow traces of a commute; MPTCP against the "
                   "envelope of the single paths")
    params_type = MobilityParams

    params: MobilityParams

    def topology(self) -> Topo:
        p = self.params
        return TwoPathTopo(path1=p.link_shaping("wifi"), path2=p.link_shaping("cell"))

    def server_address(self) -> str:
        return SERVER_ADDR

    def client_endpoints(self) -> list[Endpoint]:
        return [Endpoint(addr=CELL_ADDR, dev=CELL_INTF, flags=frozenset({"subflow"}))]

    def workload(self) -> Workload:
        return Workload(direction=self.params.direction, seconds=self.params.duration_s)

    def timeline(self) -> list[TimelineEvent]:
        # The shaper starts a trace when a link is built and keeps it running while other
        # parameters change. Setting a constant rate and then the trace again at t=0 restarts
        # it with the workload, so second k of the trace is second k of the run.
        p = self.params
        events: list[TimelineEvent] = []
        for path, link in LINKS.items():
            data = p.shaping(path, data=True)
            mean = load_trace(p.trace_path(path)).mean_rate_mbps
            events += [
                LinkEvent(0.0, link, "set", p.data_direction,
                          data.with_changes(trace=None, rate_mbps=mean)),
                LinkEvent(0.0, link, "set", p.data_direction, data),
            ]
        return events

    def default_capture_points(self) -> list[tuple[str, str]]:
        return [("server", "server-eth0")]

    def label(self) -> str:
        p = self.params
        return f"WiFi {Path(p.trace_path('wifi')).name}, cellular {Path(p.trace_path('cell')).name}"

    def configured_rates(self) -> dict[str, float]:
        return {LINKS[path]: round(load_trace(self.params.trace_path(path)).mean_rate_mbps, 3)
                for path in LINKS}

    def seconds(self, series: Sequence[Sequence[float]], offset_s: float,
                epochs: dict[str, float]) -> list[Second]:
        """Second by second of the timeline: goodput, and each path's capacity at that time."""
        traces = {path: load_trace(self.params.trace_path(path)) for path in LINKS}
        rows = []
        for k in range(math.floor(self.params.duration_s)):
            caps = {path: capacity_mbps(trace, k - epochs.get(LINKS[path], 0.0),
                                        k + 1 - epochs.get(LINKS[path], 0.0))
                    for path, trace in traces.items()}
            rows.append(Second(k, window_goodput_mbps(series, k + offset_s, k + 1 + offset_s),
                               caps["wifi"], caps["cell"]))
        return rows

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        receiver = outcome.receiver
        offset = timeline_offset_s(outcome.timeline, receiver.get("t_start"))
        rows = self.seconds(receiver.get("series", []), offset or 0.0,
                            trace_epochs(outcome.timeline))
        mean = {name: round(sum(getattr(r, attr) for r in rows) / len(rows), 3) if rows else None
                for name, attr in (("goodput", "goodput_mbps"), ("wifi", "wifi_mbps"),
                                   ("cell", "cell_mbps"), ("envelope", "envelope_mbps"))}
        return {
            "fraction_of_envelope": mean_fraction(rows, of_sum=False),
            "fraction_of_sum": mean_fraction(rows, of_sum=True),
            "mean_goodput_mbps": mean["goodput"],
            "mean_wifi_capacity_mbps": mean["wifi"],
            "mean_cell_capacity_mbps": mean["cell"],
            "mean_envelope_mbps": mean["envelope"],
            "traces": {path: self.params.trace_path(path) for path in LINKS},
            "timeline_offset_s": None if offset is None else round(offset, 4),
            "per_second": [r.record() for r in rows],
            "mptcp_counters": {side: nstat_changes(outcome.run_dir, side, MECHANISM_COUNTERS)
                               for side in ("client", "server")},
        }

