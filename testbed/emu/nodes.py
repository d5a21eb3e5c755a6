"""Emulated hosts and routers: Mininet nodes that run commands as argument lists and configure
themselves for MPTCP measurements (no IPv6 noise, wire-size captures, per-interface routing)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Sequence
from typing import Any

from mininet.node import Host
from pyroute2 import IPRoute

from testbed.emu.netns import netlink
from testbed.errors import ParameterError, TestbedError

# Routing tables used for per-interface source routing; 100 + interface index keeps clear of
# the kernel's own tables (local 255, main 254, default 253).
SOURCE_TABLE_BASE = 100


class TestbedHost(Host):
    """A Mininet host in its own network namespace.

    Unlike Mininet's `cmd()`, `run()` takes an argument list and never goes through a shell, and
    raises with the command's stderr when it fails instead of returning the error as output.
    """

    __test__ = False  # a Mininet node, not a pytest class

    def __init__(self, name: str, ipv6: bool = False, **params: Any) -> None:
        self.ipv6 = ipv6
        # Interface -> gateway, known once setup_routing has run (None before).
        self.gateways: dict[str, str] | None = None
        super().__init__(name, inNamespace=True, **params)

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60) -> str:
        proc = self.popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise TestbedError(
                f"{self.name}: {' '.join(argv)} did not finish in {timeout} s") from None
        if check and proc.returncode != 0:
            raise TestbedError(
                f"{self.name}: {' '.join(argv)} failed ({proc.returncode}): "
                f"{err.decode(errors='replace').strip()}"
            )
        return out.decode(errors="replace")

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def config(self, **params: Any) -> Any:  # type: ignore[override]
        result = super().config(**params)
        if not self.ipv6:
            # Link-local addresses would otherwise bring neighbour discovery and multicast to
            # every capture and to the TAP devices of userspace stacks.
            self.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
            self.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        return result

    def prepare_interfaces(self) -> None:
        """Offloads off, so that captures and userspace peers see wire-size segments."""
        for intf in self.intfList():
            if intf.name == "lo":
                continue
            # ethtool reports "Cannot change" for features a device does not have (TAP);
            # what matters is that none of them stays on, so the exit status is not checked.
            self.run(
                ["ethtool", "-K", intf.name, "tso", "off", "gso", "off", "gro", "off",
                 "lro", "off", "tx", "off", "rx", "off"],
                check=False,
            )

    def addresses(self) -> list[tuple[str, ipaddress.IPv4Interface]]:
        """(interface name, address with prefix) of every configured IPv4 interface."""
        result = []
        for intf in self.intfList():
            if intf.name == "lo" or not intf.IP():
                continue
            result.append((intf.name, ipaddress.IPv4Interface(f"{intf.IP()}/{intf.prefixLen}")))
        return result

    def setup_routing(self, gateways: dict[str, str] | None = None) -> None:
        """Default routes through every gateway; per-interface source routing if multi-homed.

        Without a rule per source address, the kernel sends every packet through the main
        table's default route, so the second subflow of an MPTCP connection would leave through
        the first interface with the second interface's address and be dropped by the path.
        Each gateway gets a default route in the main table too, with a metric in interface
        order, so that the host still has a default route when its first interface goes down
        (as a multi-homed laptop or phone does).

        The kernel deletes routes through an interface that goes down; calling this again
        (without arguments, once the interface is up) puts them back.
        """
        if gateways is not None:
            self.gateways = dict(gateways)
        gateways = self.gateways or {}
        addrs = self.addresses()
        with netlink(self.netns_path) as ns:
            for position, (name, iface) in enumerate(addrs):
                found = ns.link_lookup(ifname=name)
                if not found or not self.intf_is_up(ns, found[0]):
                    continue
                if not ns.get_addr(index=found[0], family=socket.AF_INET):
                    continue  # a userspace stack holds the address (and routes) itself
                idx = found[0]
                if name in gateways:
                    ns.route("replace", dst="0.0.0.0/0", gateway=gateways[name], oif=idx,
                             priority=100 + position)
                if len(addrs) < 2:
                    continue
                table = SOURCE_TABLE_BASE + position
                rule = {"src": str(iface.ip), "src_len": 32, "table": table,
                        "priority": 1000 + position}
                if not ns.get_rules(**rule):
                    ns.rule("add", **rule)
                ns.route("replace", dst=str(iface.network), oif=idx, table=table,
                         prefsrc=str(iface.ip), scope="link")
                if name in gateways:
                    ns.route("replace", dst="0.0.0.0/0", gateway=gateways[name], oif=idx,
                             table=table)

    @staticmethod
    def intf_is_up(ns: IPRoute, index: int) -> bool:
        link = ns.get_links(index)[0]
        return bool(link["flags"] & 1)  # IFF_UP


class Router(TestbedHost):
    """A host that forwards IPv4 between its interfaces (Mininet's linuxrouter example).

    Node parameters a topology may give (`addHost(name, cls=Router, routes=..., ...)`):
    `routes`, static routes as (prefix, (gateway, ...)) pairs, several gateways making one
    equal-cost multipath route (installed by the emulation once the links are up:
    install_routes); `multipath_hash_policy`, the kernel's net.ipv4.fib_multipath_hash_policy
    (0: addresses only, 1: addresses, protocol and ports); `multipath_hash_seed`, this
    router's net.ipv4.fib_multipath_hash_seed. Without a seed of its own every namespace
    hashes with the same boot-time random key, so routers in series would make correlated
    choices (a flow sent to the lower half of one router's next hops goes to the lower half
    at the next router as well, and half the paths stay unused).
    """

    def config(self, **params: Any) -> Any:  # type: ignore[override]
        result = super().config(**params)
        self.sysctl("net.ipv4.ip_forward", 1)
        # Replies to a multi-homed host must leave by the interface the route says, not be
        # dropped because the source looks spoofed from another interface.
        self.sysctl("net.ipv4.conf.all.rp_filter", 0)
        self.sysctl("net.ipv4.conf.default.rp_filter", 0)
        policy = self.params.get("multipath_hash_policy")
        if policy is not None:
            self.sysctl("net.ipv4.fib_multipath_hash_policy", int(policy))
        seed = self.params.get("multipath_hash_seed")
        if seed is not None:
            self.sysctl("net.ipv4.fib_multipath_hash_seed", int(seed))
        return result

    def static_routes(self) -> list[tuple[str, tuple[str, ...]]]:
        routes = [(str(prefix), tuple(gateways))
                  for prefix, gateways in self.params.get("routes", ())]
        for prefix, gateways in routes:
            if not gateways:
                raise ParameterError(f"router {self.name}: route to {prefix} has no gateway")
        return routes

    def install_routes(self) -> None:
        """The topology's static routes, ECMP where a prefix has several gateways."""
        routes = self.static_routes()
        if not routes:
            return
        with netlink(self.netns_path) as ns:
            for prefix, gateways in routes:
                try:
                    if len(gateways) == 1:
                        ns.route("replace", dst=prefix, gateway=gateways[0])
                    else:
                        ns.route("replace", dst=prefix,
                                 multipath=[{"gateway": gw} for gw in gateways])
                except Exception as exc:  # pyroute2 raises NetlinkError (an OSError) or its own
                    raise TestbedError(f"router {self.name}: route to {prefix} via "
                                       f"{', '.join(gateways)}: {exc}") from exc


class MiddleboxHost(TestbedHost):
    """A bump in the wire between two links: no addresses, and its kernel forwards nothing.
    The emulation runs a middlebox process (testbed.emu.middlebox) that passes every frame
    between its two interfaces, the first one towards side a, through `transforms` (the
    topology's node parameter: transform specs, see testbed/emu/middlebox/core.py)."""

    transparent = True

    def transforms(self) -> list[str]:
        return list(self.params.get("transforms", ()))

    def sides(self) -> tuple[str, str]:
        """(interface towards side a, interface towards side b): the topology names them
        <host>-eth0 and <host>-eth1."""
        names = sorted(intf.name for intf in self.intfList() if intf.name != "lo")
        if len(names) != 2:
            raise ParameterError(f"middlebox {self.name} needs exactly two links, has "
                                 f"{len(names)}")
        return names[0], names[1]

