"""The MPTCP connection, the "meta" level of RFC 8684 (Linux: net/mptcp/protocol.c), and its
subflows, each a plain TCP connection reached only through `TcpHooks` (Linux: subflow.c).

The connection owns the data sequence space (64-bit DSNs from the IDSNs of §3.1), the send
buffer from the data ACK on, the scheduler that hands mappings to subflows, data ACKs and the
connection-level receive window (§3.3.4), reassembly by DSN across subflows, DATA_FIN (§3.3.3),
reinjection of what a failed subflow carried, MP_FASTCLOSE (§3.5), MP_PRIO, ADD_ADDR and
REMOVE_ADDR (§3.4), and fallback to TCP (§3.7).

Choices, and why:
- One mapping per segment: the scheduler gives a subflow at most one segment's payload per
  mapping and `payload_limit` keeps TCP from coalescing two, as Linux's per-skb mappings do,
  so every segment carries the mapping of its own bytes (and a checksum, when negotiated,
  covers exactly one segment). Mappings that span segments are still accepted on receive.
- DSNs and data ACKs go out 64 bits wide; 32-bit ones are expanded with `expand_to_64`.
- DATA_FIN travels on a data-less DSS (subflow sequence 0, length 1, §3.3.3) on every
  subflow, resent on a timer until data-acked: a DATA_FIN folded into a mapping would change
  a mapping already declared.
- A subflow is stale (Linux's stale_loss_cnt) after `stale_rto_count` timeouts without
  progress: its unacknowledged-at-connection-level data is reinjected elsewhere and the
  scheduler skips it until it makes progress; a reset or timed-out subflow is dropped after
  the same reinjection.
- The scheduler decides per segment from plain values (`SubflowCandidate`s and a
  `SchedulerContext`). The copies it asks for (redundant) wait in a queue per subflow and go
  out oldest first when that subflow has room; a copy of data already data-acked is skipped,
  and the receiver keeps the first arrival of each DSN.
- Opportunistic retransmission with penalisation (`MptcpConfig.opportunistic`, off as in
  upstream Linux): when the peer's window blocks new data while a subflow has room, that
  subflow resends what a slower one holds at the window's left edge, and the slower one's
  controller backs off, at most once per its RTT (Raiciu et al., NSDI 2012).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from testbed.stack.mptcp import crypto
from testbed.stack.mptcp.mapping import (
    Mapping,
    ReceiveMappings,
    SendMappings,
    dsn_add,
    dsn_diff,
)
from testbed.stack.mptcp.options import (
    AddAddr,
    Dss,
    DssMapping,
    MpCapable,
    MpFail,
    MpFastclose,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
    MpPrio,
    MptcpOption,
    MpTcpRst,
    RemoveAddr,
    TcpRstReason,
    expand_to_64,
    mptcp_options,
)
from testbed.stack.mptcp.pm import PathManager, get_path_manager
from testbed.stack.mptcp.scheduler import (
    Scheduler,
    SchedulerContext,
    SubflowCandidate,
    get_scheduler,
)
from testbed.stack.tcp import seq as sq
from testbed.stack.tcp.congestion import CongestionGroup
from testbed.stack.tcp.connection import TcpConnection, TcpState
from testbed.stack.tcp.hooks import TcpHooks
from testbed.stack.tcp.reassembly import Reassembly
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.tcp import RST, SYN, TcpOption, TcpSegment

if TYPE_CHECKING:
    from testbed.stack.mptcp.stack import MptcpListener, MptcpStack

# Option bytes a data segment needs: DSS with a 64-bit data ACK and a 64-bit DSN mapping
# (2 + 2 + 8 + 8 + 4 + 2), plus 2 for the checksum when negotiated.
DSS_DATA_SPACE = 26
MAX_OPTION_BYTES = 40
_MASK32 = 0xFFFFFFFF


@dataclass
class MptcpConfig:
    """Per connection; the stack's is the default."""

    checksum: bool = False  # ask for DSS checksums (A flag of MP_CAPABLE, §3.1)
    scheduler: str = "default"
    path_manager: str = "default"
    # Endpoints of the host (the stack's table takes them in, as `ip mptcp endpoint add`):
    extra_local_addrs: tuple[bytes, ...] = ()  # `subflow`: the client joins from each
    backup_addrs: tuple[bytes, ...] = ()  # `backup`: subflows from these ask to be backups
    announce_addrs: tuple[bytes, ...] = ()  # `signal`: ADD_ADDR for each
    join_announced: bool = True  # client: join the addresses the server announces
    ndiffports: int = 2  # the `ndiffports` path manager: subflows over the initial pair
    send_buffer: int = 4 << 20
    # The connection-level receive buffer (§3.3.4: one window for all subflows) starts at
    # `receive_buffer` and auto-tuning grows it up to `receive_buffer_max` (Linux: tcp_rmem's
    # default and max, through mptcp_rcv_space_adjust); equal values fix it.
    receive_buffer: int = 128 << 10
    receive_buffer_max: int = 6 << 20
    stale_rto_count: int = 4  # Linux's net.mptcp.stale_loss_cnt
    # Opportunistic retransmission and penalisation of the slow subflow when the peer's
    # window blocks (Raiciu et al., NSDI 2012 §4.2); off as in upstream Linux.
    opportunistic: bool = False
    add_addr_timeout_s: float = 2.0  # resend an unechoed ADD_ADDR (Linux: 120 s)
    add_addr_retries: int = 3
    # The subflows' controller (TCP's registry, where "lia", "olia" and "balia" couple them
    # through the connection's CongestionGroup); None: the stack's TCP default.
    congestion: str | None = None


class MetaState(enum.Enum):
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    CLOSING = "CLOSING"  # DATA_FINs exchanged (or being), subflows closing
    CLOSED = "CLOSED"


def _rel(seq: int, isn: int) -> int:
    return (seq - isn) & _MASK32


@dataclass
class _PendingAddAddr:
    address_id: int
    address: bytes
    port: int | None
    tries: int = 0
    due: float = 0.0


