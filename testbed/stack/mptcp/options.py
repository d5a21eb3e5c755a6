"""MPTCP v1 options (RFC 8684 §3): one frozen dataclass per option form, parsed from and
emitted to the body of TCP option kind 30, i.e. the bytes after kind and length, exactly what
`testbed.stack.wire.tcp.UnknownOption.data` holds.

Every form is told apart by its subtype and then by its length, never by the TCP flags of the
segment, so the codec needs no context: the only exception is the DSS checksum, which the
caller may state (`dss_checksum=True/False`) or leave to be inferred from the length (the two
cases never share a length, see `_parse_dss`).

`parse_mptcp_option` raises `ParseError`, and nothing else, for malformed input. Emitting
gives the canonical bytes: reserved bits zero (RFC 8684 asks senders to zero them and
receivers to ignore them, so parse ignores them too), hence `emit(parse(b)) == b` for any
canonical `b`. Constructing a value that cannot be emitted (a field out of range, a
combination the wire cannot express) raises ValueError.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from testbed.stack.wire.errors import ParseError
from testbed.stack.wire.tcp import OPT_MPTCP, TcpOption, UnknownOption

MPTCP_VERSION = 1  # §3.1: this specification is version 1

_U32 = 1 << 32
_U64 = 1 << 64


class MptcpSubtype(IntEnum):
    """The subtype field, the high nibble of the option's first body byte (§7.2, Table 1)."""

    MP_CAPABLE = 0x0
    MP_JOIN = 0x1
    DSS = 0x2
    ADD_ADDR = 0x3
    REMOVE_ADDR = 0x4
    MP_PRIO = 0x5
    MP_FAIL = 0x6
    MP_FASTCLOSE = 0x7
    MP_TCPRST = 0x8
    MP_EXPERIMENTAL = 0xF


class TcpRstReason(IntEnum):
    """MP_TCPRST reason codes (§3.6). The option keeps the code as an int so that codes
    assigned later still round-trip; compare it with these members."""

    UNSPECIFIED_ERROR = 0x00
    MPTCP_SPECIFIC_ERROR = 0x01
    LACK_OF_RESOURCES = 0x02
    ADMINISTRATIVELY_PROHIBITED = 0x03
    TOO_MUCH_OUTSTANDING_DATA = 0x04
    UNACCEPTABLE_PERFORMANCE = 0x05
    MIDDLEBOX_INTERFERENCE = 0x06


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} {value} does not fit in {bits} bits")


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")


def _u(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start:start + size], "big")


