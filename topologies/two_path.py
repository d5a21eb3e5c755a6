"""Two paths between a multi-homed client and a server: the aggregation topology.

    client-eth0 10.0.1.1 --[path1, shaped]-- router-eth0 10.0.1.254
    client-eth1 10.0.2.1 --[path2, shaped]-- router-eth1 10.0.2.254
                                             router-eth2 10.0.3.254 --[plain]-- server 10.0.3.1

Both directions of each path are shaped (a2b is client to router, i.e. upload). The server link
is a plain veth so that the two shaped paths are the only bottlenecks, as in the kernel selftest
simult_flows.sh.
"""

from __future__ import annotations

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import Router

CLIENT_ADDRS = ("10.0.1.1", "10.0.2.1")
SERVER_ADDR = "10.0.3.1"


class TwoPathTopo(Topo):
    def build(self, path1: LinkShaping, path2: LinkShaping,  # type: ignore[override]
              server_link: LinkShaping | None = None) -> None:
        client = self.addHost("client")
        router = self.addHost("router", cls=Router)
        server = self.addHost("server")
        for number, (addr, shaping) in enumerate(zip(CLIENT_ADDRS, (path1, path2), strict=True)):
            subnet = addr.rsplit(".", 1)[0]
            self.addLink(client, router, link_name=f"path{number + 1}", shaping=shaping,
                         params1={"ip": f"{addr}/24"}, params2={"ip": f"{subnet}.254/24"})
        self.addLink(router, server, link_name="server", shaping=server_link,
                     params1={"ip": "10.0.3.254/24"}, params2={"ip": f"{SERVER_ADDR}/24"})
