"""TCP header and options (RFC 9293 §3.1; RFC 7323 window scale and timestamps; RFC 2018
SACK). Unknown options, MPTCP's (kind 30) among them, are kept opaque: the TCP layer does not
interpret them, the layer above (through TCP's hooks) does.

`parse_tcp` and `emit_tcp` are the codec. Emit lays options out in the order given and pads
them to a 32-bit boundary with NOPs at the end (RFC 9293 §3.1, "Padding"); parse drops NOPs
and stops at EOL, so `parse_tcp(emit_tcp(seg))` gives `seg` back for any segment parse can
produce.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from testbed.stack.wire.checksum import BytesLike, fold_checksum, ones_complement_sum
from testbed.stack.wire.errors import ParseError

# Flags (RFC 9293 §3.1, RFC 3168 for ECE/CWR)
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8
OPT_MPTCP = 30


@dataclass(frozen=True)
class MssOption:
    mss: int


@dataclass(frozen=True)
class WindowScaleOption:
    shift: int


@dataclass(frozen=True)
class SackPermittedOption:
    pass


@dataclass(frozen=True)
class SackOption:
    blocks: tuple[tuple[int, int], ...]  # (left edge, right edge) sequence numbers


@dataclass(frozen=True)
class TimestampOption:
    tsval: int
    tsecr: int


@dataclass(frozen=True)
class UnknownOption:
    """Any other option, kept byte for byte (kind 30 is MPTCP: `data` is its body)."""

    kind: int
    data: bytes


TcpOption = (MssOption | WindowScaleOption | SackPermittedOption | SackOption
             | TimestampOption | UnknownOption)


@dataclass(frozen=True, init=False)
class TcpSegment:
    """One TCP segment as the core sees it. `window` is the raw 16-bit header field (the
    connection applies window scaling); sequence numbers are 32-bit unsigned."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: tuple[TcpOption, ...] = ()
    payload: bytes = b""
    urgent: int = 0

    def __init__(self, src_port: int, dst_port: int, seq: int, ack: int, flags: int,
                 window: int, options: tuple[TcpOption, ...] = (), payload: bytes = b"",
                 urgent: int = 0) -> None:
        # Two segments per packet are made on the hot paths: one dict update instead of
        # the frozen dataclass's nine object.__setattr__ calls (the instance stays frozen).
        self.__dict__.update(src_port=src_port, dst_port=dst_port, seq=seq, ack=ack,
                             flags=flags, window=window, options=options, payload=payload,
                             urgent=urgent)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: payload plus one each for SYN and FIN (RFC 9293 §3.4)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def option(self, kind: type) -> TcpOption | None:
        """The first option of a given class, if present."""
        for opt in self.options:
            if isinstance(opt, kind):
                return opt
        return None


@dataclass
class TcpCodecStats:
    """What a receiver counts when it drops bad segments."""

    parse_errors: int = 0
    bad_checksum: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


TCP_HEADER_LEN = 20
TCP_MAX_OPTIONS_LEN = 40  # data offset is 4 bits: at most 15 words of header
_PROTO_TCP = 6
_MOD = 0xFFFF

_HEADER = struct.Struct("!HHIIBBHHH")
_MSS = struct.Struct("!BBH")
_TIMESTAMP = struct.Struct("!BBII")
_TIMESTAMP_BODY = struct.Struct("!II")
_OPTION_SIZES = {OPT_MSS: 4, OPT_WSCALE: 3, OPT_SACK_PERMITTED: 2, OPT_TIMESTAMP: 10}