def _b(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


# An option's length is one byte, but the TCP header has 40 bytes for all options: a body
# can never be longer than 38 bytes on the wire.
MAX_BODY_LEN = 38


class _MptcpOptionBase:
    """What every option value offers: its canonical body and the TCP option carrying it."""

    def emit(self) -> bytes:
        raise NotImplementedError

    def to_tcp_option(self) -> UnknownOption:
        return UnknownOption(OPT_MPTCP, self.emit())


# --- MP_CAPABLE (§3.1) ---------------------------------------------------------------------

# Flags byte (§3.1): A checksum required, B extensibility, C do not attempt to establish new
# subflows to the source address, D-G unassigned, H HMAC-SHA256.
_CAP_A, _CAP_B, _CAP_C, _CAP_H = 0x80, 0x40, 0x20, 0x01


@dataclass(frozen=True)
class MpCapable(_MptcpOptionBase):
    """MP_CAPABLE in its four forms (§3.1), told apart by which fields are present:

    - SYN: no key (length 4);
    - SYN/ACK: `sender_key` only (length 12);
    - third ACK: `sender_key` and `receiver_key` (length 20);
    - first data packet: both keys plus `data_level_length`, and `checksum` when checksums
      were negotiated (length 22 or 24).

    Keys are the 64-bit values as integers (network byte order on the wire).
    """

    subtype: ClassVar[int] = MptcpSubtype.MP_CAPABLE

    version: int = MPTCP_VERSION
    checksum_required: bool = False  # A
    extensibility: bool = False  # B
    no_source_address: bool = False  # C: do not attempt new subflows to the source address
    hmac_sha256: bool = True  # H: the only crypto algorithm of version 1
    sender_key: int | None = None
    receiver_key: int | None = None
    data_level_length: int | None = None
    checksum: int | None = None

    def __post_init__(self) -> None:
        _check_uint("version", self.version, 4)
        if self.receiver_key is not None and self.sender_key is None:
            raise ValueError("MP_CAPABLE carries the receiver's key only after the sender's")
        if self.data_level_length is not None and self.receiver_key is None:
            raise ValueError("MP_CAPABLE carries a data-level length only with both keys")
        if self.checksum is not None and self.data_level_length is None:
            raise ValueError("MP_CAPABLE carries a checksum only with a data-level length")
        for name in ("sender_key", "receiver_key"):
            value = getattr(self, name)
            if value is not None:
                _check_uint(name, value, 64)
        if self.data_level_length is not None:
            _check_uint("data_level_length", self.data_level_length, 16)
        if self.checksum is not None:
            _check_uint("checksum", self.checksum, 16)

    def emit(self) -> bytes:
        flags = ((_CAP_A if self.checksum_required else 0) | (_CAP_B if self.extensibility else 0)
                 | (_CAP_C if self.no_source_address else 0) | (_CAP_H if self.hmac_sha256 else 0))
        out = bytes(((self.subtype << 4) | self.version, flags))
        for value, size in ((self.sender_key, 8), (self.receiver_key, 8),
                            (self.data_level_length, 2), (self.checksum, 2)):
            if value is not None:
                out += _b(value, size)
        return out


def _parse_mp_capable(body: bytes) -> MpCapable:
    size = len(body)
    if size not in (2, 10, 18, 20, 22):
        raise ParseError(f"MP_CAPABLE of length {size + 2}, not 4, 12, 20, 22 or 24")
    flags = body[1]
    return MpCapable(
        version=body[0] & 0x0F,
        checksum_required=bool(flags & _CAP_A),
        extensibility=bool(flags & _CAP_B),
        no_source_address=bool(flags & _CAP_C),
        hmac_sha256=bool(flags & _CAP_H),
        sender_key=_u(body, 2, 8) if size >= 10 else None,
        receiver_key=_u(body, 10, 8) if size >= 18 else None,
        data_level_length=_u(body, 18, 2) if size >= 20 else None,
        checksum=_u(body, 20, 2) if size >= 22 else None,
    )


# --- MP_JOIN (§3.2) ------------------------------------------------------------------------

_BACKUP = 0x01  # the B bit, lowest of the subtype byte (MP_JOIN and MP_PRIO)


@dataclass(frozen=True)
class MpJoinSyn(_MptcpOptionBase):
    """MP_JOIN on the SYN of a new subflow (§3.2, length 12)."""

    subtype: ClassVar[int] = MptcpSubtype.MP_JOIN

    receiver_token: int  # 32 bits: token of the receiver's key
    sender_nonce: int  # 32 bits: "Sender's Random Number"
    address_id: int
    backup: bool = False

    def __post_init__(self) -> None:
        _check_uint("receiver_token", self.receiver_token, 32)
        _check_uint("sender_nonce", self.sender_nonce, 32)
        _check_uint("address_id", self.address_id, 8)

    def emit(self) -> bytes:
        return (bytes(((self.subtype << 4) | (_BACKUP if self.backup else 0), self.address_id))
                + _b(self.receiver_token, 4) + _b(self.sender_nonce, 4))


@dataclass(frozen=True)
class MpJoinSynAck(_MptcpOptionBase):
    """MP_JOIN on the SYN/ACK (§3.2, length 16): the leftmost 64 bits of the HMAC."""

    subtype: ClassVar[int] = MptcpSubtype.MP_JOIN

    sender_truncated_hmac: bytes  # 8 bytes
    sender_nonce: int  # 32 bits
    address_id: int
    backup: bool = False

    def __post_init__(self) -> None:
        _check_bytes("sender_truncated_hmac", self.sender_truncated_hmac, 8)
        _check_uint("sender_nonce", self.sender_nonce, 32)
        _check_uint("address_id", self.address_id, 8)

    def emit(self) -> bytes:
        return (bytes(((self.subtype << 4) | (_BACKUP if self.backup else 0), self.address_id))
                + self.sender_truncated_hmac + _b(self.sender_nonce, 4))


@dataclass(frozen=True)
class MpJoinAck(_MptcpOptionBase):
    """MP_JOIN on the third ACK (§3.2, length 24): the leftmost 160 bits of the HMAC."""

    subtype: ClassVar[int] = MptcpSubtype.MP_JOIN

    sender_hmac: bytes  # 20 bytes

    def __post_init__(self) -> None:
        _check_bytes("sender_hmac", self.sender_hmac, 20)

    def emit(self) -> bytes:
        return bytes((self.subtype << 4, 0)) + self.sender_hmac


def _parse_mp_join(body: bytes) -> MpJoinSyn | MpJoinSynAck | MpJoinAck:
    size = len(body)
    backup = bool(body[0] & _BACKUP)
    if size == 10:
        return MpJoinSyn(_u(body, 2, 4), _u(body, 6, 4), body[1], backup)
    if size == 14:
        return MpJoinSynAck(body[2:10], _u(body, 10, 4), body[1], backup)
    if size == 22:
        return MpJoinAck(body[2:22])
    raise ParseError(f"MP_JOIN of length {size + 2}, not 12, 16 or 24")


# --- DSS (§3.3) ----------------------------------------------------------------------------

# Flags, the low five bits of the second body byte (§3.3).
_DSS_A = 0x01  # data ACK present
_DSS_a = 0x02  # data ACK is 8 octets
_DSS_M = 0x04  # mapping (DSN, subflow sequence number, data-level length, checksum) present
_DSS_m = 0x08  # DSN is 8 octets
_DSS_F = 0x10  # DATA_FIN


@dataclass(frozen=True)
class DssMapping:
    """A DSS mapping (§3.3.1): `data_level_length` bytes from relative subflow sequence
    number `subflow_seq` carry data sequence numbers from `data_seq`. A length of zero is
    the infinite mapping (§3.3.1). `data_seq` is as sent: only 32 bits when not
    `data_seq_64` (expand it with `expand_to_64`)."""

    data_seq: int
    subflow_seq: int  # relative to the subflow's initial sequence number (§3.3.1)
    data_level_length: int
    checksum: int | None = None  # present iff checksums were negotiated (§3.3.1)
    data_seq_64: bool = True

    def __post_init__(self) -> None:
        _check_uint("data_seq", self.data_seq, 64 if self.data_seq_64 else 32)
        _check_uint("subflow_seq", self.subflow_seq, 32)
        _check_uint("data_level_length", self.data_level_length, 16)
        if self.checksum is not None:
            _check_uint("checksum", self.checksum, 16)


@dataclass(frozen=True)
class Dss(_MptcpOptionBase):
    """Data Sequence Signal (§3.3): a data ACK, a mapping, and the DATA_FIN flag, each
    optional. `data_ack` is as sent: only 32 bits when not `data_ack_64`."""

    subtype: ClassVar[int] = MptcpSubtype.DSS

    data_ack: int | None = None
    mapping: DssMapping | None = None
    data_fin: bool = False  # F (§3.3.3): the mapping's data-level length includes DATA_FIN
    data_ack_64: bool = False

    def __post_init__(self) -> None:
        if self.data_ack is None:
            if self.data_ack_64:
                raise ValueError("data_ack_64 without a data ACK (the a flag needs A)")
        else:
            _check_uint("data_ack", self.data_ack, 64 if self.data_ack_64 else 32)

    def emit(self) -> bytes:
        flags = _DSS_F if self.data_fin else 0
        out = b""
        if self.data_ack is not None:
            flags |= _DSS_A | (_DSS_a if self.data_ack_64 else 0)
            out += _b(self.data_ack, 8 if self.data_ack_64 else 4)
        mapping = self.mapping
        if mapping is not None:
            flags |= _DSS_M | (_DSS_m if mapping.data_seq_64 else 0)
            out += (_b(mapping.data_seq, 8 if mapping.data_seq_64 else 4)
                    + _b(mapping.subflow_seq, 4) + _b(mapping.data_level_length, 2))
            if mapping.checksum is not None:
                out += _b(mapping.checksum, 2)
        return bytes((self.subtype << 4, flags)) + out


def _parse_dss(body: bytes, checksum: bool | None) -> Dss:
    if len(body) < 2:
        raise ParseError("DSS of length 3 has no flags byte")
    flags = body[1]
    i = 2
    data_ack = None
    if flags & _DSS_A:
        width = 8 if flags & _DSS_a else 4
        if len(body) < i + width:
            raise ParseError(f"DSS of length {len(body) + 2} too short for its data ACK")
        data_ack = _u(body, i, width)
        i += width
    mapping = None
    if flags & _DSS_M:
        width = 8 if flags & _DSS_m else 4
        # DSN, subflow sequence number (4), data-level length (2), then the checksum (2)
        # or nothing. With or without a data ACK of 4 or 8 and a DSN of 4 or 8, the body
        # is 14, 18, 22 or 26 bytes long without the checksum and 16, 20, 24 or 28 with it:
        # the length alone says whether it is there.
        rest = len(body) - i - (width + 6)
        if rest not in (0, 2):
            raise ParseError(f"DSS of length {len(body) + 2} does not match its flags")
        has_checksum = rest == 2
        if checksum is not None and has_checksum != checksum:
            raise ParseError("DSS checksum " + ("present, not negotiated" if has_checksum
                                                else "missing, negotiated"))
        mapping = DssMapping(
            data_seq=_u(body, i, width), subflow_seq=_u(body, i + width, 4),
            data_level_length=_u(body, i + width + 4, 2),
            checksum=_u(body, i + width + 6, 2) if has_checksum else None,
            data_seq_64=width == 8)
        i = len(body)
    if i != len(body):
        raise ParseError(f"DSS of length {len(body) + 2} does not match its flags")
    return Dss(data_ack, mapping, bool(flags & _DSS_F),
               data_ack_64=data_ack is not None and bool(flags & _DSS_a))


def expand_to_64(value: int, reference: int) -> int:
    """The 64-bit sequence number whose low 32 bits are `value` and which lies nearest to
    `reference` (the current 64-bit DSN or data ACK), modulo 2**64.

    §3.3: a 32-bit DSN or data ACK is the low half of the 64-bit one, and the receiver
    rebuilds it from its own state. Taking the nearest candidate (within 2**31 either side)
    is right across a wrap of the low 32 bits in both directions.
    """
    _check_uint("value", value, 32)
    _check_uint("reference", reference, 64)
    delta = (value - reference) % _U32
    if delta >= _U32 // 2:
        delta -= _U32
    return (reference + delta) % _U64


# --- ADD_ADDR (§3.4.1) and REMOVE_ADDR (§3.4.2) --------------------------------------------

_ECHO = 0x01  # E, lowest bit of the subtype byte

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Body length -> (address size, port present, echo). §3.4.1: the IP version is no longer a
# field in version 1; the length says it, and whether a port and the HMAC follow.
_ADD_ADDR_LAYOUTS = {
    6: (4, False, True), 8: (4, True, True), 14: (4, False, False), 16: (4, True, False),
    18: (16, False, True), 20: (16, True, True), 26: (16, False, False), 28: (16, True, False),
}


@dataclass(frozen=True)
class AddAddr(_MptcpOptionBase):
    """ADD_ADDR (§3.4.1). The truncated HMAC (the rightmost 64 bits, see
    `crypto.add_addr_hmac`) is there exactly when the option is not an echo."""

    subtype: ClassVar[int] = MptcpSubtype.ADD_ADDR

    address_id: int
    address: IpAddress
    port: int | None = None
    truncated_hmac: bytes | None = None  # 8 bytes; None iff echo
    echo: bool = False

    def __post_init__(self) -> None:
        _check_uint("address_id", self.address_id, 8)
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise ValueError(f"not an IP address: {self.address!r}")
        if self.port is not None:
            _check_uint("port", self.port, 16)
        if self.echo != (self.truncated_hmac is None):
            raise ValueError("ADD_ADDR carries the truncated HMAC exactly when it is no echo")
        if self.truncated_hmac is not None:
            _check_bytes("truncated_hmac", self.truncated_hmac, 8)

    def emit(self) -> bytes:
        out = (bytes(((self.subtype << 4) | (_ECHO if self.echo else 0), self.address_id))
               + self.address.packed)
        if self.port is not None:
            out += _b(self.port, 2)
        return out + (self.truncated_hmac or b"")


def _parse_add_addr(body: bytes) -> AddAddr:
    layout = _ADD_ADDR_LAYOUTS.get(len(body))
    if layout is None:
        raise ParseError(f"ADD_ADDR of length {len(body) + 2}")
    address_size, has_port, echo = layout
    if bool(body[0] & _ECHO) != echo:
        raise ParseError(f"ADD_ADDR of length {len(body) + 2} with the echo flag "
                         + ("set" if body[0] & _ECHO else "clear"))
    raw = body[2:2 + address_size]
    address: IpAddress = (ipaddress.IPv4Address(raw) if address_size == 4
                          else ipaddress.IPv6Address(raw))
    i = 2 + address_size
    port = None
    if has_port:
        port = _u(body, i, 2)
        i += 2
    return AddAddr(body[1], address, port, None if echo else body[i:i + 8], echo)


@dataclass(frozen=True)
class RemoveAddr(_MptcpOptionBase):
    """REMOVE_ADDR (§3.4.2): one or more address IDs."""

    subtype: ClassVar[int] = MptcpSubtype.REMOVE_ADDR

    address_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.address_ids) <= MAX_BODY_LEN - 1:
            raise ValueError(f"REMOVE_ADDR with {len(self.address_ids)} address IDs")
        for address_id in self.address_ids:
            _check_uint("address_id", address_id, 8)

    def emit(self) -> bytes:
        return bytes((self.subtype << 4, *self.address_ids))


