"""Coupled congestion control for MPTCP subflows: LIA (RFC 6356), OLIA (Khalili et al.) and
BALIA (Peng et al.), registered into TCP's registry as "lia", "olia" and "balia".

TCP knows nothing of these: importing this module plugs them into
`testbed.stack.tcp.congestion`'s registry, and MPTCP couples the subflows of a connection by
joining their controllers to one `CongestionGroup`. A controller reads its siblings' `cwnd`,
`mss` and `srtt` only through the group's read-only views.

All three are Reno (RFC 5681 with RFC 3465 byte counting) except for the increase in
congestion avoidance and, for BALIA, the decrease; a controller with no group, or whose group
holds no other subflow with an RTT estimate, runs Reno's own code, so a single-path MPTCP
connection behaves exactly like TCP. The papers state their rules in packets per packet
acknowledged; the controllers apply them in bytes: a rule "increase w_r by f packets per
packet acknowledged" becomes "increase cwnd_r by f * MSS_r * acked / MSS_r = f * acked bytes"
once f itself is written with windows in bytes, as RFC 6356 §4 does for LIA. Each function
below says how.

A subflow that has no RTT estimate yet has carried no data and is left out of the coupling
(the Linux implementations skip it the same way, their `mptcp_*_sk_can_send`): the formulas
divide by RTTs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from testbed.stack.tcp.congestion import (
    Reno,
    SubflowCongestionView,
    register_congestion_control,
)


@dataclass(frozen=True)
class PathSample:
    """One subflow as the coupled formulas see it: window and MSS in bytes, RTT in seconds,
    and (OLIA only) l_r, the bytes acknowledged between its last two losses or since its
    last loss, whichever is larger (Khalili et al. §5)."""

    cwnd: int
    mss: int
    rtt: float
    inter_loss: int = 0

    @property
    def rate(self) -> float:
        """x_r = w_r / rtt_r, bytes per second."""
        return self.cwnd / self.rtt


# --- LIA: RFC 6356 ---------------------------------------------------------------------------


def lia_alpha(paths: Sequence[PathSample]) -> float:
    """RFC 6356 §3 (eq. 2): alpha = cwnd_total * max_i(cwnd_i/rtt_i^2) / (sum_i cwnd_i/rtt_i)^2.

    With windows in bytes alpha is a pure number (bytes * bytes/s^2 / (bytes/s)^2), the same as
    in packets, which is why RFC 6356 §4 can compute it in bytes."""
    total = sum(p.cwnd for p in paths)
    best = max(p.cwnd / p.rtt**2 for p in paths)
    return total * best / sum(p.rate for p in paths) ** 2


def lia_increase(acked: int, paths: Sequence[PathSample], me: int) -> float:
    """RFC 6356 §3 (eq. 1), bytes form: for `acked` bytes on subflow i, cwnd_i grows by
    min(alpha * bytes_acked * MSS_i / cwnd_total, bytes_acked * MSS_i / cwnd_i).

    The second term caps the subflow at what a TCP on that path would do (RFC 6356 §3:
    "ensures that any multipath subflow cannot be more aggressive than a TCP flow")."""
    own = paths[me]
    total = sum(p.cwnd for p in paths)
    return min(lia_alpha(paths) * acked * own.mss / total, acked * own.mss / own.cwnd)


# --- OLIA: Khalili, Gast, Popovic, Le Boudec, CoNEXT 2012 / ToN 2013 --------------------------


def olia_alphas(paths: Sequence[PathSample]) -> list[float]:
    """Khalili et al. §5, eq. (5): alpha_r for every path in R = `paths`.

    M is the set of paths with the largest window; B the "presumably best" paths, those with the
    largest l_r / rtt_r^2 (a TCP with loss rate 1/l_r and RTT rtt_r gets a rate proportional
    to sqrt(l_r) / rtt_r; this is also how the authors' Linux module, mptcp_olia.c, ranks
    paths). If B \\ M is empty every alpha_r is 0; otherwise the paths of B \\ M share
    +1/|R| and the paths of M share -1/|R|, so that window moves from the largest
    windows to the best paths without changing the total increase."""
    n = len(paths)
    largest = max(p.cwnd for p in paths)
    quality = [p.inter_loss / p.rtt**2 for p in paths]
    best = max(quality)
    in_m = [p.cwnd == largest for p in paths]
    in_b_not_m = [q == best and not m for q, m in zip(quality, in_m, strict=True)]
    b_not_m = sum(in_b_not_m)
    if b_not_m == 0:
        return [0.0] * n
    m_size = sum(in_m)
    return [1 / (n * b_not_m) if bm else -1 / (n * m_size) if m else 0.0
            for bm, m in zip(in_b_not_m, in_m, strict=True)]


def olia_increase(acked: int, paths: Sequence[PathSample], me: int) -> float:
    """Khalili et al. §5, eq. (4): per packet acknowledged on path r, w_r grows by
    (w_r / rtt_r^2) / (sum_p w_p / rtt_p)^2 + alpha_r / w_r packets.

    In bytes (windows W = w * MSS, one MSS shared by the paths) the first term is
    MSS * (W_r/rtt_r^2) / (sum_p W_p/rtt_p)^2 and the second alpha_r * MSS / W_r, per packet;
    `acked` bytes are acked/MSS packets of MSS bytes each, so cwnd_r grows by `acked` times
    each term. The result can be negative (alpha_r < 0 on a largest-window path)."""
    own = paths[me]
    coupled = own.cwnd / own.rtt**2 / sum(p.rate for p in paths) ** 2
    return acked * own.mss * (coupled + olia_alphas(paths)[me] / own.cwnd)


# --- BALIA: Peng, Walid, Hwang, Low, IEEE/ACM ToN 2016 ----------------------------------------


def balia_alpha(paths: Sequence[PathSample], me: int) -> float:
    """Peng et al. §VI (BALIA): alpha_r = max_k x_k / x_r, with x_k = w_k / rtt_k; at least 1."""
    return max(p.rate for p in paths) / paths[me].rate


def balia_increase(acked: int, paths: Sequence[PathSample], me: int) -> float:
    """Peng et al. §VI, per packet acknowledged on path r, w_r grows by
    x_r / (rtt_r * (sum_k x_k)^2) * (1 + alpha_r)/2 * (4 + alpha_r)/5 packets.

    With x in packets/s, x_r / (rtt_r (sum x)^2) = MSS * X_r / (rtt_r (sum X)^2) for rates X in
    bytes/s; times MSS bytes per packet and acked/MSS packets, cwnd_r grows by
    acked * MSS * X_r / (rtt_r (sum X)^2) times the two alpha factors."""
    own = paths[me]
    alpha = balia_alpha(paths, me)
    coupled = own.rate / (own.rtt * sum(p.rate for p in paths) ** 2)
    return acked * own.mss * coupled * (1 + alpha) / 2 * (4 + alpha) / 5


def balia_window_kept(alpha: float) -> float:
    """Peng et al. §VI: on a loss w_r decreases by (w_r / 2) * min(alpha_r, 1.5), so the
    fraction kept is 1 - min(alpha_r, 1.5) / 2: Reno's 1/2 for the fastest path, down to 1/4."""
    return 1 - min(alpha, 1.5) / 2


