"""Out-of-order receive queue: ordering, overlaps, SACK blocks, bounds."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.tcp import seq as sq
from testbed.stack.tcp.reassembly import Reassembly


def test_fills_holes_and_reports_sack_blocks_most_recent_first() -> None:
    r = Reassembly(10_000)
    assert r.insert(110, b"b" * 10, 100)
    assert r.insert(130, b"d" * 10, 100)
    assert r.sack_blocks(4) == [(130, 140), (110, 120)]
    assert r.insert(120, b"c" * 10, 100)  # joins both ranges
    assert r.sack_blocks(4) == [(110, 140)]
    assert r.pop_ready(100) == b""
    assert r.pop_ready(110) == b"b" * 10 + b"c" * 10 + b"d" * 10
    assert not r and r.buffered == 0


def test_overlaps_are_stored_once_and_old_bytes_win() -> None:
    r = Reassembly(10_000)
    r.insert(10, b"AAAA", 0)
    r.insert(12, b"xxxxxx", 0)
    assert r.buffered == 8
    assert r.pop_ready(10) == b"AAAAxxxx"


def test_pop_skips_what_was_already_delivered() -> None:
    r = Reassembly(10_000)
    r.insert(10, b"0123456789", 0)
    assert r.pop_ready(15) == b"56789"


def test_bounded_in_bytes_and_ranges() -> None:
    r = Reassembly(100, max_ranges=2)
    assert not r.insert(10, b"x" * 101, 0)
    assert r.insert(10, b"x", 0) and r.insert(20, b"x", 0)
    assert not r.insert(30, b"x", 0)  # a third range
    assert r.insert(11, b"x", 0)  # extending one is fine
    assert r.buffered == 3


def test_works_across_the_wrap() -> None:
    r = Reassembly(10_000)
    r.insert(sq.add(0xFFFFFFF0, 20), b"late", 0xFFFFFFF0)
    assert r.sack_blocks(1) == [(4, 8)]
    assert r.pop_ready(4) == b"late"


@given(st.binary(min_size=1, max_size=400), st.integers(0, 2**32 - 1), st.randoms())
def test_any_order_of_any_pieces_rebuilds_the_stream(data: bytes, start: int,
                                                      rnd: random.Random) -> None:
    pieces = []
    i = 0
    while i < len(data):
        n = rnd.randint(1, 30)
        pieces.append((i, data[i:i + n]))
        i += n
    pieces += [pieces[rnd.randrange(len(pieces))] for _ in range(3)]  # duplicates
    rnd.shuffle(pieces)
    r = Reassembly(10_000, max_ranges=1000)
    out = bytearray()
    rcv_nxt = start
    for offset, piece in pieces:
        seq = sq.add(start, offset)
        d = sq.diff(seq, rcv_nxt)
        if d + len(piece) <= 0:
            continue
        if d <= 0:
            piece = piece[-d:]
            out += piece
            rcv_nxt = sq.add(rcv_nxt, len(piece))
        else:
            assert r.insert(seq, piece, rcv_nxt)
        ready = r.pop_ready(rcv_nxt)
        out += ready
        rcv_nxt = sq.add(rcv_nxt, len(ready))
    assert bytes(out) == data
    assert not r