def _parse_remove_addr(body: bytes) -> RemoveAddr:
    if len(body) < 2:
        raise ParseError("REMOVE_ADDR without an address ID")
    return RemoveAddr(tuple(body[1:]))


# --- MP_PRIO (§3.3.8), MP_FAIL (§3.7), MP_FASTCLOSE (§3.5), MP_TCPRST (§3.6) ---------------

@dataclass(frozen=True)
class MpPrio(_MptcpOptionBase):
    """MP_PRIO (§3.3.8): change the backup flag of the subflow it is sent on. Version 1 has
    no address ID; the 4-byte form of RFC 6824 with one is still parsed and emitted."""

    subtype: ClassVar[int] = MptcpSubtype.MP_PRIO

    backup: bool
    address_id: int | None = None

    def __post_init__(self) -> None:
        if self.address_id is not None:
            _check_uint("address_id", self.address_id, 8)

    def emit(self) -> bytes:
        out = bytes(((self.subtype << 4) | (_BACKUP if self.backup else 0),))
        return out if self.address_id is None else out + bytes((self.address_id,))


def _parse_mp_prio(body: bytes) -> MpPrio:
    if len(body) not in (1, 2):
        raise ParseError(f"MP_PRIO of length {len(body) + 2}, not 3 or 4")
    return MpPrio(bool(body[0] & _BACKUP), body[1] if len(body) == 2 else None)


