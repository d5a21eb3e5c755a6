"""The fixed points where a layer above TCP (MPTCP, later) plugs in.

TCP calls these and nothing else; the default implementation does nothing, so TCP with
`TcpHooks()` behaves exactly as TCP with no hooks. This mirrors upstream Linux, where MPTCP
attaches to subflows as a ULP instead of branching inside TCP.

Option space: an outgoing segment has 40 bytes of options. The options a hook returns are
placed first and are never dropped by TCP; TCP then fits its own optional options in what is
left, giving them up in this order: SACK blocks (oldest block first), then the timestamp
option. On a SYN, TCP gives up timestamps, then SACK-permitted, then window scale; MSS stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from testbed.stack.wire.tcp import TcpOption, TcpSegment

if TYPE_CHECKING:
    from testbed.stack.tcp.connection import TcpConnection


class TcpHooks:
    """Base class with no-op defaults; override what you need."""

    def syn_options(self, conn: TcpConnection, syn_ack: bool) -> list[TcpOption]:
        """Options to add to our SYN (syn_ack False) or SYN-ACK (syn_ack True)."""
        return []

    def segment_options(self, conn: TcpConnection, seg: TcpSegment) -> list[TcpOption]:
        """Options to add to an outgoing non-SYN segment (seg is what TCP built so far),
        RSTs included."""
        return []

    def payload_limit(self, conn: TcpConnection, seq: int) -> int | None:
        """The most payload a new segment starting at `seq` may carry (None: TCP decides).
        A layer that labels byte ranges (MPTCP's mappings) keeps one label per segment
        this way; retransmissions keep the boundaries of the original segments."""
        return None

    def reserved_option_space(self, conn: TcpConnection) -> int:
        """Bytes of option space to keep free on full-sized data segments, so that payload
        plus options never exceed the MSS (RFC 6691)."""
        return 0

    def options_received(self, conn: TcpConnection, seg: TcpSegment) -> None:
        """An acceptable segment arrived (SYNs and an RST that resets included), before
        its data is queued."""

    def data_readable(self, conn: TcpConnection) -> None:
        """In-order data (or EOF) became available to recv()."""

    def receive_window(self, conn: TcpConnection) -> int | None:
        """Bytes of receive window to advertise instead of TCP's own (None: TCP decides)."""
        return None

    def on_event(self, conn: TcpConnection, event: str) -> None:
        """Connection events: "established", "fin_received", "time_wait", "closed",
        "reset", "timeout", "refused"."""
