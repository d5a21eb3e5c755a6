"""`handover`: a phone with WiFi and cellular loses its WiFi in the middle of a download.

Paasch, Detal, Duchene, Raiciu, Bonaventure, "Exploring Mobile/WiFi Handover with Multipath
TCP", CellNet 2012. The client reaches the server over WiFi (`path1` of the two-path topology:
fast, short delay) and cellular (`path2`: slower, longer delay). At `fail_at_s` the WiFi link
goes down: frames in flight and every frame after are lost. `detection_s` later the phone's
connection manager notices (a lost association, a NetworkManager/mptcpd event) and acts; what
it does is the mode, the paper's three:

- `full`: both subflows carry data from the start (cellular is a `subflow` endpoint). On
  detection the WiFi address is withdrawn (REMOVE_ADDR; the kernel closes that subflow and
  reinjects its unacknowledged data on cellular). Expected gap: about one round trip of the
  cellular path after detection, or less if the data-level retransmission timer fires first.
- `backup`: the cellular subflow is opened at the start with the backup flag (MP_JOIN with
  B=1, RFC 8684 §3.2), so the server sends nothing on it while WiFi works. On detection the
  phone clears the flag (MP_PRIO, RFC 8684 §3.3.8) and withdraws WiFi. Expected gap: bounded
  by detection, since the cellular subflow is already established with an open window.
- `single-path`: no cellular subflow until detection; then the cellular address becomes a
  `subflow` endpoint (the path manager joins it on the running connection) and WiFi is
  withdrawn once the join is up. Expected gap: detection plus the join's handshake and slow
  start: longer than backup.

The same connection manager drives our stack (`--stack userspace`) through its daemon's
control socket instead of `ip mptcp` (testbed.stacks: path control). Our daemon also sees the
WiFi link go down itself (rtnetlink) and its path manager withdraws the address at once, so
for our stack detection is the link's own; `--set connection_manager=false` leaves it at that
(no action at detection), with `--set path_manager=single-path` for the single-path mode.
The mechanism counters of our stack (its daemon's, under the kernel's names) are reported
next to the kernel's nstat ones.

Plain TCP (`--stack tcp`) runs over WiFi and breaks: on detection the connection manager
destroys the sockets of the lost address, as Android does (SOCK_DESTROY), which makes both ends
see the break at once instead of after minutes of retransmissions.

The interactive flow: the workload program runs one bulk connection and has no constant-rate
mode, so no per-packet application delay is measured. What the receiver's 100 ms series does
give is the longest silence around the failure (`gap_s`): a small interactive message written
at the failure on this connection waits about that long, so `gap_s` bounds from below the
worst application delay an interactive flow would see.
"""

from __future__ import annotations

import math
import time
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
from experiments.timeline_metrics import MoveMetrics, move_metrics, nstat_changes, survival
from testbed import stats
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.network import Emulation
from testbed.emu.nodes import TestbedHost
from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint, path_control
from testbed.stacks.kernel import KernelPathControl
from topologies.two_path import CLIENT_ADDRS, SERVER_ADDR, TwoPathTopo

MODES = ("full", "backup", "single-path")
WIFI_LINK, CELL_LINK = "path1", "path2"
WIFI_ADDR, CELL_ADDR = CLIENT_ADDRS
WIFI_INTF, CELL_INTF = "client-eth0", "client-eth1"
# How long the connection manager waits for the cellular join before withdrawing WiFi anyway
# (single-path); a join takes about 1.5 round trips of the cellular path.
JOIN_WAIT_S = 2.0
# Kernel counters that show each mode's mechanism: joins, MP_PRIO, REMOVE_ADDR.
MECHANISM_COUNTERS: tuple[str, ...] = (
    "MPTcpExtMPJoinSynTx", "MPTcpExtMPJoinSynAckRx", "MPTcpExtMPJoinAckRx",
    "MPTcpExtMPPrioTx", "MPTcpExtMPPrioRx", "MPTcpExtRmAddrTx", "MPTcpExtRmAddr",
    "MPTcpExtRmSubflow",
)  # fmt: skip


