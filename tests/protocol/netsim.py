"""A deterministic in-memory network for protocol tests: endpoints, paths, a fake clock.

Endpoints are sans-I/O protocol objects (see `Endpoint`). A `Network` joins them with
point-to-point paths, each direction with its own `PathConditions` (delay, jitter, loss,
duplication, reordering, corruption, rate with a FIFO queue, down). `run()` is the event loop:
it collects what every endpoint wants to send, schedules deliveries, and moves a `FakeClock`
to the next delivery or endpoint timer. All randomness comes from `random.Random(seed)`, so a
seed gives the same run, bit for bit.

Routing: a packet an endpoint sends is handed to `network.route(src_name, packet) -> path_id`.
The default sends it on the endpoint's only path (an error if it has several); MPTCP tests
with several paths between the same two endpoints replace `network.route`, for example by
looking at the packet's source address. A path delivers to its other end, so no destination
lookup is needed.

Within one instant, deliveries go first (in the order they were scheduled), then timers (in
the order the endpoints were attached); after each event every endpoint is asked for packets.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal, NamedTuple, Protocol

Direction = Literal["ab", "ba"]
Fate = Literal[
    "sent", "lost", "queue_full", "down", "duplicated", "reordered", "corrupted", "delivered"
]


class NetworkError(Exception):
    """A test set the network up wrongly, or the run did not settle."""


class FakeClock:
    """Simulated time in seconds; only moves forward."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def advance_to(self, when: float) -> None:
        if when < self.now:
            raise NetworkError(f"time cannot go back from {self.now} to {when}")
        self.now = when


class Endpoint(Protocol):
    """What the network drives: the sans-I/O shape of our stacks (like aioquic's)."""

    name: str

    def receive(self, packet: bytes, now: float) -> None: ...

    def packets_to_send(self, now: float) -> list[bytes]: ...

    def next_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


@dataclass
class PathConditions:
    """One direction of a path; probabilities are per packet, times in seconds."""

    delay_s: float = 0.01
    # Extra delay uniform in [0, jitter_s]; like netem's, it may reorder packets.
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    # Probability a packet is held back by reorder_extra_s so its successors overtake it.
    reorder: float = 0.0
    reorder_extra_s: float = 0.005
    # Probability that one random byte of the packet is changed.
    corrupt: float = 0.0
    # Serialisation at this rate through a FIFO; None means infinitely fast.
    rate_bps: float | None = None
    # FIFO capacity in packets, the one being serialised included; None means unbounded.
    queue_packets: int | None = None
    down: bool = False

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise NetworkError(f"{name} is a probability, got {value}")
        if min(self.delay_s, self.jitter_s, self.reorder_extra_s) < 0:
            raise NetworkError("delays cannot be negative")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise NetworkError(f"rate_bps must be positive, got {self.rate_bps}")
        if self.queue_packets is not None and self.queue_packets < 1:
            raise NetworkError(f"queue_packets must be at least 1, got {self.queue_packets}")


