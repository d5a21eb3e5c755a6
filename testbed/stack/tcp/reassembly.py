"""Out-of-order receive queue: the bytes that arrived beyond rcv_nxt, kept until the hole
before them fills (RFC 9293 §3.10.7.4, "seventh"), and the SACK blocks that describe them
(RFC 2018 §4: the block holding the most recent segment first).

Bounded in bytes and in the number of separate ranges, so a peer cannot make us hold
unbounded memory or walk an unbounded list: a segment that does not fit is dropped, never
data we already acknowledged with SACK (we never renege).
"""

from __future__ import annotations

from dataclasses import dataclass

from testbed.stack.tcp import seq as sq


@dataclass
class _Range:
    seq: int  # first byte
    data: bytearray
    touched: int  # recency stamp for SACK block order

    @property
    def end(self) -> int:
        return sq.add(self.seq, len(self.data))


class Reassembly:
    def __init__(self, max_bytes: int, max_ranges: int = 64) -> None:
        self.max_bytes = max_bytes
        self.max_ranges = max_ranges
        self._ranges: list[_Range] = []  # sorted, disjoint, never adjacent
        self._bytes = 0
        self._clock = 0

    @property
    def buffered(self) -> int:
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def insert(self, seq: int, data: bytes, rcv_nxt: int) -> bool:
        """Store `data` starting at `seq` (which lies beyond rcv_nxt). Returns False if it
        was dropped for lack of room; bytes already held are kept as they are."""
        if not data:
            return True
        start = sq.diff(seq, rcv_nxt)
        end = start + len(data)
        if start <= 0:
            raise ValueError("in-order data belongs to the receive buffer, not here")
        spans = [(sq.diff(r.seq, rcv_nxt), r) for r in self._ranges]
        new_bytes = len(data) - sum(
            max(0, min(end, s + len(r.data)) - max(start, s)) for s, r in spans
        )
        if self._bytes + new_bytes > self.max_bytes:
            return False
        self._clock += 1
        # Ranges that overlap or touch the new one merge with it; our copy of old bytes
        # wins (they are the same bytes unless the peer misbehaves).
        merged_start, merged_end = start, end
        keep: list[_Range] = []
        absorbed: list[tuple[int, _Range]] = []
        for s, r in spans:
            if s + len(r.data) < start or s > end:
                keep.append(r)
            else:
                absorbed.append((s, r))
                merged_start = min(merged_start, s)
                merged_end = max(merged_end, s + len(r.data))
        if not absorbed and len(self._ranges) >= self.max_ranges:
            return False
        buf = bytearray(merged_end - merged_start)
        buf[start - merged_start : end - merged_start] = data
        for s, r in absorbed:
            buf[s - merged_start : s - merged_start + len(r.data)] = r.data
        keep.append(_Range(sq.add(rcv_nxt, merged_start), buf, self._clock))
        keep.sort(key=lambda r: sq.diff(r.seq, rcv_nxt))
        self._ranges = keep
        self._bytes += new_bytes
        return True

    def pop_ready(self, rcv_nxt: int) -> bytes:
        """Remove and return the bytes that now continue the stream at rcv_nxt."""
        out = bytearray()
        while self._ranges:
            r = self._ranges[0]
            offset = sq.diff(rcv_nxt, r.seq)  # how far rcv_nxt is past the range's start
            if offset < 0:
                break
            self._ranges.pop(0)
            self._bytes -= len(r.data)
            if offset < len(r.data):
                out += r.data[offset:]
                rcv_nxt = r.end
        return bytes(out)

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """(left, right) edges, most recently changed first (RFC 2018 §4)."""
        ranges = sorted(self._ranges, key=lambda r: -r.touched)[:limit]
        return [(r.seq, r.end) for r in ranges]

    def highest_end(self, rcv_nxt: int) -> int:
        """Bytes from rcv_nxt to the end of the highest range (0 when empty)."""
        if not self._ranges:
            return 0
        return sq.diff(self._ranges[-1].end, rcv_nxt)