@dataclass(frozen=True)
class MpFail(_MptcpOptionBase):
    """MP_FAIL (§3.7): the 64-bit DSN from which a checksum failed."""

    subtype: ClassVar[int] = MptcpSubtype.MP_FAIL

    data_seq: int

    def __post_init__(self) -> None:
        _check_uint("data_seq", self.data_seq, 64)

    def emit(self) -> bytes:
        return bytes((self.subtype << 4, 0)) + _b(self.data_seq, 8)


@dataclass(frozen=True)
class MpFastclose(_MptcpOptionBase):
    """MP_FASTCLOSE (§3.5): the receiver's key, proving the sender knows the connection."""

    subtype: ClassVar[int] = MptcpSubtype.MP_FASTCLOSE

    receiver_key: int

    def __post_init__(self) -> None:
        _check_uint("receiver_key", self.receiver_key, 64)

    def emit(self) -> bytes:
        return bytes((self.subtype << 4, 0)) + _b(self.receiver_key, 8)


def _parse_fixed_64(body: bytes, name: str) -> int:
    # MP_FAIL and MP_FASTCLOSE: subtype, 12 reserved bits, one 64-bit field (length 12).
    if len(body) != 10:
        raise ParseError(f"{name} of length {len(body) + 2}, not 12")
    return _u(body, 2, 8)


