"""Path managers: when to open and close subflows and announce or withdraw addresses
(Linux: net/mptcp/pm.c, pm_kernel.c, pm_userspace.c). Registered by name.

The host's MPTCP endpoints (`LocalEndpoint`, as `ip mptcp endpoint` makes them: an address,
an id and the flags subflow / signal / backup / fullmesh) live in the stack's table
(`MptcpStack.endpoints`); a path manager reads them and acts on a connection only through its
public calls (`open_subflow`, `close_subflow`, `announce_address`, `remove_address`,
`withdraw_local_address`, `set_backup`). The connection and the stack tell it about events:
the connection is fully established, the peer announced or removed an address, a local
endpoint was added, removed or changed, a local address went down or came back up.

- `kernel` (alias `default`): the in-kernel path manager's endpoint semantics.
- `fullmesh`: a subflow for every pair of local and remote addresses.
- `ndiffports`: N subflows over the initial pair of addresses (`MptcpConfig.ndiffports`).
- `single-path`: `subflow` endpoints are held in reserve until the active address is gone.
- `userspace`: does nothing by itself; the control channel drives it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from testbed.errors import ParameterError
from testbed.stack.registry import Registry

if TYPE_CHECKING:
    from testbed.stack.mptcp.connection import MptcpConnection, Subflow

# The flags of `ip mptcp endpoint add` (the kernel's MPTCP_PM_ADDR_FLAG_*).
ENDPOINT_FLAGS: frozenset[str] = frozenset({"subflow", "signal", "backup", "fullmesh"})


@dataclass
class LocalEndpoint:
    """An address of this host the path manager may use, and how (`ip mptcp endpoint`)."""

    address_id: int  # 1..255; 0 is the initial subflow's address on every connection
    addr: bytes
    flags: frozenset[str]
    up: bool = True  # the address is on an interface that is up

    def __post_init__(self) -> None:
        unknown = set(self.flags) - ENDPOINT_FLAGS
        if unknown:
            raise ParameterError(f"endpoint {ip(self.addr)}: unknown flag(s) "
                                 f"{sorted(unknown)}; allowed: {sorted(ENDPOINT_FLAGS)}")
        if {"signal", "fullmesh"} <= set(self.flags):
            # pm_kernel.c refuses the pair too: fullmesh is about our own subflows.
            raise ParameterError(f"endpoint {ip(self.addr)}: 'fullmesh' cannot be combined "
                                 "with 'signal'")
        if not 1 <= self.address_id <= 255:
            raise ParameterError(f"endpoint {ip(self.addr)}: id {self.address_id} is not "
                                 "within 1..255")
        self.flags = frozenset(self.flags)

    @property
    def backup(self) -> bool:
        return "backup" in self.flags

    def record(self) -> dict[str, object]:
        return {"id": self.address_id, "addr": str(ip(self.addr)),
                "flags": sorted(self.flags), "up": self.up}


class PathManager:
    """Every event has a do-nothing default; a path manager overrides what it needs."""

    name: ClassVar[str]

    def on_fully_established(self, conn: MptcpConnection, now: float) -> None:
        """Both ends know the keys and MPTCP works on the path: subflows may be added."""

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        """The peer sent an ADD_ADDR whose HMAC checked out."""

    def on_address_removed(self, conn: MptcpConnection, address_id: int, now: float) -> None:
        """The peer sent REMOVE_ADDR for `address_id` (its subflows are closed already)."""

    def on_endpoint_added(self, conn: MptcpConnection, endpoint: LocalEndpoint,
                          now: float) -> None:
        """A local endpoint was added, or its address came back up."""

    def on_endpoint_changed(self, conn: MptcpConnection, endpoint: LocalEndpoint,
                            now: float) -> None:
        """A local endpoint's backup flag changed."""

    def on_local_address_gone(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        """A local address went down or its endpoint was deleted."""

    def on_local_address_up(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        """A local address without an endpoint (the initial subflow's) came back up."""

    def on_subflow_established(self, conn: MptcpConnection, sf: Subflow, now: float) -> None:
        """A joined subflow may carry data now."""


class UserspacePathManager(PathManager):
    """The kernel's `userspace` path manager: nothing by itself; the control channel (an
    mptcpd-like program, an experiment's script) opens and closes subflows, announces and
    withdraws addresses and sets backup through the connection's calls."""

    name = "userspace"


class KernelPathManager(PathManager):
    """The in-kernel path manager's endpoint semantics (pm_kernel.c): the client opens a
    subflow from every `subflow` endpoint to the peer's address (to every address the peer
    announced too when the endpoint is also `fullmesh`), flagged backup (MP_JOIN B bit) for
    `backup` ones; either side announces its `signal` endpoints (ADD_ADDR); the client joins
    an announced address from its fullmesh endpoints, or from its initial address without
    any. At run time the same for endpoints added; a deleted endpoint or an address gone
    down is withdrawn (REMOVE_ADDR, its subflows closed and their data reinjected); a
    changed backup flag is an MP_PRIO on its subflows. When no non-backup subflow is left,
    the backups are promoted with MP_PRIO, so the peer no longer holds them in reserve."""

    name = "kernel"

    # -- what to open ---------------------------------------------------------------------

    def joins_for(self, conn: MptcpConnection, endpoint: LocalEndpoint) -> list[
            tuple[bytes, int, int]]:
        """(remote address, port, remote id) that `endpoint` joins."""
        if "fullmesh" in endpoint.flags:
            return conn.remote_addresses()
        return [(conn.remote_addr, conn.remote_port, 0)]

    def wants_subflows_from(self, endpoint: LocalEndpoint) -> bool:
        # A `fullmesh` endpoint without `subflow` only joins addresses the peer announces.
        return "subflow" in endpoint.flags

    def open_from(self, conn: MptcpConnection, endpoint: LocalEndpoint, now: float) -> None:
        if not (conn.is_client and endpoint.up and self.wants_subflows_from(endpoint)):
            return
        if endpoint.addr == conn.local_addr and "fullmesh" not in endpoint.flags:
            return  # the initial subflow is that one
        for remote, port, remote_id in self.joins_for(conn, endpoint):
            conn.ensure_subflow(endpoint.addr, remote, port, now, backup=endpoint.backup,
                                remote_address_id=remote_id)

    def announce(self, conn: MptcpConnection, endpoint: LocalEndpoint, now: float) -> None:
        if "signal" in endpoint.flags and endpoint.up and endpoint.addr != conn.local_addr:
            conn.announce_address(endpoint.address_id, endpoint.addr, now)

    # -- events -----------------------------------------------------------------------------

    def on_fully_established(self, conn: MptcpConnection, now: float) -> None:
        for endpoint in conn.stack.endpoints_for(conn):
            self.announce(conn, endpoint, now)
            self.open_from(conn, endpoint, now)

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        if not (conn.is_client and conn.config.join_announced):
            return
        port = port or conn.remote_port
        fullmesh = [e for e in conn.stack.endpoints_for(conn)
                    if "fullmesh" in e.flags and e.up]
        # A resent ADD_ADDR (its echo was late) is no reason for a second subflow: Linux's
        # pm_kernel.c also skips an address it already has a subflow to (ensure_subflow).
        for endpoint in fullmesh:
            conn.ensure_subflow(endpoint.addr, address, port, now, backup=endpoint.backup,
                                remote_address_id=address_id)
        if not fullmesh and conn.stack.address_is_up(conn.local_addr):
            conn.ensure_subflow(conn.local_addr, address, port, now,
                                remote_address_id=address_id)

    def on_endpoint_added(self, conn: MptcpConnection, endpoint: LocalEndpoint,
                          now: float) -> None:
        self.announce(conn, endpoint, now)
        self.open_from(conn, endpoint, now)

    def on_endpoint_changed(self, conn: MptcpConnection, endpoint: LocalEndpoint,
                            now: float) -> None:
        for sf in list(conn.subflows):
            if sf.tcp.local_addr == endpoint.addr and sf.backup != endpoint.backup:
                conn.set_backup(sf, endpoint.backup, now)

    def on_local_address_gone(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        conn.withdraw_local_address(addr, now)
        self.promote_backups(conn, now)

    def on_local_address_up(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        # The initial address is back: a subflow from it again (id 0), as from an endpoint.
        if conn.is_client and addr == conn.local_addr:
            conn.ensure_subflow(addr, conn.remote_addr, conn.remote_port, now,
                                remote_address_id=0)

    def on_subflow_established(self, conn: MptcpConnection, sf: Subflow, now: float) -> None:
        # A subflow kept because its address went down while it was the last one is
        # withdrawn now that another one works.
        for addr in {s.tcp.local_addr for s in conn.subflows}:
            if not conn.stack.address_is_up(addr) and addr != sf.tcp.local_addr:
                conn.withdraw_local_address(addr, now)

    def promote_backups(self, conn: MptcpConnection, now: float) -> None:
        live = [sf for sf in conn.subflows if not sf.failed]
        if live and all(sf.backup for sf in live):
            for sf in live:
                conn.set_backup(sf, False, now)


class FullMeshPathManager(KernelPathManager):
    """A subflow for every pair of a local address (the initial one and every `subflow` or
    `fullmesh` endpoint) and a remote address (the peer's initial one and every one it
    announced), each endpoint treated as `fullmesh`; `signal` endpoints are announced and
    `backup` ones join as backups, as with `kernel`."""

    name = "fullmesh"

    def wants_subflows_from(self, endpoint: LocalEndpoint) -> bool:
        return "subflow" in endpoint.flags or "fullmesh" in endpoint.flags

    def joins_for(self, conn: MptcpConnection, endpoint: LocalEndpoint) -> list[
            tuple[bytes, int, int]]:
        return conn.remote_addresses()

    def open_from(self, conn: MptcpConnection, endpoint: LocalEndpoint, now: float) -> None:
        if not (conn.is_client and endpoint.up and self.wants_subflows_from(endpoint)):
            return
        for remote, port, remote_id in conn.remote_addresses():
            conn.ensure_subflow(endpoint.addr, remote, port, now, backup=endpoint.backup,
                                remote_address_id=remote_id)

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        if not (conn.is_client and conn.config.join_announced):
            return
        port = port or conn.remote_port
        if conn.stack.address_is_up(conn.local_addr):
            conn.ensure_subflow(conn.local_addr, address, port, now,
                                remote_address_id=address_id)
        for endpoint in conn.stack.endpoints_for(conn):
            if endpoint.up and self.wants_subflows_from(endpoint) \
                    and endpoint.addr != conn.local_addr:
                conn.ensure_subflow(endpoint.addr, address, port, now, backup=endpoint.backup,
                                    remote_address_id=address_id)

    def on_local_address_up(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        if conn.is_client and addr == conn.local_addr:
            for remote, port, remote_id in conn.remote_addresses():
                conn.ensure_subflow(addr, remote, port, now, remote_address_id=remote_id)


class NdiffportsPathManager(KernelPathManager):
    """`MptcpConfig.ndiffports` subflows in all (default 2) between the initial pair of
    addresses, each from its own source port, for ECMP networks that hash ports onto
    different paths (the out-of-tree Linux MPTCP's `ndiffports`); endpoints are not used
    for subflows, `signal` ones are still announced."""

    name = "ndiffports"

    def on_fully_established(self, conn: MptcpConnection, now: float) -> None:
        for endpoint in conn.stack.endpoints_for(conn):
            self.announce(conn, endpoint, now)
        if conn.is_client:
            for _ in range(conn.config.ndiffports - 1):
                conn.open_subflow(conn.local_addr, conn.remote_addr, conn.remote_port, now,
                                  remote_address_id=0)

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        """Announced addresses are not joined: the N subflows stay on the initial pair."""

    def open_from(self, conn: MptcpConnection, endpoint: LocalEndpoint, now: float) -> None:
        """Endpoints open no subflows here."""

    def on_local_address_up(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        if not (conn.is_client and addr == conn.local_addr):
            return
        have = sum(1 for sf in conn.subflows if sf.tcp.local_addr == addr and not sf.failed)
        for _ in range(conn.config.ndiffports - have):
            conn.open_subflow(addr, conn.remote_addr, conn.remote_port, now,
                              remote_address_id=0)


class SinglePathPathManager(KernelPathManager):
    """The handover paper's single-path mode: one subflow at a time. `subflow` endpoints are
    held in reserve; when the address carrying the connection goes down (or its endpoint is
    deleted) the client joins from the reserve endpoints that are up, and only then closes
    the dead subflows (their data is reinjected on the new one) and withdraws the address
    (REMOVE_ADDR once the new subflow can carry it). Announced addresses are not joined."""

    name = "single-path"

    def on_fully_established(self, conn: MptcpConnection, now: float) -> None:
        for endpoint in conn.stack.endpoints_for(conn):
            self.announce(conn, endpoint, now)

    def on_address_announced(self, conn: MptcpConnection, address_id: int, address: bytes,
                             port: int | None, now: float) -> None:
        """Joins wait for a failure."""

    def on_endpoint_added(self, conn: MptcpConnection, endpoint: LocalEndpoint,
                          now: float) -> None:
        self.announce(conn, endpoint, now)
        if not any(sf.usable or not sf.tcp.established for sf in conn.subflows):
            self.open_from(conn, endpoint, now)  # nothing works: use it at once

    def on_local_address_gone(self, conn: MptcpConnection, addr: bytes, now: float) -> None:
        others = [sf for sf in conn.subflows if sf.tcp.local_addr != addr and not sf.failed]
        if conn.is_client and not others:
            for endpoint in conn.stack.endpoints_for(conn):
                if endpoint.addr != addr:
                    self.open_from(conn, endpoint, now)
        conn.withdraw_local_address(addr, now)


def ip(addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(addr)


_PATH_MANAGERS: Registry[type[PathManager]] = Registry("MPTCP path manager")
register_path_manager = _PATH_MANAGERS.register
get_path_manager = _PATH_MANAGERS.get
available_path_managers = _PATH_MANAGERS.names

# Kept for code that names the old class.
MinimalPathManager = KernelPathManager

for _pm in (KernelPathManager, FullMeshPathManager, NdiffportsPathManager,
            SinglePathPathManager, UserspacePathManager):
    register_path_manager(_pm.name, _pm)
register_path_manager("default", KernelPathManager)
