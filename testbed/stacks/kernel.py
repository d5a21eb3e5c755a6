"""Drivers for the Linux kernel's stacks: `kernel` (upstream MPTCP v1) and `tcp` (plain TCP).

Both only touch the host's own network namespace (sysctls under net.mptcp and
net.ipv4.tcp_congestion_control are per namespace, and so are MPTCP endpoints and limits):
nothing system-wide is changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from testbed.errors import EnvironmentProblem, ParameterError, TestbedError
from testbed.stacks.base import (
    Endpoint,
    HostExec,
    PathControl,
    PreparedHost,
    StackConfig,
    WorkloadProto,
    register_stack,
)

# Before kernel 6.15 the path manager was chosen by number (net.mptcp.pm_type) and there was
# no list to read; these are the two that existed.
_LEGACY_PM_TYPES = {"kernel": "0", "userspace": "1"}


@dataclass(frozen=True)
class KernelCapabilities:
    """What the host's kernel offers, read from its sysctls."""

    path_managers: tuple[str, ...]
    path_manager_by_name: bool  # net.mptcp.path_manager exists (else pm_type)
    schedulers: tuple[str, ...]
    congestion_available: tuple[str, ...]
    congestion_allowed: tuple[str, ...]  # what a non-initial namespace may make its default


def read_sysctl(host: HostExec, key: str) -> str | None:
    """The value of one sysctl inside `host`, None if the kernel does not have it."""
    try:
        return host.run(["sysctl", "-n", key]).strip()
    except TestbedError:
        return None


def write_sysctl(host: HostExec, key: str, value: str) -> None:
    try:
        host.run(["sysctl", "-q", "-w", f"{key}={value}"])
    except TestbedError as exc:
        raise EnvironmentProblem(f"{host.name}: cannot set {key}={value}: {exc}") from None


def kernel_capabilities(host: HostExec) -> KernelCapabilities:
    """Read the kernel's MPTCP path managers, schedulers and congestion controls."""
    if read_sysctl(host, "net.mptcp.enabled") is None:
        raise EnvironmentProblem(
            f"{host.name}: this kernel has no MPTCP (no net.mptcp sysctls; needs CONFIG_MPTCP)"
        )
    pms = read_sysctl(host, "net.mptcp.available_path_managers")
    # net.mptcp.available_schedulers came with the BPF scheduler work (6.8); before it the
    # only scheduler was the built-in one, called "default" once names existed.
    scheds = read_sysctl(host, "net.mptcp.available_schedulers")
    available = read_sysctl(host, "net.ipv4.tcp_available_congestion_control") or ""
    allowed = read_sysctl(host, "net.ipv4.tcp_allowed_congestion_control") or ""
    return KernelCapabilities(
        path_managers=tuple(pms.split()) if pms is not None else tuple(_LEGACY_PM_TYPES),
        path_manager_by_name=pms is not None,
        schedulers=tuple(scheds.split()) if scheds is not None else ("default",),
        congestion_available=tuple(available.split()),
        congestion_allowed=tuple(allowed.split()),
    )


def _check_choice(host: HostExec, what: str, name: str, available: Sequence[str]) -> None:
    if name not in available:
        raise ParameterError(
            f"{host.name}: {what} {name!r} is not available in this kernel; "
            f"available: {', '.join(available) or '(none)'}"
        )


def set_congestion(host: HostExec, name: str, caps: KernelCapabilities) -> bool:
    """Make `name` the namespace's default congestion control if the kernel lets a
    non-initial namespace choose it; return False when only the per-socket setting (the
    workload's --congestion, TCP_CONGESTION as root) can select it.

    Measured on kernel 6.18: with the namespace default left at bbr, a socket set to cubic
    has every MPTCP subflow on cubic, on both ends, the joined ones included (`ss -ti`),
    so the per-socket path is a full substitute; the namespace default only matters for
    programs that do not set it themselves (iperf3, ping-pong tools).
    """
    _check_choice(host, "congestion control", name, caps.congestion_available)
    if name not in caps.congestion_allowed:
        # Adding it to net.ipv4.tcp_allowed_congestion_control would be a system-wide change
        # (that list is global), which a testbed host must not make.
        return False
    write_sysctl(host, "net.ipv4.tcp_congestion_control", name)
    return True


# tcp_rmem's first value, the floor under memory pressure: the kernel's own default.
_RMEM_MIN = 4096


