"""One direction of an emulated link as a sans-I/O model: loss, a FIFO drained at a rate or by
a Mahimahi trace with tail drop, then delay with jitter that never reorders, except for the
share of frames that netem's "reorder" sends without the delay. The caller owns the clock
(every entry point takes `now`, seconds) and the randomness (a seeded `random.Random`).

Because the FIFO is drained by a deterministic server (a constant rate or a fixed trace of
delivery opportunities), a frame's departure time is fully known when it arrives. The model
therefore computes each frame's whole schedule on arrival and keeps it in a FIFO of
`(deliver_at, frame)`: changing parameters only affects later arrivals and can never flush or
reschedule what is already in the pipe. Reordered frames are delivered at their departure from
the rate FIFO, which never decreases either, so they get a FIFO of their own and delivery
merges the two.

The FIFO is drop-tail, or RED (Floyd & Jacobson, IEEE/ACM ToN 1993, section 4 and figure 2),
in packets rather than Linux's bytes:

- On every arrival that gets past the random loss, the average queue is updated with the
  real queue (frames in the FIFO, the one in service included) as avg = (1 - w) avg + w q.
  An arrival to an empty FIFO first ages the average over the idle time as if m frames of
  the link's full size (1514 bytes at the rate, or the trace's mean rate) had arrived to an
  empty queue: avg = (1 - w)^m avg (the paper's idle-time correction; an unshaped direction
  has no such time and skips it).
- Below min: no early drop, count = -1. Between min and max: count += 1,
  p_b = max_p (avg - min) / (max - min), and the frame is dropped with probability
  p_a = p_b / (1 - count p_b) (1 once that reaches 1), which spreads the drops evenly over the
  arrivals instead of geometrically; a drop resets count to 0 (`dropped_early`). At or above
  max: every arrival is dropped (`dropped_forced`), as Linux's red does; no "gentle" ramp to
  2 max, which tc-red cannot express either.
- A frame RED lets in still meets the hard limit (`queue_pkts`, `dropped_queue`).

Each pipe also counts arrivals and drops per flow (`Pipe.flows`, IPv4 TCP and UDP by
addresses and ports, anything else under one key), so that an experiment can tell which flow
lost what at a shared queue: RFC 6356's fairness argument assumes flows at one bottleneck see
the same loss rate, and whether they did is then measured, not assumed. The first flows also
get a series in bins of FLOW_BIN_S (`FlowCounters.series`), so that a loss rate can be taken
over part of a run (after a warm-up, while competing flows overlap).
"""

from __future__ import annotations

import itertools
import math
import random
import socket
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from testbed.emu.linkparams import RedParams, Shaping
from testbed.errors import ParameterError

# Mahimahi (Netravali et al., USENIX ATC 2015, `mm-link`): each trace line is one opportunity to
# deliver this many bytes.
TRACE_OPPORTUNITY_BYTES = 1500


@dataclass(frozen=True)
class Trace:
    """A Mahimahi delivery trace: opportunity times in ms, non-decreasing, repeating every
    `period_ms` (its last time), as `mm-link` replays it."""

    opportunities_ms: tuple[int, ...]

    def __post_init__(self) -> None:
        ms = self.opportunities_ms
        if not ms:
            raise ParameterError("a trace needs at least one delivery opportunity")
        if ms[0] < 0 or any(b < a for a, b in itertools.pairwise(ms)):
            raise ParameterError("trace times must be non-negative and non-decreasing")
        if ms[-1] <= 0:
            # A period of zero would mean infinitely many opportunities per millisecond.
            raise ParameterError("the last time of a trace must be > 0 ms (it is the period)")

    @property
    def period_ms(self) -> int:
        return self.opportunities_ms[-1]

    @property
    def mean_rate_mbps(self) -> float:
        bits = len(self.opportunities_ms) * TRACE_OPPORTUNITY_BYTES * 8
        return bits / (self.period_ms / 1000) / 1e6

    @classmethod
    def parse(cls, text: str, source: str = "trace") -> Trace:
        """Parse the text of a trace file (one integer per line; blank lines are ignored)."""
        times: list[int] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            try:
                times.append(int(line))
            except ValueError:
                raise ParameterError(
                    f"{source}:{lineno}: expected an integer time in ms, got {line!r}"
                ) from None
        try:
            return cls(tuple(times))
        except ParameterError as exc:
            raise ParameterError(f"{source}: {exc}") from None


TraceLoader = Callable[[str], Trace]

# A full-size Ethernet frame (1500-byte MTU, 14-byte header, no FCS), RED's unit of idle time.
MAX_FRAME_BYTES = 1514


