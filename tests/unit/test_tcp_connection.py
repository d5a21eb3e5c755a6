"""Exact-segment tests of TcpConnection in smoltcp's style: a precise segment in at a
precise time, the precise segments out. Our ISS is 1000, the peer's 5000."""

from __future__ import annotations

import pytest

from testbed.stack.tcp.connection import TcpConfig, TcpConnection, TcpError, TcpState
from testbed.stack.wire.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    MssOption,
    SackOption,
    SackPermittedOption,
    TcpOption,
    TcpSegment,
    TimestampOption,
    WindowScaleOption,
)

LOCAL = bytes([10, 0, 0, 1])
REMOTE = bytes([10, 0, 0, 2])
LPORT, RPORT = 40000, 80
ISS, IRS = 1000, 5000
WIN = 65535


def config(**kw: object) -> TcpConfig:
    base: dict[str, object] = dict(timestamps=False, window_scale=False, sack=False,
                                   receive_buffer=WIN, receive_buffer_max=WIN,
                                   congestion="reno")
    base.update(kw)
    return TcpConfig(**base)  # type: ignore[arg-type]


def inbound(seq: int, ack: int = 0, flags: int = ACK, window: int = WIN,
            payload: bytes = b"", options: tuple[TcpOption, ...] = ()) -> TcpSegment:
    return TcpSegment(RPORT, LPORT, seq, ack, flags, window, options, payload)


def outbound(seq: int, ack: int = 0, flags: int = ACK, window: int = WIN,
             payload: bytes = b"", options: tuple[TcpOption, ...] = ()) -> TcpSegment:
    return TcpSegment(LPORT, RPORT, seq, ack, flags, window, options, payload)


def new_conn(cfg: TcpConfig | None = None, iss: int = ISS) -> TcpConnection:
    return TcpConnection(LOCAL, LPORT, REMOTE, RPORT, iss=iss, config=cfg or config(),
                         now=0.0)


def established(cfg: TcpConfig | None = None, rtt: float = 0.1,
                peer_options: tuple[TcpOption, ...] = (MssOption(1460),),
                iss: int = ISS, irs: int = IRS) -> TcpConnection:
    """Active open with a `rtt` handshake: srtt=0.1, rttvar=0.05, RTO=0.3 s."""
    conn = new_conn(cfg, iss)
    conn.open_active(0.0)
    conn.segments_to_send(0.0)
    conn.receive(inbound(irs, (iss + 1) & 0xFFFFFFFF, SYN | ACK, WIN, options=peer_options),
                 rtt)
    conn.segments_to_send(rtt)
    assert conn.state is TcpState.ESTABLISHED
    return conn


# --- handshakes -----------------------------------------------------------------------


def test_active_open() -> None:
    conn = new_conn(config(sack=True))
    conn.open_active(0.0)
    assert conn.state is TcpState.SYN_SENT
    assert conn.segments_to_send(0.0) == [
        outbound(ISS, 0, SYN, WIN, options=(MssOption(1460), SackPermittedOption()))]
    assert conn.next_timer() == 1.0  # RFC 6298 §2.1 initial RTO
    conn.receive(inbound(IRS, ISS + 1, SYN | ACK, 30000,
                         options=(MssOption(1400), SackPermittedOption())), 0.05)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.segments_to_send(0.05) == [outbound(ISS + 1, IRS + 1)]
    assert conn.eff_mss == 1400 and conn.sack_ok and conn.snd_wnd == 30000
    assert conn.rtt.srtt == pytest.approx(0.05)
    assert conn.next_timer() is None


def test_passive_open() -> None:
    conn = new_conn()
    conn.open_passive(inbound(IRS, 0, SYN, 20000, options=(MssOption(1000),)), 0.0)
    assert conn.state is TcpState.SYN_RECEIVED
    assert conn.segments_to_send(0.0) == [
        outbound(ISS, IRS + 1, SYN | ACK, WIN, options=(MssOption(1460),))]
    conn.receive(inbound(IRS + 1, ISS + 1, ACK, 20000), 0.02)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.segments_to_send(0.02) == []
    assert conn.eff_mss == 1000


