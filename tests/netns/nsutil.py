"""Network-namespace plumbing for the tests in this folder.

Bare namespaces are held by `unshare --net sleep infinity` processes rather than named netns
files: teardown is killing those processes, and a namespace goes, with its veths, addresses
and routes, when its last process does. Commands run inside one through nsenter. Mininet
emulations (`emulated`) and whole experiments (`run_experiment`) have their helpers here too.

Leftovers are looked for in two scopes: the whole machine (`machine_leftovers`, right on a CI
machine of its own) and what one test created (`left_behind`, right where other people's runs
share the machine).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testbed.emu.cleanup import STATE_DIR, ProcessRecord, RunRecord
from testbed.errors import TestbedError

if TYPE_CHECKING:  # Mininet is imported only by the tests that emulate (see `emulated`)
    from mininet.topo import Topo

    from testbed.emu.network import Emulation

# --------------------------------------------------------------------------------------------
# Namespaces, and commands inside them


def nsenter(pid: int, argv: Sequence[str]) -> list[str]:
    """`argv` run inside the network namespace of process `pid`."""
    return ["nsenter", f"--net=/proc/{pid}/ns/net", *argv]


@dataclass(frozen=True)
class NsHost:
    """The network namespace of process `pid`, as the HostExec that stack drivers take."""

    name: str
    pid: int

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(nsenter(self.pid, argv), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise TestbedError(f"{self.name}: {' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(nsenter(self.pid, argv), **kwargs)


def _holder() -> subprocess.Popen[bytes]:
    """A `sleep infinity` in a new network namespace, returned once it is in there (unshare
    execs sleep after entering it)."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    home = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != home:
                return proc
        except FileNotFoundError:
            break  # unshare died
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise RuntimeError("unshare did not enter a new network namespace")


@contextmanager
def namespaces(*names: str) -> Iterator[list[NsHost]]:
    """A new network namespace per name, gone with everything in it when the block ends."""
    holders: list[subprocess.Popen[bytes]] = []
    try:
        for _ in names:
            holders.append(_holder())
        yield [NsHost(name, holder.pid) for name, holder in zip(names, holders, strict=True)]
    finally:
        for holder in holders:
            holder.kill()
            holder.wait(timeout=10)