class Subflow(TcpHooks):
    """One subflow: the TCP connection and what MPTCP keeps about it. It is the hooks object
    TCP calls; everything MPTCP does to the subflow goes through the TCP connection's
    public calls."""

    def __init__(self, stack: MptcpStack, tcp: TcpConnection, subflow_id: int) -> None:
        self.stack = stack
        self.tcp = tcp
        self.subflow_id = subflow_id
        self.meta: MptcpConnection | None = None
        self.initial = False
        self.join = False
        self.local_id = 0
        self.remote_id = 0
        self.backup = False  # we asked (MP_JOIN B bit or MP_PRIO)
        self.peer_backup = False  # the peer asked
        self.local_nonce = 0
        self.remote_nonce = 0
        self.hmac_ok = True
        self.join_ack_pending = False  # A: third ACK sent, fourth ACK not seen (§3.2)
        self.join_ack_at: float | None = None
        self.fully_established = False  # may carry data
        self.rst_reason: int | None = None  # MP_TCPRST to put on our RST
        self.fastclose_key: int | None = None  # MP_FASTCLOSE to put on our RST
        self.send_maps = SendMappings()
        self.recv_maps = ReceiveMappings()
        self.rcv_consumed = 1  # relative subflow seq of the next byte to take from TCP
        self.pending: list[MptcpOption] = []  # signals for the next pure ACK
        self.stale = False
        self.failed = False
        self._rto_mark = 0
        self._acked_mark = 1
        self._csum_buf = bytearray()  # bytes of a checksummed mapping not complete yet
        self._csum_map: Mapping | None = None
        self.infinite: tuple[int, int] | None = None  # (subflow_seq, data_seq) after fallback
        # Scheduling: copies still to send (redundant), when this subflow was last penalised.
        self.copy_queue: list[tuple[int, int]] = []
        self.penalised_at: float | None = None

    # ------------------------------------------------------------------ helpers

    @property
    def acked(self) -> int:
        """Relative subflow sequence number acknowledged by the peer."""
        return _rel(self.tcp.snd_una, self.tcp.iss)

    @property
    def usable(self) -> bool:
        return (self.fully_established and not self.failed and not self.stale
                and self.tcp.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT))

    def payload_size(self) -> int:
        """What TCP will put in a full segment (as TcpConnection._payload_mss)."""
        extra = (10 if self.tcp.ts_ok else 0) + self.reserved_option_space(self.tcp)
        return max(1, self.tcp.eff_mss - (extra + (-extra % 4)))

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.tcp.stats())
        out.update(subflow_id=self.subflow_id, local_addr=str(ipaddress.ip_address(
            self.tcp.local_addr)), remote_addr=str(ipaddress.ip_address(self.tcp.remote_addr)),
            local_port=self.tcp.local_port, remote_port=self.tcp.remote_port,
            local_id=self.local_id, remote_id=self.remote_id, backup=self.backup,
            peer_backup=self.peer_backup, initial=self.initial, stale=self.stale,
            fully_established=self.fully_established, congestion=self.tcp.cc.name,
            # Subflows whose windows this one's controller reads (coupled ones only do).
            coupled_with=len(self.meta.congestion_group.siblings(self.tcp.cc))
            if self.meta is not None and self.tcp.cc.group is not None else 0)
        return out

    # ------------------------------------------------------------------ TCP hooks

    def syn_options(self, conn: TcpConnection, syn_ack: bool) -> list[TcpOption]:
        meta = self.meta
        if meta is None or meta.fallback:
            return []
        if self.join:
            if syn_ack:
                mac = crypto.join_syn_ack_hmac(key_a=meta.remote_key, key_b=meta.local_key,
                                               nonce_a=self.remote_nonce,
                                               nonce_b=self.local_nonce)
                return [MpJoinSynAck(mac, self.local_nonce, self.local_id,
                                     self.backup).to_tcp_option()]
            self.stack._count("MPJoinSynTx")
            return [MpJoinSyn(meta.remote_token, self.local_nonce, self.local_id,
                              self.backup).to_tcp_option()]
        if syn_ack:
            # §3.1: the SYN/ACK carries the listener's key and its own checksum wish.
            return [MpCapable(checksum_required=meta.checksum,
                              sender_key=meta.local_key).to_tcp_option()]
        self.stack._count("MPCapableSYNTX")
        # Version 1: the SYN carries no key (§3.1).
        return [MpCapable(checksum_required=meta.config.checksum).to_tcp_option()]

    def reserved_option_space(self, conn: TcpConnection) -> int:
        meta = self.meta
        if meta is None or meta.fallback:
            return 0
        return DSS_DATA_SPACE + (2 if meta.checksum else 0)

    def payload_limit(self, conn: TcpConnection, seq: int) -> int | None:
        meta = self.meta
        if meta is None or meta.fallback:
            return None
        rel = _rel(seq, conn.iss)
        mapping = self.send_maps.find(rel)
        return None if mapping is None else mapping.subflow_end - rel

    def segment_options(self, conn: TcpConnection, seg: TcpSegment) -> list[TcpOption]:
        meta = self.meta
        if meta is None:
            return []
        if seg.flags & RST:
            return self._rst_options()
        if meta.fallback:
            return [o.to_tcp_option() for o in self._take_fallback_signals()]
        out: list[MptcpOption] = []
        if self.join_ack_pending:
            # §3.2: the third ACK, repeated until the peer's fourth ACK shows it arrived.
            mac = crypto.join_ack_hmac(key_a=meta.local_key, key_b=meta.remote_key,
                                       nonce_a=self.local_nonce, nonce_b=self.remote_nonce)
            return [MpJoinAck(mac).to_tcp_option()]
        if seg.payload:
            out.append(self._data_option(seg, meta))
            return [o.to_tcp_option() for o in out]
        if (meta.is_client and not meta.peer_fully_established and self.initial
                and meta._data_fin_seq is None and not self.pending):
            # §3.1: the third ACK (and, until the server shows it got the keys, every pure
            # ACK with nothing else to say) echoes both keys; the client's key first.
            return [MpCapable(checksum_required=meta.checksum, sender_key=meta.local_key,
                              receiver_key=meta.remote_key).to_tcp_option()]
        dss = meta.dss_for_ack(self)
        out.append(dss)
        space = MAX_OPTION_BYTES - _size(dss)
        while self.pending and _size(self.pending[0]) <= space:
            signal = self.pending.pop(0)
            space -= _size(signal)
            out.append(signal)
            meta.signal_sent(self, signal)
        if self.pending:
            conn.request_ack()  # what did not fit goes on the next ACK
        return [o.to_tcp_option() for o in out]

    def _data_option(self, seg: TcpSegment, meta: MptcpConnection) -> MptcpOption:
        rel = _rel(seg.seq, self.tcp.iss)
        mapping = self.send_maps.find(rel)
        if mapping is None:  # cannot happen: every byte a subflow sends was mapped
            return meta.dss_for_ack(self)
        if (meta.is_client and self.initial and not meta.peer_fully_established
                and mapping.subflow_seq == 1):
            # §3.1: the first data carries MP_CAPABLE with both keys and its length, its
            # DSN being IDSN + 1 and its subflow sequence number 1.
            return MpCapable(checksum_required=meta.checksum, sender_key=meta.local_key,
                             receiver_key=meta.remote_key, data_level_length=mapping.length,
                             checksum=mapping.checksum)
        return Dss(data_ack=meta.rcv_nxt, data_ack_64=True, mapping=DssMapping(
            mapping.data_seq, mapping.subflow_seq, mapping.length, mapping.checksum))

    def _rst_options(self) -> list[TcpOption]:
        out: list[MptcpOption] = []
        if self.fastclose_key is not None:
            out.append(MpFastclose(self.fastclose_key))
        if self.rst_reason is not None:
            out.append(MpTcpRst(self.rst_reason))
            self.stack._count("MPRstTx")
        return [o.to_tcp_option() for o in out]

    def _take_fallback_signals(self) -> list[MptcpOption]:
        out: list[MptcpOption] = [s for s in self.pending if isinstance(s, MpFail | Dss)]
        self.pending = [s for s in self.pending if s not in out]
        return out

    def options_received(self, conn: TcpConnection, seg: TcpSegment) -> None:
        try:
            opts = list(mptcp_options(seg.options))
        except ParseError:
            self.stack._count("MPTCPOptionErrors")
            opts = []
        meta = self.meta
        if seg.flags & SYN:
            self.stack._on_syn_options(self, seg, opts)
            return
        if meta is None:
            return
        meta.on_segment(self, seg, opts)

    def data_readable(self, conn: TcpConnection) -> None:
        if self.meta is not None:
            self.meta.on_subflow_readable(self)

    def receive_window(self, conn: TcpConnection) -> int | None:
        meta = self.meta
        return None if meta is None else meta.receive_window()

    def on_event(self, conn: TcpConnection, event: str) -> None:
        if self.meta is not None:
            self.meta.on_subflow_event(self, event)


def _size(opt: MptcpOption) -> int:
    return 2 + len(opt.emit())


def _queue_range(queue: list[tuple[int, int]], data_seq: int, length: int) -> None:
    """Append (data_seq, length), merged with the last range when it continues it."""
    if queue:
        d, n = queue[-1]
        if dsn_add(d, n) == data_seq:
            queue[-1] = (d, n + length)
            return
    queue.append((data_seq, length))


def _held_run(subflows: list[Subflow], sf: Subflow, data_seq: int) -> int:
    """Bytes from data_seq to the end of the mapping another subflow holds it in."""
    for other in subflows:
        if other is not sf and _holds(other, data_seq):
            m = other.send_maps.carrying(data_seq)
            assert m is not None
            return m.length - dsn_diff(data_seq, m.data_seq)
    return 0


def _holds(sf: Subflow, data_seq: int) -> bool:
    """sf carries data_seq and has not had it acknowledged."""
    mapping = sf.send_maps.carrying(data_seq)
    if mapping is None:
        return False
    return mapping.subflow_seq + dsn_diff(data_seq, mapping.data_seq) >= sf.acked


