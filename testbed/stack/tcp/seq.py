"""32-bit modular sequence-number arithmetic (RFC 9293 §3.4, RFC 1982 serial numbers).

Two numbers compare by their signed distance, so comparisons stay right across the wrap
from 2**32 - 1 to 0 as long as the two are less than 2**31 apart (TCP keeps windows far
below that: RFC 7323 §2.3 caps the scaled window at 2**30).
"""

from __future__ import annotations

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31


def add(a: int, n: int) -> int:
    """a + n on the sequence circle (n may be negative)."""
    return (a + n) & SEQ_MASK


def diff(a: int, b: int) -> int:
    """The signed distance a - b, in [-2**31, 2**31)."""
    return ((a - b + _HALF) & SEQ_MASK) - _HALF


def lt(a: int, b: int) -> bool:
    return diff(a, b) < 0


def le(a: int, b: int) -> bool:
    return diff(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return diff(a, b) > 0


def ge(a: int, b: int) -> bool:
    return diff(a, b) >= 0


def in_window(x: int, left: int, size: int) -> bool:
    """left <= x < left + size, on the circle."""
    return 0 <= diff(x, left) < size


def seq_max(a: int, b: int) -> int:
    return a if diff(a, b) >= 0 else b


def seq_min(a: int, b: int) -> int:
    return a if diff(a, b) <= 0 else b
