"""Each scheduler's choice from plain values (RTTs, windows, the connection's queue and
send window), with the numbers worked from the papers' formulas, and the scheduler / path
manager registries."""

from __future__ import annotations

import dataclasses

import pytest

from testbed.errors import ParameterError
from testbed.stack.mptcp.pm import MinimalPathManager, available_path_managers, get_path_manager
from testbed.stack.mptcp.scheduler import (
    BlestScheduler,
    EcfScheduler,
    LowestRttScheduler,
    RedundantScheduler,
    RoundRobinScheduler,
    Scheduler,
    SchedulerContext,
    SubflowCandidate,
    available_schedulers,
    get_scheduler,
    register_scheduler,
)

MSS = 1448
CTX = SchedulerContext()


def cand(sid: int, srtt: float | None, space: int = 10_000,
         backup: bool = False) -> SubflowCandidate:
    return SubflowCandidate(sid, srtt, space, backup)


def pick(*cands: SubflowCandidate) -> int | None:
    choice = LowestRttScheduler().select(cands, CTX)
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

        def select(self, candidates, context):  # type: ignore[no-untyped-def]
            return next((c for c in candidates if c.space > 0), None)

    register_scheduler(FirstFit.name, FirstFit)
    assert get_scheduler("test_first_fit") is FirstFit


def ids(choices: list[SubflowCandidate | None]) -> list[int | None]:
    return [None if c is None else c.subflow_id for c in choices]


def test_round_robin_takes_the_subflows_with_room_in_turn() -> None:
    rr = RoundRobinScheduler()
    three = [cand(1, 0.010), cand(2, 0.050), cand(3, 0.020)]
    assert ids([rr.select(three, CTX) for _ in range(4)]) == [1, 2, 3, 1]
    # A full window is skipped, the turn goes on from where it was.
    two = [cand(1, 0.010), cand(2, 0.050, space=0), cand(3, 0.020)]
    assert ids([rr.select(two, CTX) for _ in range(3)]) == [3, 1, 3]
    assert rr.select([cand(1, 0.01, space=0), cand(2, 0.02, space=0)], CTX) is None
    # Backups only when no other subflow is usable, as for the default.
    rr = RoundRobinScheduler()
    with_backup = [cand(1, 0.010), cand(2, 0.001, backup=True)]
    assert ids([rr.select(with_backup, CTX) for _ in range(2)]) == [1, 1]
    assert get_scheduler("rr") is get_scheduler("roundrobin") is RoundRobinScheduler


def test_redundant_sends_on_the_fastest_and_copies_on_every_other_subflow() -> None:
    red = RedundantScheduler()
    cands = [cand(1, 0.030), cand(2, 0.010), cand(3, 0.020, space=0)]
    chosen = red.select(cands, CTX)
    assert chosen is not None and chosen.subflow_id == 2
    # A copy for every other subflow, full window or not: it goes out when there is room.
    assert sorted(c.subflow_id for c in red.copies(chosen, cands, CTX)) == [1, 3]
    # Backups are left alone while a non-backup subflow exists.
    cands = [cand(1, 0.030), cand(2, 0.010, backup=True)]
    chosen = red.select(cands, CTX)
    assert chosen is not None and chosen.subflow_id == 1
    assert list(red.copies(chosen, cands, CTX)) == []
    # The other schedulers ask for no copies.
    assert list(LowestRttScheduler().copies(chosen, cands, CTX)) == []


def blest_pair(send_window: int) -> tuple[list[SubflowCandidate], SchedulerContext]:
    # x_f: 10 ms, window of 10 segments, full; x_s: 40 ms, 2 segments in flight.
    fast = SubflowCandidate(1, 0.010, 0, False, cwnd=10 * MSS, in_flight=10 * MSS, mss=MSS)
    slow = SubflowCandidate(2, 0.040, 8 * MSS, False, cwnd=10 * MSS, in_flight=2 * MSS,
                            mss=MSS)
    return [fast, slow], SchedulerContext(now=1.0, send_window=send_window)