def parse_tcp(data: BytesLike, src_ip: bytes, dst_ip: bytes,
              verify_checksum: bool = True) -> TcpSegment:
    """Parse a TCP segment carried between `src_ip` and `dst_ip` (4 bytes each).

    ParseError, and nothing else, for: fewer than 20 bytes, a data offset below 5 words or
    beyond the buffer, a checksum that does not verify (RFC 9293 §3.1), or malformed options
    (see `_parse_options`). The reserved header bits are ignored.
    """
    size = len(data)
    if size < TCP_HEADER_LEN:
        raise ParseError(f"TCP segment of {size} bytes is shorter than its header")
    src_port, dst_port, seq, ack, offset_byte, flags, window, _checksum, urgent = (
        _HEADER.unpack_from(data))
    header_len = (offset_byte >> 4) * 4
    if header_len < TCP_HEADER_LEN:
        raise ParseError(f"TCP data offset {header_len >> 2} below 5 words")
    if header_len > size:
        raise ParseError(f"TCP data offset {header_len >> 2} words beyond the {size} bytes")
    if verify_checksum:
        # Pseudo-header (RFC 9293 §3.1) plus the segment; it is never all zero (PTCL is 6), so
        # a correct checksum makes the sum a non-zero multiple of 0xffff.
        total = (int.from_bytes(src_ip, "big") + int.from_bytes(dst_ip, "big") + _PROTO_TCP
                 + size + ones_complement_sum(data))
        if total % _MOD:
            raise ParseError("TCP checksum mismatch")
    options = _parse_options(data, header_len) if header_len > TCP_HEADER_LEN else ()
    return TcpSegment(src_port, dst_port, seq, ack, flags, window, options,
                      bytes(data[header_len:]), urgent)