def set_receive_buffer(host: HostExec, rcvbuf_bytes: int | None) -> list[str]:
    """Fix the receive buffer of new sockets in `host`'s namespace (notes for the records).

    Linux sizes a TCP socket's and an MPTCP connection's receive buffer from the namespace's
    net.ipv4.tcp_rmem: sk_rcvbuf starts at its default and, while tcp_moderate_rcvbuf is on,
    grows up to its max (tcp_rcv_space_adjust; mptcp_rcvbuf_grow for the MPTCP socket, the
    connection-level buffer, in net/mptcp/protocol.c). Default = max = N with moderation off
    keeps it at N. The kernel counts memory (each packet's truesize), not payload, so the
    window it announces is a fraction of N (its scaling_ratio, about half to two thirds).
    Both sysctls are per namespace; a host that shares the runner's namespace is refused, so
    nothing system-wide changes."""
    if rcvbuf_bytes is None:
        return []
    try:
        theirs = host.run(["readlink", "/proc/self/ns/net"]).strip()
    except TestbedError as exc:
        raise EnvironmentProblem(f"{host.name}: cannot read its network namespace: {exc}") \
            from None
    if theirs == os.readlink("/proc/self/ns/net"):
        raise EnvironmentProblem(
            f"{host.name}: shares the initial network namespace; setting tcp_rmem there "
            "would change the whole system")
    write_sysctl(host, "net.ipv4.tcp_rmem",
                 f"{min(_RMEM_MIN, rcvbuf_bytes)} {rcvbuf_bytes} {rcvbuf_bytes}")
    write_sysctl(host, "net.ipv4.tcp_moderate_rcvbuf", "0")
    return [f"receive buffer fixed at {rcvbuf_bytes} bytes (net.ipv4.tcp_rmem, "
            "tcp_moderate_rcvbuf=0)"]


def check_kernel_config(config: StackConfig) -> None:
    """ParameterError for what only our stack offers (nothing is read from the host)."""
    if config.opportunistic:
        raise ParameterError(
            "kernel stack: opportunistic retransmission is a switch of our stack only "
            "(Linux MPTCP has no such knob); use --stack userspace or opportunistic=0")


def endpoint_id(listing: str, address: str) -> int | None:
    """The id of `address` in `ip mptcp endpoint show` output, None if it has no endpoint."""
    for line in listing.splitlines():
        words = line.split()
        if words and words[0] == address and "id" in words:
            return int(words[words.index("id") + 1])
    return None


def plain_tcp_sockets(ss_output: str) -> list[tuple[str, str]]:
    """(local, peer) of the established TCP sockets in `ss -tniH` output that are not MPTCP
    subflows (a subflow's info line names its upper layer protocol: tcp-ulp-mptcp). The
    listing must not filter by state: ss then leaves the State column out."""
    sockets: list[tuple[list[str], str]] = []
    for line in ss_output.splitlines():
        if line[:1].isspace() and sockets:
            sockets[-1] = (sockets[-1][0], sockets[-1][1] + line)
        elif line.strip():
            sockets.append((line.split(), ""))
    return [(words[3], words[4]) for words, info in sockets
            if len(words) >= 5 and words[0] == "ESTAB" and "tcp-ulp-mptcp" not in info]


@dataclass(frozen=True)
class KernelPathControl:
    """The kernel's path manager through `ip mptcp endpoint` (and `ss` for plain TCP)."""

    host: HostExec

    def _id(self, addr: str) -> int | None:
        return endpoint_id(self.host.run(["ip", "mptcp", "endpoint", "show"]), addr)

    def add_endpoint(self, addr: str, dev: str, flags: Sequence[str]) -> None:
        if self._id(addr) is None:
            self.host.run(["ip", "mptcp", "endpoint", "add", addr, "dev", dev, *flags])

    def set_backup(self, addr: str, backup: bool) -> None:
        found = self._id(addr)
        if found is not None:  # MP_PRIO on every subflow from that address
            self.host.run(["ip", "mptcp", "endpoint", "change", "id", str(found),
                           "backup" if backup else "nobackup"])

    def withdraw_address(self, addr: str, destroy_tcp: bool = True) -> None:
        found = self._id(addr)
        argv = ["id", str(found)] if found is not None else ["id", "0", addr]
        try:
            self.host.run(["ip", "mptcp", "endpoint", "delete", *argv])
        except TestbedError:
            if found is not None:
                raise
            # No MPTCP connection started from this address (plain TCP): nothing to withdraw.
        if not destroy_tcp:
            return
        for local, peer in plain_tcp_sockets(self.host.run(["ss", "-tniH", "src", addr])):
            self.host.run(["ss", "-K", "-tnH", "state", "established", "src", local,
                           "dst", peer])

    def has_subflow_from(self, addr: str) -> bool:
        return bool(self.host.run(["ss", "-tnH", "state", "established", "src", addr]).strip())