# MP_TCPRST flags, the low nibble of the subtype byte (§3.6): U, V, W unassigned, T transient.
_RST_U, _RST_V, _RST_W, _RST_T = 0x08, 0x04, 0x02, 0x01


@dataclass(frozen=True)
class MpTcpRst(_MptcpOptionBase):
    """MP_TCPRST (§3.6): why a subflow was reset, and whether the error is transient (T)."""

    subtype: ClassVar[int] = MptcpSubtype.MP_TCPRST

    reason: int  # a TcpRstReason, or a code assigned later
    transient: bool = False  # T
    flag_u: bool = False
    flag_v: bool = False
    flag_w: bool = False

    def __post_init__(self) -> None:
        _check_uint("reason", self.reason, 8)

    def emit(self) -> bytes:
        flags = ((_RST_U if self.flag_u else 0) | (_RST_V if self.flag_v else 0)
                 | (_RST_W if self.flag_w else 0) | (_RST_T if self.transient else 0))
        return bytes(((self.subtype << 4) | flags, self.reason))


def _parse_mp_tcprst(body: bytes) -> MpTcpRst:
    if len(body) != 2:
        raise ParseError(f"MP_TCPRST of length {len(body) + 2}, not 4")
    flags = body[0]
    return MpTcpRst(body[1], transient=bool(flags & _RST_T), flag_u=bool(flags & _RST_U),
                    flag_v=bool(flags & _RST_V), flag_w=bool(flags & _RST_W))


