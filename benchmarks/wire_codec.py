"""How fast the wire codecs are (not a test): parse and emit rates for a full-sized TCP data
segment with timestamps in Ethernet + IPv4, and Internet checksum throughput.

The checksum is computed two ways to justify the one we ship: reading the buffer as one big
integer reduced modulo 0xffff (checksum.py), and summing `array('H')` words.

    .venv/bin/python benchmarks/wire_codec.py [--seconds 1.0] [--json]
"""

from __future__ import annotations

import argparse
import array
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.stack.wire.checksum import internet_checksum
from testbed.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, emit_ethernet, parse_ethernet
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, parse_ipv4
from testbed.stack.wire.tcp import ACK, TcpSegment, TimestampOption, emit_tcp, parse_tcp

MSS_WITH_TIMESTAMPS = 1448  # 1500 - 20 (IPv4) - 20 (TCP) - 12 (timestamps, padded)
SRC_MAC, DST_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SRC_IP, DST_IP = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
CHECKSUM_SIZES = (64, 1500, 65536)


def checksum_array(data: bytes) -> int:
    """The alternative: sum native 16-bit words, fold, then swap into network order. On a
    little-endian host summing swapped words and swapping the folded result is equivalent
    (RFC 1071 §2(B), byte order independence)."""
    if len(data) & 1:
        data += b"\x00"
    total = sum(array.array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total >> 8) | (total << 8)) & 0xFFFF
    return ~total & 0xFFFF


def rate(operation: Callable[[], object], seconds: float) -> float:
    """Calls per second of `operation`, in batches so the clock is read rarely."""
    calls, batch = 0, 200
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            operation()
        calls += batch
    return calls / elapsed


def emit_frame(seg: TcpSegment) -> bytes:
    datagram = emit_ipv4(Ipv4Packet(SRC_IP, DST_IP, PROTO_TCP, emit_tcp(seg, SRC_IP, DST_IP)))
    return emit_ethernet(EthernetFrame(DST_MAC, SRC_MAC, ETHERTYPE_IPV4, datagram))


def parse_frame(frame: bytes) -> TcpSegment:
    packet = parse_ipv4(parse_ethernet(frame).payload)
    return parse_tcp(packet.payload, packet.src, packet.dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()

    seg = TcpSegment(40000, 5201, 123456789, 987654321, ACK, 502,
                     options=(TimestampOption(1_000_000, 2_000_000),),
                     payload=bytes(range(256)) * 5 + bytes(MSS_WITH_TIMESTAMPS - 1280))
    frame = emit_frame(seg)
    if parse_frame(frame) != seg or len(frame) != 1514:
        raise SystemExit("the codec does not round-trip the benchmark segment")
    tcp_bytes = frame[34:]
    if checksum_array(tcp_bytes) != internet_checksum(tcp_bytes):
        raise SystemExit("the two checksum implementations disagree")

    results: dict[str, float] = {
        "frame_bytes": len(frame),
        "emit_frames_per_s": rate(lambda: emit_frame(seg), args.seconds),
        "parse_frames_per_s": rate(lambda: parse_frame(frame), args.seconds),
        "emit_tcp_only_per_s": rate(lambda: emit_tcp(seg, SRC_IP, DST_IP), args.seconds),
        "parse_tcp_only_per_s": rate(lambda: parse_tcp(tcp_bytes, SRC_IP, DST_IP), args.seconds),
    }
    checksums: dict[str, Callable[[bytes], int]] = {
        "int_from_bytes": internet_checksum, "array_h": checksum_array}
    for name, function in checksums.items():
        for size in CHECKSUM_SIZES:
            data = bytes(range(256)) * (size // 256) + bytes(size % 256)
            calls = rate(partial(function, data), args.seconds / 2)
            results[f"checksum_{name}_{size}B_MB_per_s"] = calls * size / 1e6

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{len(frame)}-byte frame (1448 B payload, timestamps), Ethernet + IPv4 + TCP:")
    print(f"  emit  {results['emit_frames_per_s']:>12,.0f} segments/s"
          f"  ({results['emit_frames_per_s'] * len(frame) * 8 / 1e6:,.0f} Mbit/s)")
    print(f"  parse {results['parse_frames_per_s']:>12,.0f} segments/s"
          f"  ({results['parse_frames_per_s'] * len(frame) * 8 / 1e6:,.0f} Mbit/s)")
    print(f"  TCP layer only: emit {results['emit_tcp_only_per_s']:,.0f}/s, "
          f"parse {results['parse_tcp_only_per_s']:,.0f}/s")
    print("Internet checksum throughput (MB/s):")
    for size in CHECKSUM_SIZES:
        big_int = results[f"checksum_int_from_bytes_{size}B_MB_per_s"]
        words = results[f"checksum_array_h_{size}B_MB_per_s"]
        print(f"  {size:>6} B: int.from_bytes {big_int:>8,.0f}   array('H') {words:>8,.0f}")


if __name__ == "__main__":
    main()
