"""The stack's interfaces and IPv4 route table: connected routes, default routes through a
gateway, and the per-source-address choice MPTCP subflows need."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from testbed.errors import ParameterError


@dataclass(frozen=True)
class Interface:
    """One L2 attachment of the stack: a kernel interface (or TAP) with our address on it."""

    name: str
    mac: bytes  # 6 bytes
    addr: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None = None
    mtu: int = 1500

    @property
    def ip(self) -> bytes:
        return self.addr.ip.packed

    def on_link(self, dst: ipaddress.IPv4Address) -> bool:
        return dst in self.addr.network


@dataclass(frozen=True)
class Route:
    """Where a packet goes: out of `iface`, to the L2 neighbour `next_hop`, from `src`."""

    iface: Interface
    next_hop: bytes  # the destination itself when on-link, else the gateway
    src: bytes


IfaceSpec = tuple[str, ipaddress.IPv4Interface, ipaddress.IPv4Address | None]


def parse_iface_spec(spec: str) -> IfaceSpec:
    """`NAME=ADDR/PREFIX[,gw=GW]` (the daemon's --iface) to its parts; ParameterError if bad."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise ParameterError(f"--iface {spec!r}: want NAME=ADDR/PREFIX[,gw=GW]")
    addr_text, *extras = rest.split(",")
    try:
        addr = ipaddress.IPv4Interface(addr_text)
    except ValueError:
        raise ParameterError(f"--iface {spec!r}: {addr_text!r} is not ADDR/PREFIX") from None
    if "/" not in addr_text:
        raise ParameterError(f"--iface {spec!r}: the prefix length is missing")
    gateway = None
    for extra in extras:
        key, _, value = extra.partition("=")
        if key != "gw":
            raise ParameterError(f"--iface {spec!r}: unknown option {key!r}")
        try:
            gateway = ipaddress.IPv4Address(value)
        except ValueError:
            raise ParameterError(f"--iface {spec!r}: gateway {value!r} is not an address") from None
        if gateway not in addr.network:
            raise ParameterError(f"--iface {spec!r}: gateway {gateway} is not on {addr.network}")
    return name, addr, gateway


class RouteTable:
    """Connected routes of every interface plus one default route per gateway.

    Without a source address the usual rules apply: the longest matching connected prefix,
    else the first interface with a gateway (interface order is the metric, as the testbed's
    kernel hosts get it from `setup_routing`). With a source address the packet must leave
    through the interface that owns it, like the kernel's `ip rule from ADDR table N` on the
    testbed's multi-homed hosts: a subflow bound to the second address would otherwise leave
    through the first path with the second path's address and be dropped by the router.
    """

    def __init__(self, interfaces: list[Interface], down: set[str] | None = None) -> None:
        self.interfaces = list(interfaces)
        self._by_ip = {iface.ip: iface for iface in self.interfaces}
        # Interfaces whose link is down: no route leaves through them. A packet from one of
        # their addresses leaves through another interface with that source address, as
        # Linux's weak host model does (a moved VM's old subflow reaches its peer that way
        # with the ADD_ADDR of its new address).
        self.down: set[str] = set(down or ())
        # The table never changes once built, so answers are kept (bounded, as the keys
        # come from the addresses peers use).
        self._cache: dict[tuple[bytes, bytes | None], Route | None] = {}

    def set_down(self, name: str, down: bool) -> None:
        if down:
            self.down.add(name)
        else:
            self.down.discard(name)
        self._cache.clear()

    def is_local(self, addr: bytes) -> bool:
        return addr in self._by_ip

    def interface_of(self, addr: bytes) -> Interface | None:
        return self._by_ip.get(addr)

    def lookup(self, dst: bytes, src: bytes | None = None) -> Route | None:
        """The route for a packet to `dst` (from `src` if the caller chose one); None when
        unreachable (no matching prefix and no gateway, or `src` is not ours)."""
        key = (dst, src)
        try:
            return self._cache[key]
        except KeyError:
            pass
        if len(self._cache) >= 4096:
            self._cache.clear()
        route = self._cache[key] = self._lookup(dst, src)
        return route

    def _lookup(self, dst: bytes, src: bytes | None) -> Route | None:
        dst_ip = ipaddress.IPv4Address(dst)
        if src is not None and src != b"\0\0\0\0":
            iface = self._by_ip.get(src)
            if iface is None:
                return None
            if iface.name in self.down:
                other = self._lookup(dst, None)
                return None if other is None else Route(other.iface, other.next_hop, src)
            return self._via(iface, dst_ip)
        up = [iface for iface in self.interfaces if iface.name not in self.down]
        connected = [iface for iface in up if iface.on_link(dst_ip)]
        if connected:
            best = max(connected, key=lambda iface: iface.addr.network.prefixlen)
            return Route(best, dst, best.ip)
        for iface in up:
            if iface.gateway is not None:
                return Route(iface, iface.gateway.packed, iface.ip)
        return None

    @staticmethod
    def _via(iface: Interface, dst: ipaddress.IPv4Address) -> Route | None:
        if iface.on_link(dst):
            return Route(iface, dst.packed, iface.ip)
        if iface.gateway is not None:
            return Route(iface, iface.gateway.packed, iface.ip)
        return None
