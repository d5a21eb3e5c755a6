"""`fairness`: a two-subflow MPTCP connection and a single-path TCP flow competing.

Two modes (topologies/fairness.py):

- `shared`: the client's two subflows merge before one bottleneck that the TCP flow crosses
  too. RFC 6356 §2 (goal 2, "do no harm"): a multipath flow should take no more capacity on a
  shared bottleneck than a single TCP flow would; Wischik et al. (NSDI 2011), Khalili et al.
  (OLIA, CoNEXT 2012) and Peng et al. (BALIA) build on the same goal. Verdict: the ratio of
  MPTCP's goodput to the TCP flow's, which should be 1 +- 0.15 for the coupled controllers
  (lia, olia, balia) and about 2 for uncoupled ones (each subflow a TCP of its own: reno,
  cubic), the negative control.
- `cross`: two disjoint paths of equal capacity, the TCP flow crossing path 1 only. RFC 6356
  goal 3 (balance congestion): a coupled MPTCP moves its traffic away from the loaded path.
  Verdicts: the share of MPTCP's bytes carried by path 2 (from the receiver's per-subflow
  statistics) and MPTCP's goodput against the capacity the TCP flow leaves. An uncoupled
  MPTCP splits path 1 with the TCP flow (about R/2 there, R on path 2: a share of 2/3);
  a coupled one should put clearly more than that on the free path.

Choices, for a stable ratio on a 2-core machine that also runs other emulations:

- 10 Mbit/s per shaped link: our userspace stack and the userspace shaper keep up with it
  with room to spare (README, "Performance"), and three flows at 10 Mbit/s leave CPU headroom.
- 20 ms RTT, all of it on the shaped link (10 ms each way) so every flow has the same RTT:
  RTT-unfairness between the flows would otherwise be read as (un)fairness of the coupling.
- a queue of 25 packets, 1.5 times the bandwidth-delay product of 17 full-size packets: Reno
  keeps the link busy after a halving only with a queue of at least one BDP.
- RED at the shared bottleneck (`aqm`, default per mode in DEFAULT_AQM; the RED parameters
  are the links' defaults: thresholds 6.25 and 18.75 packets, max_p 0.1, weight 0.002).
  RFC 6356 derives LIA's increase for flows that see the same loss rate at a shared
  bottleneck. At a drop-tail queue that does not hold: the packet that overflows the queue
  more often belongs to a flow whose window grows fast, so LIA's slowly growing subflows
  lose less and its ratio measured 0.82-1.89 (README, "Measured"). RED drops arrivals at
  random, so each flow loses in proportion to its packets, on average: over five seeds
  (suites/fairness-repetitions.toml) LIA, OLIA and BALIA averaged 1.15, 1.14 and 1.08, one
  Linux TCP against another 0.99, and uncoupled Reno measured 1.62-1.85. A single run is
  one draw of which flow RED hit more often (`loss_ratio` says how it fell): TCP against
  TCP ranged over 0.84-1.07, so the band is a statement about means over seeds.
  `aqm=droptail` keeps that result available. `cross` stays drop-tail by default: with RED
  on both paths it was run once per controller only (LIA 0.80 and BALIA 0.82 of their bytes
  on the free path against uncoupled Reno's 0.66, but 0.79-0.80 of the capacity left used
  against 0.83-0.97 with drop-tail).
- 40 s per run and the ratio taken after a 10 s warm-up (slow start and the first losses
  left out). At a drop-tail queue, which flow loses a packet when the queue overflows is a
  lottery, and a flow that loses twice in a row gives up its share for many RTTs: the ratio
  of one run is only as stable as the number of overflows it averages over. Measured here
  with plain Linux TCP as both flows (README, "Measured"): with 30 ms and a 50-packet queue
  (1.5 s between overflows) the ratio of single runs spread over 0.87-1.14; with 20 ms and
  25 packets (about 0.4 s) over 0.94-1.06, and our TCP against Linux's came to 1.08 instead of
  1.2-1.35. `rtt_ms`, `queue_pkts`, `seconds` and `loss_pct` (random loss, as an AQM would
  spread its drops) change this.
- The competitor is plain Linux TCP with Reno (`competitor_congestion`), set per socket:
  RFC 6356 defines fairness against a Reno-like TCP, and LIA's increase is built on Reno's.
  The measured flow's own `congestion` is what the case varies.

Both flows send for `seconds` and start together (the runner's competing flows); goodputs are
counted from the receivers' 100 ms series over the window both were sending in.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mininet.topo import Topo

from experiments.scenario import CommonParams, CompetingFlow, RunOutcome, Scenario, Workload
from testbed import stats
from testbed.emu.linkparams import (
    RED_DEFAULT_MAX_P,
    RED_DEFAULT_WEIGHT,
    LinkShaping,
    Shaping,
)
from testbed.emu.shaper.core import FLOW_BIN_S
from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint
from topologies.fairness import (
    CLIENT_ADDRS,
    SERVER_ADDR,
    TCP_CLIENT_ADDR,
    TCP_SERVER_ADDR,
    DisjointPathsTopo,
    SharedBottleneckTopo,
)

MODES = ("shared", "cross")
# The queue discipline of each mode's shaped links unless `aqm` says otherwise (module
# docstring: why RED at the shared bottleneck).
DEFAULT_AQM = {"shared": "red", "cross": "droptail"}
COUPLED = frozenset({"lia", "olia", "balia"})
# RFC 6356's goal as the issue states it: coupled MPTCP within 1 +- 0.15 of TCP.
COUPLED_BAND = (0.85, 1.15)
# Uncoupled: two TCPs against one, about 2; at least this much counts as "about 2".
UNCOUPLED_MIN_RATIO = 1.6
# An uncoupled MPTCP in `cross` gets half of path 1 and all of path 2: 2/3 of its bytes on 2.
UNCOUPLED_PATH2_SHARE = 2 / 3
# Goodput a TCP flow carries per Mbit/s of wire rate: 1448 payload bytes per 1514-byte frame
# (20 IP + 32 TCP with timestamps + 14 Ethernet), the "capacity" of `cross`'s verdict.
PAYLOAD_PER_WIRE = 1448 / 1514
COMPETITOR = "tcp"  # the competing flow's name (its files: stats/workload-tcp-*.json)


@dataclass
class FairnessParams(CommonParams):
    mode: str = "shared"
    rate_mbps: float = 10.0
    rtt_ms: float = 20.0
    queue_pkts: int | None = 25
    # Random loss on the shaped links (both directions), on top of the queue's tail drop.
    loss_pct: float = 0.0
    # The shaped links' queue discipline: "droptail", or "red" with the red_* parameters
    # (None thresholds: derived from queue_pkts; testbed.emu.linkparams has the defaults).
    # None: DEFAULT_AQM of the mode (RED at the shared bottleneck, drop-tail for cross).
    aqm: str | None = None
    red_min_pkts: float | None = None
    red_max_pkts: float | None = None
    red_max_p: float = RED_DEFAULT_MAX_P
    red_weight: float = RED_DEFAULT_WEIGHT
    # Random delay (uniform in 0..2x this, never reordering) on the senders' access links,
    # taken off the shaped link's delay so the mean RTT stays rtt_ms; 0: plain veths.
    access_jitter_ms: float = 0.0
    seconds: float = 40.0
    warmup_s: float = 10.0
    competitor_congestion: str = "reno"
    # The competitor's stack: plain Linux TCP, or ours ("userspace": our TCP under a
    # one-subflow MPTCP, which behaves as that TCP), to compare controllers within one stack.
    competitor_stack: str = "tcp"
    # False: MPTCP alone on the same topology (a calibration of what the paths carry).
    competitor: bool = True
    # 1: the client uses its first interface only (one subflow), which compares the stack's
    # single-path congestion control with the competitor's: the calibration of the ratio.
    paths: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ParameterError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.rtt_ms <= 0:
            raise ParameterError(f"rtt_ms must be positive, got {self.rtt_ms}")
        if not 0 <= self.access_jitter_ms <= self.rtt_ms / 2:
            raise ParameterError(f"access_jitter_ms must be within 0..rtt_ms/2 "
                                 f"({self.rtt_ms / 2:g}), got {self.access_jitter_ms}")
        self.link()  # validates rate, queue and its discipline
        if self.seconds <= 0:
            raise ParameterError(f"seconds must be positive, got {self.seconds}")
        if not 0 <= self.warmup_s < self.seconds - 1:
            raise ParameterError(f"warmup_s must be within 0..seconds-1 ({self.seconds - 1:g}), "
                                 f"got {self.warmup_s}")
        if not self.competitor_congestion:
            raise ParameterError("competitor_congestion must not be empty")
        if self.competitor_stack not in ("tcp", "userspace"):
            raise ParameterError(f"competitor_stack must be tcp or userspace, got "
                                 f"{self.competitor_stack!r}")
        if self.paths not in (1, 2):
            raise ParameterError(f"paths must be 1 or 2, got {self.paths}")

    @property
    def queue_discipline(self) -> str:
        """`aqm`, or the mode's default."""
        return self.aqm if self.aqm is not None else DEFAULT_AQM.get(self.mode, "droptail")

    def link(self) -> Shaping:
        """Each shaped link: the whole RTT on it, half in each direction, less the access
        links' mean delay."""
        return Shaping(rate_mbps=self.rate_mbps,
                       delay_ms=self.rtt_ms / 2 - self.access_jitter_ms,
                       loss_pct=self.loss_pct, queue_pkts=self.queue_pkts,
                       aqm=self.queue_discipline,
                       red_min_pkts=self.red_min_pkts, red_max_pkts=self.red_max_pkts,
                       red_max_p=self.red_max_p, red_weight=self.red_weight)

    def access(self) -> Shaping | None:
        """The senders' access links: no rate limit, a delay of access_jitter_ms with as much
        jitter (0 to twice that), or None (plain veths)."""
        if not self.access_jitter_ms:
            return None
        return Shaping(delay_ms=self.access_jitter_ms, jitter_ms=self.access_jitter_ms)