def test_syn_ack_lost_is_sent_again_when_the_syn_repeats() -> None:
    conn = new_conn()
    conn.open_passive(inbound(IRS, 0, SYN), 0.0)
    synack = conn.segments_to_send(0.0)
    conn.receive(inbound(IRS, 0, SYN), 0.5)
    assert conn.segments_to_send(0.5) == synack


def test_simultaneous_open() -> None:
    # RFC 9293 §3.5 figure 8.
    conn = new_conn()
    conn.open_active(0.0)
    conn.segments_to_send(0.0)
    conn.receive(inbound(IRS, 0, SYN, options=(MssOption(1460),)), 0.01)
    assert conn.state is TcpState.SYN_RECEIVED
    assert conn.segments_to_send(0.01) == [
        outbound(ISS, IRS + 1, SYN | ACK, WIN, options=(MssOption(1460),))]
    conn.receive(inbound(IRS, ISS + 1, SYN | ACK, options=(MssOption(1460),)), 0.02)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.segments_to_send(0.02) == [outbound(ISS + 1, IRS + 1)]


def test_syn_sent_bad_ack_gets_rst_and_rst_refuses() -> None:
    conn = new_conn()
    conn.open_active(0.0)
    conn.segments_to_send(0.0)
    conn.receive(inbound(IRS, 777, SYN | ACK), 0.01)  # RFC 9293 §3.10.7.3
    assert conn.segments_to_send(0.01) == [outbound(777, 0, RST, 0)]
    assert conn.state is TcpState.SYN_SENT
    conn.receive(inbound(0, ISS + 1, RST | ACK, 0), 0.02)
    assert conn.closed and conn.error == "connection refused"


def test_syn_retransmission_backs_off_then_times_out() -> None:
    conn = new_conn(config(syn_retries=2))
    conn.open_active(0.0)
    syn = conn.segments_to_send(0.0)
    conn.handle_timer(1.0)
    assert conn.segments_to_send(1.0) == syn
    assert conn.next_timer() == 3.0
    conn.handle_timer(3.0)
    assert conn.segments_to_send(3.0) == syn
    assert conn.next_timer() == 7.0
    conn.handle_timer(7.0)
    assert conn.closed and conn.error == "timeout"


# --- data, ACKs, delayed ACKs ------------------------------------------------------------


def test_data_and_ack() -> None:
    conn = established()
    assert conn.send(b"hello", 1.0) == 5
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 1, ACK | PSH,
                                                   payload=b"hello")]
    assert conn.bytes_in_flight == 5
    assert conn.next_timer() == pytest.approx(1.3)
    conn.receive(inbound(IRS + 1, ISS + 6), 1.1)
    assert conn.bytes_in_flight == 0 and conn.next_timer() is None
    assert conn.segments_to_send(1.1) == []
    assert conn.stats()["bytes_acked"] == 5


def test_delayed_ack_timer_and_every_second_full_segment() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1, ISS + 1, ACK, payload=b"x" * 100), 1.0)
    assert conn.segments_to_send(1.0) == []
    assert conn.next_timer() == pytest.approx(1.04)
    conn.handle_timer(1.04)
    # The right edge stays where it was until it can move by a useful amount.
    assert conn.segments_to_send(1.04) == [outbound(ISS + 1, IRS + 101, window=WIN - 100)]
    full = b"y" * 1460
    conn.receive(inbound(IRS + 101, ISS + 1, ACK, payload=full), 2.0)
    assert conn.segments_to_send(2.0) == []
    conn.receive(inbound(IRS + 1561, ISS + 1, ACK, payload=full), 2.001)
    assert conn.segments_to_send(2.001) == [outbound(ISS + 1, IRS + 3021, window=WIN - 3020)]
    assert conn.next_timer() is None
    assert conn.recv() == b"x" * 100 + full * 2


