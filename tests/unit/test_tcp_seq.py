"""Sequence arithmetic across the 2**32 wrap (RFC 9293 §3.4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.tcp import seq as sq

seqs = st.integers(0, sq.SEQ_MASK)
steps = st.integers(1, (1 << 31) - 1)


def test_wrap_examples() -> None:
    assert sq.add(0xFFFFFFFF, 1) == 0
    assert sq.add(5, -10) == 0xFFFFFFFB
    assert sq.lt(0xFFFFFFF0, 0x10)
    assert sq.gt(0x10, 0xFFFFFFF0)
    assert sq.diff(0x10, 0xFFFFFFF0) == 0x20
    assert sq.in_window(0x2, 0xFFFFFFFE, 8)
    assert not sq.in_window(0x6, 0xFFFFFFFE, 8)
    assert sq.seq_max(0xFFFFFFF0, 0x10) == 0x10
    assert sq.seq_min(0xFFFFFFF0, 0x10) == 0xFFFFFFF0


@given(seqs, steps)
def test_a_number_is_below_what_follows_it(a: int, n: int) -> None:
    b = sq.add(a, n)
    assert sq.lt(a, b) and sq.le(a, b) and sq.gt(b, a) and sq.ge(b, a)
    assert not sq.lt(b, a) and not sq.ge(a, b)
    assert sq.diff(b, a) == n and sq.diff(a, b) == -n


@given(seqs, st.integers(-(1 << 31), (1 << 31) - 1))
def test_add_and_diff_invert(a: int, n: int) -> None:
    assert sq.diff(sq.add(a, n), a) == n
    assert 0 <= sq.add(a, n) <= sq.SEQ_MASK


@given(seqs)
def test_equal_numbers(a: int) -> None:
    assert sq.le(a, a) and sq.ge(a, a) and not sq.lt(a, a) and not sq.gt(a, a)


@given(seqs, st.integers(0, 1 << 20), st.integers(1, 1 << 20))
def test_in_window_matches_offsets(left: int, offset: int, size: int) -> None:
    assert sq.in_window(sq.add(left, offset), left, size) == (offset < size)