def expectation(congestion: str, client_stack: str, paths: int = 2) -> str:
    """What a case is expected to show: "coupled", "uncoupled", or "single-path" (plain TCP,
    or MPTCP held to one path, as the measured flow: one TCP against one TCP)."""
    if client_stack == "tcp" or paths == 1:
        return "single-path"
    return "coupled" if congestion in COUPLED else "uncoupled"


def ratio_anchor(expected: str) -> tuple[float, float | None]:
    """The band the MPTCP/TCP ratio of `shared` should fall in (upper None: no upper bound)."""
    return (UNCOUPLED_MIN_RATIO, None) if expected == "uncoupled" else COUPLED_BAND


def window_bytes(report: Mapping[str, Any], start: float, end: float) -> int:
    """Bytes a receiver's report counted in its 100 ms bins that lie within [start, end]
    (wall clock; a bin counts when its start does)."""
    t0 = report.get("t_start")
    if t0 is None:
        return 0
    return sum(int(b) for offset, b in report.get("series", ()) if start <= t0 + offset < end)


def common_window(reports: Iterable[Mapping[str, Any]], warmup_s: float
                  ) -> tuple[float, float] | None:
    """[the last start + warm-up, the first end of data] over the receivers' reports, or None
    when a report is missing its times or the window is empty."""
    starts, ends = [], []
    for report in reports:
        if report.get("t_start") is None or report.get("t_last_data") is None:
            return None
        starts.append(report["t_start"])
        ends.append(report["t_last_data"])
    if not starts:
        return None
    start, end = max(starts) + warmup_s, min(ends)
    return (start, end) if end - start >= 1.0 else None


