"""The retransmission queue and SACK scoreboard (RFC 6675 §4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.tcp.sack import Scoreboard

MSS = 100


def board(n: int = 6) -> Scoreboard:
    sb = Scoreboard()
    for i in range(n):
        sb.add(1000 + i * MSS, MSS, now=float(i))
    return sb


def test_pipe_islost_and_nextseg() -> None:
    sb = board()
    assert sb.pipe() == 600
    assert sb.apply_sack(((1100, 1200), (1300, 1500)), 1000, 1600) == 300
    assert sb.sacked_bytes == 300
    # Three SACKed segments above 1000 make it lost; 1200 has two (200 bytes) above: not yet.
    assert sb.mark_lost(MSS) == 1
    assert [s.lost for s in sb.segments] == [True, False, False, False, False, False]
    assert sb.apply_sack(((1500, 1600),), 1000, 1600) == 100
    assert sb.mark_lost(MSS) == 1
    assert sb.pipe() == 0
    lost = sb.next_lost()
    assert lost is not None and lost.seq == 1000
    sb.mark_retransmitted(lost, 7.0)
    assert sb.pipe() == 100  # a retransmission is in the pipe
    nxt = sb.next_lost()
    assert nxt is not None and nxt.seq == 1200


def test_cumulative_ack_and_karn() -> None:
    sb = board(3)
    sb.segments[0].ever_retransmitted = True
    result = sb.ack(1200)
    assert result.acked_bytes == 200 and result.rtt_sent_at is None
    result = sb.ack(1300)
    assert result.rtt_sent_at == 2.0
    assert len(sb) == 0


def test_ack_inside_a_segment_keeps_the_tail() -> None:
    sb = board(2)
    assert sb.ack(1050).acked_bytes == 50
    assert sb.segments[0].seq == 1050 and sb.pipe() == 150


def test_sack_blocks_outside_the_window_are_ignored() -> None:
    sb = board(2)
    assert sb.apply_sack(((900, 1000), (1100, 1300), (1250, 1200)), 1000, 1200) == 0


def test_rescue_retransmission_below_highest_sack() -> None:
    sb = board(4)
    sb.apply_sack(((1300, 1400),), 1000, 1400)
    rescue = sb.next_rescue()
    assert rescue is not None and rescue.seq == 1000


def test_rto_marks_everything_lost_and_may_forget_sacks() -> None:
    sb = board(3)
    sb.apply_sack(((1200, 1300),), 1000, 1300)
    sb.mark_all_lost(forget_sacks=False)
    assert [s.lost for s in sb.segments] == [True, True, False]
    sb.mark_all_lost(forget_sacks=True)
    assert all(s.lost for s in sb.segments) and sb.sacked_bytes == 0


def test_a_retransmission_is_lost_once_a_later_transmission_is_delivered() -> None:
    sb = board(6)  # sent at 0..5 s
    sb.apply_sack(((1100, 1400),), 1000, 1600)
    assert sb.mark_lost(MSS) == 1
    head = sb.next_lost()
    assert head is not None and head.seq == 1000
    sb.mark_retransmitted(head, 6.0)
    # What was delivered so far went before the retransmission: it may still arrive.
    assert sb.mark_lost_retransmissions(reo_wnd=0.0) == (0, 0)
    sb.add(1600, MSS, now=7.0)
    sb.add(1700, MSS, now=7.5)
    # A segment sent 1 s after it is SACKed: with a reordering window of 2 s not yet ...
    sb.apply_sack(((1600, 1700),), 1000, 1800)
    assert sb.mark_lost_retransmissions(reo_wnd=2.0) == (0, 0)
    # ... with 1 s it is lost, waiting to go again, and out of the pipe.
    assert sb.mark_lost_retransmissions(reo_wnd=1.0) == (1, head.xmit)
    assert sb.last_xmit == 9  # six sends, the resend, two more sends
    assert sb.next_lost() is head and not head.retransmitted and head.lost
    assert sb.pipe() == slow_pipe(sb)
    assert sb.mark_lost_retransmissions(reo_wnd=0.0) == (0, 0)  # no retransmission is out


def test_only_segments_sent_once_tell_what_was_delivered() -> None:
    sb = board(3)
    sb.apply_sack(((1100, 1300),), 1000, 1300)
    sb.mark_lost(MSS)
    first = sb.segments[0]
    sb.mark_retransmitted(first, 4.0)
    sb.add(1300, MSS, now=5.0)
    sb.mark_head_lost()  # as after an RTO: the head goes again ...
    sb.mark_retransmitted(first, 6.0)
    # ... and a SACK for a retransmitted segment could be for its first copy: no evidence.
    later = sb.segments[-1]
    sb.mark_retransmitted(later, 7.0)
    sb.apply_sack(((1300, 1400),), 1000, 1400)
    assert sb.delivered_xmit < later.xmit
    assert sb.mark_lost_retransmissions(reo_wnd=0.0) == (0, 0)


def slow_pipe(sb: Scoreboard) -> int:
    return sum((0 if s.lost else s.length) + (s.length if s.retransmitted else 0)
               for s in sb.segments if not s.sacked)


@given(st.lists(st.tuples(st.sampled_from(["sack", "ack", "lost", "head", "rexmit", "rto",
                                           "relost"]),
                          st.integers(0, 9), st.integers(1, 4)), max_size=40))
def test_incremental_pipe_matches_its_definition(ops: list[tuple[str, int, int]]) -> None:
    sb = board(10)
    una = 1000
    for op, i, n in ops:
        if op == "sack":
            left = 1000 + i * MSS
            sb.apply_sack(((left, left + n * MSS),), una, 2000)
        elif op == "ack":
            una = max(una, 1000 + i * MSS // 2)
            sb.ack(una)
        elif op == "lost":
            sb.mark_lost(MSS)
        elif op == "head":
            sb.mark_head_lost()
        elif op == "rexmit":
            seg = sb.next_lost() or sb.next_rescue()
            if seg is not None:
                sb.mark_retransmitted(seg, 1.0)
        elif op == "relost":
            sb.mark_lost_retransmissions(reo_wnd=0.0)
        else:
            sb.mark_all_lost(forget_sacks=n > 2)
        assert sb.pipe() == slow_pipe(sb)
        assert sb.mark_lost_retransmissions(reo_wnd=1e9) == (0, 0)  # no sign of an unknown loss
        assert sb.has_lost() == any(s.lost and not s.retransmitted and not s.sacked
                                    for s in sb.segments)
