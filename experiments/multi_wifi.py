"""`multi-wifi`: a client associated with several access points at once walks past them.

Croitoru, Niculescu, Raiciu, "Towards WiFi Mobility without Fast Handover", NSDI 2015: a client
that stays associated with every AP in range and runs MPTCP with one subflow per AP gets within
about 15% of the best AP's TCP throughput at every position, with no handover at all, while
break-before-make handover loses 5-10 s per AP change (association, DHCP, TCP reconnection).

The walk: APs stand along a corridor, `ap_spacing_m` apart, `ap_offset_m` off the client's line;
the client walks from `start_m` (AP1 stands at 0) at `walk_speed_mps`. Time is cut into steps of
`step_s`; at each step every AP's link gets the rate and loss of the client's distance to it at
the step's midpoint (the profile below), and goes down when the AP is out of range.

The position-to-rate profile: log-distance path loss with exponent `path_loss_exponent` (2 in
free space, about 3 indoors), and the 802.11n rate table (HT, 20 MHz, 800 ns guard interval, one
spatial stream) with the receiver minimum input sensitivity the standard requires for each MCS.
`range_m` is where the signal falls to MCS0's sensitivity; MCS k works up to
range_m * 10 ** ((S_0 - S_k) / (10 * n)). The link's rate is `peak_rate_mbps` times the MCS's
rate over MCS7's, so the steps keep the standard's ratios while the emulator carries a rate it
can keep up with. Frames that fail even after the MAC's retries become loss at the edge of
coverage: `edge_loss_pct` in MCS0's band, half of it in MCS1's, none closer in.

MPTCP: the kernel path manager with one `subflow` endpoint per AP in range at the start (AP1,
where the connection starts, carries the initial subflow). The in-kernel path manager does not
react to links: it neither closes a subflow whose AP vanished (the data in flight there waits
for the subflow to be declared stale) nor opens one when an AP appears (an endpoint is used once
per connection, when it is added or when the connection is established). The timeline therefore
plays the client's connection manager, as mptcpd or a NetworkManager dispatcher script would on a
phone: when an AP goes out of range its endpoint is deleted (REMOVE_ADDR; the subflow closes and
its data are reinjected on the others), when it comes back into range its address is added again
as a `subflow` endpoint, which makes the path manager join it on the running connection.
Association itself is modelled as instant: the client is associated with every AP in range.

Plain TCP (`--stack tcp`) is break-before-make (`tcp_handover=break-before-make`, the default):
the client is associated with one AP at a time, the best in range at the start (it must be AP1,
where both models start), and sticks to it while it stays in range, as clients do; the links of
the APs it is not associated with are down. When it leaves its AP's range, its sockets there are
destroyed (see Disassociate) and it picks the best AP in range at that moment (or waits for one
to come into range); `association_delay_s` later (association and DHCP) that AP's link comes up
and the client's default route moves to it, unless the AP left the range meanwhile (the client
then picks again, paying the delay again). The workload runs with `--reconnect`: the client
connects again once it has a route and the transfer resumes where the receiver got to, so what
the emulation measures on top of the delay is TCP's own reconnection (handshake, slow start).
The default delay, 5 s, is the low end of the paper's 5-10 s per AP change, which also counts
the TCP reconnection measured here. `tcp_handover=bound-to-ap1` keeps the simplest baseline: the
client is associated as for MPTCP, the connection is bound to AP1 and breaks for good when AP1
goes out of range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mininet.topo import Topo

from experiments.scenario import (
    CommonParams,
    HostEvent,
    LinkEvent,
    RunOutcome,
    Scenario,
    TimelineEvent,
    Workload,
)
from experiments.timeline_metrics import (
    nstat_changes,
    timeline_offset_s,
    window_goodput_mbps,
)
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.network import Emulation
from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint, StackConfig, path_control
from testbed.stacks.kernel import (  # noqa: F401 (endpoint_id, plain_tcp_sockets: re-exported)
    KernelPathControl,
    endpoint_id,
    plain_tcp_sockets,
)
from topologies.multi_ap import (
    MAX_APS,
    SERVER_ADDR,
    MultiApTopo,
    ap_link,
    client_addr,
    client_intf,
    router_addr,
)

TCP_HANDOVERS = ("break-before-make", "bound-to-ap1")
# The paper's criterion: MPTCP within about 15% of the best AP at every position.
CRITERION_FRACTION = 0.85
# Kernel counters that show the path manager at work: joins opened, addresses removed.
MECHANISM_COUNTERS: tuple[str, ...] = (
    "MPTcpExtMPJoinSynTx", "MPTcpExtMPJoinSynAckRx", "MPTcpExtRmAddrTx", "MPTcpExtRmSubflow",
)  # fmt: skip


# -- the position-to-rate profile -------------------------------------------------------------

@dataclass(frozen=True)
class Mcs:
    index: int
    phy_rate_mbps: float
    sensitivity_dbm: float  # the weakest signal a receiver must decode this MCS at


# 802.11n HT-MCS 0-7, 20 MHz, 800 ns GI, one spatial stream: PHY rates and receiver minimum
# input sensitivities (IEEE 802.11-2012, clause 20, the HT PHY's receiver specification).
HT20_MCS: tuple[Mcs, ...] = (
    Mcs(0, 6.5, -82.0), Mcs(1, 13.0, -79.0), Mcs(2, 19.5, -77.0), Mcs(3, 26.0, -74.0),
    Mcs(4, 39.0, -70.0), Mcs(5, 52.0, -66.0), Mcs(6, 58.5, -65.0), Mcs(7, 65.0, -64.0),
)  # fmt: skip


@dataclass(frozen=True)
class RateProfile:
    """What an AP gives a client at a given distance (see the module's docstring)."""

    range_m: float
    peak_rate_mbps: float
    path_loss_exponent: float = 3.0
    edge_loss_pct: float = 1.0

    def mcs_reach_m(self, mcs: Mcs) -> float:
        """The farthest distance at which `mcs` still decodes."""
        margin_db = HT20_MCS[0].sensitivity_dbm - mcs.sensitivity_dbm
        return self.range_m * 10 ** (margin_db / (10 * self.path_loss_exponent))

    def mcs_at(self, distance_m: float) -> Mcs | None:
        """The fastest MCS that works at this distance; None out of range."""
        usable = [mcs for mcs in HT20_MCS if distance_m <= self.mcs_reach_m(mcs)]
        return max(usable, key=lambda mcs: mcs.index, default=None)

    def link_at(self, distance_m: float) -> ApLink:
        mcs = self.mcs_at(distance_m)
        if mcs is None:
            return ApLink(mcs=None, rate_mbps=0.0, loss_pct=0.0)
        rate = self.peak_rate_mbps * mcs.phy_rate_mbps / HT20_MCS[-1].phy_rate_mbps
        loss = {0: self.edge_loss_pct, 1: self.edge_loss_pct / 2}.get(mcs.index, 0.0)
        return ApLink(mcs=mcs.index, rate_mbps=round(rate, 4), loss_pct=loss)

    def table(self) -> list[dict[str, float]]:
        """The step table (for meta records and documentation): MCS, reach, rate, loss."""
        rows = []
        for mcs in HT20_MCS:
            reach = self.mcs_reach_m(mcs)
            link = self.link_at(reach)
            rows.append({"mcs": mcs.index, "up_to_m": round(reach, 2),
                         "rate_mbps": link.rate_mbps, "loss_pct": link.loss_pct})
        return rows


@dataclass(frozen=True)
class ApLink:
    mcs: int | None  # None: out of range, the link is down
    rate_mbps: float
    loss_pct: float

    @property
    def in_range(self) -> bool:
        return self.mcs is not None


@dataclass(frozen=True)
class WalkStep:
    """One step of the walk: where the client is (the step's midpoint) and what each AP gives."""

    step: int
    t_start_s: float
    t_end_s: float
    position_m: float
    aps: tuple[ApLink, ...]

    @property
    def best_ap_mbps(self) -> float:
        return max(ap.rate_mbps for ap in self.aps)

    @property
    def in_range(self) -> tuple[int, ...]:
        """The APs in range (numbered from 1)."""
        return tuple(number for number, ap in enumerate(self.aps, 1) if ap.in_range)


# -- parameters -------------------------------------------------------------------------------

@dataclass
class MultiWifiParams(CommonParams):
    """The corridor (APs, spacing, coverage), the walk, the profile, the workload. Distances
    in metres along the corridor, AP1 at 0; times in seconds from the workload's start."""

    n_aps: int = 3
    ap_spacing_m: float = 20.0
    ap_offset_m: float = 3.0  # the APs hang this far from the client's line
    range_m: float = 20.0  # where the signal reaches MCS0's sensitivity
    path_loss_exponent: float = 3.0
    peak_rate_mbps: float = 20.0  # MCS7's link rate; the others keep the standard's ratios
    edge_loss_pct: float = 1.0
    ap_delay_ms: float = 2.0  # one way, the wireless hop and the AP's uplink
    # WiFi APs buffer deeply; 50 frames keep a 20 Mbit/s link busy at these round trips
    # without the seconds of bufferbloat a 2 Mbit/s edge link would get from more.
    queue_pkts: int | None = 50
    start_m: float = 0.0
    walk_speed_mps: float = 1.4  # a walking pace: the default walk passes three APs in 30 s
    step_s: float = 1.0
    duration_s: float = 30.0
    direction: str = "download"
    # Also how long a side waits without progress before giving up, i.e. how long the stalled
    # TCP baseline takes to be declared dead.
    timeout_s: float = 30.0
    # Plain TCP only (see the module's docstring): how the client changes APs, and how long
    # association and DHCP take before it can use the next AP.
    tcp_handover: str = "break-before-make"
    association_delay_s: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.n_aps <= MAX_APS:
            raise ParameterError(f"n_aps must be within 2..{MAX_APS} (one client interface and "
                                 f"MPTCP endpoint each), got {self.n_aps}")
        for name in ("ap_spacing_m", "range_m", "path_loss_exponent", "step_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ParameterError(f"{name} must be a positive number, got {value!r}")
        for name in ("ap_offset_m", "walk_speed_mps"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"{name} must be >= 0, got {value!r}")
        if self.tcp_handover not in TCP_HANDOVERS:
            raise ParameterError(f"tcp_handover must be one of {', '.join(TCP_HANDOVERS)}, "
                                 f"got {self.tcp_handover!r}")
        if not (self.association_delay_s > 0 and math.isfinite(self.association_delay_s)):
            raise ParameterError("association_delay_s must be a positive number, got "
                                 f"{self.association_delay_s!r}")
        if not math.isfinite(self.start_m):
            raise ParameterError(f"start_m must be a number, got {self.start_m!r}")
        self.shaping(ApLink(mcs=7, rate_mbps=self.peak_rate_mbps, loss_pct=self.edge_loss_pct))
        Workload(direction=self.direction, seconds=self.duration_s)
        if self.step_s > self.duration_s:
            raise ParameterError(f"step_s ({self.step_s}) longer than duration_s "
                                 f"({self.duration_s}): the walk would have no steps")
        if self.timeout_s < self.duration_s:
            raise ParameterError(
                f"timeout_s ({self.timeout_s}) must be >= duration_s ({self.duration_s}): the "
                "runner stops a run after timeout_s + 10 s"
            )
        if not walk(self)[0].aps[0].in_range:
            raise ParameterError(
                f"AP1 is out of range at the start (start_m {self.start_m}, range_m "
                f"{self.range_m}): the connection starts on AP1, so the walk must start in its "
                "coverage")

    def profile(self) -> RateProfile:
        return RateProfile(range_m=self.range_m, peak_rate_mbps=self.peak_rate_mbps,
                           path_loss_exponent=self.path_loss_exponent,
                           edge_loss_pct=self.edge_loss_pct)

    def shaping(self, link: ApLink) -> Shaping:
        return Shaping(rate_mbps=link.rate_mbps, delay_ms=self.ap_delay_ms,
                       loss_pct=link.loss_pct, queue_pkts=self.queue_pkts)

    def ap_position_m(self, ap: int) -> float:
        return (ap - 1) * self.ap_spacing_m


def walk(p: MultiWifiParams) -> list[WalkStep]:
    """The step table: every step of the walk with each AP's link at the step's midpoint."""
    profile = p.profile()
    count = max(1, round(p.duration_s / p.step_s))
    steps = []
    for step in range(count):
        t_start = step * p.step_s
        t_end = min((step + 1) * p.step_s, p.duration_s) if step < count - 1 else p.duration_s
        position = p.start_m + p.walk_speed_mps * (t_start + t_end) / 2
        aps = tuple(profile.link_at(math.hypot(position - p.ap_position_m(ap), p.ap_offset_m))
                    for ap in range(1, p.n_aps + 1))
        steps.append(WalkStep(step, round(t_start, 6), round(t_end, 6), round(position, 3), aps))
    return steps


# -- the client's connection manager (host actions of the timeline) ---------------------------

@dataclass(frozen=True)
class Association:
    """Break-before-make: the client's time with one AP, from when it picked the AP (it lost
    the previous one, or the walk starts) to when it left the AP's range."""

    ap: int
    chosen_s: float
    associated_s: float  # chosen_s + the association delay; 0 for the first AP
    lost_s: float | None  # None: still in range when the walk ends

    def record(self) -> dict[str, Any]:
        return {"ap": self.ap, "chosen_s": round(self.chosen_s, 4),
                "associated_s": round(self.associated_s, 4),
                "lost_s": None if self.lost_s is None else round(self.lost_s, 4)}


def step_at(steps: Sequence[WalkStep], t_s: float) -> WalkStep | None:
    """The step the walk is in at `t_s`; None once the walk is over."""
    return next((step for step in steps if step.t_start_s <= t_s < step.t_end_s), None)


def best_ap(step: WalkStep) -> int | None:
    """The AP in range with the highest rate (the lowest-numbered among equals); None when no
    AP is in range."""
    return max(step.in_range, key=lambda ap: (step.aps[ap - 1].rate_mbps, -ap), default=None)


def break_before_make(steps: Sequence[WalkStep], delay_s: float) -> list[Association]:
    """The break-before-make client's associations along the walk (see the module's docstring):
    it keeps its AP while in range; when it leaves, it picks the best AP in range then (or the
    best of the first step where one is), and can use it `delay_s` later if that AP is still in
    range; otherwise it picks again at that moment. An association that would complete after
    the walk's end is not listed."""
    if delay_s <= 0:
        raise ParameterError(f"the association delay must be positive, got {delay_s}")
    first = best_ap(steps[0])
    if first is None:
        return []
    associations = []
    ap, chosen, associated = first, 0.0, 0.0
    while True:
        start = step_at(steps, associated)
        assert start is not None
        lost = next((step.t_start_s for step in steps[start.step + 1:]
                     if not step.aps[ap - 1].in_range), None)
        associations.append(Association(ap, chosen, associated, lost))
        if lost is None:
            return associations
        t = lost
        while True:
            step = step_at(steps, t)
            if step is None:
                return associations
            pick = best_ap(step)
            if pick is None:  # nothing in range: scan again when something comes
                t = next((s.t_start_s for s in steps[step.step + 1:] if s.in_range),
                         steps[-1].t_end_s)
                continue
            done = step_at(steps, t + delay_s)
            if done is None:
                return associations
            if done.aps[pick - 1].in_range:
                ap, chosen, associated = pick, t, t + delay_s
                break
            t += delay_s


@dataclass(frozen=True)
class RouteThrough:
    """Break-before-make: the client is associated with AP `ap` and has its address (DHCP):
    its default route moves to that AP's interface."""

    ap: int

    def __call__(self, emu: Emulation) -> None:
        emu.host("client").run(["ip", "route", "replace", "default", "via", router_addr(self.ap),
                                "dev", client_intf(self.ap)])


@dataclass(frozen=True)
class Associate:
    """The client is associated with AP `ap` again: its address becomes a `subflow` endpoint,
    and the path manager joins it on every running MPTCP connection (through the client's
    path control: `ip mptcp` for the kernel, the daemon's control socket for ours)."""

    ap: int

    def __call__(self, emu: Emulation) -> None:
        path_control(emu, "client").add_endpoint(client_addr(self.ap), client_intf(self.ap),
                                                 ["subflow"])


@dataclass(frozen=True)
class Disassociate:
    """The client lost AP `ap`, and with it the address it had there.

    MPTCP: the address's endpoint is deleted, which closes the subflow from it and announces
    REMOVE_ADDR. The address of the initial subflow (AP1's) has no endpoint of its own and
    goes by id 0 (RFC 8684 §3.4.2). Plain TCP: the connections from that address are destroyed
    (SOCK_DESTROY, `ss -K`), as Android does when a network goes away; the kernel answers with
    a RST, so both ends learn at once that the connection broke instead of waiting for their
    timeouts."""

    ap: int

    def __call__(self, emu: Emulation) -> None:
        path_control(emu, "client").withdraw_address(client_addr(self.ap))


@dataclass(frozen=True)
class RaiseSubflowLimit:
    """More APs in range at once than the runner's subflow limit allows: raise the client's
    limit before the path manager needs it (the kernel's; our stack has no such limit)."""

    subflows: int

    def __call__(self, emu: Emulation) -> None:
        if isinstance(path_control(emu, "client"), KernelPathControl):
            emu.host("client").run(["ip", "mptcp", "limits", "set", "subflows",
                                    str(self.subflows)])


# -- metrics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepResult:
    step: WalkStep
    goodput_mbps: float

    @property
    def fraction_of_best_ap(self) -> float | None:
        best = self.step.best_ap_mbps
        return self.goodput_mbps / best if best > 0 else None

    def record(self) -> dict[str, Any]:
        fraction = self.fraction_of_best_ap
        return {
            "step": self.step.step,
            "t_start_s": self.step.t_start_s,
            "t_end_s": self.step.t_end_s,
            "position_m": self.step.position_m,
            "ap_rates_mbps": [ap.rate_mbps for ap in self.step.aps],
            "best_ap_mbps": self.step.best_ap_mbps,
            "goodput_mbps": round(self.goodput_mbps, 3),
            "fraction_of_best_ap": None if fraction is None else round(fraction, 3),
        }


def step_results(steps: Sequence[WalkStep], series: Sequence[Sequence[float]],
                 offset_s: float = 0.0) -> list[StepResult]:
    """Each step's goodput; `offset_s` is the timeline's start in the receiver's clock (the
    series counts from the receiver's t_start)."""
    return [StepResult(step, window_goodput_mbps(series, step.t_start_s + offset_s,
                                                 step.t_end_s + offset_s)) for step in steps]


def fraction_of_best_ap(results: Sequence[StepResult]) -> float | None:
    """Mean over the steps where some AP is in range of goodput / best AP's rate."""
    fractions = [f for f in (r.fraction_of_best_ap for r in results) if f is not None]
    return sum(fractions) / len(fractions) if fractions else None


def counter_changes(outcome: RunOutcome, side: str) -> dict[str, int]:
    """Non-zero changes of MECHANISM_COUNTERS on one host over the run (nstat snapshots)."""
    return nstat_changes(outcome.run_dir, side, MECHANISM_COUNTERS)


# -- the scenario -----------------------------------------------------------------------------

@dataclass
class MultiWifi(Scenario):
    name = "multi-wifi"
    description = ("a client associated with several APs walks past them "
                   "(Croitoru, Niculescu, Raiciu, NSDI 2015)")
    params_type = MultiWifiParams

    params: MultiWifiParams

    def steps(self) -> list[WalkStep]:
        return walk(self.params)

    def topology(self) -> Topo:
        # Every link starts as the first step has it; one out of range starts up at the
        # profile's slowest rate and goes down at once (timeline, t=0), before any endpoint
        # could use it.
        first = self.steps()[0]
        slowest = self.params.profile().link_at(self.params.range_m)
        return MultiApTopo(aps=[LinkShaping.symmetric(**self.params.shaping(
            ap if ap.in_range else slowest).to_dict()) for ap in first.aps])

    def server_address(self) -> str:
        return SERVER_ADDR

    def client_endpoints(self) -> list[Endpoint]:
        # AP1 carries the initial subflow; every other AP in range at the start is a subflow
        # endpoint. APs out of range get theirs when they come into range (Associate).
        return [Endpoint(addr=client_addr(ap), dev=client_intf(ap), flags=frozenset({"subflow"}))
                for ap in self.steps()[0].in_range if ap != 1]

    def break_before_make(self) -> bool:
        """Whether this run is the plain-TCP break-before-make baseline."""
        return self.client_stack == "tcp" and self.params.tcp_handover == "break-before-make"

    def associations(self) -> list[Association]:
        return break_before_make(self.steps(), self.params.association_delay_s)

    def workload(self) -> Workload:
        return Workload(direction=self.params.direction, seconds=self.params.duration_s,
                        reconnect=self.break_before_make())

    def timeline(self) -> list[TimelineEvent]:
        if self.break_before_make():
            return self.break_before_make_timeline()
        p = self.params
        steps = self.steps()
        links: list[TimelineEvent] = []
        hosts: list[TimelineEvent] = []
        most_at_once = max(len(step.in_range) for step in steps)
        if most_at_once - 1 > StackConfig().subflows:
            hosts.append(HostEvent(0.0, f"client: subflow limit raised to {most_at_once - 1}",
                                   RaiseSubflowLimit(most_at_once - 1)))
        for step in steps:
            at = step.t_start_s
            for number, ap in enumerate(step.aps, 1):
                before = steps[step.step - 1].aps[number - 1] if step.step else None
                link = ap_link(number)
                if not ap.in_range:
                    if before is None or before.in_range:
                        links.append(LinkEvent(at, link, "down"))
                        if before is not None:
                            hosts.append(HostEvent(at, f"client leaves AP{number}'s range: "
                                                   "endpoint deleted", Disassociate(number)))
                    continue
                if before is not None and before == ap:
                    continue
                if before is not None:
                    # Set before up: the link comes back at the rate of where the client is.
                    links.append(LinkEvent(at, link, "set", shaping=p.shaping(ap)))
                if before is not None and not before.in_range:
                    links.append(LinkEvent(at, link, "up"))
                    hosts.append(HostEvent(at, f"client enters AP{number}'s range: subflow "
                                           "endpoint added", Associate(number)))
        # Links before hosts at the same time: a subflow is joined over a link that is up.
        return links + hosts

    def break_before_make_timeline(self) -> list[TimelineEvent]:
        """One AP's link up at a time: the associated one, following the walk's rates."""
        p = self.params
        steps = self.steps()
        associations = self.associations()
        if not associations or associations[0].ap != 1:
            raise ParameterError(
                "break-before-make starts associated with the best AP at the start, which must "
                f"be AP1 (where the connection starts); here it is AP{associations[0].ap}"
                if associations else "no AP in range at the start")
        links: list[TimelineEvent] = [LinkEvent(0.0, ap_link(number), "down")
                                      for number in range(2, p.n_aps + 1)]
        hosts: list[TimelineEvent] = []
        previous: Association | None = None
        for a in associations:
            link = ap_link(a.ap)
            first = step_at(steps, a.associated_s)
            assert first is not None
            if previous is not None:
                links += [LinkEvent(a.associated_s, link, "set",
                                    shaping=p.shaping(first.aps[a.ap - 1])),
                          LinkEvent(a.associated_s, link, "up")]
                hosts.append(HostEvent(
                    a.associated_s, f"client associated with AP{a.ap} "
                    f"{a.associated_s - a.chosen_s:g} s after choosing it: default route "
                    "through it", RouteThrough(a.ap)))
            end = p.duration_s if a.lost_s is None else a.lost_s
            for before, step in zip(steps[first.step:], steps[first.step + 1:], strict=False):
                if step.t_start_s >= end:
                    break
                if step.aps[a.ap - 1] != before.aps[a.ap - 1]:
                    links.append(LinkEvent(step.t_start_s, link, "set",
                                           shaping=p.shaping(step.aps[a.ap - 1])))
            if a.lost_s is not None:
                links.append(LinkEvent(a.lost_s, link, "down"))
                hosts.append(HostEvent(a.lost_s, f"client leaves AP{a.ap}'s range: its sockets "
                                       "there destroyed", Disassociate(a.ap)))
            previous = a
        return links + hosts

    def default_capture_points(self) -> list[tuple[str, str]]:
        # The server's port sees every subflow; the client's ports go down as APs leave range,
        # which would end a capture on them.
        return [("server", "server-eth0")]

    def label(self) -> str:
        p = self.params
        return (f"{p.n_aps} APs {p.ap_spacing_m:g} m apart, walk {p.walk_speed_mps:g} m/s, "
                f"peak {p.peak_rate_mbps:g} Mbit/s")

    def configured_rates(self) -> dict[str, float]:
        return {ap_link(number): self.params.peak_rate_mbps
                for number in range(1, self.params.n_aps + 1)}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        steps = self.steps()
        receiver = outcome.receiver
        offset = timeline_offset_s(outcome.timeline, receiver.get("t_start"))
        results = step_results(steps, receiver.get("series", []), offset or 0.0)
        judged = [f for f in (r.fraction_of_best_ap for r in results) if f is not None]
        fraction = fraction_of_best_ap(results)
        worst = min(judged, default=None)
        within = sum(1 for f in judged if f >= CRITERION_FRACTION)
        ap1_lost = next((s.t_start_s for s in steps if not s.aps[0].in_range), None)
        bytes_after = None
        if ap1_lost is not None and offset is not None:
            bytes_after = round(sum(count for start, count in receiver.get("series", [])
                                    if start >= ap1_lost + offset))
        bbm = self.break_before_make()
        outages = []
        for outage in receiver.get("outages", []):
            record = dict(outage)
            if offset is not None:  # on the walk's clock, as the positions and associations
                for key in ("broke_s", "connected_s", "data_s"):
                    if key in outage:
                        record[f"{key[:-2]}_walk_s"] = round(outage[key] - offset, 4)
            if "data_s" in outage:
                record["gap_s"] = round(outage["data_s"] - outage["broke_s"], 4)
            outages.append(record)
        return {
            "tcp_handover": (self.params.tcp_handover if self.client_stack == "tcp"
                             else None),
            "association_delay_s": self.params.association_delay_s if bbm else None,
            "associations": [a.record() for a in self.associations()] if bbm else None,
            "connections": receiver.get("connections"),
            "outages": outages,
            # A reconnecting run whose walk ended during an outage: the sender's last bytes
            # were never confirmed (sha256_match is false), what arrived is still checked.
            "ended_in_outage": receiver.get("ended_in_outage"),
            "receiver_stream_intact": receiver.get("stream_intact"),
            "fraction_of_best_ap": None if fraction is None else round(fraction, 3),
            "worst_step_fraction_of_best_ap": None if worst is None else round(worst, 3),
            "steps_within_15pct_of_best_ap": within,
            "steps_with_an_ap_in_range": len(judged),
            # The paper's criterion, every position: transitions make single steps miss it.
            "within_15pct_at_every_step": bool(judged) and within == len(judged),
            "positions": [r.record() for r in results],
            "timeline_offset_s": None if offset is None else round(offset, 4),
            "ap1_out_of_range_at_s": ap1_lost,
            "bytes_after_ap1_out_of_range": bytes_after,
            "profile": self.params.profile().table(),
            "mptcp_counters": {side: counter_changes(outcome, side)
                               for side in ("client", "server")},
        }
