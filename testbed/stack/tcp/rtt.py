"""Round-trip time estimation and the retransmission timeout (RFC 6298).

Karn's rule (RFC 6298 §3) is the caller's job: `on_sample` must only be given RTT samples
from segments that were not retransmitted (or from timestamps, RFC 7323 §4, which are
unambiguous). The estimator cannot tell a retransmitted segment's ACK from a fresh one.
Likewise the caller calls `backoff()` when the timer expires (§5.5) and `reset_backoff()`
when an ACK for new data arrives (§5.7 lets it keep the backed-off value until then).
"""

from __future__ import annotations

# RFC 6298 §2.3: the gains of the exponentially weighted averages.
ALPHA = 1 / 8
BETA = 1 / 4
# RFC 6298 §2.3: RTO = SRTT + max(G, K*RTTVAR).
K = 4


class RttEstimator:
    """SRTT, RTTVAR and RTO of one TCP connection, fed with RTT samples in seconds."""

    def __init__(
        self,
        initial_rto: float = 1.0,
        # RFC 6298 §2.4 asks for a 1 s minimum RTO, chosen in 1988 against coarse 500 ms
        # timer ticks. Linux uses 200 ms (TCP_RTO_MIN) and so do we: the testbed emulates
        # paths of a few milliseconds, where a 1 s floor would turn every tail loss into a
        # second of silence and make our stack incomparable with the kernel's.
        min_rto: float = 0.2,
        # RFC 6298 §2.5: an upper bound of at least 60 s may be placed on RTO.
        max_rto: float = 60.0,
        clock_granularity: float = 0.001,
    ) -> None:
        if not 0 < min_rto <= max_rto:
            raise ValueError(f"need 0 < min_rto <= max_rto, got {min_rto} and {max_rto}")
        if initial_rto <= 0 or clock_granularity < 0:
            raise ValueError("initial_rto must be positive and clock_granularity not negative")
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.clock_granularity = clock_granularity
        self._srtt: float | None = None
        self._rttvar: float | None = None
        self._min_rtt: float | None = None
        self._latest: float | None = None
        # RFC 6298 §2.1: before the first sample, RTO is the initial value.
        self._base_rto = self._clamp(initial_rto)
        self._backoff_factor = 1

    @property
    def srtt(self) -> float | None:
        """Smoothed RTT, None until the first sample."""
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        """RTT variation, None until the first sample."""
        return self._rttvar

    @property
    def rto(self) -> float:
        """The retransmission timeout to arm now, back-off included, within the bounds."""
        return self._clamp(self._base_rto * self._backoff_factor)

    @property
    def min_rtt(self) -> float | None:
        """Smallest sample seen (for RACK, HyStart and the coupled controllers)."""
        return self._min_rtt

    @property
    def latest(self) -> float | None:
        """The most recent sample."""
        return self._latest

    def on_sample(self, rtt_s: float) -> None:
        """Take one RTT measurement (Karn's rule already applied by the caller)."""
        if rtt_s < 0:
            raise ValueError(f"an RTT sample cannot be negative: {rtt_s}")
        self._latest = rtt_s
        self._min_rtt = rtt_s if self._min_rtt is None else min(self._min_rtt, rtt_s)
        if self._srtt is None or self._rttvar is None:
            # RFC 6298 §2.2: the first measurement.
            self._srtt = rtt_s
            self._rttvar = rtt_s / 2
        else:
            # RFC 6298 §2.3: RTTVAR is updated with the old SRTT, so it goes first.
            self._rttvar = (1 - BETA) * self._rttvar + BETA * abs(self._srtt - rtt_s)
            self._srtt = (1 - ALPHA) * self._srtt + ALPHA * rtt_s
        self._base_rto = self._clamp(self._srtt + max(self.clock_granularity, K * self._rttvar))

    def backoff(self) -> None:
        """The retransmission timer expired: RTO = RTO * 2 (RFC 6298 §5.5), up to max_rto."""
        if self._base_rto * self._backoff_factor < self.max_rto:
            self._backoff_factor *= 2

    def reset_backoff(self) -> None:
        """New data was acknowledged: forget the back-off (RFC 6298 §5.7)."""
        self._backoff_factor = 1

    def _clamp(self, rto: float) -> float:
        return min(self.max_rto, max(self.min_rto, rto))
