"""`aggregate`: bandwidth aggregation over two shaped paths.

Defaults follow the Linux selftest tools/testing/selftests/net/mptcp/simult_flows.sh: 16 MiB over
two 10 Mbit/s paths; the transfer must finish within size*8/(r1+r2) * 10/9 + 0.4 s (the selftest's
bound: 10% slack plus 400 ms for connection set-up and subflow joins).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mininet.topo import Topo

from experiments.scenario import CommonParams, Scenario, Workload
from experiments.two_path import TwoPathTransfer
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.errors import ParameterError
from topologies.two_path import TwoPathTopo


@dataclass
class AggregateParams(CommonParams):
    rate1_mbps: float = 10.0
    rate2_mbps: float = 10.0
    delay1_ms: float = 0.0
    delay2_ms: float = 0.0
    jitter1_ms: float = 0.0
    jitter2_ms: float = 0.0
    loss1_pct: float = 0.0
    loss2_pct: float = 0.0
    # netem's queue in simult_flows.sh was its default (1000 packets) and is now a few tens of
    # packets per path. The BDP default of other scenarios (10 packets at 0 ms) starves cubic
    # on a 15 Mbit/s path with no delay; 100 packets keeps the paths busy while bounding the
    # queueing delay (80 ms at 15 Mbit/s). `--set queue_pkts=none` gives the BDP default.
    queue_pkts: int | None = 100
    size_mib: float = 16.0
    direction: str = "upload"

    def __post_init__(self) -> None:
        super().__post_init__()
        for number in (1, 2):  # builds the Shaping objects, which validate every value
            self.path(number)
        if self.size_mib <= 0:
            raise ParameterError(f"size_mib must be positive, got {self.size_mib}")
        Workload(direction=self.direction, bytes=1)

    def path(self, number: int) -> Shaping:
        return Shaping(
            rate_mbps=getattr(self, f"rate{number}_mbps"),
            delay_ms=getattr(self, f"delay{number}_ms"),
            jitter_ms=getattr(self, f"jitter{number}_ms"),
            loss_pct=getattr(self, f"loss{number}_pct"),
            queue_pkts=self.queue_pkts,
        )


@dataclass
class Aggregate(TwoPathTransfer, Scenario):
    name = "aggregate"
    description = "bandwidth aggregation over two shaped paths (kernel selftest simult_flows.sh)"
    params_type = AggregateParams

    params: AggregateParams

    def topology(self) -> Topo:
        p = self.params
        return TwoPathTopo(path1=LinkShaping.symmetric(**p.path(1).to_dict()),
                           path2=LinkShaping.symmetric(**p.path(2).to_dict()))

    def label(self) -> str:
        p = self.params
        return (f"{p.rate1_mbps:g}+{p.rate2_mbps:g} Mbit/s, {p.delay1_ms:g}/{p.delay2_ms:g} ms"
                + (", download" if p.direction == "download" else ""))

    def configured_rates(self) -> dict[str, float]:
        return {"path1": self.params.rate1_mbps, "path2": self.params.rate2_mbps}

    def bound_s(self) -> float:
        p = self.params
        size_bits = p.size_mib * 1024 * 1024 * 8
        return size_bits / ((p.rate1_mbps + p.rate2_mbps) * 1e6) * 10 / 9 + 0.4

    def evaluate(self, summary: dict[str, Any]) -> dict[str, Any]:
        bound = self.bound_s()
        duration = summary.get("duration_s")
        return {
            "bound_s": round(bound, 3),
            "within_bound": duration is not None and duration <= bound,
            "link_limited_s": round(bound / (10 / 9) - 0.4 / (10 / 9), 3),
        }