def test_out_of_order_data_gets_immediate_dup_acks_with_sack_blocks() -> None:
    conn = established(config(sack=True),
                       peer_options=(MssOption(1460), SackPermittedOption()))
    conn.receive(inbound(IRS + 101, ISS + 1, payload=b"b" * 100), 1.0)
    assert conn.segments_to_send(1.0) == [
        outbound(ISS + 1, IRS + 1, options=(SackOption(((IRS + 101, IRS + 201),)),))]
    conn.receive(inbound(IRS + 301, ISS + 1, payload=b"d" * 100), 1.001)
    assert conn.segments_to_send(1.001) == [outbound(ISS + 1, IRS + 1, options=(
        SackOption(((IRS + 301, IRS + 401), (IRS + 101, IRS + 201))),))]
    # Filling the first hole is acknowledged at once; one block remains.
    conn.receive(inbound(IRS + 1, ISS + 1, payload=b"a" * 100), 1.002)
    assert conn.segments_to_send(1.002) == [outbound(
        ISS + 1, IRS + 201, window=WIN - 200, options=(SackOption(((IRS + 301, IRS + 401),)),))]
    conn.receive(inbound(IRS + 201, ISS + 1, payload=b"c" * 100), 1.003)
    assert conn.segments_to_send(1.003) == [outbound(ISS + 1, IRS + 401, window=WIN - 400)]
    assert conn.recv() == b"a" * 100 + b"b" * 100 + b"c" * 100 + b"d" * 100


def test_old_duplicate_data_is_acked_at_once() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1, ISS + 1, payload=b"z" * 10), 1.0)
    conn.handle_timer(1.04)
    conn.segments_to_send(1.04)
    conn.receive(inbound(IRS + 1, ISS + 1, payload=b"z" * 10), 1.5)
    assert conn.segments_to_send(1.5) == [outbound(ISS + 1, IRS + 11, window=WIN - 10)]


# --- RFC 5961 ----------------------------------------------------------------------------


def test_rst_exactly_at_rcv_nxt_resets() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1, 0, RST, 0), 1.0)
    assert conn.closed and conn.error == "reset by peer"
    assert conn.segments_to_send(1.0) == []


def test_rst_in_window_gets_challenge_ack_and_out_of_window_is_ignored() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1000, 0, RST, 0), 1.0)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 1)]
    assert conn.mib["TCPChallengeACK"] == 1
    conn.receive(inbound(IRS + 1 + WIN + 10, 0, RST, 0), 1.1)
    assert conn.segments_to_send(1.1) == []
    assert conn.state is TcpState.ESTABLISHED


def test_syn_in_established_gets_rate_limited_challenge_acks() -> None:
    conn = established(config(challenge_ack_limit_per_s=2))
    for t in (1.0, 1.1, 1.2):
        conn.receive(inbound(IRS + 50, 0, SYN), t)
    assert conn.segments_to_send(1.2) == [outbound(ISS + 1, IRS + 1)] * 2
    assert conn.mib["TCPACKSkippedChallenge"] == 1
    conn.receive(inbound(IRS + 50, 0, SYN), 2.5)
    assert conn.segments_to_send(2.5) == [outbound(ISS + 1, IRS + 1)]
    assert conn.state is TcpState.ESTABLISHED


def test_ack_for_unsent_data_is_challenged_and_its_data_dropped() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1, ISS + 5000, payload=b"evil"), 1.0)
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 1)]
    assert conn.recv() == b""


# --- closing -----------------------------------------------------------------------------


