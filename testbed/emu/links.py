"""Shaped links: one Mininet link type whose two directions are shaped by a pluggable backend.

Backends share the semantics of `testbed.emu.linkparams.Shaping`. `netem` shapes the egress of
each end of a veth pair in the kernel; `userspace` replaces the veth pair by two TAP devices
joined by the shaper process, for kernels without sch_netem. A parameter a backend cannot apply
raises `BackendUnsupported`: it is never dropped silently, unlike Mininet's TCLink.
"""

from __future__ import annotations

import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from mininet.link import Intf, Link
from mininet.node import Node

from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.netem import NetemShaper
from testbed.emu.shaper.client import ShaperProcess, TapEnd
from testbed.errors import BackendUnsupported, ParameterError

BACKENDS = ("auto", "netem", "userspace")
DIRECTIONS = ("a2b", "b2a")


class ShapedLink(Link):
    """A Mininet link with per-direction shaping; `shaping=None` makes a plain veth pair.

    `a2b` shapes frames sent by the first node (`intf1`) towards the second node (`intf2`).
    """

    def __init__(
        self,
        node1: Node,
        node2: Node,
        shaping: LinkShaping | None = None,
        backend: LinkBackend | None = None,
        link_name: str | None = None,
        **params: Any,
    ) -> None:
        self.link_name = link_name
        if shaping is not None and backend is None:
            raise ParameterError("a shaped link needs a backend")
        self.shaping = shaping
        self.backend = backend if shaping is not None else None
        self.down = False
        if self.backend is not None and shaping is not None:
            self.backend.check(shaping)
        super().__init__(node1, node2, **params)
        if self.backend is not None and shaping is not None:
            self.backend.attached(self, shaping)

    @property
    def name(self) -> str:
        return f"{self.intf1.name}~{self.intf2.name}"

    def makeIntfPair(  # Mininet's name
        self,
        intfname1: str,
        intfname2: str,
        addr1: str | None = None,
        addr2: str | None = None,
        node1: Node | None = None,
        node2: Node | None = None,
        deleteIntfs: bool = True,
    ) -> Any:
        if self.backend is not None and self.backend.owns_interfaces:
            assert node1 is not None and node2 is not None and self.shaping is not None
            return self.backend.make_pair(
                f"{intfname1}~{intfname2}", TapEnd(node1.pid, intfname1, addr1),
                TapEnd(node2.pid, intfname2, addr2), self.shaping,
            )
        return super().makeIntfPair(intfname1, intfname2, addr1, addr2, node1, node2,
                                    deleteIntfs=deleteIntfs)

    def intf_for(self, direction: str) -> Intf:
        """The interface whose egress a direction leaves through."""
        if direction not in DIRECTIONS:
            raise ParameterError(f"link direction must be one of {DIRECTIONS}, got {direction!r}")
        return self.intf1 if direction == "a2b" else self.intf2

    def set_shaping(self, direction: str, shaping: Shaping) -> None:
        """Change one direction ('a2b', 'b2a' or 'both'); frames already queued are kept."""
        if self.backend is None or self.shaping is None:
            raise ParameterError(f"link {self.name} was created without shaping")
        directions = DIRECTIONS if direction == "both" else (direction,)
        self.backend.check(LinkShaping(shaping, shaping))
        for one in directions:
            self.intf_for(one)  # validates the name
            self.backend.change(self, one, shaping)
            self.shaping = (LinkShaping(shaping, self.shaping.b2a) if one == "a2b"
                            else LinkShaping(self.shaping.a2b, shaping))

    def set_down(self, down: bool) -> None:
        """Link down/up: both interfaces administratively down, frames in flight lost."""
        for intf in (self.intf1, self.intf2):
            intf.node.run(["ip", "link", "set", "dev", intf.name, "down" if down else "up"])
        if self.backend is not None:
            self.backend.set_down(self, down)
        self.down = down
        if not down:
            # The kernel dropped the routes through these interfaces when they went down.
            for node in (self.intf1.node, self.intf2.node):
                if getattr(node, "gateways", None) is not None:
                    node.setup_routing()

    def delete(self) -> None:
        if self.backend is not None and self.backend.owns_interfaces:
            self.backend.remove(self)
            for intf in (self.intf1, self.intf2):
                intf.node.delIntf(intf)
            return
        super().delete()


