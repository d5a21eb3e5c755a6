"""How many frames per second the userspace shaper moves between two namespaces (not a test).

Blasts UDP datagrams from one namespace to a counter in the other across one shaped link and
prints what was sent, what arrived and the shaper's own loop figures. Needs root.

    .venv/bin/python benchmarks/shaper_capacity.py [--seconds 5] [--size 64] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyroute2 import NetNS

from testbed.emu.linkparams import LinkShaping
from testbed.emu.shaper.client import ShaperProcess, TapEnd

BLASTER = """
import socket, sys, time
size, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
payload = bytes(size)
sent = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        try:
            s.sendto(payload, ("10.78.0.2", 9000))
            sent += 1
        except BlockingIOError:
            pass
print(sent)
"""

COUNTER = """
import socket, sys, time
seconds = float(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.bind(("10.78.0.2", 9000))
s.settimeout(0.5)
got = 0
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        s.recv(65536)
        got += 1
    except TimeoutError:
        pass
print(got, flush=True)
"""


def spawn_namespace() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    home = os.readlink("/proc/self/ns/net")
    while os.readlink(f"/proc/{proc.pid}/ns/net") == home:
        time.sleep(0.01)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64, help="UDP payload bytes")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    holders = [spawn_namespace(), spawn_namespace()]
    a, b = (p.pid for p in holders)
    try:
        with ShaperProcess() as shaper:
            shaper.start(seed=1)
            shaper.add_link("bench", TapEnd(a, "ba0"), TapEnd(b, "bb0"),
                            LinkShaping.symmetric(delay_ms=args.delay_ms))
            for pid, ifname, addr in ((a, "ba0", "10.78.0.1"), (b, "bb0", "10.78.0.2")):
                with NetNS(f"/proc/{pid}/ns/net") as ns:
                    index = ns.link_lookup(ifname=ifname)[0]
                    ns.addr("add", index=index, address=addr, prefixlen=24)
            # Static neighbour entry: no ARP in the measurement.
            subprocess.run(["nsenter", f"--net=/proc/{a}/ns/net", "ip", "neigh", "replace",
                            "10.78.0.2", "lladdr", _mac(b, "bb0"), "dev", "ba0"], check=True)
            counter = subprocess.Popen(
                ["nsenter", f"--net=/proc/{b}/ns/net", sys.executable, "-c", COUNTER,
                 str(args.seconds + 1.5)], stdout=subprocess.PIPE, text=True)
            assert counter.stdout is not None
            counter.stdout.readline()
            before = shaper.stats()
            blast = subprocess.run(
                ["nsenter", f"--net=/proc/{a}/ns/net", sys.executable, "-c", BLASTER,
                 str(args.size), str(args.seconds)], capture_output=True, text=True, check=True)
            after = shaper.stats()
            received = int(counter.communicate()[0].strip())
        sent = int(blast.stdout.strip())
        a2b = after["links"]["bench"]["a2b"]
        moved = a2b["frames_out"] - before["links"]["bench"]["a2b"]["frames_out"]
        loop = after["loop"]
        frame_bytes = args.size + 8 + 20 + 14
        print(json.dumps({
            "udp_payload_bytes": args.size,
            "seconds": args.seconds,
            "sent_per_s": sent / args.seconds,
            "shaper_moved_per_s": moved / args.seconds,
            "received_per_s": received / args.seconds,
            "shaper_mbit_per_s": moved * frame_bytes * 8 / args.seconds / 1e6,
            "lateness_mean_ms": a2b["lateness_mean_s"] * 1000,
            "lateness_max_ms": a2b["lateness_max_s"] * 1000,
            "shaper_cpu_load": loop["cpu_load"],
            "shaper_frames_per_cpu_s": loop["frames_per_cpu_s"],
            "frames_per_wakeup": loop["frames_per_wakeup"],
        }, indent=2))
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def _mac(pid: int, ifname: str) -> str:
    with NetNS(f"/proc/{pid}/ns/net") as ns:
        link = ns.get_links(ifname=ifname)[0]
        return str(link.get_attr("IFLA_ADDRESS"))


if __name__ == "__main__":
    main()
