"""`vm-migration`: a VM serving a long transfer moves to another network domain.

Le & Nahum, INFOCOM 2019 (live migration over the WAN with MPTCP); "Nearby live VM migration
using cloudlets and MPTCP", J. Cloud Computing 2016 ("almost zero downtime"). The VM (the
server) runs in domain A. At `migrate_at_s` it stops there: its link to domain A goes down,
frames in flight are lost. `stop_time_s` later (the stop-and-copy phase of live migration) it
resumes in domain B with a new address. With MPTCP the server announces the new address
(ADD_ADDR, from a `signal` endpoint added once the address exists), the client joins it
(MP_JOIN), and `remove_after_s` after that join the server withdraws the old address
(REMOVE_ADDR of address id 0, the initial subflow's), which also makes Linux reinject the data
lost on the old path. Expected: the gap is about the stop time plus one round
trip of the new path; plain TCP dies, since nothing can tell it the new address.

With our stack on the server (`--server-stack userspace`) the same timeline runs through the
daemon's control socket: the daemon adopts the new address (and its default route) from the
kernel as it appears, announces it once it is a `signal` endpoint, and withdraws the old one
itself once the client's join works (its link went down with domain A); its old subflow
reaches the client out of the new interface as Linux's does (weak host).

How the announcement reaches the client: when the VM resumes, its only subflow is the one from
the old address. Linux (a weak-host stack) routes that subflow's packets, ADD_ADDR included, out
of the new interface with the old source address, and the domains here do no ingress filtering
(BCP 38), so the client hears it; replies to the old address are lost. A domain B that filtered
sources outside its prefix would leave MPTCP unable to learn the new address as well.

The VM is modelled as unreachable during the stop, not frozen: its kernel's timers keep running
(retransmission backoff grows), which a paused guest's would not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mininet.topo import Topo
from pyroute2 import NetlinkError

from experiments.scenario import (
    CommonParams,
    HostEvent,
    LinkEvent,
    RunOutcome,
    Scenario,
    TimelineEvent,
    Workload,
)
from experiments.timeline_metrics import MoveMetrics, move_metrics, nstat_changes, survival
from testbed import stats
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.netns import netlink
from testbed.emu.network import Emulation
from testbed.emu.nodes import TestbedHost
from testbed.errors import ParameterError, TestbedError
from testbed.stacks.base import path_control
from testbed.stacks.kernel import KernelPathControl
from topologies.migration import (
    CLIENT_ADDR,
    GATEWAY_B,
    PREFIX_LEN,
    SERVER_ADDR_A,
    SERVER_ADDR_B,
    SERVER_INTF_B,
    MigrationTopo,
)

# How long the VM's agent waits for the client's join before withdrawing the old address
# anyway; a join takes about 1.5 round trips of the new path.
JOIN_WAIT_S = 2.0
# The kernel counters (nstat) that show the mechanism: announcement, join, removal.
MECHANISM_COUNTERS: tuple[str, ...] = (
    "MPTcpExtAddAddr", "MPTcpExtAddAddrTx", "MPTcpExtEchoAdd", "MPTcpExtEchoAddTx",
    "MPTcpExtRmAddr", "MPTcpExtRmAddrTx", "MPTcpExtRmSubflow",
    "MPTcpExtMPJoinSynRx", "MPTcpExtMPJoinSynAckRx", "MPTcpExtMPJoinAckRx",
    "MPTcpExtMPJoinSynTx",
)  # fmt: skip


@dataclass
class VmMigrationParams(CommonParams):
    """Rates (Mbit/s) and one-way delays (ms) of the client's access and of the two domains'
    links; when the VM moves, how long it stays stopped, and when it withdraws the old address.
    Times are seconds from the start of the workload."""

    client_rate_mbps: float = 50.0
    client_delay_ms: float = 5.0
    rate_a_mbps: float = 10.0  # domain A: a distant data centre
    delay_a_ms: float = 20.0
    rate_b_mbps: float = 20.0  # domain B: a nearby cloudlet, as in the 2016 paper
    delay_b_ms: float = 5.0
    queue_pkts: int | None = None
    migrate_at_s: float = 8.0
    stop_time_s: float = 0.5
    remove_after_s: float = 0.0  # after the join to the new address is seen
    duration_s: float = 20.0
    direction: str = "download"  # the VM usually sends
    # Also how long a side waits without progress before giving up: how long plain TCP takes
    # to be declared dead (the kernel itself would retry for about 15 minutes).
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for link in ("client", "domain_a", "domain_b"):  # Shaping validates every value
            self.shaping(link)
        Workload(direction=self.direction, seconds=self.duration_s)
        for name in ("migrate_at_s", "stop_time_s", "remove_after_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"{name} must be >= 0, got {value!r}")
        if self.migrate_at_s <= 0:
            raise ParameterError("migrate_at_s must be > 0: the transfer has to start in domain A")
        if self.migrate_at_s + self.stop_time_s + self.remove_after_s >= self.duration_s:
            raise ParameterError(
                f"the move (migrate_at_s {self.migrate_at_s} + stop_time_s {self.stop_time_s} + "
                f"remove_after_s {self.remove_after_s}) must end before duration_s "
                f"({self.duration_s}), or there is no 'after' to measure"
            )
        if self.timeout_s < self.duration_s:
            raise ParameterError(
                f"timeout_s ({self.timeout_s}) must be >= duration_s ({self.duration_s}): the "
                "runner stops a run after timeout_s + 10 s"
            )

    def shaping(self, link: str) -> Shaping:
        rate, delay = {
            "client": (self.client_rate_mbps, self.client_delay_ms),
            "domain_a": (self.rate_a_mbps, self.delay_a_ms),
            "domain_b": (self.rate_b_mbps, self.delay_b_ms),
        }[link]
        return Shaping(rate_mbps=rate, delay_ms=delay, queue_pkts=self.queue_pkts)

    @property
    def resume_at_s(self) -> float:
        return self.migrate_at_s + self.stop_time_s

    @property
    def new_path_rtt_s(self) -> float:
        return 2 * (self.client_delay_ms + self.delay_b_ms) / 1000


# -- the two host actions of the timeline -----------------------------------------------------

def resume_in_domain_b(emu: Emulation) -> None:
    """The VM runs again, in domain B: its port there gets the new address and the default
    route, then the address becomes a `signal` endpoint, which makes the kernel path manager
    announce it (ADD_ADDR) on every MPTCP connection. The route comes first: an ADD_ADDR sent
    with no route out is lost and only retransmitted after net.mptcp.add_addr_timeout (120 s)."""
    server = emu.host("server")
    try:
        with netlink(server.netns_path) as ns:
            index = ns.link_lookup(ifname=SERVER_INTF_B)[0]
            ns.link("set", index=index, state="up")
            ns.addr("add", index=index, address=SERVER_ADDR_B, prefixlen=PREFIX_LEN)
            ns.route("replace", dst="0.0.0.0/0", gateway=GATEWAY_B, oif=index)
    except (IndexError, OSError, NetlinkError) as exc:  # NetlinkError is no OSError
        raise TestbedError(f"server: cannot configure {SERVER_INTF_B}: {exc}") from None
    # Our stack's daemon adopts the new address (and its route) from the kernel itself.
    path_control(emu, "server").add_endpoint(SERVER_ADDR_B, SERVER_INTF_B, ["signal"])


def has_subflow_from(server: TestbedHost, address: str) -> bool:
    """Whether the server has an established TCP socket (an MPTCP subflow) from `address`."""
    return KernelPathControl(server).has_subflow_from(address)


@dataclass(frozen=True)
class WithdrawOldAddress:
    """The VM's agent withdraws the old address once the client has joined the new one: it
    deletes the MPTCP endpoint of address id 0, the initial subflow's (RFC 8684 §3.4.2), so the
    kernel sends REMOVE_ADDR and closes the old subflow.

    Waiting for the join matters: Linux reinjects the data lost in flight on the dead subflow
    only when that subflow closes, so until then the receiver holds the new subflow's data
    behind a hole. After `join_wait_s` without a join (plain TCP; a lost ADD_ADDR) the old
    address is withdrawn anyway: it is gone with domain A."""

    after_join_s: float
    join_wait_s: float = JOIN_WAIT_S
    poll_s: float = 0.01

    def __call__(self, emu: Emulation) -> None:
        control = path_control(emu, "server")
        deadline = time.monotonic() + self.join_wait_s
        while not control.has_subflow_from(SERVER_ADDR_B) and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        time.sleep(self.after_join_s)
        # Plain TCP is left to die by itself: nothing tells it about the new address.
        control.withdraw_address(SERVER_ADDR_A, destroy_tcp=False)


def mechanism_counters(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Non-zero changes of the counters that show ADD_ADDR, MP_JOIN and REMOVE_ADDR."""
    delta = stats.counters_delta(before, after)
    return {name: delta[name] for name in MECHANISM_COUNTERS if delta.get(name)}