def subflow_bytes(rows: Iterable[Mapping[str, str]], port: int, start: float | None = None,
                  end: float | None = None) -> dict[str, int]:
    """Client address -> bytes carried by that address's subflow(s), from a receiver's sampler
    rows (server side of an upload: `bytes_received`, the peer being the client): the last
    sample within [start, end] minus the first (cumulative counters). Without a window, the
    last sample. Plain TCP rows count too: a single-path connection is one subflow."""
    first: dict[tuple[str, str], int] = {}
    last: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.get("kind") not in ("subflow", "tcp") or not row.get("bytes_received"):
            continue
        if port not in (stats.addr_port(row["local"]), stats.addr_port(row["remote"])):
            continue
        t = float(row["t"])
        if (start is not None and t < start) or (end is not None and t > end):
            continue
        key = (row["local"], row["remote"])
        value = int(row["bytes_received"])
        first.setdefault(key, value)
        last[key] = value
    result: dict[str, int] = {}
    for key, value in last.items():
        carried = value - first[key] if start is not None else value
        addr = key[1].rsplit(":", 1)[0]
        result[addr] = result.get(addr, 0) + carried
    return result


def path2_share(per_addr: Mapping[str, int]) -> float | None:
    """The share of the bytes carried from the client's second address (path 2)."""
    total = sum(per_addr.values())
    return per_addr.get(CLIENT_ADDRS[1], 0) / total if total else None