@dataclass
class HandoverParams(CommonParams):
    """Rates (Mbit/s) and one-way delays (ms) of the two access links, when WiFi fails and how
    long the phone takes to notice. Times are seconds from the start of the workload."""

    mode: str = "full"
    wifi_rate_mbps: float = 20.0
    wifi_delay_ms: float = 5.0
    cell_rate_mbps: float = 8.0
    cell_delay_ms: float = 30.0  # an LTE round trip of about 60 ms
    queue_pkts: int | None = None  # None: each link's BDP
    fail_at_s: float = 5.0
    detection_s: float = 0.2
    duration_s: float = 12.0
    direction: str = "download"
    # Also how long a side waits without progress before giving up (plain TCP's death).
    timeout_s: float = 20.0
    # False: no connection manager acts at detection; the stack sees the link go down by
    # itself (ours does, through netlink; single-path then needs our `single-path` path
    # manager, which holds the cellular `subflow` endpoint in reserve).
    connection_manager: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for link in ("wifi", "cell"):
            self.shaping(link)
        Workload(direction=self.direction, seconds=self.duration_s)
        if not (self.fail_at_s > 0 and math.isfinite(self.fail_at_s)):
            raise ParameterError(f"fail_at_s must be > 0: the transfer has to start on WiFi, "
                                 f"got {self.fail_at_s!r}")
        if not (self.detection_s >= 0 and math.isfinite(self.detection_s)):
            raise ParameterError(f"detection_s must be >= 0, got {self.detection_s!r}")
        if self.detected_at_s >= self.duration_s:
            raise ParameterError(
                f"WiFi fails at {self.fail_at_s} s and is noticed {self.detection_s} s later, "
                f"which must be before duration_s ({self.duration_s}): else there is no "
                "'after' to measure")
        if self.timeout_s < self.duration_s:
            raise ParameterError(
                f"timeout_s ({self.timeout_s}) must be >= duration_s ({self.duration_s}): the "
                "runner stops a run after timeout_s + 10 s")

    def shaping(self, link: str) -> Shaping:
        rate, delay = {"wifi": (self.wifi_rate_mbps, self.wifi_delay_ms),
                       "cell": (self.cell_rate_mbps, self.cell_delay_ms)}[link]
        return Shaping(rate_mbps=rate, delay_ms=delay, queue_pkts=self.queue_pkts)

    @property
    def detected_at_s(self) -> float:
        return self.fail_at_s + self.detection_s

    @property
    def cell_rtt_s(self) -> float:
        return 2 * self.cell_delay_ms / 1000

    def expected_gap_s(self) -> float:
        """The paper's expectation as a number: detection plus one cellular round trip (full,
        backup), plus the join's two more round trips before data flows (single-path). Slow
        start after the join is not counted: it slows the refill, it does not silence it."""
        extra_rtts = {"full": 1, "backup": 1, "single-path": 3}[self.mode]
        return round(self.detection_s + extra_rtts * self.cell_rtt_s, 3)


# -- the phone's connection manager (host actions at detection) ------------------------------

def has_subflow_from(host: TestbedHost, address: str) -> bool:
    return KernelPathControl(host).has_subflow_from(address)


def withdraw_address(host: TestbedHost, address: str) -> None:
    """The phone lost `address`: delete its MPTCP endpoint (REMOVE_ADDR, the subflow closes and
    its data are reinjected elsewhere) and destroy plain TCP sockets bound to it. The initial
    subflow's address has no endpoint of its own and goes by id 0 (RFC 8684 §3.4.2)."""
    KernelPathControl(host).withdraw_address(address)


@dataclass(frozen=True)
class WifiLost:
    """What the connection manager does when it notices WiFi is gone, per mode (module doc),
    through the client's path control: `ip mptcp` for the kernel, the control socket for
    our stack (whose daemon may have seen the link go down and acted already: then these
    are no-ops or repeat what its path manager did)."""

    mode: str
    join_wait_s: float = JOIN_WAIT_S
    poll_s: float = 0.01

    def __call__(self, emu: Emulation) -> None:
        control = path_control(emu, "client")
        if self.mode == "backup":
            control.set_backup(CELL_ADDR, False)  # MP_PRIO B=0 on the cellular subflows
        elif self.mode == "single-path":
            control.add_endpoint(CELL_ADDR, CELL_INTF, ["subflow"])
            # Withdrawing WiFi first would leave the connection without any subflow until the
            # join completes; a phone keeps the dead one until the new one is up.
            deadline = time.monotonic() + self.join_wait_s
            while not control.has_subflow_from(CELL_ADDR) and time.monotonic() < deadline:
                time.sleep(self.poll_s)
        control.withdraw_address(WIFI_ADDR)


# -- metrics ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PathBytes:
    """Payload bytes one path's subflow(s) carried before and after the failure, from the
    sampler's per-socket counters on the client (received for a download, acked for an
    upload). Counters of a subflow that closed keep their last sampled value."""

    before: int
    after: int

    def record(self) -> dict[str, int]:
        return {"before": self.before, "after": self.after}


def path_bytes(rows: Sequence[dict[str, str]], local_addr: str, fail_wall: float,
               direction: str, sample_interval_s: float) -> PathBytes:
    """`rows` are the client sampler's; a sample up to one interval after the failure still
    counts as before: it holds what arrived between the previous sample and the failure."""
    column = "bytes_received" if direction == "download" else "bytes_acked"
    last_before: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.get("kind") not in ("subflow", "tcp") or not row.get(column):
            continue
        if not row.get("local", "").startswith(f"{local_addr}:"):
            continue
        key = (row["local"], row["remote"])
        value = int(row[column])
        last[key] = max(last.get(key, 0), value)
        if float(row["t"]) <= fail_wall + sample_interval_s:
            last_before[key] = max(last_before.get(key, 0), value)
    before = sum(last_before.values())
    return PathBytes(before=before, after=sum(last.values()) - before)


