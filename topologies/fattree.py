r"""A k-ary FatTree (Al-Fares et al., SIGCOMM 2008) of Linux routers with ECMP: the data-center
topology.

k pods, each with k/2 edge and k/2 aggregation routers; (k/2)^2 core routers; k/2 hosts per
edge router, so k^3/4 hosts in all (k=4: 16 hosts, 8 edge, 8 aggregation and 4 core routers,
48 links). Aggregation router a of every pod links to core routers a*k/2 .. a*k/2 + k/2 - 1.
Every link has the same rate, so the tree offers full bisection bandwidth: a permutation of
host-to-host flows can run every host link at its rate if the flows are spread over the paths.

Addressing (p: pod, e: edge router, a: aggregation router, h: host under its edge router,
c: core router, all counted from 0):

    host p.e.h          10.p.e.(16h+2) .. 10.p.e.(16h+2+MAX_ADDRS-1) in 10.p.e.16h/28,
                        gateway 10.p.e.(16h+1) on the edge router; the first address is the
                        interface's own, the others are extra addresses for MPTCP subflows
    edge p.e - agg p.a  10.p.(64+e).(4a)/30: edge .4a+1, aggregation .4a+2
    agg p.a - core c    10.255.c.(4p)/30: core .4p+1, aggregation .4p+2

Routing (two-level, as in the FatTree paper, with ECMP instead of its fixed suffix table):

    edge p.e    its hosts' /28s are connected; 0.0.0.0/0 over the k/2 aggregation routers
    agg p.a     10.p.e.0/24 to edge p.e; 0.0.0.0/0 over its k/2 core routers
    core c      10.p.0.0/16 to pod p's aggregation router linked to c

so a flow between pods has (k/2)^2 paths, one between edge routers of a pod k/2, and one under
a single edge router one. Every router hashes with net.ipv4.fib_multipath_hash_policy=1 (source
and destination address, protocol and ports: each TCP connection or MPTCP subflow hashes on its
own) and a seed of its own (testbed.emu.nodes.Router says why).

Names: hosts `p{p}e{e}h{h}`, edge routers `p{p}e{e}`, aggregation routers `p{p}a{a}`, core
routers `c{c}`; links `p0e0h0-p0e0`, `p0e0-p0a1`, `p0a1-c2` (lower tier first, so each link's
a2b direction is upward).
"""

from __future__ import annotations

from dataclasses import dataclass

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import Router
from testbed.errors import ParameterError

MAX_K = 8  # 128 hosts; the emulation of k=4 is already heavy on 2 cores (README)
# Addresses per host: the kernel path manager opens one subflow per endpoint address and
# keeps at most MPTCP_PM_ADDR_MAX (8) endpoints.
MAX_ADDRS = 8
HASH_POLICY_L4 = 1


@dataclass(frozen=True, order=True)
class HostId:
    pod: int
    edge: int
    index: int

    @property
    def name(self) -> str:
        return f"p{self.pod}e{self.edge}h{self.index}"

    @property
    def intf(self) -> str:
        return f"{self.name}-eth0"


def check_k(k: int) -> None:
    if k < 2 or k % 2 or k > MAX_K:
        raise ParameterError(f"FatTree k must be an even number within 2..{MAX_K}, got {k}")


def hosts(k: int) -> list[HostId]:
    """Every host, in index order: pod, then edge router, then position under it."""
    check_k(k)
    half = k // 2
    return [HostId(p, e, h) for p in range(k) for e in range(half) for h in range(half)]


def host_addr(host: HostId, number: int = 0) -> str:
    """The host's address `number` (0: the interface's own; 1..MAX_ADDRS-1: extra ones)."""
    if not 0 <= number < MAX_ADDRS:
        raise ParameterError(f"a host has addresses 0..{MAX_ADDRS - 1}, not {number}")
    return f"10.{host.pod}.{host.edge}.{16 * host.index + 2 + number}"


def host_gateway(host: HostId) -> str:
    return f"10.{host.pod}.{host.edge}.{16 * host.index + 1}"


HOST_PREFIX_LEN = 28


def edge_agg_addrs(pod: int, edge: int, agg: int) -> tuple[str, str]:
    """(edge router's, aggregation router's) address on their link, both /30."""
    return f"10.{pod}.{64 + edge}.{4 * agg + 1}", f"10.{pod}.{64 + edge}.{4 * agg + 2}"


