"""DSS mapping bookkeeping: send-side mappings per subflow (lookup for labelling segments,
outstanding bytes, pruning, what to reinject) and receive-side mappings (a mapping cannot
change once declared, §3.3.1), with 64-bit DSN arithmetic across the wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from testbed.stack.mptcp.mapping import (
    Mapping,
    ReceiveMappings,
    SendMappings,
    dsn_add,
    dsn_diff,
)

TOP = (1 << 64) - 1


def test_dsn_arithmetic_wraps_at_2_64() -> None:
    assert dsn_add(TOP, 1) == 0
    assert dsn_diff(0, TOP) == 1
    assert dsn_diff(TOP, 0) == -1
    assert dsn_diff(5, 5) == 0


@given(st.integers(0, TOP), st.integers(-(1 << 62), 1 << 62))
def test_dsn_diff_inverts_add(a: int, n: int) -> None:
    assert dsn_diff(dsn_add(a, n), a) == n


def test_send_mappings_label_every_byte_and_only_those() -> None:
    maps = SendMappings()
    first = maps.add(1000, 1400)
    second = maps.add(5000, 600)  # a reinjection: far-away DSN, next subflow bytes
    assert (first.subflow_seq, second.subflow_seq) == (1, 1401)
    assert maps.next_subflow_seq == 2001
    assert maps.find(1) == first and maps.find(1400) == first
    assert maps.find(1401) == second and maps.find(2000) == second
    assert maps.find(0) is None and maps.find(2001) is None
    assert maps.outstanding(subflow_acked=1) == 2000
    assert maps.outstanding(subflow_acked=1401) == 600


def test_send_mappings_are_kept_until_both_levels_acked() -> None:
    maps = SendMappings()
    maps.add(1000, 100)
    maps.add(1100, 100)
    maps.prune(subflow_acked=201, data_una=1100)  # second not data-acked, first is
    assert len(maps) == 1 and maps.find(101) is not None
    maps.prune(subflow_acked=101, data_una=1300)  # data-acked, but the subflow may resend
    assert len(maps) == 1
    maps.prune(subflow_acked=201, data_una=1200)
    assert len(maps) == 0


def test_unacked_data_is_what_to_reinject_clipped_to_the_data_ack() -> None:
    maps = SendMappings()
    maps.add(1000, 100)
    maps.add(1100, 100)
    maps.add(1200, 100)
    assert maps.unacked_data(data_una=1150) == [(1150, 50), (1200, 100)]
    assert maps.unacked_data(data_una=1300) == []
    # Across the 64-bit wrap.
    wrap = SendMappings()
    wrap.add(TOP - 49, 100)
    assert wrap.unacked_data(data_una=TOP) == [(TOP, 51)]


def test_receive_mappings_refuse_a_changed_mapping() -> None:
    maps = ReceiveMappings()
    assert maps.add(Mapping(1000, 1, 100))
    assert maps.add(Mapping(1000, 1, 100))  # the same mapping again (a retransmission)
    assert not maps.add(Mapping(2000, 1, 100))  # same subflow bytes, other DSNs
    assert not maps.add(Mapping(1050, 51, 100))  # overlaps the first
    assert maps.add(Mapping(1100, 101, 50))
    assert not maps.add(Mapping(900, 90, 5))  # inside the first
    assert maps.find(100) == Mapping(1000, 1, 100)
    assert maps.find(101) == Mapping(1100, 101, 50)
    assert maps.find(151) is None
    maps.prune(consumed=101)
    assert len(maps) == 1 and maps.find(50) is None


def test_receive_mappings_accept_out_of_order_declarations() -> None:
    maps = ReceiveMappings()
    assert maps.add(Mapping(3000, 201, 100))
    assert maps.add(Mapping(1000, 1, 100))
    assert maps.add(Mapping(2000, 101, 100))
    assert [maps.find(s).data_seq for s in (1, 101, 201)] == [1000, 2000, 3000]  # type: ignore[union-attr]