def test_active_close_through_fin_wait_2_and_time_wait() -> None:
    conn = established(config(time_wait_s=2.0))
    conn.close(1.0)
    assert conn.state is TcpState.FIN_WAIT_1
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 1, FIN | ACK)]
    conn.receive(inbound(IRS + 1, ISS + 2), 1.1)
    assert conn.state is TcpState.FIN_WAIT_2
    conn.receive(inbound(IRS + 1, ISS + 2, FIN | ACK), 1.2)
    assert conn.state is TcpState.TIME_WAIT
    assert conn.segments_to_send(1.2) == [outbound(ISS + 2, IRS + 2, window=WIN - 1)]
    assert conn.next_timer() == pytest.approx(3.2)
    # A retransmitted FIN is acknowledged again and restarts the wait.
    conn.receive(inbound(IRS + 1, ISS + 2, FIN | ACK), 2.0)
    assert conn.segments_to_send(2.0) == [outbound(ISS + 2, IRS + 2, window=WIN - 1)]
    assert conn.next_timer() == pytest.approx(4.0)
    conn.handle_timer(4.0)
    assert conn.closed and conn.error is None


def test_fin_with_ack_of_our_fin_goes_straight_to_time_wait() -> None:
    conn = established()
    conn.close(1.0)
    conn.segments_to_send(1.0)
    conn.receive(inbound(IRS + 1, ISS + 2, FIN | ACK), 1.1)
    assert conn.state is TcpState.TIME_WAIT


def test_passive_close_through_close_wait_and_last_ack() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1, ISS + 1, FIN | ACK, payload=b"bye"), 1.0)
    assert conn.state is TcpState.CLOSE_WAIT
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 5, window=WIN - 4)]
    assert conn.recv() == b"bye" and conn.at_eof
    conn.close(1.5)
    assert conn.state is TcpState.LAST_ACK
    assert conn.segments_to_send(1.5) == [outbound(ISS + 1, IRS + 5, FIN | ACK,
                                                   window=WIN - 4)]
    conn.receive(inbound(IRS + 5, ISS + 2), 1.6)
    assert conn.closed and conn.error is None


def test_simultaneous_close_through_closing() -> None:
    conn = established()
    conn.close(1.0)
    conn.segments_to_send(1.0)
    conn.receive(inbound(IRS + 1, ISS + 1, FIN | ACK), 1.05)
    assert conn.state is TcpState.CLOSING
    assert conn.segments_to_send(1.05) == [outbound(ISS + 2, IRS + 2, window=WIN - 1)]
    conn.receive(inbound(IRS + 2, ISS + 2), 1.1)
    assert conn.state is TcpState.TIME_WAIT


def test_fin_beyond_a_hole_waits_for_the_hole() -> None:
    conn = established()
    conn.receive(inbound(IRS + 11, ISS + 1, FIN | ACK, payload=b"b" * 10), 1.0)
    assert conn.state is TcpState.ESTABLISHED
    conn.receive(inbound(IRS + 1, ISS + 1, payload=b"a" * 10), 1.01)
    assert conn.state is TcpState.CLOSE_WAIT
    assert conn.recv() == b"a" * 10 + b"b" * 10


def test_abort_sends_rst_and_send_after_close_is_an_error() -> None:
    conn = established()
    conn.close(1.0)
    with pytest.raises(TcpError):
        conn.send(b"late", 1.0)
    conn2 = established()
    conn2.abort(1.0)
    assert conn2.segments_to_send(1.0) == [outbound(ISS + 1, 0, RST, 0)]
    assert conn2.closed


# --- flow control -----------------------------------------------------------------------


