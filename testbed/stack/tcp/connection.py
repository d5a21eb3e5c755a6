"""One TCP connection (RFC 9293), sans-I/O: segments in through `receive`, segments out
through `segments_to_send`, time only through the `now` each entry point is given.

What it owns: the state machine (simultaneous open and TIME-WAIT included), option
negotiation (MSS, window scale and timestamps from RFC 7323, SACK from RFC 2018), flow control
with silly window avoidance and zero-window probing, delayed ACKs, the retransmission timer
(RFC 6298), loss recovery (RFC 6675 with SACK, RFC 6582 NewReno without), RFC 5961 checks,
and receive-buffer auto-tuning. Congestion control is a pluggable controller chosen by name.

Choices that differ from the letter of an RFC, and why:
- Nagle is off by default, as with TCP_NODELAY: the testbed moves bulk data and measures
  request-response latency, and Nagle with delayed ACKs adds a delayed-ACK timeout to every
  small write that ends a burst. `TcpConfig.nagle` turns it on.
- Zero-window probes carry no data and use seq snd_una - 1 (Linux's choice): the peer must
  answer an unacceptable segment with an ACK that shows its window (RFC 9293 §3.10.7.4), and
  no byte enters the retransmission queue beyond an announced window.
- RTT samples come from the send time of a never-retransmitted segment (Karn's rule, RFC 6298
  §3); timestamps (millisecond ticks) are used only when no such segment was acked.
- The minimum RTO is 200 ms like Linux (see rtt.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from testbed.stack.tcp import seq as sq
from testbed.stack.tcp.congestion import CongestionControl, get_congestion_control
from testbed.stack.tcp.hooks import TcpHooks
from testbed.stack.tcp.reassembly import Reassembly
from testbed.stack.tcp.rtt import RttEstimator
from testbed.stack.tcp.sack import Scoreboard, SentSegment
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

# RFC 9293 §3.7.1 / RFC 1122 §4.2.2.6: the MSS to assume when the peer sends no MSS option.
DEFAULT_PEER_MSS = 536
# RFC 7323 §2.3: the largest shift; the scaled window stays below 2**30.
MAX_WSCALE = 14
MAX_OPTION_BYTES = 40
MAX_PERSIST_S = 60.0


class TcpState(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


# States in which our data (and FIN) may be sent and retransmitted.
_SENDING_STATES = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_1,
                             TcpState.CLOSING, TcpState.LAST_ACK})
# RFC 9293 §3.10.7.4 "seventh": states that accept segment text.
_RECEIVING_STATES = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT_1,
                               TcpState.FIN_WAIT_2})


class TcpError(Exception):
    """A call the connection's state does not allow (RFC 9293 §3.10: "error: ...")."""


@dataclass
class TcpConfig:
    mss: int = 1460  # what we announce and the most we send (before options)
    send_buffer: int = 4 << 20
    receive_buffer: int = 128 << 10  # initial; auto-tuning grows it ...
    receive_buffer_max: int = 6 << 20  # ... up to this (Linux's tcp_rmem max)
    window_scale: bool = True
    window_scale_shift: int | None = None  # None: the smallest that covers receive_buffer_max
    sack: bool = True
    timestamps: bool = True
    paws: bool = True
    nagle: bool = False
    delayed_ack_s: float = 0.040
    congestion: str = "cubic"
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    time_wait_s: float = 1.0  # 2*MSL; Linux waits 60 s, tests want it short
    max_retries: int = 15  # like Linux's tcp_retries2
    syn_retries: int = 6  # like Linux's tcp_syn_retries
    challenge_ack_limit_per_s: int = 1000
    reassembly_max_ranges: int = 64

    def wscale_shift(self) -> int:
        if self.window_scale_shift is not None:
            return max(0, min(MAX_WSCALE, self.window_scale_shift))
        shift = 0
        while shift < MAX_WSCALE and (self.receive_buffer_max >> shift) > 0xFFFF:
            shift += 1
        return shift


@dataclass
class _Counters:
    retrans_fast: int = 0
    retrans_rto: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0
    dup_acks: int = 0
    sack_blocks_received: int = 0
    segs_in: int = 0
    segs_out: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _option_size(opt: TcpOption) -> int:
    if isinstance(opt, MssOption):
        return 4
    if isinstance(opt, WindowScaleOption):
        return 3
    if isinstance(opt, SackPermittedOption):
        return 2
    if isinstance(opt, TimestampOption):
        return 10
    if isinstance(opt, SackOption):
        return 2 + 8 * len(opt.blocks)
    return 2 + len(opt.data)


def _padded(raw: int) -> int:
    return raw + (-raw % 4)  # the codec pads with NOPs to a multiple of 4


def _options_size(opts: list[TcpOption]) -> int:
    return _padded(sum(_option_size(o) for o in opts))


