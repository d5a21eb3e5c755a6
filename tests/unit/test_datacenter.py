"""datacenter without root: the FatTree's addressing and routes, the permutation traffic
matrix, the flows and endpoints it asks for, and the per-flow metrics from synthetic series."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest

from experiments import SCENARIOS
from experiments.datacenter import Datacenter, DatacenterParams, flow_verdicts, permutation
from experiments.flows import (
    MultiFlowRun,
    common_interval,
    interval_goodputs,
    jain_index,
    lowest_decile,
)
from experiments.scenario import parse_overrides
from testbed.errors import ParameterError
from topologies import fattree
from topologies.fattree import FatTreeTopo, HostId

BIN = 0.1


def receiver(t_start: float, rate_mbps: float, seconds: float) -> dict[str, object]:
    per_bin = round(rate_mbps * 1e6 / 8 * BIN)
    return {"t_start": t_start,
            "series": [[round(i * BIN, 3), per_bin] for i in range(round(seconds / BIN))]}


# -- topology ---------------------------------------------------------------------------------

def test_k4_has_16_hosts_20_routers_and_48_links() -> None:
    shaping = DatacenterParams().shaping()
    from testbed.emu.linkparams import LinkShaping

    topo = FatTreeTopo(k=4, shaping=LinkShaping(shaping, shaping))
    routers = [n for n in topo.nodes() if topo.nodeInfo(n).get("cls") is not None]
    assert len(fattree.hosts(4)) == 16
    assert len(routers) == 20 and len(topo.nodes()) == 36
    assert len(topo.links()) == fattree.link_count(4) == 48
    # Every router hashes on layer 4, each with its own non-zero seed.
    infos = [topo.nodeInfo(r) for r in routers]
    assert {i["multipath_hash_policy"] for i in infos} == {1}
    seeds = [i["multipath_hash_seed"] for i in infos]
    assert len(set(seeds)) == 20 and 0 not in seeds
    shared = FatTreeTopo(k=4, shaping=LinkShaping(shaping, shaping), hash_seed=0)
    assert {shared.nodeInfo(r)["multipath_hash_seed"] for r in routers} == {None}
    # Interface names fit the kernel's 15 characters.
    names = [v for _, _, info in topo.links(withInfo=True)
             for v in (info["intfName1"], info["intfName2"])]
    assert max(len(n) for n in names) <= 15 and len(set(names)) == len(names)


def test_every_address_is_unique_and_each_link_is_one_subnet() -> None:
    from testbed.emu.linkparams import LinkShaping

    shaping = DatacenterParams().shaping()
    topo = FatTreeTopo(k=4, shaping=LinkShaping(shaping, shaping))
    seen = []
    for _, _, info in topo.links(withInfo=True):
        a = ipaddress.IPv4Interface(info["params1"]["ip"])
        b = ipaddress.IPv4Interface(info["params2"]["ip"])
        assert a.network == b.network and a.ip != b.ip
        seen += [a.ip, b.ip]
    extra = [ipaddress.IPv4Address(fattree.host_addr(h, n))
             for h in fattree.hosts(4) for n in range(1, fattree.MAX_ADDRS)]
    assert len(set(seen + extra)) == len(seen) + len(extra)


def test_host_addresses_stay_in_the_hosts_subnet() -> None:
    host = HostId(pod=3, edge=1, index=1)
    net = ipaddress.IPv4Network(f"{fattree.host_gateway(host)}/{fattree.HOST_PREFIX_LEN}",
                                strict=False)
    addrs = [ipaddress.IPv4Address(fattree.host_addr(host, n)) for n in range(8)]
    assert fattree.host_addr(host) == "10.3.1.18"
    assert all(a in net for a in addrs)
    assert net.broadcast_address not in addrs
    with pytest.raises(ParameterError):
        fattree.host_addr(host, 8)


def _next_hop_router(k: int, gateway: str) -> str:
    """The router owning `gateway` on its link (from the addressing functions)."""
    half = k // 2
    for p in range(k):
        for e in range(half):
            for a in range(half):
                edge_ip, agg_ip = fattree.edge_agg_addrs(p, e, a)
                if gateway == edge_ip:
                    return f"p{p}e{e}"
                if gateway == agg_ip:
                    return f"p{p}a{a}"
        for c in range(half * half):
            core_ip, agg_ip = fattree.agg_core_addrs(p, c)
            if gateway == core_ip:
                return f"c{c}"
            if gateway == agg_ip:
                return f"p{p}a{fattree.agg_of_core(k, c)}"
    raise AssertionError(f"no router has {gateway}")


def _paths(k: int, src: HostId, dst: HostId) -> int:
    """Walk the static routes from src's edge router to dst, counting every ECMP branch."""
    table = fattree.routes(k)
    target = ipaddress.IPv4Address(fattree.host_addr(dst))

    def walk(router: str, hops: int) -> int:
        assert hops < 8, "routing loop"
        if router == f"p{dst.pod}e{dst.edge}":
            return 1  # dst's /28 is connected here
        matches = [(ipaddress.IPv4Network(prefix), gws) for prefix, gws in table[router]
                   if target in ipaddress.IPv4Network(prefix)]
        _, gateways = max(matches, key=lambda m: m[0].prefixlen)
        return sum(walk(_next_hop_router(k, gw), hops + 1) for gw in gateways)

    return walk(f"p{src.pod}e{src.edge}", 0)


