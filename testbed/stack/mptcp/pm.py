"""Path managers: when to open subflows and announce addresses (Linux's in-kernel path
manager, net/mptcp/pm_kernel.c, in its smallest form). Registered by name.

A path manager acts on a connection only through its public calls (`open_subflow`,
`announce_address`); the connection tells it about events.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, ClassVar

from testbed.stack.registry import Registry

if TYPE_CHECKING:
    from testbed.stack.mptcp.connection import MptcpConnection


class PathManager:
    """Every event has a do-nothing default; a path manager overrides what it needs."""

    name: ClassVar[str]

    def on_fully_established(self, conn: MptcpConnection, now: float) -> None:
        """Both ends know the keys and MPTCP works on the path: subflows may be added."""

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        """The peer sent an ADD_ADDR whose HMAC checked out."""

    def on_address_removed(self, conn: MptcpConnection, address_id: int, now: float) -> None:
        """The peer sent REMOVE_ADDR for `address_id`."""


class MinimalPathManager(PathManager):
    """The client opens one subflow from each configured extra local address to the
    server's address, and one to each address the server announces when
    `join_announced`; the server announces its configured extra addresses."""

    name = "default"

    def on_fully_established(self, conn: MptcpConnection, now: float) -> None:
        if conn.is_client:
            for addr in conn.config.extra_local_addrs:
                conn.open_subflow(addr, conn.remote_addr, conn.remote_port, now,
                                  backup=addr in conn.config.backup_addrs)
        else:
            for index, addr in enumerate(conn.config.announce_addrs, start=1):
                conn.announce_address(index, addr, now)

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        if not (conn.is_client and conn.config.join_announced):
            return
        port = port or conn.remote_port
        # A resent ADD_ADDR (its echo was late) is no reason for a second subflow: Linux's
        # pm_kernel.c also skips an address it already has a subflow to.
        if any(sf.tcp.remote_addr == address and sf.tcp.remote_port == port
               and sf.tcp.local_addr == conn.local_addr for sf in conn.subflows):
            return
        conn.open_subflow(conn.local_addr, address, port, now, remote_address_id=address_id)


_PATH_MANAGERS: Registry[type[PathManager]] = Registry("MPTCP path manager")
register_path_manager = _PATH_MANAGERS.register
get_path_manager = _PATH_MANAGERS.get
available_path_managers = _PATH_MANAGERS.names


def ip(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(addr)


register_path_manager(MinimalPathManager.name, MinimalPathManager)