def flow_losses(direction: Mapping[str, Any], window: tuple[float, float] | None = None
                ) -> dict[str, dict[str, int]]:
    """Frames in and dropped per sender at one shaped link direction of stats/shaper.json
    (its per-flow counters, testbed.emu.shaper.core): "mptcp" for the flows from the MPTCP
    client's addresses, "tcp" for the competitor's; other flows are left out. With a
    `window` (time.time() seconds), the bins of the flows' series that lie wholly inside it,
    else the whole run's counters."""
    senders = {addr: "mptcp" for addr in CLIENT_ADDRS} | {TCP_CLIENT_ADDR: "tcp"}
    result: dict[str, dict[str, int]] = {}
    for name, counters in direction.get("flows", {}).items():
        # "tcp 10.0.1.1:41126>10.0.3.1:5201"
        source = name.partition(" ")[2].partition(">")[0].rpartition(":")[0]
        group = senders.get(source)
        if group is None:
            continue
        totals = result.setdefault(group, {"frames": 0, "dropped": 0})
        if window is None:
            totals["frames"] += int(counters["frames_in"])
            totals["dropped"] += sum(int(v) for k, v in counters.items()
                                     if k.startswith("dropped"))
            continue
        start, end = window
        for t, frames, dropped in counters.get("series", ()):
            if start <= t and t + FLOW_BIN_S <= end:
                totals["frames"] += int(frames)
                totals["dropped"] += int(dropped)
    return result


def _loss_pct(totals: Mapping[str, int] | None) -> float | None:
    if not totals or not totals["frames"]:
        return None
    return round(100 * totals["dropped"] / totals["frames"], 3)


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds / 1e6


