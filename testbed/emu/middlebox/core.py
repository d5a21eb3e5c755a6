"""What a middlebox does to TCP, as functions of segments (no I/O): the behaviours measured on
the Internet by Honda et al., "Is it still possible to extend TCP?" (IMC 2011), which shaped
MPTCP's design (Raiciu et al., NSDI 2012, §3; RFC 8684 §3.7), and the cases Hesmans et al.
tested against MPTCP (HotMiddlebox 2013).

A `Middlebox` sits on one link between side `a` and side `b` and passes every frame on; TCP
segments go through its transforms first. Each transform is registered by name and takes
its parameters from a spec string, `name` or `name:key=value,key=value`:

- `strip-mp-capable`: MP_CAPABLE removed from SYNs (the common case: unknown options stripped
  from the handshake). MPTCP must fall back to TCP (§3.1).
- `strip-mp-join`: MP_JOIN removed from SYNs: the join must fail, the connection go on.
- `strip-dss`: DSS removed from segments that carry data, after the handshake (a box that
  lets the handshake through but rewrites data segments): fall back or drop the subflow (§3.7).
- `strip-mptcp`: every MPTCP option removed from every segment.
- `seq-rewrite`: each direction's sequence numbers shifted by a random offset per flow (ISN
  randomisation by firewalls), acknowledgements and SACK blocks shifted back. Harmless to
  MPTCP: subflow sequence numbers in DSS mappings are relative to the ISN each end sees.
- `payload-change:nth=N`: the Nth data segment of each flow gets one byte changed (an
  application-level gateway rewriting content, length kept). Only DSS checksums (§3.3.1)
  detect it.
- `split:size=N`: data segments longer than N bytes are split into segments of at most N
  (resegmentation), each with the original options (a DSS mapping then covers several).
- `coalesce:size=N,hold_ms=T`: consecutive data segments of a flow are merged into one of up
  to N payload bytes, which keeps the first segment's options (a proxy or normaliser that
  rebuilds the stream: the DSS of every segment after the first is lost, so the merged
  segment carries bytes outside the mapping it carries, RFC 8684 §3.3.1). A data segment
  shorter than N waits up to T ms for the next one; the box's process flushes it after that.
- `nat:public=ADDR`: side a's TCP flows leave with source address ADDR and another source
  port (a NAPT, as a home router does); replies are translated back, and the box answers ARP
  for ADDR on side b with the MAC of the host it hides. MPTCP is built to pass NATs: joins
  are matched by token, not by address (RFC 8684 §3.2).

Stripped options are removed, not overwritten with NOPs, and checksums are recomputed, as a
box that rebuilds the header does. Which direction a transform touches is a parameter
(`dir=a2b|b2a|both`, default both).
"""

from __future__ import annotations

import ipaddress
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

