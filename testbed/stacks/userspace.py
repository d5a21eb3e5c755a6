"""Driver for our own stack (`userspace`): one stack daemon per host (testbed.runtime.daemon)
that becomes the host's IPv4 endpoint, and the workload talking to it through its API. The
daemon speaks MPTCP (falling back to TCP against a plain peer); the host's MPTCP endpoints
become its path manager's addresses as `ip mptcp endpoint` flags would for the kernel's.

The host's interfaces keep their MACs but lose their IPv4 addresses while the daemon runs,
so the kernel neither answers ARP for them nor resets our connections; the daemon reads and
writes frames on those interfaces itself. `release()` stops the daemon and gives the
addresses (and default routes) back to the kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import ParameterError, TestbedError
from testbed.stacks.base import (
    Endpoint,
    HostExec,
    PathControl,
    PreparedHost,
    StackConfig,
    WorkloadProto,
    register_stack,
)

CONTROL_DIR = Path("/run/mptcp-testbed")
READY_TIMEOUT_S = 10.0
# The workload's protocol name for our stack (`python -m testbed.workload --proto userspace`).
USERSPACE_PROTO: WorkloadProto = "userspace"

_ADDR_RE = re.compile(r"^\d+:\s+(\S+)\s+inet\s+(\d+\.\d+\.\d+\.\d+/\d+)")
_DEFAULT_RE = re.compile(r"^default via (\S+) dev (\S+)(?:.*\bmetric (\d+))?")


@dataclass(frozen=True)
class HostAddress:
    """An address the driver took from the kernel, and the default route through it."""

    dev: str
    addr: str  # ADDR/PREFIX
    gateway: str | None = None
    metric: int | None = None

    def iface_arg(self) -> str:
        return f"{self.dev}={self.addr}" + (f",gw={self.gateway}" if self.gateway else "")


@dataclass(frozen=True)
class UserspacePreparedHost(PreparedHost):
    control_path: str = ""
    log_path: str = ""
    daemon_pid: int = 0
    pcap: str | None = None
    addresses: tuple[HostAddress, ...] = field(default_factory=tuple)

    def workload_args(self) -> list[str]:
        return [*super().workload_args(), "--stack-control", self.control_path]


def host_addresses(host: HostExec) -> list[HostAddress]:
    """The host's IPv4 addresses (lo excluded) and the default route of each interface."""
    gateways: dict[str, tuple[str, int | None]] = {}
    for line in host.run(["ip", "-4", "route", "show", "default"]).splitlines():
        match = _DEFAULT_RE.match(line.strip())
        if match and match.group(2) not in gateways:
            metric = int(match.group(3)) if match.group(3) else None
            gateways[match.group(2)] = (match.group(1), metric)
    found = []
    for line in host.run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        match = _ADDR_RE.match(line)
        if match is None or match.group(1) == "lo":
            continue
        dev = match.group(1)
        gateway, metric = gateways.get(dev, (None, None))
        found.append(HostAddress(dev, match.group(2), gateway, metric))
    # The daemon routes through the first interface with a gateway, as the kernel does
    # through the default route of lowest metric: put that one first (interface order is
    # only the order in which the interfaces were made).
    found.sort(key=lambda a: (a.gateway is None, a.metric is None, a.metric or 0))
    return found


def daemon_choices(config: StackConfig) -> list[str]:
    """The daemon's arguments for `config`; ParameterError (listing what our stack has) for
    a congestion control, scheduler or path manager it does not have. The path managers
    carry the kernel's names where the kernel has them (`kernel`, `userspace`)."""
    from testbed.runtime.daemon import check_choices

    try:
        check_choices(config.congestion, config.scheduler, config.path_manager)
    except ParameterError as exc:
        raise ParameterError(f"userspace stack: {exc}") from None
    argv = ["--congestion", config.congestion, "--scheduler", config.scheduler,
            "--path-manager", config.path_manager, "--ndiffports", str(config.ndiffports)]
    if config.opportunistic:
        argv.append("--opportunistic")
    if config.rcvbuf_bytes is not None:
        argv += ["--receive-buffer", str(config.rcvbuf_bytes)]
    return [*argv, "--checksum"] if config.checksum else argv


@dataclass(frozen=True)
class UserspacePathControl:
    """Our path manager through the daemon's control socket (testbed.runtime.api)."""

    control_path: str

    def add_endpoint(self, addr: str, dev: str, flags: Sequence[str]) -> None:
        from testbed.runtime import api

        if not any(e["addr"] == addr for e in api.endpoint_show(self.control_path)):
            api.endpoint_add(self.control_path, addr, list(flags))

    def set_backup(self, addr: str, backup: bool) -> None:
        from testbed.runtime import api

        if any(e["addr"] == addr for e in api.endpoint_show(self.control_path)):
            api.endpoint_change(self.control_path, addr, backup)

    def withdraw_address(self, addr: str, destroy_tcp: bool = True) -> None:
        """The endpoint of `addr` is deleted if it has one; the address goes down in the
        stack in any case (the initial subflow's address has no endpoint: REMOVE_ADDR of id
        0, as `ip mptcp endpoint delete id 0 ADDR`)."""
        from testbed.runtime import api

        if any(e["addr"] == addr for e in api.endpoint_show(self.control_path)):
            api.endpoint_delete(self.control_path, addr)
        api.address_down(self.control_path, addr)

    def has_subflow_from(self, addr: str) -> bool:
        from testbed.runtime import api

        for record in api.stats(self.control_path).get("connections", []):
            for sf in record.get("stats", {}).get("subflows", []):
                if sf.get("local_addr") == addr and sf.get("fully_established") \
                        and sf.get("state") in ("ESTABLISHED", "CLOSE_WAIT"):
                    return True
        return False


