"""The middlebox process: forwards every frame between two interfaces of its host (a bump in
the wire, no addresses of its own) through the transforms of core.py.

    python -m testbed.emu.middlebox.daemon --a IF --b IF [--transform SPEC ...] [--stats FILE]

Both interfaces are put in promiscuous mode through packet-socket membership, which ends with
the sockets: nothing stays configured after the process. On SIGTERM or SIGINT it writes its
counters to --stats (JSON) and exits; it prints READY once forwarding.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from testbed.emu.middlebox.core import Middlebox
from testbed.errors import ParameterError
from testbed.runtime.daemon import open_packet_socket

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
FRAMES_PER_WAKEUP = 64


def promiscuous(sock: socket.socket, ifname: str) -> None:
    """Receive frames for every MAC (the box forwards frames addressed to others)."""
    mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)


class Forwarder:
    def __init__(self, box: Middlebox, a: socket.socket, b: socket.socket) -> None:
        self.box = box
        self.sockets = {"a2b": (a, b), "b2a": (b, a)}
        self.send_errors = 0
        self.running = True
        self.sel = selectors.DefaultSelector()
        self.sel.register(a, selectors.EVENT_READ, "a2b")
        self.sel.register(b, selectors.EVENT_READ, "b2a")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def run(self) -> None:
        flush_at: float | None = None  # when what a transform holds back must leave
        while self.running:
            timeout = None if flush_at is None else max(0.0, flush_at - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                else:
                    self._forward(key.data)
            hold = self.box.hold_s
            now = time.monotonic()
            if hold is None:
                flush_at = None
            elif flush_at is None:
                flush_at = now + hold
            elif now >= flush_at:
                self._flush()
                flush_at = None

    def _flush(self) -> None:
        for direction, frame in self.box.flush():
            self._send(self.sockets[direction][1], frame)

    def _forward(self, direction: str) -> None:
        inbound, outbound = self.sockets[direction]
        for _ in range(FRAMES_PER_WAKEUP):
            try:
                frame = inbound.recv(65536)
            except BlockingIOError:
                return
            for out in self.box.process(direction, frame):
                self._send(outbound, out)
            for back in self.box.take_back():  # the box's own replies (ARP for a NAT)
                self._send(inbound, back)

    def _send(self, sock: socket.socket, frame: bytes) -> None:
        try:
            sock.send(frame)
        except OSError:  # a full queue or an interface going down: a lost frame
            self.send_errors += 1

    def stats(self) -> dict[str, object]:
        return {**self.box.stats(), "send_errors": self.send_errors}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m testbed.emu.middlebox.daemon",
                                description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True, help="interface towards side a (the client's)")
    p.add_argument("--b", required=True, help="interface towards side b")
    p.add_argument("--transform", action="append", default=[], metavar="SPEC",
                   help="name[:key=value,...], applied in the order given (repeatable)")
    p.add_argument("--stats", type=Path, help="write the counters here (JSON) on exit")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        box = Middlebox.from_specs(args.transform)
    except ParameterError as exc:
        print(f"middlebox: {exc}", file=sys.stderr)
        return 2
    opened: list[socket.socket] = []
    try:
        for ifname in (args.a, args.b):
            sock, _mac, _mtu = open_packet_socket(ifname)
            opened.append(sock)
            promiscuous(sock, ifname)
    except OSError as exc:
        print(f"middlebox: {exc}", file=sys.stderr)
        for sock in opened:
            sock.close()
        return 1
    forwarder = Forwarder(box, opened[0], opened[1])

    def _stop(signum: int, frame: object) -> None:
        forwarder.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.set_wakeup_fd(forwarder._wake_w.fileno(), warn_on_full_buffer=False)
    print("READY", flush=True)
    try:
        forwarder.run()
    finally:
        forwarder._flush()  # nothing held back is lost (the interfaces may be gone already)
        for sock in opened:
            sock.close()
        if args.stats is not None:
            args.stats.write_text(json.dumps(forwarder.stats(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