@dataclass
class VmMigration(Scenario):
    name = "vm-migration"
    description = "a VM serving a transfer moves to another domain and address (Le & Nahum 2019)"
    params_type = VmMigrationParams

    params: VmMigrationParams

    def topology(self) -> Topo:
        p = self.params
        return MigrationTopo(client=LinkShaping(p.shaping("client"), p.shaping("client")),
                             domain_a=LinkShaping(p.shaping("domain_a"), p.shaping("domain_a")),
                             domain_b=LinkShaping(p.shaping("domain_b"), p.shaping("domain_b")))

    def server_address(self) -> str:
        return SERVER_ADDR_A

    def workload(self) -> Workload:
        return Workload(direction=self.params.direction, seconds=self.params.duration_s)

    def timeline(self) -> list[TimelineEvent]:
        p = self.params
        return [
            LinkEvent(p.migrate_at_s, "domain_a", "down"),
            HostEvent(p.resume_at_s,
                      f"VM resumes in domain B: {SERVER_ADDR_B} on {SERVER_INTF_B}, "
                      "default route there, signal endpoint (ADD_ADDR)", resume_in_domain_b),
            HostEvent(p.resume_at_s,
                      f"VM withdraws {SERVER_ADDR_A} {p.remove_after_s:g} s after the client "
                      "joined the new address: endpoint id 0 deleted (REMOVE_ADDR)",
                      WithdrawOldAddress(after_join_s=p.remove_after_s)),
        ]

    def default_capture_points(self) -> list[tuple[str, str]]:
        # The client's interface sees the whole story (ADD_ADDR, MP_JOIN, REMOVE_ADDR); the
        # server's old port goes down mid-run, which would end a capture on it.
        return [("client", "client-eth0"), ("server", SERVER_INTF_B)]

    def label(self) -> str:
        p = self.params
        return (f"stop {p.stop_time_s:g} s, A {p.rate_a_mbps:g} Mbit/s {p.delay_a_ms:g} ms"
                f" -> B {p.rate_b_mbps:g} Mbit/s {p.delay_b_ms:g} ms")

    def configured_rates(self) -> dict[str, float]:
        p = self.params
        return {"client": p.client_rate_mbps, "domain_a": p.rate_a_mbps,
                "domain_b": p.rate_b_mbps}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        p = self.params
        summary = outcome.summary
        move_s = self._move_time(outcome)
        metrics = move_metrics(outcome.receiver.get("series", []), move_s) \
            if move_s is not None else MoveMetrics(None, None, 0, None, None)
        # The workload's own words first (they say which side gave up and why); the runner's
        # errors repeat them with exit codes, so they only count when the reports are silent.
        reported = [f"{role} ({report.get('side')}): {report['error']}"
                    for role, report in (("receiver", outcome.receiver),
                                         ("sender", outcome.sender)) if report.get("error")]
        survived, why = survival(bool(summary.get("sha256_match")), metrics.bytes_after_move,
                                 reported or summary.get("errors", []))
        # The kernel's nstat deltas, and our daemon's counters where a host ran our stack.
        counters = {side: nstat_changes(outcome.run_dir, side, MECHANISM_COUNTERS)
                    for side in ("client", "server")}
        return {
            "survived": survived,
            "survived_reason": why,
            "gap_s": metrics.gap_s,
            "gap_start_s": metrics.gap_start_s,
            # The criterion of ../shared/SCENARIOS.md: stop time plus one RTT of the new path.
            "expected_gap_s": round(p.stop_time_s + p.new_path_rtt_s, 3),
            "move_at_receiver_s": None if move_s is None else round(move_s, 3),
            "goodput_before_mbps": metrics.goodput_before_mbps,
            "goodput_after_mbps": metrics.goodput_after_mbps,
            "bytes_after_move": metrics.bytes_after_move,
            "joined_new_address": self._joined_new_address(outcome),
            "mptcp_counters": counters,
        }

    @staticmethod
    def _move_time(outcome: RunOutcome) -> float | None:
        """When domain A was down for certain, in seconds after the receiver's t_start: the
        end of applying the event (`took_s` after its `wall_time`). Frames delivered while
        the shaper was being told still left through domain A; counted from the event's
        start, a plain TCP that died with the move once had 7 of them "after the move"."""
        t_start = outcome.receiver.get("t_start")
        for event in outcome.timeline:
            if event.get("link") == "domain_a" and event.get("action") == "down" \
                    and t_start is not None and event.get("wall_time") is not None:
                return (float(event["wall_time"]) + float(event.get("took_s") or 0.0)
                        - float(t_start))
        return None

    @staticmethod
    def _joined_new_address(outcome: RunOutcome) -> bool:
        """Whether the client ever had an established subflow to the new address (ss samples)."""
        path = outcome.run_dir / "stats" / "subflows-client.csv"
        try:
            rows = stats.read_samples(path)
        except (OSError, ValueError):
            return False
        return any(row.get("state") == "ESTAB" and row.get("kind") == "subflow"
                   and row.get("local", "").startswith(f"{CLIENT_ADDR}:")
                   and row.get("remote", "").startswith(f"{SERVER_ADDR_B}:") for row in rows)
