"""DSS mapping bookkeeping (RFC 8684 §3.3.1): which data sequence numbers each subflow's
bytes carry, on the sending side (to label segments and to reinject) and on the receiving
side (to place subflow bytes in the data stream).

Data sequence numbers are 64-bit and compared modulo 2**64 (`dsn_diff`). Subflow sequence
numbers here are relative to the subflow's ISN, as in the DSS option, and grow without
wrapping: a subflow would have to carry 4 GiB before they wrapped (a documented limit).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

_U64 = 1 << 64


def dsn_add(a: int, n: int) -> int:
    return (a + n) % _U64


def dsn_diff(a: int, b: int) -> int:
    """a - b as a signed distance modulo 2**64."""
    d = (a - b) % _U64
    return d - _U64 if d >= _U64 // 2 else d


@dataclass(frozen=True)
class Mapping:
    """`length` bytes from relative subflow sequence `subflow_seq` carry data sequence
    numbers from `data_seq` (DATA_FIN excluded: it has no byte on the subflow)."""

    data_seq: int
    subflow_seq: int
    length: int
    checksum: int | None = None

    @property
    def subflow_end(self) -> int:
        return self.subflow_seq + self.length

    @property
    def data_end(self) -> int:
        return dsn_add(self.data_seq, self.length)

    def covers(self, subflow_seq: int) -> bool:
        return self.subflow_seq <= subflow_seq < self.subflow_end


class SendMappings:
    """The mappings one subflow was given, in subflow order. A mapping is forgotten once
    both the subflow (its bytes will not be retransmitted) and the connection (its data
    will not be reinjected) acknowledged it."""

    def __init__(self) -> None:
        self._maps: list[Mapping] = []
        self._starts: list[int] = []
        self.next_subflow_seq = 1  # relative: the SYN took 0

    def __len__(self) -> int:
        return len(self._maps)

    def add(self, data_seq: int, length: int, checksum: int | None = None) -> Mapping:
        mapping = Mapping(data_seq, self.next_subflow_seq, length, checksum)
        self._maps.append(mapping)
        self._starts.append(mapping.subflow_seq)
        self.next_subflow_seq += length
        return mapping

    def find(self, subflow_seq: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, subflow_seq) - 1
        if i >= 0 and self._maps[i].covers(subflow_seq):
            return self._maps[i]
        return None

    def carrying(self, data_seq: int) -> Mapping | None:
        """The mapping that gave this subflow data_seq, if it still holds one."""
        for m in self._maps:
            if 0 <= dsn_diff(data_seq, m.data_seq) < m.length:
                return m
        return None

    def outstanding(self, subflow_acked: int) -> int:
        """Bytes mapped to the subflow that it has not acknowledged yet."""
        return max(0, self.next_subflow_seq - subflow_acked)

    def prune(self, subflow_acked: int, data_una: int) -> None:
        drop = 0
        for m in self._maps:
            if m.subflow_end <= subflow_acked and dsn_diff(m.data_end, data_una) <= 0:
                drop += 1
            else:
                break
        if drop:
            del self._maps[:drop]
            del self._starts[:drop]

    def unacked_data(self, data_una: int) -> list[tuple[int, int]]:
        """(data_seq, length) of what the connection has not seen acknowledged, clipped to
        start at data_una: what to reinject when this subflow fails."""
        out: list[tuple[int, int]] = []
        for m in self._maps:
            if dsn_diff(m.data_end, data_una) <= 0:
                continue
            skip = max(0, dsn_diff(data_una, m.data_seq))
            out.append((dsn_add(m.data_seq, skip), m.length - skip))
        return out


class ReceiveMappings:
    """The mappings a subflow's peer declared. §3.3.1: a mapping, once declared, cannot
    change; `add` refuses one that overlaps an earlier mapping differently."""

    def __init__(self) -> None:
        self._maps: list[Mapping] = []
        self._starts: list[int] = []

    def __len__(self) -> int:
        return len(self._maps)

    def add(self, mapping: Mapping) -> bool:
        i = bisect.bisect_left(self._starts, mapping.subflow_seq)
        if i < len(self._maps) and self._maps[i].subflow_seq == mapping.subflow_seq:
            old = self._maps[i]
            return (old.data_seq, old.length) == (mapping.data_seq, mapping.length)
        before = self._maps[i - 1] if i > 0 else None
        after = self._maps[i] if i < len(self._maps) else None
        if before is not None and before.subflow_end > mapping.subflow_seq:
            return False
        if after is not None and mapping.subflow_end > after.subflow_seq:
            return False
        self._maps.insert(i, mapping)
        self._starts.insert(i, mapping.subflow_seq)
        return True

    def find(self, subflow_seq: int) -> Mapping | None:
        i = bisect.bisect_right(self._starts, subflow_seq) - 1
        if i >= 0 and self._maps[i].covers(subflow_seq):
            return self._maps[i]
        return None

    def prune(self, consumed: int) -> None:
        """Forget mappings whose bytes were all taken from the subflow."""
        drop = 0
        for m in self._maps:
            if m.subflow_end <= consumed:
                drop += 1
            else:
                break
        if drop:
            del self._maps[:drop]
            del self._starts[:drop]
