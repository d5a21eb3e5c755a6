"""The userspace shaper's pipe model, driven by a fake clock and a seeded generator."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.emu.linkparams import Shaping
from testbed.emu.shaper.core import TRACE_OPPORTUNITY_BYTES, Pipe, PipeCounters, Trace
from testbed.errors import ParameterError


def frame(n: int, size: int = 1000) -> bytes:
    """A frame of `size` bytes whose first bytes carry its sequence number."""
    return n.to_bytes(4, "big") + bytes(size - 4)


def seq(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


def drain(pipe: Pipe) -> list[tuple[float, bytes]]:
    """Pop every frame exactly at its deadline: (time, frame) in delivery order."""
    out: list[tuple[float, bytes]] = []
    while (deadline := pipe.next_deadline()) is not None:
        out.extend((deadline, f) for f in pipe.pop_due(deadline))
    return out


def conserved(c: PipeCounters, in_pipe: int) -> bool:
    dropped = c.dropped_loss + c.dropped_queue + c.dropped_down
    return c.frames_in == c.frames_out + dropped + in_pipe


def file_loader(path: str) -> Trace:
    return Trace.parse(Path(path).read_text(), source=path)


def test_unshaped_pipe_delivers_at_once() -> None:
    pipe = Pipe(Shaping(), random.Random(1))
    assert pipe.offer(frame(0), 5.0)
    assert pipe.next_deadline() == 5.0
    assert pipe.pop_due(5.0) == [frame(0)]
    assert pipe.next_deadline() is None
    assert pipe.counters.frames_out == 1 and pipe.counters.bytes_out == 1000


def test_rate_gives_serialisation_departure_times() -> None:
    # 8 Mbit/s = 1 MB/s: a 1000-byte frame takes 1 ms; 10 ms delay after it.
    pipe = Pipe(Shaping(rate_mbps=8, delay_ms=10, queue_pkts=100), random.Random(1))
    for n in range(5):
        assert pipe.offer(frame(n), 0.0)
    times = [t for t, _ in drain(pipe)]
    assert times == pytest.approx([0.011, 0.012, 0.013, 0.014, 0.015])
    # An arrival after the queue drained starts its own serialisation at its arrival.
    assert pipe.offer(frame(5), 1.0)
    assert pipe.next_deadline() == pytest.approx(1.011)


def test_rate_counts_frame_length_as_given() -> None:
    pipe = Pipe(Shaping(rate_mbps=12), random.Random(1))
    pipe.offer(frame(0, size=1500), 0.0)
    pipe.offer(frame(1, size=60), 0.0)
    times = [t for t, _ in drain(pipe)]
    assert times == pytest.approx([1500 * 8 / 12e6, 1560 * 8 / 12e6])


def test_queue_tail_drop_at_queue_limit() -> None:
    pipe = Pipe(Shaping(rate_mbps=8, queue_pkts=4), random.Random(1))
    accepted = [pipe.offer(frame(n), 0.0) for n in range(10)]
    assert accepted == [True] * 4 + [False] * 6
    assert pipe.counters.dropped_queue == 6
    assert pipe.counters.max_backlog_pkts == 4
    # After one frame left (1 ms), there is room for exactly one more.
    assert pipe.offer(frame(10), 0.001)
    assert not pipe.offer(frame(11), 0.001)
    delivered = [seq(f) for _, f in drain(pipe)]
    assert delivered == [0, 1, 2, 3, 10]
    assert conserved(pipe.counters, pipe.in_pipe)


def test_default_queue_limit_is_the_shaping_bdp() -> None:
    shaping = Shaping(rate_mbps=12, delay_ms=50)  # BDP 150 kB = 100 frames of 1500 B
    pipe = Pipe(shaping, random.Random(1))
    accepted = sum(pipe.offer(frame(n, 1500), 0.0) for n in range(300))
    assert accepted == shaping.queue_limit == 100


def test_loss_fraction_within_binomial_interval() -> None:
    n, p = 20000, 0.1
    pipe = Pipe(Shaping(loss_pct=p * 100), random.Random(7))
    lost = sum(not pipe.offer(frame(i, 64), i * 1e-4) for i in range(n))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(lost - n * p) < 2.576 * sigma  # 99% normal approximation of the binomial
    assert pipe.counters.dropped_loss == lost


def test_loss_is_deterministic_by_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        pipe = Pipe(Shaping(loss_pct=30), random.Random(seed))
        return [pipe.offer(frame(i, 64), 0.0) for i in range(200)]

    assert pattern(3) == pattern(3)
    assert pattern(3) != pattern(4)


def test_delay_and_jitter_bounds_without_reordering() -> None:
    pipe = Pipe(Shaping(delay_ms=20, jitter_ms=5), random.Random(11))
    sent = {n: n * 0.0005 for n in range(2000)}
    for n, t in sent.items():
        pipe.offer(frame(n, 100), t)
    out = drain(pipe)
    assert [seq(f) for _, f in out] == sorted(sent)
    delays = [t - sent[seq(f)] for t, f in out]
    assert min(delays) >= 0.015 - 1e-12
    assert max(delays) <= 0.025 + 1e-12
    # Jitter is really applied (not all frames at the nominal delay).
    assert max(delays) - min(delays) > 0.005
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(out))


def test_reorder_fraction_within_binomial_interval() -> None:
    # No rate: a reordered frame leaves when it arrives, every other one 10 ms later.
    n, p = 20000, 0.05
    pipe = Pipe(Shaping(delay_ms=10, loss_pct=10, reorder_pct=p * 100), random.Random(7))
    sent = {i: i * 1e-4 for i in range(n)}
    accepted = sum(pipe.offer(frame(i, 64), t) for i, t in sent.items())
    out = drain(pipe)
    early = [seq(f) for t, f in out if t == sent[seq(f)]]
    assert all(t == pytest.approx(sent[seq(f)] + 0.010) for t, f in out if seq(f) not in early)
    # The share applies to the frames that survived the loss, as in netem.
    sigma = math.sqrt(accepted * p * (1 - p))
    assert abs(len(early) - accepted * p) < 2.576 * sigma  # 99%, normal approximation
    assert pipe.counters.reordered == len(early)
    assert len(out) == pipe.counters.frames_out == accepted
    assert conserved(pipe.counters, pipe.in_pipe)


def test_reordered_frame_overtakes_frames_in_flight_but_queues_behind_the_rate() -> None:
    # 8 Mbit/s: 1 ms per 1000-byte frame, then 10 ms of delay.
    in_order = Shaping(rate_mbps=8, delay_ms=10, queue_pkts=100)
    pipe = Pipe(in_order, random.Random(1))
    for n in range(5):
        pipe.offer(frame(n), 0.0)
    pipe.set_shaping(in_order.with_changes(reorder_pct=100), 0.0)
    pipe.offer(frame(5), 0.0)  # leaves the FIFO at 6 ms and skips the delay
    pipe.offer(frame(6), 0.0)  # 7 ms: behind frame 5, never before it
    pipe.set_shaping(in_order, 0.0)
    pipe.offer(frame(7), 0.0)
    out = drain(pipe)
    assert [seq(f) for _, f in out] == [5, 6, 0, 1, 2, 3, 4, 7]
    assert [t for t, _ in out] == pytest.approx(
        [0.006, 0.007, 0.011, 0.012, 0.013, 0.014, 0.015, 0.018])
    assert pipe.counters.reordered == 2
    # Taking the link down loses reordered frames like the others.
    pipe.set_shaping(in_order.with_changes(reorder_pct=100), 1.0)
    pipe.offer(frame(8), 1.0)
    pipe.set_down(True, 1.0)
    assert pipe.next_deadline() is None and pipe.counters.dropped_down == 1
    assert conserved(pipe.counters, pipe.in_pipe)


def test_no_reordering_draws_nothing_from_the_generator() -> None:
    """At reorder_pct 0 the pipe consumes its generator as before: one draw for the loss of
    each frame and one for the jitter of each accepted one, so seeded runs are unchanged."""
    rng, reference = random.Random(9), random.Random(9)
    pipe = Pipe(Shaping(delay_ms=20, jitter_ms=5, loss_pct=10, reorder_pct=0), rng)
    for n in range(1000):
        accepted = pipe.offer(frame(n, 100), n * 0.001)
        assert accepted == (reference.random() >= 0.1)
        if accepted:
            reference.random()
    assert rng.getstate() == reference.getstate()
    out = drain(pipe)
    assert [seq(f) for _, f in out] == sorted(seq(f) for _, f in out)
    assert pipe.counters.reordered == 0


def test_parameter_change_keeps_queued_frames_and_their_schedule() -> None:
    pipe = Pipe(Shaping(rate_mbps=8, delay_ms=10, queue_pkts=100), random.Random(1))
    for n in range(5):
        pipe.offer(frame(n), 0.0)
    # Halve the rate and lengthen the delay while five frames are still queued.
    pipe.set_shaping(Shaping(rate_mbps=4, delay_ms=20, queue_pkts=100), 0.0005)
    assert pipe.in_pipe == 5
    pipe.offer(frame(5), 0.0005)
    out = drain(pipe)
    assert [seq(f) for _, f in out] == [0, 1, 2, 3, 4, 5]
    times = [t for t, _ in out]
    assert times[:5] == pytest.approx([0.011, 0.012, 0.013, 0.014, 0.015])
    # The new frame waits behind the old queue (free at 5 ms), then 2 ms at 4 Mbit/s + 20 ms.
    assert times[5] == pytest.approx(0.005 + 0.002 + 0.020)
    assert pipe.counters.dropped_queue == 0


def test_shorter_delay_never_overtakes_frames_in_flight() -> None:
    pipe = Pipe(Shaping(delay_ms=50), random.Random(1))
    pipe.offer(frame(0), 0.0)
    pipe.set_shaping(Shaping(delay_ms=1), 0.01)
    pipe.offer(frame(1), 0.01)
    out = drain(pipe)
    assert [seq(f) for _, f in out] == [0, 1]
    assert out[1][0] >= out[0][0]


def test_down_drops_frames_in_the_pipe_and_arrivals() -> None:
    pipe = Pipe(Shaping(rate_mbps=8, delay_ms=10, queue_pkts=100), random.Random(1))
    for n in range(3):
        pipe.offer(frame(n), 0.0)
    pipe.set_down(True, 0.001)
    assert pipe.next_deadline() is None
    assert not pipe.offer(frame(3), 0.002)
    assert pipe.counters.dropped_down == 4
    pipe.set_down(False, 0.003)
    assert pipe.offer(frame(4), 0.003)
    # The dropped frames no longer hold the link: the new one is served at once.
    assert drain(pipe) == [(pytest.approx(0.014), frame(4))]
    assert conserved(pipe.counters, pipe.in_pipe)


def test_record_undeliverable_moves_a_delivery_to_down_drops() -> None:
    pipe = Pipe(Shaping(), random.Random(1))
    pipe.offer(frame(0), 0.0)
    (f,) = pipe.pop_due(0.0)
    pipe.record_undeliverable(f)
    assert pipe.counters.frames_out == 0 and pipe.counters.dropped_down == 1
    assert conserved(pipe.counters, pipe.in_pipe)


def test_lateness_is_measured_against_the_schedule() -> None:
    pipe = Pipe(Shaping(delay_ms=10), random.Random(1))
    pipe.offer(frame(0), 0.0)
    pipe.offer(frame(1), 0.001)
    assert pipe.pop_due(0.0105) == [frame(0)]
    assert pipe.pop_due(0.0106, early=0.0005) == [frame(1)]  # due 0.011, released early
    c = pipe.counters
    assert c.lateness_max_s == pytest.approx(0.0005)
    assert c.lateness_sum_s == pytest.approx(0.0005 - 0.0004)


def test_trace_parse_rejects_bad_input() -> None:
    assert Trace.parse("1\n").mean_rate_mbps == pytest.approx(12.0)
    for text in ("", "0\n0\n", "3\n2\n", "1\nx\n", "-1\n2\n"):
        with pytest.raises(ParameterError):
            Trace.parse(text)


def test_trace_replay_delivers_the_opportunities_bytes(tmp_path: Path) -> None:
    # Opportunities at 1 ms (twice) and 4 ms; the trace repeats every 4 ms.
    path = tmp_path / "small.trace"
    path.write_text("1\n1\n4\n")
    pipe = Pipe(Shaping(trace=str(path)), random.Random(1), trace_loader=file_loader)
    for n in range(6):
        assert pipe.offer(frame(n, 1500), 0.0)
    times = [t for t, _ in drain(pipe)]
    assert times == pytest.approx([0.001, 0.001, 0.004, 0.005, 0.005, 0.008])


def test_trace_opportunity_carries_several_small_frames_and_splits_large_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "one.trace"
    path.write_text("1\n")  # 12 Mbit/s: 1500 bytes every ms
    pipe = Pipe(Shaping(trace=str(path)), random.Random(1), trace_loader=file_loader)
    for n in range(3):
        pipe.offer(frame(n, 500), 0.0)  # all three share the opportunity at 1 ms
    pipe.offer(frame(3, 1000), 0.0)  # fits in the opportunity at 2 ms, leaving 500 bytes
    pipe.offer(frame(4, 1000), 0.0)  # the 500 left at 2 ms, then 500 from the one at 3 ms
    times = [t for t, _ in drain(pipe)]
    assert times == pytest.approx([0.001, 0.001, 0.001, 0.002, 0.003])


def test_trace_unused_opportunities_are_lost(tmp_path: Path) -> None:
    path = tmp_path / "one.trace"
    path.write_text("1\n")
    pipe = Pipe(Shaping(trace=str(path)), random.Random(1), trace_loader=file_loader)
    pipe.offer(frame(0, 500), 0.0)
    # The 1000 bytes left at 1 ms are gone when the next frame only arrives at 1.5 ms.
    pipe.offer(frame(1, 500), 0.0015)
    times = [t for t, _ in drain(pipe)]
    assert times == pytest.approx([0.001, 0.002])
    # After a long idle time the trace is still aligned to its epoch (period 1 ms).
    pipe.offer(frame(2, 1500), 10.0002)
    assert pipe.next_deadline() == pytest.approx(10.001)


def test_trace_long_run_matches_mean_rate(tmp_path: Path) -> None:
    rng = random.Random(5)
    times_ms = [*sorted(rng.randrange(0, 1000) for _ in range(800)), 1000]
    path = tmp_path / "random.trace"
    path.write_text("\n".join(map(str, times_ms)) + "\n")
    trace = file_loader(str(path))
    pipe = Pipe(Shaping(trace=str(path), queue_pkts=100000), random.Random(1),
                trace_loader=file_loader)
    for n in range(3 * len(times_ms)):
        pipe.offer(frame(n, 1500), 0.0)
    out = drain(pipe)
    # Three full periods of saturated replay deliver exactly three periods' opportunities.
    assert out[-1][0] == pytest.approx(3 * trace.period_ms / 1000)
    assert len(out) * 1500 == 3 * len(times_ms) * TRACE_OPPORTUNITY_BYTES


def test_trace_without_loader_is_a_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError):
        Pipe(Shaping(trace=str(tmp_path / "x")), random.Random(1))


def test_failed_trace_change_keeps_old_shaping() -> None:
    def failing(path: str) -> Trace:
        raise ParameterError(f"cannot read {path}")

    pipe = Pipe(Shaping(delay_ms=5), random.Random(1), trace_loader=failing)
    with pytest.raises(ParameterError):
        pipe.set_shaping(Shaping(trace="/nonexistent"), 0.0)
    assert pipe.shaping == Shaping(delay_ms=5)


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(st.floats(0, 0.01), st.integers(60, 1514)), min_size=1, max_size=60
    ),
    rate=st.one_of(st.none(), st.floats(0.5, 1000)),
    delay_ms=st.floats(0, 50),
    jitter_frac=st.floats(0, 1),
    loss_pct=st.floats(0, 50),
    queue=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    pops=st.lists(st.floats(0, 0.2), max_size=20),
)
def test_frames_leave_in_order_and_never_early(
    arrivals: list[tuple[float, int]],
    rate: float | None,
    delay_ms: float,
    jitter_frac: float,
    loss_pct: float,
    queue: int,
    seed: int,
    pops: list[float],
) -> None:
    shaping = Shaping(
        rate_mbps=rate,
        delay_ms=delay_ms,
        jitter_ms=delay_ms * jitter_frac,
        loss_pct=loss_pct,
        queue_pkts=queue,
    )
    pipe = Pipe(shaping, random.Random(seed))
    min_delay = (shaping.delay_ms - shaping.jitter_ms) / 1000
    offered_at: dict[int, float] = {}
    accepted: list[int] = []
    now = 0.0
    delivered: list[int] = []
    pop_times = sorted(pops)
    for n, (gap, size) in enumerate(arrivals):
        now += gap
        # Interleave pops at arbitrary times with the arrivals.
        while pop_times and pop_times[0] <= now:
            t = pop_times.pop(0)
            for f in pipe.pop_due(t):
                assert t >= offered_at[seq(f)] + min_delay - 1e-9
                delivered.append(seq(f))
        offered_at[n] = now
        if pipe.offer(frame(n, size), now):
            accepted.append(n)
    for t, f in drain(pipe):
        assert t >= offered_at[seq(f)] + min_delay - 1e-9
        if rate is not None:
            serialisation = len(f) * 8 / (rate * 1e6)
            assert t >= offered_at[seq(f)] + serialisation + min_delay - 1e-9
        delivered.append(seq(f))
    assert delivered == accepted
    assert conserved(pipe.counters, pipe.in_pipe)
    assert pipe.counters.max_backlog_pkts <= queue


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0, 0.005), min_size=1, max_size=80),
    delay_ms=st.floats(1, 50),
    jitter_frac=st.floats(0, 0.5),
    reorder_pct=st.floats(0, 100),
    seed=st.integers(0, 2**32),
)
def test_only_reordered_frames_overtake_and_they_skip_the_delay(
    gaps: list[float], delay_ms: float, jitter_frac: float, reorder_pct: float, seed: int
) -> None:
    """Without a rate a frame leaves the FIFO on arrival, so a reordered frame is due at its
    arrival and every other one at least delay - jitter (> 0) later: popping each frame at its
    deadline, between arrivals, tells the two kinds apart by their delivery time alone."""
    shaping = Shaping(delay_ms=delay_ms, jitter_ms=delay_ms * jitter_frac,
                      reorder_pct=reorder_pct, queue_pkts=1000)
    pipe = Pipe(shaping, random.Random(seed))
    min_delay = (shaping.delay_ms - shaping.jitter_ms) / 1000
    offered_at: dict[int, float] = {}
    delivered: list[tuple[float, int]] = []

    def pop_until(limit: float) -> None:
        while (deadline := pipe.next_deadline()) is not None and deadline <= limit:
            delivered.extend((deadline, seq(f)) for f in pipe.pop_due(deadline))

    now = 0.0
    for n, gap in enumerate(gaps):
        now += gap
        pop_until(now)
        offered_at[n] = now
        assert pipe.offer(frame(n, 100), now)
    pop_until(math.inf)
    assert sorted(n for _, n in delivered) == list(offered_at)
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(delivered))
    reordered = [n for t, n in delivered if t == offered_at[n]]
    delayed = [n for t, n in delivered if t != offered_at[n]]
    assert all(t >= offered_at[n] + min_delay - 1e-9 for t, n in delivered if n in delayed)
    assert len(reordered) == pipe.counters.reordered
    # Each kind keeps its own order; only reordered frames overtake.
    assert reordered == sorted(reordered) and delayed == sorted(delayed)
    if reorder_pct == 0:
        assert reordered == []


def test_backlogged_frames_measure_the_rate_achieved_while_busy() -> None:
    # 8 Mbit/s: 1 ms per 1000-byte frame. Five frames at once: four queue behind another.
    pipe = Pipe(Shaping(rate_mbps=8, delay_ms=10, queue_pkts=100), random.Random(1))
    for n in range(5):
        pipe.offer(frame(n), 0.0)
    pipe.offer(frame(5), 0.1)  # arrives at an idle link: not backlogged
    drain(pipe)
    c = pipe.counters
    assert (c.backlogged_frames, c.backlogged_bytes) == (4, 4000)
    assert c.backlogged_service_s == pytest.approx(0.004)
    assert c.backlogged_s == pytest.approx(0.004)


def test_a_caller_that_falls_behind_shows_a_lower_achieved_rate() -> None:
    pipe = Pipe(Shaping(rate_mbps=8, delay_ms=10, queue_pkts=100), random.Random(1))
    for n in range(5):
        pipe.offer(frame(n), 0.0)
    # The first frame leaves on time (11 ms); the caller then stalls until 20 ms, when the
    # other four (due at 12-15 ms) leave together: 4 ms of service took 9 ms.
    assert pipe.pop_due(0.011) == [frame(0)]
    assert len(pipe.pop_due(0.020)) == 4
    c = pipe.counters
    assert c.backlogged_s == pytest.approx(0.009)
    assert c.backlogged_service_s / c.backlogged_s == pytest.approx(4 / 9)


def test_down_forgets_the_last_release() -> None:
    pipe = Pipe(Shaping(rate_mbps=8, queue_pkts=100), random.Random(1))
    pipe.offer(frame(0), 0.0)
    pipe.offer(frame(1), 0.0)
    pipe.pop_due(0.001)
    pipe.set_down(True, 0.0015)
    pipe.set_down(False, 0.5)
    pipe.offer(frame(2), 0.5)
    pipe.offer(frame(3), 0.5)
    drain(pipe)
    # Frame 1 was lost with the link; frame 3 queued behind 2 and is the only one counted.
    assert pipe.counters.backlogged_frames == 1
    assert pipe.counters.backlogged_s == pytest.approx(0.001)


def test_backlog_on_a_trace_is_served_at_its_opportunities(tmp_path: Path) -> None:
    path = tmp_path / "small.trace"
    path.write_text("1\n1\n4\n")  # two opportunities at 1 ms, one at 4 ms
    pipe = Pipe(Shaping(trace=str(path)), random.Random(1), trace_loader=file_loader)
    for n in range(3):
        pipe.offer(frame(n, 1500), 0.0)
    drain(pipe)
    c = pipe.counters
    # Frame 1 shares frame 0's millisecond, frame 2 waits 3 ms for the next opportunity.
    assert c.backlogged_frames == 2
    assert c.backlogged_service_s == pytest.approx(0.003)
    assert c.backlogged_s == pytest.approx(0.003)