def red_drop_probability(avg: float, count: int, red: RedParams) -> float:
    """RED's drop probability p_a for an arrival that finds the average queue at `avg` and is
    the `count`-th arrival since the last drop (1 for the next one after a drop; 0 for one that
    finds the average newly risen above min). Floyd & Jacobson 1993, figure 2."""
    if avg < red.min_pkts:
        return 0.0
    if avg >= red.max_pkts:
        return 1.0
    p_b = red.max_p * (avg - red.min_pkts) / (red.max_pkts - red.min_pkts)
    spread = 1 - count * p_b
    return 1.0 if spread <= p_b else p_b / spread


# Flows tracked apart per pipe; arrivals of further flows count under OTHER_FLOWS, so a data
# center run with thousands of short flows cannot grow the shaper's memory without bound.
MAX_TRACKED_FLOWS = 1024
OTHER_FLOWS = b""  # the key of non-IPv4-TCP/UDP frames and of flows beyond the limit
# Per-flow series: bin width in seconds, and how many flows of a pipe get one.
FLOW_BIN_S = 1.0
MAX_SERIES_FLOWS = 64


def flow_key(frame: bytes) -> bytes:
    """A frame's flow as raw bytes for an Ethernet frame carrying IPv4 TCP or UDP: source and
    destination addresses and ports (12 bytes; a UDP key has one more, b"u"), else
    OTHER_FLOWS. Cheap on purpose, as it runs for every frame (one slice for TCP without IP
    options); `flow_name` makes it readable."""
    if len(frame) < 38 or frame[12] != 0x08 or frame[13] != 0x00:
        return OTHER_FLOWS
    proto = frame[23]
    if proto != 6 and proto != 17:
        return OTHER_FLOWS
    if frame[14] == 0x45:  # IPv4 without options: the ports follow the addresses
        key = frame[26:38]
    else:
        ports_at = 14 + (frame[14] & 0x0F) * 4
        if len(frame) < ports_at + 4:
            return OTHER_FLOWS
        key = frame[26:34] + frame[ports_at:ports_at + 4]
    return key if proto == 6 else key + b"u"


def flow_name(key: bytes) -> str:
    """"tcp 10.0.1.1:41126>10.0.3.1:5201" for a `flow_key`, "other" for OTHER_FLOWS."""
    if key == OTHER_FLOWS:
        return "other"
    src, dst = socket.inet_ntoa(key[0:4]), socket.inet_ntoa(key[4:8])
    sport, dport = int.from_bytes(key[8:10], "big"), int.from_bytes(key[10:12], "big")
    return f"{'udp' if len(key) > 12 else 'tcp'} {src}:{sport}>{dst}:{dport}"


@dataclass(slots=True)
class FlowCounters:
    """One flow's arrivals at a pipe and its frames dropped there, by cause (the causes of
    PipeCounters; frames lost when the link goes down are not counted per flow), and for the
    pipe's first MAX_SERIES_FLOWS flows their series: bin -> [frames in, dropped], bin i
    covering [series_epoch + i * FLOW_BIN_S, + FLOW_BIN_S) of the pipe's clock."""

    frames_in: int = 0
    dropped_loss: int = 0
    dropped_early: int = 0
    dropped_forced: int = 0
    dropped_queue: int = 0
    series: dict[int, list[int]] | None = field(default=None, compare=False, repr=False)
    # The bin being counted and its counts, so that a frame costs no dictionary lookup.
    bin_index: int = field(default=-1, compare=False, repr=False)
    bin_counts: list[int] = field(default_factory=lambda: [0, 0], compare=False, repr=False)

    @property
    def dropped(self) -> int:
        return self.dropped_loss + self.dropped_early + self.dropped_forced + self.dropped_queue

    def totals(self) -> dict[str, int]:
        """The counters by name (what stats/shaper.json shows of a flow): the compared
        fields, not the series and its bookkeeping."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}


@dataclass
class PipeCounters:
    """What happened to the frames of one direction. Conservation:
    frames_in == frames_out + dropped_loss + dropped_early + dropped_forced + dropped_queue
                 + dropped_down + frames in the pipe."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    dropped_loss: int = 0
    # Tail drops at the hard limit (queue_pkts), whatever the discipline.
    dropped_queue: int = 0
    dropped_down: int = 0
    # RED (aqm="red"): drops with the average between the thresholds, and at or above max.
    dropped_early: int = 0
    dropped_forced: int = 0
    # Frames sent without the delay (reorder_pct); each overtakes whatever was in flight.
    reordered: int = 0
    max_backlog_pkts: int = 0
    # How late frames left relative to their schedule, as seen by the caller's `now` (negative
    # when released slightly early to centre the timer error). Tells whether the emulator kept
    # up (Handigol et al., CoNEXT 2012: an emulation is only trustworthy if it did).
    lateness_sum_s: float = 0.0
    lateness_max_s: float = 0.0
    # Frames that arrived while the rate FIFO was still serving the one before them, counted
    # when they leave the delay line: their bytes, the service time the configured rate (or
    # trace) gave them, and the time actually elapsed since the previous frame's release.
    # backlogged_service_s / backlogged_s is the share of the configured rate the link
    # achieved while it was backlogged, as released by the caller's clock (frames that skip
    # the delay for reordering are left out).
    backlogged_frames: int = 0
    backlogged_bytes: int = 0
    backlogged_service_s: float = 0.0
    backlogged_s: float = 0.0