def endpoint_args(endpoints: Sequence[Endpoint]) -> list[str]:
    """`subflow` endpoints: the client joins from them; `signal`: they are announced;
    `backup`: subflows from there are backups (MP_JOIN B bit); `fullmesh`: they also join
    every address the peer announces."""
    argv: list[str] = []
    for endpoint in endpoints:
        if "subflow" in endpoint.flags:
            argv += ["--subflow", endpoint.addr]
        if "backup" in endpoint.flags:
            argv += ["--backup", endpoint.addr]
        if "signal" in endpoint.flags:
            argv += ["--announce", endpoint.addr]
        if "fullmesh" in endpoint.flags:
            argv += ["--fullmesh", endpoint.addr]
    return argv


def _restore(host: HostExec, addresses: Sequence[HostAddress]) -> None:
    for address in addresses:
        host.run(["ip", "addr", "replace", address.addr, "dev", address.dev], check=False)
        if address.gateway:
            metric = ["metric", str(address.metric)] if address.metric is not None else []
            host.run(["ip", "route", "replace", "default", "via", address.gateway,
                      "dev", address.dev, *metric], check=False)


@dataclass(frozen=True)
class UserspaceStack:
    """Our userspace MPTCP (TCP against a plain peer) on every interface of the host."""

    name: str = "userspace"
    workload_proto: WorkloadProto = USERSPACE_PROTO
    control_dir: Path = CONTROL_DIR
    pcap_dir: Path | None = None
    seed: int = 1

    def prepare(
        self, host: HostExec, endpoints: Sequence[Endpoint], config: StackConfig
    ) -> PreparedHost:
        choices = daemon_choices(config)  # refused before the host is touched
        addresses = host_addresses(host)
        if not addresses:
            raise TestbedError(f"{host.name}: no IPv4 address to hand to the userspace stack")
        self.control_dir.mkdir(parents=True, exist_ok=True)
        # Host names repeat across runs (every topology has a "client"): the preparing
        # process's pid keeps two runs at the same time apart.
        control = str(self.control_dir / f"{host.name}-{os.getpid()}.sock")
        pcap = str(self.pcap_dir / f"stack-{host.name}.pcap") if self.pcap_dir else None
        argv = [sys.executable, "-m", "testbed.runtime.daemon", "--control", control,
                "--seed", str(self.seed), *choices, *endpoint_args(endpoints)]
        for address in addresses:
            argv += ["--iface", address.iface_arg()]
        if pcap:
            argv += ["--pcap", pcap]
        # From here on the kernel no longer owns the addresses: removing one also removes its
        # connected and default routes, so the kernel has no route to answer anything with.
        for address in addresses:
            host.run(["ip", "addr", "del", address.addr, "dev", address.dev])
        # stderr to a file, not a pipe: a long-lived daemon must never block on a full pipe.
        log = self.control_dir / f"{host.name}-{os.getpid()}.log"
        try:
            with open(log, "wb") as err:
                proc = host.popen(argv, stdout=subprocess.PIPE, stderr=err,
                                  cwd=str(Path(__file__).resolve().parents[2]))
        except OSError:
            _restore(host, addresses)
            raise
        if not _wait_ready(proc, READY_TIMEOUT_S):
            proc.kill()
            proc.communicate()
            _restore(host, addresses)
            raise TestbedError(f"{host.name}: stack daemon did not start: "
                               f"{log.read_text(errors='replace').strip()}")
        notes = [f"stack daemon pid {proc.pid}, control {control}"]
        notes += [f"MPTCP endpoint {e.addr} ({', '.join(sorted(e.flags)) or 'no flags'})"
                  for e in endpoints]
        return UserspacePreparedHost(
            host=host.name, stack=self.name, workload_proto=self.workload_proto,
            congestion=config.congestion, notes=notes, control_path=control,
            log_path=str(log), daemon_pid=proc.pid, pcap=pcap, addresses=tuple(addresses),
        )

    def path_control(self, host: HostExec, prepared: PreparedHost) -> PathControl:
        if not isinstance(prepared, UserspacePreparedHost):
            raise TestbedError(f"{host.name}: not prepared by the userspace stack")
        return UserspacePathControl(prepared.control_path)

    def release(self, host: HostExec, prepared: UserspacePreparedHost,
                timeout: float = 5.0, keep_log_in: Path | None = None) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and give the addresses back; the daemon's
        log moves to `keep_log_in` (a run's stats/) or is removed with the control socket."""
        stop_process(prepared.daemon_pid, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(prepared.control_path)
        if prepared.log_path:
            with contextlib.suppress(FileNotFoundError):
                if keep_log_in is not None:
                    shutil.move(prepared.log_path, keep_log_in / f"stack-{host.name}.log")
                else:
                    os.unlink(prepared.log_path)
        _restore(host, prepared.addresses)


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not ready:
            return False
        line = proc.stdout.readline()
        if not line:
            return False  # exited
        if line.strip() == b"READY":
            # Nothing more is read from stdout: let it go to /dev/null-like oblivion without
            # ever blocking the daemon on a full pipe.
            proc.stdout.close()
            return True
    return False


def stop_process(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid if not Path(f"/proc/{pid}").exists() else 0
        if done:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


USERSPACE = register_stack(UserspaceStack())
