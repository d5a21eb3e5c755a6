"""An emulated network: a Mininet built from a topology with shaped links, hosts configured for
MPTCP measurements, every process recorded for cleanup, and a stop that leaves nothing behind."""

from __future__ import annotations

import ipaddress
import os
import select
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.topo import Topo

from testbed.emu.cleanup import RunRecord, sweep
from testbed.emu.links import LinkBackend, ShapedLink, make_backend
from testbed.emu.netns import netlink
from testbed.emu.nodes import MiddleboxHost, Router, TestbedHost
from testbed.errors import EnvironmentProblem, ParameterError, TestbedError

REQUIRED_TOOLS = ("mnexec", "ip", "ethtool", "sysctl", "unshare")
MIDDLEBOX_READY_TIMEOUT_S = 10.0


def require_root(what: str = "the emulated network") -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            f"{what} needs root: it creates network namespaces, veth and TAP devices and "
            "configures routing and MPTCP inside them. Run it with sudo (nothing was created)."
        )


def require_tools(tools: Sequence[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise EnvironmentProblem(
            f"missing tool(s): {', '.join(missing)}; run `make setup` (nothing was created)"
        )


class Emulation:
    """Build, start and stop one emulated network. Use as a context manager."""

    def __init__(self, topo: Topo, backend: str, seed: int, record: RunRecord,
                 shaper_log: Path | None = None, stats_dir: Path | None = None) -> None:
        self.topo = topo
        self.backend_name = backend
        self.backend: LinkBackend = make_backend(backend, seed, shaper_log)
        self.record = record
        self.stats_dir = stats_dir  # where middleboxes write their counters when stopped
        self.net: Mininet | None = None
        self.middleboxes: dict[str, subprocess.Popen[bytes]] = {}
        # Per host, how its connection manager reaches the MPTCP path manager (the runner
        # sets it once the stacks are prepared: testbed.stacks.base.path_control).
        self.path_controls: dict[str, Any] = {}

    def __enter__(self) -> Emulation:
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ fails: a half-built network (or a Ctrl-C
            # while building) must still be taken down.
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        require_root()
        require_tools(REQUIRED_TOOLS)
        setLogLevel("error")
        self.net = Mininet(
            topo=None, controller=None, host=TestbedHost,
            link=partial(ShapedLink, backend=self.backend),
            build=False, cleanup=False, autoSetMacs=False, waitConnected=False,
        )
        net = self.net
        # Hosts first, recorded as soon as their shell exists, so that a failure while the
        # links are being made still leaves a record complete enough to clean up from.
        for name in self.topo.nodes():
            params = dict(self.topo.nodeInfo(name))
            params.setdefault("ip", None)  # addresses come with the links, not Mininet's 10/8
            host = net.addHost(name, **params)
            self.record.add_process(host.pid, f"host shell {name}", holds_netns=True)
        for src, dst, params in self.topo.links(sort=True, withKeys=False, withInfo=True):
            params = dict(params)
            net.addLink(params.pop("node1", src), params.pop("node2", dst), **params)
        shaper_pid = getattr(self.backend, "pid", None)
        if shaper_pid is not None:
            self.record.add_process(shaper_pid, "userspace link shaper")
        net.build()
        for host in self.hosts():
            host.prepare_interfaces()
        for host in self.hosts():
            if isinstance(host, Router):
                host.install_routes()
            else:
                host.setup_routing(self.gateways(host))
        self._route_between_routers()
        net.start()
        for host in self.hosts():
            if isinstance(host, MiddleboxHost):
                self._start_middlebox(host)

    def _start_middlebox(self, host: MiddleboxHost) -> None:
        side_a, side_b = host.sides()
        argv = [sys.executable, "-m", "testbed.emu.middlebox.daemon", "--a", side_a,
                "--b", side_b]
        for spec in host.transforms():
            argv += ["--transform", spec]
        if self.stats_dir is not None:
            argv += ["--stats", str(self.stats_dir / f"middlebox-{host.name}.json")]
        proc = self.popen(host, argv, "middlebox", stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]))
        self.middleboxes[host.name] = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], MIDDLEBOX_READY_TIMEOUT_S)
        if not ready or proc.stdout.readline().strip() != b"READY":
            proc.kill()
            _, err = proc.communicate()
            raise TestbedError(f"middlebox {host.name} did not start: "
                               f"{err.decode(errors='replace').strip()}")
        proc.stdout.close()

    def _stop_middleboxes(self) -> None:
        """SIGTERM, so that each writes its counters; SIGKILL if it does not exit."""
        for proc in self.middleboxes.values():
            proc.terminate()
        for proc in self.middleboxes.values():
            try:
                proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.middleboxes.clear()

    def _route_between_routers(self) -> None:
        """Static routes where a topology has several routers (see router_routes), unless
        the topology gives its routers their routes itself (`Router` parameter `routes`, as
        the FatTree's ECMP routes): routes along the fewest hops would replace those."""
        routers = [host for host in self.hosts() if isinstance(host, Router)]
        if len(routers) < 2 or any(router.static_routes() for router in routers):
            return
        subnets = {r.name: [str(iface.network) for _, iface in r.addresses()] for r in routers}
        neighbours: dict[str, list[tuple[str, str]]] = {r.name: [] for r in routers}
        for link in self.links():
            a, b = link.intf1, link.intf2
            if isinstance(a.node, Router) and isinstance(b.node, Router) and a.IP() and b.IP():
                neighbours[a.node.name].append((b.node.name, b.IP()))
                neighbours[b.node.name].append((a.node.name, a.IP()))
        for router in routers:
            routes = router_routes(router.name, subnets, neighbours)
            with netlink(router.netns_path) as ns:
                for dst, gateway in routes:
                    ns.route("replace", dst=dst, gateway=gateway)

    def hosts(self) -> list[TestbedHost]:
        assert self.net is not None
        return list(self.net.hosts)

    def host(self, name: str) -> TestbedHost:
        assert self.net is not None
        try:
            return self.net.nameToNode[name]  # type: ignore[no-any-return]
        except KeyError:
            raise ParameterError(f"no host {name!r} in this topology") from None

    def links(self) -> list[ShapedLink]:
        assert self.net is not None
        return list(self.net.links)

    def link(self, name: str) -> ShapedLink:
        """A link by its topology name (`link_name` parameter) or by `intf1~intf2`."""
        for link in self.links():
            if name in (link.link_name, link.name):
                return link
        names = [link.link_name or link.name for link in self.links()]
        raise ParameterError(f"no link {name!r}; links are {', '.join(names)}")

    def gateways(self, host: TestbedHost) -> dict[str, str]:
        """Interface name -> address of the router at the other end of its link."""
        gateways: dict[str, str] = {}
        for link in self.links():
            for mine, other in ((link.intf1, link.intf2), (link.intf2, link.intf1)):
                if mine.node is not host:
                    continue
                other = self._through_middleboxes(other)
                if other is not None and isinstance(other.node, Router) and other.IP():
                    gateways[mine.name] = other.IP()
        return gateways

    @staticmethod
    def _through_middleboxes(intf: Any) -> Any:
        """The interface at the far side of any middleboxes (bumps in the wire) from `intf`,
        which is the one a host's link reaches first; None if that side ends nowhere."""
        seen = 0
        while isinstance(intf.node, MiddleboxHost) and seen < 16:
            seen += 1
            onward = [i for i in intf.node.intfList() if i.name != "lo" and i is not intf]
            if len(onward) != 1 or onward[0].link is None:
                return None
            link = onward[0].link
            intf = link.intf2 if link.intf1 is onward[0] else link.intf1
        return intf

    def popen(self, host: TestbedHost, argv: Sequence[str], what: str,
              **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process inside a host, recorded for cleanup."""
        proc: subprocess.Popen[bytes] = host.popen(list(argv), **kwargs)
        self.record.add_process(proc.pid, f"{what} on {host.name}")
        return proc

    def recorded(self, name: str) -> RecordedHost:
        """The host as stack drivers see it (testbed.stacks.base.HostExec): every process a
        driver starts in it (a stack daemon, say) is recorded for cleanup like the runner's."""
        return RecordedHost(self, self.host(name))

    def shaper_stats(self) -> dict[str, Any]:
        return self.backend.stats()

    def stop(self) -> None:
        try:
            self._stop_middleboxes()
            if self.net is not None:
                self.net.stop()
        finally:
            self.net = None
            self.backend.close()
            sweep(self.record)



def router_routes(router: str, subnets: Mapping[str, Sequence[str]],
                  neighbours: Mapping[str, Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    """(subnet, gateway) routes of `router` to every subnet it is not attached to, through the
    first hop of a shortest path over router-to-router links (fewest hops; ties go to the
    neighbour listed first, i.e. the link added first). `subnets`: router -> the networks of
    its interfaces; `neighbours`: router -> (neighbouring router, its address on the shared
    link). A topology with one router needs none: it joins its own subnets."""
    own = {str(ipaddress.ip_network(net, strict=False)) for net in subnets[router]}
    first_hop: dict[str, str] = {}
    queue: deque[str] = deque()
    for neighbour, address in neighbours.get(router, ()):
        if neighbour != router and neighbour not in first_hop:
            first_hop[neighbour] = address
            queue.append(neighbour)
    routes: list[tuple[str, str]] = []
    routed = set(own)
    while queue:
        current = queue.popleft()
        for net in subnets.get(current, ()):
            net = str(ipaddress.ip_network(net, strict=False))
            if net not in routed:
                routed.add(net)
                routes.append((net, first_hop[current]))
        for neighbour, _ in neighbours.get(current, ()):
            if neighbour != router and neighbour not in first_hop:
                first_hop[neighbour] = first_hop[current]
                queue.append(neighbour)
    return routes


class RecordedHost:
    """A host whose popen() records what it starts (the HostExec protocol of stack drivers)."""

    def __init__(self, emulation: Emulation, host: TestbedHost) -> None:
        self.emulation = emulation
        self.host = host
        self.name = host.name

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        return self.host.run(argv, check=check)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return self.emulation.popen(self.host, argv, f"{argv[0]} (stack)", **kwargs)

    @property
    def netns_path(self) -> str:
        return self.host.netns_path
