"""A small pcap writer for what the stack sends and receives: the classic libpcap format
(magic 0xa1b2c3d4, version 2.4, microsecond timestamps), link type Ethernet. tshark, tcpdump
and Wireshark read it; the caller supplies the timestamps, so the writer reads no clock."""

from __future__ import annotations

import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_MICROSECONDS = 0xA1B2C3D4
DEFAULT_SNAPLEN = 262144  # what tcpdump uses: no Ethernet frame of ours is cut

# Little-endian throughout; readers detect the byte order from the magic number.
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")


class PcapWriter:
    """Write Ethernet frames to a pcap file, or to an open binary stream.

    With a path the writer owns the file and closes it; with a stream it only flushes it.
    Use as a context manager, or call `close()`.
    """

    def __init__(self, target: str | Path | BinaryIO, snaplen: int = DEFAULT_SNAPLEN) -> None:
        if snaplen <= 0:
            raise ValueError(f"snaplen must be positive, not {snaplen}")
        self.snaplen = snaplen
        self._owns_stream = isinstance(target, str | Path)
        self._stream: BinaryIO = (open(target, "wb") if isinstance(target, str | Path)  # noqa: SIM115
                                  else target)
        self._closed = False
        self._stream.write(_GLOBAL_HEADER.pack(PCAP_MAGIC_MICROSECONDS, 2, 4, 0, 0, snaplen,
                                               LINKTYPE_ETHERNET))
        self.frames_written = 0

    def write(self, frame: bytes, ts: float) -> None:
        """Append one frame captured at `ts` seconds since the epoch (or any origin)."""
        if self._closed:
            raise ValueError("write to a closed PcapWriter")
        if ts < 0:
            raise ValueError(f"pcap timestamps cannot be negative: {ts}")
        seconds, microseconds = divmod(round(ts * 1_000_000), 1_000_000)
        captured = frame[:self.snaplen]
        self._stream.write(_RECORD_HEADER.pack(seconds, microseconds, len(captured),
                                               len(frame)))
        self._stream.write(captured)
        self.frames_written += 1

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_stream:
            self._stream.close()
        else:
            self._stream.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