# --- the controllers --------------------------------------------------------------------------


class CoupledCongestionControl(Reno):
    """Reno whose congestion-avoidance increase is coupled to the sibling subflows'.

    Subclasses give `_increase(acked, paths, me)`: the growth in bytes for `acked` bytes on
    `paths[me]`. Growth is fractional per ACK, so the remainder is carried to the next one;
    it may be negative (OLIA), but cwnd never drops below one MSS that way.
    """

    def __init__(self, mss: int, now: float) -> None:
        super().__init__(mss, now)
        self._growth_remainder = 0.0

    def coupled_paths(self) -> tuple[list[PathSample], int] | None:
        """This subflow and its siblings that have an RTT estimate, and this one's index; None
        when there is nothing to couple with (no group, no such sibling, or no estimate of
        our own yet, which only happens before the first RTT, still in slow start)."""
        group = self.group
        if group is None:
            return None
        paths: list[PathSample] = []
        me: int | None = None
        for view in group.members:
            if view.srtt is None or view.srtt <= 0:
                continue
            if view.is_for(self):
                me = len(paths)
            paths.append(self._sample(view, view.srtt))
        if me is None or len(paths) < 2:
            return None
        return paths, me

    def increase(self, acked: int) -> float:
        """Bytes the window would grow by for `acked` bytes acknowledged now in congestion
        avoidance (uncoupled: RFC 5681's acked * MSS / cwnd, which Reno's byte counting
        applies once per window)."""
        coupled = self.coupled_paths()
        if coupled is None:
            return acked * self.mss / self.cwnd
        return self._increase(acked, *coupled)

    def on_ack(self, acked: int, rtt_s: float | None, in_flight: int, now: float) -> None:
        coupled = None if acked <= 0 or self.in_slow_start() else self.coupled_paths()
        if coupled is None:
            # Slow start, or nothing to couple with: exactly Reno.
            super().on_ack(acked, rtt_s, in_flight, now)
            return
        self._timed_out = False
        growth = self._increase(acked, *coupled) + self._growth_remainder
        whole = int(growth)
        self._growth_remainder = growth - whole
        self.cwnd += whole
        if self.cwnd < self.mss:
            self.cwnd = self.mss
            self._growth_remainder = 0.0

    def on_congestion_event(self, in_flight: int, now: float) -> None:
        super().on_congestion_event(in_flight, now)
        self._growth_remainder = 0.0

    def on_recovery_end(self, now: float) -> None:
        super().on_recovery_end(now)
        self._growth_remainder = 0.0

    def on_rto(self, in_flight: int, now: float) -> None:
        super().on_rto(in_flight, now)
        self._growth_remainder = 0.0

    def _sample(self, view: SubflowCongestionView, srtt: float) -> PathSample:
        return PathSample(view.cwnd, view.mss, srtt)

    def _increase(self, acked: int, paths: list[PathSample], me: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} cwnd={self.cwnd} ssthresh={self.ssthresh} "
                f"coupled={self.coupled_paths() is not None}>")