@dataclass
class PathCounters:
    sent: int = 0
    lost: int = 0
    queue_full: int = 0
    down: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    delivered: int = 0

    def __add__(self, other: PathCounters) -> PathCounters:
        return PathCounters(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


class TraceEntry(NamedTuple):
    time: float
    path: str
    direction: Direction
    packet: bytes
    fate: Fate


@dataclass
class _Link:
    """One direction of a path: its conditions, its FIFO and its counters."""

    src: str
    dst: str
    conditions: PathConditions
    counters: PathCounters = field(default_factory=PathCounters)
    # Times at which the packets in the FIFO finish serialisation, oldest first.
    departures: list[float] = field(default_factory=list)


@dataclass
class _Path:
    a: str
    b: str
    links: dict[Direction, _Link]


class Network:
    """Endpoints joined by lossy, delaying paths; a deterministic discrete-event loop."""

    def __init__(self, seed: int, max_events: int = 1_000_000) -> None:
        self.random = random.Random(seed)
        self.clock = FakeClock()
        self.max_events = max_events
        self.trace: list[TraceEntry] = []
        self.route: Callable[[str, bytes], str] = self._only_path
        # A test's own drops, on top of the random ones: called with (path, direction,
        # packet) for each packet sent; True drops it (counted and traced as "lost").
        self.drop_if: Callable[[str, Direction, bytes], bool] | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._paths: dict[str, _Path] = {}
        # (arrival time, sequence number, path, direction, packet): the sequence number
        # keeps equal times in scheduling order and spares comparing packets.
        self._deliveries: list[tuple[float, int, str, Direction, bytes]] = []
        self._sequence = 0

    @property
    def now(self) -> float:
        return self.clock.now

    def attach(self, endpoint: Endpoint) -> None:
        if endpoint.name in self._endpoints:
            raise NetworkError(f"an endpoint named {endpoint.name!r} is already attached")
        self._endpoints[endpoint.name] = endpoint

    def connect(
        self,
        a: str,
        b: str,
        conditions_ab: PathConditions | None = None,
        conditions_ba: PathConditions | None = None,
        path_id: str | None = None,
    ) -> str:
        """Join endpoints `a` and `b`; returns the path id ("a-b", then "a-b#2", ...).

        `conditions_ba` defaults to a copy of `conditions_ab` (symmetric path).
        """
        for name in (a, b):
            if name not in self._endpoints:
                raise NetworkError(f"attach {name!r} before connecting it")
        if a == b:
            raise NetworkError("a path joins two different endpoints")
        if path_id is None:
            path_id = f"{a}-{b}"
            n = 2
            while path_id in self._paths:
                path_id = f"{a}-{b}#{n}"
                n += 1
        elif path_id in self._paths:
            raise NetworkError(f"there is already a path {path_id!r}")
        ab = conditions_ab if conditions_ab is not None else PathConditions()
        ba = conditions_ba if conditions_ba is not None else PathConditions(**vars(ab))
        self._paths[path_id] = _Path(a, b, {"ab": _Link(a, b, ab), "ba": _Link(b, a, ba)})
        return path_id

    def set_conditions(self, path: str, direction: Direction, conditions: PathConditions) -> None:
        """Change one direction of a path; packets already on their way are not affected."""
        self._path(path).links[direction].conditions = conditions

    def counters(self, path: str, direction: Direction | None = None) -> PathCounters:
        """Counters of one direction, or of both added up."""
        links = self._path(path).links
        if direction is not None:
            return links[direction].counters
        return links["ab"].counters + links["ba"].counters

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> float:
        """Run events up to time `until` or until `stop()` is true; returns the time reached."""
        events = 0
        while True:
            self._collect()
            if stop is not None and stop():
                return self.now
            when = self._next_event_time()
            if when is None or when > until:
                self.clock.advance_to(max(self.now, until))
                return self.now
            events += 1
            if events > self.max_events:
                raise NetworkError(
                    f"more than {self.max_events} events before t={until} (now {self.now}):"
                    " an endpoint keeps a timer in the past or two endpoints ping-pong forever"
                )
            self.clock.advance_to(max(self.now, when))
            self._fire_one()

    # --- internals ------------------------------------------------------------------------

    def _path(self, path: str) -> _Path:
        try:
            return self._paths[path]
        except KeyError:
            raise NetworkError(f"no path {path!r}; paths: {sorted(self._paths)}") from None

    def _only_path(self, src: str, packet: bytes) -> str:
        paths = [pid for pid, p in self._paths.items() if src in (p.a, p.b)]
        if len(paths) != 1:
            raise NetworkError(
                f"{src!r} has {len(paths)} paths ({paths}); set network.route to choose"
            )
        return paths[0]

    def _collect(self) -> None:
        for name, endpoint in self._endpoints.items():
            for packet in endpoint.packets_to_send(self.now):
                self._send(name, packet)

    def _send(self, src: str, packet: bytes) -> None:
        path_id = self.route(src, packet)
        path = self._path(path_id)
        if src == path.a:
            direction: Direction = "ab"
        elif src == path.b:
            direction = "ba"
        else:
            raise NetworkError(f"route sent a packet from {src!r} on {path_id!r}, not its path")
        link = path.links[direction]
        cond = link.conditions
        link.counters.sent += 1
        self._record(path_id, direction, packet, "sent")
        if cond.down:
            link.counters.down += 1
            self._record(path_id, direction, packet, "down")
            return
        if (self.drop_if is not None and self.drop_if(path_id, direction, packet)) \
                or self.random.random() < cond.loss:
            link.counters.lost += 1
            self._record(path_id, direction, packet, "lost")
            return
        departure = self._serialise(link, len(packet))
        if departure is None:
            link.counters.queue_full += 1
            self._record(path_id, direction, packet, "queue_full")
            return
        if self.random.random() < cond.corrupt:
            packet = self._flip_one_byte(packet)
            link.counters.corrupted += 1
            self._record(path_id, direction, packet, "corrupted")
        arrival = departure + cond.delay_s + self.random.uniform(0.0, cond.jitter_s)
        if self.random.random() < cond.reorder:
            arrival += cond.reorder_extra_s
            link.counters.reordered += 1
            self._record(path_id, direction, packet, "reordered")
        self._schedule(arrival, path_id, direction, packet)
        if self.random.random() < cond.duplicate:
            link.counters.duplicated += 1
            self._record(path_id, direction, packet, "duplicated")
            self._schedule(arrival, path_id, direction, packet)

    def _serialise(self, link: _Link, size: int) -> float | None:
        """When the packet leaves the FIFO, or None if the FIFO is full."""
        cond = link.conditions
        if cond.rate_bps is None:
            return self.now
        # Packets whose serialisation has finished have left the queue.
        link.departures = [t for t in link.departures if t > self.now]
        if cond.queue_packets is not None and len(link.departures) >= cond.queue_packets:
            return None
        start = link.departures[-1] if link.departures else self.now
        departure = start + size * 8 / cond.rate_bps
        link.departures.append(departure)
        return departure

    def _flip_one_byte(self, packet: bytes) -> bytes:
        if not packet:
            return packet
        index = self.random.randrange(len(packet))
        changed = bytearray(packet)
        changed[index] ^= self.random.randrange(1, 256)  # never 0: the byte must change
        return bytes(changed)

    def _schedule(self, arrival: float, path: str, direction: Direction, packet: bytes) -> None:
        heapq.heappush(self._deliveries, (arrival, self._sequence, path, direction, packet))
        self._sequence += 1

    def _next_event_time(self) -> float | None:
        times = [t for e in self._endpoints.values() if (t := e.next_timer()) is not None]
        if self._deliveries:
            times.append(self._deliveries[0][0])
        return min(times, default=None)

    def _fire_one(self) -> None:
        """Deliver the earliest due packet, or else fire the first due timer."""
        now = self.now
        if self._deliveries and self._deliveries[0][0] <= now:
            _, _, path_id, direction, packet = heapq.heappop(self._deliveries)
            link = self._paths[path_id].links[direction]
            link.counters.delivered += 1
            self._record(path_id, direction, packet, "delivered")
            self._endpoints[link.dst].receive(packet, now)
            return
        for endpoint in self._endpoints.values():
            timer = endpoint.next_timer()
            if timer is not None and timer <= now:
                endpoint.handle_timer(now)
                return

    def _record(self, path: str, direction: Direction, packet: bytes, fate: Fate) -> None:
        self.trace.append(TraceEntry(self.now, path, direction, packet, fate))
