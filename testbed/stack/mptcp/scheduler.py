"""Packet schedulers: which subflow carries the next mapping (Linux's `struct
mptcp_sched_ops`, net/mptcp/sched.c). Registered by name like the congestion controllers.

A scheduler sees `SubflowCandidate`s and a `SchedulerContext`, plain values, never subflows
or the connection themselves, so it cannot change them and every decision is a unit test.
It is asked once per segment: `select` names the subflow for the next segment of new data
(None: send nothing now, even if some subflow has room), and `copies` names the subflows
that must carry that segment too (the redundant scheduler's; the connection queues a copy
for each and sends it when that subflow has room).

- `default` (`lowest_rtt`): the lowest smoothed RTT with window space (Linux's default).
- `roundrobin` (`rr`): the subflows with window space in turn, one segment each.
- `redundant`: every segment on every subflow (the lowest RTT first, copies on the others).
- `blest`: lowest RTT, but a slower subflow only if the fast one could not fill the
  connection-level send window while the slow one holds its segment (Ferlin et al., IFIP
  Networking 2016).
- `ecf`: lowest RTT, but wait for the fastest subflow when it would finish the queued data
  sooner than the slower one could deliver its segment (Lim et al., CoNEXT 2017).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from testbed.stack.registry import Registry


@dataclass(frozen=True)
class SubflowCandidate:
    """A subflow that could take data now: established, fully joined, not failed or stale."""

    subflow_id: int
    srtt: float | None  # seconds; None before the first sample
    space: int  # bytes its congestion window can still take
    backup: bool  # either end asked for it to be a backup (MP_JOIN B bit, MP_PRIO)
    cwnd: int = 0  # bytes
    in_flight: int = 0  # bytes mapped to it and not acknowledged by it
    mss: int = 1448  # payload bytes of a full segment
    rttvar: float | None = None  # seconds (RFC 6298 RTTVAR)


@dataclass(frozen=True)
class SchedulerContext:
    """The connection-level state a decision may depend on (bytes, seconds)."""

    now: float = 0.0
    queued: int = 0  # written by the application, not yet sent on any subflow
    in_flight: int = 0  # sent and not data-acknowledged (snd_nxt - data_una)
    send_window: int = 1 << 30  # the peer's connection-level receive window (§3.3.4)


class Scheduler(ABC):
    name: ClassVar[str]

    @abstractmethod
    def select(self, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> SubflowCandidate | None:
        """The subflow for the next segment of new data, or None to send nothing now."""

    def copies(self, chosen: SubflowCandidate, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> Sequence[SubflowCandidate]:
        """The other subflows that carry the segment just given to `chosen` too."""
        return ()

    def on_window_blocked(self, now: float) -> None:
        """New data waited for the connection-level window while a subflow had room."""
        return None


def _pool(candidates: Sequence[SubflowCandidate]) -> list[SubflowCandidate]:
    # RFC 8684 §3.3.8: a backup subflow is used only if no non-backup subflow is available.
    primaries = [c for c in candidates if not c.backup]
    return primaries if primaries else list(candidates)


def _rtt_key(c: SubflowCandidate) -> tuple[bool, float, int]:
    # An unmeasured subflow sorts last among equals; the id keeps the choice stable.
    return (c.srtt is None, c.srtt or 0.0, c.subflow_id)


def _lowest_rtt(candidates: Sequence[SubflowCandidate]) -> SubflowCandidate | None:
    ready = [c for c in _pool(candidates) if c.space > 0]
    return min(ready, key=_rtt_key) if ready else None


def _fastest(candidates: Sequence[SubflowCandidate]) -> SubflowCandidate | None:
    """The lowest measured RTT of the pool, window space or not."""
    measured = [c for c in _pool(candidates) if c.srtt is not None]
    return min(measured, key=_rtt_key) if measured else None


class LowestRttScheduler(Scheduler):
    """Linux's default: the lowest smoothed RTT among the subflows with congestion window
    space; backup subflows only when no other subflow is usable at all (RFC 8684 §3.3.8:
    a backup is used only if no non-backup subflow is available)."""

    name = "default"

    def select(self, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> SubflowCandidate | None:
        return _lowest_rtt(candidates)


class RoundRobinScheduler(Scheduler):
    """The subflows with window space in turn by id, one segment each (the out-of-tree
    Linux MPTCP's mptcp_rr with one segment per turn, skipping a subflow whose window is
    full); backups as for the default."""

    name = "roundrobin"

    def __init__(self) -> None:
        self._last: int | None = None

    def select(self, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> SubflowCandidate | None:
        ready = sorted((c for c in _pool(candidates) if c.space > 0),
                       key=lambda c: c.subflow_id)
        if not ready:
            return None
        after = [c for c in ready if self._last is None or c.subflow_id > self._last]
        choice = after[0] if after else ready[0]
        self._last = choice.subflow_id
        return choice


class RedundantScheduler(Scheduler):
    """Every segment on every subflow (the out-of-tree Linux MPTCP's mptcp_redundant):
    new data goes to the lowest RTT with room, and each other subflow of the pool gets a
    copy, sent when it has room, so the fastest path delivers each byte first at the cost of
    the capacity of all the others."""

    name = "redundant"

    def select(self, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> SubflowCandidate | None:
        return _lowest_rtt(candidates)

    def copies(self, chosen: SubflowCandidate, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> Sequence[SubflowCandidate]:
        return [c for c in _pool(candidates) if c.subflow_id != chosen.subflow_id]


class BlestScheduler(Scheduler):
    """BLEST, send-window BLocking ESTimation (Ferlin, Alay, Mehani, Boreli, IFIP Networking
    2016, §IV). When the lowest-RTT subflow with room, x_s, is not the fastest subflow x_f,
    estimate what x_f could send while a segment on x_s is in flight, one RTT_s, with its
    window growing one segment per RTT_f (congestion avoidance):

        X = MSS_f * (CWND_f + (RTT_s/RTT_f - 1) / 2) * RTT_s/RTT_f      (CWND_f in segments)

    and send nothing now if X * lambda > |MPTCP_SW| - MSS_s * (inflight_s + 1), the send
    window left once x_s holds its own bytes and the new segment. lambda, from 1.0 to 1.3,
    grows by 0.04 per RTT_s in which the connection-level window blocked new data while a
    subflow had room, and shrinks by 0.01 per RTT_s in which it did not."""

    name = "blest"
    LAMBDA_MIN = 1.0
    LAMBDA_MAX = 1.3
    LAMBDA_UP = 0.04
    LAMBDA_DOWN = 0.01

    def __init__(self) -> None:
        self.lam = self.LAMBDA_MIN
        self._blocked = False
        self._updated_at: float | None = None

    def on_window_blocked(self, now: float) -> None:
        self._blocked = True

    def _update_lambda(self, now: float, period: float) -> None:
        if self._updated_at is None:
            self._updated_at = now
            return
        if now - self._updated_at < period:
            return
        step = self.LAMBDA_UP if self._blocked else -self.LAMBDA_DOWN
        self.lam = min(self.LAMBDA_MAX, max(self.LAMBDA_MIN, self.lam + step))
        self._blocked = False
        self._updated_at = now

    @staticmethod
    def fast_bytes(fast: SubflowCandidate, rtt_slow: float) -> float:
        """X: bytes the fast subflow sends during one RTT of the slow one."""
        assert fast.srtt is not None and fast.srtt > 0
        ratio = rtt_slow / fast.srtt
        return fast.mss * (fast.cwnd / fast.mss + (ratio - 1) / 2) * ratio

    def select(self, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> SubflowCandidate | None:
        best = _lowest_rtt(candidates)
        fast = _fastest(candidates)
        if best is None or fast is None or best is fast or best.srtt is None \
                or fast.srtt is None or fast.srtt <= 0 or best.srtt <= fast.srtt:
            return best
        self._update_lambda(context.now, best.srtt)
        x = self.fast_bytes(fast, best.srtt)
        left = context.send_window - (best.in_flight + best.mss)
        return None if x * self.lam > left else best


class EcfScheduler(Scheduler):
    """ECF, Earliest Completion First (Lim, Nahum, Towsley, Gibbens, CoNEXT 2017,
    Algorithm 1). When the lowest-RTT subflow with room, x_s, is not the fastest subflow
    x_f, with k the bytes queued at the connection, delta = max(RTTVAR_f, RTTVAR_s) and
    beta = 0.25:

        n = 1 + k / CWND_f
        if n * RTT_f < (1 + waiting * beta) * (RTT_s + delta):
            if k / CWND_s * RTT_s >= 2 * RTT_f + delta:  waiting = 1, send nothing now
            else: use x_s
        else: waiting = 0, use x_s

    x_f finishes the queue (n rounds of its window) before one segment over x_s arrives,
    unless x_s would itself carry a real share of it; `waiting` is the hysteresis that keeps
    it from flapping."""

    name = "ecf"
    BETA = 0.25

    def __init__(self) -> None:
        self.waiting = False

    def select(self, candidates: Sequence[SubflowCandidate],
               context: SchedulerContext) -> SubflowCandidate | None:
        best = _lowest_rtt(candidates)
        fast = _fastest(candidates)
        if best is None or fast is None or best is fast or best.srtt is None \
                or fast.srtt is None:
            return best
        k = context.queued
        delta = max(fast.rttvar or 0.0, best.rttvar or 0.0)
        n = 1 + k / max(1, fast.cwnd)
        if n * fast.srtt < (1 + self.waiting * self.BETA) * (best.srtt + delta):
            if k / max(1, best.cwnd) * best.srtt >= 2 * fast.srtt + delta:
                self.waiting = True
                return None
            return best
        self.waiting = False
        return best


_SCHEDULERS: Registry[type[Scheduler]] = Registry("MPTCP scheduler")
register_scheduler = _SCHEDULERS.register
get_scheduler = _SCHEDULERS.get
available_schedulers = _SCHEDULERS.names


register_scheduler(LowestRttScheduler.name, LowestRttScheduler)
register_scheduler("lowest_rtt", LowestRttScheduler)
register_scheduler(RoundRobinScheduler.name, RoundRobinScheduler)
register_scheduler("rr", RoundRobinScheduler)
register_scheduler(RedundantScheduler.name, RedundantScheduler)
register_scheduler(BlestScheduler.name, BlestScheduler)
register_scheduler(EcfScheduler.name, EcfScheduler)
