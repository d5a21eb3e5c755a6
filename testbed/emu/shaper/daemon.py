"""The userspace link shaper process: one TAP per link end, frames moved through `core.Pipe`s by
a single-threaded epoll loop, controlled by JSON lines on stdin (one JSON reply line each on
stdout). Run as `python -m testbed.emu.shaper.daemon --seed N [--log FILE]`.

stdin reaching EOF means the controller is gone: the process exits at once, and its TAPs (which
are not persistent) vanish with it. SIGTERM and SIGINT also end it cleanly.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import random
import select
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.emu.linkparams import Shaping
from testbed.emu.shaper.core import FLOW_BIN_S, Pipe, Trace, flow_name
from testbed.emu.shaper.tap import create_tap
from testbed.errors import ParameterError, TestbedError

log = logging.getLogger("testbed.shaper")

# epoll timeouts are whole milliseconds. Frames due within half of one are released now, so the
# timer error is spread over [-0.5, +0.5] ms around the schedule instead of [0, +1] ms.
HALF_TICK_S = 0.0005
# Frames read from one TAP per wake-up before looking at the others: large enough to amortise
# the loop, small enough that one busy direction cannot starve the rest (epoll is
# level-triggered, so what is left is picked up on the next turn).
READ_BATCH = 64
MAX_EVENTS = 64
DIRECTIONS = ("a2b", "b2a")


class RequestError(TestbedError):
    """A control request that cannot be carried out; its message goes back in the reply."""


@dataclass
class _Direction:
    name: str
    pipe: Pipe
    out_fd: int


@dataclass
class _Link:
    name: str
    fd_a: int
    fd_b: int
    a2b: _Direction
    b2a: _Direction
    down: bool = False

    def direction(self, name: str) -> _Direction:
        return self.a2b if name == "a2b" else self.b2a


@dataclass
class LoopStats:
    """The loop's own figures, to tell whether the emulator kept up with its links."""

    wakeups: int = 0
    frames_read: int = 0
    frames_written: int = 0
    full_read_batches: int = 0  # a TAP still had frames after READ_BATCH reads
    read_errors: int = 0
    write_errors: int = 0
    requests: int = 0
    bad_requests: int = 0
    started: float = field(default_factory=time.monotonic)
    started_cpu: float = field(default_factory=time.process_time)


class TraceCache:
    """Reads each trace file once; the core model itself does no I/O."""

    def __init__(self) -> None:
        self._traces: dict[str, Trace] = {}

    def __call__(self, path: str) -> Trace:
        trace = self._traces.get(path)
        if trace is None:
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ParameterError(f"cannot read trace {path}: {exc}") from None
            trace = Trace.parse(text, source=path)
            self._traces[path] = trace
        return trace


