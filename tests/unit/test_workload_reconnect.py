"""--reconnect on 127.0.0.1 (no root): a relay between client and server breaks the first
connection after some bytes, either with a reset both ends hear, or towards the client only
while the server's end stays open and silent (as when the client's address is gone); the
client connects again, the stream resumes where the receiver got to, and the sha256 of the
whole stream still checks."""

from __future__ import annotations

import select
import socket
import struct
import threading

import pytest

from testbed.workload import (
    CHUNK,
    Report,
    WorkloadError,
    make_socket,
    parse_args,
    payload_chunks,
    payload_from,
    payload_sha256,
    run,
)

from .test_workload import free_port


class BreakingRelay:
    """Forwards connections on `port` to `upstream`; the first one is cut once `after` bytes
    went through (either direction). `silent`: only the client's side is reset, the server's
    side is left open and nothing more is sent on it."""

    def __init__(self, upstream: int, after: int, silent: bool, refuse: bool = False,
                 proto: str = "tcp") -> None:
        # refuse: no connection is relayed after the cut (the listener closes).
        self.upstream, self.after, self.silent, self.refuse = upstream, after, silent, refuse
        self.proto = proto
        self.listener = make_socket(proto, socket.AF_INET)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self.broken = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = make_socket(self.proto, socket.AF_INET)
            up.connect(("127.0.0.1", self.upstream))
            self.connections += 1
            threading.Thread(target=self._pump, args=(down, up, self.connections == 1),
                             daemon=True).start()

    def _pump(self, down: socket.socket, up: socket.socket, first: bool) -> None:
        """Both directions in one thread, so that the cut (a close) is this thread's alone:
        a socket closed while another thread blocks in recv on it sends no reset."""
        peer = {down: up, up: down}
        open_ = [down, up]
        try:
            while open_:
                readable, _, _ = select.select(open_, [], [], 20)
                if not readable:
                    return
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        peer[src].shutdown(socket.SHUT_WR)
                        open_.remove(src)
                        continue
                    peer[src].sendall(data)
                    if first:
                        self.after -= len(data)
                        if self.after <= 0:
                            self.broken.set()
                            self._cut(down, up)
                            return
        except OSError:
            return

    def _cut(self, down: socket.socket, up: socket.socket) -> None:
        if self.refuse:  # first, so that no reconnection slips in before it closes; shutdown,
            # not only close: it wakes the accepting thread (Linux)
            self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
        cut = [down] if self.silent else [down, up]
        for sock in cut:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        if self.silent:
            self.held.append(up)  # open, and silent from now on

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


def transfer_through_relay(direction: str, after: int, silent: bool, *amount: str,
                           refuse: bool = False, proto: str = "tcp",
                           ) -> tuple[Report, Report, BreakingRelay]:
    port = free_port()
    common = ["--proto", proto, "--direction", direction, "--timeout", "10",
              "--close-delay", "0", "--reconnect", *amount]  # fmt: skip
    server_args = parse_args(["server", "--listen", "127.0.0.1", "--port", str(port), *common])
    result: dict[str, Report] = {}
    server = threading.Thread(target=lambda: result.setdefault("server", run(server_args)))
    server.start()
    relay = BreakingRelay(port, after, silent, refuse, proto)
    try:
        client_args = parse_args(["client", "--connect", "127.0.0.1", "--port",
                                  str(relay.port), *common])
        client = run(client_args)
        server.join(20)
        assert not server.is_alive()
    finally:
        relay.close()
    return client, result["server"], relay


def test_payload_from_an_offset_is_the_rest_of_the_stream() -> None:
    whole = b"".join(payload_chunks(3, 3 * CHUNK + 5))
    for offset in (0, 1, CHUNK - 1, CHUNK, CHUNK + 7, 3 * CHUNK + 5):
        assert b"".join(payload_from(3, offset, 3 * CHUNK + 5)) == whole[offset:]
    unbounded = payload_from(3, 10)  # no total: the first chunk is cut, the next one whole
    assert next(unbounded) + next(unbounded) == b"".join(payload_chunks(3, 2 * CHUNK))[10:]


