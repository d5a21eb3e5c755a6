"""`datacenter`: long flows of a permutation traffic matrix over a FatTree with ECMP.

Raiciu et al., "Improving Datacenter Performance and Robustness with Multipath TCP", SIGCOMM
2011: with TCP, ECMP hashes each flow onto one path, and flows that collide on a link share it
while other links idle, so a permutation matrix (every host sends to one other host and
receives from one) leaves the network well below its full bisection bandwidth, with some flows
far below their share. MPTCP's subflows hash onto several paths each and its congestion
control moves traffic off the collisions: utilisation rises with the number of subflows
towards the optimum (8 subflows was the paper's usual count).

Here: topologies/fattree.py (k=4: 16 hosts, 20 routers, 48 links of `rate_mbps`, every router
ECMP with layer-4 hashing), a seeded random permutation (`permutation_seed`; no host sends to
itself), one long flow per host for `seconds`. `subflows=N` gives every host N-1 extra
addresses on its interface, each a kernel MPTCP `subflow` endpoint, so the client of each flow
opens N subflows from N source addresses (and source ports): N hashes at every router. Plain
TCP (`--stack tcp`) is one connection per flow whatever `subflows` says.

Measured per run (summary.json): each flow's goodput over the interval in which every flow was
sending (after `warmup_s`, which leaves out slow start and the joins), their sum over
(hosts x rate_mbps) as `utilisation`, Jain's index and the lowest decile of the per-flow
goodputs. The anchor's claim is about a sweep (utilisation grows with the subflows; MPTCP with
4 or more beats TCP on the same permutation): the `datacenter` suite runs it and the report
judges it. Note that a flow's goodput cannot reach the line rate (headers: 1448 bytes of payload
per 1514-byte frame, about 0.96 of it), nor can utilisation.

The hosts' minimum RTO is `rto_min_ms` (20 ms; Linux's default is 200 ms). With 5 Mbit/s
links, a 20-packet switch queue and up to 8 subflows per host link, a subflow's window is a few
packets, too few for fast retransmit, so losses end in timeouts; with MPTCP the connection's
data behind a timed-out subflow waits for it (head-of-line blocking at the receiver: seconds
of nothing, then a burst), and 200 ms timeouts cost MPTCP far more than TCP. Data centers
shorten the RTO for the same reason (Vasudevan et al., "Safe and Effective Fine-grained TCP
Retransmissions for Datacenter Communication", SIGCOMM 2009). `--set rto_min_ms=0` restores
Linux's default.

Linux MPTCP (6.18) couples no congestion control: every subflow runs the chosen one (`cubic`)
on its own, unlike the paper's LIA. In a permutation where every flow is MPTCP with the same
number of subflows that does not favour anyone, but it is not the paper's algorithm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from mininet.topo import Topo

from experiments.flows import Flow, MultiFlowRun, MultiFlowScenario, jain_index, lowest_decile
from experiments.scenario import CommonParams, Workload
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.network import Emulation
from testbed.errors import ParameterError, TestbedError
from testbed.stacks.base import Endpoint
from topologies import fattree
from topologies.fattree import HOST_PREFIX_LEN, MAX_ADDRS, FatTreeTopo, HostId

DEFAULT_ROUTE_METRIC = 100  # what TestbedHost.setup_routing gives a host's first interface


def permutation(n: int, seed: int) -> list[int]:
    """A random permutation of range(n) with no fixed point (a derangement), drawn uniformly
    by rejection: destination[i] is where host i sends."""
    if n < 2:
        raise ParameterError(f"a permutation traffic matrix needs at least 2 hosts, got {n}")
    rng = random.Random(seed)
    order = list(range(n))
    while True:
        rng.shuffle(order)
        if all(dst != src for src, dst in enumerate(order)):
            return list(order)


@dataclass
class DatacenterParams(CommonParams):
    k: int = 4
    rate_mbps: float = 5.0
    delay_ms: float = 0.5
    queue_pkts: int | None = 20
    subflows: int = 1
    seconds: float = 12.0
    warmup_s: float = 3.0
    permutation_seed: int = 1
    # Derives each router's own multipath hash seed; 0 leaves them all on the kernel's one
    # shared key (topologies/fattree.py), which uses only half the core paths.
    ecmp_seed: int = 1
    # The hosts' minimum retransmission timeout (their default route's rto_min); 0 keeps
    # Linux's 200 ms, which is long against data-center round trips (see the docstring).
    rto_min_ms: int = 20
    # Captures of 16 hosts would cost more CPU than the flows; name interfaces to capture
    # with capture_on (e.g. capture_on=p0e0h0-eth0).
    capture: bool = False
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        fattree.check_k(self.k)
        self.shaping()
        if not 1 <= self.subflows <= MAX_ADDRS:
            raise ParameterError(f"subflows must be within 1..{MAX_ADDRS} (the kernel path "
                                 f"manager's endpoint limit), got {self.subflows}")
        if self.ecmp_seed < 0:
            raise ParameterError(f"ecmp_seed must be >= 0, got {self.ecmp_seed}")
        if self.rto_min_ms < 0:
            raise ParameterError(f"rto_min_ms must be >= 0, got {self.rto_min_ms}")
        if self.seconds <= 0:
            raise ParameterError(f"seconds must be positive, got {self.seconds}")
        if not 0 <= self.warmup_s < self.seconds:
            raise ParameterError(f"warmup_s must be within 0..seconds ({self.seconds}), "
                                 f"got {self.warmup_s}")

    def shaping(self) -> Shaping:
        return Shaping(rate_mbps=self.rate_mbps, delay_ms=self.delay_ms,
                       queue_pkts=self.queue_pkts)


@dataclass
class Datacenter(MultiFlowScenario):
    name = "datacenter"
    description = ("permutation traffic over a k=4 FatTree with ECMP: utilisation against "
                   "MPTCP subflows (Raiciu et al., SIGCOMM 2011)")
    params_type = DatacenterParams
    runner = MultiFlowRun
    # Our stack would need a daemon on each of the 16 hosts: not for this machine yet.
    stacks = ("kernel", "tcp")

    params: DatacenterParams

    def hosts(self) -> list[HostId]:
        return fattree.hosts(self.params.k)

    def destinations(self) -> list[int]:
        return permutation(len(self.hosts()), self.params.permutation_seed)

    def topology(self) -> Topo:
        shaping = self.params.shaping()
        return FatTreeTopo(k=self.params.k, shaping=LinkShaping(shaping, shaping),
                           hash_seed=self.params.ecmp_seed)

    def flows(self) -> list[Flow]:
        hosts = self.hosts()
        return [Flow(name=f"f{i:02d}", client=hosts[i].name, server=hosts[dst].name,
                     server_addr=fattree.host_addr(hosts[dst]), port=self.params.port + i)
                for i, dst in enumerate(self.destinations())]

    def extra_addrs(self, host: HostId) -> list[str]:
        return [fattree.host_addr(host, n) for n in range(1, self.params.subflows)]

    def host_endpoints(self, host: str) -> list[Endpoint]:
        found = [h for h in self.hosts() if h.name == host]
        if not found:
            raise ParameterError(f"no host {host!r} in the FatTree")
        return [Endpoint(addr=addr, dev=found[0].intf, flags=frozenset({"subflow"}))
                for addr in self.extra_addrs(found[0])]

    def extra_subflows(self) -> int:
        return self.params.subflows - 1

    def setup_hosts(self, emu: Emulation) -> None:
        for host in self.hosts():
            node = emu.host(host.name)
            if self.params.rto_min_ms:
                # Replaces the default route the emulation gave the host (same metric).
                node.run(["ip", "route", "replace", "default", "via", fattree.host_gateway(host),
                          "dev", host.intf, "metric", str(DEFAULT_ROUTE_METRIC),
                          "rto_min", f"{self.params.rto_min_ms}ms"])
            for addr in self.extra_addrs(host):
                try:
                    node.run(["ip", "addr", "add", f"{addr}/{HOST_PREFIX_LEN}", "dev", host.intf])
                except TestbedError as exc:
                    raise TestbedError(f"extra address {addr} on {host.name}: {exc}") from exc

    def workload(self) -> Workload:
        return Workload(direction="upload", seconds=self.params.seconds)

    def warmup_s(self) -> float:
        return self.params.warmup_s

    def label(self) -> str:
        p = self.params
        return (f"k={p.k}, {p.rate_mbps:g} Mbit/s, {p.subflows} subflow"
                f"{'s' if p.subflows > 1 else ''}")

    def configured_rates(self) -> dict[str, float]:
        return {"host": self.params.rate_mbps}

    def evaluate_flows(self, flows: list[dict[str, Any]],
                       summary: dict[str, Any]) -> dict[str, Any]:
        return flow_verdicts(flows, self.params.rate_mbps,
                             [fattree.path_count(self.params.k, *pair)
                              for pair in self.host_pairs()])

    def host_pairs(self) -> list[tuple[HostId, HostId]]:
        hosts = self.hosts()
        return [(hosts[i], hosts[dst]) for i, dst in enumerate(self.destinations())]


def flow_verdicts(flows: list[dict[str, Any]], rate_mbps: float,
                  paths: list[int]) -> dict[str, Any]:
    """Utilisation (aggregate goodput over hosts x host rate), Jain's index and the lowest
    decile of the per-flow goodputs, and the paths each flow had."""
    rates = [f.get("goodput_mbps") for f in flows]
    result: dict[str, Any] = {"host_rate_mbps": rate_mbps, "paths_per_flow": paths}
    if not rates or any(r is None for r in rates):
        result.update(utilisation=None, jain_index=None, lowest_decile_mbps=None,
                      lowest_decile_fraction=None, min_flow_fraction=None)
        return result
    values = [float(r) for r in rates if r is not None]
    decile = lowest_decile(values)
    jain = jain_index(values)
    result.update(
        utilisation=round(sum(values) / (len(values) * rate_mbps), 4),
        jain_index=None if jain is None else round(jain, 4),
        lowest_decile_mbps=None if decile is None else round(decile, 4),
        lowest_decile_fraction=None if decile is None else round(decile / rate_mbps, 4),
        min_flow_fraction=round(min(values) / rate_mbps, 4),
    )
    return result