def test_zero_window_probe_with_back_off_and_reopening() -> None:
    conn = established()
    conn.receive(inbound(IRS + 1, ISS + 1, ACK, 0), 1.0)
    assert conn.snd_wnd == 0
    conn.send(b"q" * 100, 1.0)
    assert conn.segments_to_send(1.0) == []
    assert conn.next_timer() == pytest.approx(1.3)
    conn.handle_timer(1.3)
    probe = outbound(ISS, IRS + 1)  # seq snd_una - 1, no data: elicits the window
    assert conn.segments_to_send(1.3) == [probe]
    assert conn.next_timer() == pytest.approx(1.9)  # backed off: 2 * RTO
    conn.receive(inbound(IRS + 1, ISS + 1, ACK, 0), 1.35)
    conn.handle_timer(conn.next_timer() or 0)
    assert conn.segments_to_send(1.9) == [probe]
    assert conn.next_timer() == pytest.approx(3.1)
    conn.receive(inbound(IRS + 1, ISS + 1, ACK, 1000), 2.0)
    assert conn.segments_to_send(2.0) == [outbound(ISS + 1, IRS + 1, ACK | PSH,
                                                   payload=b"q" * 100)]


def test_receiver_window_closes_and_opens_without_silly_windows() -> None:
    conn = established(config(receive_buffer=4000, receive_buffer_max=4000))
    conn.receive(inbound(IRS + 1, ISS + 1, payload=b"a" * 1460), 1.0)
    conn.receive(inbound(IRS + 1461, ISS + 1, payload=b"b" * 1460), 1.0)
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 2921, window=1080)]
    conn.receive(inbound(IRS + 2921, ISS + 1, payload=b"c" * 1080), 1.01)
    conn.handle_timer(1.05)
    assert conn.segments_to_send(1.05) == [outbound(ISS + 1, IRS + 4001, window=0)]
    conn.recv(100)  # 100 bytes free: too little to announce (RFC 9293 §3.8.6.2.2)
    conn.receive(inbound(IRS + 4001, ISS + 1, payload=b"p"), 1.1)  # RFC 9293 probe
    assert conn.segments_to_send(1.1) == [outbound(ISS + 1, IRS + 4001, window=0)]
    conn.receive(inbound(IRS + 4000, ISS + 1), 1.15)  # Linux's probe
    assert conn.segments_to_send(1.15) == [outbound(ISS + 1, IRS + 4001, window=0)]
    conn.recv(3000)
    assert conn.segments_to_send(1.2) == [outbound(ISS + 1, IRS + 4001, window=3100)]


def test_window_scale_negotiation_and_arithmetic() -> None:
    cfg = config(window_scale=True, receive_buffer=1 << 20, receive_buffer_max=1 << 20)
    conn = new_conn(cfg)
    conn.open_active(0.0)
    (syn,) = conn.segments_to_send(0.0)
    assert syn.option(WindowScaleOption) == WindowScaleOption(5)  # 2**20 >> 5 < 65536
    assert syn.window == WIN  # RFC 7323 §2.2: a SYN's window is never scaled
    conn.receive(inbound(IRS, ISS + 1, SYN | ACK, 1000,
                         options=(MssOption(1460), WindowScaleOption(3))), 0.1)
    assert conn.snd_wnd == 1000  # nor is a SYN-ACK's
    (ack,) = conn.segments_to_send(0.1)
    assert ack.window == (1 << 20) >> 5
    conn.receive(inbound(IRS + 1, ISS + 1, ACK, 100), 0.2)
    assert conn.snd_wnd == 800


def test_no_window_scale_unless_both_offer_it() -> None:
    cfg = config(window_scale=True, receive_buffer=1 << 20, receive_buffer_max=1 << 20)
    conn = new_conn(cfg)
    conn.open_active(0.0)
    conn.segments_to_send(0.0)
    conn.receive(inbound(IRS, ISS + 1, SYN | ACK, 1000, options=(MssOption(1460),)), 0.1)
    (ack,) = conn.segments_to_send(0.1)
    assert conn.rcv_wscale == 0 and ack.window == WIN


# --- retransmission and recovery --------------------------------------------------------


