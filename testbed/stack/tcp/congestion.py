"""Congestion control for TCP and MPTCP subflows: an interface, a registry by name, Reno, CUBIC.

The connection owns loss detection and recovery (RFC 6675 / RFC 6582); a controller only
decides `cwnd` and `ssthresh` (bytes) from four events, each given `now` in seconds:

- `on_ack(acked, rtt_s, in_flight, now)`: `acked` bytes of new data were acknowledged,
  cumulatively or by SACK, outside loss recovery. `rtt_s` is a Karn-valid RTT sample or None;
  `in_flight` is FlightSize after this ACK was processed.
  The connection calls it only while the sender is cwnd-limited (Linux's
  tcp_is_cwnd_limited, RFC 7661 §4.2): an application- or receive-window-limited sender
  would otherwise grow a window it never uses. Otherwise it calls
  `on_ack_not_cwnd_limited` with the same arguments, which must not grow `cwnd`.
- `on_congestion_event(in_flight, now)`: loss (or ECN-Echo) starts fast recovery; called at
  most once per window of data, with FlightSize when the loss was detected. The controller
  sets `ssthresh` and reduces `cwnd` to it; window inflation, if the connection does NewReno
  with inflation, is the connection's business and ends with `on_recovery_end`.
- `on_recovery_end(now)`: recovery is over; `cwnd` is deflated to `ssthresh`.
- `on_rto(in_flight, now)`: the retransmission timer expired; `cwnd` becomes the loss window
  of one segment (RFC 5681 §3.1). Further timeouts with no new data acknowledged in between
  leave `ssthresh` alone (RFC 5681 §3.1: "held constant").

Controllers are registered by name (like aioquic's `register_congestion_control`) and
experiments pick them with `get_congestion_control(name)`.

Coupled controllers (MPTCP LIA, OLIA, BALIA; RFC 6356 and the papers in issue 5) need to see
the windows and RTTs of their sibling subflows. Every controller has a `group` attribute,
None for plain TCP. MPTCP creates one `CongestionGroup` per connection and calls
`group.join(controller, rtt)` for each subflow, where `rtt` is that subflow's `RttEstimator`;
`join` sets `controller.group`. A controller then reads `self.group.members` (read-only
`SubflowCongestionView`s with `cwnd`, `ssthresh`, `mss`, `srtt`, `in_slow_start`), finds its
own view with `self.group.view_of(self)` and the others with `self.group.siblings(self)`.
The group only reads: a controller never changes a sibling's window. No coupled algorithm
is implemented yet; the uncoupled Reno and CUBIC ignore `group`.

CUBIC leaves slow start early when the RTT rises (HyStart++'s delay increase, RFC 9406 §4.2,
going straight to congestion avoidance like Linux's HyStart rather than through RFC 9406's
conservative slow start): without it slow start overshoots the path by up to a whole window,
and a BDP-sized queue then drops hundreds of segments at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Final

from testbed.errors import ParameterError
from testbed.stack.registry import Registry
from testbed.stack.tcp.rtt import RttEstimator

# Linux's TCP_INFINITE_SSTHRESH: "infinite" while still an int that compares with windows.
INFINITE_SSTHRESH: Final = 0x7FFFFFFF


def initial_window(mss: int) -> int:
    """RFC 6928 §2: IW = min(10*MSS, max(2*MSS, 14600)) bytes."""
    return min(10 * mss, max(2 * mss, 14600))


class CongestionControl(ABC):
    """One sender's congestion window; subclasses register under `name`."""

    name: ClassVar[str]

    def __init__(self, mss: int, now: float) -> None:
        if mss <= 0:
            raise ParameterError(f"the MSS must be a positive number of bytes, got {mss}")
        self.mss = mss
        self.cwnd: int = initial_window(mss)
        self.ssthresh: int = INFINITE_SSTHRESH
        # Set by MPTCP for coupled controllers (see the module docstring); None for plain TCP.
        self.group: CongestionGroup | None = None
        # True after a timeout until new data is acknowledged: a further timeout of the same
        # data must not shrink ssthresh again (RFC 5681 §3.1, after equation 4).
        self._timed_out = False

    def in_slow_start(self) -> bool:
        # RFC 5681 §3.1: slow start while cwnd < ssthresh (either may be used when equal).
        return self.cwnd < self.ssthresh

    @abstractmethod
    def on_ack(self, acked: int, rtt_s: float | None, in_flight: int, now: float) -> None:
        """`acked` bytes of new data acknowledged outside recovery."""

    def on_ack_not_cwnd_limited(self, acked: int, rtt_s: float | None, in_flight: int,
                                now: float) -> None:
        """`acked` bytes acknowledged outside recovery while cwnd did not limit the sender:
        no growth (RFC 7661), but the ACK still counts as new data after a timeout."""
        if acked > 0:
            self._timed_out = False

    @abstractmethod
    def on_congestion_event(self, in_flight: int, now: float) -> None:
        """Loss detected by the ACK stream: entering fast recovery, once per window."""

    @abstractmethod
    def on_recovery_end(self, now: float) -> None:
        """Fast recovery finished."""

    @abstractmethod
    def on_rto(self, in_flight: int, now: float) -> None:
        """The retransmission timer expired."""

    def _slow_start(self, acked: int) -> None:
        # RFC 3465 §2.2 (appropriate byte counting in slow start): grow by the bytes
        # acknowledged, at most L = 2*SMSS per ACK so a stretch ACK cannot burst.
        self.cwnd += min(acked, 2 * self.mss)

    def _loss_window_after_rto(self, new_ssthresh: int) -> None:
        if not self._timed_out:
            self.ssthresh = new_ssthresh
        self._timed_out = True
        # RFC 5681 §3.1: LW = 1 full-sized segment.
        self.cwnd = self.mss

    def __repr__(self) -> str:
        return f"<{type(self).__name__} cwnd={self.cwnd} ssthresh={self.ssthresh}>"