class _TraceServer:
    """Delivery opportunities of a trace laid on the time axis from `epoch`, consumed in order.

    Like `mm-link`, a frame may use the rest of an opportunity that an earlier frame started,
    a frame larger than one opportunity spans several, and opportunities that pass while the
    queue is empty are lost.
    """

    def __init__(self, trace: Trace, epoch: float) -> None:
        self.trace = trace
        self._ms = trace.opportunities_ms
        self._period_s = trace.period_ms / 1000
        self._base = epoch
        self._index = 0
        self._left = TRACE_OPPORTUNITY_BYTES

    def _time(self) -> float:
        return self._base + self._ms[self._index] / 1000

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._ms):
            self._index = 0
            self._base += self._period_s
        self._left = TRACE_OPPORTUNITY_BYTES

    def _skip_to(self, start: float) -> None:
        """Drop every opportunity before `start` (the queue was empty then)."""
        if self._time() >= start:
            return
        rel = start - self._base
        if rel >= self._period_s:
            cycles = math.floor(rel / self._period_s)
            self._base += cycles * self._period_s
            rel -= cycles * self._period_s
        index = bisect_left(self._ms, rel * 1000)
        if index == len(self._ms):
            index = 0
            self._base += self._period_s
        self._index = index
        self._left = TRACE_OPPORTUNITY_BYTES

    def serve(self, size: int, start: float) -> float:
        """Time at which the last byte of a `size`-byte frame, first served at `start`, leaves."""
        self._skip_to(start)
        while True:
            take = min(size, self._left)
            size -= take
            self._left -= take
            if size == 0:
                done = self._time()
                if self._left == 0:
                    self._advance()
                return done
            self._advance()


