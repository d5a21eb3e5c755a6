"""`middlebox`: MPTCP through a box that tampers with TCP on one of two paths.

Honda et al., "Is it still possible to extend TCP?" (IMC 2011) measured what boxes on Internet
paths do to TCP: strip unknown options (mostly from SYNs), rewrite sequence numbers, change
payloads (application-level gateways), split and coalesce segments. MPTCP was designed around
those results (Raiciu et al., NSDI 2012, §3; RFC 8684 §3.7) and Hesmans et al. (HotMiddlebox
2013) checked Linux MPTCP against them. The expectation is the same in every case: a working
MPTCP connection or a clean fallback to TCP, with the data intact (sha256) - except where a
box changes payload and no DSS checksum was negotiated, which nothing in TCP can detect.

Each case names the box's transforms (testbed/emu/middlebox/core.py), the path it sits on
(path 1 carries the initial subflow, path 2 the join) and the outcome RFC 8684 calls for:

- `none`: the box forwards untouched (the control): MPTCP on both paths.
- `strip-mp-capable`, `strip-mptcp` (path 1): no MP_CAPABLE reaches the server: TCP (§3.1).
- `strip-mp-join` (path 2): the join fails (§3.2), the connection stays on path 1.
- `strip-dss` (path 1): data without mappings on the initial subflow: fallback (§3.7) or, if
  the other subflow is up, that subflow dropped; either way the data arrive.
- `seq-rewrite` (path 1): harmless (DSS subflow sequence numbers are relative).
- `split` (path 1): harmless (a mapping may cover several segments).
- `coalesce` (path 1): the box re-cuts the stream (600-byte pieces merged up to 1400 bytes,
  so merged segments straddle the sender's): a merged segment keeps the DSS of its first
  piece, and bytes of the next sender segment arrive outside the mapping they came with.
  (Full-size segments of a bulk transfer cannot be merged within the MTU: hence the split.)
  A receiver may hold such bytes until a mapping covers them (RFC 8684 §3.3.1: the next
  segment's DSS does) or treat the mapping as broken and fall back or drop the subflow;
  either way the data must arrive intact.
- `nat` (path 1), `nat-join` (path 2): the client's address and port translated (a NAPT):
  harmless, the server matches the join by token whatever address it comes from.
- `payload-change` (path 1, with `checksum=1`): the DSS checksum catches it (§3.7): the
  subflow is reset and its data resent on the other (or, alone, MP_FAIL and fallback).
  Without checksums the change reaches the application, as it would with TCP.

What a run records (summary.json): `outcome` (mptcp, one-path, fallback, corrupted, broken),
whether it is the one expected, and the counters that show the mechanism, read from nstat for
the kernel and from our stack's own statistics (same names without the MPTcpExt prefix), plus
the box's own counters (segments each transform changed: a case whose box changed nothing
tested nothing, and says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mininet.topo import Topo

from experiments.scenario import CommonParams, RunOutcome, Scenario, Workload
from experiments.timeline_metrics import nstat_changes
from experiments.two_path import TwoPathTransfer
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.middlebox.core import parse_transform
from testbed.errors import ParameterError
from topologies.middlebox import MiddleboxTopo


@dataclass(frozen=True)
class Case:
    transforms: tuple[str, ...]
    on_path: int
    expected: frozenset[str]  # acceptable outcomes
    expected_with_checksum: frozenset[str] | None = None  # when checksum=1 changes it

    def expectation(self, checksum: bool) -> frozenset[str]:
        if checksum and self.expected_with_checksum is not None:
            return self.expected_with_checksum
        return self.expected


CASES: dict[str, Case] = {
    "none": Case((), 1, frozenset({"mptcp"})),
    "strip-mp-capable": Case(("strip-mp-capable",), 1, frozenset({"fallback"})),
    "strip-mptcp": Case(("strip-mptcp",), 1, frozenset({"fallback"})),
    "strip-mp-join": Case(("strip-mp-join",), 2, frozenset({"one-path"})),
    "strip-dss": Case(("strip-dss",), 1, frozenset({"fallback", "one-path"})),
    "seq-rewrite": Case(("seq-rewrite",), 1, frozenset({"mptcp"})),
    "split": Case(("split:size=500",), 1, frozenset({"mptcp"})),
    "coalesce": Case(("split:size=600", "coalesce:size=1400"), 1,
                     frozenset({"mptcp", "one-path", "fallback"})),
    "nat": Case(("nat:public=10.0.1.100",), 1, frozenset({"mptcp"})),
    "nat-join": Case(("nat:public=10.0.2.100",), 2, frozenset({"mptcp"})),
    "payload-change": Case(("payload-change:nth=200",), 1, frozenset({"corrupted"}),
                           expected_with_checksum=frozenset({"mptcp", "one-path",
                                                             "fallback"})),
}

# Counters that tell the mechanism (kernel names without "MPTcpExt"; ours use the same).
FALLBACK_COUNTERS = ("MPCapableFallbackACK", "MPCapableFallbackSYNACK", "MPCapableDataFallback",
                     "InfiniteMapRx", "InfiniteMapTx", "DssFallback", "DSSCorruptionFallback",
                     "MPFallbackTokenInit")
MECHANISM_COUNTERS = ("MPCapableSYNTX", "MPCapableSYNRX", "MPCapableSYNACKRX",
                      "MPCapableACKRX", *FALLBACK_COUNTERS, "FallbackFailed", "MPJoinSynTx",
                      "MPJoinSynRx", "MPJoinSynAckRx", "MPJoinAckRx", "DSSNotMatching",
                      "DSSNoMatchTCP", "DSSCorruptionReset", "DataCsumErr", "MPFailTx",
                      "MPFailRx", "MPRstTx", "MPRstRx", "MPTCPReinject", "MPTCPRetrans",
                      "SubflowStale")


@dataclass
class MiddleboxParams(CommonParams):
    case: str = "strip-mp-capable"
    rate_mbps: float = 10.0  # each path
    delay_ms: float = 5.0  # each path, one way
    size_mib: float = 4.0
    direction: str = "upload"
    # 4 MiB take about 3.5 s on one 10 Mbit/s path: a box that stalls the connection is
    # judged after this, not after the usual two minutes.
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.case not in CASES:
            raise ParameterError(f"case must be one of {', '.join(CASES)}, got {self.case!r}")
        for spec in CASES[self.case].transforms:
            parse_transform(spec)
        self.shaping()
        if self.size_mib <= 0:
            raise ParameterError(f"size_mib must be positive, got {self.size_mib}")
        Workload(direction=self.direction, bytes=1)

    def shaping(self) -> Shaping:
        return Shaping(rate_mbps=self.rate_mbps, delay_ms=self.delay_ms)


def classify(sha256_match: bool, bytes_equal: bool, fell_back: bool, subflows: int) -> str:
    """The run's outcome: what the application got, then how MPTCP carried it."""
    if not sha256_match:
        return "corrupted" if bytes_equal else "broken"
    if fell_back:
        return "fallback"
    return "mptcp" if subflows >= 2 else "one-path"


