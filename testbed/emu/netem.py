"""Kernel shaping of one interface's egress: netem (loss, delay, jitter) with a tbf child (rate
and queue limit), configured over netlink with pyroute2.

netem delays first and tbf then serialises at the link rate with a byte limit equal to the
queue size, which gives the same order of operations as the userspace shaper for a constant
delay (a fixed delay commutes with a FIFO rate server). netem is also given a rate far above
any emulated link: with a rate set, netem schedules each frame after the previous one, so jitter
never reorders frames (the userspace shaper's rule), at the cost of about a microsecond per frame.
netem's own reorder sends a frame at once, ahead of the delayed ones, into tbf: like the
userspace shaper's reordered frame, it skips the delay and still waits for the rate.
"""

from __future__ import annotations

from collections.abc import Callable
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


class NetemShaper:
    """Shaping of one interface inside one network namespace."""

    def __init__(self, netns_path: str, ifname: str,
                 open_netns: Callable[[str], Any] = netlink) -> None:
        self.netns_path = netns_path
        self.ifname = ifname
        self.open_netns = open_netns

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

    def apply(self, shaping: Shaping, create: bool) -> None:
        """Install (create=True) or change the qdiscs; a change keeps the frames queued."""
        self.check(shaping)
        verb = "add" if create else "change"
        with self.open_netns(self.netns_path) as ns:
            found = ns.link_lookup(ifname=self.ifname)
            if not found:
                raise BackendUnsupported(f"no interface {self.ifname} in {self.netns_path}")
            index = found[0]
            ns.tc(verb, "netem", index, handle=NETEM_HANDLE, **self.netem_params(shaping))
            ns.tc(verb, "tbf", index, handle=TBF_HANDLE, parent=TBF_PARENT,
                  **self.tbf_params(shaping))