class TcpConnection:
    """A TCP connection; see the module docstring. Sequence variables keep the RFC's names
    and are 32-bit values compared with `seq` (wrap-around safe)."""

    def __init__(self, local_addr: bytes, local_port: int, remote_addr: bytes,
                 remote_port: int, *, iss: int, config: TcpConfig, now: float,
                 hooks: TcpHooks | None = None, ts_offset: int = 0,
                 mib: dict[str, int] | None = None) -> None:
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.config = config
        self.hooks = hooks if hooks is not None else TcpHooks()
        self.mib: dict[str, int] = mib if mib is not None else {}
        self.state = TcpState.CLOSED
        self.error: str | None = None
        self.passive = False
        self._was_established = False

        # Send sequence space (RFC 9293 §3.3.1).
        self.iss = iss & sq.SEQ_MASK
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.max_snd_wnd = 0
        # Receive sequence space.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_wnd = 0
        self._rcv_adv_edge = 0  # rcv_nxt + rcv_wnd as last advertised; never moves back

        # Negotiated options.
        self.ws_ok = False
        self.snd_wscale = 0  # the peer's shift: applied to windows it sends
        self.rcv_wscale = config.wscale_shift() if config.window_scale else 0
        self.sack_ok = False
        self.ts_ok = False
        self.ts_recent = 0
        self.last_ack_sent = 0
        self._ts_offset = ts_offset & sq.SEQ_MASK
        self.peer_mss = DEFAULT_PEER_MSS
        self.eff_mss = min(config.mss, DEFAULT_PEER_MSS)

        # Send buffer: bytes from _snd_buf_seq on (unacked and unsent alike).
        self._snd_buf = bytearray()
        self._snd_buf_seq = sq.add(self.iss, 1)
        self._fin_queued = False
        self._fin_sent = False
        self._syn_pending = False  # our SYN (or SYN-ACK) is due
        self._syn_sent_at: float | None = None
        self._syn_retransmitted = False

        # Receive side.
        self._rcv_buf = bytearray()
        self._rcv_cap = config.receive_buffer
        self._reasm = Reassembly(config.receive_buffer_max, config.reassembly_max_ranges)
        self._fin_received = False
        self._rcv_fin_seq: int | None = None  # a FIN seen beyond a hole
        self._rcv_mss = DEFAULT_PEER_MSS  # largest segment seen, for the ACK-every-2 rule
        self._bytes_since_ack = 0
        self._ack_now = False
        self._ctrl: list[TcpSegment] = []  # segments built at receive time (RST, ACKs)
        self._rtt_rcv: float | None = None  # receiver-side RTT estimate for auto-tuning
        self._rcv_space_start = now
        self._rcv_space_seq = 0
        self._rcv_rtt_mark: tuple[float, int] | None = None

        # Retransmission and recovery.
        self._sb = Scoreboard()
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.cc: CongestionControl = get_congestion_control(config.congestion)(
            self.eff_mss, now)
        self._in_recovery = False
        self._recover = self.iss  # RFC 6582 "recover" / RFC 6675 RecoveryPoint
        self._dupacks = 0
        self._recovery_dupacks = 0  # NewReno: segments that left the network, per dupack
        self._rexmit_head_now = False  # fast retransmit goes whatever cwnd says
        # Was the flight limited by cwnd during the last window (RFC 7661 §4.2; Linux's
        # tcp_cwnd_validate)? The window ends when snd_una passes _cwnd_usage_seq.
        self._cwnd_limited = False
        self._max_flight = 0  # the largest pipe seen in that window, in bytes
        # The scoreboard's last transmission when the window was last reduced in recovery:
        # a lost retransmission sent after it lowers the window again.
        self._reduced_at_xmit = 0
        self._cwnd_usage_seq = self.iss
        self._retries = 0
        self._rto_at: float | None = None
        self._persist_at: float | None = None
        self._persist_backoff = 0
        self._probe_due = False
        self._delack_at: float | None = None
        self._time_wait_at: float | None = None
        self._challenge_window = -1.0
        self._challenge_count = 0
        self.counters = _Counters()

    # ------------------------------------------------------------------ properties

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        return (self.local_addr, self.local_port, self.remote_addr, self.remote_port)

    @property
    def established(self) -> bool:
        """The three-way handshake completed (the connection may be closing since)."""
        return self._was_established and self.state is not TcpState.CLOSED

    @property
    def closed(self) -> bool:
        return self.state is TcpState.CLOSED

    @property
    def at_eof(self) -> bool:
        return self._fin_received and not self._rcv_buf

    @property
    def readable(self) -> bool:
        return bool(self._rcv_buf) or self._fin_received or self.error is not None

    @property
    def writable_space(self) -> int:
        if self._fin_queued or self.state not in (
                TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED,
                TcpState.CLOSE_WAIT):
            return 0
        return max(0, self.config.send_buffer - len(self._snd_buf))

    @property
    def bytes_in_flight(self) -> int:
        return sq.diff(self.snd_nxt, self.snd_una)

    @property
    def cwnd_room(self) -> int:
        """How many more bytes the congestion window takes beyond what this connection
        already holds to send: cwnd less the pipe (RFC 6675 §4, SACKed bytes have left the
        network), less the lost segments waiting to be resent and the data written but not
        sent yet; negative when more waits than cwnd lets out. A layer above that writes
        only what the window takes (an MPTCP scheduler) asks this: snd_nxt - snd_una still
        counts SACKed bytes, so during recovery it would see no room, the flight would
        drain, and the cumulative ACK that ends recovery would release a window-sized
        burst."""
        cwnd, pipe = self._cwnd_and_pipe()
        unsent = len(self._snd_buf) - sq.diff(self.snd_nxt, self._snd_buf_seq)
        return cwnd - pipe - self._sb.lost_waiting_bytes() - max(0, unsent)

    @property
    def receive_buffer_size(self) -> int:
        return self._rcv_cap

    @property
    def receive_rtt(self) -> float | None:
        """The receiver's own RTT estimate (from timestamp echoes, else the time a window
        takes to arrive), for a side that sends no data to measure one with."""
        return self._rtt_rcv

    def stats(self) -> dict[str, float | int | str | None]:
        c = self.counters
        srtt = self.rtt.srtt
        rttvar = self.rtt.rttvar
        return {
            "state": self.state.value,
            "cwnd": self.cc.cwnd,
            "ssthresh": self.cc.ssthresh,
            "srtt_ms": None if srtt is None else srtt * 1000,
            "rttvar_ms": None if rttvar is None else rttvar * 1000,
            "rto_ms": self.rtt.rto * 1000,
            "bytes_in_flight": self.bytes_in_flight,
            "retransmissions": c.retrans_fast + c.retrans_rto,
            "retransmissions_fast": c.retrans_fast,
            "retransmissions_rto": c.retrans_rto,
            "bytes_acked": c.bytes_acked,
            "bytes_received": c.bytes_received,
            "snd_wnd": self.snd_wnd,
            "rcv_wnd": self.rcv_wnd,
            "rcv_buf": self._rcv_cap,
            "dup_acks": c.dup_acks,
            "sack_blocks_received": c.sack_blocks_received,
            "mss": self.eff_mss,
        }

    # ------------------------------------------------------------------ user calls

    def open_active(self, now: float) -> None:
        """Send a SYN (RFC 9293 §3.10.1, active OPEN)."""
        if self.state is not TcpState.CLOSED:
            raise TcpError("connection already open")
        self.state = TcpState.SYN_SENT
        self._syn_pending = True
        self._count("ActiveOpens")

    def open_passive(self, syn: TcpSegment, now: float) -> None:
        """Take a SYN that reached a listener (RFC 9293 §3.10.7.2) and answer SYN-ACK."""
        self.passive = True
        self.state = TcpState.SYN_RECEIVED
        self.counters.segs_in += 1
        self._take_syn(syn)
        self._negotiate(syn, now)
        self.hooks.options_received(self, syn)
        self._syn_pending = True

    def send(self, data: bytes, now: float) -> int:
        """Queue data; returns how many bytes were taken (0 when the buffer is full)."""
        if self._fin_queued or self.state not in (
                TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED,
                TcpState.CLOSE_WAIT):
            raise TcpError(f"connection {'closing' if self._fin_queued else 'not open'}")
        n = min(len(data), self.config.send_buffer - len(self._snd_buf))
        if n > 0:
            self._snd_buf += data[:n]
        return max(0, n)

    def recv(self, max_bytes: int = 65536) -> bytes:
        """Take up to max_bytes of in-order data (b"" when none, see `at_eof`)."""
        if not self._rcv_buf:
            return b""
        out = bytes(self._rcv_buf[:max_bytes])
        del self._rcv_buf[:max_bytes]
        # Window update once the window can open by a useful amount (RFC 9293 §3.8.6.2.2,
        # receiver side SWS avoidance decides what the ACK will then announce).
        if self.state in _RECEIVING_STATES:
            opened = self._free_space() - max(0, sq.diff(self._rcv_adv_edge, self.rcv_nxt))
            if opened >= min(self._rcv_cap // 2, 2 * self._rcv_mss):
                self._ack_now = True
        return out

    def request_ack(self) -> None:
        """Send an ACK with the next output even if TCP has nothing to say: the layer above
        has news for the peer in its options (a window it opened, a signal to carry)."""
        if self.state is not TcpState.CLOSED:
            self._ack_now = True

    def reduce_window(self, now: float) -> bool:
        """A congestion signal from the layer above (MPTCP penalising a slow subflow): the
        controller's own multiplicative decrease from the current window, as on a loss, so
        its state (CUBIC's W_max and epoch) agrees with the new window. Nothing while loss
        recovery is already reducing it or the window is at its floor; True if reduced."""
        if self._in_recovery or self.cc.cwnd <= 2 * self.cc.mss:
            return False
        self.cc.on_congestion_event(self.cc.cwnd, now)
        return True

    def close(self, now: float) -> None:
        """No more data from us: FIN after what is queued (RFC 9293 §3.10.4)."""
        st = self.state
        if st is TcpState.SYN_SENT or st is TcpState.LISTEN:
            self._enter_closed(None, "closed")
        elif st is TcpState.SYN_RECEIVED:
            self._fin_queued = True  # FIN-WAIT-1 once our SYN is acknowledged
        elif st is TcpState.ESTABLISHED:
            self._fin_queued = True
            self.state = TcpState.FIN_WAIT_1
        elif st is TcpState.CLOSE_WAIT:
            self._fin_queued = True
            self.state = TcpState.LAST_ACK

    def abort(self, now: float) -> None:
        """Send RST and forget the connection (RFC 9293 §3.10.5)."""
        if self.state in (TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.FIN_WAIT_1,
                          TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT):
            self._ctrl.append(self._rst_segment(self.snd_nxt, ack=None))
        if self.state is not TcpState.CLOSED:
            self._enter_closed("aborted", "closed")

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        times = [t for t in (self._rto_at, self._persist_at, self._delack_at,
                             self._time_wait_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._time_wait_at is not None and now >= self._time_wait_at:
            self._time_wait_at = None
            self._enter_closed(None, "closed")
            return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
            self._count("DelayedACKs")
        if self._rto_at is not None and now >= self._rto_at:
            self._rto_at = None
            self._on_rto(now)
        if self._persist_at is not None and now >= self._persist_at:
            self._persist_at = None
            self._probe_due = True
            self._persist_backoff += 1

    def _on_rto(self, now: float) -> None:
        self._retries += 1
        self._count("TCPTimeouts")
        if self.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
            if self._retries > self.config.syn_retries:
                self._fail("timeout")
                return
            self.rtt.backoff()
            self._syn_pending = True
            self._syn_retransmitted = True
            return
        if self.state not in _SENDING_STATES or not self._sb:
            return
        if self._retries > self.config.max_retries:
            self._fail("timeout")
            return
        # RFC 6298 §5.4-5.6 and RFC 5681 §3.1: back off, collapse the window and resend
        # from snd_una; RFC 6582 §4 / RFC 6675 §5.1: no fast recovery for what was sent before.
        # FlightSize (RFC 5681 eq. 4), but no more than cwnd (Linux's ssthresh is from
        # cwnd): after a large loss everything outstanding counts as in flight, and a timeout
        # during recovery would otherwise put ssthresh back above the window that lost.
        self.cc.on_rto(min(self.bytes_in_flight, self.cc.cwnd), now)
        self.rtt.backoff()
        self._sb.mark_all_lost(forget_sacks=self._retries >= 2)
        self._in_recovery = False
        self._recover = self.snd_nxt
        self._dupacks = 0
        self._recovery_dupacks = 0
        self._rexmit_head_now = False

    # ------------------------------------------------------------------ input

    def receive(self, seg: TcpSegment, now: float) -> None:
        self.counters.segs_in += 1
        st = self.state
        if st is TcpState.CLOSED or st is TcpState.LISTEN:
            return
        if st is TcpState.SYN_SENT:
            self._receive_syn_sent(seg, now)
            return
        self._receive_synchronized(seg, now)

    def _receive_syn_sent(self, seg: TcpSegment, now: float) -> None:
        # RFC 9293 §3.10.7.3.
        if seg.has(ACK) and (sq.le(seg.ack, self.iss) or sq.gt(seg.ack, self.snd_nxt)):
            if not seg.has(RST):
                self._ctrl.append(self._rst_segment(seg.ack, ack=None))
            return
        if seg.has(RST):
            if seg.has(ACK):
                self._enter_closed("connection refused", "refused")
            return
        if not seg.has(SYN):
            return
        self._take_syn(seg)
        self._negotiate(seg, now)
        self.hooks.options_received(self, seg)
        if seg.has(ACK):
            self.snd_una = seg.ack
            self._snd_buf_seq = seg.ack
            self._rto_at = None
            self._retries = 0
            if self._syn_sent_at is not None and not self._syn_retransmitted:
                self.rtt.on_sample(now - self._syn_sent_at)
            self.rtt.reset_backoff()
            self._establish()
            self._ack_now = True
        else:
            # Simultaneous open (RFC 9293 §3.5 figure 8): SYN-ACK with our original ISS.
            self.state = TcpState.SYN_RECEIVED
            self._syn_pending = True

    def _take_syn(self, seg: TcpSegment) -> None:
        self.irs = seg.seq
        self.rcv_nxt = sq.add(seg.seq, 1)
        # An active open already announced a window in its SYN; hold to it.
        self._rcv_adv_edge = sq.add(self.rcv_nxt, self.rcv_wnd)
        self._rcv_space_seq = self.rcv_nxt
        # RFC 7323 §2.2: the window in a SYN is never scaled.
        self.snd_wnd = seg.window
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack

    def _negotiate(self, seg: TcpSegment, now: float) -> None:
        """Agree on options from the peer's SYN: each is on when we enable it and the
        peer's SYN carries it (RFC 7323 §2.2, §3.2; RFC 2018 §2)."""
        cfg = self.config
        mss_opt = seg.option(MssOption)
        self.peer_mss = mss_opt.mss if isinstance(mss_opt, MssOption) and mss_opt.mss else \
            DEFAULT_PEER_MSS
        self.eff_mss = max(64, min(cfg.mss, self.peer_mss))
        ws = seg.option(WindowScaleOption)
        if cfg.window_scale and isinstance(ws, WindowScaleOption):
            # RFC 7323 §2.3: a shift above 14 is used as 14.
            self.snd_wscale = min(ws.shift, MAX_WSCALE)
            self.ws_ok = True
        else:
            self.ws_ok = False
            self.snd_wscale = 0
            self.rcv_wscale = 0
        self.sack_ok = cfg.sack and seg.option(SackPermittedOption) is not None
        ts = seg.option(TimestampOption)
        self.ts_ok = cfg.timestamps and isinstance(ts, TimestampOption)
        if isinstance(ts, TimestampOption) and self.ts_ok:
            self.ts_recent = ts.tsval
        # The controller starts now that the MSS is known (RFC 6928's IW depends on it).
        self.cc = get_congestion_control(cfg.congestion)(self.eff_mss, now)

    def _establish(self) -> None:
        self.state = TcpState.ESTABLISHED
        self._was_established = True
        self.hooks.on_event(self, "established")
        if self._fin_queued:
            self.state = TcpState.FIN_WAIT_1

    def _receive_synchronized(self, seg: TcpSegment, now: float) -> None:
        st = self.state
        ts = seg.option(TimestampOption) if self.ts_ok else None
        rcv_wnd = max(0, sq.diff(self._rcv_adv_edge, self.rcv_nxt))

        if st is TcpState.SYN_RECEIVED and seg.has(SYN) and seg.seq == self.irs:
            if seg.has(ACK) and seg.ack == sq.add(self.iss, 1) and not seg.has(RST):
                # Simultaneous open: the peer's SYN-ACK completes ours.
                self.snd_una = seg.ack
                self._snd_buf_seq = seg.ack
                self._rto_at = None
                self._update_window(seg, force=True)
                self._establish()
                self._ack_now = True
            elif not seg.has(ACK):
                self._syn_pending = True  # our SYN-ACK was lost: send it again
            return

        # RFC 7323 §5.3 PAWS: an old timestamp marks an old duplicate. Segments without
        # data or FIN are exempt (like Linux's tcp_disordered_ack): an ACK that was merely
        # reordered behind a newer one cannot corrupt the stream, and answering it would
        # only add an ACK per reordered ACK.
        if (isinstance(ts, TimestampOption) and self.config.paws and not seg.has(RST)
                and (seg.payload or seg.has(FIN | SYN)) and sq.lt(ts.tsval, self.ts_recent)):
            self._count("PAWSEstabRejected")
            self._queue_ack(now)
            return

        # RFC 5961 §3.2: RST only acts when it sits exactly at rcv_nxt.
        if seg.has(RST):
            if seg.seq == self.rcv_nxt:
                # The layer above may read why (MP_TCPRST, MP_FASTCLOSE) before it goes.
                self.hooks.options_received(self, seg)
                self._on_reset()
            elif sq.in_window(seg.seq, self.rcv_nxt, max(rcv_wnd, 1)):
                self._challenge_ack(now)
            return

        # RFC 9293 §3.10.7.4 first: sequence acceptability.
        seg_len = seg.seg_len
        if seg_len == 0:
            ok = seg.seq == self.rcv_nxt if rcv_wnd == 0 else \
                sq.in_window(seg.seq, self.rcv_nxt, rcv_wnd)
        else:
            ok = rcv_wnd > 0 and (
                sq.in_window(seg.seq, self.rcv_nxt, rcv_wnd)
                or sq.in_window(sq.add(seg.seq, seg_len - 1), self.rcv_nxt, rcv_wnd))
        ack_only = False
        if not ok:
            if rcv_wnd == 0 and seg.seq == self.rcv_nxt and seg.has(ACK) and not seg.has(SYN):
                # "Special allowance": a zero window still takes ACKs (RFC 9293 §3.10.7.4).
                ack_only = True
            else:
                # An old duplicate, or beyond the window: tell the peer where we are.
                if st is TcpState.TIME_WAIT and seg.has(FIN):
                    self._time_wait_at = now + self.config.time_wait_s
                self._queue_ack(now)
                return

        # RFC 5961 §4: a SYN in a synchronized state gets a challenge ACK, whatever its seq.
        if seg.has(SYN):
            self._count("TCPSYNChallenge")
            self._challenge_ack(now)
            return
        if not seg.has(ACK):
            return

        # RFC 7323 §4.3: remember the timestamp to echo.
        if isinstance(ts, TimestampOption) and sq.le(seg.seq, self.last_ack_sent):
            self.ts_recent = ts.tsval

        self.hooks.options_received(self, seg)

        # Fifth: the ACK field.
        if st is TcpState.SYN_RECEIVED:
            if sq.gt(seg.ack, self.snd_una) and sq.le(seg.ack, self.snd_nxt):
                self.snd_una = seg.ack
                self._snd_buf_seq = seg.ack
                self._rto_at = None
                self._retries = 0
                if self._syn_sent_at is not None and not self._syn_retransmitted:
                    self.rtt.on_sample(now - self._syn_sent_at)
                self._update_window(seg, force=True)
                self._establish()
                st = self.state
            else:
                self._ctrl.append(self._rst_segment(seg.ack, ack=None))
                return
        elif not self._process_ack(seg, ts, now):
            return
        if self.state is TcpState.CLOSED:
            return
        st = self.state

        if st is TcpState.TIME_WAIT:
            if seg.has(FIN):
                # A retransmitted FIN: ACK it and restart the 2*MSL wait (RFC 9293 §3.10.7.4).
                self._ack_now = True
                self._time_wait_at = now + self.config.time_wait_s
            return
        if ack_only:
            if seg.payload or seg.has(FIN):
                self._queue_ack(now)  # the text did not fit: say so (a window probe)
            return

        # Seventh: text.
        payload = seg.payload
        fin = seg.has(FIN)
        seq = seg.seq
        if payload or fin:
            fin_seq = sq.add(seq, len(payload))
            if st not in _RECEIVING_STATES:
                payload = b""
            self._receive_text(seq, payload, ts, now)
            if (fin and self._rcv_fin_seq is None and sq.ge(fin_seq, self.rcv_nxt)
                    and sq.le(fin_seq, self._rcv_adv_edge)):
                self._rcv_fin_seq = fin_seq
            self._maybe_take_fin(now)

    def _process_ack(self, seg: TcpSegment, ts: TcpOption | None, now: float) -> bool:
        """RFC 9293 §3.10.7.4 fifth, with RFC 5961 §5.2; False: drop the segment."""
        ack = seg.ack
        if sq.gt(ack, self.snd_nxt) or sq.lt(ack, sq.add(self.snd_una, -self.max_snd_wnd)):
            self._challenge_ack(now)
            return False
        old_wnd = self.snd_wnd
        newly_sacked = 0
        if self.sack_ok:
            sack = seg.option(SackOption)
            if isinstance(sack, SackOption):
                self.counters.sack_blocks_received += len(sack.blocks)
                newly_sacked = self._sb.apply_sack(sack.blocks, self.snd_una, self.snd_nxt)
        if sq.gt(ack, self.snd_una):
            self._on_new_ack(seg, ts, now)
        elif (ack == self.snd_una and self.snd_nxt != self.snd_una and not seg.payload
              and not seg.has(SYN | FIN)
              and (self._scaled_window(seg) == old_wnd or newly_sacked > 0)):
            self._on_dup_ack(now)
        elif newly_sacked and self._in_recovery:
            self._sb.mark_lost(self.eff_mss)
        if self._in_recovery and self.sack_ok:
            self._detect_lost_retransmissions(now)
        self._update_window(seg, force=False)

        st = self.state
        if self._fin_sent and self.snd_una == self.snd_nxt:
            # Our FIN is acknowledged.
            if st is TcpState.FIN_WAIT_1:
                self.state = TcpState.FIN_WAIT_2
            elif st is TcpState.CLOSING:
                self._enter_time_wait(now)
            elif st is TcpState.LAST_ACK:
                self._enter_closed(None, "closed")
                return False
        return True

    def _detect_lost_retransmissions(self, now: float) -> None:
        """A retransmission that a later transmission overtook is lost (RACK's rule, see
        testbed/stack/tcp/sack.py): resend it within this recovery instead of waiting for
        the RTO. The reordering window is RFC 8985's default, a quarter of the minimum RTT.

        RFC 5681 §4.3 counts a lost retransmission as a second indication of congestion:
        the window is lowered again (RFC 8985 §3.4 asks the same of RACK). Once for the
        retransmissions sent within one reduced window: a later lost retransmission lowers
        it again only if it went after the last reduction. Without this, a slow start that
        overshot a small queue many times over (half its window still several times what
        the path holds) keeps resending into the full queue."""
        min_rtt = self.rtt.min_rtt
        if min_rtt is None:
            return
        lost, latest = self._sb.mark_lost_retransmissions(min_rtt / 4)
        if not lost:
            return
        self._count("TCPLostRetransmit", lost)
        if latest > self._reduced_at_xmit:
            self._reduced_at_xmit = self._sb.last_xmit
            self._recover = self.snd_nxt
            self.cc.on_congestion_event(min(self.bytes_in_flight, self.cc.cwnd), now)

    def _scaled_window(self, seg: TcpSegment) -> int:
        return seg.window << self.snd_wscale

    def _update_window(self, seg: TcpSegment, force: bool) -> None:
        # RFC 9293 §3.10.7.4 fifth: only a newer segment may change the send window.
        if force or sq.lt(self.snd_wl1, seg.seq) or (
                self.snd_wl1 == seg.seq and sq.le(self.snd_wl2, seg.ack)):
            self.snd_wnd = self._scaled_window(seg)
            self.snd_wl1 = seg.seq
            self.snd_wl2 = seg.ack
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            if self.snd_wnd > 0:
                self._persist_backoff = 0

    def _on_new_ack(self, seg: TcpSegment, ts: TcpOption | None, now: float) -> None:
        ack = seg.ack
        result = self._sb.ack(ack)
        self.snd_una = ack
        data_acked = min(len(self._snd_buf), max(0, sq.diff(ack, self._snd_buf_seq)))
        if data_acked:
            del self._snd_buf[:data_acked]
            self._snd_buf_seq = sq.add(self._snd_buf_seq, data_acked)
        self.counters.bytes_acked += data_acked

        rtt_sample: float | None = None
        if result.rtt_sent_at is not None:
            rtt_sample = now - result.rtt_sent_at
        elif isinstance(ts, TimestampOption) and ts.tsecr:
            # RFC 7323 §4: a timestamp echo is unambiguous even for a retransmission.
            rtt_sample = max(0, sq.diff(self._tsval(now), ts.tsecr)) / 1000
        if rtt_sample is not None:
            self.rtt.on_sample(rtt_sample)
        self.rtt.reset_backoff()
        self._retries = 0
        self._dupacks = 0

        if self._in_recovery:
            if sq.ge(ack, self._recover):
                self._in_recovery = False
                self._recovery_dupacks = 0
                self.cc.on_recovery_end(now)
            else:
                # Partial ACK: the next hole is lost too (RFC 6582 §3.2 step 5); with SACK
                # the scoreboard decides (RFC 6675).
                if self.sack_ok:
                    self._sb.mark_lost(self.eff_mss)
                else:
                    self._sb.mark_head_lost()
                    self._rexmit_head_now = True
                    self._recovery_dupacks = 0
        else:
            if self.sack_ok and self._sb.sacked_bytes:
                self._sb.mark_lost(self.eff_mss)
                if self._sb.has_lost() and sq.gt(ack, self._recover):
                    self._enter_recovery(now)
            if not self._in_recovery:
                if self._is_cwnd_limited():
                    self.cc.on_ack(result.acked_bytes, rtt_sample, self.bytes_in_flight, now)
                else:
                    self.cc.on_ack_not_cwnd_limited(result.acked_bytes, rtt_sample,
                                                    self.bytes_in_flight, now)

        # RFC 6298 §5.2-5.3: stop the timer when all is acked, else restart it.
        self._rto_at = None if self.snd_una == self.snd_nxt else now + self.rtt.rto

    def _on_dup_ack(self, now: float) -> None:
        self._dupacks += 1
        self.counters.dup_acks += 1
        if self._in_recovery:
            if self.sack_ok:
                self._sb.mark_lost(self.eff_mss)
            else:
                self._recovery_dupacks += 1
            return
        if self.sack_ok:
            self._sb.mark_lost(self.eff_mss)
            trigger = self._dupacks >= self._sb.dup_thresh or self._sb.has_lost()
        else:
            trigger = self._dupacks == self._sb.dup_thresh
        # RFC 6582 §3.2 step 2: only when the ACK covers more than `recover`, so that one
        # window of losses costs one reduction.
        if trigger and sq.gt(self.snd_una, self._recover):
            self._enter_recovery(now)

    def _enter_recovery(self, now: float) -> None:
        self._in_recovery = True
        self._recover = self.snd_nxt
        # NewReno: the dupacks so far each stand for a segment that left the network, the
        # "ssthresh + 3*SMSS" of RFC 6582 §3.2 step 3 without touching the controller's cwnd.
        self._recovery_dupacks = self._dupacks
        self._count("TCPSackRecovery" if self.sack_ok else "TCPRenoRecovery")
        self.cc.on_congestion_event(self.bytes_in_flight, now)
        self._reduced_at_xmit = self._sb.last_xmit
        # Fast retransmit: the first unacknowledged segment goes now (RFC 5681 §3.2 step 3).
        self._sb.mark_head_lost()
        self._rexmit_head_now = True

    def _on_reset(self) -> None:
        st = self.state
        if st is TcpState.SYN_RECEIVED:
            # A passive open goes back to LISTEN, i.e. disappears (RFC 9293 §3.10.7.4).
            self._enter_closed(None if self.passive else "connection refused",
                               "reset" if self.passive else "refused")
            return
        if st in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            self._count("EstabResets")
        error = None if st in (TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT) \
            else "reset by peer"
        self._enter_closed(error, "reset")

    def _receive_text(self, seq: int, payload: bytes, ts: TcpOption | None,
                      now: float) -> None:
        if not payload:
            return
        # Trim what we already have and what lies beyond the advertised window.
        start = sq.diff(seq, self.rcv_nxt)
        if start < 0:
            payload = payload[-start:]
            seq = self.rcv_nxt
            start = 0
        room = sq.diff(self._rcv_adv_edge, seq)
        if room <= 0:
            self._queue_ack(now)
            return
        if len(payload) > room:
            payload = payload[:room]
        self._rcv_mss = max(self._rcv_mss, len(payload))
        self._note_rcv_rtt(ts, now)
        if start > 0:
            # Out of order: keep it and ACK at once so the sender sees the hole (RFC 5681
            # §4.2), with SACK blocks (RFC 2018 §4).
            if not self._reasm.insert(seq, payload, self.rcv_nxt):
                self._count("TCPOFODrop")
            else:
                self._count("TCPOFOQueue")
            self._queue_ack(now)
            return
        had_hole = bool(self._reasm)
        self._deliver(payload)
        if had_hole:
            more = self._reasm.pop_ready(self.rcv_nxt)
            if more:
                self._deliver(more)
            # Filling a hole is acknowledged at once (RFC 5681 §4.2).
            self._ack_now = True
        else:
            self._bytes_since_ack += len(payload)
            # RFC 5681 §4.2 / RFC 1122 §4.2.3.2: ACK at least every second full segment.
            if self._bytes_since_ack >= 2 * self._rcv_mss:
                self._ack_now = True
            elif self._delack_at is None:
                self._delack_at = now + self.config.delayed_ack_s
        self._autotune(now)
        self.hooks.data_readable(self)

    def _deliver(self, data: bytes) -> None:
        self._rcv_buf += data
        self.rcv_nxt = sq.add(self.rcv_nxt, len(data))
        self.counters.bytes_received += len(data)
        if sq.gt(self.rcv_nxt, self._rcv_adv_edge):
            self._rcv_adv_edge = self.rcv_nxt

    def _maybe_take_fin(self, now: float) -> None:
        if self._fin_received or self._rcv_fin_seq != self.rcv_nxt:
            return
        # Eighth: the FIN (RFC 9293 §3.10.7.4).
        self._fin_received = True
        self.rcv_nxt = sq.add(self.rcv_nxt, 1)
        if sq.gt(self.rcv_nxt, self._rcv_adv_edge):
            self._rcv_adv_edge = self.rcv_nxt
        self._ack_now = True
        self.hooks.on_event(self, "fin_received")
        self.hooks.data_readable(self)
        st = self.state
        if st is TcpState.ESTABLISHED:
            self.state = TcpState.CLOSE_WAIT
        elif st is TcpState.FIN_WAIT_1:
            if self._fin_sent and self.snd_una == self.snd_nxt:
                self._enter_time_wait(now)
            else:
                self.state = TcpState.CLOSING
        elif st is TcpState.FIN_WAIT_2:
            self._enter_time_wait(now)

    def _note_rcv_rtt(self, ts: TcpOption | None, now: float) -> None:
        """Receiver-side RTT for auto-tuning (like Linux's tcp_rcv_rtt_measure): from the
        timestamp echo, else the time one window takes to arrive."""
        sample: float | None = None
        if isinstance(ts, TimestampOption) and ts.tsecr:
            sample = max(0.001, sq.diff(self._tsval(now), ts.tsecr) / 1000)
        elif self._rcv_rtt_mark is None:
            self._rcv_rtt_mark = (now, sq.add(self.rcv_nxt, max(self.rcv_wnd, self._rcv_mss)))
        elif sq.ge(self.rcv_nxt, self._rcv_rtt_mark[1]):
            sample = max(0.001, now - self._rcv_rtt_mark[0])
            self._rcv_rtt_mark = None
        if sample is not None:
            self._rtt_rcv = sample if self._rtt_rcv is None else \
                min(sample, 0.875 * self._rtt_rcv + 0.125 * sample)

    def _autotune(self, now: float) -> None:
        """Grow the receive buffer towards twice what arrives per RTT, so the window never
        limits a sender the path could carry (Linux's tcp_rcv_space_adjust)."""
        rtt = self.rtt.srtt or self._rtt_rcv
        if rtt is None or now - self._rcv_space_start < rtt:
            return
        got = sq.diff(self.rcv_nxt, self._rcv_space_seq)
        want = min(self.config.receive_buffer_max, 2 * got)
        if want > self._rcv_cap:
            self._rcv_cap = want
        self._rcv_space_start = now
        self._rcv_space_seq = self.rcv_nxt

    # ------------------------------------------------------------------ output

    def segments_to_send(self, now: float) -> list[TcpSegment]:
        out = self._ctrl
        self._ctrl = []
        st = self.state
        if st is TcpState.CLOSED:
            self._count_out(out)
            return out
        if self._syn_pending:
            self._syn_pending = False
            out.append(self._syn_segment(now))
        elif st in _SENDING_STATES:
            self._transmit(now, out)
        if self._probe_due:
            self._probe_due = False
            self._send_probe(now, out)
        if self._ack_now and st is not TcpState.SYN_SENT and self._was_established_or_rcvd():
            out.append(self._build(self.snd_nxt, ACK, b"", now))
        self._count_out(out)
        return out

    def _was_established_or_rcvd(self) -> bool:
        return self.state is not TcpState.SYN_RECEIVED or self._was_established

    def _count_out(self, out: list[TcpSegment]) -> None:
        self.counters.segs_out += len(out)
        for seg in out:
            if seg.flags & RST:
                self._count("OutRsts")

    def _cwnd_and_pipe(self) -> tuple[int, int]:
        """The window and the flight it is compared with when sending."""
        pipe = self._sb.pipe()
        cwnd = self.cc.cwnd
        if not self.sack_ok:
            if self._in_recovery:
                pipe = max(0, pipe - self._recovery_dupacks * self.eff_mss)
            else:
                # RFC 3042 limited transmit: each of the first two dupacks lets one new
                # segment out, so a small window still gathers three dupacks. (With SACK
                # the scoreboard already takes SACKed segments out of pipe.)
                cwnd += min(self._dupacks, 2) * self.eff_mss
        return cwnd, pipe

    def _transmit(self, now: float, out: list[TcpSegment]) -> None:
        payload_mss = self._payload_mss()
        cwnd, pipe = self._cwnd_and_pipe()
        pipe_before = pipe
        while True:
            room = cwnd - pipe
            # NextSeg rule 1: lost segments first (RFC 6675 §4).
            lost = self._sb.next_lost()
            if lost is not None and (room >= min(lost.length, self.eff_mss)
                                     or self._rexmit_head_now):
                self._rexmit_head_now = False
                self._retransmit(lost, now, out)
                pipe += lost.length
                continue
            sent = self._send_new(now, out, payload_mss, room)
            if sent > 0:
                pipe += sent
                continue
            if sent < 0:
                break  # FIN went out, nothing follows it
            # Rule 3: with SACK and nothing new to send, resend below the highest SACK.
            if self._in_recovery and self.sack_ok:
                rescue = self._sb.next_rescue()
                if rescue is not None and room >= min(rescue.length, self.eff_mss):
                    self._retransmit(rescue, now, out)
                    pipe += rescue.length
                    continue
            break
        self._validate_cwnd(pipe, cwnd, payload_mss, sent_any=pipe > pipe_before)
        self._arm_persist(now)

    def _validate_cwnd(self, pipe: int, cwnd: int, payload_mss: int, sent_any: bool) -> None:
        """Remember whether cwnd limited what we sent, per window of data (Linux's
        tcp_cwnd_validate; RFC 7661 §4.2): limited when data waits (new or to be
        retransmitted) and cwnd has no room for its next segment, or when the flight fills
        cwnd (Linux's tcp_write_xmit: in_flight >= cwnd). The second case is an MPTCP
        subflow's: its scheduler hands it exactly what its window takes, so no data ever
        waits in the subflow itself although the connection has plenty."""
        unsent = len(self._snd_buf) - sq.diff(self.snd_nxt, self._snd_buf_seq)
        next_size = min(payload_mss, unsent) if unsent > 0 else \
            (self.eff_mss if self._sb.has_lost() else 0)
        limited = (next_size > 0 and cwnd - pipe < next_size) or pipe >= cwnd
        if not (sent_any or limited):
            return
        if (sq.ge(self.snd_una, self._cwnd_usage_seq) or limited
                or (not self._cwnd_limited and pipe > self._max_flight)):
            self._cwnd_limited = limited
            self._max_flight = pipe
            self._cwnd_usage_seq = self.snd_nxt

    def _is_cwnd_limited(self) -> bool:
        """Linux's tcp_is_cwnd_limited: cwnd grows only when it limited the sender during
        the last window, or in slow start while cwnd is below twice the largest flight (so
        slow start still doubles what the sender actually used)."""
        if self._cwnd_limited:
            return True
        if self.cc.in_slow_start():
            return self.cc.cwnd < 2 * self._max_flight
        return False

    def _payload_mss(self) -> int:
        extra = (10 if self.ts_ok else 0) + self.hooks.reserved_option_space(self)
        return max(1, self.eff_mss - (extra + (-extra % 4)))

    def _send_new(self, now: float, out: list[TcpSegment], payload_mss: int,
                  room: int) -> int:
        """RFC 9293 §3.8.6.2.1 (sender SWS avoidance) and Nagle (RFC 896) decide whether a
        new segment goes; returns bytes sent, 0 for none, -1 after a FIN."""
        offset = sq.diff(self.snd_nxt, self._snd_buf_seq)
        unsent = len(self._snd_buf) - offset
        if unsent <= 0:
            if self._fin_queued and not self._fin_sent:
                self._send_data(self.snd_nxt, b"", True, now, out)
                return -1
            return 0
        usable = sq.diff(sq.add(self.snd_una, self.snd_wnd), self.snd_nxt)
        # The layer above may end a segment early (hooks.payload_limit); a segment that
        # reaches that end counts as full-sized for SWS avoidance.
        limit = self.hooks.payload_limit(self, self.snd_nxt)
        if limit is not None:
            payload_mss = max(1, min(payload_mss, limit))
        size = min(payload_mss, unsent, max(0, usable))
        if size <= 0 or room < size:
            return 0
        idle = self.snd_nxt == self.snd_una
        if not (size >= payload_mss
                or (size == unsent and (not self.config.nagle or idle))
                or (self.max_snd_wnd and size >= self.max_snd_wnd // 2)
                or (self._probe_due and idle)):
            return 0
        fin = self._fin_queued and size == unsent
        self._send_data(self.snd_nxt, bytes(self._snd_buf[offset:offset + size]), fin, now,
                        out)
        return size + (1 if fin else 0)

    def _send_data(self, seq: int, payload: bytes, fin: bool, now: float,
                   out: list[TcpSegment]) -> None:
        flags = ACK | (FIN if fin else 0) | (PSH if payload else 0)
        out.append(self._build(seq, flags, payload, now))
        self._sb.add(seq, len(payload) + (1 if fin else 0), now, fin=fin)
        self.snd_nxt = sq.add(seq, len(payload) + (1 if fin else 0))
        if fin:
            self._fin_sent = True
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        self._persist_at = None

    def _retransmit(self, seg: SentSegment, now: float, out: list[TcpSegment]) -> None:
        offset = sq.diff(seg.seq, self._snd_buf_seq)
        data_len = seg.length - (1 if seg.fin else 0)
        payload = bytes(self._snd_buf[offset:offset + data_len])
        flags = ACK | (FIN if seg.fin else 0) | (PSH if payload else 0)
        out.append(self._build(seg.seq, flags, payload, now))
        self._sb.mark_retransmitted(seg, now)
        if self._in_recovery:
            self.counters.retrans_fast += 1
            self._count("TCPFastRetrans")
        else:
            self.counters.retrans_rto += 1
        self._count("RetransSegs")
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto

    def _arm_persist(self, now: float) -> None:
        """Nothing in flight but data waiting: the persist timer makes sure we ask again
        (RFC 9293 §3.8.6.1, RFC 1122 §4.2.2.17), backing off like the RTO."""
        waiting = len(self._snd_buf) - sq.diff(self.snd_nxt, self._snd_buf_seq) > 0
        if self.snd_nxt != self.snd_una or not waiting:
            self._persist_at = None
            return
        if self._persist_at is None:
            interval = min(MAX_PERSIST_S, self.rtt.rto * (1 << min(self._persist_backoff, 16)))
            self._persist_at = now + interval

    def _send_probe(self, now: float, out: list[TcpSegment]) -> None:
        if self.state not in _SENDING_STATES or self.snd_nxt != self.snd_una:
            return
        usable = sq.diff(sq.add(self.snd_una, self.snd_wnd), self.snd_nxt)
        if usable > 0:
            # The window is open but too small for SWS avoidance: send what fits (the
            # override timeout of RFC 9293 §3.8.6.2.1).
            self._probe_due = True
            self._send_new(now, out, self._payload_mss(), self.cc.cwnd)
            self._probe_due = False
        else:
            self._count("TCPWinProbe")
            out.append(self._build(sq.add(self.snd_una, -1), ACK, b"", now))
        self._arm_persist(now)

    def _syn_segment(self, now: float) -> TcpSegment:
        syn_ack = self.state is TcpState.SYN_RECEIVED
        cfg = self.config
        opts: list[TcpOption] = list(self.hooks.syn_options(self, syn_ack))
        mine: list[TcpOption] = [MssOption(cfg.mss)]
        # A SYN offers what we enable; a SYN-ACK only what was agreed from the peer's SYN.
        if self.ws_ok if syn_ack else cfg.window_scale:
            mine.append(WindowScaleOption(self.rcv_wscale))
        if self.sack_ok if syn_ack else cfg.sack:
            mine.append(SackPermittedOption())
        if self.ts_ok if syn_ack else cfg.timestamps:
            mine.append(TimestampOption(self._tsval(now), self.ts_recent if syn_ack else 0))
        # Give up our optional options until the hooks' fit: timestamps, SACK-permitted,
        # then window scale (see hooks.py).
        for drop in (TimestampOption, SackPermittedOption, WindowScaleOption):
            if _options_size(opts + mine) <= MAX_OPTION_BYTES:
                break
            mine = [o for o in mine if not isinstance(o, drop)]
        if self._syn_sent_at is not None:
            self._syn_retransmitted = True
        self._syn_sent_at = now
        self.snd_nxt = sq.add(self.iss, 1)
        if self._rto_at is None:
            self._rto_at = now + self.rtt.rto
        if syn_ack:
            window = min(self._free_space(), 0xFFFF)  # RFC 7323 §2.2: never scaled
            self._rcv_adv_edge = sq.add(self.rcv_nxt, window)
            self.rcv_wnd = window
            self.last_ack_sent = self.rcv_nxt
            return TcpSegment(self.local_port, self.remote_port, self.iss, self.rcv_nxt,
                              SYN | ACK, window, tuple(mine + opts))
        window = min(self._rcv_cap, 0xFFFF)
        self.rcv_wnd = window
        return TcpSegment(self.local_port, self.remote_port, self.iss, 0, SYN, window,
                          tuple(mine + opts))

    def _free_space(self) -> int:
        override = self.hooks.receive_window(self)
        if override is not None:
            return max(0, override)
        return max(0, self._rcv_cap - len(self._rcv_buf))

    def _window_field(self) -> int:
        """The window to announce, as the raw header field (RFC 7323 §2.3), with receiver
        SWS avoidance (RFC 9293 §3.8.6.2.2) and no shrinking of the right edge."""
        free = self._free_space()
        current = max(0, sq.diff(self._rcv_adv_edge, self.rcv_nxt))
        wnd = current if free - current < min(self._rcv_cap // 2, self.eff_mss) else free
        shift = self.rcv_wscale
        wnd = min(wnd, 0xFFFF << shift)
        field_value = wnd >> shift
        if (field_value << shift) < current:
            field_value = min(0xFFFF, (current + (1 << shift) - 1) >> shift)
        self.rcv_wnd = field_value << shift
        edge = sq.add(self.rcv_nxt, self.rcv_wnd)
        if sq.gt(edge, self._rcv_adv_edge):
            self._rcv_adv_edge = edge
        return field_value

    def _build(self, seq: int, flags: int, payload: bytes, now: float) -> TcpSegment:
        """A non-SYN segment carrying our current ACK, window and options."""
        window = self._window_field()
        if self._default_segment_options:
            opts: list[TcpOption] = []
            raw = 0
        else:
            bare = TcpSegment(self.local_port, self.remote_port, seq, self.rcv_nxt, flags,
                              window, (), payload)
            opts = list(self.hooks.segment_options(self, bare))
            raw = sum(_option_size(o) for o in opts)
        # Option sizes in raw bytes; the codec pads the total to a multiple of 4.
        budget = MAX_OPTION_BYTES if not payload else max(
            _padded(raw), min(MAX_OPTION_BYTES, self.eff_mss - len(payload)))
        if self.ts_ok:
            with_ts = _padded(raw + 10)
            if with_ts <= max(budget, 12) and with_ts <= MAX_OPTION_BYTES:
                opts.append(TimestampOption(self._tsval(now), self.ts_recent))
                raw += 10
        if self.sack_ok and self._reasm:
            blocks = self._reasm.sack_blocks(4)
            while blocks and _padded(raw + 2 + 8 * len(blocks)) > budget:
                blocks.pop()  # the oldest goes first (RFC 2018 §4)
            if blocks:
                opts.append(SackOption(tuple(blocks)))
        if flags & ACK:
            self.last_ack_sent = self.rcv_nxt
            self._ack_now = False
            self._delack_at = None
            self._bytes_since_ack = 0
        return TcpSegment(self.local_port, self.remote_port, seq, self.rcv_nxt, flags, window,
                          tuple(opts), payload)

    @property
    def _default_segment_options(self) -> bool:
        """The hooks add no option to segments (TcpHooks' own no-op): nothing to ask."""
        return type(self.hooks).segment_options is TcpHooks.segment_options

    def _queue_ack(self, now: float) -> None:
        """An ACK built now (so its SACK blocks describe this moment) and sent next."""
        if self.state in (TcpState.SYN_SENT, TcpState.CLOSED):
            return
        self._ctrl.append(self._build(self.snd_nxt, ACK, b"", now))

    def _challenge_ack(self, now: float) -> None:
        """RFC 5961 §3.2, §4.2, §5.2, rate-limited per connection (§7)."""
        if now - self._challenge_window >= 1.0:
            self._challenge_window = now
            self._challenge_count = 0
        if self._challenge_count >= self.config.challenge_ack_limit_per_s:
            self._count("TCPACKSkippedChallenge")
            return
        self._challenge_count += 1
        self._count("TCPChallengeACK")
        self._queue_ack(now)

    def _rst_segment(self, seq: int, ack: int | None) -> TcpSegment:
        if ack is None:
            rst = TcpSegment(self.local_port, self.remote_port, seq, 0, RST, 0)
        else:
            rst = TcpSegment(self.local_port, self.remote_port, seq, ack, RST | ACK, 0)
        # The layer above may say why it resets (an RST carries no other option of ours).
        opts = self.hooks.segment_options(self, rst)
        if opts:
            rst = TcpSegment(rst.src_port, rst.dst_port, rst.seq, rst.ack, rst.flags, 0,
                             tuple(opts))
        return rst

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self._ts_offset) & sq.SEQ_MASK

    # ------------------------------------------------------------------ endings

    def _enter_time_wait(self, now: float) -> None:
        self.state = TcpState.TIME_WAIT
        self._rto_at = None
        self._persist_at = None
        self._time_wait_at = now + self.config.time_wait_s
        self.hooks.on_event(self, "time_wait")

    def _enter_closed(self, error: str | None, event: str) -> None:
        was = self.state
        if was in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
            self._count("AttemptFails")
        self.state = TcpState.CLOSED
        if error is not None and self.error is None:
            self.error = error
        self._rto_at = None
        self._persist_at = None
        self._delack_at = None
        self._time_wait_at = None
        self._syn_pending = False
        self._ack_now = False
        self.hooks.on_event(self, event)
        if event != "closed":
            self.hooks.on_event(self, "closed")
        self.hooks.data_readable(self)

    def _fail(self, reason: str) -> None:
        if self.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            self._count("TCPAbortOnTimeout")
        self._enter_closed(reason, reason)

    def _count(self, name: str, n: int = 1) -> None:
        self.mib[name] = self.mib.get(name, 0) + n

    def __repr__(self) -> str:
        return (f"<TcpConnection {self.local_port}->{self.remote_port} {self.state.value} "
                f"una={self.snd_una} nxt={self.snd_nxt} rcv_nxt={self.rcv_nxt}>")
