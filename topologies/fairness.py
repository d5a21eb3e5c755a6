r"""Topologies of the fairness scenario: an MPTCP client with two interfaces and a single-path
TCP competitor, (a) through one shared bottleneck, (b) over two disjoint paths, the first one
loaded by the competitor.

(a) SharedBottleneckTopo:

    client-eth0 10.0.1.1 ---+
    client-eth1 10.0.2.1 ---+- left -[bottleneck, shaped]- right -+- server    10.0.3.1
    tcpclient   10.0.4.1 ---+                                      +- tcpserver 10.0.5.1

The client's two subflows merge at `left` before the one bottleneck the TCP flow also
crosses: every flow has the same path, the same RTT and the same queue.

(b) DisjointPathsTopo:

    client-eth0 10.0.1.1 ---+- left1 -[path1, shaped]-+
    tcpclient   10.0.4.1 ---+                          +- right -+- server    10.0.3.1
    client-eth1 10.0.2.1 ----- left2 -[path2, shaped]-+          +- tcpserver 10.0.5.1

The competitor crosses path 1 only, so it is cross traffic on one of MPTCP's two paths.

Server links are plain veths; the named links are shaped (a2b of each shaped link is left to
right, the direction of an upload), and the senders' access links carry an optional `access`
shaping (the scenario's jitter, to break drop-tail phase effects; plain veths without it).
The routers learn each other's subnets from the emulation (testbed.emu.network.router_routes).
"""

from __future__ import annotations

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import Router

CLIENT_ADDRS = ("10.0.1.1", "10.0.2.1")
SERVER_ADDR = "10.0.3.1"
TCP_CLIENT_ADDR = "10.0.4.1"
TCP_SERVER_ADDR = "10.0.5.1"
PREFIX_LEN = 24


def _gateway(addr: str) -> str:
    return addr.rsplit(".", 1)[0] + ".254"


def _access(topo: Topo, host: str, intf: str, addr: str, router: str, router_intf: str,
            shaping: LinkShaping | None = None) -> None:
    topo.addLink(host, router, link_name=f"{intf}", shaping=shaping,
                 intfName1=intf, intfName2=router_intf,
                 params1={"ip": f"{addr}/{PREFIX_LEN}"},
                 params2={"ip": f"{_gateway(addr)}/{PREFIX_LEN}"})


def _hosts(topo: Topo) -> None:
    topo.addHost("client")
    topo.addHost("server")
    topo.addHost("tcpclient")
    topo.addHost("tcpserver")


def _right(topo: Topo, first_intf: int) -> None:
    topo.addHost("right", cls=Router)
    _access(topo, "server", "server-eth0", SERVER_ADDR, "right", f"right-eth{first_intf}")
    _access(topo, "tcpserver", "tcpserver-eth0", TCP_SERVER_ADDR, "right",
            f"right-eth{first_intf + 1}")


class SharedBottleneckTopo(Topo):
    def build(self, bottleneck: LinkShaping,  # type: ignore[override]
              access: LinkShaping | None = None) -> None:
        _hosts(self)
        self.addHost("left", cls=Router)
        _access(self, "client", "client-eth0", CLIENT_ADDRS[0], "left", "left-eth0", access)
        _access(self, "client", "client-eth1", CLIENT_ADDRS[1], "left", "left-eth1", access)
        _access(self, "tcpclient", "tcpclient-eth0", TCP_CLIENT_ADDR, "left", "left-eth2",
                access)
        _right(self, 1)
        self.addLink("left", "right", link_name="bottleneck", shaping=bottleneck,
                     intfName1="left-eth3", intfName2="right-eth0",
                     params1={"ip": f"10.0.10.1/{PREFIX_LEN}"},
                     params2={"ip": f"10.0.10.2/{PREFIX_LEN}"})


class DisjointPathsTopo(Topo):
    def build(self, path1: LinkShaping, path2: LinkShaping,  # type: ignore[override]
              access: LinkShaping | None = None) -> None:
        _hosts(self)
        self.addHost("left1", cls=Router)
        self.addHost("left2", cls=Router)
        _access(self, "client", "client-eth0", CLIENT_ADDRS[0], "left1", "left1-eth0", access)
        _access(self, "tcpclient", "tcpclient-eth0", TCP_CLIENT_ADDR, "left1", "left1-eth1",
                access)
        _access(self, "client", "client-eth1", CLIENT_ADDRS[1], "left2", "left2-eth0", access)
        _right(self, 2)
        for number, (left, shaping) in enumerate((("left1", path1), ("left2", path2)), 1):
            self.addLink(left, "right", link_name=f"path{number}", shaping=shaping,
                         intfName1=f"{left}-eth{3 - number}",
                         intfName2=f"right-eth{number - 1}",
                         params1={"ip": f"10.0.1{number}.1/{PREFIX_LEN}"},
                         params2={"ip": f"10.0.1{number}.2/{PREFIX_LEN}"})
