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

Beside the bulk transfer runs an interactive flow (`interactive`, on by default): a second
connection between the same client and server, on the same stacks (the runner's competing
flow `on_measured_stack`, port `interactive_port`), in the same direction, that writes a
message of `interactive_size` bytes every `interactive_interval_ms` (a VoIP-like 200 B every
20 ms) for the whole transfer. The phone's connection manager acts on both connections: the
kernel's endpoints and our daemon's path control apply to every connection of the host, and
for plain TCP the sockets of the lost address are destroyed, so the interactive connection
breaks with the bulk one. Its receiver stamps every message's application delay, from the
time it was due at the sender to its arrival (one machine, one clock); `interactive` in
summary.json holds their percentiles, how many were sent and received, the worst delay of a
message due around the failure, and whether its byte stream arrived whole.
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
    CompetingFlow,
    HostEvent,
    LinkEvent,
    RunOutcome,
    Scenario,
    TimelineEvent,
    Workload,
    check_messages,
)
from experiments.timeline_metrics import MoveMetrics, move_metrics, nstat_changes, survival
from testbed import stats
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.network import Emulation
from testbed.emu.nodes import TestbedHost
from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint, path_control
from testbed.stacks.kernel import KernelPathControl
from testbed.workload import message_delays
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
INTERACTIVE = "interactive"  # the interactive flow's name (its files in stats/)
# Messages due this long before the failure, up to this long after its detection, are
# "around the failure": the ones in flight on WiFi when it went, and those written while
# the connection had no working path.
AROUND_FAILURE_S = 1.0


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
    # The constant-rate interactive flow beside the bulk one (module doc): message size in
    # bytes, one message every interval, on its own port.
    interactive: bool = True
    interactive_size: int = 200
    interactive_interval_ms: float = 20.0
    interactive_port: int = 5202

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
        check_messages(self.interactive_size, self.interactive_interval_ms,
                       names=("interactive_size", "interactive_interval_ms"))
        if not 1 <= self.interactive_port <= 65535:
            raise ParameterError(
                f"interactive_port must be within 1..65535, got {self.interactive_port}")
        if self.interactive_port == self.port:
            raise ParameterError(f"interactive_port ({self.interactive_port}) must differ from "
                                 f"the bulk flow's port ({self.port})")

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
            # join completes; a phone keeps the dead one until the new one is up. With several
            # connections (the interactive flow) the first join up is taken for all: the path
            # manager starts every connection's join at once, on the same path.
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


def interactive_metrics(sender: dict[str, Any], receiver: dict[str, Any],
                        fail_wall: float | None, detected_wall: float | None,
                        size: int, interval_ms: float) -> dict[str, Any]:
    """What summary.json keeps of the interactive flow, from its two workload reports: the
    delay percentiles of every message received (ms, from due at the sender to arrival),
    messages sent, received and lost, whether its byte stream arrived whole (sha256 and
    length, no error), and the worst delay of the messages due around the failure (from
    AROUND_FAILURE_S before it to AROUND_FAILURE_S after its detection) with when that
    message was due (s after the failure). A message never received has no delay: `lost`
    counts those, and a connection that broke is `survived: false`."""
    series = receiver.get("message_series") or []
    sent = (sender.get("messages") or {}).get("sent")
    out: dict[str, Any] = message_delays(series, size, interval_ms / 1000, sent)
    out["lost"] = None if sent is None else sent - out["received"]
    errors = [f"{role}: {report['error']}" for role, report in
              (("receiver", receiver), ("sender", sender)) if report.get("error")]
    intact = bool(sender.get("sha256")) and sender.get("sha256") == receiver.get("sha256") \
        and sender.get("bytes") == receiver.get("bytes")
    out["survived"] = bool(intact and not errors and sent is not None and out["lost"] == 0)
    out["errors"] = errors
    t_start = receiver.get("t_start")
    # Each message's due time on the wall clock: arrival minus its delay.
    due = [] if t_start is None else \
        [(float(t_start) + arrival - delay / 1000, delay) for arrival, delay in series]
    around = None
    if fail_wall is not None and detected_wall is not None:
        window = (fail_wall - AROUND_FAILURE_S, detected_wall + AROUND_FAILURE_S)
        around = [(when, delay) for when, delay in due if window[0] <= when <= window[1]]
        before = sorted(delay for when, delay in due if when < window[0])
        after = sorted(delay for when, delay in due if when > window[1])
        out["delay_ms_p50_before_failure"] = _median(before)
        out["delay_ms_p50_after_failure"] = _median(after)
    out["messages_around_failure"] = None if around is None else len(around)
    worst = max(around, key=lambda item: item[1]) if around else None
    out["worst_around_failure_ms"] = None if worst is None else round(worst[1], 3)
    out["worst_due_after_failure_s"] = None if worst is None or fail_wall is None \
        else round(worst[0] - fail_wall, 3)
    return out


def _median(values: Sequence[float]) -> float | None:
    return round(values[len(values) // 2], 3) if values else None


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

    def competing_flows(self) -> list[CompetingFlow]:
        p = self.params
        if not p.interactive:
            return []
        return [CompetingFlow(INTERACTIVE, self.client, self.server, SERVER_ADDR,
                              port=p.interactive_port, direction=p.direction,
                              on_measured_stack=True, messages=p.interactive_size,
                              interval_ms=p.interactive_interval_ms)]

    def timeline(self) -> list[TimelineEvent]:
        p = self.params
        if not p.connection_manager:
            return [LinkEvent(p.fail_at_s, WIFI_LINK, "down")]
        if self.client_stack == "tcp":  # no mode: no join to wait for, no backup to clear
            return [LinkEvent(p.fail_at_s, WIFI_LINK, "down"),
                    HostEvent(p.detected_at_s, "client notices WiFi is lost: the sockets of "
                              "its address are destroyed", WifiLost("full"))]
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
            "interactive": self._interactive(outcome, fail_wall),
            "mptcp_counters": {side: nstat_changes(outcome.run_dir, side, MECHANISM_COUNTERS)
                               for side in ("client", "server")},
        }

    def _interactive(self, outcome: RunOutcome,
                     fail_wall: float | None) -> dict[str, Any] | None:
        p = self.params
        if not p.interactive:
            return None
        flow = outcome.flows.get(INTERACTIVE, {})
        detected = None if fail_wall is None else fail_wall + p.detection_s
        return {"port": p.interactive_port,
                **interactive_metrics(flow.get("sender", {}), flow.get("receiver", {}),
                                      fail_wall, detected, p.interactive_size,
                                      p.interactive_interval_ms)}

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