class LinkBackend(ABC):
    """How the two directions of a ShapedLink are shaped."""

    name: ClassVar[str]
    # True when the backend creates the interfaces itself (instead of a veth pair).
    owns_interfaces: ClassVar[bool] = False

    def check(self, shaping: LinkShaping) -> None:  # noqa: B027 (optional hook)
        """Refuse parameters this backend cannot apply, before anything is created."""

    def make_pair(self, name: str, a: TapEnd, b: TapEnd, shaping: LinkShaping) -> None:
        raise NotImplementedError

    @abstractmethod
    def attached(self, link: ShapedLink, shaping: LinkShaping) -> None:
        """The link's interfaces exist: apply the initial shaping."""

    @abstractmethod
    def change(self, link: ShapedLink, direction: str, shaping: Shaping) -> None: ...

    def set_down(self, link: ShapedLink, down: bool) -> None:  # noqa: B027
        """Hook for backends that hold frames outside the kernel."""

    def remove(self, link: ShapedLink) -> None:  # noqa: B027
        """Hook for backends that own the link's interfaces."""

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:  # noqa: B027
        """Release what the backend holds (processes, descriptors)."""


class NetemBackend(LinkBackend):
    """Kernel shaping on the egress of each veth end: netem (loss, delay, jitter) + tbf (rate)."""

    name = "netem"

    def check(self, shaping: LinkShaping) -> None:
        for direction in (shaping.a2b, shaping.b2a):
            NetemShaper.check(direction)

    def attached(self, link: ShapedLink, shaping: LinkShaping) -> None:
        for direction in DIRECTIONS:
            intf = link.intf_for(direction)
            NetemShaper(intf.node.netns_path, intf.name).apply(shaping.direction(direction),
                                                              create=True)

    def change(self, link: ShapedLink, direction: str, shaping: Shaping) -> None:
        intf = link.intf_for(direction)
        previous = link.shaping.direction(direction) if link.shaping is not None else None
        NetemShaper(intf.node.netns_path, intf.name).apply(shaping, create=False,
                                                          previous=previous)


class UserspaceBackend(LinkBackend):
    """TAP devices joined by one shaper process for the whole network (started on first use)."""

    name = "userspace"
    owns_interfaces = True

    def __init__(self, seed: int, log_path: Path | None = None) -> None:
        self.seed = seed
        self.log_path = log_path
        self.process: ShaperProcess | None = None

    def _shaper(self) -> ShaperProcess:
        if self.process is None:
            self.process = ShaperProcess()
            self.process.start(seed=self.seed, log_path=self.log_path)
        return self.process

    def make_pair(self, name: str, a: TapEnd, b: TapEnd, shaping: LinkShaping) -> None:
        self._shaper().add_link(name, a, b, shaping)

    def attached(self, link: ShapedLink, shaping: LinkShaping) -> None:
        pass  # the shaper got its parameters with the TAP pair

    def change(self, link: ShapedLink, direction: str, shaping: Shaping) -> None:
        self._shaper().set(link.name, direction, shaping)

    def set_down(self, link: ShapedLink, down: bool) -> None:
        self._shaper().set_down(link.name, down)

    def remove(self, link: ShapedLink) -> None:
        if self.process is not None:
            self.process.remove_link(link.name)

    def stats(self) -> dict[str, Any]:
        return self.process.stats() if self.process is not None else {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def kernel_has_netem() -> bool:
    """Probe once, in a throwaway network namespace, whether the kernel accepts a netem qdisc."""
    probe = (
        "from pyroute2 import IPRoute\n"
        "with IPRoute() as ip:\n"
        "    ip.link('set', index=1, state='up')\n"
        "    ip.tc('add', 'netem', 1, handle='1:', delay=1000)\n"
    )
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", probe],
                            capture_output=True, timeout=30, check=False)
    return result.returncode == 0


def resolve_backend(name: str) -> str:
    """'auto' becomes 'netem' where the kernel has it and 'userspace' elsewhere."""
    if name not in BACKENDS:
        raise ParameterError(f"link backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        return "netem" if kernel_has_netem() else "userspace"
    if name == "netem" and not kernel_has_netem():
        raise BackendUnsupported(
            "link backend 'netem' asked for, but this kernel has no sch_netem "
            "(on Ubuntu: apt-get install linux-modules-extra-$(uname -r)); "
            "use --link-backend userspace or auto"
        )
    return name


def make_backend(name: str, seed: int, log_path: Path | None = None) -> LinkBackend:
    if name == "netem":
        return NetemBackend()
    if name == "userspace":
        return UserspaceBackend(seed, log_path)
    raise ParameterError(f"unresolved link backend {name!r}; call resolve_backend first")