@pytest.mark.parametrize("k", [2, 4, 6])
def test_routes_reach_every_host_over_all_equal_cost_paths(k: int) -> None:
    hosts = fattree.hosts(k)
    for src in hosts[:6]:
        for dst in hosts:
            if src == dst:
                continue
            assert _paths(k, src, dst) == fattree.path_count(k, src, dst)
    assert fattree.path_count(4, HostId(0, 0, 0), HostId(1, 0, 0)) == 4


def test_bad_k_is_refused() -> None:
    for k in (0, 3, 10):
        with pytest.raises(ParameterError, match="even number"):
            fattree.hosts(k)


# -- the traffic matrix -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3, 42])
def test_permutation_sends_once_receives_once_never_to_itself(seed: int) -> None:
    dst = permutation(16, seed)
    assert sorted(dst) == list(range(16))
    assert all(d != s for s, d in enumerate(dst))
    assert permutation(16, seed) == dst  # seeded


def test_permutations_differ_between_seeds_and_cover_the_choices() -> None:
    draws = [tuple(permutation(4, seed)) for seed in range(200)]
    assert len(set(draws)) == 9  # the 9 derangements of 4 elements, all reachable
    assert max(Counter(draws).values()) < 45  # roughly uniform (22 expected)
    with pytest.raises(ParameterError):
        permutation(1, 1)


def test_flows_follow_the_permutation_with_one_port_each() -> None:
    scenario = Datacenter(parse_overrides(DatacenterParams, ["permutation_seed=7"]))
    flows = scenario.flows()
    hosts = fattree.hosts(4)
    dst = permutation(16, 7)
    assert [f.client for f in flows] == [h.name for h in hosts]
    assert [f.server for f in flows] == [hosts[d].name for d in dst]
    assert [f.server_addr for f in flows] == [fattree.host_addr(hosts[d]) for d in dst]
    assert len({f.port for f in flows}) == 16
    assert SCENARIOS["datacenter"] is Datacenter and Datacenter.runner is MultiFlowRun


def test_subflows_become_extra_addresses_and_subflow_endpoints() -> None:
    scenario = Datacenter(parse_overrides(DatacenterParams, ["subflows=4"]))
    endpoints = scenario.host_endpoints("p1e0h1")
    host = HostId(1, 0, 1)
    assert [e.addr for e in endpoints] == [fattree.host_addr(host, n) for n in (1, 2, 3)]
    assert all(e.flags == frozenset({"subflow"}) and e.dev == host.intf for e in endpoints)
    assert scenario.extra_subflows() == 3
    one = Datacenter(parse_overrides(DatacenterParams, ["subflows=1"]))
    assert one.host_endpoints("p1e0h1") == [] and one.extra_subflows() == 0
    with pytest.raises(ParameterError, match="no host"):
        scenario.host_endpoints("client")


@pytest.mark.parametrize("override", ["subflows=0", "subflows=9", "k=5", "warmup_s=12",
                                      "seconds=0", "rate_mbps=0", "rto_min_ms=-1",
                                      "ecmp_seed=-1"])
def test_bad_parameters_are_refused(override: str) -> None:
    with pytest.raises(ParameterError):
        parse_overrides(DatacenterParams, [override])


# -- metrics ----------------------------------------------------------------------------------