@dataclass
class _Counters:
    bytes_sent: int = 0  # data bytes handed to subflows, reinjections included
    bytes_reinjected: int = 0
    bytes_redundant: int = 0  # copies a redundant scheduler asked for
    bytes_opportunistic: int = 0  # opportunistic retransmissions (NSDI 2012 §4.2)
    bytes_acked: int = 0
    bytes_received: int = 0
    data_fin_retransmits: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class MptcpConnection:
    """One MPTCP connection; the application API mirrors TcpConnection's."""

    def __init__(self, stack: MptcpStack, *, is_client: bool, local_addr: bytes,
                 remote_addr: bytes, remote_port: int, config: MptcpConfig,
                 now: float) -> None:
        self.stack = stack
        self.is_client = is_client
        self.listener: MptcpListener | None = None  # the server's, for accept()
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.config = config
        self.scheduler: Scheduler = get_scheduler(config.scheduler)()
        self.pm: PathManager = get_path_manager(config.path_manager)()
        # Every subflow's controller joins once its handshake is done; coupled ones (LIA,
        # OLIA, BALIA) read their siblings through it, uncoupled ones ignore it.
        self.congestion_group = CongestionGroup()
        self.state = MetaState.CONNECTING
        self.error: str | None = None
        self.fallback = False
        self.subflows: list[Subflow] = []
        self._closed_subflows: list[Subflow] = []
        self.local_key = 0
        self.remote_key = 0
        self.local_token = 0
        self.remote_token = 0
        self.checksum = False
        self.fully_established = False  # we know both keys and MPTCP works on the path
        self.peer_fully_established = False  # client: the server showed it has our key
        self._pm_started = False
        self.abort_subflows = False
        self._was_established = False
        self._send_base = 1  # the DSN of subflow sequence 1 on the initial subflow
        self._now = now
        # Send side (64-bit DSNs).
        self.snd_una = 1  # without keys (plain TCP from the start) DSN = subflow seq
        self.snd_nxt = 1
        self._snd_buf = bytearray()  # data from snd_una on
        self._reinject: list[tuple[int, int]] = []
        self._close_requested = False
        self._data_fin_seq: int | None = None
        self._data_fin_acked = False
        self._data_fin_at: float | None = None
        self._data_fin_backoff = 0
        # The connection-level retransmission timer (Linux's mptcp_retransmit_timer): data
        # a subflow acknowledged can still miss the peer's data stream (dropped beyond its
        # out-of-order limits), and only the data ACK tells.
        self._meta_rto_at: float | None = None
        self._meta_rto_backoff = 0
        # Receive side.
        self.rcv_nxt = 1
        self._rcv_buf = bytearray()
        self._rcv_cap = config.receive_buffer
        self._reasm = Reassembly(max(config.receive_buffer, config.receive_buffer_max), 4096)
        self._rcv_space_start = now  # auto-tuning: when the current measurement began ...
        self._rcv_space_seq: int | None = None  # ... and rcv_nxt then
        # What one RTT brought at the last measurement (Linux's rcvq_space.space), first
        # what ten segments would.
        self._rcv_space = min(config.receive_buffer, 10 * 1460)
        self._rcv_fin_seq: int | None = None
        self._fin_received = False
        self._adv_window = config.receive_buffer
        self._add_addrs: list[_PendingAddAddr] = []
        self._rm_addrs: list[int] = []  # REMOVE_ADDR ids waiting for a subflow to carry them
        # What the peer announced (ADD_ADDR): address id -> (address, port).
        self.peer_addresses: dict[int, tuple[bytes, int]] = {}
        self.counters = _Counters()

    # ------------------------------------------------------------------ keys

    def set_local_key(self, key: int) -> None:
        self.local_key = key
        self.local_token = crypto.key_token(key)
        self.snd_una = self.snd_nxt = self._send_base = dsn_add(crypto.key_idsn(key), 1)

    def set_remote_key(self, key: int) -> None:
        self.remote_key = key
        self.remote_token = crypto.key_token(key)
        self.rcv_nxt = dsn_add(crypto.key_idsn(key), 1)

    # ------------------------------------------------------------------ application API

    @property
    def established(self) -> bool:
        """The initial subflow's handshake completed (the connection may be closing since)."""
        return self._was_established and self.state is not MetaState.CLOSED

    @property
    def closed(self) -> bool:
        return self.state is MetaState.CLOSED

    @property
    def local_port(self) -> int:
        """The initial subflow's port, as a TCP socket's getsockname() would show."""
        for sf in (*self.subflows, *self._closed_subflows):
            if sf.initial:
                return sf.tcp.local_port
        return 0

    @property
    def readable(self) -> bool:
        return bool(self._rcv_buf) or self._fin_received or self.error is not None

    @property
    def at_eof(self) -> bool:
        return (self._fin_received or self.error is not None) and not self._rcv_buf

    @property
    def writable_space(self) -> int:
        if self._close_requested or self.state not in (MetaState.CONNECTING,
                                                       MetaState.ESTABLISHED):
            return 0
        return max(0, self.config.send_buffer - len(self._snd_buf))

    def send(self, data: bytes, now: float) -> int:
        if self._close_requested or self.state not in (MetaState.CONNECTING,
                                                       MetaState.ESTABLISHED):
            raise OSError("MPTCP connection " + ("closing" if self._close_requested
                                                 else "not open"))
        n = min(len(data), self.config.send_buffer - len(self._snd_buf))
        if n > 0:
            self._snd_buf += data[:n]
        return max(0, n)

    def recv(self, max_bytes: int = 65536) -> bytes:
        if not self._rcv_buf:
            return b""
        out = bytes(self._rcv_buf[:max_bytes])
        del self._rcv_buf[:max_bytes]
        # §3.3.4: the window is the connection's; tell the peer when it opened usefully.
        free = self._rcv_cap - len(self._rcv_buf) - self._reasm.buffered
        if free - self._adv_window >= min(self._rcv_cap // 2, 128 << 10):
            best = self._best_subflow()
            if best is not None:
                best.tcp.request_ack()
        return out

    def close(self, now: float) -> None:
        """No more data from us: DATA_FIN once everything queued has been mapped."""
        self._now = now
        if self.state is MetaState.CLOSED:
            return
        if self.state is MetaState.CONNECTING and not self.subflows:
            self._enter_closed(None)
            return
        self._close_requested = True

    def abort(self, now: float) -> None:
        """MP_FASTCLOSE (§3.5, option A): an ACK carrying the peer's key on every subflow,
        then RSTs. The ACK is acceptable wherever the peer's receive sequence stands, so
        the key reaches it even with our data in flight; an RST is only taken exactly at
        rcv_nxt (RFC 5961 §3.2)."""
        self._now = now
        if self.state is MetaState.CLOSED:
            return
        if not self.fallback and self.fully_established:
            for sf in self.subflows:
                if sf.tcp.established:
                    sf.pending.insert(0, MpFastclose(self.remote_key))
                    sf.tcp.request_ack()
        self.abort_subflows = True  # the stack resets them once the ACKs are out
        self._enter_closed("aborted")

    def stats(self) -> dict[str, object]:
        c = self.counters
        return {
            "state": self.state.value,
            "fallback": self.fallback,
            "checksum": self.checksum,
            "local_token": self.local_token,
            "remote_token": self.remote_token,
            "snd_una": self.snd_una,
            "snd_nxt": self.snd_nxt,
            "rcv_nxt": self.rcv_nxt,
            "send_queue": len(self._snd_buf),
            "receive_queue": len(self._rcv_buf),
            "receive_buffer": self._rcv_cap,
            "bytes_sent": c.bytes_sent,
            "bytes_reinjected": c.bytes_reinjected,
            "bytes_redundant": c.bytes_redundant,
            "bytes_opportunistic": c.bytes_opportunistic,
            "scheduler": self.config.scheduler,
            "opportunistic": self.config.opportunistic,
            "bytes_acked": c.bytes_acked,
            "bytes_received": c.bytes_received,
            "subflows": [sf.stats() for sf in self.subflows],
            "closed_subflows": len(self._closed_subflows),
            "counters": dict(self.stack.counters),
        }

    # ------------------------------------------------------------------ path management

    def open_subflow(self, local_addr: bytes, remote_addr: bytes, remote_port: int,
                     now: float, *, backup: bool = False,
                     remote_address_id: int | None = None) -> Subflow | None:
        """MP_JOIN from local_addr (§3.2) with the address id the stack gives local_addr;
        None when MPTCP is not (yet) usable."""
        if self.fallback or not self.fully_established or self.state is not \
                MetaState.ESTABLISHED:
            return None
        local_id = self.stack.address_id(self, local_addr)
        if local_id in self._rm_addrs:
            # The address is back before its REMOVE_ADDR left: withdrawing it now would
            # close the new subflow at the peer.
            self._rm_addrs.remove(local_id)
        sf = self.stack._open_join(self, local_addr, remote_addr, remote_port, now,
                                   local_id=local_id, backup=backup)
        if remote_address_id is not None:
            sf.remote_id = remote_address_id
        self.stack._count("MPTCPJoinsOpened")
        return sf

    def ensure_subflow(self, local_addr: bytes, remote_addr: bytes, remote_port: int,
                       now: float, *, backup: bool = False,
                       remote_address_id: int | None = None) -> Subflow | None:
        """open_subflow unless a live subflow joins that pair already or local_addr is
        down."""
        if not self.stack.address_is_up(local_addr):
            return None
        for sf in self.subflows:
            if (sf.tcp.local_addr == local_addr and sf.tcp.remote_addr == remote_addr
                    and sf.tcp.remote_port == remote_port and not sf.failed):
                return None
        return self.open_subflow(local_addr, remote_addr, remote_port, now, backup=backup,
                                 remote_address_id=remote_address_id)

    def remote_addresses(self) -> list[tuple[bytes, int, int]]:
        """(address, port, id) of the peer: its initial one (id 0) and those it announced."""
        out = [(self.remote_addr, self.remote_port, 0)]
        out += [(addr, port, aid) for aid, (addr, port) in sorted(self.peer_addresses.items())
                if (addr, port) != (self.remote_addr, self.remote_port)]
        return out

    def close_subflow(self, subflow: Subflow, now: float) -> None:
        """Close one subflow (RST with MP_TCPRST "administratively prohibited"); what it
        carried and the peer did not data-acknowledge is reinjected on the others."""
        if subflow not in self.subflows:
            return
        subflow.rst_reason = TcpRstReason.ADMINISTRATIVELY_PROHIBITED
        subflow.tcp.abort(now)

    def announce_address(self, address_id: int, address: bytes, now: float,
                         port: int | None = None) -> None:
        """ADD_ADDR with its HMAC (§3.4.1), resent until the peer echoes it."""
        if self.fallback or any(a.address_id == address_id for a in self._add_addrs):
            return
        self._add_addrs.append(_PendingAddAddr(address_id, address, port, due=now))

    def remove_address(self, address_id: int, now: float) -> None:
        """REMOVE_ADDR (§3.4.2), sent once a subflow from another address can carry it; our
        subflows from that address are closed (their data reinjected), unless that would
        leave the connection without a working subflow: then they wait for their address to
        return or another subflow to complete its join (the path manager withdraws the
        address again then). Their reset may still reach the peer by another interface,
        and it must not find the connection without subflows before the join arrives."""
        if self.fallback or self.state is MetaState.CLOSED:
            return
        self._add_addrs = [a for a in self._add_addrs if a.address_id != address_id]
        victims = [sf for sf in self.subflows if sf.local_id == address_id]
        working = [sf for sf in self.subflows if sf.local_id != address_id
                   and sf.fully_established and not sf.failed]
        if victims and not working:
            return
        if address_id not in self._rm_addrs:
            self._rm_addrs.append(address_id)
        for sf in victims:
            self.close_subflow(sf, now)
        self._send_rm_addrs()

    def withdraw_local_address(self, addr: bytes, now: float) -> None:
        """`addr` is gone: REMOVE_ADDR for every id it is known by on this connection (the
        id of its endpoint, 0 when it is the initial subflow's), its subflows closed."""
        ids = {sf.local_id for sf in self.subflows if sf.tcp.local_addr == addr}
        ids |= {a.address_id for a in self._add_addrs if a.address == addr}
        if addr == self.local_addr:
            ids.add(0)
        endpoint = self.stack.endpoints.get(addr)
        if endpoint is not None and any(sf.tcp.local_addr == addr for sf in self.subflows):
            ids.add(endpoint.address_id)
        for address_id in sorted(ids):
            self.remove_address(address_id, now)

    def _send_rm_addrs(self) -> None:
        if not self._rm_addrs:
            return
        others = [sf for sf in self.subflows if sf.local_id not in self._rm_addrs]
        carriers = [sf for sf in others if sf.usable] or \
            [sf for sf in others if sf.fully_established and sf.tcp.established
             and not sf.failed]
        if not carriers:
            return
        sf = min(carriers, key=lambda s: (s.tcp.rtt.srtt or 1e9, s.subflow_id))
        sf.pending.append(RemoveAddr(tuple(self._rm_addrs)))
        sf.tcp.request_ack()
        self._rm_addrs = []

    def set_backup(self, subflow: Subflow, backup: bool, now: float) -> None:
        """MP_PRIO on that subflow (§3.3.8)."""
        subflow.backup = backup
        subflow.pending.append(MpPrio(backup))
        subflow.tcp.request_ack()

    def signal_sent(self, sf: Subflow, signal: MptcpOption) -> None:
        names = {AddAddr: "AddAddrTx", RemoveAddr: "RmAddrTx", MpPrio: "MPPrioTx",
                 MpFail: "MPFailTx", MpFastclose: "MPFastcloseTx"}
        if isinstance(signal, AddAddr) and signal.echo:
            self.stack._count("EchoAddTx")
        elif type(signal) in names:
            self.stack._count(names[type(signal)])

    # ------------------------------------------------------------------ hooks from subflows

    def attach(self, sf: Subflow) -> None:
        sf.meta = self
        self.subflows.append(sf)

    def on_subflow_event(self, sf: Subflow, event: str) -> None:
        if event == "established":
            # The controller is final now (TCP makes it when the MSS is known, at the SYN).
            if sf.tcp.cc.group is not self.congestion_group:
                self.congestion_group.join(sf.tcp.cc, sf.tcp.rtt)
            if sf.initial:
                self.state = MetaState.ESTABLISHED
                self._was_established = True
                sf.fully_established = True  # the initial subflow carries data at once
                self.stack._meta_established(self)
            elif sf.join:
                if not sf.hmac_ok:
                    sf.rst_reason = TcpRstReason.MPTCP_SPECIFIC_ERROR
                    sf.tcp.abort(self._now)
                    return
                if not sf.tcp.passive:  # we opened it: third ACK sent, wait for the fourth
                    sf.join_ack_pending = True
                    sf.tcp.request_ack()
                else:
                    sf.fully_established = True
                    sf.tcp.request_ack()  # the fourth ACK (§3.2)
                    self.pm.on_subflow_established(self, sf, self._now)
        elif event == "fin_received":
            # The peer closes this subflow (§3.3.3: a subflow FIN is not a DATA_FIN); in
            # fallback it is the end of the stream.
            if self.fallback:
                self._fin_received = True
                self._maybe_finish()
            if not (self.fallback and not self._close_requested):
                sf.tcp.close(self._now)
        elif event in ("reset", "timeout", "refused", "closed"):
            self._subflow_gone(sf, event)

    def _subflow_gone(self, sf: Subflow, event: str) -> None:
        if sf not in self.subflows:
            return
        self.subflows.remove(sf)
        self._closed_subflows.append(sf)
        self.congestion_group.leave(sf.tcp.cc)
        sf.failed = True
        if event != "closed" or sf.tcp.error is not None:
            self._reinject_from(sf)
        if not self.subflows and self.state is not MetaState.CLOSED:
            error = sf.tcp.error
            if self.state is MetaState.CLOSING or (self.fallback and error is None):
                self._enter_closed(None)
            else:
                self._enter_closed(error or "all subflows closed")

    def _reinject_from(self, sf: Subflow) -> None:
        if self.fallback:
            return
        for data_seq, length in sf.send_maps.unacked_data(self.snd_una):
            self._reinject.append((data_seq, length))
            self.counters.bytes_reinjected += length
            self.stack._count("MPTCPReinject")

    def on_segment(self, sf: Subflow, seg: TcpSegment, opts: list[MptcpOption]) -> None:
        now = self._now
        if seg.flags & RST:
            self._on_rst_options(sf, opts)
            return
        if self.fallback:
            for opt in opts:
                if isinstance(opt, Dss) and opt.mapping is not None \
                        and opt.mapping.data_level_length == 0:
                    self.stack._count("InfiniteMapRx")
            self._fallback_ack(sf)
            return
        if sf.join_ack_pending:
            # §3.2: any later segment from the peer is the fourth ACK.
            sf.join_ack_pending = False
            sf.fully_established = True
            self.pm.on_subflow_established(self, sf, now)
        got_mptcp = False
        for opt in opts:
            got_mptcp = True
            if isinstance(opt, MpCapable):
                self._on_mp_capable_ack(sf, opt, seg)
            elif isinstance(opt, MpJoinAck):
                self._on_join_ack(sf, opt)
            elif isinstance(opt, Dss):
                self._on_dss(sf, opt, seg)
            elif isinstance(opt, AddAddr):
                self._on_add_addr(opt, now)
            elif isinstance(opt, RemoveAddr):
                self.stack._count("RmAddr")
                for aid in opt.address_ids:
                    self.peer_addresses.pop(aid, None)
                    # §3.4.2: the subflows to that address close (id 0: the initial one's,
                    # as Linux does), their data reinjected on the others.
                    for other in list(self.subflows):
                        if other.remote_id == aid and other is not sf:
                            self.stack._count("RmSubflow")
                            other.tcp.abort(now)
                    self.pm.on_address_removed(self, aid, now)
            elif isinstance(opt, MpPrio):
                self.stack._count("MPPrioRx")
                sf.peer_backup = opt.backup
            elif isinstance(opt, MpFail):
                self.stack._count("MPFailRx")
                self._do_fallback(sf, "MP_FAIL")
                return
            elif isinstance(opt, MpFastclose):
                self._on_fastclose(opt)
                return
        if (not got_mptcp and sf.initial and not sf.tcp.passive
                and sq.gt(seg.ack, sq.add(sf.tcp.iss, 1)) and not self.peer_fully_established):
            # §3.7: our data acknowledged with no MPTCP option before the server ever sent
            # one: a middlebox strips them, continue as TCP.
            self.stack._count("DssFallback")
            self._do_fallback(sf, None)
            self._fallback_ack(sf)
            return
        if got_mptcp and self.is_client and sf.initial and not self.peer_fully_established:
            self.peer_fully_established = True
            self._start_pm(now)
        if sf.tcp.passive and sf.initial and not got_mptcp and not self.fully_established:
            # §3.1: the ACK completing the handshake (or the first data) has no MP_CAPABLE.
            self.stack._count("MPCapableFallbackACK")
            self._do_fallback(sf, None)
        if seg.payload and not self.fallback:
            self._check_mapping(sf, seg)

    def _on_rst_options(self, sf: Subflow, opts: list[MptcpOption]) -> None:
        for opt in opts:
            if isinstance(opt, MpTcpRst):
                self.stack._count("MPRstRx")
            elif isinstance(opt, MpFastclose):
                self._on_fastclose(opt)

    def _on_fastclose(self, opt: MpFastclose) -> None:
        if opt.receiver_key != self.local_key:
            return  # §3.5: only the right key proves the sender knows the connection
        self.stack._count("MPFastcloseRx")
        self._enter_closed("reset by peer (MP_FASTCLOSE)")
        for other in list(self.subflows):
            if other.tcp.state is not TcpState.CLOSED:
                other.tcp.abort(self._now)

    def _on_mp_capable_ack(self, sf: Subflow, opt: MpCapable, seg: TcpSegment) -> None:
        if self.is_client or not sf.initial:
            return
        if opt.sender_key is None or opt.receiver_key != self.local_key:
            return
        if not self.fully_established:
            self.stack._count("MPCapableACKRX")
            self.set_remote_key(opt.sender_key)
            self.checksum = self.checksum or opt.checksum_required
            self.fully_established = True
            self._start_pm(self._now)
        if opt.data_level_length is not None and seg.payload:
            # §3.1: data on the MP_CAPABLE: DSN IDSN + 1 from subflow sequence number 1.
            mapping = Mapping(dsn_add(crypto.key_idsn(self.remote_key), 1), 1,
                              opt.data_level_length, opt.checksum)
            if not sf.recv_maps.add(mapping):
                self._mapping_mismatch(sf)

    def _on_join_ack(self, sf: Subflow, opt: MpJoinAck) -> None:
        if not sf.join or not sf.tcp.passive:
            return
        want = crypto.join_ack_hmac(key_a=self.remote_key, key_b=self.local_key,
                                    nonce_a=sf.remote_nonce, nonce_b=sf.local_nonce)
        if opt.sender_hmac == want:
            self.stack._count("MPJoinAckRx")
            sf.hmac_ok = True
        else:
            self.stack._count("MPJoinAckHMacFailure")
            sf.hmac_ok = False

    def _on_dss(self, sf: Subflow, opt: Dss, seg: TcpSegment) -> None:
        if not self.fully_established and not self.is_client and sf.initial:
            # v1 server whose third ACK was lost: the DSS alone does not teach the key.
            return
        if opt.data_ack is not None:
            ack = opt.data_ack if opt.data_ack_64 else expand_to_64(opt.data_ack, self.snd_una)
            self._on_data_ack(ack)
        m = opt.mapping
        if m is None:
            return
        data_seq = m.data_seq if m.data_seq_64 else expand_to_64(m.data_seq, self.rcv_nxt)
        if m.data_level_length == 0:
            self.stack._count("InfiniteMapRx")
            self._do_fallback(sf, "infinite mapping")
            return
        length = m.data_level_length
        if opt.data_fin:
            fin_seq = dsn_add(data_seq, length - 1)
            if self._rcv_fin_seq is None:
                self._rcv_fin_seq = fin_seq
            length -= 1
            if m.subflow_seq == 0 or length == 0:
                # §3.3.3: a DATA_FIN on a data-less segment (subflow sequence 0).
                self._advance_receive(sf)
                return
        if not sf.recv_maps.add(Mapping(data_seq, m.subflow_seq, length, m.checksum)):
            self._mapping_mismatch(sf)

    def _check_mapping(self, sf: Subflow, seg: TcpSegment) -> None:
        """§3.3.1: the segment's data must lie inside a mapping."""
        start = _rel(seg.seq, sf.tcp.irs)
        end = start + len(seg.payload)
        mapping = sf.recv_maps.find(start)
        if mapping is None:
            mapping = sf.recv_maps.find(max(start, sf.rcv_consumed))
        if mapping is not None and mapping.subflow_seq <= start and end <= mapping.subflow_end:
            return
        if mapping is None and end <= sf.rcv_consumed:
            return  # an old duplicate, its bytes already taken
        if len(self.subflows) == 1 and sf.initial and not self._received_any_mapping(sf):
            # §3.7: the first data without a DSS: MPTCP options are stripped on the path.
            self.stack._count("DssFallback")
            self._do_fallback(sf, None)
            return
        self._mapping_mismatch(sf)

    def _received_any_mapping(self, sf: Subflow) -> bool:
        return len(sf.recv_maps) > 0 or sf.rcv_consumed > 1

    def _mapping_mismatch(self, sf: Subflow) -> None:
        """§3.3.1/§3.7: data that does not fit its mapping; Linux resets the subflow (its data
        is reinjected by the peer, never data-acked by us)."""
        self.stack._count("DSSNotMatching")
        if len(self.subflows) == 1 and sf.initial and not self.is_joined():
            sf.pending.append(MpFail(self.rcv_nxt))
            self._do_fallback(sf, None)
            return
        sf.rst_reason = TcpRstReason.MPTCP_SPECIFIC_ERROR
        sf.tcp.abort(self._now)

    def is_joined(self) -> bool:
        return any(s.join for s in self.subflows)

    def _on_add_addr(self, opt: AddAddr, now: float) -> None:
        if opt.echo:
            self.stack._count("EchoAdd")
            self._add_addrs = [a for a in self._add_addrs if a.address_id != opt.address_id]
            return
        want = crypto.add_addr_hmac(sender_key=self.remote_key, receiver_key=self.local_key,
                                    address_id=opt.address_id, address=opt.address,
                                    port=opt.port)
        if opt.truncated_hmac != want:
            self.stack._count("AddAddrDrop")
            return
        self.stack._count("AddAddr")
        self.peer_addresses[opt.address_id] = (opt.address.packed,
                                               opt.port or self.remote_port)
        best = self._best_subflow()
        if best is not None:
            best.pending.append(AddAddr(opt.address_id, opt.address, opt.port, echo=True))
            best.tcp.request_ack()
        self.pm.on_address_announced(self, opt.address_id, opt.address.packed, opt.port, now)

    def _do_fallback(self, sf: Subflow, reason: str | None) -> None:
        """§3.7: continue as TCP on this subflow. Fallback happens only while it is the
        only subflow that ever carried data, so its bytes map one to one onto the data
        stream (the infinite mapping)."""
        if self.fallback:
            return
        self.fallback = True
        # Bytes already on the subflow map one to one onto the data stream.
        sf.infinite = (1, dsn_add(self.rcv_nxt, -(sf.rcv_consumed - 1)))
        if self.fully_established and reason != "infinite mapping":
            # §3.7: tell the peer with an infinite mapping (data-level length 0) from the
            # first byte we have not mapped, so it falls back too even if our DSSes reached
            # it before.
            sf.pending.append(Dss(data_ack=self.rcv_nxt, data_ack_64=True, mapping=DssMapping(
                self.snd_nxt, sf.send_maps.next_subflow_seq, 0)))
            self.stack._count("InfiniteMapTx")
            sf.tcp.request_ack()
        for other in list(self.subflows):
            if other is not sf:
                other.tcp.abort(self._now)
        self._fallback_ack(sf)
        self.on_subflow_readable(sf)

    def _fallback_ack(self, sf: Subflow) -> None:
        """In fallback the subflow's ACK is the data ACK (infinite mapping)."""
        if not sf.initial:
            return
        # Every byte of the initial subflow was mapped in order from _send_base at subflow
        # sequence 1, before the fallback and after it.
        acked = dsn_add(self._send_base, sf.acked - 1)
        if dsn_diff(acked, self.snd_nxt) > 0:
            acked = self.snd_nxt  # the subflow's FIN is no data
        self._on_data_ack(acked)

    def _on_data_ack(self, ack: int) -> None:
        limit = dsn_add(self.snd_nxt, 1 if self._data_fin_seq is not None else 0)
        if dsn_diff(ack, self.snd_una) <= 0 or dsn_diff(ack, limit) > 0:
            return
        acked = dsn_diff(ack, self.snd_una)
        data = min(acked, len(self._snd_buf))
        del self._snd_buf[:data]
        self.counters.bytes_acked += data
        self.snd_una = ack
        self._meta_rto_at = None  # re-armed by before_output if data is still out
        self._meta_rto_backoff = 0
        if self._data_fin_seq is not None and dsn_diff(ack, self._data_fin_seq) > 0:
            self._data_fin_acked = True
            self._data_fin_at = None
            self._maybe_finish()

    # ------------------------------------------------------------------ receive data

    def on_subflow_readable(self, sf: Subflow) -> None:
        data = sf.tcp.recv(1 << 30)
        if data:
            self._take_subflow_bytes(sf, data)
        self._advance_receive(sf)

    def _take_subflow_bytes(self, sf: Subflow, data: bytes) -> None:
        rel = sf.rcv_consumed
        sf.rcv_consumed += len(data)
        if self.fallback and sf.infinite is not None:
            base_rel, base_dsn = sf.infinite
            self._insert(dsn_add(base_dsn, rel - base_rel), data)
            return
        view = memoryview(data)
        pos = 0
        while pos < len(data):
            mapping = sf.recv_maps.find(rel + pos)
            if mapping is None:
                # Data past every mapping (checked on arrival, so only after a reset).
                return
            take = min(len(data) - pos, mapping.subflow_end - (rel + pos))
            chunk = bytes(view[pos:pos + take])
            offset = rel + pos - mapping.subflow_seq
            if mapping.checksum is not None and self.checksum:
                self._checksummed(sf, mapping, offset, chunk)
            else:
                self._insert(dsn_add(mapping.data_seq, offset), chunk)
            pos += take
        sf.recv_maps.prune(sf.rcv_consumed)

    def _checksummed(self, sf: Subflow, mapping: Mapping, offset: int, chunk: bytes) -> None:
        if sf._csum_map is not mapping:
            sf._csum_map = mapping
            sf._csum_buf = bytearray()
        sf._csum_buf += chunk
        if len(sf._csum_buf) < mapping.length:
            return
        payload = bytes(sf._csum_buf)
        sf._csum_map = None
        sf._csum_buf = bytearray()
        assert mapping.checksum is not None
        if crypto.verify_dss_checksum(mapping.data_seq, mapping.subflow_seq, mapping.length,
                                      payload, mapping.checksum):
            self._insert(mapping.data_seq, payload)
            return
        self.stack._count("DataCsumErr")
        if len(self.subflows) > 1:
            # §3.7: with other subflows, reset this one; the peer reinjects the data.
            sf.rst_reason = TcpRstReason.MIDDLEBOX_INTERFERENCE
            sf.tcp.abort(self._now)
            return
        # §3.7: the only subflow: MP_FAIL, then TCP. The corrupted bytes are delivered as
        # plain TCP through that middlebox would have delivered them.
        sf.pending.append(MpFail(mapping.data_seq))
        sf.tcp.request_ack()
        self._insert(mapping.data_seq, payload)
        self._do_fallback(sf, "checksum")

    def _insert(self, data_seq: int, data: bytes) -> None:
        start = dsn_diff(data_seq, self.rcv_nxt)
        if start < 0:
            if -start >= len(data):
                return  # all of it already received on another subflow
            data = data[-start:]
            data_seq = self.rcv_nxt
            start = 0
        if start == 0:
            self._rcv_buf += data
            self.rcv_nxt = dsn_add(self.rcv_nxt, len(data))
            self.counters.bytes_received += len(data)
            if self._reasm:
                more = self._reasm.pop_ready(self.rcv_nxt & _MASK32)
                if more:
                    self._rcv_buf += more
                    self.rcv_nxt = dsn_add(self.rcv_nxt, len(more))
                    self.counters.bytes_received += len(more)
            self._autotune()
        else:
            self._reasm.insert(data_seq & _MASK32, data, self.rcv_nxt & _MASK32)

    def _advance_receive(self, sf: Subflow) -> None:
        if (self._rcv_fin_seq is not None and not self._fin_received
                and self.rcv_nxt == self._rcv_fin_seq):
            # §3.3.3: the DATA_FIN takes one DSN; acknowledge it on every subflow.
            self._fin_received = True
            self.rcv_nxt = dsn_add(self.rcv_nxt, 1)
            for other in self.subflows:
                other.tcp.request_ack()
            self._maybe_finish()

    def receive_window(self) -> int:
        """§3.3.4: the connection's window, announced on every subflow."""
        free = self._rcv_cap - len(self._rcv_buf) - self._reasm.buffered
        self._adv_window = max(0, free)
        return self._adv_window

    @property
    def receive_buffer_size(self) -> int:
        """The connection-level receive buffer now (auto-tuning grows it)."""
        return self._rcv_cap

    def _autotune(self) -> None:
        """Grow the receive buffer to twice what the connection received in the longest RTT
        among its subflows (Linux's mptcp_rcv_space_adjust): all subflows fill one window,
        and data sent on the fastest path waits for the slowest one's in reassembly, so the
        connection needs the sum of the path rates times the largest RTT; twice that lets
        the senders grow their windows through slow start without the receiver limiting
        them. The buffer never shrinks."""
        if self._rcv_cap >= self.config.receive_buffer_max:
            return
        now = self._now
        if self._rcv_space_seq is None:
            self._rcv_space_start, self._rcv_space_seq = now, self.rcv_nxt
            return
        rtts = [rtt for sf in self.subflows
                if (rtt := sf.tcp.rtt.srtt or sf.tcp.receive_rtt) is not None]
        if not rtts or now - self._rcv_space_start < max(rtts):
            return
        got = dsn_diff(self.rcv_nxt, self._rcv_space_seq)
        if got > self._rcv_space:
            # Linux's arithmetic: twice this RTT's bytes plus 16 segments, and as much again
            # for each doubling since the last measurement (a sender still in slow start).
            mss = max(sf.tcp.eff_mss for sf in self.subflows)
            want = 2 * got + 16 * mss
            want += 2 * (want * (got - self._rcv_space) // self._rcv_space)
            self._rcv_space = got
            want = min(self.config.receive_buffer_max, want)
            if want > self._rcv_cap:
                self._rcv_cap = want
                self.stack._count("MPTCPRcvBufGrow")
        self._rcv_space_start, self._rcv_space_seq = now, self.rcv_nxt

    def dss_for_ack(self, sf: Subflow) -> Dss:
        fin = self._data_fin_seq
        if fin is not None and not self._data_fin_acked and sf.fully_established:
            csum = crypto.dss_checksum(fin, 0, 1, b"") if self.checksum else None
            return Dss(data_ack=self.rcv_nxt, data_ack_64=True, data_fin=True,
                       mapping=DssMapping(fin, 0, 1, csum))
        return Dss(data_ack=self.rcv_nxt, data_ack_64=True)

    # ------------------------------------------------------------------ output

    def before_output(self, now: float) -> None:
        """Called by the stack before it collects segments: schedule data onto subflows,
        signals, timers."""
        self._now = now
        if self.state is MetaState.CLOSED:
            return
        self._check_stale()
        self._check_join_acks(now)
        self._check_meta_rto(now)
        if self.fallback:
            self._push_fallback(now)
        else:
            self._push(now)
            self._send_add_addrs(now)
            self._send_rm_addrs()
        self._maybe_data_fin(now)

    def _push(self, now: float) -> None:
        for sf in self.subflows:
            sf.send_maps.prune(sf.acked, self.snd_una)
        peer_wnd = max((sf.tcp.snd_wnd for sf in self.subflows if sf.usable), default=0)
        while True:
            self._push_copies(now)
            data_seq, length, reinject = self._next_chunk(peer_wnd)
            if length <= 0:
                if not reinject and self._window_blocked(peer_wnd):
                    self.scheduler.on_window_blocked(now)
                    if self.config.opportunistic:
                        self._opportunistic_retransmit(now)
                return
            picked = self._schedule(now, peer_wnd)
            if picked is None:
                return
            sf, copies = picked
            taken = self._map(sf, data_seq, length, now)
            if taken <= 0:
                return
            if reinject:
                d, n = self._reinject[0]
                if n - taken > 0:
                    self._reinject[0] = (dsn_add(d, taken), n - taken)
                else:
                    self._reinject.pop(0)
            else:
                self.snd_nxt = dsn_add(self.snd_nxt, taken)
                for other in copies:
                    _queue_range(other.copy_queue, data_seq, taken)

    def _map(self, sf: Subflow, data_seq: int, length: int, now: float) -> int:
        """Give sf up to one segment of the data from data_seq, with its mapping; the
        bytes it took."""
        size = min(length, sf.payload_size())
        offset = dsn_diff(data_seq, self.snd_una)
        if offset < 0:
            return 0
        payload = bytes(self._snd_buf[offset:offset + size])
        if len(payload) < size or size <= 0:
            return 0
        taken = sf.tcp.send(payload, now)
        if taken <= 0:
            return 0
        payload = payload[:taken]
        csum = None
        if self.checksum:
            csum = crypto.dss_checksum(data_seq, sf.send_maps.next_subflow_seq, taken,
                                       payload)
        sf.send_maps.add(data_seq, taken, csum)
        self.counters.bytes_sent += taken
        return taken

    def _push_copies(self, now: float) -> None:
        """Copies the scheduler asked for (redundant): each subflow sends its queue, in
        data sequence order, as its window allows; what was data-acked meanwhile is
        skipped."""
        for sf in self.subflows:
            queue = sf.copy_queue
            if not queue:
                continue
            if not sf.usable:
                if sf.failed or sf.stale:
                    queue.clear()
                continue
            while queue:
                d, n = queue[0]
                skip = max(0, dsn_diff(self.snd_una, d))
                if skip >= n:
                    queue.pop(0)
                    continue
                d, n = dsn_add(d, skip), n - skip
                if self._space(sf) <= 0:
                    queue[0] = (d, n)
                    break
                taken = self._map(sf, d, n, now)
                if taken <= 0:
                    queue[0] = (d, n)
                    break
                self.counters.bytes_redundant += taken
                if n - taken > 0:
                    queue[0] = (dsn_add(d, taken), n - taken)
                else:
                    queue.pop(0)

    def _next_chunk(self, peer_wnd: int) -> tuple[int, int, bool]:
        while self._reinject:
            d, n = self._reinject[0]
            skip = max(0, dsn_diff(self.snd_una, d))
            if skip >= n:
                self._reinject.pop(0)
                continue
            if skip:
                d, n = dsn_add(d, skip), n - skip
                self._reinject[0] = (d, n)
            return d, n, True
        unsent = len(self._snd_buf) - dsn_diff(self.snd_nxt, self.snd_una)
        window = peer_wnd - dsn_diff(self.snd_nxt, self.snd_una)
        return self.snd_nxt, min(unsent, window), False

    def _window_blocked(self, peer_wnd: int) -> bool:
        """Data waits for the peer's connection-level window while a subflow has room."""
        in_flight = dsn_diff(self.snd_nxt, self.snd_una)
        unsent = len(self._snd_buf) - in_flight
        return (unsent > 0 and in_flight > 0 and peer_wnd - in_flight <= 0
                and any(sf.usable and self._space(sf) > 0 for sf in self.subflows))

    def _space(self, sf: Subflow) -> int:
        # The subflow's own sending rule (RFC 6675 pipe), not its mapped-and-unacked bytes:
        # those include what the peer SACKed, and counting them starves the subflow
        # through loss recovery, then lets a window-sized burst out when recovery ends.
        return max(0, min(sf.tcp.cwnd_room, sf.tcp.writable_space))

    def _candidates(self) -> tuple[dict[int, Subflow], list[SubflowCandidate]]:
        by_id: dict[int, Subflow] = {}
        candidates: list[SubflowCandidate] = []
        for sf in self.subflows:
            if not sf.usable:
                continue
            by_id[sf.subflow_id] = sf
            candidates.append(SubflowCandidate(
                sf.subflow_id, sf.tcp.rtt.srtt, self._space(sf), sf.backup or sf.peer_backup,
                cwnd=sf.tcp.cc.cwnd, in_flight=sf.send_maps.outstanding(sf.acked),
                mss=sf.payload_size(), rttvar=sf.tcp.rtt.rttvar))
        return by_id, candidates

    def _schedule(self, now: float, peer_wnd: int) -> tuple[Subflow, list[Subflow]] | None:
        by_id, candidates = self._candidates()
        in_flight = dsn_diff(self.snd_nxt, self.snd_una)
        context = SchedulerContext(now=now, queued=len(self._snd_buf) - in_flight,
                                   in_flight=in_flight, send_window=peer_wnd)
        choice = self.scheduler.select(candidates, context)
        if choice is None:
            return None
        copies = self.scheduler.copies(choice, candidates, context)
        return by_id[choice.subflow_id], [by_id[c.subflow_id] for c in copies
                                          if c.subflow_id != choice.subflow_id]

    def _opportunistic_retransmit(self, now: float) -> None:
        """Raiciu et al., "How Hard Can It Be? Designing and Implementing a Deployable
        Multipath TCP", NSDI 2012, §4.2: the peer's window is full because the data at its
        left edge (data_una) waits on a slower subflow. The fastest subflow with room that
        does not carry it sends that data again (opportunistic retransmission), segment by
        segment from the left edge while the data is still unacknowledged on another
        subflow and its window allows; each slower subflow holding the left edge is
        penalised, at most once per its RTT, with its controller's multiplicative decrease
        (TcpConnection.reduce_window)."""
        head = self.snd_una
        holders = [sf for sf in self.subflows if sf.usable and _holds(sf, head)]
        if not holders:
            return
        ready = [sf for sf in self.subflows if sf.usable and self._space(sf) > 0
                 and sf.send_maps.carrying(head) is None]
        if not ready:
            return
        sf = min(ready, key=lambda s: (s.tcp.rtt.srtt or 1e9, s.subflow_id))
        pos = head
        while self._space(sf) > 0 and dsn_diff(self.snd_nxt, pos) > 0:
            if sf.send_maps.carrying(pos) is not None or not any(
                    _holds(other, pos) for other in self.subflows if other is not sf):
                break
            taken = self._map(sf, pos, min(dsn_diff(self.snd_nxt, pos),
                                            _held_run(self.subflows, sf, pos)), now)
            if taken <= 0:
                break
            self.counters.bytes_opportunistic += taken
            self.stack._count("MPTCPOpportunisticRetrans")
            pos = dsn_add(pos, taken)
        if pos == head:
            return
        fast_rtt = sf.tcp.rtt.srtt
        for holder in holders:
            rtt = holder.tcp.rtt.srtt
            if fast_rtt is not None and rtt is not None and rtt <= fast_rtt:
                continue  # not the slow one
            if holder.penalised_at is not None and now - holder.penalised_at < (rtt or 0.0):
                continue
            if holder.tcp.reduce_window(now):
                holder.penalised_at = now
                self.stack._count("MPTCPPenalised")

    def _best_subflow(self, avoid_local_id: int | None = None) -> Subflow | None:
        """Where to send a signal: the lowest-RTT subflow that works."""
        subflows = [sf for sf in self.subflows if sf.local_id != avoid_local_id]
        usable = [sf for sf in subflows if sf.usable] or \
            [sf for sf in subflows if sf.tcp.established and not sf.failed]
        if not usable:
            return None
        return min(usable, key=lambda s: (s.tcp.rtt.srtt or 1e9, s.subflow_id))

    def _push_fallback(self, now: float) -> None:
        sf = self.subflows[0] if self.subflows else None
        if sf is None or sf.tcp.state not in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT,
                                              TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
            return
        self._fallback_ack(sf)
        sf.send_maps.prune(sf.acked, self.snd_una)
        unsent = len(self._snd_buf) - dsn_diff(self.snd_nxt, self.snd_una)
        if unsent > 0:
            offset = dsn_diff(self.snd_nxt, self.snd_una)
            taken = sf.tcp.send(bytes(self._snd_buf[offset:]), now)
            if taken > 0:
                sf.send_maps.add(self.snd_nxt, taken)
                self.snd_nxt = dsn_add(self.snd_nxt, taken)
                self.counters.bytes_sent += taken
        if self._close_requested and dsn_diff(self.snd_nxt, self.snd_una) == len(self._snd_buf):
            sf.tcp.close(now)

    def _maybe_data_fin(self, now: float) -> None:
        if self.fallback or not self._close_requested or self._data_fin_acked:
            return
        if self._data_fin_seq is None:
            if self._reinject or dsn_diff(self.snd_nxt, self.snd_una) != len(self._snd_buf):
                return  # data still to map
            if not any(sf.usable for sf in self.subflows):
                return
            self._data_fin_seq = self.snd_nxt
            self._send_data_fin(now)
        elif self._data_fin_at is not None and now >= self._data_fin_at:
            self.counters.data_fin_retransmits += 1
            self._data_fin_backoff += 1
            self._send_data_fin(now)

    def _send_data_fin(self, now: float) -> None:
        for sf in self.subflows:
            if sf.fully_established:
                sf.tcp.request_ack()
        rto = min((sf.tcp.rtt.rto for sf in self.subflows), default=1.0)
        self._data_fin_at = now + min(60.0, rto * (1 << min(self._data_fin_backoff, 6)))

    def _maybe_finish(self) -> None:
        """§3.3.3: with both DATA_FINs done, the subflows close with ordinary FINs."""
        if self.fallback:
            return
        if self._data_fin_acked and self._fin_received and self.state is not \
                MetaState.CLOSED:
            self.state = MetaState.CLOSING
            for sf in list(self.subflows):
                if sf.tcp.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                    sf.tcp.close(self._now)
                elif sf.tcp.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED):
                    sf.tcp.abort(self._now)

    def _check_stale(self) -> None:
        for sf in self.subflows:
            c = sf.tcp.counters
            if sf.acked != sf._acked_mark:
                sf._acked_mark = sf.acked
                sf._rto_mark = c.retrans_rto
                if sf.stale:
                    sf.stale = False
                continue
            if (not sf.stale and sf.send_maps.outstanding(sf.acked) > 0
                    and c.retrans_rto - sf._rto_mark >= self.config.stale_rto_count
                    and len(self.subflows) > 1):
                sf.stale = True
                self.stack._count("MPTCPStale")
                self._reinject_from(sf)

    def _send_add_addrs(self, now: float) -> None:
        if not self._add_addrs or not self.fully_established:
            return
        sf = self._best_subflow()
        if sf is None:
            return
        keep: list[_PendingAddAddr] = []
        for a in self._add_addrs:
            if now >= a.due:
                if a.tries > self.config.add_addr_retries:
                    continue
                a.tries += 1
                a.due = now + self.config.add_addr_timeout_s
                addr = ipaddress.ip_address(a.address)
                mac = crypto.add_addr_hmac(sender_key=self.local_key,
                                           receiver_key=self.remote_key,
                                           address_id=a.address_id, address=addr, port=a.port)
                sf.pending.append(AddAddr(a.address_id, addr, a.port, mac))
                sf.tcp.request_ack()
            keep.append(a)
        self._add_addrs = keep

    def _check_join_acks(self, now: float) -> None:
        """§3.2: the third ACK of a join is repeated until the fourth ACK arrives."""
        for sf in self.subflows:
            if not sf.join_ack_pending:
                sf.join_ack_at = None
            elif sf.join_ack_at is None:
                sf.join_ack_at = now + sf.tcp.rtt.rto
            elif now >= sf.join_ack_at:
                sf.tcp.request_ack()
                sf.join_ack_at = now + sf.tcp.rtt.rto

    def _check_meta_rto(self, now: float) -> None:
        if self.fallback or dsn_diff(self.snd_nxt, self.snd_una) <= 0:
            self._meta_rto_at = None
            return
        if self._meta_rto_at is None:
            rto = max((sf.tcp.rtt.rto for sf in self.subflows), default=1.0)
            self._meta_rto_at = now + min(60.0, 2 * rto * (1 << min(self._meta_rto_backoff, 6)))
            return
        if now < self._meta_rto_at:
            return
        # Nothing data-acked for two subflow RTOs: send the head again on another subflow.
        self._meta_rto_at = None
        self._meta_rto_backoff += 1
        length = min(dsn_diff(self.snd_nxt, self.snd_una), 64 << 10)
        if not any(d == self.snd_una for d, _ in self._reinject):
            self._reinject.insert(0, (self.snd_una, length))
            self.counters.bytes_reinjected += length
            self.stack._count("MPTCPRetrans")

    def next_timer(self) -> float | None:
        times = [t for t in (self._data_fin_at, self._meta_rto_at) if t is not None]
        times += [sf.join_ack_at for sf in self.subflows if sf.join_ack_at is not None]
        times += [a.due for a in self._add_addrs]
        return min(times) if times else None

    def _start_pm(self, now: float) -> None:
        if not self._pm_started and not self.fallback:
            self._pm_started = True
            self.pm.on_fully_established(self, now)

    def _enter_closed(self, error: str | None) -> None:
        if self.state is MetaState.CLOSED:
            return
        if self.state is not MetaState.CONNECTING:
            self._was_established = True
        self.state = MetaState.CLOSED
        if error is not None and self.error is None:
            self.error = error
        self._data_fin_at = None
        self._meta_rto_at = None
        self._add_addrs = []
        self.stack._meta_closed(self)

    def __repr__(self) -> str:
        role = "client" if self.is_client else "server"
        return (f"<MptcpConnection {role} {self.state.value} subflows={len(self.subflows)} "
                f"fallback={self.fallback} una={self.snd_una} nxt={self.snd_nxt} "
                f"rcv_nxt={self.rcv_nxt}>")

