"""The sender's retransmission queue and SACK scoreboard (RFC 6675 §4: IsLost, pipe,
NextSeg), kept per segment as sent (like Linux's retransmit queue) so that Karn's rule,
pipe and loss marking are questions about a handful of flags.

The same queue serves NewReno (RFC 6582) when SACK is off: nothing is ever SACKed and the
connection marks the head segment lost on fast retransmit and on partial ACKs.

A retransmission can be lost too. RFC 6675 leaves that to the RTO, which costs at least
200 ms and a window of one segment; the scoreboard instead applies RACK's rule (RFC 8985
§6.2) to retransmissions: once a segment sent after one has been delivered, and at least a
reordering window later than it, the retransmission is lost and is sent again
(`mark_lost_retransmissions`). Original transmissions keep the dupthresh rule above. Only
segments sent once give that evidence: a SACK or ACK for a retransmitted segment may be for
its first copy.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from testbed.stack.tcp import seq as sq


@dataclass(slots=True)
class SentSegment:
    seq: int
    end: int  # seq + sequence space consumed (a FIN counts one)
    sent_at: float
    # Order of the latest transmission among all of the connection's, sends and resends.
    xmit: int = 0
    fin: bool = False
    ever_retransmitted: bool = False  # Karn's rule (RFC 6298 §3)
    retransmitted: bool = False  # retransmitted and still counted in pipe (RFC 6675)
    sacked: bool = False
    lost: bool = False

    @property
    def length(self) -> int:
        return sq.diff(self.end, self.seq)


@dataclass(frozen=True)
class AckResult:
    acked_bytes: int
    rtt_sent_at: float | None  # send time of the newest acked never-retransmitted segment
    fin_acked: bool


class Scoreboard:
    def __init__(self, dup_thresh: int = 3) -> None:
        self.dup_thresh = dup_thresh
        self.segments: list[SentSegment] = []
        self.sacked_bytes = 0
        self.high_sacked: int | None = None  # right edge of the highest SACKed segment
        # Kept up to date on every flag change, so the sender asks in O(1) on each call.
        self._pipe = 0
        self._lost_waiting = 0  # lost, not SACKed, not yet retransmitted
        self._lost_waiting_bytes = 0  # their length
        self._retransmitted_out = 0  # retransmitted, not SACKed: their copy is in flight
        # Transmission order (SentSegment.xmit), and the latest transmission known delivered
        # with its send time: RACK's "most recently sent delivered segment" (RFC 8985 §6.1).
        self._xmit = 0
        self.delivered_xmit = 0
        self.delivered_sent_at = 0.0

    @staticmethod
    def _contribution(seg: SentSegment) -> tuple[int, int, int]:
        """(bytes in pipe, 1 if waiting for retransmission, 1 if a retransmission is out) of
        one segment (RFC 6675 §4)."""
        if seg.sacked:
            return 0, 0, 0
        pipe = (0 if seg.lost else seg.length) + (seg.length if seg.retransmitted else 0)
        return (pipe, 1 if seg.lost and not seg.retransmitted else 0,
                1 if seg.retransmitted else 0)

    def _forget(self, seg: SentSegment) -> None:
        pipe, waiting, out = self._contribution(seg)
        self._pipe -= pipe
        self._lost_waiting -= waiting
        self._lost_waiting_bytes -= waiting * seg.length
        self._retransmitted_out -= out

    def _count(self, seg: SentSegment) -> None:
        pipe, waiting, out = self._contribution(seg)
        self._pipe += pipe
        self._lost_waiting += waiting
        self._lost_waiting_bytes += waiting * seg.length
        self._retransmitted_out += out

    def _delivered(self, seg: SentSegment) -> None:
        """`seg` reached the receiver (SACKed or cumulatively acked): the latest delivered
        transmission moves on, if its only copy says so (module docstring)."""
        if not seg.ever_retransmitted and seg.xmit > self.delivered_xmit:
            self.delivered_xmit = seg.xmit
            self.delivered_sent_at = seg.sent_at

    def __len__(self) -> int:
        return len(self.segments)

    def add(self, seq: int, length: int, now: float, fin: bool = False) -> SentSegment:
        self._xmit += 1
        seg = SentSegment(seq, sq.add(seq, length), now, xmit=self._xmit, fin=fin)
        self.segments.append(seg)
        self._count(seg)
        return seg

    def mark_retransmitted(self, seg: SentSegment, now: float) -> None:
        self._forget(seg)
        # It stays lost (IsLost is about the SACKs above it): RFC 6675 SetPipe then counts
        # it once, for the retransmission.
        seg.retransmitted = True
        seg.ever_retransmitted = True
        seg.sent_at = now
        self._xmit += 1
        seg.xmit = self._xmit
        self._count(seg)

    def ack(self, snd_una: int) -> AckResult:
        """Drop everything below the new cumulative ACK."""
        acked = 0
        rtt_sent_at: float | None = None
        fin_acked = False
        n = 0
        ambiguous = False
        for seg in self.segments:
            if sq.le(seg.end, snd_una):
                n += 1
                self._forget(seg)
                acked += seg.length
                if seg.sacked:
                    self.sacked_bytes -= seg.length
                else:
                    self._delivered(seg)
                # Karn (RFC 6298 §3): an ACK that covers a retransmission may be its echo;
                # and a SACKed segment's cumulative ACK says nothing about its own RTT.
                ambiguous = ambiguous or seg.ever_retransmitted
                rtt_sent_at = None if (ambiguous or seg.sacked) else seg.sent_at
                fin_acked = fin_acked or seg.fin
            else:
                break
        del self.segments[:n]
        if self.segments and sq.lt(self.segments[0].seq, snd_una):
            # A cumulative ACK inside a segment (the peer trimmed it): keep the tail.
            head = self.segments[0]
            part = sq.diff(snd_una, head.seq)
            acked += part
            if head.sacked:
                self.sacked_bytes -= part
            self._forget(head)
            head.seq = snd_una
            self._count(head)
        if not self.segments or self.sacked_bytes == 0:
            self.high_sacked = None
        return AckResult(acked, rtt_sent_at, fin_acked)

    def _index(self, seq: int) -> int:
        """Index of the first segment whose seq is >= `seq`."""
        if not self.segments:
            return 0
        base = self.segments[0].seq
        return bisect.bisect_left(
            self.segments, sq.diff(seq, base), key=lambda s: sq.diff(s.seq, base)
        )

    def apply_sack(self, blocks: tuple[tuple[int, int], ...], snd_una: int, snd_nxt: int) -> int:
        """Mark segments wholly covered by SACK blocks; returns newly SACKed bytes.
        Blocks outside (snd_una, snd_nxt] are ignored (RFC 2018 §8 and old D-SACKs)."""
        newly = 0
        for left, right in blocks:
            if not (sq.lt(left, right) and sq.ge(left, snd_una) and sq.le(right, snd_nxt)):
                continue
            i = self._index(left)
            while i < len(self.segments):
                seg = self.segments[i]
                if sq.gt(seg.end, right):
                    break
                if not seg.sacked:
                    self._forget(seg)
                    self._delivered(seg)
                    seg.sacked = True
                    seg.lost = False
                    seg.retransmitted = False
                    newly += seg.length
                    self.sacked_bytes += seg.length
                    if self.high_sacked is None or sq.gt(seg.end, self.high_sacked):
                        self.high_sacked = seg.end
                i += 1
        return newly

    def mark_lost(self, mss: int) -> int:
        """IsLost (RFC 6675 §4): a segment is lost when dup_thresh discontiguous SACKed
        segments, or more than (dup_thresh - 1) * mss SACKed bytes, lie above it. Returns
        how many segments were newly marked."""
        if self.sacked_bytes == 0:
            return 0
        marked = 0
        sacked_segs = 0
        sacked_bytes = 0
        for seg in reversed(self.segments):
            if seg.sacked:
                sacked_segs += 1
                sacked_bytes += seg.length
            elif sacked_segs >= self.dup_thresh or sacked_bytes > (self.dup_thresh - 1) * mss:
                if not seg.lost and not seg.retransmitted:
                    self._forget(seg)
                    seg.lost = True
                    self._count(seg)
                    marked += 1
                elif seg.lost:
                    # Everything below an already lost segment was marked before.
                    break
        return marked

    @property
    def last_xmit(self) -> int:
        """The transmission order of the latest send or resend."""
        return self._xmit

    def mark_lost_retransmissions(self, reo_wnd: float) -> tuple[int, int]:
        """RACK for retransmissions (module docstring): a retransmission not SACKed is lost
        when the latest delivered transmission went after it, by at least `reo_wnd` seconds
        (RFC 8985 §6.2: reordering this much is tolerated). It becomes lost and waiting
        again, so NextSeg resends it. Returns how many were marked and the transmission
        order of the latest of them (0 if none)."""
        if not self._retransmitted_out:
            return 0, 0
        marked = latest = 0
        for seg in self.segments:
            if (seg.retransmitted and not seg.sacked and seg.xmit < self.delivered_xmit
                    and self.delivered_sent_at - seg.sent_at >= reo_wnd):
                self._forget(seg)
                seg.retransmitted = False
                seg.lost = True
                self._count(seg)
                marked += 1
                latest = max(latest, seg.xmit)
        return marked, latest

    def mark_head_lost(self) -> None:
        if self.segments and not self.segments[0].sacked:
            head = self.segments[0]
            self._forget(head)
            head.lost = True
            head.retransmitted = False
            self._count(head)

    def mark_all_lost(self, forget_sacks: bool) -> None:
        """After an RTO everything outstanding is presumed lost (RFC 6298 §5.4, 6675 §5.1).
        `forget_sacks` drops SACK marks too, in case the receiver reneged (RFC 2018 §8)."""
        for seg in self.segments:
            self._forget(seg)
            if forget_sacks and seg.sacked:
                seg.sacked = False
            seg.retransmitted = False
            if not seg.sacked:
                seg.lost = True
            self._count(seg)
        if forget_sacks:
            self.sacked_bytes = 0
            self.high_sacked = None

    def pipe(self) -> int:
        """Bytes presumed in the network (RFC 6675 §4 SetPipe)."""
        return self._pipe

    def next_lost(self) -> SentSegment | None:
        """NextSeg rule 1 (RFC 6675 §4): the first lost segment not yet retransmitted."""
        if not self._lost_waiting:
            return None
        for seg in self.segments:
            if seg.lost and not seg.sacked and not seg.retransmitted:
                return seg
        return None

    def next_rescue(self) -> SentSegment | None:
        """NextSeg rule 3: when no new data can go, an unSACKed segment below the highest
        SACKed byte that was not retransmitted yet."""
        if self.high_sacked is None:
            return None
        for seg in self.segments:
            if not sq.lt(seg.seq, self.high_sacked):
                return None
            if not seg.sacked and not seg.retransmitted:
                return seg
        return None

    def has_lost(self) -> bool:
        return self._lost_waiting > 0

    def lost_waiting_bytes(self) -> int:
        """Bytes marked lost and not yet retransmitted: what NextSeg rule 1 will resend
        before any new data (RFC 6675 §4)."""
        return self._lost_waiting_bytes