def test_rto_backs_off_and_karn_ignores_the_retransmission_ack() -> None:
    conn = established()
    conn.send(b"r" * 100, 1.0)
    (first,) = conn.segments_to_send(1.0)
    assert conn.next_timer() == pytest.approx(1.3)
    conn.handle_timer(1.3)
    assert conn.segments_to_send(1.3) == [first]
    assert conn.next_timer() == pytest.approx(1.9)
    conn.handle_timer(conn.next_timer() or 0)
    assert conn.segments_to_send(1.9) == [first]
    assert conn.next_timer() == pytest.approx(3.1)
    srtt = conn.rtt.srtt
    conn.receive(inbound(IRS + 1, ISS + 101), 2.0)
    assert conn.rtt.srtt == srtt  # Karn: no sample from a retransmitted segment
    assert conn.stats()["retransmissions_rto"] == 2
    assert conn.rtt.rto == pytest.approx(0.3)  # RFC 6298 §5.7: back-off forgotten


def test_too_many_retransmissions_fail_with_timeout() -> None:
    conn = established(config(max_retries=2))
    conn.send(b"t", 1.0)
    conn.segments_to_send(1.0)
    t = 1.0
    for _ in range(3):
        deadline = conn.next_timer()
        assert deadline is not None
        t = deadline
        conn.handle_timer(t)
        conn.segments_to_send(t)
    assert conn.closed and conn.error == "timeout"


def five_segments(conn: TcpConnection) -> list[TcpSegment]:
    conn.send(bytes(range(250)) * 20 + b"x" * (1460 * 5 - 5000), 1.0)
    segs = conn.segments_to_send(1.0)
    assert [s.seq for s in segs] == [ISS + 1 + 1460 * i for i in range(5)]
    return segs


def test_fast_retransmit_on_third_dup_ack_newreno() -> None:
    conn = established()
    segs = five_segments(conn)
    for i in range(2):
        conn.receive(inbound(IRS + 1, ISS + 1), 1.1 + i / 100)
        assert conn.segments_to_send(1.1) == []
    conn.receive(inbound(IRS + 1, ISS + 1), 1.13)
    assert conn.segments_to_send(1.13) == [segs[0]]
    assert conn.stats()["dup_acks"] == 3 and conn.stats()["retransmissions_fast"] == 1
    assert conn.mib["TCPRenoRecovery"] == 1
    # A partial ACK retransmits the next hole at once (RFC 6582 §3.2 step 5).
    conn.receive(inbound(IRS + 1, ISS + 1 + 1460), 1.2)
    assert conn.segments_to_send(1.2) == [segs[1]]
    conn.receive(inbound(IRS + 1, ISS + 1 + 1460 * 5), 1.3)
    assert conn.bytes_in_flight == 0


def test_sack_recovery_retransmits_only_the_hole() -> None:
    conn = established(config(sack=True),
                       peer_options=(MssOption(1460), SackPermittedOption()))
    segs = five_segments(conn)
    for i in range(1, 4):
        sack = SackOption(((ISS + 1 + 1460, ISS + 1 + 1460 * (i + 1)),))
        conn.receive(inbound(IRS + 1, ISS + 1, options=(sack,)), 1.1 + i / 100)
    out = conn.segments_to_send(1.14)
    assert out[0] == segs[0]
    assert conn.mib["TCPSackRecovery"] == 1
    assert conn.stats()["sack_blocks_received"] == 3


