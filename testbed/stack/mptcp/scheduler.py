"""Packet schedulers: which subflow carries the next mapping (Linux's `struct
mptcp_sched_ops`, net/mptcp/sched.c). Registered by name like the congestion controllers.

A scheduler sees `SubflowCandidate`s, plain values, never subflows themselves, so it cannot
change them and is trivial to test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from testbed.stack.registry import Registry


@dataclass(frozen=True)
class SubflowCandidate:
    """A subflow that could take data now: established, fully joined, not failed or stale."""

    subflow_id: int
    srtt: float | None  # seconds; None before the first sample
    space: int  # bytes its congestion window can still take
    backup: bool  # either end asked for it to be a backup (MP_JOIN B bit, MP_PRIO)


class Scheduler(ABC):
    name: ClassVar[str]

    @abstractmethod
    def select(self, candidates: Sequence[SubflowCandidate]) -> SubflowCandidate | None:
        """The subflow for the next mapping, or None to send nothing now."""


class LowestRttScheduler(Scheduler):
    """Linux's default: the lowest smoothed RTT among the subflows with congestion window
    space; backup subflows only when no other subflow is usable at all (RFC 8684 §3.3.8:
    a backup is used only if no non-backup subflow is available)."""

    name = "default"

    def select(self, candidates: Sequence[SubflowCandidate]) -> SubflowCandidate | None:
        primaries = [c for c in candidates if not c.backup]
        pool = primaries if primaries else list(candidates)
        ready = [c for c in pool if c.space > 0]
        if not ready:
            return None
        # An unmeasured subflow sorts last among equals; the id keeps the choice stable.
        return min(ready, key=lambda c: (c.srtt is None, c.srtt or 0.0, c.subflow_id))


_SCHEDULERS: Registry[type[Scheduler]] = Registry("MPTCP scheduler")
register_scheduler = _SCHEDULERS.register
get_scheduler = _SCHEDULERS.get
available_schedulers = _SCHEDULERS.names


register_scheduler(LowestRttScheduler.name, LowestRttScheduler)
register_scheduler("lowest_rtt", LowestRttScheduler)
