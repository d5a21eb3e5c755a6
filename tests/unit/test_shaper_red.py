"""RED in the userspace shaper's pipe model (Floyd & Jacobson 1993), with a fake clock and a
seeded generator: the drop probability curve, the average queue, early versus forced versus
tail drops, and the parameters' defaults and validation."""

from __future__ import annotations

import itertools
import random

import pytest

from testbed.emu.linkparams import RED_DEFAULT_MAX_P, RED_DEFAULT_WEIGHT, RedParams, Shaping
from testbed.emu.shaper.core import MAX_FRAME_BYTES, Pipe, PipeCounters, red_drop_probability
from testbed.errors import ParameterError

RED = RedParams(min_pkts=5, max_pkts=15, max_p=0.1, weight=0.002)
# A weight this small keeps the average where a test puts it.
FROZEN = 1e-12


def frame(n: int, size: int = 1000) -> bytes:
    return n.to_bytes(4, "big") + bytes(size - 4)


def conserved(c: PipeCounters, in_pipe: int) -> bool:
    dropped = (c.dropped_loss + c.dropped_early + c.dropped_forced + c.dropped_queue
               + c.dropped_down)
    return c.frames_in == c.frames_out + dropped + in_pipe


def drain(pipe: Pipe) -> float:
    """Pop every frame at its deadline; the last deadline (when the FIFO emptied: no delay)."""
    last = 0.0
    while (deadline := pipe.next_deadline()) is not None:
        pipe.pop_due(deadline)
        last = deadline
    return last


# -- parameters ------------------------------------------------------------------------------


def test_thresholds_default_to_a_quarter_and_three_quarters_of_the_queue() -> None:
    shaping = Shaping(rate_mbps=10, delay_ms=10, queue_pkts=25, aqm="red")
    assert shaping.red == RedParams(6.25, 18.75, RED_DEFAULT_MAX_P, RED_DEFAULT_WEIGHT)
    assert (RED_DEFAULT_MAX_P, RED_DEFAULT_WEIGHT) == (0.1, 0.002)
    # The BDP default queue (10 Mbit/s, 20 ms: 17 packets) gives the thresholds too.
    assert Shaping(rate_mbps=10, delay_ms=10, aqm="red").red.max_pkts == pytest.approx(12.75)
    # A given min alone puts max at 3 * min, within the limit.
    assert Shaping(queue_pkts=25, aqm="red", red_min_pkts=5).red.max_pkts == 15
    assert Shaping(queue_pkts=25, aqm="red", red_min_pkts=10).red.max_pkts == 25
    assert Shaping().aqm == "droptail"
    # Shapings travel as dicts (to the shaper process, into meta.json).
    red = Shaping(queue_pkts=30, aqm="red", red_max_p=0.05)
    assert Shaping.from_dict(red.to_dict()) == red


