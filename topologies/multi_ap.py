r"""A client associated with several WiFi access points at once: the multi-WiFi topology.

    client-eth0 10.0.1.1 --[ap1, shaped]-- router-eth0 10.0.1.254
    client-eth1 10.0.2.1 --[ap2, shaped]-- router-eth1 10.0.2.254
          ...                   ...                ...
    client-ethN 10.0.N+1.1 -[apN+1]------- router-ethN 10.0.N+1.254
                                           router-ethM 10.0.100.254 --[plain]-- server 10.0.100.1

Each shaped link stands for one AP: the wireless hop between the client and that AP, whose rate
and loss the scenario changes as the client walks, and which goes down when the AP is out of
range. The AP's wired uplink and the distribution network behind it are folded into `router`:
they are never the bottleneck in a WiFi deployment, so only the wireless hops are shaped, and
the server's link is a plain veth. Every client interface has its own subnet, so the emulation
layer gives the client one source-routing table per interface and an MPTCP subflow from each
address leaves through its own AP.
"""

from __future__ import annotations

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import Router

MAX_APS = 8  # the kernel path manager's MPTCP_PM_ADDR_MAX: at most 8 endpoints per host
PREFIX_LEN = 24
SERVER_ADDR = "10.0.100.1"


def ap_link(ap: int) -> str:
    """The topology name of AP `ap`'s link (APs count from 1, as people name them)."""
    return f"ap{ap}"


def client_addr(ap: int) -> str:
    return f"10.0.{ap}.1"


def router_addr(ap: int) -> str:
    """The router's address on AP `ap`'s subnet: the client's gateway through that AP."""
    return f"10.0.{ap}.254"


def client_intf(ap: int) -> str:
    return f"client-eth{ap - 1}"


class MultiApTopo(Topo):
    def build(self, aps: list[LinkShaping]) -> None:  # type: ignore[override]
        client = self.addHost("client")
        router = self.addHost("router", cls=Router)
        server = self.addHost("server")
        # a2b of every AP link is client to router: the direction of an upload.
        for ap, shaping in enumerate(aps, 1):
            # Interfaces named explicitly: client_intf() is what endpoints and routing use, and
            # Mininet's numbering would follow the order links happen to be added in.
            self.addLink(client, router, link_name=ap_link(ap), shaping=shaping,
                         intfName1=client_intf(ap), intfName2=f"router-eth{ap - 1}",
                         params1={"ip": f"{client_addr(ap)}/{PREFIX_LEN}"},
                         params2={"ip": f"{router_addr(ap)}/{PREFIX_LEN}"})
        self.addLink(router, server, link_name="server", shaping=None,
                     intfName1=f"router-eth{len(aps)}", intfName2="server-eth0",
                     params1={"ip": f"10.0.100.254/{PREFIX_LEN}"},
                     params2={"ip": f"{SERVER_ADDR}/{PREFIX_LEN}"})
