"""The two-path topology with a middlebox on one path, between the client and the router:

    client-eth0 10.0.1.1 --[path1, shaped]-- mbox --[mbox1, plain]-- router-eth0 10.0.1.254
    client-eth1 10.0.2.1 --[path2, shaped]------------------------ router-eth1 10.0.2.254
                                             router-eth2 10.0.3.254 --[plain]-- server 10.0.3.1

(shown with the box on path 1; `on_path=2` puts it on the other). The box has no addresses:
client and router stay on one subnet, and the box's process (testbed.emu.middlebox) passes
their frames through its transforms. Side a of the box is the client's.
"""

from __future__ import annotations

from collections.abc import Sequence

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import MiddleboxHost, Router
from topologies.two_path import CLIENT_ADDRS, SERVER_ADDR

__all__ = ["CLIENT_ADDRS", "SERVER_ADDR", "MiddleboxTopo"]


class MiddleboxTopo(Topo):
    def build(self, path1: LinkShaping, path2: LinkShaping,  # type: ignore[override]
              transforms: Sequence[str] = (), on_path: int = 1) -> None:
        client = self.addHost("client")
        router = self.addHost("router", cls=Router)
        server = self.addHost("server")
        for number, (addr, shaping) in enumerate(zip(CLIENT_ADDRS, (path1, path2), strict=True),
                                                 start=1):
            subnet = addr.rsplit(".", 1)[0]
            client_side = {"ip": f"{addr}/24"}
            router_side = {"ip": f"{subnet}.254/24"}
            # Names pinned: Mininet makes links in sorted order of their end nodes, which
            # would give the link to "mbox" client-eth0 whatever its path.
            names = {"intfName1": f"client-eth{number - 1}"}
            router_intf = f"router-eth{number - 1}"
            if number != on_path:
                self.addLink(client, router, link_name=f"path{number}", shaping=shaping,
                             params1=client_side, params2=router_side,
                             intfName2=router_intf, **names)
                continue
            mbox = self.addHost("mbox", cls=MiddleboxHost, transforms=tuple(transforms))
            self.addLink(client, mbox, link_name=f"path{number}", shaping=shaping,
                         params1=client_side, intfName2="mbox-eth0", **names)
            self.addLink(mbox, router, link_name=f"mbox{number}", params2=router_side,
                         intfName1="mbox-eth1", intfName2=router_intf)
        self.addLink(router, server, link_name="server", intfName1="router-eth2",
                     intfName2="server-eth0",
                     params1={"ip": "10.0.3.254/24"}, params2={"ip": f"{SERVER_ADDR}/24"})
