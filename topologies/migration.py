r"""A server (a VM) that can live in two network domains: the VM-migration topology.

                                     router-eth1 10.0.2.254 --[domain_a]-- server-eth0 10.0.2.1
                                    /                                       (before the move)
 client-eth0 10.0.1.1 --[client]-- router-eth0 10.0.1.254
                                    \                                       (after the move)
                                     router-eth2 10.0.3.254 --[domain_b]-- server-eth1 10.0.3.1

The router stands for the Internet between the client and the two data centres (or a data
centre and a nearby cloudlet); each domain link carries that domain's rate and delay, the client
link the client's access. All three links are shaped in both directions.

The VM's port in domain B is wired but has no address until the VM resumes there: the scenario's
timeline takes `domain_a` down when the VM stops at the source and gives `server-eth1` its
address (SERVER_ADDR_B) when the VM resumes at the destination. The router routes between its
directly connected subnets only, so once `domain_a` is down the old address is unreachable from
the client, as a VM's old address is once its domain no longer delivers to it.
"""

from __future__ import annotations

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping
from testbed.emu.nodes import Router

CLIENT_ADDR = "10.0.1.1"
SERVER_ADDR_A = "10.0.2.1"
SERVER_ADDR_B = "10.0.3.1"
GATEWAY_B = "10.0.3.254"
PREFIX_LEN = 24
# Named explicitly: both domain links join the same two nodes, so Mininet's numbering would
# depend on the order it happens to add them in.
SERVER_INTF_A = "server-eth0"
SERVER_INTF_B = "server-eth1"


class MigrationTopo(Topo):
    def build(self, client: LinkShaping, domain_a: LinkShaping,  # type: ignore[override]
              domain_b: LinkShaping) -> None:
        client_host = self.addHost("client")
        router = self.addHost("router", cls=Router)
        server = self.addHost("server")
        self.addLink(client_host, router, link_name="client", shaping=client,
                     params1={"ip": f"{CLIENT_ADDR}/{PREFIX_LEN}"},
                     params2={"ip": f"10.0.1.254/{PREFIX_LEN}"})
        # a2b of both domain links is router to server: the direction of a download.
        self.addLink(router, server, link_name="domain_a", shaping=domain_a,
                     intfName1="router-eth1", intfName2=SERVER_INTF_A,
                     params1={"ip": f"10.0.2.254/{PREFIX_LEN}"},
                     params2={"ip": f"{SERVER_ADDR_A}/{PREFIX_LEN}"})
        self.addLink(router, server, link_name="domain_b", shaping=domain_b,
                     intfName1="router-eth2", intfName2=SERVER_INTF_B,
                     params1={"ip": f"{GATEWAY_B}/{PREFIX_LEN}"}, params2={})