@dataclass
class Handover(Scenario):
    name = "handover"
    description = ("a WiFi + cellular client loses WiFi mid-transfer: full, backup and "
                   "single-path modes (Paasch et al., CellNet 2012)")
    params_type = HandoverParams

    params: HandoverParams

    def topology(self) -> Topo:
        p = self.params
        return TwoPathTopo(path1=LinkShaping(p.shaping("wifi"), p.shaping("wifi")),
                           path2=LinkShaping(p.shaping("cell"), p.shaping("cell")))

    def server_address(self) -> str:
        return SERVER_ADDR

    def client_endpoints(self) -> list[Endpoint]:
        # WiFi carries the initial subflow (the client's first default route).
        flags = {"full": {"subflow"}, "backup": {"subflow", "backup"}}.get(self.params.mode)
        if flags is None and not self.params.connection_manager:
            flags = {"subflow"}  # in reserve: the single-path path manager joins it on failure
        if flags is None:  # single-path: cellular is added when WiFi is found lost
            return []
        return [Endpoint(addr=CELL_ADDR, dev=CELL_INTF, flags=frozenset(flags))]

    def workload(self) -> Workload:
        return Workload(direction=self.params.direction, seconds=self.params.duration_s)

    def timeline(self) -> list[TimelineEvent]:
        p = self.params
        if not p.connection_manager:
            return [LinkEvent(p.fail_at_s, WIFI_LINK, "down")]
        return [
            LinkEvent(p.fail_at_s, WIFI_LINK, "down"),
            HostEvent(p.detected_at_s, f"client notices WiFi is lost ({p.mode}): "
                      + {"full": "WiFi withdrawn",
                         "backup": "cellular set nobackup (MP_PRIO), WiFi withdrawn",
                         "single-path": "cellular subflow endpoint added, WiFi withdrawn "
                                        "once joined"}[p.mode], WifiLost(p.mode)),
        ]

    def default_capture_points(self) -> list[tuple[str, str]]:
        return [("server", "server-eth0")]  # every subflow passes there

    def label(self) -> str:
        p = self.params
        return (f"{p.mode}: WiFi {p.wifi_rate_mbps:g} Mbit/s {p.wifi_delay_ms:g} ms, cellular "
                f"{p.cell_rate_mbps:g} Mbit/s {p.cell_delay_ms:g} ms, detection "
                f"{p.detection_s:g} s" + ("" if p.connection_manager
                                           else ", no connection manager"))

    def configured_rates(self) -> dict[str, float]:
        return {WIFI_LINK: self.params.wifi_rate_mbps, CELL_LINK: self.params.cell_rate_mbps}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        p = self.params
        receiver = outcome.receiver
        fail_wall = next((float(e["wall_time"]) for e in outcome.timeline
                          if e.get("link") == WIFI_LINK and e.get("action") == "down"
                          and e.get("wall_time") is not None), None)
        t_start = receiver.get("t_start")
        fail_s = None if fail_wall is None or t_start is None else fail_wall - float(t_start)
        metrics = move_metrics(receiver.get("series", []), fail_s) if fail_s is not None \
            else MoveMetrics(None, None, 0, None, None)
        reported = [f"{role} ({report.get('side')}): {report['error']}"
                    for role, report in (("receiver", receiver), ("sender", outcome.sender))
                    if report.get("error")]
        survived, why = survival(bool(outcome.summary.get("sha256_match")),
                                 metrics.bytes_after_move, reported or
                                 outcome.summary.get("errors", []))
        paths = self._path_bytes(outcome, fail_wall)
        return {
            # Modes are MPTCP's: plain TCP has one way to lose WiFi.
            "mode": None if outcome.summary.get("client_stack") == "tcp" else p.mode,
            "survived": survived,
            "survived_reason": why,
            "gap_s": metrics.gap_s,
            "gap_start_s": metrics.gap_start_s,
            "expected_gap_s": p.expected_gap_s(),
            "fail_at_receiver_s": None if fail_s is None else round(fail_s, 3),
            "goodput_before_mbps": metrics.goodput_before_mbps,
            "goodput_after_mbps": metrics.goodput_after_mbps,
            "bytes_after_failure": metrics.bytes_after_move,
            "path_bytes": {name: b.record() for name, b in paths.items()},
            "carried_data_before": [name for name, b in paths.items() if b.before > 0],
            "carried_data_after": [name for name, b in paths.items() if b.after > 0],
            "interactive_delay": "not measured: the workload has no constant-rate flow; "
                                 "gap_s bounds an interactive message's delay from below",
            "mptcp_counters": {side: nstat_changes(outcome.run_dir, side, MECHANISM_COUNTERS)
                               for side in ("client", "server")},
        }

    def _path_bytes(self, outcome: RunOutcome, fail_wall: float | None) -> dict[str, PathBytes]:
        try:
            rows = stats.read_samples(outcome.run_dir / "stats" / "subflows-client.csv")
        except (OSError, ValueError):
            return {}
        if fail_wall is None:
            return {}
        return {name: path_bytes(rows, addr, fail_wall, self.params.direction,
                                self.params.sample_interval_s)
                for name, addr in (("wifi", WIFI_ADDR), ("cellular", CELL_ADDR))}