class Pipe:
    """One direction of a link: `offer` frames as they arrive, `pop_due` them when their time
    comes, and wake up at `next_deadline`."""

    def __init__(
        self,
        shaping: Shaping,
        rng: random.Random,
        *,
        now: float = 0.0,
        trace_loader: TraceLoader | None = None,
    ) -> None:
        self.counters = PipeCounters()
        # flow_key -> that flow's counters and series (module docstring).
        self.flows: dict[bytes, FlowCounters] = {}
        self._series_flows = 0
        self.series_epoch = now
        self._rng = rng
        self._trace_loader = trace_loader
        self._down = False
        # (deliver_at, frame, service) in delivery order; deliver_at never decreases along the
        # deque. `service` is the frame's time in the rate FIFO's server when it queued behind
        # another frame, else -1 (see PipeCounters.backlogged_*).
        self._flight: deque[tuple[float, bytes, float]] = deque()
        self._last_release: float | None = None
        # The same for reordered frames, which skip the delay and overtake `_flight`.
        self._overtaking: deque[tuple[float, bytes]] = deque()
        # Departure times from the FIFO of the frames still in it (for the tail-drop limit).
        self._queue_departures: deque[float] = deque()
        self._link_free_at = now
        self._last_deliver_at = now
        self._trace_server: _TraceServer | None = None
        # RED's state: the average queue in packets and the frames since the last early drop.
        self.red_avg = 0.0
        self._red_count = -1
        self._shaping = shaping
        self._configure(shaping, now)

    # -- parameters -------------------------------------------------------------------------

    @property
    def shaping(self) -> Shaping:
        return self._shaping

    @property
    def down(self) -> bool:
        return self._down

    def _configure(self, shaping: Shaping, now: float) -> None:
        server = self._trace_server
        if shaping.trace is None:
            server = None
        elif server is None or self._shaping.trace != shaping.trace:
            if self._trace_loader is None:
                raise ParameterError("this pipe has no trace loader, cannot use shaping.trace")
            # A new trace starts at the moment it is applied; the same trace keeps running so
            # that changing, say, the delay does not restart the capacity pattern.
            server = _TraceServer(self._trace_loader(shaping.trace), now)
        # Everything that can fail is done: commit.
        self._trace_server = server
        self._shaping = shaping
        self._loss = shaping.loss_pct / 100
        self._reorder = shaping.reorder_pct / 100
        self._bytes_per_s = None if shaping.rate_mbps is None else shaping.rate_mbps * 1e6 / 8
        self._delay = shaping.delay_ms / 1000
        self._jitter = shaping.jitter_ms / 1000
        self._queue_limit = shaping.queue_limit
        self._red = shaping.aqm == "red"
        self._red_params = shaping.red
        self._red_weight = self._red_params.weight
        # The time a full-size frame takes to send, the unit of RED's idle-time correction.
        if server is not None:
            self._red_frame_s: float | None = (MAX_FRAME_BYTES * 8
                                               / (server.trace.mean_rate_mbps * 1e6))
        elif self._bytes_per_s is not None:
            self._red_frame_s = MAX_FRAME_BYTES / self._bytes_per_s
        else:
            self._red_frame_s = None

    def set_shaping(self, shaping: Shaping, now: float) -> None:
        """Apply `shaping` to frames arriving from `now` on. Frames already queued or in flight
        keep their schedule (nothing is flushed); new frames still queue behind them."""
        self._configure(shaping, now)

    def set_down(self, down: bool, now: float) -> None:
        """Take the link down (every frame in the pipe is lost, arrivals are dropped) or up."""
        if down and not self._down:
            self.counters.dropped_down += self.in_pipe
            self._flight.clear()
            self._last_release = None
            self._overtaking.clear()
            self._queue_departures.clear()
            # The lost frames no longer occupy the server or the wire.
            self._link_free_at = now
            self._last_deliver_at = now
        self._down = down

    # -- data path --------------------------------------------------------------------------

    def offer(self, frame: bytes, now: float) -> bool:
        """A frame arrives at `now`. Returns False when it is dropped (counters say why)."""
        c = self.counters
        size = len(frame)
        c.frames_in += 1
        c.bytes_in += size
        if self._down:
            c.dropped_down += 1
            return False
        key = flow_key(frame)
        flow = self.flows.get(key) or self._new_flow(key)
        flow.frames_in += 1
        series = flow.series
        if series is None:
            return self._admit(frame, now, flow)
        index = int((now - self.series_epoch) // FLOW_BIN_S)
        if index != flow.bin_index:
            flow.bin_index = index
            flow.bin_counts = series.setdefault(index, [0, 0])
        counts = flow.bin_counts
        counts[0] += 1
        if self._admit(frame, now, flow):
            return True
        counts[1] += 1
        return False

    def _admit(self, frame: bytes, now: float, flow: FlowCounters) -> bool:
        """`offer` past the link-down check: loss, AQM, the FIFO and the delay line."""
        c = self.counters
        size = len(frame)
        # Loss comes first, as in netem: a lost frame never occupies the queue.
        if self._loss and self._rng.random() < self._loss:
            c.dropped_loss += 1
            flow.dropped_loss += 1
            return False
        queue = self._queue_departures
        while queue and queue[0] <= now:
            queue.popleft()
        if self._red and self._red_drops(len(queue), now, flow):
            return False
        # Tail drop (pfifo/tbf `limit` in packets): a frame counts until it has left the FIFO.
        if len(queue) >= self._queue_limit:
            c.dropped_queue += 1
            flow.dropped_queue += 1
            return False
        backlogged = self._link_free_at > now
        start = self._link_free_at if backlogged else now
        if self._trace_server is not None:
            departs = self._trace_server.serve(size, start)
        elif self._bytes_per_s is not None:
            # Rate is charged on the frame as given (Ethernet header, no FCS), as tbf does.
            departs = start + size / self._bytes_per_s
        else:
            departs = start
        self._link_free_at = departs
        if departs > now:
            queue.append(departs)
            if len(queue) > c.max_backlog_pkts:
                c.max_backlog_pkts = len(queue)
        if self._reorder and self._rng.random() < self._reorder:
            # netem's reorder: sent at once, ahead of the frames in flight. It never waits for
            # an earlier reordered frame either, since departures keep the FIFO's order.
            c.reordered += 1
            self._overtaking.append((departs, frame))
            return True
        deliver_at = departs + self._delay
        if self._jitter:
            # Uniform jitter around the delay (netem's default without a distribution table);
            # delay >= jitter is validated, so the sample is never negative.
            deliver_at += self._rng.uniform(-self._jitter, self._jitter)
        # Jitter never reorders: a delayed frame never overtakes the delayed one before it
        # (this also holds when a smaller delay is set while frames are still in flight).
        if deliver_at < self._last_deliver_at:
            deliver_at = self._last_deliver_at
        self._last_deliver_at = deliver_at
        self._flight.append((deliver_at, frame, departs - start if backlogged else -1.0))
        return True

    def _new_flow(self, key: bytes) -> FlowCounters:
        """The counters of a flow not seen yet: its own, or OTHER_FLOWS' beyond the limit."""
        flows = self.flows
        if len(flows) >= MAX_TRACKED_FLOWS:
            key = OTHER_FLOWS
            if key in flows:
                return flows[key]
        flow = flows[key] = FlowCounters()
        if self._series_flows < MAX_SERIES_FLOWS:
            flow.series = {}
            self._series_flows += 1
        return flow

    def _red_drops(self, backlog: int, now: float, flow: FlowCounters) -> bool:
        """RED's decision for a frame arriving to `backlog` frames (module docstring)."""
        weight = self._red_weight
        if backlog:
            self.red_avg += weight * (backlog - self.red_avg)
        else:
            idle_s = now - self._link_free_at
            if self._red_frame_s is not None and idle_s > 0:
                self.red_avg *= (1 - weight) ** (idle_s / self._red_frame_s)
            # The arrival itself samples the empty queue.
            self.red_avg *= 1 - weight
        avg = self.red_avg
        red = self._red_params
        if avg < red.min_pkts:
            self._red_count = -1
            return False
        if avg >= red.max_pkts:
            self._red_count = 0
            self.counters.dropped_forced += 1
            flow.dropped_forced += 1
            return True
        self._red_count += 1
        if self._rng.random() < red_drop_probability(avg, self._red_count, red):
            self._red_count = 0
            self.counters.dropped_early += 1
            flow.dropped_early += 1
            return True
        return False

    def next_deadline(self) -> float | None:
        """When the next frame is due, or None when the pipe is empty."""
        flight, overtaking = self._flight, self._overtaking
        if not overtaking:
            return flight[0][0] if flight else None
        if not flight:
            return overtaking[0][0]
        return min(flight[0][0], overtaking[0][0])

    def pop_due(self, now: float, early: float = 0.0) -> list[bytes]:
        """Frames due by `now + early`, in due order. `early` lets a caller whose timer has a coarse
        grain release frames due within half a grain, centring the error on zero."""
        limit = now + early
        deadline = self.next_deadline()
        if deadline is None or deadline > limit:
            return []
        flight, overtaking = self._flight, self._overtaking
        c = self.counters
        out: list[bytes] = []
        lateness_sum = 0.0
        lateness_max = c.lateness_max_s
        nbytes = 0
        last_release = self._last_release
        queued_frames = queued_bytes = 0
        queued_service = queued_time = 0.0
        while True:
            # Merge the two FIFOs by due time; on a tie the delayed frame, sent earlier, goes
            # first.
            if flight and flight[0][0] <= limit and not (
                overtaking and overtaking[0][0] < flight[0][0]
            ):
                deliver_at, frame, service = flight.popleft()
                if service >= 0.0 and last_release is not None:
                    queued_frames += 1
                    queued_bytes += len(frame)
                    queued_service += service
                    queued_time += now - last_release
                last_release = now
            elif overtaking and overtaking[0][0] <= limit:
                deliver_at, frame = overtaking.popleft()
            else:
                break
            late = now - deliver_at
            lateness_sum += late
            if late > lateness_max:
                lateness_max = late
            nbytes += len(frame)
            out.append(frame)
        c.frames_out += len(out)
        c.bytes_out += nbytes
        c.lateness_sum_s += lateness_sum
        c.lateness_max_s = lateness_max
        self._last_release = last_release
        if queued_frames:
            c.backlogged_frames += queued_frames
            c.backlogged_bytes += queued_bytes
            c.backlogged_service_s += queued_service
            c.backlogged_s += queued_time
        return out

    def record_undeliverable(self, frame: bytes) -> None:
        """The caller could not hand a popped frame to its interface because that interface is
        down (a TAP write fails with EIO): count it as a down drop instead of a delivery."""
        c = self.counters
        c.frames_out -= 1
        c.bytes_out -= len(frame)
        c.dropped_down += 1

    # -- observation ------------------------------------------------------------------------

    def backlog(self, now: float) -> int:
        """Frames in the FIFO (not yet departed towards the delay line) at `now`."""
        return sum(1 for t in self._queue_departures if t > now)

    @property
    def in_pipe(self) -> int:
        """Frames accepted and not yet popped (queued or in flight)."""
        return len(self._flight) + len(self._overtaking)
