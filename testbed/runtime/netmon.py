"""The host's interface and address changes, from rtnetlink in the daemon's namespace: a link
going down or up, an IPv4 address added to or removed from an interface, a default route
added. A raw NETLINK_ROUTE socket subscribed to the link, IPv4 address and IPv4 route groups
(non-blocking, in the daemon's selector); pyroute2 only decodes the messages.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.rtnl.marshal import MarshalRtnl

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class LinkChange:
    """An interface's state: usable when administratively up with its carrier."""

    index: int
    ifname: str | None
    up: bool


@dataclass(frozen=True)
class AddressChange:
    index: int
    addr: ipaddress.IPv4Interface
    added: bool


@dataclass(frozen=True)
class DefaultRouteChange:
    index: int
    gateway: ipaddress.IPv4Address
    added: bool


NetEvent = LinkChange | AddressChange | DefaultRouteChange


def decode(msg: Any) -> NetEvent | None:
    """One decoded rtnetlink message to the event it means for us, None if it means none."""
    event = msg.get("event")
    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
        flags = int(msg.get("flags") or 0)
        up = event == "RTM_NEWLINK" and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
        return LinkChange(int(msg.get("index")), msg.get_attr("IFLA_IFNAME"), up)
    if event in ("RTM_NEWADDR", "RTM_DELADDR") and msg.get("family") == socket.AF_INET:
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local is None:
            return None
        addr = ipaddress.IPv4Interface(f"{local}/{msg.get('prefixlen')}")
        return AddressChange(int(msg.get("index")), addr, event == "RTM_NEWADDR")
    if event in ("RTM_NEWROUTE", "RTM_DELROUTE") and msg.get("family") == socket.AF_INET:
        table = msg.get_attr("RTA_TABLE") or msg.get("table")
        gateway = msg.get_attr("RTA_GATEWAY")
        oif = msg.get_attr("RTA_OIF")
        if msg.get("dst_len") != 0 or table != RT_TABLE_MAIN or gateway is None or oif is None:
            return None
        return DefaultRouteChange(int(oif), ipaddress.IPv4Address(gateway),
                                  event == "RTM_NEWROUTE")
    return None


def parse(data: bytes) -> list[NetEvent]:
    out = []
    for msg in MarshalRtnl().parse(data):
        try:
            event = decode(msg)
        except (ValueError, TypeError):
            continue  # a message we cannot read is no event of ours
        if event is not None:
            out.append(event)
    return out


class NetlinkMonitor:
    """Subscribed at creation; `read()` drains what arrived since (never blocks)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                  socket.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        except OSError:
            self.sock.close()
            raise
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[NetEvent]:
        events: list[NetEvent] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return events
            except OSError:
                # ENOBUFS: the kernel dropped messages for us; what we missed is re-read by
                # the daemon from the interfaces' current state.
                self.overruns += 1
                return events
            events += parse(data)

    def close(self) -> None:
        self.sock.close()