@contextmanager
def reaped(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """`proc`, killed at the end of the block if it is still running then."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# Wiring: veth paths, source routing, MPTCP


def veth_path(a: NsHost, a_if: str, a_addr: str, b: NsHost, b_if: str, b_addr: str, *,
              offloads: bool = True) -> None:
    """A veth pair from `a` to `b`, each end with its /24 address and up.

    Both ends are made straight inside the namespaces: nothing ever exists in ours (no name to
    clash with another run's) and the pair dies with them. Without `offloads`, TSO, GSO and
    GRO are off, so that every captured frame is one wire segment."""
    made = subprocess.run(["ip", "link", "add", a_if, "netns", str(a.pid), "type", "veth",
                           "peer", "name", b_if, "netns", str(b.pid)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise TestbedError(f"veth {a_if}-{b_if}: {made.stderr.strip()}")
    for host, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        host.run(["ip", "addr", "add", f"{addr}/24", "dev", ifname])
        host.run(["ip", "link", "set", ifname, "up"])
        if not offloads:
            host.run(["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"])


def source_route(host: NsHost, src: str, table: int, via: str, dev: str,
                 to: str = "default") -> None:
    """Packets from `src` look up `table`, where `to` is reached via `via` on `dev`.

    Without it a subflow from a second address would leave by the first path's connected
    route, and the second path would carry nothing."""
    host.run(["ip", "rule", "add", "from", src, "table", str(table)])
    host.run(["ip", "route", "add", to, "via", via, "dev", dev, "table", str(table)])


def mptcp_limits(host: NsHost, subflows: int, add_addr_accepted: int) -> None:
    host.run(["ip", "mptcp", "limits", "set", "subflows", str(subflows),
              "add_addr_accepted", str(add_addr_accepted)])


def mptcp_endpoint(host: NsHost, addr: str, *flags: str, dev: str | None = None,
                   id: int | None = None) -> None:
    """`ip mptcp endpoint add addr [dev DEV] [id ID] FLAGS...` (flags: subflow, signal...)."""
    argv = ["ip", "mptcp", "endpoint", "add", addr]
    if dev is not None:
        argv += ["dev", dev]
    if id is not None:
        argv += ["id", str(id)]
    host.run([*argv, *flags])


def mptcp_two_paths(client: NsHost, server: NsHost, client_addrs: Sequence[str],
                    server_addrs: Sequence[str], ifnames: Sequence[tuple[str, str]],
                    route_to: str = "default") -> list[str]:
    """Client and server joined by two veth paths, the i-th named `ifnames[i]` (client's,
    server's) and addressed `client_addrs[i]`, `server_addrs[i]`, for capturing kernel MPTCP:
    offloads off, loopbacks up, limits of 2 subflows and 2 accepted addresses, and the
    client's second address a subflow endpoint, source-routed over path 2 (table 102) towards
    `route_to`. Returns the client's interfaces."""
    for (cif, sif), caddr, saddr in zip(ifnames, client_addrs, server_addrs, strict=True):
        veth_path(client, cif, caddr, server, sif, saddr, offloads=False)
    for host in (client, server):
        host.run(["ip", "link", "set", "lo", "up"])
        mptcp_limits(host, subflows=2, add_addr_accepted=2)
    client_if2 = ifnames[1][0]
    source_route(client, client_addrs[1], 102, via=server_addrs[1], dev=client_if2, to=route_to)
    mptcp_endpoint(client, client_addrs[1], "subflow", dev=client_if2)
    return [cif for cif, _ in ifnames]


@contextmanager
def tcpdump(host: NsHost, captures: Sequence[tuple[str, Path]], snaplen: int) -> Iterator[None]:
    """TCP captured on each (interface, pcap) of `host` while the block runs.

    Every capture is armed before the block starts, and stopped with SIGINT after it so that
    its pcap is complete; killed instead when the block raised. Immediate mode: without it
    libpcap hands packets over in blocks (or after a 1 s timeout), and a quiet interface's
    block is lost when tcpdump is stopped."""
    dumps: list[subprocess.Popen[bytes]] = []
    try:
        for ifname, pcap in captures:
            dumps.append(host.popen(["tcpdump", "-i", ifname, "-s", str(snaplen), "-Z", "root",
                                     "-U", "--immediate-mode", "-w", str(pcap), "tcp"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for dump in dumps:  # tcpdump says "listening on" once the capture is armed
            assert dump.stderr is not None
            dump.stderr.readline()
        yield
        for dump in dumps:
            dump.send_signal(signal.SIGINT)
            dump.communicate(timeout=10)
    finally:
        for dump in dumps:
            if dump.poll() is None:
                dump.kill()
                dump.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# Emulations under a run record of their own


@contextmanager
def emulated(topo: Topo, seed: int, run_prefix: str = "test") -> Iterator[Emulation]:
    """`topo` emulated with the userspace link backend, recorded for cleanup as a run owned
    by this pytest process; stopped, and its record removed, when the block ends."""
    from testbed.emu.network import Emulation

    record = RunRecord(f"{run_prefix}-{secrets.token_hex(3)}",
                       ProcessRecord.of(os.getpid(), "pytest"))
    emu = Emulation(topo, "userspace", seed=seed, record=record)
    try:
        emu.start()
        yield emu
    finally:
        emu.stop()
        record.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Experiments end to end through `testbed run`


def run_experiment(experiment: str, stack: str, out: Path, *args: str,
                   sets: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`testbed run EXPERIMENT --stack STACK --out OUT ARGS... --set S...`, to its end (two
    minutes at most); whatever its exit status, it must not have crashed."""
    argv = [sys.executable, "-m", "testbed.cli", "run", experiment, "--stack", stack,
            "--out", str(out), *args]
    for item in sets:
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


# --------------------------------------------------------------------------------------------
# Leftovers: the whole machine's, or one test's


def _processes() -> Iterator[tuple[str, int, str]]:
    """(pid, network namespace inode, command line) of every process that can be read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            inode = os.stat(f"/proc/{entry}/ns/net").st_ino
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        yield entry, inode, cmdline.decode(errors="replace").strip()


def root_links(*prefixes: str) -> list[str]:
    """Interfaces of this (the root) namespace whose names start with one of `prefixes`."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    names = re.findall(r"^\d+: ([^:@]+)", links, flags=re.M)
    return [name for name in names if name.startswith(prefixes)]


def machine_leftovers() -> list[str]:
    """Every emulation on the machine: processes in network namespaces other than the root
    one (Mininet shells, workloads, tcpdump, the shaper's TAPs' namespaces), the shaper, and
    the two-path topology's interfaces in the root namespace. Other people's runs count too."""
    root = os.stat("/proc/self/ns/net").st_ino
    found = [f"{pid} {cmdline}" for pid, inode, cmdline in _processes()
             if inode != root or "testbed.emu.shaper" in cmdline]
    return sorted(found) + root_links("client-", "router-", "server-")


@contextmanager
def machine_unchanged() -> Iterator[None]:
    """The block leaves the machine's leftovers as it found them (a failed block is not
    checked: its own error says more)."""
    before = machine_leftovers()
    yield
    assert machine_leftovers() == before


def left_behind(path: Path, run_id: str | None = None) -> list[str]:
    """What one test left: processes whose command line names `path`, its own directory
    (workloads, samplers, tcpdump and stack daemons all write below it), and, given the
    run's `run_id`, its cleanup record. Other runs on the machine are none of its business."""
    me = str(os.getpid())
    found = [f"{pid} {cmdline}" for pid, _, cmdline in _processes()
             if str(path) in cmdline and pid != me]
    if run_id is not None and (STATE_DIR / f"{run_id}.json").exists():
        found.append(f"cleanup record {STATE_DIR / f'{run_id}.json'}")
    return found
