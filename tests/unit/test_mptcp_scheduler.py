"""The lowest-RTT scheduler's choice, and the scheduler / path manager registries."""

from __future__ import annotations

import pytest

from testbed.errors import ParameterError
from testbed.stack.mptcp.pm import MinimalPathManager, available_path_managers, get_path_manager
from testbed.stack.mptcp.scheduler import (
    LowestRttScheduler,
    Scheduler,
    SubflowCandidate,
    available_schedulers,
    get_scheduler,
    register_scheduler,
)


def cand(sid: int, srtt: float | None, space: int = 10_000,
         backup: bool = False) -> SubflowCandidate:
    return SubflowCandidate(sid, srtt, space, backup)


def pick(*cands: SubflowCandidate) -> int | None:
    choice = LowestRttScheduler().select(cands)
    return None if choice is None else choice.subflow_id


def test_lowest_rtt_with_room_wins() -> None:
    assert pick(cand(1, 0.030), cand(2, 0.010), cand(3, 0.020)) == 2


def test_a_full_window_passes_to_the_next_lowest_rtt() -> None:
    assert pick(cand(1, 0.030), cand(2, 0.010, space=0), cand(3, 0.020)) == 3
    assert pick(cand(1, 0.030, space=0), cand(2, 0.010, space=0)) is None


def test_backup_only_when_no_other_subflow_is_usable() -> None:
    # A non-backup subflow with a full window still keeps the faster backup idle.
    assert pick(cand(1, 0.050, space=0), cand(2, 0.005, backup=True)) is None
    assert pick(cand(1, 0.050), cand(2, 0.005, backup=True)) == 1
    assert pick(cand(2, 0.005, backup=True), cand(3, 0.001, backup=True)) == 3


def test_unmeasured_subflows_come_after_measured_ones_and_ties_are_stable() -> None:
    assert pick(cand(1, None), cand(2, 0.5)) == 2
    assert pick(cand(4, None), cand(3, None)) == 3
    assert pick(cand(5, 0.01), cand(4, 0.01)) == 4
    assert pick() is None


def test_registries_by_name() -> None:
    assert get_scheduler("default") is LowestRttScheduler
    assert "default" in available_schedulers()
    assert get_path_manager("default") is MinimalPathManager
    assert "default" in available_path_managers()
    with pytest.raises(ParameterError, match="unknown MPTCP scheduler"):
        get_scheduler("nope")
    with pytest.raises(ParameterError, match="unknown MPTCP path manager"):
        get_path_manager("nope")

    class FirstFit(Scheduler):
        name = "test_first_fit"

        def select(self, candidates):  # type: ignore[no-untyped-def]
            return next((c for c in candidates if c.space > 0), None)

    register_scheduler(FirstFit.name, FirstFit)
    assert get_scheduler("test_first_fit") is FirstFit