@pytest.mark.parametrize(("params", "message"), [
    ({"aqm": "codel"}, "aqm must be one of droptail, red"),
    ({"aqm": "red", "red_max_p": 0}, "red_max_p must be within"),
    ({"aqm": "red", "red_max_p": 1.5}, "red_max_p must be within"),
    ({"aqm": "red", "red_weight": 1}, "red_weight must be within"),
    ({"aqm": "red", "red_min_pkts": -1}, "red_min_pkts must be >= 0"),
    ({"aqm": "red", "red_min_pkts": 10, "red_max_pkts": 8}, "below red_max_pkts"),
    ({"aqm": "red", "red_max_pkts": 30}, "above the queue limit"),
])
def test_bad_red_parameters_are_refused(params: dict[str, object], message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        Shaping.from_dict({"queue_pkts": 25, **params})


# -- the drop probability --------------------------------------------------------------------


def test_drop_probability_is_zero_below_min_linear_to_max_p_and_one_at_max() -> None:
    assert red_drop_probability(0.0, 0, RED) == 0.0
    assert red_drop_probability(4.999, 0, RED) == 0.0
    assert red_drop_probability(5.0, 0, RED) == 0.0  # p_b starts at 0 on min
    assert red_drop_probability(7.5, 0, RED) == pytest.approx(0.025)
    assert red_drop_probability(10.0, 0, RED) == pytest.approx(0.05)
    assert red_drop_probability(14.999, 0, RED) == pytest.approx(0.1, abs=1e-4)
    assert red_drop_probability(15.0, 0, RED) == 1.0  # forced, non-gentle
    assert red_drop_probability(40.0, 0, RED) == 1.0


def test_count_spreads_the_drops_p_a_grows_to_one() -> None:
    # p_b = 0.05 at the midpoint: p_a = p_b / (1 - count p_b).
    p = [red_drop_probability(10.0, count, RED) for count in range(0, 21)]
    assert p[0] == pytest.approx(0.05)
    assert p[1] == pytest.approx(0.05 / 0.95)
    assert p[10] == pytest.approx(0.1)
    assert all(a < b for a, b in itertools.pairwise(p[:19]))
    assert p[19] == 1.0 and p[20] == 1.0  # 1 - 19 p_b = p_b: certain from there


def _fixed_average(avg: float, n: int, seed: int = 1) -> tuple[Pipe, list[bool]]:
    """n arrivals to an unshaped RED pipe whose average is held at `avg`."""
    shaping = Shaping(queue_pkts=100, aqm="red", red_min_pkts=5, red_max_pkts=15,
                      red_weight=FROZEN)
    pipe = Pipe(shaping, random.Random(seed))
    pipe.red_avg = avg
    accepted = [pipe.offer(frame(i), i * 0.001) for i in range(n)]
    return pipe, accepted


def test_between_thresholds_drops_are_uniformly_spaced() -> None:
    pipe, accepted = _fixed_average(10.0, 20_000)  # p_b = 0.05
    drops = [i for i, ok in enumerate(accepted) if not ok]
    gaps = [b - a for a, b in itertools.pairwise(drops)]
    # With count, the gap between drops is uniform on 1 .. 1/p_b - 1 (Floyd & Jacobson §7):
    # never longer, and a mean about half of it, where a geometric gap would often exceed it.
    assert max(gaps) <= 19
    assert sum(gaps) / len(gaps) == pytest.approx(10, rel=0.05)
    c = pipe.counters
    assert c.dropped_early == len(drops) and c.dropped_forced == 0 and c.dropped_queue == 0
    assert conserved(c, pipe.in_pipe)


def test_no_drops_below_min_and_all_dropped_at_or_above_max() -> None:
    pipe, accepted = _fixed_average(4.9, 5_000)
    assert all(accepted)
    assert pipe.counters.dropped_early == pipe.counters.dropped_forced == 0
    pipe, accepted = _fixed_average(15.001, 5_000)
    assert not any(accepted)
    assert pipe.counters.dropped_forced == 5_000 and pipe.counters.dropped_early == 0


def test_same_seed_same_drops() -> None:
    assert _fixed_average(12.0, 3_000, seed=4)[1] == _fixed_average(12.0, 3_000, seed=4)[1]
    assert _fixed_average(12.0, 3_000, seed=4)[1] != _fixed_average(12.0, 3_000, seed=5)[1]


# -- the average queue -----------------------------------------------------------------------


def test_average_is_an_ewma_of_the_queue_seen_by_each_arrival() -> None:
    # 8 Mbit/s: a 1000-byte frame takes 1 ms; 50 frames at once see queues of 0..49.
    w = 0.1
    pipe = Pipe(Shaping(rate_mbps=8, queue_pkts=200, aqm="red", red_min_pkts=150,
                        red_max_pkts=200, red_weight=w), random.Random(1))
    expected = 0.0
    for n in range(50):
        assert pipe.offer(frame(n), 0.0)
        expected += w * (n - expected)
        assert pipe.red_avg == pytest.approx(expected)
    assert pipe.backlog(0.0) == 50


def test_idle_time_ages_the_average_as_empty_arrivals_would() -> None:
    w = 0.05
    # A rate at which a full-size frame takes exactly 1 ms.
    rate = MAX_FRAME_BYTES * 8 * 1e3 / 1e6
    pipe = Pipe(Shaping(rate_mbps=rate, queue_pkts=100, aqm="red", red_min_pkts=50,
                        red_max_pkts=100, red_weight=w), random.Random(1))
    for n in range(20):
        pipe.offer(frame(n, MAX_FRAME_BYTES), 0.0)
    before = pipe.red_avg
    emptied = drain(pipe)
    assert emptied == pytest.approx(0.020)
    pipe.offer(frame(99, MAX_FRAME_BYTES), emptied + 0.010)  # 10 frame times idle
    assert pipe.red_avg == pytest.approx(before * (1 - w) ** 10 * (1 - w))
    # An arrival right as the FIFO empties has had no idle time: one plain sample of zero.
    pipe2 = Pipe(pipe.shaping, random.Random(1))
    for n in range(20):
        pipe2.offer(frame(n, MAX_FRAME_BYTES), 0.0)
    pipe2.offer(frame(99, MAX_FRAME_BYTES), drain(pipe2))
    assert pipe2.red_avg == pytest.approx(before * (1 - w))


def test_a_burst_into_an_empty_queue_meets_the_tail_not_red() -> None:
    # The average follows slowly (w = 0.002): 40 frames at once into a 25-packet queue are
    # cut by the hard limit, not by RED.
    pipe = Pipe(Shaping(rate_mbps=8, queue_pkts=25, aqm="red"), random.Random(1))
    accepted = [pipe.offer(frame(n), 0.0) for n in range(40)]
    assert accepted == [True] * 25 + [False] * 15
    c = pipe.counters
    assert (c.dropped_queue, c.dropped_early, c.dropped_forced) == (15, 0, 0)
    assert pipe.red_avg < 6.25


def test_sustained_overload_is_met_by_early_drops_and_counted_apart() -> None:
    # Arrivals at twice the rate of an 8 Mbit/s link for 10 s (1000-byte frames every 0.5
    # ms): the average climbs past min and RED drops, the hard limit catches what it lets in.
    shaping = Shaping(rate_mbps=8, queue_pkts=25, aqm="red", red_weight=0.02)
    pipe = Pipe(shaping, random.Random(3))
    for n in range(20_000):
        now = n * 0.0005
        pipe.offer(frame(n), now)
        pipe.pop_due(now)
    c = pipe.counters
    assert c.dropped_early > 0
    assert c.dropped_early + c.dropped_forced + c.dropped_queue == pytest.approx(10_000, rel=0.01)
    assert conserved(c, pipe.in_pipe)
    assert shaping.red.min_pkts <= pipe.red_avg <= shaping.queue_limit


def test_droptail_keeps_its_behaviour_and_its_red_counters_at_zero() -> None:
    def run(shaping: Shaping) -> list[bool]:
        pipe = Pipe(shaping, random.Random(9))
        out = [pipe.offer(frame(n), n * 0.0005) for n in range(4000)]
        assert pipe.counters.dropped_early == pipe.counters.dropped_forced == 0
        return out
    tail = run(Shaping(rate_mbps=8, queue_pkts=25, loss_pct=1))
    # RED's parameters alone change nothing while aqm is droptail.
    assert tail == run(Shaping(rate_mbps=8, queue_pkts=25, loss_pct=1, red_min_pkts=1))


def test_switching_to_red_during_a_run_keeps_the_queue() -> None:
    pipe = Pipe(Shaping(rate_mbps=8, queue_pkts=25), random.Random(1))
    for n in range(10):
        pipe.offer(frame(n), 0.0)
    pipe.set_shaping(Shaping(rate_mbps=8, queue_pkts=25, aqm="red"), 0.001)
    assert pipe.in_pipe == 10
    assert pipe.offer(frame(10), 0.001)
    assert pipe.red_avg == pytest.approx(0.002 * 9)