def _parse_options(data: BytesLike, end: int) -> tuple[TcpOption, ...]:
    """The options between byte 20 and `end`. NOPs are skipped and EOL ends the list (what
    follows it is padding, RFC 9293 §3.1). An option with a length byte below 2, one that
    runs past the header, or a known kind with a length its RFC does not allow (MSS 4,
    window scale 3, SACK-permitted 2, timestamps 10, SACK 2 + 8n with n >= 1) raises
    ParseError: RFC 9293 §3.2 asks implementations to be prepared for illegal lengths, and
    we drop the segment. Unknown kinds, MPTCP's 30 among them, are kept as they are."""
    options: list[TcpOption] = []
    i = TCP_HEADER_LEN
    while i < end:
        kind = data[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise ParseError(f"TCP option {kind} has no room for its length byte")
        length = data[i + 1]
        if length < 2:
            raise ParseError(f"TCP option {kind} with length {length}")
        following = i + length
        if following > end:
            raise ParseError(f"TCP option {kind} of length {length} runs past the header")
        if kind == OPT_TIMESTAMP:
            if length != 10:
                raise ParseError(f"TCP timestamps option of length {length}, not 10")
            tsval, tsecr = _TIMESTAMP_BODY.unpack_from(data, i + 2)
            options.append(TimestampOption(tsval, tsecr))
        elif kind == OPT_SACK:
            count, remainder = divmod(length - 2, 8)
            if remainder or count == 0:
                raise ParseError(f"TCP SACK option of length {length}")
            edges = struct.unpack_from(f"!{2 * count}I", data, i + 2)
            options.append(SackOption(tuple(zip(edges[::2], edges[1::2], strict=True))))
        elif kind in _OPTION_SIZES:
            if length != _OPTION_SIZES[kind]:
                raise ParseError(f"TCP option {kind} of length {length}, "
                                 f"not {_OPTION_SIZES[kind]}")
            if kind == OPT_MSS:
                options.append(MssOption((data[i + 2] << 8) | data[i + 3]))
            elif kind == OPT_WSCALE:
                options.append(WindowScaleOption(data[i + 2]))
            else:
                options.append(SackPermittedOption())
        else:
            options.append(UnknownOption(kind, bytes(data[i + 2:following])))
        i = following
    return tuple(options)


def encode_tcp_options(options: tuple[TcpOption, ...]) -> bytes:
    """The options area: each option in order, then NOPs up to a multiple of 4 bytes.

    ValueError (a caller's mistake, not malformed input) if the options need more than 40
    bytes, a SACK option has no block, an UnknownOption has kind 0 or 1 (they have no length
    byte), or a value does not fit its field.
    """
    parts: list[bytes] = []
    try:
        for opt in options:
            if isinstance(opt, TimestampOption):
                parts.append(_TIMESTAMP.pack(OPT_TIMESTAMP, 10, opt.tsval, opt.tsecr))
            elif isinstance(opt, SackOption):
                count = len(opt.blocks)
                if count == 0:
                    raise ValueError("a SACK option needs at least one block")
                edges = [edge for block in opt.blocks for edge in block]
                if len(edges) != 2 * count:
                    raise ValueError("SACK blocks are (left, right) pairs")
                parts.append(struct.pack(f"!BB{2 * count}I", OPT_SACK, 2 + 8 * count, *edges))
            elif isinstance(opt, MssOption):
                parts.append(_MSS.pack(OPT_MSS, 4, opt.mss))
            elif isinstance(opt, WindowScaleOption):
                parts.append(bytes((OPT_WSCALE, 3, opt.shift)))
            elif isinstance(opt, SackPermittedOption):
                parts.append(b"\x04\x02")
            elif isinstance(opt, UnknownOption):
                if opt.kind in (OPT_EOL, OPT_NOP):
                    raise ValueError(f"option kind {opt.kind} has no length: not an option")
                if len(opt.data) > TCP_MAX_OPTIONS_LEN - 2:
                    raise ValueError(f"option {opt.kind} of {len(opt.data) + 2} bytes")
                parts.append(bytes((opt.kind, len(opt.data) + 2)) + opt.data)
            else:
                raise ValueError(f"not a TCP option: {opt!r}")
    except struct.error as exc:
        raise ValueError(f"TCP option field out of range: {exc}") from None
    raw = b"".join(parts)
    if len(raw) > TCP_MAX_OPTIONS_LEN:
        raise ValueError(f"TCP options need {len(raw)} bytes, at most 40 fit")
    return raw + b"\x01" * (-len(raw) % 4)


def emit_tcp(seg: TcpSegment, src_ip: bytes, dst_ip: bytes) -> bytes:
    """Encode `seg` with its options and the checksum over the pseudo-header for
    `src_ip` -> `dst_ip` (RFC 9293 §3.1). ValueError if a field does not fit (see
    `encode_tcp_options` for the options)."""
    header, payload = emit_tcp_parts(seg, src_ip, dst_ip)
    return header + payload


def emit_tcp_parts(seg: TcpSegment, src_ip: bytes, dst_ip: bytes) -> tuple[bytes, bytes]:
    """`emit_tcp` as (header with options and checksum, payload), so that a caller that
    builds a whole frame copies the payload once."""
    if len(src_ip) != 4 or len(dst_ip) != 4:
        raise ValueError("IPv4 addresses must be 4 bytes")
    options = encode_tcp_options(seg.options) if seg.options else b""
    header_len = TCP_HEADER_LEN + len(options)
    payload = seg.payload
    # Pseudo-header, header fields, options and payload are summed apart: 2**16 = 1 modulo
    # 0xffff, so a field's value counts the same wherever its 16-bit word sits.
    total = (int.from_bytes(src_ip, "big") + int.from_bytes(dst_ip, "big") + _PROTO_TCP
             + header_len + len(payload) + seg.src_port + seg.dst_port + seg.seq + seg.ack
             + ((header_len << 10) | seg.flags) + seg.window + seg.urgent
             + int.from_bytes(options, "big") + ones_complement_sum(payload))
    try:
        header = _HEADER.pack(seg.src_port, seg.dst_port, seg.seq, seg.ack, header_len << 2,
                              seg.flags, seg.window, fold_checksum(total), seg.urgent)
    except struct.error as exc:
        raise ValueError(f"TCP header field out of range: {exc}") from None
    return (header + options if options else header), payload
