"""What every stack driver is coded against: the host abstraction, endpoints, the stack
configuration, and the registry that lets experiments choose a stack by name."""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from testbed.errors import ParameterError

WorkloadProto = Literal["mptcp", "tcp", "userspace"]

# The flags `ip mptcp endpoint add` understands (iproute2 6.1; the kernel's MPTCP_PM_ADDR_FLAG_*).
ENDPOINT_FLAGS: frozenset[str] = frozenset({"subflow", "signal", "backup", "fullmesh"})


# A fixed receive buffer's sane range: below 8 KiB not even a few full-sized segments fit
# (the kernel counts each packet's memory, about 2 KiB for 1448 bytes of data); above
# 64 MiB is no longer a small-buffer experiment (Linux's default tcp_rmem max is 6 MiB).
RCVBUF_MIN_BYTES = 8 << 10
RCVBUF_MAX_BYTES = 64 << 20


@runtime_checkable
class HostExec(Protocol):
    """An emulated host that can run an argument list inside its network namespace.

    The emulation layer implements this (a Mininet node, or a bare `nsenter` wrapper in
    tests); stack drivers never learn how the namespace was made.
    """

    name: str

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        """Run to completion and return stdout; with `check`, raise TestbedError (carrying
        stderr) when the command fails."""
        ...

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a long-lived process inside the host; kwargs go to subprocess.Popen."""
        ...


@dataclass(frozen=True)
class Endpoint:
    """One MPTCP endpoint of a host: an address the path manager may use, and how."""

    addr: str
    dev: str
    flags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.flags) - ENDPOINT_FLAGS
        if unknown:
            raise ParameterError(
                f"endpoint {self.addr}: unknown flag(s) {sorted(unknown)}; "
                f"allowed: {sorted(ENDPOINT_FLAGS)}"
            )
        # RFC 8684 §3.3.8 lets a host advertise (signal) an address or use it for its own
        # subflows; "fullmesh" only makes sense for the latter (kernel: pm_kernel.c rejects
        # signal+fullmesh with EINVAL), so refuse it here with a message instead.
        if "fullmesh" in self.flags and "signal" in self.flags:
            raise ParameterError(
                f"endpoint {self.addr}: 'fullmesh' cannot be combined with 'signal'"
            )
        # Allow callers to pass any iterable of flags; store an immutable set.
        object.__setattr__(self, "flags", frozenset(self.flags))


@dataclass(frozen=True)
class StackConfig:
    """How a host's stack is set up. Names are validated by the driver against what the
    kernel (or our stack) actually offers, so a typo is an error before anything runs."""

    path_manager: str = "kernel"
    scheduler: str = "default"
    # Set explicitly in every run: the kernel default on the project machines is bbr.
    congestion: str = "cubic"
    subflows: int = 2  # `ip mptcp limits set subflows N`
    add_addr_accepted: int = 2  # `ip mptcp limits set add_addr_accepted N`
    checksum: bool = False  # RFC 8684 §3.3.1 DSS checksum (net.mptcp.checksum_enabled)
    # Opportunistic retransmission and penalisation (Raiciu et al., NSDI 2012): our stack
    # only; the kernel has no such knob and refuses it.
    opportunistic: bool = False
    ndiffports: int = 2  # our `ndiffports` path manager: subflows over the initial pair
    # The receive buffer in bytes, fixed (auto-tuning off); None: the stack's default,
    # auto-tuned. Kernel and plain TCP: net.ipv4.tcp_rmem of the host's namespace with
    # net.ipv4.tcp_moderate_rcvbuf=0; ours: the connection-level buffer (and plain TCP's).
    rcvbuf_bytes: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.ndiffports <= 8:
            raise ParameterError(f"StackConfig.ndiffports={self.ndiffports}: must be within 1..8")
        # The kernel caps both limits at MPTCP_PM_ADDR_MAX (8).
        for name in ("subflows", "add_addr_accepted"):
            value = getattr(self, name)
            if not 0 <= value <= 8:
                raise ParameterError(f"StackConfig.{name}={value}: must be within 0..8")
        for name in ("path_manager", "scheduler", "congestion"):
            if not getattr(self, name):
                raise ParameterError(f"StackConfig.{name} must not be empty")
        if self.rcvbuf_bytes is not None and not (
                RCVBUF_MIN_BYTES <= self.rcvbuf_bytes <= RCVBUF_MAX_BYTES):
            raise ParameterError(
                f"receive buffer {self.rcvbuf_bytes} bytes ({self.rcvbuf_bytes / 1024:g} KiB) "
                f"is out of range: rcvbuf_kib must be within {RCVBUF_MIN_BYTES >> 10}.."
                f"{RCVBUF_MAX_BYTES >> 10}, or none for the stack's auto-tuned default")


@dataclass(frozen=True)
class PreparedHost:
    """What a driver did to a host, and how the workload on it must be started."""

    host: str
    stack: str
    workload_proto: WorkloadProto
    congestion: str
    # True when the namespace default could not be set (not in the kernel's allowed list):
    # then only the per-socket TCP_CONGESTION the workload sets makes the choice effective.
    congestion_per_socket_only: bool = False
    notes: list[str] = field(default_factory=list)

    def workload_args(self) -> list[str]:
        """Arguments for `python -m testbed.workload` that make the choice effective."""
        return ["--proto", self.workload_proto, "--congestion", self.congestion]


class PathControl(Protocol):
    """What a host's connection manager (a phone's, a hypervisor's) does to the MPTCP path
    manager while a run goes on, whichever stack the host runs: the kernel's through
    `ip mptcp`, ours through its daemon's control socket. Addresses are dotted strings."""

    def add_endpoint(self, addr: str, dev: str, flags: Sequence[str]) -> None:
        """`ip mptcp endpoint add ADDR dev DEV FLAGS`: joins (subflow), ADD_ADDR (signal)."""
        ...

    def set_backup(self, addr: str, backup: bool) -> None:
        """The endpoint of `addr` becomes (no longer) backup: MP_PRIO on its subflows."""
        ...

    def withdraw_address(self, addr: str, destroy_tcp: bool = True) -> None:
        """`addr` is gone: its endpoint deleted (id 0 for the initial subflow's address,
        which has none), REMOVE_ADDR sent, its subflows closed; with `destroy_tcp`, plain TCP
        connections from it are destroyed (SOCK_DESTROY, as Android does)."""
        ...

    def has_subflow_from(self, addr: str) -> bool:
        """Whether an established subflow (or TCP connection) leaves from `addr`."""
        ...