@dataclass
class Fairness(Scenario):
    name = "fairness"
    description = ("two-subflow MPTCP against one TCP: a shared bottleneck (ratio 1 coupled, "
                   "2 uncoupled), or cross traffic on one of two paths")
    params_type = FairnessParams

    params: FairnessParams

    def topology(self) -> Topo:
        link = LinkShaping.symmetric(**self.params.link().to_dict())
        access_shaping = self.params.access()
        access = None if access_shaping is None else LinkShaping.symmetric(
            **access_shaping.to_dict())
        if self.params.mode == "shared":
            return SharedBottleneckTopo(bottleneck=link, access=access)
        return DisjointPathsTopo(path1=link, path2=link, access=access)

    def server_address(self) -> str:
        return SERVER_ADDR

    def client_endpoints(self) -> list[Endpoint]:
        if self.params.paths == 1:
            return []
        return [Endpoint(addr=CLIENT_ADDRS[1], dev="client-eth1", flags=frozenset({"subflow"}))]

    def workload(self) -> Workload:
        return Workload(direction="upload", seconds=self.params.seconds)

    def competing_flows(self) -> list[CompetingFlow]:
        if not self.params.competitor:
            return []
        return [CompetingFlow(COMPETITOR, "tcpclient", "tcpserver", TCP_SERVER_ADDR,
                              stack=self.params.competitor_stack,
                              congestion=self.params.competitor_congestion)]

    def default_capture_points(self) -> list[tuple[str, str]]:
        return [("client", "client-eth0"), ("client", "client-eth1")]

    def label(self) -> str:
        p = self.params
        where = "shared bottleneck" if p.mode == "shared" else "cross traffic on path 1"
        ours = " (ours)" if p.competitor_stack == "userspace" else ""
        against = f" vs {p.competitor_congestion}{ours}" if p.competitor else " alone"
        one = ", 1 path" if p.paths == 1 else ""
        aqm = ", RED" if p.queue_discipline == "red" else ""
        return (f"{where}, {p.congestion}{against}{one}, {p.rate_mbps:g} Mbit/s, "
                f"{p.rtt_ms:g} ms{aqm}")

    def configured_rates(self) -> dict[str, float]:
        if self.params.mode == "shared":
            return {"bottleneck": self.params.rate_mbps}
        return {"path1": self.params.rate_mbps, "path2": self.params.rate_mbps}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        p = self.params
        expected = expectation(p.congestion, str(outcome.summary.get("client_stack")), p.paths)
        result: dict[str, Any] = {"mode": p.mode, "expected": expected,
                                  "aqm": p.queue_discipline}
        competitor = outcome.flows.get(COMPETITOR, {}).get("receiver")
        reports = [outcome.receiver] + ([competitor] if competitor is not None else [])
        window = common_window(reports, p.warmup_s)
        if window is None:
            result["fairness_error"] = "no common sending window (a flow did not run?)"
            return result
        result.update(self._losses(outcome.run_dir, window))
        start, end = window
        result["window_s"] = [round(start - reports[0]["t_start"], 2),
                              round(end - reports[0]["t_start"], 2)]
        mptcp = _mbps(window_bytes(outcome.receiver, start, end), end - start)
        result["mptcp_mbps"] = round(mptcp, 3)
        tcp = None
        if competitor is not None:
            tcp = _mbps(window_bytes(competitor, start, end), end - start)
            result["tcp_mbps"] = round(tcp, 3)
        if p.mode == "shared":
            if tcp:
                low, high = ratio_anchor(expected)
                ratio = mptcp / tcp
                result["ratio"] = round(ratio, 3)
                result["anchor_low"], result["anchor_high"] = low, high
                result["within_anchor"] = ratio >= low and (high is None or ratio <= high)
            return result
        share = self._path2_share(outcome.run_dir, start, end)
        result["path2_share"] = None if share is None else round(share, 3)
        capacity = 2 * p.rate_mbps * PAYLOAD_PER_WIRE
        left = capacity - (tcp or 0.0)
        result["capacity_left_mbps"] = round(left, 3)
        result["fraction_of_capacity_left"] = round(mptcp / left, 3) if left > 0 else None
        result["uncoupled_path2_share"] = round(UNCOUPLED_PATH2_SHARE, 3)
        if share is not None and expected != "single-path":
            result["shifted"] = share > UNCOUPLED_PATH2_SHARE
        return result

    def _losses(self, run_dir: Path, window: tuple[float, float]) -> dict[str, Any]:
        """The loss rate each flow saw in the judged window where the MPTCP and the TCP flow
        meet: the shared bottleneck, or path 1 with cross traffic (the data direction). RFC
        6356 derives its coupling for flows that see one loss rate at a shared bottleneck:
        `loss_ratio` (MPTCP's over TCP's) says how far a run was from that. Empty without
        the userspace shaper's per-flow counters (netem backend, older runs)."""
        try:
            links = json.loads((run_dir / "stats" / "shaper.json").read_text())["links"]
        except (OSError, ValueError, KeyError):
            return {}
        for link in links.values():
            losses = flow_losses(link.get("a2b", {}), window)
            if "mptcp" in losses and "tcp" in losses:
                break
        else:
            return {}
        mptcp, tcp = _loss_pct(losses["mptcp"]), _loss_pct(losses["tcp"])
        return {"mptcp_loss_pct": mptcp, "tcp_loss_pct": tcp,
                "loss_ratio": round(mptcp / tcp, 3) if mptcp is not None and tcp else None}

    def _path2_share(self, run_dir: Path, start: float, end: float) -> float | None:
        path = run_dir / "stats" / f"subflows-{self.server}.csv"
        rows: list[dict[str, str]] = []
        with contextlib.suppress(OSError, ValueError):
            rows = stats.read_samples(path)
        share = path2_share(subflow_bytes(rows, self.params.port, start, end))
        if share is None:  # too few samples in the window: the whole transfer
            share = path2_share(subflow_bytes(rows, self.params.port))
        return share