from testbed.errors import ParameterError
from testbed.stack.registry import Registry
from testbed.stack.wire.arp import ARP_REPLY, ArpPacket, emit_arp, parse_arp
from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.ethernet import ETHERNET_HEADER_LEN, EthernetFrame, emit_ethernet
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import (
    ACK,
    OPT_MPTCP,
    PSH,
    SYN,
    SackOption,
    TcpOption,
    TcpSegment,
    UnknownOption,
    emit_tcp,
    parse_tcp,
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
DIRECTIONS = ("a2b", "b2a")
Flow = tuple[bytes, int, bytes, int]  # (src addr, src port, dst addr, dst port)

# MPTCP option subtypes (RFC 8684 §7.2), the high nibble of the option body's first byte.
MP_CAPABLE, MP_JOIN, DSS = 0x0, 0x1, 0x2


def mptcp_subtype(option: TcpOption) -> int | None:
    if isinstance(option, UnknownOption) and option.kind == OPT_MPTCP and option.data:
        return option.data[0] >> 4
    return None


@dataclass(frozen=True)
class Packet:
    """A TCP segment as the middlebox sees it: addresses, segment, direction."""

    src: bytes
    dst: bytes
    seg: TcpSegment
    direction: str  # "a2b" or "b2a"
    src_mac: bytes = b""  # the frame's Ethernet source
    # The frame's Ethernet header and IP packet it came in, for a packet the box emits later
    # than the frame that brought it (coalesce holds segments).
    eth: bytes = field(default=b"", compare=False)
    ip: Ipv4Packet | None = field(default=None, compare=False)

    @property
    def flow(self) -> Flow:
        return (self.src, self.seg.src_port, self.dst, self.seg.dst_port)


class Transform(ABC):
    name: ClassVar[str]
    string_params: ClassVar[frozenset[str]] = frozenset({"direction"})
    # A transform that must see the other direction too (to undo what it did there) gets
    # every packet and applies its direction filter itself.
    sees_both_directions: ClassVar[bool] = False

    def __init__(self, direction: str = "both") -> None:
        if direction not in ("both", *DIRECTIONS):
            raise ParameterError(f"{self.name}: dir must be both, a2b or b2a, got {direction!r}")
        self.directions = DIRECTIONS if direction == "both" else (direction,)
        self.changed = 0  # segments this transform altered

    def __call__(self, packet: Packet) -> list[Packet]:
        if packet.direction not in self.directions and not self.sees_both_directions:
            return [packet]
        out = self.apply(packet)
        if out != [packet]:
            self.changed += 1
        return out

    @abstractmethod
    def apply(self, packet: Packet) -> list[Packet]:
        """What leaves the box for this packet (usually one packet, possibly altered)."""

    # Transforms that hold packets back (coalesce) release them through these.
    hold_s: float = 0.0

    @property
    def holding(self) -> bool:
        return False

    def flush(self) -> list[Packet]:
        """The packets held back, released now (in the order they were held)."""
        return []

    def answer_arp(self, direction: str, arp: ArpPacket) -> ArpPacket | None:
        """A reply the box itself sends back for this request, or None to pass it on."""
        return None


class _StripMptcp(Transform):
    subtypes: ClassVar[frozenset[int] | None]  # None: every MPTCP option
    syn_only: ClassVar[bool]
    data_only: ClassVar[bool] = False

    def apply(self, packet: Packet) -> list[Packet]:
        seg = packet.seg
        if self.syn_only and not seg.has(SYN):
            return [packet]
        if self.data_only and (seg.has(SYN) or not seg.payload):
            return [packet]
        kept = tuple(o for o in seg.options if not self._strips(o))
        if len(kept) == len(seg.options):
            return [packet]
        return [replace(packet, seg=_with(seg, options=kept))]

    def _strips(self, option: TcpOption) -> bool:
        subtype = mptcp_subtype(option)
        return subtype is not None and (self.subtypes is None or subtype in self.subtypes)


class StripMpCapable(_StripMptcp):
    name = "strip-mp-capable"
    subtypes = frozenset({MP_CAPABLE})
    syn_only = True


class StripMpJoin(_StripMptcp):
    name = "strip-mp-join"
    subtypes = frozenset({MP_JOIN})
    syn_only = True


class StripDss(_StripMptcp):
    name = "strip-dss"
    subtypes = frozenset({DSS})
    syn_only = False
    data_only = True


class StripMptcp(_StripMptcp):
    name = "strip-mptcp"
    subtypes = None
    syn_only = False


class SeqRewrite(Transform):
    """Per flow and direction, seq + offset on the way through, ack - offset on the way
    back (and SACK edges), like a firewall randomising ISNs."""

    name = "seq-rewrite"
    sees_both_directions = True

    def __init__(self, direction: str = "both", seed: int = 1) -> None:
        super().__init__(direction)
        self._rng = random.Random(seed)
        self._offsets: dict[Flow, int] = {}

    def _offset(self, flow: Flow) -> int:
        if flow not in self._offsets:
            self._offsets[flow] = self._rng.randrange(1, 1 << 32)
        return self._offsets[flow]

    def apply(self, packet: Packet) -> list[Packet]:
        seg = packet.seg
        seq, ack, options = seg.seq, seg.ack, seg.options
        if packet.direction in self.directions:
            seq = (seq + self._offset(packet.flow)) & 0xFFFFFFFF
        src, sport, dst, dport = packet.flow
        reverse = (dst, dport, src, sport)
        back = _direction_of_reverse(packet.direction)
        if back in self.directions and reverse in self._offsets and seg.has(ACK):
            shift = self._offsets[reverse]
            ack = (ack - shift) & 0xFFFFFFFF
            options = tuple(_shift_sack(o, -shift) for o in options)
        if (seq, ack, options) == (seg.seq, seg.ack, seg.options):
            return [packet]
        return [replace(packet, seg=_with(seg, seq=seq, ack=ack, options=options))]


class PayloadChange(Transform):
    """One byte of the `nth` data segment of each flow is changed (inverted)."""

    name = "payload-change"

    def __init__(self, direction: str = "both", nth: int = 50) -> None:
        super().__init__(direction)
        if nth < 1:
            raise ParameterError(f"payload-change: nth must be >= 1, got {nth}")
        self.nth = nth
        self._seen: dict[Flow, int] = {}

    def apply(self, packet: Packet) -> list[Packet]:
        seg = packet.seg
        if not seg.payload or seg.has(SYN):
            return [packet]
        count = self._seen.get(packet.flow, 0) + 1
        self._seen[packet.flow] = count
        if count != self.nth:
            return [packet]
        middle = len(seg.payload) // 2
        payload = (seg.payload[:middle] + bytes([seg.payload[middle] ^ 0xFF])
                   + seg.payload[middle + 1:])
        return [replace(packet, seg=_with(seg, payload=payload))]


class Split(Transform):
    name = "split"

    def __init__(self, direction: str = "both", size: int = 500) -> None:
        super().__init__(direction)
        if size < 1:
            raise ParameterError(f"split: size must be >= 1, got {size}")
        self.size = size

    def apply(self, packet: Packet) -> list[Packet]:
        seg = packet.seg
        if len(seg.payload) <= self.size or seg.has(SYN):
            return [packet]
        pieces = []
        for start in range(0, len(seg.payload), self.size):
            last = start + self.size >= len(seg.payload)
            # FIN (and PSH) belong to the last byte: only the last piece keeps them.
            flags = seg.flags if last else seg.flags & ~0x09
            pieces.append(replace(packet, seg=_with(
                seg, seq=(seg.seq + start) & 0xFFFFFFFF, flags=flags,
                payload=seg.payload[start:start + self.size])))
        return pieces


# Payload a merged segment may carry: a 1500-byte MTU less 20 bytes of IPv4 and 60 of TCP
# header with the most options it can have.
COALESCE_MAX = 1420


class Coalesce(Transform):
    """Per flow, one data segment (ACK and PSH only) is held while the next ones are
    contiguous and fit: they are appended to it. The merged segment keeps the held one's
    header and options (its DSS, timestamps) with the newest acknowledgement and window."""

    name = "coalesce"

    def __init__(self, direction: str = "both", size: int = 1400, hold_ms: int = 5) -> None:
        super().__init__(direction)
        if not 1 <= size <= COALESCE_MAX:
            raise ParameterError(f"coalesce: size must be within 1..{COALESCE_MAX} (a merged "
                                 f"segment must fit a 1500-byte MTU), got {size}")
        if hold_ms < 1:
            raise ParameterError(f"coalesce: hold_ms must be >= 1, got {hold_ms}")
        self.size = size
        self.hold_s = hold_ms / 1000
        self._held: dict[Flow, Packet] = {}

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def __call__(self, packet: Packet) -> list[Packet]:
        # Counted here: `changed` is the number of segments merged into an earlier one.
        if packet.direction not in self.directions:
            return [packet]
        return self.apply(packet)

    def apply(self, packet: Packet) -> list[Packet]:
        seg = packet.seg
        held = self._held.pop(packet.flow, None)
        plain = bool(seg.payload) and seg.flags & ~(ACK | PSH) == 0
        if held is not None and plain and len(held.seg.payload) + len(seg.payload) <= self.size \
                and (held.seg.seq + len(held.seg.payload)) & 0xFFFFFFFF == seg.seq:
            self.changed += 1
            merged = replace(held, seg=_with(
                held.seg, ack=seg.ack, window=seg.window, flags=held.seg.flags | seg.flags,
                payload=held.seg.payload + seg.payload))
            if len(merged.seg.payload) < self.size:
                self._held[packet.flow] = merged
                return []
            return [merged]
        out = [] if held is None else [held]
        if plain and len(seg.payload) < self.size:
            self._held[packet.flow] = packet
            return out
        return [*out, packet]

    def flush(self) -> list[Packet]:
        out, self._held = list(self._held.values()), {}
        return out


class Nat(Transform):
    """Source NAT with port translation of side a's TCP flows (flows are opened from a)."""

    name = "nat"
    string_params = frozenset({"direction", "public"})

    def __init__(self, public: str = "", first_port: int = 20000) -> None:
        super().__init__("both")
        try:
            self.public = ipaddress.IPv4Address(public).packed
        except ValueError:
            raise ParameterError(f"nat: public must be an IPv4 address, got {public!r}") \
                from None
        if not 1024 <= first_port <= 65535:
            raise ParameterError(f"nat: first_port must be within 1024..65535, got {first_port}")
        self._next_port = first_port
        self._out: dict[tuple[bytes, int], int] = {}  # (private addr, port) -> public port
        self._in: dict[int, tuple[bytes, int]] = {}
        self._hidden_mac = b""

    def apply(self, packet: Packet) -> list[Packet]:
        seg = packet.seg
        if packet.direction == "a2b":
            key = (packet.src, seg.src_port)
            if key not in self._out:
                if not seg.has(SYN) or seg.has(ACK):
                    return [packet]  # not a flow this NAT saw open: not ours to translate
                self._out[key] = self._next_port
                self._in[self._next_port] = key
                self._next_port = 1024 + (self._next_port - 1023) % (65536 - 1024)
            self._hidden_mac = packet.src_mac or self._hidden_mac
            return [replace(packet, src=self.public, seg=_with(seg, src_port=self._out[key]))]
        if packet.dst != self.public or seg.dst_port not in self._in:
            return [packet]
        addr, port = self._in[seg.dst_port]
        return [replace(packet, dst=addr, seg=_with(seg, dst_port=port))]

    def answer_arp(self, direction: str, arp: ArpPacket) -> ArpPacket | None:
        if direction != "b2a" or not arp.is_request or arp.target_ip != self.public \
                or not self._hidden_mac:
            return None
        return ArpPacket(ARP_REPLY, self._hidden_mac, self.public, arp.sender_mac,
                         arp.sender_ip)


def _direction_of_reverse(direction: str) -> str:
    return "b2a" if direction == "a2b" else "a2b"


def _shift_sack(option: TcpOption, shift: int) -> TcpOption:
    if not isinstance(option, SackOption):
        return option
    return SackOption(tuple(((left + shift) & 0xFFFFFFFF, (right + shift) & 0xFFFFFFFF)
                            for left, right in option.blocks))


def _with(seg: TcpSegment, **changes: object) -> TcpSegment:
    fields = dict(src_port=seg.src_port, dst_port=seg.dst_port, seq=seg.seq, ack=seg.ack,
                  flags=seg.flags, window=seg.window, options=seg.options,
                  payload=seg.payload, urgent=seg.urgent)
    fields.update(changes)
    return TcpSegment(**fields)  # type: ignore[arg-type]


_TRANSFORMS: Registry[Callable[..., Transform]] = Registry("middlebox transform")
for _cls in (StripMpCapable, StripMpJoin, StripDss, StripMptcp, SeqRewrite, PayloadChange,
             Split, Coalesce, Nat):
    _TRANSFORMS.register(_cls.name, _cls)
available_transforms = _TRANSFORMS.names


def parse_transform(spec: str) -> Transform:
    """`name` or `name:key=value,...` (values are integers except `dir` and a transform's
    named string parameters); ParameterError, naming what exists, for anything else."""
    name, _, args = spec.partition(":")
    factory = _TRANSFORMS.get(name.strip())
    strings: frozenset[str] = getattr(factory, "string_params", frozenset())
    kwargs: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in args.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ParameterError(f"middlebox transform {spec!r}: {item!r} is not key=value")
        key = "direction" if key == "dir" else key
        try:
            kwargs[key] = value if key in strings else int(value)
        except ValueError:
            raise ParameterError(f"middlebox transform {spec!r}: {key} must be an integer, "
                                 f"got {value!r}") from None
    try:
        return factory(**kwargs)
    except TypeError:
        raise ParameterError(f"middlebox transform {spec!r}: unknown parameter in "
                             f"{sorted(kwargs)}") from None


@dataclass
class Middlebox:
    """Frames in, frames out: transforms applied in order to every well-formed TCP segment;
    everything else (ARP, other protocols, fragments, segments that do not parse) passes
    unchanged and is counted."""

    transforms: list[Transform]
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("frames_a2b", "frames_b2a", "tcp_segments", "passed_unparsed", "frames_out",
         "arp_answered"), 0))
    # Frames the box itself sends back out of the side a frame came from (ARP replies).
    back: list[bytes] = field(default_factory=list)

    @classmethod
    def from_specs(cls, specs: list[str]) -> Middlebox:
        return cls([parse_transform(spec) for spec in specs])

    def process(self, direction: str, frame: bytes) -> list[bytes]:
        self.counters[f"frames_{direction}"] += 1
        out = self._process(direction, frame)
        self.counters["frames_out"] += len(out)
        return out

    def take_back(self) -> list[bytes]:
        out, self.back = self.back, []
        return out

    @property
    def hold_s(self) -> float | None:
        """How long a transform may hold a packet back before `flush`; None: none is held."""
        held = [t.hold_s for t in self.transforms if t.holding]
        return min(held) if held else None

    def flush(self) -> list[tuple[str, bytes]]:
        """(direction, frame) of every packet held back, through the transforms after the
        one that held it."""
        out = []
        for index, transform in enumerate(self.transforms):
            packets = transform.flush()
            for later in self.transforms[index + 1:]:
                packets = [p for packet in packets for p in later(packet)]
            out += [(p.direction, self._emit(p)) for p in packets]
        self.counters["frames_out"] += len(out)
        return out

    def _process(self, direction: str, frame: bytes) -> list[bytes]:
        if len(frame) < ETHERNET_HEADER_LEN:
            return [frame]
        ethertype = int.from_bytes(frame[12:14], "big")
        if ethertype == ETHERTYPE_ARP:
            return self._arp(direction, frame)
        if ethertype != ETHERTYPE_IPV4:
            return [frame]
        try:
            ip = parse_ipv4(frame[ETHERNET_HEADER_LEN:])
            if ip.protocol != PROTO_TCP or ip.is_fragment:
                return [frame]
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
        except ParseError:
            self.counters["passed_unparsed"] += 1
            return [frame]
        self.counters["tcp_segments"] += 1
        packets = [Packet(ip.src, ip.dst, seg, direction, frame[6:12],
                          eth=frame[:ETHERNET_HEADER_LEN], ip=ip)]
        for transform in self.transforms:
            packets = [out for packet in packets for out in transform(packet)]
        if len(packets) == 1 and packets[0].seg is seg and \
                (packets[0].src, packets[0].dst) == (ip.src, ip.dst):
            return [frame]
        return [self._emit(p) for p in packets]

    @staticmethod
    def _emit(packet: Packet) -> bytes:
        """The frame of a packet, in the Ethernet header and IP packet it arrived in."""
        assert packet.ip is not None
        return packet.eth + emit_ipv4(replace(packet.ip, src=packet.src, dst=packet.dst,
                                              payload=emit_tcp(packet.seg, packet.src,
                                                               packet.dst)))

    def _arp(self, direction: str, frame: bytes) -> list[bytes]:
        try:
            arp = parse_arp(frame[ETHERNET_HEADER_LEN:])
        except ParseError:
            self.counters["passed_unparsed"] += 1
            return [frame]
        for transform in self.transforms:
            reply = transform.answer_arp(direction, arp)
            if reply is not None:
                self.counters["arp_answered"] += 1
                self.back.append(emit_ethernet(EthernetFrame(
                    arp.sender_mac, reply.sender_mac, ETHERTYPE_ARP, emit_arp(reply))))
                return []
        return [frame]

    def stats(self) -> dict[str, object]:
        return {"counters": dict(self.counters),
                "transforms": {t.name: {"changed": t.changed} for t in self.transforms}}
