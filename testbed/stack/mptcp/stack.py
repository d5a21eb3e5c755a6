"""A host's MPTCP (RFC 8684), sans-I/O: a TcpStack whose connections are subflows (through
its hooks_factory), the token table, MPTCP listeners, and the MIB counters named like the
kernel's MPTcpExt ones. Segments, timers and `now` go through it exactly as through a
TcpStack, so a host adapter drives either the same way.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from dataclasses import dataclass, field

# Imported for its side effect: "lia", "olia" and "balia" join TCP's congestion registry, so
# a connection's subflows can be coupled by name like any other controller.
import testbed.stack.mptcp.coupled  # noqa: F401
from testbed.errors import ParameterError
from testbed.stack.mptcp import crypto
from testbed.stack.mptcp.connection import MptcpConfig, MptcpConnection, Subflow
from testbed.stack.mptcp.options import (
    MpCapable,
    MpJoinSyn,
    MpJoinSynAck,
    MptcpOption,
    MpTcpRst,
    TcpRstReason,
    mptcp_options,
)
from testbed.stack.mptcp.pm import LocalEndpoint
from testbed.stack.tcp import seq as sq
from testbed.stack.tcp.connection import TcpConfig, TcpConnection
from testbed.stack.tcp.stack import ANY_ADDR, Listener, TcpStack
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.tcp import ACK, RST, SYN, TcpSegment


@dataclass
class MptcpListener:
    """A passive open; accept() gives MptcpConnections, MPTCP or fallen back to TCP."""

    addr: bytes
    port: int
    config: MptcpConfig
    _ready: deque[MptcpConnection] = field(default_factory=deque)
    closed: bool = False

    def accept(self) -> MptcpConnection | None:
        while self._ready:
            conn = self._ready.popleft()
            if not conn.closed or conn.readable:
                return conn
        return None

    @property
    def pending(self) -> int:
        return len(self._ready)

    def close(self) -> None:
        self.closed = True


@dataclass
class _Attach:
    """What the hooks factory gives the subflow TCP is creating right now."""

    meta: MptcpConnection
    initial: bool
    local_id: int = 0
    backup: bool = False


class MptcpStack:
    def __init__(self, *, rng: random.Random, config: MptcpConfig | None = None,
                 tcp_config: TcpConfig | None = None) -> None:
        self.rng = rng
        self.config = config if config is not None else MptcpConfig()
        self.tcp = TcpStack(rng=rng, config=tcp_config, hooks_factory=self._new_subflow)
        self.tokens: crypto.TokenTable[MptcpConnection] = crypto.TokenTable()
        self.counters: dict[str, int] = {}
        self._listeners: dict[int, MptcpListener] = {}
        self._tcp_listeners: dict[int, Listener] = {}
        self._conns: list[MptcpConnection] = []
        self._attach: _Attach | None = None
        self._rsts: list[tuple[bytes, bytes, TcpSegment]] = []
        self._next_subflow_id = 0
        self._now = 0.0
        # The host's MPTCP endpoints by address (`ip mptcp endpoint`), the address ids of
        # every local address a subflow used (endpoints' ids included), and the addresses
        # whose interface is down.
        self.endpoints: dict[bytes, LocalEndpoint] = {}
        self._address_ids: dict[bytes, int] = {}
        self._down: set[bytes] = set()
        self._take_config_endpoints(self.config)

    # ------------------------------------------------------------------ user calls

    def connect(self, local_addr: bytes, remote_addr: bytes, remote_port: int, now: float,
                local_port: int | None = None,
                config: MptcpConfig | None = None) -> MptcpConnection:
        """MP_CAPABLE SYN from local_addr; falls back to TCP if the peer does not answer in
        kind (§3.1)."""
        self._now = now
        if config is not None and config is not self.config:
            self._take_config_endpoints(config)
        meta = MptcpConnection(self, is_client=True, local_addr=local_addr,
                               remote_addr=remote_addr, remote_port=remote_port,
                               config=config or self.config, now=now)
        meta.set_local_key(self.tokens.allocate(self.rng, meta))
        meta.checksum = meta.config.checksum
        self._attach = _Attach(meta, initial=True)
        try:
            self.tcp.connect(local_addr, remote_addr, remote_port, now, local_port,
                             config=self._tcp_config(meta))
        finally:
            self._attach = None
        self._conns.append(meta)
        return meta

    def listen(self, addr: bytes, port: int, backlog: int = 128,
               config: MptcpConfig | None = None) -> MptcpListener:
        """Accept MPTCP (and plain TCP) connections to addr:port, and joins of known
        connections on any local address, so TCP listens on every address."""
        if port in self._listeners and not self._listeners[port].closed:
            raise OSError(f"port {port} is already listening")
        if config is not None and config is not self.config:
            self._take_config_endpoints(config)
        listener = MptcpListener(addr, port, config or self.config)
        self._listeners[port] = listener
        if port not in self._tcp_listeners:
            self._tcp_listeners[port] = self.tcp.listen(ANY_ADDR, port, backlog)
        return listener

    def connections(self) -> list[MptcpConnection]:
        return list(self._conns)

    def subflow_connections(self) -> list[TcpConnection]:
        return self.tcp.connections()

    # ------------------------------------------------------------------ path management

    def _take_config_endpoints(self, config: MptcpConfig) -> None:
        """A config's addresses are endpoints of the host, as `ip mptcp endpoint add` makes
        them: `subflow` (a backup one is a subflow endpoint too), `backup`, `signal`."""
        flags: dict[bytes, set[str]] = {}
        for addr in config.extra_local_addrs:
            flags.setdefault(addr, set()).add("subflow")
        for addr in config.backup_addrs:
            flags.setdefault(addr, set()).update(("subflow", "backup"))
        for addr in config.announce_addrs:
            flags.setdefault(addr, set()).add("signal")
        for addr, wanted in flags.items():
            endpoint = self.endpoints.get(addr)
            if endpoint is None:
                self.endpoints[addr] = LocalEndpoint(self._new_address_id(addr), addr,
                                                     frozenset(wanted))
            else:
                endpoint.flags = endpoint.flags | wanted

    def _new_address_id(self, addr: bytes, wanted: int | None = None) -> int:
        if addr in self._address_ids and wanted in (None, self._address_ids[addr]):
            return self._address_ids[addr]
        used = set(self._address_ids.values())
        if wanted is not None:
            if wanted in used:
                raise ParameterError(f"MPTCP address id {wanted} is already in use")
            address_id = wanted
        else:
            address_id = next((i for i in range(1, 256) if i not in used), 0)
            if not address_id:
                raise ParameterError("all 255 MPTCP address ids are in use")
        self._address_ids[addr] = address_id
        return address_id

    def address_id(self, meta: MptcpConnection, addr: bytes) -> int:
        """The id `addr` goes by on `meta` (§3.2): 0 for the initial subflow's address,
        else its endpoint's, else one of its own for the whole stack."""
        if addr == meta.local_addr:
            return 0
        endpoint = self.endpoints.get(addr)
        return endpoint.address_id if endpoint is not None else self._new_address_id(addr)

    def endpoints_for(self, meta: MptcpConnection) -> list[LocalEndpoint]:
        return sorted(self.endpoints.values(), key=lambda e: e.address_id)

    def address_is_up(self, addr: bytes) -> bool:
        return addr not in self._down

    def _live(self) -> list[MptcpConnection]:
        return [m for m in self._conns if not m.closed and not m.fallback
                and m.fully_established and m._pm_started]

    def add_endpoint(self, addr: bytes, flags: frozenset[str] | set[str], now: float,
                     address_id: int | None = None) -> LocalEndpoint:
        """`ip mptcp endpoint add`: every running connection's path manager learns it."""
        self._now = now
        if addr in self.endpoints:
            raise ParameterError(f"an MPTCP endpoint for {_dotted(addr)} exists already "
                                 f"(id {self.endpoints[addr].address_id})")
        LocalEndpoint(1, addr, frozenset(flags))  # refuses bad flags before an id is taken
        # An explicit id renames the address for new subflows; running ones keep theirs.
        endpoint = LocalEndpoint(self._new_address_id(addr, address_id), addr,
                                 frozenset(flags), up=addr not in self._down)
        self.endpoints[addr] = endpoint
        if endpoint.up:
            for meta in self._live():
                meta.pm.on_endpoint_added(meta, endpoint, now)
        return endpoint

    def find_endpoint(self, addr: bytes | None = None,
                      address_id: int | None = None) -> LocalEndpoint:
        for endpoint in self.endpoints.values():
            if endpoint.addr == addr or (addr is None and endpoint.address_id == address_id):
                return endpoint
        known = ", ".join(f"{e.address_id}={_dotted(e.addr)}" for e in self.endpoints_for_all())
        what = _dotted(addr) if addr is not None else f"id {address_id}"
        raise ParameterError(f"no MPTCP endpoint {what}; endpoints: {known or '(none)'}")

    def endpoints_for_all(self) -> list[LocalEndpoint]:
        return sorted(self.endpoints.values(), key=lambda e: e.address_id)

    def delete_endpoint(self, addr: bytes, now: float) -> LocalEndpoint:
        """`ip mptcp endpoint delete`: the address is withdrawn from every connection
        (REMOVE_ADDR, its subflows closed)."""
        self._now = now
        endpoint = self.find_endpoint(addr)
        for meta in self._live():
            meta.pm.on_local_address_gone(meta, addr, now)
        del self.endpoints[addr]
        return endpoint

    def change_endpoint(self, addr: bytes, backup: bool, now: float) -> LocalEndpoint:
        """`ip mptcp endpoint change ... backup|nobackup`: MP_PRIO on its subflows."""
        self._now = now
        endpoint = self.find_endpoint(addr)
        endpoint.flags = (endpoint.flags | {"backup"}) if backup else \
            (endpoint.flags - {"backup"})
        for meta in self._live():
            meta.pm.on_endpoint_changed(meta, endpoint, now)
        return endpoint

    def address_down(self, addr: bytes, now: float) -> None:
        """The interface of `addr` went down or the address was removed from it."""
        self._now = now
        if addr in self._down:
            return
        self._down.add(addr)
        self._count("MPTCPAddressDown")
        endpoint = self.endpoints.get(addr)
        if endpoint is not None:
            endpoint.up = False
        for meta in self._live():
            if any(sf.tcp.local_addr == addr for sf in meta.subflows) or \
                    addr == meta.local_addr or endpoint is not None:
                meta.pm.on_local_address_gone(meta, addr, now)

    def address_up(self, addr: bytes, now: float) -> None:
        """The interface of `addr` is up again (or the address was added to it)."""
        self._now = now
        if addr not in self._down:
            return
        self._down.discard(addr)
        self._count("MPTCPAddressUp")
        endpoint = self.endpoints.get(addr)
        if endpoint is not None:
            endpoint.up = True
        for meta in self._live():
            if endpoint is not None:
                meta.pm.on_endpoint_added(meta, endpoint, now)
            else:
                meta.pm.on_local_address_up(meta, addr, now)

    # ------------------------------------------------------------------ input

    def receive(self, src_addr: bytes, dst_addr: bytes, seg: TcpSegment, now: float) -> None:
        self._now = now
        for meta in self._conns:
            meta._now = now
        if (seg.has(SYN) and not seg.has(ACK) and not seg.has(RST)
                and seg.dst_port in self._listeners
                and not self._known(dst_addr, src_addr, seg)
                and not self._screen_syn(src_addr, dst_addr, seg)):
            return
        self.tcp.receive(src_addr, dst_addr, seg, now)

    def _known(self, dst_addr: bytes, src_addr: bytes, seg: TcpSegment) -> bool:
        key = (dst_addr, seg.dst_port, src_addr, seg.src_port)
        return any(c.key == key for c in self.tcp.connections())

    def _screen_syn(self, src_addr: bytes, dst_addr: bytes, seg: TcpSegment) -> bool:
        """A new SYN to an MPTCP listener: joins need a known token (§3.2), other SYNs the
        listener's address. False: answered here with an RST."""
        listener = self._listeners[seg.dst_port]
        try:
            join = next((o for o in mptcp_options(seg.options) if isinstance(o, MpJoinSyn)),
                        None)
        except ParseError:
            self._count("MPTCPOptionErrors")
            join = None
        if join is not None:
            meta = self.tokens.get(join.receiver_token)
            if meta is None or meta.closed or meta.fallback or not meta.fully_established:
                self._count("MPJoinSynRx")
                self._count("MPJoinNoTokenFound")
                self._reset_syn(src_addr, dst_addr, seg, TcpRstReason.MPTCP_SPECIFIC_ERROR)
                return False
            return True
        if listener.closed or listener.addr not in (ANY_ADDR, dst_addr):
            self._reset_syn(src_addr, dst_addr, seg, None)
            return False
        return True

    def _reset_syn(self, src_addr: bytes, dst_addr: bytes, seg: TcpSegment,
                   reason: int | None) -> None:
        # RFC 9293 §3.10.7.1: the answer to a SYN for no connection is RST|ACK.
        opts = () if reason is None else (MpTcpRst(reason).to_tcp_option(),)
        rst = TcpSegment(seg.dst_port, seg.src_port, 0, sq.add(seg.seq, seg.seg_len),
                         RST | ACK, 0, opts)
        self._rsts.append((dst_addr, src_addr, rst))
        if reason is not None:
            self._count("MPRstTx")

    def _new_subflow(self, tcp: TcpConnection) -> Subflow:
        self._next_subflow_id += 1
        sf = Subflow(self, tcp, self._next_subflow_id)
        attach = self._attach
        if attach is not None:
            sf.initial = attach.initial
            sf.join = not attach.initial
            sf.local_id = attach.local_id
            sf.backup = attach.backup
            if sf.join:
                sf.local_nonce = self.rng.getrandbits(32)
            attach.meta.attach(sf)
        return sf

    def _open_join(self, meta: MptcpConnection, local_addr: bytes, remote_addr: bytes,
                   remote_port: int, now: float, *, local_id: int, backup: bool) -> Subflow:
        self._attach = _Attach(meta, initial=False, local_id=local_id, backup=backup)
        try:
            tcp = self.tcp.connect(local_addr, remote_addr, remote_port, now,
                                   config=self._tcp_config(meta))
        finally:
            self._attach = None
        assert isinstance(tcp.hooks, Subflow)
        return tcp.hooks

    def _tcp_config(self, meta: MptcpConnection) -> TcpConfig:
        """What the subflows we open for `meta` run: the stack's TCP with its controller."""
        congestion = meta.config.congestion
        if congestion is None or congestion == self.tcp.config.congestion:
            return self.tcp.config
        return dataclasses.replace(self.tcp.config, congestion=congestion)

    def _on_syn_options(self, sf: Subflow, seg: TcpSegment, opts: list[MptcpOption]) -> None:
        """MP_CAPABLE and MP_JOIN on SYNs (passive subflows) and SYN/ACKs (active ones)."""
        if sf.tcp.passive:
            if seg.has(ACK):
                return
            if sf.meta is not None:
                return  # a retransmitted SYN
            self._passive_syn(sf, seg, opts)
            return
        meta = sf.meta
        if meta is None or not seg.has(ACK):
            return
        if sf.initial:
            cap = next((o for o in opts if isinstance(o, MpCapable)), None)
            if cap is None or cap.sender_key is None or cap.version < 1:
                # §3.1: no MP_CAPABLE in the SYN/ACK: plain TCP for the whole connection.
                self._count("MPCapableFallbackSYNACK")
                meta.fallback = True
                sf.infinite = (1, meta.rcv_nxt)
                return
            self._count("MPCapableSYNACKRX")
            meta.set_remote_key(cap.sender_key)
            meta.checksum = meta.checksum or cap.checksum_required
            meta.fully_established = True
            return
        ack = next((o for o in opts if isinstance(o, MpJoinSynAck)), None)
        if ack is None:
            sf.hmac_ok = False
            return
        self._count("MPJoinSynAckRx")
        want = crypto.join_syn_ack_hmac(key_a=meta.local_key, key_b=meta.remote_key,
                                        nonce_a=sf.local_nonce, nonce_b=ack.sender_nonce)
        sf.remote_nonce = ack.sender_nonce
        sf.remote_id = ack.address_id
        sf.peer_backup = ack.backup
        if ack.sender_truncated_hmac != want:
            self._count("MPJoinSynAckHMacFailure")
            sf.hmac_ok = False

    def _passive_syn(self, sf: Subflow, seg: TcpSegment, opts: list[MptcpOption]) -> None:
        listener = self._listeners.get(sf.tcp.local_port)
        config = listener.config if listener is not None else self.config
        join = next((o for o in opts if isinstance(o, MpJoinSyn)), None)
        if join is not None:
            meta = self.tokens.get(join.receiver_token)
            self._count("MPJoinSynRx")
            if meta is None:  # screened in receive(); a token that vanished since
                sf.rst_reason = TcpRstReason.MPTCP_SPECIFIC_ERROR
                return
            sf.join = True
            sf.remote_nonce = join.sender_nonce
            sf.remote_id = join.address_id
            sf.peer_backup = join.backup
            sf.local_nonce = self.rng.getrandbits(32)
            sf.local_id = self._local_address_id(meta, sf.tcp.local_addr)
            sf.hmac_ok = False  # until the third ACK proves otherwise
            meta.attach(sf)
            return
        meta = MptcpConnection(self, is_client=False, local_addr=sf.tcp.local_addr,
                               remote_addr=sf.tcp.remote_addr, remote_port=sf.tcp.remote_port,
                               config=config, now=self._now)
        meta.listener = listener
        cap = next((o for o in opts if isinstance(o, MpCapable)), None)
        sf.initial = True
        if cap is None or cap.version < 1:
            meta.fallback = True
            sf.infinite = (1, meta.rcv_nxt)
        else:
            self._count("MPCapableSYNRX")
            meta.set_local_key(self.tokens.allocate(self.rng, meta))
            meta.checksum = config.checksum or cap.checksum_required
        meta.attach(sf)
        self._conns.append(meta)

    def _local_address_id(self, meta: MptcpConnection, addr: bytes) -> int:
        return self.address_id(meta, addr)

    # ------------------------------------------------------------------ events from metas

    def _meta_established(self, meta: MptcpConnection) -> None:
        listener = meta.listener
        if listener is not None and not meta.is_client:
            listener._ready.append(meta)

    def _meta_closed(self, meta: MptcpConnection) -> None:
        if meta.local_token and self.tokens.get(meta.local_token) is meta:
            self.tokens.remove(meta.local_token)

    # ------------------------------------------------------------------ output and time

    def segments_to_send(self, now: float) -> list[tuple[bytes, bytes, TcpSegment]]:
        self._now = now
        for meta in self._conns:
            meta.before_output(now)
        out = self._rsts
        self._rsts = []
        out += self.tcp.segments_to_send(now)
        for meta in self._conns:
            if meta.abort_subflows:
                meta.abort_subflows = False
                for sf in list(meta.subflows):
                    sf.tcp.abort(now)
                out += self.tcp.segments_to_send(now)
        for listener in self._tcp_listeners.values():
            while listener.accept() is not None:
                pass  # subflows reach the application through their MptcpConnection
        self._conns = [m for m in self._conns if not (m.closed and not any(
            not sf.tcp.closed for sf in m.subflows))]
        return out

    def next_timer(self) -> float | None:
        times = [t for t in [self.tcp.next_timer(), *(m.next_timer() for m in self._conns)]
                 if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        for meta in self._conns:
            meta._now = now
        self.tcp.handle_timer(now)

    def input_error(self, checksum: bool = False) -> None:
        self.tcp.input_error(checksum)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def _dotted(addr: bytes) -> str:
    return ".".join(str(b) for b in addr)