class Reno(CongestionControl):
    """RFC 5681 with appropriate byte counting (RFC 3465), L = 2*SMSS in slow start."""

    name = "reno"

    def __init__(self, mss: int, now: float) -> None:
        super().__init__(mss, now)
        # RFC 3465 §2.1: bytes acknowledged since cwnd last grew in congestion avoidance.
        self.bytes_acked = 0

    def on_ack(self, acked: int, rtt_s: float | None, in_flight: int, now: float) -> None:
        if acked <= 0:
            return
        self._timed_out = False
        if self.in_slow_start():
            self._slow_start(acked)
            return
        # RFC 3465 §2.1 / RFC 5681 §3.1 eq. 3: one SMSS per cwnd's worth of bytes acknowledged,
        # that is one segment per RTT however the receiver spaces its ACKs.
        self.bytes_acked += acked
        if self.bytes_acked >= self.cwnd:
            self.bytes_acked -= self.cwnd
            self.cwnd += self.mss

    def on_congestion_event(self, in_flight: int, now: float) -> None:
        # RFC 5681 §3.2 step 2, eq. 4: ssthresh = max(FlightSize / 2, 2*SMSS).
        self.ssthresh = max(in_flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self.bytes_acked = 0

    def on_recovery_end(self, now: float) -> None:
        # RFC 6582 §3.2 step 3 (full acknowledgment), option 2: cwnd = ssthresh.
        self.cwnd = self.ssthresh
        self.bytes_acked = 0

    def on_rto(self, in_flight: int, now: float) -> None:
        self._loss_window_after_rto(max(in_flight // 2, 2 * self.mss))
        self.bytes_acked = 0


# RFC 9406 §4.3: HyStart++ constants (seconds, segments).
HYSTART_MIN_RTT_THRESH: Final = 0.004
HYSTART_MAX_RTT_THRESH: Final = 0.016
HYSTART_MIN_RTT_DIVISOR: Final = 8
HYSTART_N_RTT_SAMPLE: Final = 8
HYSTART_LOW_WINDOW: Final = 16  # Linux's hystart_low_window: no exit below 16 segments

# RFC 9438 §5: the constants.
CUBIC_C: Final = 0.4
BETA_CUBIC: Final = 0.7
# RFC 9438 §4.3: the AIMD increase that gives Reno's average window under CUBIC's beta.
ALPHA_CUBIC: Final = 3 * (1 - BETA_CUBIC) / (1 + BETA_CUBIC)


class Cubic(CongestionControl):
    """CUBIC (RFC 9438) without HyStart; windows in bytes, formulas in segments.

    The time origin t_epoch of a congestion-avoidance stage is the congestion event itself;
    after a timeout, or if slow start ends without a loss, it is the first ACK in congestion
    avoidance, with K = 0 and W_max = cwnd (RFC 9438 §4.8, §4.10).
    """

    name = "cubic"

    def __init__(self, mss: int, now: float, fast_convergence: bool = True,
                 hystart: bool = True) -> None:
        super().__init__(mss, now)
        self.fast_convergence = fast_convergence
        self.hystart = hystart
        # RFC 9406 §4.2: the minimum RTT of this round and of the last one. A round is one
        # smoothed RTT of time here: the controller does not see sequence numbers.
        self._round_end: float | None = None
        self._round_min_rtt = float("inf")
        self._last_round_min_rtt = float("inf")
        self._round_samples = 0
        # All in segments (RFC 9438 §4.1.2).
        self.w_max = 0.0
        self.w_est = 0.0
        self.cwnd_prior = 0.0
        self.k = 0.0
        self.t_epoch: float | None = None
        # The smoothed RTT used for W_cubic(t + RTT) (RFC 9438 §4.2), from the samples the
        # connection passes in, with RFC 6298's gain.
        self.srtt: float | None = None
        # Sub-byte growth carried between ACKs so that tiny per-ACK increments add up.
        self._cwnd_remainder = 0.0

    def on_ack_not_cwnd_limited(self, acked: int, rtt_s: float | None, in_flight: int,
                                now: float) -> None:
        super().on_ack_not_cwnd_limited(acked, rtt_s, in_flight, now)
        self._update_srtt(rtt_s)

    def _update_srtt(self, rtt_s: float | None) -> None:
        if rtt_s is not None:
            self.srtt = rtt_s if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt_s

    def w_cubic(self, t: float) -> float:
        """RFC 9438 §4.2 eq. 1, in segments: W_cubic(t) = C*(t - K)^3 + W_max."""
        return CUBIC_C * (t - self.k) ** 3 + self.w_max

    def on_ack(self, acked: int, rtt_s: float | None, in_flight: int, now: float) -> None:
        if acked <= 0:
            return
        self._timed_out = False
        self._update_srtt(rtt_s)
        if self.in_slow_start():
            self._slow_start(acked)
            if self.hystart:
                self._hystart(rtt_s, now)
            return
        cwnd = self.cwnd / self.mss
        if self.t_epoch is None:
            # RFC 9438 §4.8 / §4.10: a stage not started by a congestion event.
            self._start_epoch(now, w_max=cwnd, cwnd_epoch=cwnd)
            if self.cwnd_prior == 0.0:
                self.cwnd_prior = cwnd
        segments_acked = acked / self.mss
        t = now - self.t_epoch if self.t_epoch is not None else 0.0

        # RFC 9438 §4.3: W_est grows like AIMD(alpha_cubic, beta_cubic), and like Reno's
        # AIMD(1, 0.5) once it has reached the window before the last reduction.
        alpha = 1.0 if self.w_est >= self.cwnd_prior else ALPHA_CUBIC
        self.w_est += alpha * segments_acked / cwnd
        if self.w_cubic(t) < self.w_est:
            # The Reno-friendly region: cwnd = W_est.
            self.cwnd = max(self.cwnd, int(self.w_est * self.mss))
            self._cwnd_remainder = 0.0
            return

        # RFC 9438 §4.2: aim for W_cubic one RTT ahead, never shrinking, never faster
        # than slow start; §4.4/§4.5: grow by (target - cwnd)/cwnd per segment acknowledged.
        rtt = self.srtt if self.srtt is not None else 0.0
        target = min(max(self.w_cubic(t + rtt), cwnd), 1.5 * cwnd)
        growth = (target - cwnd) / cwnd * segments_acked * self.mss + self._cwnd_remainder
        whole = int(growth)
        self.cwnd += whole
        self._cwnd_remainder = growth - whole

    def _hystart(self, rtt_s: float | None, now: float) -> None:
        """RFC 9406 §4.2: leave slow start when this round's minimum RTT exceeds the last
        round's by eta = clamp(lastRoundMinRTT / 8, 4 ms, 16 ms)."""
        if self._round_end is None or now >= self._round_end:
            self._last_round_min_rtt = self._round_min_rtt
            self._round_min_rtt = float("inf")
            self._round_samples = 0
            self._round_end = now + (self.srtt or rtt_s or 0.0)
        if rtt_s is None:
            return
        self._round_min_rtt = min(self._round_min_rtt, rtt_s)
        self._round_samples += 1
        last = self._last_round_min_rtt
        if (self._round_samples >= HYSTART_N_RTT_SAMPLE and last != float("inf")
                and self.cwnd >= HYSTART_LOW_WINDOW * self.mss):
            eta = min(max(last / HYSTART_MIN_RTT_DIVISOR, HYSTART_MIN_RTT_THRESH),
                      HYSTART_MAX_RTT_THRESH)
            if self._round_min_rtt >= last + eta:
                self.ssthresh = self.cwnd

    def on_congestion_event(self, in_flight: int, now: float) -> None:
        cwnd = self.cwnd / self.mss
        # RFC 9438 §4.7: fast convergence releases bandwidth when the saturation point
        # shrank (this loss came before the window got back to W_max).
        if self.fast_convergence and cwnd < self.w_max:
            self.w_max = cwnd * (1 + BETA_CUBIC) / 2
        else:
            self.w_max = cwnd
        self.cwnd_prior = cwnd
        # RFC 9438 §4.6: ssthresh = flight_size * beta_cubic, at least 2 segments; FlightSize
        # rather than cwnd so an application-limited sender does not keep an unused window.
        self.ssthresh = max(int(in_flight * BETA_CUBIC), 2 * self.mss)
        self.cwnd = self.ssthresh
        self._start_epoch(now, w_max=self.w_max, cwnd_epoch=self.cwnd / self.mss)

    def on_recovery_end(self, now: float) -> None:
        self.cwnd = self.ssthresh
        self._cwnd_remainder = 0.0

    def on_rto(self, in_flight: int, now: float) -> None:
        # RFC 9438 §4.8: Reno's loss window, but ssthresh from beta_cubic.
        if not self._timed_out:
            self.cwnd_prior = self.cwnd / self.mss
        self._loss_window_after_rto(max(int(in_flight * BETA_CUBIC), 2 * self.mss))
        # The next congestion-avoidance stage starts afresh (K = 0, W_max = its cwnd).
        self.t_epoch = None
        self._cwnd_remainder = 0.0

    def _start_epoch(self, now: float, w_max: float, cwnd_epoch: float) -> None:
        self.t_epoch = now
        self.w_max = w_max
        # RFC 9438 §4.2 eq. 2: K = cubic_root((W_max - cwnd_epoch) / C), 0 if cwnd_epoch > W_max.
        self.k = max(0.0, (w_max - cwnd_epoch) / CUBIC_C) ** (1 / 3)
        # RFC 9438 §4.3: W_est starts at cwnd_epoch.
        self.w_est = cwnd_epoch
        self._cwnd_remainder = 0.0


@dataclass(frozen=True)
class SubflowCongestionView:
    """What a coupled controller may read about one subflow of its MPTCP connection."""

    _controller: CongestionControl
    _rtt: RttEstimator

    @property
    def cwnd(self) -> int:
        return self._controller.cwnd

    @property
    def ssthresh(self) -> int:
        return self._controller.ssthresh

    @property
    def mss(self) -> int:
        return self._controller.mss

    @property
    def srtt(self) -> float | None:
        return self._rtt.srtt

    def in_slow_start(self) -> bool:
        return self._controller.in_slow_start()

    def is_for(self, controller: CongestionControl) -> bool:
        return self._controller is controller


@dataclass
class CongestionGroup:
    """The controllers of one MPTCP connection's subflows, for coupled congestion control."""

    _members: list[SubflowCongestionView] = field(default_factory=list)

    @property
    def members(self) -> tuple[SubflowCongestionView, ...]:
        return tuple(self._members)

    def join(self, controller: CongestionControl, rtt: RttEstimator) -> None:
        if any(view.is_for(controller) for view in self._members):
            raise ValueError(f"{controller!r} is already in this group")
        self._members.append(SubflowCongestionView(controller, rtt))
        controller.group = self

    def leave(self, controller: CongestionControl) -> None:
        self._members = [view for view in self._members if not view.is_for(controller)]
        if controller.group is self:
            controller.group = None

    def view_of(self, controller: CongestionControl) -> SubflowCongestionView:
        for view in self._members:
            if view.is_for(controller):
                return view
        raise KeyError(f"{controller!r} is not in this group")

    def siblings(self, controller: CongestionControl) -> list[SubflowCongestionView]:
        return [view for view in self._members if not view.is_for(controller)]


_REGISTRY: Registry[type[CongestionControl]] = Registry("congestion control")
register_congestion_control = _REGISTRY.register
get_congestion_control = _REGISTRY.get
available_congestion_controls = _REGISTRY.names


register_congestion_control(Reno.name, Reno)
register_congestion_control(Cubic.name, Cubic)
