"""Shaping parameters of one direction of an emulated link, shared by every shaping backend.

Semantics (the same for the netem and the userspace backends): a frame entering a direction is
first subject to random loss, then joins a FIFO drained at `rate_mbps` that holds at most
`queue_pkts` frames (tail drop), then spends `delay_ms` (plus jitter) in flight. Jitter never
reorders frames of one direction; `reorder_pct` does, with netem's meaning: that share of the
frames leaving the FIFO skip the delay (and jitter), so they overtake the frames in flight.

The FIFO's discipline (`aqm`) is drop-tail, or RED (Floyd & Jacobson, "Random Early Detection
Gateways for Congestion Avoidance", IEEE/ACM ToN 1993): before the tail-drop check, an arriving
frame is dropped with a probability that grows with the average queue length (see
`testbed.emu.shaper.core` for the algorithm, `RedParams` for the defaults).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from testbed.errors import ParameterError

MTU_BYTES = 1500
# A zero-delay link still needs room for a burst; Linux's default txqueuelen is far larger, but a
# small queue keeps the bufferbloat of an emulated path honest.
MIN_QUEUE_PKTS = 10

AQMS = ("droptail", "red")
# RED defaults. Floyd & Jacobson (1993) used an EWMA weight of 0.002; Floyd's later notes on
# setting RED's parameters ("RED: Discussions of Setting Parameters", 1997) keep it and add a
# maximum drop probability of 0.1, a minimum threshold of at least 5 packets and a maximum
# threshold of 3 times the minimum. tc-red(8) asks for max at least twice min. The thresholds
# here are derived from the hard limit (queue_pkts): min = limit/4 (6.25 packets for the
# 25-packet queue of `fairness`) and max = 3 * min = 3/4 of the limit, which leaves a quarter
# of the buffer for bursts above max. (tc's own defaults, max = limit/4 and min = max/3, would
# put min near 2 packets on the small queues emulated here, below Floyd's floor.) max_p is
# Floyd's 0.1, not tc's 0.02: with windows of a few packets TCP needs drop rates of a few
# percent, which a max_p of 0.02 reaches only with the average at max, in forced-drop land.
RED_DEFAULT_MAX_P = 0.1
RED_DEFAULT_WEIGHT = 0.002
RED_MIN_FRACTION = 0.25
RED_MAX_FRACTION = 0.75


@dataclass(frozen=True)
class RedParams:
    """RED's parameters as applied: thresholds on the average queue in packets."""

    min_pkts: float
    max_pkts: float
    max_p: float
    weight: float


@dataclass(frozen=True)
class Shaping:
    """One direction of a link. `None` rate means unlimited; `None` queue means the BDP default."""

    rate_mbps: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    # Share of the frames sent without the delay, overtaking those in flight (netem's "reorder
    # X%"). They still queue behind the rate. Needs delay_ms > 0: without a delay there is
    # nothing to overtake, and netem's tc refuses it too.
    reorder_pct: float = 0.0
    queue_pkts: int | None = None
    # A Mahimahi trace (one line per 1500-byte delivery opportunity, in ms); replaces rate_mbps.
    trace: str | None = None
    # Queue discipline of the FIFO: "droptail" or "red". The red_* parameters apply to "red"
    # only; None thresholds are derived from the queue size (RED_MIN_FRACTION, _MAX_FRACTION).
    aqm: str = "droptail"
    red_min_pkts: float | None = None
    red_max_pkts: float | None = None
    red_max_p: float = RED_DEFAULT_MAX_P
    red_weight: float = RED_DEFAULT_WEIGHT

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        rate = self.rate_mbps
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ParameterError(f"rate_mbps must be a positive number, got {self.rate_mbps!r}")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"{name} must be >= 0, got {value!r}")
        if self.jitter_ms > self.delay_ms:
            raise ParameterError(
                f"jitter_ms ({self.jitter_ms}) larger than delay_ms ({self.delay_ms}) "
                "would need negative delays"
            )
        if not 0 <= self.loss_pct <= 100:
            raise ParameterError(f"loss_pct must be within 0..100, got {self.loss_pct!r}")
        if not 0 <= self.reorder_pct <= 100:
            raise ParameterError(f"reorder_pct must be within 0..100, got {self.reorder_pct!r}")
        if self.reorder_pct and not self.delay_ms:
            raise ParameterError(
                "reorder_pct needs delay_ms > 0: reordered frames skip the delay, so without "
                "one they would overtake nothing"
            )
        if self.queue_pkts is not None and self.queue_pkts < 1:
            raise ParameterError(f"queue_pkts must be >= 1, got {self.queue_pkts!r}")
        if self.trace is not None and self.rate_mbps is not None:
            raise ParameterError("give either rate_mbps or trace, not both")
        if self.aqm not in AQMS:
            raise ParameterError(f"aqm must be one of {', '.join(AQMS)}, got {self.aqm!r}")
        if not (0 < self.red_max_p <= 1):
            raise ParameterError(f"red_max_p must be within (0, 1], got {self.red_max_p!r}")
        if not (0 < self.red_weight < 1):
            raise ParameterError(f"red_weight must be within (0, 1), got {self.red_weight!r}")
        for name in ("red_min_pkts", "red_max_pkts"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"{name} must be >= 0, got {value!r}")
        red = self.red
        if not red.min_pkts < red.max_pkts:
            raise ParameterError(f"RED needs red_min_pkts ({red.min_pkts:g}) below red_max_pkts "
                                 f"({red.max_pkts:g})")
        if red.max_pkts > self.queue_limit:
            # The average never exceeds the real queue, which never exceeds the limit.
            raise ParameterError(f"red_max_pkts ({red.max_pkts:g}) above the queue limit "
                                 f"({self.queue_limit}) would never be reached")

    @property
    def queue_limit(self) -> int:
        """Queue size in packets: the explicit one, else the bandwidth-delay product.

        The BDP uses twice this direction's delay as the round trip (links are usually
        symmetric), as minitopo does, and never goes below MIN_QUEUE_PKTS.
        """
        if self.queue_pkts is not None:
            return self.queue_pkts
        if self.rate_mbps is None:
            return 1000
        bdp_bytes = self.rate_mbps * 1e6 / 8 * (2 * self.delay_ms / 1000)
        return max(MIN_QUEUE_PKTS, math.ceil(bdp_bytes / MTU_BYTES))

    @property
    def red(self) -> RedParams:
        """RED's parameters, the thresholds derived from the queue limit where not given (a
        given min alone moves max to 3 * min, capped at the limit)."""
        limit = self.queue_limit
        low = self.red_min_pkts if self.red_min_pkts is not None else RED_MIN_FRACTION * limit
        if self.red_max_pkts is not None:
            high = self.red_max_pkts
        elif self.red_min_pkts is not None:
            high = min(3 * low, float(limit))
        else:
            high = RED_MAX_FRACTION * limit
        return RedParams(low, high, self.red_max_p, self.red_weight)

    def with_changes(self, **changes: Any) -> Shaping:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ParameterError(f"unknown shaping parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shaping:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ParameterError(f"unknown shaping parameter(s): {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class LinkShaping:
    """Both directions of a link: `a2b` shapes frames from the link's first node to its second."""

    a2b: Shaping
    b2a: Shaping

    @classmethod
    def symmetric(cls, **params: Any) -> LinkShaping:
        one = Shaping.from_dict(params)
        return cls(one, one)

    def direction(self, name: str) -> Shaping:
        if name not in ("a2b", "b2a"):
            raise ParameterError(f"link direction must be 'a2b' or 'b2a', got {name!r}")
        return self.a2b if name == "a2b" else self.b2a