@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.parametrize("silent", [False, True], ids=["reset-both", "server-never-told"])
def test_a_broken_connection_resumes_and_the_stream_checks(direction: str,
                                                          silent: bool) -> None:
    total = 12 * CHUNK + 321
    client, server, relay = transfer_through_relay(direction, 5 * CHUNK, silent,
                                                   "--bytes", str(total))
    assert client.error is None and server.error is None, (client.error, server.error)
    assert relay.broken.is_set() and relay.connections == 2
    sender, receiver = (client, server) if direction == "upload" else (server, client)
    assert receiver.bytes == sender.bytes == total
    assert receiver.sha256 == sender.sha256 == payload_sha256(1, total)
    assert receiver.stream_intact is True and not receiver.ended_in_outage
    assert client.connections == 2 and server.connections == 2
    # The receiver resumed from where it was, inside the stream, not from 0 nor the end.
    (outage,) = receiver.outages
    assert 0 < outage["offset"] < total
    assert outage["broke_s"] <= outage["connected_s"] <= outage["data_s"]
    assert sender.outages[0]["offset"] == outage["offset"]
    if silent and direction == "download":
        # The server heard nothing of the break: the new connection replaced the old one.
        assert server.outages[0]["error"] == "a new connection replaced this one"
    # One goodput series across both connections, holding every byte.
    assert sum(count for _, count in receiver.series) == total


def test_mptcp_sockets_resume_the_same_way() -> None:
    try:
        make_socket("mptcp", socket.AF_INET).close()
    except WorkloadError as exc:
        pytest.skip(str(exc))
    total = 8 * CHUNK
    client, server, relay = transfer_through_relay("download", 3 * CHUNK, True,
                                                   "--bytes", str(total), proto="mptcp")
    assert client.error is None and server.error is None, (client.error, server.error)
    assert relay.connections == 2 and client.connections == server.connections == 2
    assert client.bytes == server.bytes == total
    assert client.sha256 == server.sha256 == payload_sha256(1, total)
    assert client.proto == "mptcp" and client.mptcp_fallback is False


def test_seconds_mode_resumes_and_ends_at_one_deadline() -> None:
    client, server, relay = transfer_through_relay("download", 2 * CHUNK, False,
                                                   "--seconds", "0.5")
    assert client.error is None and server.error is None, (client.error, server.error)
    assert relay.connections == 2
    assert client.bytes == server.bytes > 2 * CHUNK
    assert client.sha256 == server.sha256 == payload_sha256(1, client.bytes)


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_a_transfer_whose_time_runs_out_during_an_outage_ends_there(direction: str) -> None:
    client, server, relay = transfer_through_relay(direction, 2 * CHUNK, False,
                                                   "--seconds", "0.3", refuse=True)
    assert relay.broken.is_set() and relay.connections == 1
    # Both sides stopped waiting for a connection 2 s after the 0.3 s transfer, not after the
    # 10 s timeout, and say so without an error.
    assert client.error is None and server.error is None, (client.error, server.error)
    assert client.ended_in_outage and server.ended_in_outage
    assert client.connections == server.connections == 1
    sender, receiver = (client, server) if direction == "upload" else (server, client)
    assert sender.bytes >= receiver.bytes > 0
    # What the receiver has is the stream's beginning, intact.
    assert receiver.stream_intact is True
    assert receiver.sha256 == payload_sha256(1, receiver.bytes)
    assert sender.sha256 == payload_sha256(1, sender.bytes)


def test_without_a_server_the_client_gives_up_after_the_timeout() -> None:
    args = parse_args(["client", "--connect", "127.0.0.1", "--port", str(free_port()),
                       "--proto", "tcp", "--reconnect", "--timeout", "0.5"])
    report = run(args)
    assert report.error is not None and "no connection within 0.5 s" in report.error
    assert "ConnectionRefusedError" in report.error
    assert report.connections == 0


def test_reconnect_refuses_messages_and_our_stack() -> None:
    with pytest.raises(SystemExit):
        parse_args(["client", "--connect", "x", "--port", "1", "--reconnect", "--messages",
                    "100"])
    with pytest.raises(SystemExit):
        parse_args(["client", "--connect", "x", "--port", "1", "--reconnect", "--proto",
                    "userspace", "--stack-control", "/x"])