def test_jain_index_and_lowest_decile() -> None:
    assert jain_index([3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert jain_index([4.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain_index([]) is None
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert lowest_decile(values) == pytest.approx(1.9)  # numpy.percentile(values, 10)
    assert lowest_decile([5.0]) == 5.0


def test_common_interval_starts_after_the_last_start_plus_warmup() -> None:
    reports = [receiver(100.0, 4.0, 10.0), receiver(101.0, 2.0, 10.0)]
    start, end = common_interval(reports, warmup_s=2.0)  # type: ignore[misc]
    assert start == pytest.approx(103.0) and end == pytest.approx(110.0)
    assert common_interval(reports, warmup_s=9.5) is None
    assert common_interval([{"t_start": 1.0, "series": []}], 0.0) is None


def test_interval_goodputs_count_only_the_common_interval() -> None:
    # The first flow runs at 4 Mbit/s until the second starts, then at 2 (they share a link).
    first = receiver(100.0, 4.0, 1.0)
    first["series"] += [[round(1.0 + i * BIN, 3), round(2e6 / 8 * BIN)] for i in range(90)]
    second = receiver(101.0, 2.0, 9.0)
    rates, length = interval_goodputs([first, second], warmup_s=1.0)  # type: ignore[misc]
    assert rates == pytest.approx([2.0, 2.0])
    assert length == pytest.approx(8.0)


def test_flow_verdicts_utilisation_over_hosts_times_rate() -> None:
    flows = [{"goodput_mbps": r} for r in (5.0, 5.0, 2.5, 2.5)]
    verdict = flow_verdicts(flows, rate_mbps=5.0, paths=[4, 4, 2, 1])
    assert verdict["utilisation"] == pytest.approx(0.75)
    assert verdict["jain_index"] == pytest.approx(225 / 250)
    assert verdict["min_flow_fraction"] == pytest.approx(0.5)
    assert verdict["paths_per_flow"] == [4, 4, 2, 1]
    missing = flow_verdicts([{"goodput_mbps": None}], 5.0, [4])
    assert missing["utilisation"] is None


def test_stacks_other_than_kernel_and_tcp_or_mixed_ends_are_refused(tmp_path: Path) -> None:
    from experiments.runner import RunOptions

    scenario = Datacenter(parse_overrides(DatacenterParams, []))
    with pytest.raises(ParameterError, match="kernel, tcp"):
        MultiFlowRun(scenario, RunOptions(client_stack="userspace", server_stack="userspace",
                                          results_root=tmp_path))
    with pytest.raises(ParameterError, match="same stack"):
        MultiFlowRun(scenario, RunOptions(client_stack="kernel", server_stack="tcp",
                                          results_root=tmp_path))
    run = MultiFlowRun(scenario, RunOptions(client_stack="kernel", server_stack="kernel",
                                            results_root=tmp_path))
    assert len(run.run_flows) == 16 and run.stack_config.subflows == 0
    assert not any(tmp_path.iterdir())  # nothing made before execute()


# -- the anchor over a sweep (analysis/datacenter.py) ----------------------------------------

def _table(tcp: float | None, curve: dict[int, float]) -> object:
    import pandas as pd

    from analysis.datacenter import COLUMNS

    rows = [{"path": f"k{n}", "stack": "kernel", "subflows": n, "permutation": 1,
             "utilisation": u, "jain_index": 0.9, "lowest_decile_fraction": 0.4,
             "fidelity_ok": True} for n, u in curve.items()]
    if tcp is not None:
        rows.append({"path": "tcp", "stack": "tcp", "subflows": 1, "permutation": 1,
                     "utilisation": tcp, "jain_index": 0.8, "lowest_decile_fraction": 0.2,
                     "fidelity_ok": True})
    return pd.DataFrame(rows, columns=COLUMNS)


def test_anchor_holds_when_utilisation_grows_and_four_subflows_beat_tcp() -> None:
    from analysis.datacenter import anchor_sentence, verdict

    held = verdict(_table(0.45, {1: 0.45, 2: 0.6, 4: 0.7, 8: 0.69}))  # type: ignore[arg-type]
    assert held[1]["grows"] is True and held[1]["beats_tcp"] is True
    assert held[1]["mptcp"] == {1: 0.45, 2: 0.6, 4: 0.7, 8: 0.69}
    falls = verdict(_table(0.45, {1: 0.45, 2: 0.6, 4: 0.5, 8: 0.7}))  # type: ignore[arg-type]
    assert falls[1]["grows"] is False  # 0.6 -> 0.5 is more than the slack
    loses = verdict(_table(0.65, {1: 0.45, 4: 0.7, 8: 0.6}))  # type: ignore[arg-type]
    assert loses[1]["beats_tcp"] is False  # 8 subflows below TCP
    alone = verdict(_table(None, {4: 0.7}))  # type: ignore[arg-type]
    assert alone[1]["beats_tcp"] is None and alone[1]["grows"] is None
    assert "does **not** beat TCP" in anchor_sentence(_table(0.65, {4: 0.6}))  # type: ignore[arg-type]


def test_a_run_of_many_flows_gets_one_bar_per_flow(tmp_path: Path) -> None:
    from analysis.datacenter import plot_flows

    summary = {"stack": "kernel", "subflows": 4, "utilisation": 0.7, "jain_index": 0.95,
               "host_rate_mbps": 5.0, "paths_per_flow": [4, 1], "fidelity_ok": True,
               "flows": [{"client": "p0e0h0", "server": "p1e0h0", "goodput_mbps": 3.5},
                         {"client": "p0e0h1", "server": "p0e0h0", "goodput_mbps": None}]}
    written = plot_flows(summary, tmp_path / "goodput")
    assert [p.name for p in written] == ["goodput.png", "goodput.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
