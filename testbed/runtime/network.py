"""The stack's L2/L3 endpoint, sans-I/O: Ethernet frames in, Ethernet frames out. It answers
ARP for its addresses, resolves its neighbours, answers ICMP echo, routes TCP segments to and
from the TCP core, and counts (never raises on) whatever it cannot use.

The daemon feeds it frames and `now`; nothing here reads a clock or touches a descriptor, so
the unit tests drive it with exact frames and exact times.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

from testbed.runtime.neighbours import ArpRequestDue, NeighbourTable
from testbed.runtime.routes import Interface, RouteTable
from testbed.stack.wire.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, emit_arp, parse_arp
from testbed.stack.wire.checksum import fold_checksum, internet_checksum
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetFrame,
    emit_ethernet,
    parse_ethernet,
)
from testbed.stack.wire.icmp import (
    IcmpDestUnreachable,
    IcmpEcho,
    emit_icmp,
    parse_icmp,
)
from testbed.stack.wire.ipv4 import PROTO_ICMP, PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import TcpSegment, emit_tcp_parts, parse_tcp

# The common case on both paths, handled without the intermediate frame and datagram
# objects: Ethernet II carrying IPv4 with a 20-byte header (no options) and TCP inside.
_ETH_IPV4 = b"\x08\x00"
_IPV4_NO_OPTIONS = 0x45
_FAST_HEADER = struct.Struct("!6s6sHBBHHHBBH4s4s")  # Ethernet + IPv4 without options
_FAST_HEADER_LEN = 34
_DF = 0x4000

ZERO_MAC = b"\0" * 6
ZERO_IP = b"\0" * 4
LIMITED_BROADCAST = b"\xff" * 4


class SegmentSink(Protocol):
    """The part of the TCP core (testbed.stack.tcp.stack.TcpStack) this layer drives."""

    def receive(self, src_addr: bytes, dst_addr: bytes, seg: TcpSegment, now: float) -> None: ...

    def segments_to_send(self, now: float) -> list[tuple[bytes, bytes, TcpSegment]]: ...


# A tap on every frame the stack sends or receives (the pcap writer): (frame, now).
FrameTap = Callable[[bytes, float], None]


class NetworkLayer:
    """Ethernet, ARP, IPv4 and ICMP for a set of interfaces, with TCP above."""

    def __init__(self, interfaces: list[Interface], tcp: SegmentSink | None = None,
                 tap: FrameTap | None = None) -> None:
        self.routes = RouteTable(interfaces)
        self.tcp = tcp
        self.tap = tap
        self._ifaces = {iface.name: iface for iface in interfaces}
        self._neighbours = {iface.name: NeighbourTable() for iface in interfaces}
        self._out: deque[tuple[str, bytes]] = deque()
        # Names after the kernel's MIB where one exists (nstat: IpInReceives, IcmpInEchos...),
        # so our numbers line up with a Linux peer's.
        self.counters: dict[str, int] = dict.fromkeys((
            "FramesIn", "FramesOut", "FramesNotForUs", "FramesBadEthertype", "ParseErrors",
            "ArpIn", "ArpRepliesSent", "IpInReceives", "IpInAddrErrors", "IpInUnknownProtos",
            "IpReasmFails", "IpOutRequests", "IpOutNoRoutes", "IcmpInEchos", "IcmpOutEchoReps",
            "IcmpInDestUnreachs", "IcmpInOther", "TcpInSegs", "TcpOutSegs",
        ), 0)

    def add_interface(self, iface: Interface) -> None:
        """An address adopted at run time: on a new interface, or replacing the one an
        interface had (one address per interface, as the testbed's hosts have)."""
        self._ifaces[iface.name] = iface
        self._neighbours.setdefault(iface.name, NeighbourTable())
        self.routes = RouteTable([i for i in self.routes.interfaces if i.name != iface.name]
                                 + [iface], self.routes.down)

    def set_link(self, name: str, up: bool) -> None:
        """The link of `name` went down or came back: routes avoid it while it is down."""
        self.routes.set_down(name, not up)

    # -- input ------------------------------------------------------------------------------

    def receive_frame(self, iface_name: str, frame: bytes, now: float) -> None:
        """Handle one frame that arrived on `iface_name`; malformed input is counted."""
        iface = self._ifaces[iface_name]
        self.counters["FramesIn"] += 1
        if self.tap is not None:
            self.tap(frame, now)
        if (frame[12:14] == _ETH_IPV4 and len(frame) >= _FAST_HEADER_LEN
                and frame[14] == _IPV4_NO_OPTIONS and frame[23] == PROTO_TCP
                and frame[:6] == iface.mac):
            self._receive_tcp_fast(iface, frame, now)
            return
        try:
            eth = parse_ethernet(frame)
            # The interface is not promiscuous in spirit: the bridge or the kernel may still
            # hand us frames for other stations (flooding before learning).
            if eth.dst != iface.mac and eth.dst != BROADCAST_MAC:
                self.counters["FramesNotForUs"] += 1
                return
            if eth.ethertype == ETHERTYPE_ARP:
                self._receive_arp(iface, parse_arp(eth.payload), now)
            elif eth.ethertype == ETHERTYPE_IPV4:
                self._receive_ipv4(iface, eth, now)
            else:
                self.counters["FramesBadEthertype"] += 1
        except ParseError:
            self.counters["ParseErrors"] += 1

    def _receive_arp(self, iface: Interface, arp: ArpPacket, now: float) -> None:
        self.counters["ArpIn"] += 1
        table = self._neighbours[iface.name]
        for_us = arp.target_ip == iface.ip
        # RFC 826 "Packet reception": merge the sender into an existing entry; if the packet
        # is for us, add it. (A gratuitous ARP updates but never creates.)
        if arp.sender_ip != ZERO_IP:
            waiting = (table.learn if for_us else table.update_if_known)(
                arp.sender_ip, arp.sender_mac, now)
            for packet in waiting:
                self._emit(iface, arp.sender_mac, ETHERTYPE_IPV4, packet, now)
        if for_us and arp.op == ARP_REQUEST:
            reply = ArpPacket(ARP_REPLY, iface.mac, iface.ip, arp.sender_mac, arp.sender_ip)
            self._emit(iface, arp.sender_mac, ETHERTYPE_ARP, emit_arp(reply), now)
            self.counters["ArpRepliesSent"] += 1

    def _receive_ipv4(self, iface: Interface, eth: EthernetFrame, now: float) -> None:
        packet = parse_ipv4(eth.payload)
        self.counters["IpInReceives"] += 1
        if not self.routes.is_local(packet.dst):
            # We are a host, not a router (RFC 1122 §3.3.4.2 "silently discard").
            self.counters["IpInAddrErrors"] += 1
            return
        if packet.is_fragment:
            # Our peers send with DF and MSS-sized segments; reassembly is not worth having.
            self.counters["IpReasmFails"] += 1
            return
        if packet.protocol == PROTO_TCP:
            self.counters["TcpInSegs"] += 1
            seg = parse_tcp(packet.payload, packet.src, packet.dst)
            if self.tcp is not None:
                self.tcp.receive(packet.src, packet.dst, seg, now)
        elif packet.protocol == PROTO_ICMP:
            self._receive_icmp(packet, now)
        else:
            self.counters["IpInUnknownProtos"] += 1

    def _receive_tcp_fast(self, iface: Interface, frame: bytes, now: float) -> None:
        """`_receive_ipv4` for an option-less IPv4 header carrying TCP, parsed in place: the
        same checks, counters and outcome, without copying the datagram twice."""
        counters = self.counters
        total_length = (frame[16] << 8) | frame[17]
        if total_length < 20 or 14 + total_length > len(frame) \
                or internet_checksum(memoryview(frame)[14:_FAST_HEADER_LEN]) != 0:
            # Whatever is wrong, the general parser says it (and counts it) the same way.
            try:
                self._receive_ipv4(iface, parse_ethernet(frame), now)
            except ParseError:
                counters["ParseErrors"] += 1
            return
        counters["IpInReceives"] += 1
        dst = frame[30:34]
        if not self.routes.is_local(dst):
            counters["IpInAddrErrors"] += 1
            return
        if (frame[20] & 0x3F) or frame[21]:  # MF or a fragment offset (RFC 791 §2.3)
            counters["IpReasmFails"] += 1
            return
        counters["TcpInSegs"] += 1
        src = frame[26:30]
        try:
            seg = parse_tcp(memoryview(frame)[_FAST_HEADER_LEN:14 + total_length], src, dst)
        except ParseError:
            counters["ParseErrors"] += 1
            return
        if self.tcp is not None:
            self.tcp.receive(src, dst, seg, now)

    def _receive_icmp(self, packet: Ipv4Packet, now: float) -> None:
        message = parse_icmp(packet.payload)
        if isinstance(message, IcmpEcho) and not message.reply:
            self.counters["IcmpInEchos"] += 1
            # RFC 1122 §3.2.2.6: the reply's source is the address the request was sent to.
            reply = Ipv4Packet(src=packet.dst, dst=packet.src, protocol=PROTO_ICMP,
                               payload=emit_icmp(message.make_reply()))
            if self.send_ipv4(reply, now):
                self.counters["IcmpOutEchoReps"] += 1
        elif isinstance(message, IcmpDestUnreachable):
            # Counted only: RFC 5927 advises against acting on these for TCP without checks
            # the core would have to make, and nothing here needs them yet.
            self.counters["IcmpInDestUnreachs"] += 1
        else:
            self.counters["IcmpInOther"] += 1

    # -- output -----------------------------------------------------------------------------

    def flush_tcp(self, now: float, after_input: bool = False) -> int:
        """Move every segment the TCP core has ready onto the wire queue; returns how many.
        `after_input`: only what the connections that just took segments have to send
        (when the core can tell, see TcpStack.segments_after_input)."""
        if self.tcp is None:
            return 0
        collect = getattr(self.tcp, "segments_after_input", None) if after_input else None
        segments = collect(now) if collect is not None else self.tcp.segments_to_send(now)
        counters = self.counters
        lookup = self.routes.lookup
        for src, dst, seg in segments:
            counters["TcpOutSegs"] += 1
            header, payload = emit_tcp_parts(seg, src, dst)
            route = lookup(dst, src)
            mac = None if route is None or dst == LIMITED_BROADCAST else \
                self._neighbours[route.iface.name].lookup(route.next_hop, now)
            if route is None or mac is None:
                # No route, a broadcast, or a neighbour to resolve first: the general path.
                self.send_ipv4(Ipv4Packet(src=src, dst=dst, protocol=PROTO_TCP,
                                          payload=header + payload), now)
                continue
            # What send_ipv4, emit_ipv4 and _emit do, in one frame and one payload copy.
            counters["IpOutRequests"] += 1
            iface = route.iface
            length = 20 + len(header) + len(payload)
            ip_sum = fold_checksum((_IPV4_NO_OPTIONS << 8) + length + _DF + (64 << 8 | PROTO_TCP)
                                   + int.from_bytes(src, "big") + int.from_bytes(dst, "big"))
            frame = b"".join((
                _FAST_HEADER.pack(mac, iface.mac, ETHERTYPE_IPV4, _IPV4_NO_OPTIONS, 0, length,
                                  0, _DF, 64, PROTO_TCP, ip_sum, src, dst),
                header, payload))
            if self.tap is not None:
                self.tap(frame, now)
            self._out.append((iface.name, frame))
            counters["FramesOut"] += 1
        return len(segments)

    def send_ipv4(self, packet: Ipv4Packet, now: float) -> bool:
        """Route `packet` by destination and source address and queue its frame (or park it
        until its next hop resolves). False when there is no route."""
        route = self.routes.lookup(packet.dst, packet.src)
        if route is None:
            self.counters["IpOutNoRoutes"] += 1
            return False
        self.counters["IpOutRequests"] += 1
        data = emit_ipv4(packet)
        if packet.dst == LIMITED_BROADCAST:
            self._emit(route.iface, BROADCAST_MAC, ETHERTYPE_IPV4, data, now)
            return True
        table = self._neighbours[route.iface.name]
        mac = table.lookup(route.next_hop, now)
        if mac is not None:
            self._emit(route.iface, mac, ETHERTYPE_IPV4, data, now)
        else:
            due = table.enqueue(route.next_hop, data, now)
            if due is not None:
                self._arp_request(route.iface, due, now)
        return True

    def poll(self, now: float) -> None:
        """Timers of this layer: ARP retransmissions and give-ups."""
        for name, table in self._neighbours.items():
            for due in table.poll(now):
                self._arp_request(self._ifaces[name], due, now)

    def next_timer(self) -> float | None:
        return min((t for table in self._neighbours.values()
                    if (t := table.next_timer()) is not None), default=None)

    def frames_to_send(self) -> list[tuple[str, bytes]]:
        """(interface name, frame) in order, emptying the queue."""
        frames = list(self._out)
        self._out.clear()
        return frames

    def neighbour_counters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for table in self._neighbours.values():
            for key, value in table.counters.items():
                total[key] = total.get(key, 0) + value
        return total

    def _arp_request(self, iface: Interface, due: ArpRequestDue, now: float) -> None:
        request = ArpPacket(ARP_REQUEST, iface.mac, iface.ip, ZERO_MAC, due.ip)
        self._emit(iface, BROADCAST_MAC, ETHERTYPE_ARP, emit_arp(request), now)

    def _emit(self, iface: Interface, dst_mac: bytes, ethertype: int, payload: bytes,
              now: float) -> None:
        frame = emit_ethernet(EthernetFrame(dst_mac, iface.mac, ethertype, payload))
        if self.tap is not None:
            self.tap(frame, now)
        self._out.append((iface.name, frame))
        self.counters["FramesOut"] += 1