def _field(request: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in request:
        raise RequestError(f"missing field {key!r}")
    value = request[key]
    # bool is an int in Python; a JSON `true` is never a valid pid or MTU.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RequestError(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _shaping(data: Any, what: str) -> Shaping:
    if not isinstance(data, dict):
        raise RequestError(f"{what} must be an object of shaping parameters")
    try:
        return Shaping.from_dict(data)
    except (ParameterError, TypeError) as exc:
        raise RequestError(f"{what}: {exc}") from None


class ShaperDaemon:
    """Links by name, their TAP fds and pipes, and the loop that serves them."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.links: dict[str, _Link] = {}
        # TAP fd -> (pipe its frames enter, read size)
        self._readers: dict[int, tuple[Pipe, int]] = {}
        self._directions: list[_Direction] = []
        self._traces = TraceCache()
        self._epoll = select.epoll()
        self._control_buffer = b""
        self.stopping = False
        self.stats = LoopStats()
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(0, select.EPOLLIN)
        self._epoll.register(self._signal_r, select.EPOLLIN)

    # -- control ----------------------------------------------------------------------------

    def _rng(self, link: str, direction: str) -> random.Random:
        # Seeded per link and direction, so a link's loss pattern does not depend on what else
        # runs or on the order in which links were added.
        return random.Random(f"{self.seed}/{link}/{direction}")

    def _add_link(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        name = _field(request, "name", str)
        if name in self.links:
            raise RequestError(f"link {name!r} exists already")
        ends = []
        for key in ("a", "b"):
            end = _field(request, key, dict)
            mac = end.get("mac")
            if mac is not None and not isinstance(mac, str):
                raise RequestError(f"{key}.mac must be a string")
            ends.append((_field(end, "pid", int), _field(end, "ifname", str), mac))
        shapings = {d: _shaping(request.get(d), d) for d in DIRECTIONS}
        mtu = request.get("mtu", 1500)
        if not isinstance(mtu, int) or isinstance(mtu, bool):
            raise RequestError("mtu must be an integer")
        pipes = {
            d: Pipe(shapings[d], self._rng(name, d), now=now, trace_loader=self._traces)
            for d in DIRECTIONS
        }
        fds: list[int] = []
        try:
            for pid, ifname, mac in ends:
                fds.append(create_tap(pid, ifname, mac, mtu))
        except TestbedError:
            for fd in fds:
                os.close(fd)
            raise
        fd_a, fd_b = fds
        link = _Link(name, fd_a, fd_b, _Direction("a2b", pipes["a2b"], fd_b),
                     _Direction("b2a", pipes["b2a"], fd_a))
        # Room for the Ethernet header and a VLAN tag on top of the MTU; a larger frame would
        # be truncated by the TAP, and the MTU set on it keeps the kernel from sending one.
        read_size = mtu + 64
        self._readers[fd_a] = (link.a2b.pipe, read_size)
        self._readers[fd_b] = (link.b2a.pipe, read_size)
        self._epoll.register(fd_a, select.EPOLLIN)
        self._epoll.register(fd_b, select.EPOLLIN)
        self.links[name] = link
        self._directions.extend((link.a2b, link.b2a))
        log.info("link %s added: %s <-> %s, a2b %s, b2a %s", name, ends[0], ends[1],
                 shapings["a2b"], shapings["b2a"])
        return {}

    def _link(self, request: dict[str, Any]) -> _Link:
        name = _field(request, "name", str)
        link = self.links.get(name)
        if link is None:
            raise RequestError(f"no link named {name!r}")
        return link

    def _set(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        link = self._link(request)
        direction = _field(request, "direction", str)
        if direction not in ("a2b", "b2a", "both"):
            raise RequestError(f"direction must be a2b, b2a or both, got {direction!r}")
        shaping = _shaping(request.get("shaping"), "shaping")
        if shaping.trace is not None:
            self._traces(shaping.trace)  # fail before changing either direction
        names = DIRECTIONS if direction == "both" else (direction,)
        for d in names:
            link.direction(d).pipe.set_shaping(shaping, now)
        log.info("link %s %s set to %s", link.name, direction, shaping)
        return {}

    def _down(self, request: dict[str, Any], now: float) -> dict[str, Any]:
        link = self._link(request)
        down = _field(request, "down", bool)
        for d in DIRECTIONS:
            link.direction(d).pipe.set_down(down, now)
        link.down = down
        log.info("link %s %s", link.name, "down" if down else "up")
        return {}

    def _remove_link(self, request: dict[str, Any]) -> dict[str, Any]:
        link = self._link(request)
        self._close_link(link)
        log.info("link %s removed", link.name)
        return {}

    def _close_link(self, link: _Link) -> None:
        for fd in (link.fd_a, link.fd_b):
            self._epoll.unregister(fd)
            self._readers.pop(fd, None)
            os.close(fd)  # the TAP disappears with its only fd
        self._directions = [d for d in self._directions if d not in (link.a2b, link.b2a)]
        del self.links[link.name]

    def snapshot(self, now: float) -> dict[str, Any]:
        links: dict[str, Any] = {}
        wall_offset = time.time() - now  # `now` is time.monotonic()
        for name, link in self.links.items():
            entry: dict[str, Any] = {"down": link.down}
            for d in DIRECTIONS:
                pipe = link.direction(d).pipe
                counters = asdict(pipe.counters)
                counters["lateness_mean_s"] = (
                    counters["lateness_sum_s"] / counters["frames_out"]
                    if counters["frames_out"] else 0.0
                )
                counters["backlog_pkts"] = pipe.backlog(now)
                counters["in_pipe"] = pipe.in_pipe
                if pipe.shaping.aqm == "red":
                    counters["red_avg_pkts"] = round(pipe.red_avg, 3)
                counters["shaping"] = pipe.shaping.to_dict()
                counters["flows"] = flows = {}
                epoch = pipe.series_epoch + wall_offset
                for key, flow in pipe.flows.items():
                    flows[flow_name(key)] = entry_flow = dict[str, Any](flow.totals())
                    if flow.series is not None:
                        # Bins as [start on time.time(), frames in, dropped].
                        entry_flow["series"] = [[round(epoch + i * FLOW_BIN_S, 3), *counts]
                                                for i, counts in sorted(flow.series.items())]
                entry[d] = counters
            links[name] = entry
        s = self.stats
        uptime = now - s.started
        cpu = time.process_time() - s.started_cpu
        frames = s.frames_read + s.frames_written
        loop = {k: v for k, v in asdict(s).items() if not k.startswith("started")}
        loop.update(
            uptime_s=uptime,
            cpu_s=cpu,
            # Share of one core the loop used, and frames (read + written) it handled per CPU
            # second: the second divided by the first is the rate at which it would saturate.
            cpu_load=cpu / uptime if uptime > 0 else 0.0,
            frames_per_cpu_s=frames / cpu if cpu > 0 else 0.0,
            frames_per_wakeup=frames / s.wakeups if s.wakeups else 0.0,
        )
        return {"links": links, "loop": loop}

    def handle_request(self, line: bytes, now: float) -> dict[str, Any]:
        self.stats.requests += 1
        request_id: Any = None
        try:
            try:
                request = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise RequestError("request is not valid JSON") from None
            if not isinstance(request, dict):
                raise RequestError("request must be a JSON object")
            request_id = request.get("id")
            if "id" not in request:
                raise RequestError("request has no 'id'")
            cmd = _field(request, "cmd", str)
            result: dict[str, Any]
            if cmd == "add_link":
                result = self._add_link(request, now)
            elif cmd == "set":
                result = self._set(request, now)
            elif cmd == "down":
                result = self._down(request, now)
            elif cmd == "remove_link":
                result = self._remove_link(request)
            elif cmd == "stats":
                result = self.snapshot(now)
            elif cmd == "quit":
                self.stopping = True
                result = {}
            else:
                raise RequestError(f"unknown cmd {cmd!r}")
        except TestbedError as exc:
            self.stats.bad_requests += 1
            return {"id": request_id, "ok": False, "error": str(exc)}
        except Exception as exc:  # a bad request must never kill the links
            self.stats.bad_requests += 1
            log.exception("request failed: %r", line)
            return {"id": request_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"id": request_id, "ok": True, **result}

    def _reply(self, reply: dict[str, Any]) -> None:
        data = memoryview((json.dumps(reply) + "\n").encode())
        while data:
            data = data[os.write(1, data):]

    def _read_control(self, now: float) -> None:
        chunk = os.read(0, 65536)
        if not chunk:
            # The controller died (or closed us): exit now; the TAPs go with this process.
            log.info("stdin closed, exiting")
            self.stopping = True
            return
        self._control_buffer += chunk
        *lines, self._control_buffer = self._control_buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._reply(self.handle_request(line, now))

    # -- data path --------------------------------------------------------------------------

    def _read_tap(self, fd: int, pipe: Pipe, size: int, now: float) -> None:
        read = os.read
        offer = pipe.offer
        n = 0
        try:
            while n < READ_BATCH:
                offer(read(fd, size), now)
                n += 1
            self.stats.full_read_batches += 1
        except BlockingIOError:
            pass
        except OSError as exc:
            self.stats.read_errors += 1
            log.warning("read from TAP fd %d failed: %s", fd, exc)
        self.stats.frames_read += n

    def _deliver(self, now: float) -> None:
        limit = now + HALF_TICK_S
        written = 0
        write = os.write
        for direction in self._directions:
            pipe = direction.pipe
            deadline = pipe.next_deadline()
            if deadline is None or deadline > limit:
                continue
            fd = direction.out_fd
            for frame in pipe.pop_due(now, HALF_TICK_S):
                try:
                    write(fd, frame)
                    written += 1
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        # The receiving interface is administratively down.
                        pipe.record_undeliverable(frame)
                    else:
                        self.stats.write_errors += 1
        self.stats.frames_written += written

    def _timeout(self, now: float) -> float | None:
        earliest: float | None = None
        for direction in self._directions:
            deadline = direction.pipe.next_deadline()
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        if earliest is None:
            return None
        wait = earliest - now
        if wait <= HALF_TICK_S:
            return 0.0
        # Round to the nearest millisecond. Python rounds a float timeout up to whole ms, so
        # pass a hair less than the intended count.
        return (round(wait * 1000) - 0.001) / 1000

    def run(self) -> None:
        poll = self._epoll.poll
        clock = time.monotonic
        readers = self._readers
        stats = self.stats
        while not self.stopping:
            events = poll(self._timeout(clock()), MAX_EVENTS)
            stats.wakeups += 1
            now = clock()
            for fd, _mask in events:
                reader = readers.get(fd)
                if reader is not None:
                    self._read_tap(fd, reader[0], reader[1], now)
                elif fd == 0:
                    self._read_control(now)
                elif fd == self._signal_r:
                    self._drain_signal_pipe()
            self._deliver(clock())

    def _drain_signal_pipe(self) -> None:
        try:
            while os.read(self._signal_r, 512):
                pass
        except BlockingIOError:
            pass

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            log.info("signal %d, exiting", signum)
            self.stopping = True

        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def close(self) -> None:
        for link in list(self.links.values()):
            self._close_link(link)
        self._epoll.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.log is not None:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(message)s")
    else:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    daemon = ShaperDaemon(args.seed)
    daemon.install_signal_handlers()
    log.info("shaper started, pid %d, seed %d", os.getpid(), args.seed)
    try:
        daemon.run()
    finally:
        log.info("final stats: %s", json.dumps(daemon.snapshot(time.monotonic())))
        daemon.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
