"""TCP header and options (RFC 9293 §3.1; RFC 7323 window scale and timestamps; RFC 2018
SACK). Unknown options, MPTCP's (kind 30) among them, are kept opaque: the TCP layer does not
interpret them, the layer above (through TCP's hooks) does."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
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