@dataclass(frozen=True)
class UnknownMptcpOption(_MptcpOptionBase):
    """A subtype we do not know (MP_EXPERIMENTAL among them), kept byte for byte."""

    body: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.body) <= MAX_BODY_LEN:
            raise ValueError(f"MPTCP option body of {len(self.body)} bytes")
        if self.subtype <= MptcpSubtype.MP_TCPRST:
            # A known subtype would parse back as its own class, not as this one.
            raise ValueError(f"subtype {self.subtype} is known: use its class")

    @property
    def subtype(self) -> int:
        return self.body[0] >> 4

    def emit(self) -> bytes:
        return self.body


MptcpOption = (MpCapable | MpJoinSyn | MpJoinSynAck | MpJoinAck | Dss | AddAddr | RemoveAddr
               | MpPrio | MpFail | MpFastclose | MpTcpRst | UnknownMptcpOption)


def parse_mptcp_option(body: bytes, *, dss_checksum: bool | None = None) -> MptcpOption:
    """Parse the body of a kind-30 TCP option (everything after kind and length).

    `dss_checksum` says whether DSS checksums were negotiated (§3.3.1: True if either side
    set A in MP_CAPABLE): a DSS mapping whose length disagrees raises ParseError. Left at
    None, the checksum's presence is read from the length; a receiver that must answer a
    missing checksum with a RST (§3.3) parses with None and looks.

    ParseError, and nothing else, for: an empty body or one longer than the 38 bytes the
    TCP header leaves, or a known subtype whose length does
    not match one of its forms (an ADD_ADDR's echo flag included). Unknown subtypes parse
    as `UnknownMptcpOption`.
    """
    body = bytes(body)
    if not body:
        raise ParseError("MPTCP option of length 2 has no subtype")
    if len(body) > MAX_BODY_LEN:
        raise ParseError(f"MPTCP option of length {len(body) + 2} exceeds the option space")
    subtype = body[0] >> 4
    if subtype == MptcpSubtype.MP_CAPABLE:
        return _parse_mp_capable(body)
    if subtype == MptcpSubtype.MP_JOIN:
        return _parse_mp_join(body)
    if subtype == MptcpSubtype.DSS:
        return _parse_dss(body, dss_checksum)
    if subtype == MptcpSubtype.ADD_ADDR:
        return _parse_add_addr(body)
    if subtype == MptcpSubtype.REMOVE_ADDR:
        return _parse_remove_addr(body)
    if subtype == MptcpSubtype.MP_PRIO:
        return _parse_mp_prio(body)
    if subtype == MptcpSubtype.MP_FAIL:
        return MpFail(_parse_fixed_64(body, "MP_FAIL"))
    if subtype == MptcpSubtype.MP_FASTCLOSE:
        return MpFastclose(_parse_fixed_64(body, "MP_FASTCLOSE"))
    if subtype == MptcpSubtype.MP_TCPRST:
        return _parse_mp_tcprst(body)
    return UnknownMptcpOption(body)


def emit_mptcp_option(option: MptcpOption) -> bytes:
    """The canonical body of `option` (what `option.emit()` gives)."""
    return option.emit()


def from_tcp_option(option: UnknownOption, *, dss_checksum: bool | None = None) -> MptcpOption:
    """Parse the MPTCP option a TCP segment carries; ValueError if it is not kind 30 (a
    caller's mistake), ParseError if its body is malformed."""
    if option.kind != OPT_MPTCP:
        raise ValueError(f"TCP option kind {option.kind} is not MPTCP ({OPT_MPTCP})")
    return parse_mptcp_option(option.data, dss_checksum=dss_checksum)


def to_tcp_option(option: MptcpOption) -> UnknownOption:
    """The kind-30 TCP option carrying `option`."""
    return option.to_tcp_option()


def mptcp_options(options: tuple[TcpOption, ...], *,
                  dss_checksum: bool | None = None) -> Iterator[MptcpOption]:
    """The MPTCP options among a segment's TCP options, in order; ParseError on the first
    malformed one."""
    for option in options:
        if isinstance(option, UnknownOption) and option.kind == OPT_MPTCP:
            yield parse_mptcp_option(option.data, dss_checksum=dss_checksum)