@dataclass(frozen=True)
class KernelMptcpStack:
    """Linux MPTCP: the in-kernel path manager/scheduler chosen by name, limits, endpoints."""

    name: str = "kernel"
    workload_proto: WorkloadProto = "mptcp"

    def prepare(
        self, host: HostExec, endpoints: Sequence[Endpoint], config: StackConfig
    ) -> PreparedHost:
        check_kernel_config(config)
        caps = kernel_capabilities(host)
        # Validate every name before changing anything, so a typo leaves the host untouched.
        _check_choice(host, "MPTCP path manager", config.path_manager, caps.path_managers)
        _check_choice(host, "MPTCP scheduler", config.scheduler, caps.schedulers)
        _check_choice(host, "congestion control", config.congestion, caps.congestion_available)

        write_sysctl(host, "net.mptcp.enabled", "1")
        write_sysctl(host, "net.mptcp.checksum_enabled", "1" if config.checksum else "0")
        if caps.path_manager_by_name:
            write_sysctl(host, "net.mptcp.path_manager", config.path_manager)
        else:
            write_sysctl(host, "net.mptcp.pm_type", _LEGACY_PM_TYPES[config.path_manager])
        if read_sysctl(host, "net.mptcp.scheduler") is not None:
            write_sysctl(host, "net.mptcp.scheduler", config.scheduler)

        host.run(
            [
                "ip", "mptcp", "limits", "set",
                "subflows", str(config.subflows),
                "add_addr_accepted", str(config.add_addr_accepted),
            ]
        )  # fmt: skip
        # Flush first: endpoints are per namespace and survive between runs on a long-lived
        # host, and a stale one would silently add a path.
        host.run(["ip", "mptcp", "endpoint", "flush"])
        for ep in endpoints:
            host.run(["ip", "mptcp", "endpoint", "add", ep.addr, "dev", ep.dev, *sorted(ep.flags)])

        notes: list[str] = []
        if config.path_manager == "userspace" and endpoints:
            notes.append("userspace path manager: endpoints are only used by a PM daemon")
        return _prepared_kernel_host(host, self.name, self.workload_proto, config, caps, notes)

    def path_control(self, host: HostExec, prepared: PreparedHost) -> PathControl:
        return KernelPathControl(host)


def _prepared_kernel_host(host: HostExec, stack: str, proto: WorkloadProto,
                          config: StackConfig, caps: KernelCapabilities,
                          notes: list[str]) -> PreparedHost:
    """The host's congestion control (system-wide where allowed, else per socket) and
    receive buffer set for a kernel stack (MPTCP or plain TCP), and what the run records."""
    per_socket_only = not set_congestion(host, config.congestion, caps)
    if per_socket_only:
        notes.append(f"{config.congestion} is not in net.ipv4.tcp_allowed_congestion_control: "
                     "selected per socket by the workload only")
    notes += set_receive_buffer(host, config.rcvbuf_bytes)
    return PreparedHost(host=host.name, stack=stack, workload_proto=proto,
                        congestion=config.congestion,
                        congestion_per_socket_only=per_socket_only, notes=notes)


@dataclass(frozen=True)
class PlainTcpStack:
    """Plain TCP baseline: the workload opens IPPROTO_TCP sockets; MPTCP is left as it is
    (not disabled) because a TCP socket never uses it."""

    name: str = "tcp"
    workload_proto: WorkloadProto = "tcp"

    def prepare(
        self, host: HostExec, endpoints: Sequence[Endpoint], config: StackConfig
    ) -> PreparedHost:
        available = (read_sysctl(host, "net.ipv4.tcp_available_congestion_control") or "").split()
        allowed = (read_sysctl(host, "net.ipv4.tcp_allowed_congestion_control") or "").split()
        caps = KernelCapabilities((), False, (), tuple(available), tuple(allowed))
        notes = ["plain TCP: MPTCP endpoints are ignored"] if endpoints else []
        return _prepared_kernel_host(host, self.name, self.workload_proto, config, caps, notes)

    def path_control(self, host: HostExec, prepared: PreparedHost) -> PathControl:
        return KernelPathControl(host)  # withdrawing destroys plain TCP sockets


KERNEL = register_stack(KernelMptcpStack())
TCP = register_stack(PlainTcpStack())