def stack_counters(run_dir: Path, side: str, stack: str) -> dict[str, int]:
    """Non-zero changes of MECHANISM_COUNTERS on one host: nstat for the kernel, our daemon's
    statistics (stats/stack-<side>.json) for ours; plain TCP has none."""
    if stack == "kernel":
        changes = nstat_changes(run_dir, side, [f"MPTcpExt{n}" for n in MECHANISM_COUNTERS])
        return {name.removeprefix("MPTcpExt"): value for name, value in changes.items()}
    if stack == "userspace":
        try:
            counters = json.loads((run_dir / "stats" / f"stack-{side}.json").read_text())
            counters = counters.get("counters", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return {n: int(counters[n]) for n in MECHANISM_COUNTERS if counters.get(n)}
    return {}


def box_stats(run_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((run_dir / "stats" / "middlebox-mbox.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


@dataclass
class Middlebox(TwoPathTransfer, Scenario):
    name = "middlebox"
    description = ("MPTCP through a box that strips options, rewrites sequence numbers, "
                   "changes payload, splits or coalesces segments on one path "
                   "(Honda et al., IMC 2011)")
    params_type = MiddleboxParams

    params: MiddleboxParams

    @property
    def case(self) -> Case:
        return CASES[self.params.case]

    def topology(self) -> Topo:
        path = LinkShaping.symmetric(**self.params.shaping().to_dict())
        return MiddleboxTopo(path1=path, path2=path, transforms=self.case.transforms,
                             on_path=self.case.on_path)

    def default_capture_points(self) -> list[tuple[str, str]]:
        # Both sides of the box: what it was given and what it passed on.
        side_a = f"client-eth{self.case.on_path - 1}"
        return [("client", side_a), ("server", "server-eth0")]

    def label(self) -> str:
        p = self.params
        return f"{p.case}{', DSS checksums' if p.checksum else ''}"

    def configured_rates(self) -> dict[str, float]:
        return {"path1": self.params.rate_mbps, "path2": self.params.rate_mbps}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        summary = outcome.summary
        counters = {side: stack_counters(outcome.run_dir, side, str(summary.get(f"{side}_stack")))
                    for side in ("client", "server")}
        fell_back = any(counters[side].get(name) for side in counters for name in
                        FALLBACK_COUNTERS)
        fell_back = fell_back or self._our_connection_fell_back(outcome.run_dir)
        bytes_equal = (summary.get("bytes_sent") is not None
                       and summary.get("bytes_sent") == summary.get("bytes_received"))
        result = classify(bool(summary.get("sha256_match")), bytes_equal, fell_back,
                          int(summary.get("subflows") or 0))
        mptcp = "tcp" not in (summary.get("client_stack"), summary.get("server_stack"))
        expected = self.case.expectation(self.params.checksum) if mptcp else \
            frozenset({"one-path"})  # plain TCP is one path whatever the box does ...
        if not mptcp and self.params.case == "payload-change":
            expected = frozenset({"corrupted"})  # ... and has no checksum over its data
        box = box_stats(outcome.run_dir)
        changed = sum(int(t.get("changed", 0)) for t in box.get("transforms", {}).values())
        return {
            "case": self.params.case,
            "on_path": self.case.on_path,
            "transforms": list(self.case.transforms),
            "outcome": result,
            "expected_outcomes": sorted(expected),
            "as_expected": result in expected,
            "checksum_detected": any(counters[s].get("DataCsumErr") for s in counters),
            "box_changed_segments": changed,
            # The control leaves everything alone; any other box that changed nothing did
            # not test what its case says.
            "box_exercised": changed > 0 or not self.case.transforms,
            "middlebox": box,
            "mptcp_counters": counters,
        }

    @staticmethod
    def _our_connection_fell_back(run_dir: Path) -> bool:
        """Our stack says per connection whether it fell back (its counters name only the
        handshake cases)."""
        for side in ("client", "server"):
            try:
                data = json.loads((run_dir / "stats" / f"stack-{side}.json").read_text())
            except (OSError, ValueError):
                continue
            for conn in [*data.get("connections", []), *data.get("finished", [])]:
                if conn.get("stats", {}).get("fallback"):
                    return True
        return False
