"""Kernel shaping of one interface's egress: netem (loss, delay, jitter) with a tbf child (rate
and queue limit), configured over netlink with pyroute2.

netem delays first and tbf then serialises at the link rate with a byte limit equal to the
queue size, which gives the same order of operations as the userspace shaper for a constant
delay (a fixed delay commutes with a FIFO rate server). netem is also given a rate far above
any emulated link: with a rate set, netem schedules each frame after the previous one, so jitter
never reorders frames (the userspace shaper's rule), at the cost of about a microsecond per frame.
netem's own reorder sends a frame at once, ahead of the delayed ones, into tbf: like the
userspace shaper's reordered frame, it skips the delay and still waits for the rate.

With `aqm="red"`, tbf's queue becomes a `red` child (tbf's class 10:1, handle 20:) in place of
tbf's default byte FIFO: red decides on each frame tbf is handed, and its `limit` is the hard
limit. pyroute2 0.9 has no red plugin, so that one qdisc is set with `tc` (an argument list,
run inside the namespace through nsenter). Linux's red averages bytes, not packets: the
thresholds are given as packets of 1514 bytes, the same for full-size data frames; ACK-only
directions fill it more slowly than the userspace shaper's packet count. Its EWMA weight is a
power of two that tc derives from `burst`: the nearest one to `red_weight` is chosen and
the burst that makes tc pick it is computed here. The kernel here has no sch_red: only the
commands are tested (tests/unit/test_netem.py), not their effect.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from testbed.emu.linkparams import MTU_BYTES, Shaping
from testbed.emu.netns import netlink
from testbed.errors import BackendUnsupported

NETEM_HANDLE = 0x10000  # 1:
TBF_PARENT = 0x10001  # 1:1, netem's only child slot
TBF_HANDLE = 0x100000  # 10:
# The rate that stands for "unlimited" (tbf and netem keep rates in 32 bits of bytes/s).
UNLIMITED_RATE_BITS = 10_000_000_000
# netem holds every frame in flight; its own limit must never be what drops them.
NETEM_LIMIT_PKTS = 100_000
FRAME_BYTES = MTU_BYTES + 14  # Ethernet header; tbf counts the frame without FCS
RED_PARENT = "10:1"  # tbf's class, its child slot
RED_HANDLE = "20:"
# tc accepts EWMA logs of 1..31 (a weight of 2**-Wlog).
MAX_EWMA_LOG = 31


def ewma_log(weight: float) -> int:
    """The power-of-two weight nearest to `weight` (in log2 terms), as Linux's red needs."""
    return min(MAX_EWMA_LOG, max(1, round(-math.log2(weight))))


def tc_red_ewma_log(min_bytes: int, burst: int, avpkt: int) -> int | None:
    """The EWMA log tc chooses for `min`, `burst` and `avpkt`: the heaviest weight W = 2**-n
    that lets a burst of `burst` packets into an empty queue without the average reaching
    `min` (Floyd & Jacobson 1993, section 10: burst + 1 - min <= (1 - (1 - W)**burst) / W)."""
    allowance = burst + 1 - min_bytes / avpkt
    if allowance < 1:
        return None
    for log in range(1, MAX_EWMA_LOG + 1):
        w = 2.0 ** -log
        if allowance <= (1 - (1 - w) ** burst) / w:
            return log
    return None


def red_burst(min_bytes: int, log: int, avpkt: int = FRAME_BYTES) -> int:
    """The smallest `burst` for which tc derives the EWMA log `log`."""
    for burst in range(1, 1_000_000):
        found = tc_red_ewma_log(min_bytes, burst, avpkt)
        if found == log:
            return burst
        if found is not None and found > log:
            break
    raise BackendUnsupported(f"no RED burst gives an EWMA weight of 2**-{log} with min "
                             f"{min_bytes} bytes; choose another red_weight or red_min_pkts")


Runner = Callable[[Sequence[str]], None]