def test_blest_waits_when_the_fast_subflow_would_fill_the_send_window() -> None:
    # RTT_s/RTT_f = 4: X = MSS * (10 + (4 - 1)/2) * 4 = 1448 * 46 = 66608 bytes, against
    # the window left once x_s holds its 2 segments and the new one: W - 3 * 1448.
    assert BlestScheduler.fast_bytes(blest_pair(0)[0][0], 0.040) == pytest.approx(66608)
    cands, ctx = blest_pair(send_window=65536)  # 61192 left < 66608: wait for x_f
    assert BlestScheduler().select(cands, ctx) is None
    cands, ctx = blest_pair(send_window=80000)  # 75656 left >= 66608: x_s
    choice = BlestScheduler().select(cands, ctx)
    assert choice is not None and choice.subflow_id == 2
    # The fast subflow with room is taken at once, whatever the window.
    cands, ctx = blest_pair(send_window=10)
    roomy = [dataclasses.replace(cands[0], space=MSS), cands[1]]
    choice = BlestScheduler().select(roomy, ctx)
    assert choice is not None and choice.subflow_id == 1


def test_blest_lambda_grows_after_blocking_and_shrinks_without() -> None:
    blest = BlestScheduler()
    # W = 73000: 68656 left; X * 1.0 = 66608 fits, X * 1.04 = 69272 does not.
    cands, ctx = blest_pair(send_window=73000)
    assert ids([blest.select(cands, ctx)]) == [2]
    blest.on_window_blocked(1.01)
    # Less than one RTT_s (40 ms) later: lambda unchanged.
    later = SchedulerContext(now=1.03, send_window=73000)
    assert ids([blest.select(cands, later)]) == [2]
    one_rtt = SchedulerContext(now=1.05, send_window=73000)
    assert ids([blest.select(cands, one_rtt)]) == [None]
    assert blest.lam == pytest.approx(1.04)
    # Four RTTs without blocking take it back down by 0.01 each, not below 1.0.
    for i in range(1, 6):
        blest.select(cands, SchedulerContext(now=1.05 + 0.05 * i, send_window=73000))
    assert blest.lam == pytest.approx(1.0)


def ecf_pair(queued: int) -> tuple[list[SubflowCandidate], SchedulerContext]:
    # x_f: 10 ms (RTTVAR 2 ms), 10 segments, full; x_s: 50 ms (RTTVAR 5 ms), 10 segments.
    fast = SubflowCandidate(1, 0.010, 0, False, cwnd=10 * MSS, mss=MSS, rttvar=0.002)
    slow = SubflowCandidate(2, 0.050, 10 * MSS, False, cwnd=10 * MSS, mss=MSS, rttvar=0.005)
    return [fast, slow], SchedulerContext(queued=queued)


def test_ecf_waits_for_the_fast_subflow_when_it_finishes_first() -> None:
    # delta = 5 ms. k = 20 segments: n = 1 + 20/10 = 3, 3 * 10 ms = 30 ms < 50 + 5 ms, and
    # x_s would need k/CWND_s * RTT_s = 100 ms >= 2 * 10 + 5 ms: wait.
    ecf = EcfScheduler()
    cands, ctx = ecf_pair(queued=20 * MSS)
    assert ecf.select(cands, ctx) is None and ecf.waiting
    # k = 100 segments: n = 11, 110 ms >= 55 ms: both paths are worth it.
    cands, ctx = ecf_pair(queued=100 * MSS)
    assert ids([ecf.select(cands, ctx)]) == [2] and not ecf.waiting
    # k = 1 segment: n = 1.1, 11 ms < 55 ms, but x_s delivers it in 5 ms < 25 ms: x_s.
    cands, ctx = ecf_pair(queued=MSS)
    assert ids([EcfScheduler().select(cands, ctx)]) == [2]


def test_ecf_hysteresis_keeps_waiting_until_beta_is_exceeded() -> None:
    # k = 50 segments: n = 6, 60 ms: above 55 ms, below 1.25 * 55 = 68.75 ms.
    cands, ctx = ecf_pair(queued=50 * MSS)
    assert ids([EcfScheduler().select(cands, ctx)]) == [2]  # not waiting: x_s
    ecf = EcfScheduler()
    ecf.waiting = True
    assert ecf.select(cands, ctx) is None  # already waiting: keeps waiting
    cands, ctx = ecf_pair(queued=60 * MSS)  # n = 7, 70 ms > 68.75 ms: x_s, waiting over
    assert ids([ecf.select(cands, ctx)]) == [2] and not ecf.waiting


def test_unmeasured_rtts_fall_back_to_the_default_choice() -> None:
    cands = [cand(1, None, space=0), cand(2, 0.050)]
    for scheduler in (BlestScheduler(), EcfScheduler()):
        assert ids([scheduler.select(cands, SchedulerContext(queued=10 * MSS,
                                                             send_window=0))]) == [2]


def test_every_scheduler_is_registered_by_name() -> None:
    assert {"default", "lowest_rtt", "roundrobin", "rr", "redundant", "blest",
            "ecf"} <= set(available_schedulers())