class Lia(CoupledCongestionControl):
    """RFC 6356 Linked Increases: the default coupled controller of MPTCP."""

    name = "lia"

    def _increase(self, acked: int, paths: list[PathSample], me: int) -> float:
        return lia_increase(acked, paths, me)


class Olia(CoupledCongestionControl):
    """Opportunistic Linked Increases (Khalili et al., CoNEXT 2012): Pareto-optimal, shifts
    window from the largest-window paths to the presumably best ones; decrease as Reno."""

    name = "olia"

    # Workaround: a view shows a sibling's cwnd, mss and srtt, not its l_r. Every live Olia is
    # listed here so that the one a view is for can be found through the public
    # `view.is_for()`; each controller caches what it found per view. See the reply to issue
    # 5 for the view field that would make this unnecessary.
    _live: ClassVar[weakref.WeakSet[Olia]] = weakref.WeakSet()

    def __init__(self, mss: int, now: float) -> None:
        super().__init__(mss, now)
        # Khalili et al. §5: l_1r, bytes acknowledged between the last two losses, and l_2r,
        # bytes acknowledged since the last loss.
        self.bytes_between_losses = 0
        self.bytes_since_loss = 0
        self._peers: dict[SubflowCongestionView, Olia | None] = {}
        Olia._live.add(self)

    @property
    def inter_loss(self) -> int:
        """l_r = max(l_1r, l_2r) (Khalili et al. §5)."""
        return max(self.bytes_between_losses, self.bytes_since_loss)

    def on_ack(self, acked: int, rtt_s: float | None, in_flight: int, now: float) -> None:
        self.bytes_since_loss += max(acked, 0)
        super().on_ack(acked, rtt_s, in_flight, now)

    def on_ack_not_cwnd_limited(self, acked: int, rtt_s: float | None, in_flight: int,
                                now: float) -> None:
        self.bytes_since_loss += max(acked, 0)
        super().on_ack_not_cwnd_limited(acked, rtt_s, in_flight, now)

    def on_congestion_event(self, in_flight: int, now: float) -> None:
        self._note_loss()
        super().on_congestion_event(in_flight, now)

    def on_rto(self, in_flight: int, now: float) -> None:
        # Repeated timeouts of the same data are one loss, as for ssthresh (RFC 5681 §3.1).
        if not self._timed_out:
            self._note_loss()
        super().on_rto(in_flight, now)

    def _note_loss(self) -> None:
        # A loss with nothing acknowledged since the previous one keeps the old interval.
        if self.bytes_since_loss > 0:
            self.bytes_between_losses = self.bytes_since_loss
            self.bytes_since_loss = 0

    def _sample(self, view: SubflowCongestionView, srtt: float) -> PathSample:
        return PathSample(view.cwnd, view.mss, srtt, self._inter_loss_of(view))

    def _inter_loss_of(self, view: SubflowCongestionView) -> int:
        if view.is_for(self):
            return self.inter_loss
        if view not in self._peers:
            if self.group is not None and len(self._peers) >= len(self.group.members):
                self._peers.clear()  # siblings left: forget them
            self._peers[view] = next((o for o in Olia._live if view.is_for(o)), None)
        peer = self._peers[view]
        # A sibling that is not an Olia (a mixed group) publishes no l_r: never "best".
        return peer.inter_loss if peer is not None else 0

    def _increase(self, acked: int, paths: list[PathSample], me: int) -> float:
        return olia_increase(acked, paths, me)


class Balia(CoupledCongestionControl):
    """Balanced Linked Adaptation (Peng et al., ToN 2016): between LIA's friendliness and
    OLIA's responsiveness; slower paths also back off harder on loss."""

    name = "balia"

    def _increase(self, acked: int, paths: list[PathSample], me: int) -> float:
        return balia_increase(acked, paths, me)

    def loss_ssthresh(self, in_flight: int) -> int:
        """The window after a loss: FlightSize (RFC 5681 §3.2 eq. 4 uses it in place of the
        window) times `balia_window_kept(alpha_r)`, at least 2*SMSS; Reno's when alone."""
        coupled = self.coupled_paths()
        if coupled is None:
            return max(in_flight // 2, 2 * self.mss)
        return max(int(in_flight * balia_window_kept(balia_alpha(*coupled))), 2 * self.mss)

    def on_congestion_event(self, in_flight: int, now: float) -> None:
        self.ssthresh = self.loss_ssthresh(in_flight)
        self.cwnd = self.ssthresh
        self.bytes_acked = 0
        self._growth_remainder = 0.0

    def on_rto(self, in_flight: int, now: float) -> None:
        self._loss_window_after_rto(self.loss_ssthresh(in_flight))
        self.bytes_acked = 0
        self._growth_remainder = 0.0


for _cls in (Lia, Olia, Balia):
    register_congestion_control(_cls.name, _cls)