def run_command(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackendUnsupported(f"{' '.join(argv)} failed: {result.stderr.strip()}")


class NetemShaper:
    """Shaping of one interface inside one network namespace."""

    def __init__(self, netns_path: str, ifname: str,
                 open_netns: Callable[[str], Any] = netlink, run: Runner = run_command) -> None:
        self.netns_path = netns_path
        self.ifname = ifname
        self.open_netns = open_netns
        self.run = run

    @staticmethod
    def check(shaping: Shaping) -> None:
        if shaping.trace is not None:
            raise BackendUnsupported(
                "trace-driven links need the userspace backend: netem cannot replay a "
                "capacity trace (use --link-backend userspace)"
            )

    @staticmethod
    def netem_params(shaping: Shaping) -> dict[str, Any]:
        return {
            "delay": round(shaping.delay_ms * 1000),  # microseconds
            "jitter": round(shaping.jitter_ms * 1000),
            "loss": shaping.loss_pct,
            # A percentage; pyroute2 sets netem's gap to 1 when it is not 0, as tc does, so
            # that every frame has this chance. 0 on a change turns reordering off (gap 0).
            "prob_reorder": shaping.reorder_pct,
            "limit": NETEM_LIMIT_PKTS,
            "rate": f"{UNLIMITED_RATE_BITS}bit",
        }

    @staticmethod
    def tbf_params(shaping: Shaping) -> dict[str, Any]:
        rate_bits = (UNLIMITED_RATE_BITS if shaping.rate_mbps is None
                     else round(shaping.rate_mbps * 1_000_000))
        # One millisecond of tokens (at least two frames) keeps the rate smooth without making
        # the shaper's timer the bottleneck.
        burst = max(2 * FRAME_BYTES, rate_bits // 8 // 1000)
        return {
            "rate": f"{rate_bits}bit",
            "burst": burst,
            "limit": shaping.queue_limit * FRAME_BYTES,
        }

    @staticmethod
    def red_args(shaping: Shaping) -> list[str]:
        """`tc qdisc` arguments of the red child, from `red` on (in bytes of full frames)."""
        red = shaping.red
        rate_bits = (UNLIMITED_RATE_BITS if shaping.rate_mbps is None
                     else round(shaping.rate_mbps * 1_000_000))
        min_bytes = round(red.min_pkts * FRAME_BYTES)
        max_bytes = round(red.max_pkts * FRAME_BYTES)
        return ["red",
                "limit", str(shaping.queue_limit * FRAME_BYTES),
                "min", str(min_bytes),
                "max", str(max_bytes),
                "avpkt", str(FRAME_BYTES),
                "burst", str(red_burst(min_bytes, ewma_log(red.weight))),
                "probability", f"{red.max_p:g}",
                # For the idle-time correction only; red does not shape.
                "bandwidth", f"{rate_bits}bit"]

    def red_command(self, shaping: Shaping, verb: str) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", "tc", "qdisc", verb, "dev", self.ifname,
                "parent", RED_PARENT, "handle", RED_HANDLE, *self.red_args(shaping)]

    def apply(self, shaping: Shaping, create: bool, previous: Shaping | None = None) -> None:
        """Install (create=True) or change the qdiscs; a change keeps the frames queued.
        `previous` is the shaping a change replaces: switching between drop-tail and RED
        would replace tbf's child and lose its frames, so it is refused."""
        self.check(shaping)
        if not create and previous is not None and previous.aqm != shaping.aqm:
            raise BackendUnsupported(
                f"changing aqm from {previous.aqm} to {shaping.aqm} during a run needs the "
                "userspace backend (netem would have to replace tbf's queue and its frames)")
        verb = "add" if create else "change"
        with self.open_netns(self.netns_path) as ns:
            found = ns.link_lookup(ifname=self.ifname)
            if not found:
                raise BackendUnsupported(f"no interface {self.ifname} in {self.netns_path}")
            index = found[0]
            ns.tc(verb, "netem", index, handle=NETEM_HANDLE, **self.netem_params(shaping))
            ns.tc(verb, "tbf", index, handle=TBF_HANDLE, parent=TBF_PARENT,
                  **self.tbf_params(shaping))
        if shaping.aqm == "red":
            self.run(self.red_command(shaping, verb))