def test_cwnd_room_is_cwnd_less_the_pipe_and_what_waits_to_be_sent() -> None:
    """What a layer above may still queue (an MPTCP scheduler asks this): SACKed bytes have
    left the network (RFC 6675 pipe), a lost segment and unsent data will take room."""
    conn = established(config(sack=True),
                       peer_options=(MssOption(1460), SackPermittedOption()))
    five_segments(conn)
    assert conn.cwnd_room == conn.cc.cwnd - 5 * 1460
    for i in range(1, 4):
        sack = SackOption(((ISS + 1 + 1460, ISS + 1 + 1460 * (i + 1)),))
        conn.receive(inbound(IRS + 1, ISS + 1, options=(sack,)), 1.1 + i / 100)
    assert conn.mib["TCPSackRecovery"] == 1
    # Segments 2-4 SACKed, 5 in flight, 1 lost and waiting for its retransmission.
    assert conn.cwnd_room == conn.cc.cwnd - 1460 - 1460
    assert conn.cwnd_room > conn.cc.cwnd - conn.bytes_in_flight
    assert conn.segments_to_send(1.14)[0].seq == ISS + 1
    assert conn.cwnd_room == conn.cc.cwnd - 2 * 1460  # the retransmission is in the pipe
    conn.send(b"y" * 1000, 1.15)
    assert conn.cwnd_room == conn.cc.cwnd - 2 * 1460 - 1000


def test_timestamps_are_sent_and_echoed() -> None:
    conn = established(config(timestamps=True),
                       peer_options=(MssOption(1460), TimestampOption(777, 100)))
    conn.send(b"ts", 1.0)
    (seg,) = conn.segments_to_send(1.0)
    assert seg.option(TimestampOption) == TimestampOption(1000, 777)
    assert len(seg.payload) == 2
    conn.receive(inbound(IRS + 1, ISS + 3, options=(TimestampOption(778, 1000),)), 1.05)
    # PAWS: a data segment with an older timestamp is dropped with an ACK.
    conn.receive(inbound(IRS + 1, ISS + 3, payload=b"old",
                         options=(TimestampOption(700, 1000),)), 1.06)
    assert conn.recv() == b""
    assert conn.mib["PAWSEstabRejected"] == 1


def test_stats_have_the_documented_keys() -> None:
    stats = established().stats()
    for key in ("cwnd", "ssthresh", "srtt_ms", "rttvar_ms", "rto_ms", "bytes_in_flight",
                "retransmissions", "bytes_acked", "bytes_received", "snd_wnd", "rcv_wnd",
                "dup_acks", "sack_blocks_received"):
        assert key in stats


def test_sequence_numbers_wrap() -> None:
    conn = established(iss=0xFFFFFFF0, irs=0xFFFFFFFA)
    conn.send(b"w" * 40, 1.0)
    (seg,) = conn.segments_to_send(1.0)
    assert seg.seq == 0xFFFFFFF1 and seg.ack == 0xFFFFFFFB
    conn.receive(inbound(0xFFFFFFFB, 0x19, payload=b"v" * 20), 1.1)
    assert conn.snd_una == 0x19 and conn.rcv_nxt == 0x0F
    assert conn.recv() == b"v" * 20


def test_nagle_holds_small_segments_while_data_is_unacknowledged() -> None:
    conn = established(config(nagle=True))
    conn.send(b"a", 1.0)
    assert conn.segments_to_send(1.0) == [outbound(ISS + 1, IRS + 1, ACK | PSH, payload=b"a")]
    conn.send(b"b", 1.01)
    conn.send(b"c", 1.02)
    assert conn.segments_to_send(1.02) == []
    conn.receive(inbound(IRS + 1, ISS + 2), 1.1)
    assert conn.segments_to_send(1.1) == [outbound(ISS + 2, IRS + 1, ACK | PSH, payload=b"bc")]


def test_without_nagle_small_segments_go_at_once() -> None:
    conn = established()
    conn.send(b"a", 1.0)
    conn.segments_to_send(1.0)
    conn.send(b"b", 1.01)
    assert conn.segments_to_send(1.01) == [outbound(ISS + 2, IRS + 1, ACK | PSH, payload=b"b")]


# --- cwnd grows only when it limits the sender (RFC 7661 §4.2, Linux tcp_is_cwnd_limited) ---

MSS = 1460
IW = 10 * MSS  # RFC 6928 for a 1460-byte MSS


