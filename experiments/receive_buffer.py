"""`receive-buffer`: heterogeneous paths with small receive buffers (Raiciu et al., "How Hard Can
It Be? Designing and Implementing a Deployable Multipath TCP", NSDI 2012, §4.2).

A client with a WiFi-like path (path1: 8 Mbit/s, 20 ms RTT, a bandwidth-delay-product queue)
and a 3G-like path (path2: 2 Mbit/s, 150 ms RTT, a deep queue of 60 packets, 360 ms at
2 Mbit/s, as cellular links of the time had) downloads from a server. The connection-level
receive buffer is the parameter swept (`--set rcvbuf_kib=N`, none = auto-tuned): data sent
on the 3G path holds the left edge of the window for a 3G RTT (up to half a second with the
queue full), and a small buffer then blocks the WiFi path, which could have carried the whole
window many times over. Without opportunistic retransmission and penalisation MPTCP can do
worse than plain TCP on the WiFi path alone; with both (ours: `opportunistic=1`) it should do
at least as well. Plain TCP takes the client's first interface, the WiFi path (its default
route), and is the reference at the same buffer size.

Sizes and durations, chosen for a shared 2-core machine: the rates total 10 Mbit/s, which
our Python stack and the userspace link shaper carry on an otherwise idle machine (about 5% of
a core per 10 Mbit/s for the shaper, see README "Performance"); 6 MiB is about 6.5 s at the
WiFi rate and 24 s at the worst rate measured (Linux MPTCP at 50 KiB), several 3G RTTs even
with its queue full, and short enough for the 20-run suite to take about eight minutes.
Goodput is judged from 1 s after the receiver's first byte to its last
(`steady_goodput_mbps`): the join and both slow starts happen in that first second, and what
the paper studies is the steady state. The verdict that compares with plain TCP at the same
buffer needs the TCP run, so the report computes it (analysis.report: `fraction_of_tcp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mininet.topo import Topo

from experiments.scenario import CommonParams, RunOutcome, Scenario, Workload
from experiments.timeline_metrics import window_goodput_mbps
from experiments.two_path import TwoPathTransfer
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.errors import ParameterError
from topologies.two_path import TwoPathTopo

# Goodput is judged after this much of the transfer (join and slow starts).
WARMUP_S = 1.0
BIN_S = 0.1


@dataclass
class ReceiveBufferParams(CommonParams):
    wifi_rate_mbps: float = 8.0
    wifi_delay_ms: float = 10.0  # one way: 20 ms RTT
    wifi_queue_pkts: int | None = None  # None: the bandwidth-delay product (at least 10)
    cell_rate_mbps: float = 2.0
    cell_delay_ms: float = 75.0  # one way: 150 ms RTT
    cell_queue_pkts: int | None = 60
    size_mib: float = 6.0
    direction: str = "download"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.wifi()
        self.cell()  # Shaping validates every value
        if self.size_mib <= 0:
            raise ParameterError(f"size_mib must be positive, got {self.size_mib}")
        Workload(direction=self.direction, bytes=1)

    def wifi(self) -> Shaping:
        return Shaping(rate_mbps=self.wifi_rate_mbps, delay_ms=self.wifi_delay_ms,
                       queue_pkts=self.wifi_queue_pkts)

    def cell(self) -> Shaping:
        return Shaping(rate_mbps=self.cell_rate_mbps, delay_ms=self.cell_delay_ms,
                       queue_pkts=self.cell_queue_pkts)


def buffer_label(rcvbuf_kib: int | None) -> str:
    return "auto-tuned" if rcvbuf_kib is None else f"{rcvbuf_kib} KiB"


def steady_goodput_mbps(series: list[list[float]], warmup_s: float = WARMUP_S,
                        bin_s: float = BIN_S) -> float | None:
    """Goodput from `warmup_s` after the receiver's start to the end of its last non-empty
    100 ms bin; None when the transfer ended before the warm-up did."""
    ends = [start + bin_s for start, count in series if count > 0]
    if not ends or max(ends) <= warmup_s + bin_s:
        return None
    return round(window_goodput_mbps(series, warmup_s, max(ends), bin_s), 3)


@dataclass
class ReceiveBuffer(TwoPathTransfer, Scenario):
    name = "receive-buffer"
    description = ("a WiFi-like and a 3G-like path with small receive buffers "
                   "(Raiciu et al., NSDI 2012: opportunistic retransmission, penalisation)")
    params_type = ReceiveBufferParams

    params: ReceiveBufferParams

    def topology(self) -> Topo:
        p = self.params
        return TwoPathTopo(path1=LinkShaping.symmetric(**p.wifi().to_dict()),
                           path2=LinkShaping.symmetric(**p.cell().to_dict()))

    def label(self) -> str:
        p = self.params
        return buffer_label(p.rcvbuf_kib) + (", opportunistic" if p.opportunistic else "")

    def configured_rates(self) -> dict[str, float]:
        return {"path1": self.params.wifi_rate_mbps, "path2": self.params.cell_rate_mbps}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        p = self.params
        series = outcome.receiver.get("series") or []
        steady = steady_goodput_mbps(series)
        return {
            "rcvbuf_kib": p.rcvbuf_kib,
            "opportunistic": p.opportunistic,
            "steady_goodput_mbps": steady,
            "fraction_of_wifi_rate": (None if steady is None
                                      else round(steady / p.wifi_rate_mbps, 3)),
        }
