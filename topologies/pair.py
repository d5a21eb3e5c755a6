"""Two hosts joined by one shaped link: the smallest network, for measuring a link on its own.

    a-eth0 10.0.9.1/24 --[link, shaped]-- b-eth0 10.0.9.2/24

`a2b` shapes frames from `a` to `b`.
"""

from __future__ import annotations

from mininet.topo import Topo

from testbed.emu.linkparams import LinkShaping

A_ADDR = "10.0.9.1"
B_ADDR = "10.0.9.2"
LINK_NAME = "link"


class PairTopo(Topo):
    def build(self, shaping: LinkShaping) -> None:  # type: ignore[override]
        a = self.addHost("a")
        b = self.addHost("b")
        self.addLink(a, b, link_name=LINK_NAME, shaping=shaping,
                     params1={"ip": f"{A_ADDR}/24"}, params2={"ip": f"{B_ADDR}/24"})