def _round(conn: TcpConnection, now: float, data: int, window: int = WIN) -> list[TcpSegment]:
    """The app queues `data` bytes, everything that may go goes, and one ACK covers it."""
    if data:
        conn.send(bytes(data), now)
    out = conn.segments_to_send(now)
    conn.receive(inbound(IRS + 1, conn.snd_nxt, ACK, window), now + 0.1)
    return out


def test_application_limited_sender_does_not_grow_cwnd() -> None:
    conn = established()
    now = 0.1
    for _ in range(50):
        out = _round(conn, now, 2 * MSS)
        assert [len(s.payload) for s in out] == [MSS, MSS]
        now += 0.1
    # Two segments per RTT never fill 10: without the rule slow start would have added
    # 2*MSS per ACK, 100 segments in 50 rounds.
    assert conn.cc.cwnd == IW


def test_receive_window_limited_sender_does_not_grow_cwnd() -> None:
    conn = established()
    conn.send(bytes(200 * MSS), 0.1)
    # The first flight (the initial window, all of it) was cwnd-limited; its ACK shrinks
    # the peer's window to 4 segments.
    assert len(_round(conn, 0.1, 0, window=4 * MSS)) == 10
    assert conn.cc.cwnd == IW + 2 * MSS
    now = 0.2
    for _ in range(30):
        out = _round(conn, now, 0, window=4 * MSS)
        assert len(out) == 4
        now += 0.1
    assert conn.cc.cwnd == IW + 2 * MSS


def test_a_flight_that_fills_cwnd_exactly_is_cwnd_limited() -> None:
    # An MPTCP subflow's scheduler hands it exactly what its window takes: nothing waits in
    # the subflow, yet cwnd is what limits it (Linux: in_flight >= cwnd). In congestion
    # avoidance cwnd must still grow by about one MSS per round.
    conn = established()
    conn.cc.ssthresh = IW
    now = 0.1
    for _ in range(10):
        window = conn.cc.cwnd
        out = _round(conn, now, window)
        assert sum(len(s.payload) for s in out) == window
        now += 0.1
    assert conn.cc.cwnd >= IW + 8 * MSS


def test_cwnd_limited_sender_grows_and_slow_start_covers_twice_the_flight() -> None:
    conn = established()
    conn.send(bytes(20 * MSS), 0.1)
    out = _round(conn, 0.1, 0)
    assert len(out) == 10  # the initial window, with data still waiting: cwnd-limited
    assert conn.cc.cwnd == IW + 2 * MSS  # RFC 3465 L = 2*SMSS per ACK
    # An app that sends 8 segments per RTT: slow start may still grow cwnd up to twice
    # that flight (Linux's 2 * max_packets_out), and no further.
    conn = established()
    now = 0.1
    for _ in range(20):
        out = _round(conn, now, 8 * MSS)
        assert len(out) == 8
        now += 0.1
    assert conn.cc.cwnd == 2 * 8 * MSS


def test_reduce_window_from_above_is_the_controllers_decrease_once_outside_recovery() -> None:
    """MPTCP's penalisation of a slow subflow (NSDI 2012 §4.2): Reno halves cwnd and sets
    ssthresh to it; nothing during loss recovery or at the two-segment floor."""
    conn = established()
    conn.cc.cwnd = 10 * 1460
    assert conn.reduce_window(1.0)
    assert (conn.cc.cwnd, conn.cc.ssthresh) == (5 * 1460, 5 * 1460)
    conn.cc.cwnd = 2 * 1460
    assert not conn.reduce_window(1.1) and conn.cc.cwnd == 2 * 1460
    conn = established()
    five_segments(conn)
    for i in range(3):
        conn.receive(inbound(IRS + 1, ISS + 1), 1.1 + i / 100)
    conn.segments_to_send(1.13)
    in_recovery = (conn.cc.cwnd, conn.cc.ssthresh)
    assert not conn.reduce_window(1.14)
    assert (conn.cc.cwnd, conn.cc.ssthresh) == in_recovery