def agg_core_addrs(pod: int, core: int) -> tuple[str, str]:
    """(core router's, aggregation router's) address on their link, both /30."""
    return f"10.255.{core}.{4 * pod + 1}", f"10.255.{core}.{4 * pod + 2}"


def cores_of_agg(k: int, agg: int) -> list[int]:
    half = k // 2
    return [agg * half + j for j in range(half)]


def agg_of_core(k: int, core: int) -> int:
    return core // (k // 2)


def routes(k: int) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """Router name -> its static routes, (prefix, gateways); several gateways are ECMP."""
    check_k(k)
    half = k // 2
    table: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for p in range(k):
        for e in range(half):
            table[f"p{p}e{e}"] = [("0.0.0.0/0", tuple(edge_agg_addrs(p, e, a)[1]
                                                      for a in range(half)))]
        for a in range(half):
            down = [(f"10.{p}.{e}.0/24", (edge_agg_addrs(p, e, a)[0],)) for e in range(half)]
            up = ("0.0.0.0/0", tuple(agg_core_addrs(p, c)[0] for c in cores_of_agg(k, a)))
            table[f"p{p}a{a}"] = [*down, up]
    for c in range(half * half):
        table[f"c{c}"] = [(f"10.{p}.0.0/16", (agg_core_addrs(p, c)[1],)) for p in range(k)]
    return table


def path_count(k: int, src: HostId, dst: HostId) -> int:
    """How many equal-cost paths join two hosts."""
    if src.pod != dst.pod:
        return (k // 2) ** 2
    if src.edge != dst.edge:
        return k // 2
    return 1


def link_count(k: int) -> int:
    half = k // 2
    return k * half * half * 3  # host-edge, edge-agg and agg-core links: k^3/4 of each


class FatTreeTopo(Topo):
    def build(self, k: int, shaping: LinkShaping,  # type: ignore[override]
              hash_seed: int = 1) -> None:
        check_k(k)
        half = k // 2
        table = routes(k)
        seeds = iter(range(1, 10_000))

        def router(name: str) -> str:
            # Each router's own multipath hash seed, derived from `hash_seed` (never 0, which
            # the kernel reads as "the shared random key"); hash_seed=0 leaves every router
            # on that shared key, to show what it does.
            seed = (hash_seed * 7919 + next(seeds)) % (2**32 - 1) + 1 if hash_seed else None
            return str(self.addHost(name, cls=Router, routes=table[name],
                                    multipath_hash_policy=HASH_POLICY_L4,
                                    multipath_hash_seed=seed))

        for c in range(half * half):
            router(f"c{c}")
        for p in range(k):
            for a in range(half):
                agg = router(f"p{p}a{a}")
                for c in cores_of_agg(k, a):
                    core_ip, agg_ip = agg_core_addrs(p, c)
                    self.addLink(agg, f"c{c}", link_name=f"{agg}-c{c}", shaping=shaping,
                                 intfName1=f"{agg}-c{c}", intfName2=f"c{c}-p{p}",
                                 params1={"ip": f"{agg_ip}/30"},
                                 params2={"ip": f"{core_ip}/30"})
            for e in range(half):
                edge = router(f"p{p}e{e}")
                for a in range(half):
                    edge_ip, agg_ip = edge_agg_addrs(p, e, a)
                    self.addLink(edge, f"p{p}a{a}", link_name=f"{edge}-p{p}a{a}",
                                 shaping=shaping, intfName1=f"{edge}-a{a}",
                                 intfName2=f"p{p}a{a}-e{e}",
                                 params1={"ip": f"{edge_ip}/30"},
                                 params2={"ip": f"{agg_ip}/30"})
                for h in range(half):
                    host = HostId(p, e, h)
                    self.addHost(host.name)
                    self.addLink(host.name, edge, link_name=f"{host.name}-{edge}",
                                 shaping=shaping, intfName1=host.intf,
                                 intfName2=f"{edge}-h{h}",
                                 params1={"ip": f"{host_addr(host)}/{HOST_PREFIX_LEN}"},
                                 params2={"ip": f"{host_gateway(host)}/{HOST_PREFIX_LEN}"})