class StackDriver(Protocol):
    """A way to set up a network stack on a host; registered by name."""

    @property
    def name(self) -> str: ...

    @property
    def workload_proto(self) -> WorkloadProto: ...

    def prepare(
        self, host: HostExec, endpoints: Sequence[Endpoint], config: StackConfig
    ) -> PreparedHost: ...

    def path_control(self, host: HostExec, prepared: PreparedHost) -> PathControl: ...


def path_control(emu: Any, host: str) -> PathControl:
    """The path control of `host` in a running emulation: the one its stack's driver made
    when the runner prepared it (`emu.path_controls`), else the kernel's `ip mptcp`."""
    controls = getattr(emu, "path_controls", None) or {}
    if host in controls:
        return controls[host]  # type: ignore[no-any-return]
    from testbed.stacks.kernel import KernelPathControl

    return KernelPathControl(emu.host(host))


_REGISTRY: dict[str, StackDriver] = {}

# Built-in drivers live in modules that import this one; load them on first lookup so that
# `get_stack("kernel")` works without the caller importing testbed.stacks.kernel itself.
_BUILTIN_MODULES: dict[str, str] = {
    "kernel": "testbed.stacks.kernel",
    "tcp": "testbed.stacks.kernel",
    "userspace": "testbed.stacks.userspace",
}


def register_stack(driver: StackDriver, *, replace: bool = False) -> StackDriver:
    """Make `driver` available under `driver.name`; a second registration is a bug unless
    `replace` is given (tests swap drivers that way)."""
    if driver.name in _REGISTRY and not replace and _REGISTRY[driver.name] is not driver:
        raise ParameterError(f"stack {driver.name!r} is already registered")
    _REGISTRY[driver.name] = driver
    return driver


def get_stack(name: str) -> StackDriver:
    """The driver registered as `name`; a clear error lists the known names otherwise."""
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(
            f"unknown stack {name!r}; available: {', '.join(available_stacks())}"
        ) from None


def available_stacks() -> list[str]:
    """Names of all stacks, built-in ones included even before they are imported."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))
