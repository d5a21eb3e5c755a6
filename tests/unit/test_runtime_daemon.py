"""The daemon's application side over a real Unix socket, with a fake TCP core: the request
reply, bytes both ways, shutdown as FIN and FIN as shutdown, errors, and the stats query."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from testbed.errors import ParameterError
from testbed.runtime import api
from testbed.runtime.daemon import StackDaemon, make_stack, parse_args
from testbed.runtime.routes import Interface
from testbed.stack.mptcp.stack import MptcpStack
from testbed.stats import CSV_FIELDS


@dataclass(frozen=True)
class FakeConfig:
    congestion: str = "reno"


class FakeConn:
    config = FakeConfig()

    def __init__(self, remote: bytes, port: int) -> None:
        self.local_addr, self.local_port = bytes([10, 0, 1, 1]), 40000
        self.remote_addr, self.remote_port = remote, port
        self.sent = bytearray()
        self.rx = bytearray()
        self.peer_fin = False
        self.fin_sent = False
        self.established, self.closed = True, False
        self.error: str | None = None
        self.state = "ESTABLISHED"
        self.writable_space = 1000  # small, so the daemon must hold back the rest

    @property
    def readable(self) -> bool:
        return bool(self.rx)

    @property
    def at_eof(self) -> bool:
        return self.peer_fin and not self.rx

    def send(self, data: bytes, now: float) -> int:
        taken = data[:self.writable_space]
        self.sent += taken
        return len(taken)

    def recv(self, max_bytes: int) -> bytes:
        data = bytes(self.rx[:max_bytes])
        del self.rx[:max_bytes]
        return data

    def close(self, now: float) -> None:
        self.fin_sent = True

    def abort(self, now: float) -> None:
        self.closed, self.error = True, "aborted"

    def stats(self) -> dict[str, Any]:
        return {"cwnd": 14480, "srtt_ms": 1.0}


class FakeTcp:
    def __init__(self) -> None:
        self.conns: list[FakeConn] = []
        self.config = FakeConfig()
        self.counters = {"ActiveOpens": 0}

    def connect(self, local: bytes, remote: bytes, port: int, now: float,
                local_port: int | None = None, config: Any = None) -> FakeConn:
        if port == 9:
            raise ValueError("no route")
        self.counters["ActiveOpens"] += 1
        self.conns.append(FakeConn(remote, port))
        return self.conns[-1]

    def receive(self, *args: Any) -> None: ...

    def segments_to_send(self, now: float) -> list[Any]:
        return []

    def next_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None: ...


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[StackDaemon, str]]:
    path = str(tmp_path / "stack.sock")
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    control.bind(path)
    control.listen()
    # An interface without a socket: the fake core sends no segments, but connect needs a
    # route to choose its source address from.
    iface = Interface("eth0", bytes(6), ipaddress.IPv4Interface("10.0.1.1/24"),
                      ipaddress.IPv4Address("10.0.1.254"))
    d = StackDaemon([iface], {}, control, FakeTcp())
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    yield d, path
    d.running = False
    d._wake_w.send(b"x")
    thread.join(timeout=5)
    d.close()


def poke(d: StackDaemon) -> None:
    """Wake the loop after the test changed the fake core behind its back (a full wake
    socket already means a wakeup is pending)."""
    with contextlib.suppress(BlockingIOError):
        d._wake_w.send(b"x")
    time.sleep(0.001)  # yield to the daemon thread; nothing here measures time


def test_connect_streams_both_ways_with_fin_semantics(daemon: tuple[StackDaemon, str]) -> None:
    d, path = daemon
    sock = api.connect(path, "10.0.3.1", 5201, congestion="reno", timeout=5)
    assert sock.getpeername() == ("10.0.3.1", 5201)
    assert sock.getsockname() == ("10.0.1.1", 40000)
    conn = d.tcp.conns[0]
    sock.sendall(b"a" * 3000)
    # TCP takes 1000 bytes per call here; the daemon keeps the rest until there is room.
    while len(conn.sent) < 3000:
        poke(d)
    sock.shutdown(socket.SHUT_WR)
    while not conn.fin_sent:
        poke(d)
    assert bytes(conn.sent) == b"a" * 3000
    conn.rx += b"reply"
    conn.peer_fin = True
    poke(d)
    data = b""
    while chunk := sock.recv(100):
        data += chunk
    assert data == b"reply"  # then EOF: the peer's FIN became our shutdown(SHUT_WR)
    sock.close()


def test_refusals_come_back_as_errors(daemon: tuple[StackDaemon, str]) -> None:
    _, path = daemon
    with pytest.raises(api.StackApiError, match="no route"):
        api.connect(path, "10.0.3.1", 9, timeout=5)
    with pytest.raises(api.StackApiError, match=r"internal error.*listen"):
        api.listen(path, "0.0.0.0", 80, timeout=5)  # FakeTcp has no listen: the app is told
    with pytest.raises(api.StackApiError, match="nothing listens"):
        api.Listener(path, socket.socket(), 81).accept(timeout=5)
    with pytest.raises(api.StackApiError, match="unknown op"):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        raw.sendall(b'{"op":"bind"}\n')
        raise api.StackApiError(raw.makefile("rb").readline().decode())


def test_stats_lists_connections_and_counters(daemon: tuple[StackDaemon, str]) -> None:
    _, path = daemon
    sock = api.connect(path, "10.0.3.1", 5201, timeout=5)
    result = api.stats(path)
    [record] = result["connections"]
    assert record["remote"] == ["10.0.3.1", 5201] and record["stats"]["cwnd"] == 14480
    assert result["counters"]["ActiveOpens"] == 1 and result["counters"]["LoopErrors"] == 0
    sock.close()


def test_a_connect_naming_no_scheduler_we_have_is_refused_with_the_list(
        daemon: tuple[StackDaemon, str]) -> None:
    d, path = daemon
    with pytest.raises(api.StackApiError, match=r"unknown MPTCP scheduler 'fastest'.*default"):
        api.connect(path, "10.0.3.1", 5201, scheduler="fastest", timeout=5)
    with pytest.raises(api.StackApiError, match=r"unknown congestion control 'vegas'.*lia"):
        api.connect(path, "10.0.3.1", 5201, congestion="vegas", timeout=5)
    assert d.tcp.conns == []


def test_the_command_line_makes_an_mptcp_core_with_the_endpoints() -> None:
    args = parse_args(["--control", "x", "--iface", "eth0=10.0.1.1/24",
                       "--congestion", "olia", "--subflow", "10.0.2.1", "--backup", "10.0.4.1",
                       "--announce", "10.0.3.2", "--checksum"])
    stack = make_stack(args)
    assert isinstance(stack, MptcpStack)
    assert stack.tcp.config.congestion == "olia"
    assert stack.config.extra_local_addrs == (bytes([10, 0, 2, 1]), bytes([10, 0, 4, 1]))
    assert stack.config.backup_addrs == (bytes([10, 0, 4, 1]),)
    assert stack.config.announce_addrs == (bytes([10, 0, 3, 2]),)
    assert stack.config.checksum is True


@pytest.mark.parametrize(("option", "value", "listed"), [
    ("--congestion", "vegas", "balia"), ("--scheduler", "fastest", "default"),
    ("--path-manager", "binder", "fullmesh")])
def test_a_bad_name_on_the_command_line_is_an_error_listing_the_names(
        option: str, value: str, listed: str) -> None:
    args = parse_args(["--control", "x", "--iface", "eth0=10.0.1.1/24", option, value])
    with pytest.raises(ParameterError, match=f"{value}.*available: .*{listed}"):
        make_stack(args)


def test_the_driver_hands_endpoints_and_choices_to_the_daemon() -> None:
    from testbed.stacks.base import Endpoint, StackConfig
    from testbed.stacks.userspace import daemon_choices, endpoint_args

    endpoints = [Endpoint("10.0.2.1", "client-eth1", frozenset({"subflow", "fullmesh"})),
                 Endpoint("10.0.4.1", "client-eth2", frozenset({"subflow", "backup"})),
                 Endpoint("10.0.3.2", "server-eth1", frozenset({"signal"}))]
    argv = endpoint_args(endpoints)
    args = parse_args(["--control", "x", "--iface", "eth0=10.0.1.1/24", *argv,
                       *daemon_choices(StackConfig(congestion="lia", checksum=True))])
    stack = make_stack(args)
    assert stack.config.extra_local_addrs == (bytes([10, 0, 2, 1]), bytes([10, 0, 4, 1]))
    assert stack.config.backup_addrs == (bytes([10, 0, 4, 1]),)
    assert stack.config.announce_addrs == (bytes([10, 0, 3, 2]),)
    assert stack.config.path_manager == "kernel"  # ours of the kernel's name and behaviour
    assert {bytes(e.addr): set(e.flags) for e in stack.endpoints.values()} == {
        bytes([10, 0, 2, 1]): {"subflow", "fullmesh"},
        bytes([10, 0, 4, 1]): {"subflow", "backup"}, bytes([10, 0, 3, 2]): {"signal"}}
    assert stack.config.checksum and stack.tcp.config.congestion == "lia"
    with pytest.raises(ParameterError, match="userspace stack: unknown MPTCP scheduler"):
        daemon_choices(StackConfig(scheduler="weighted"))


def test_the_schedulers_and_the_opportunistic_switch_reach_the_daemons_stack() -> None:
    from testbed.stacks.base import StackConfig
    from testbed.stacks.kernel import check_kernel_config
    from testbed.stacks.userspace import daemon_choices

    base = ["--control", "x", "--iface", "eth0=10.0.1.1/24"]
    for name in ("roundrobin", "rr", "redundant", "blest", "ecf"):
        config = StackConfig(scheduler=name, opportunistic=True)
        stack = make_stack(parse_args([*base, *daemon_choices(config)]))
        assert stack.config.scheduler == name and stack.config.opportunistic is True
    # Off unless asked for, as in Linux.
    stack = make_stack(parse_args([*base, *daemon_choices(StackConfig())]))
    assert stack.config.opportunistic is False
    assert "--opportunistic" not in daemon_choices(StackConfig())
    # The kernel has no such knob: refused, naming what to do instead.
    check_kernel_config(StackConfig())
    with pytest.raises(ParameterError, match=r"kernel stack: opportunistic.*--stack userspace"):
        check_kernel_config(StackConfig(opportunistic=True))


class _FakeHost:
    """`ip` output of a client whose second interface was made first (lower index) but
    whose first default route is the other one's."""

    name = "client"
    OUTPUT: ClassVar[dict[tuple[str, ...], str]] = {
        ("ip", "-4", "route", "show", "default"):
            "default via 10.0.1.254 dev client-eth0 metric 100 \n"
            "default via 10.0.2.254 dev client-eth1 metric 101 \n",
        ("ip", "-o", "-4", "addr", "show"):
            "1: lo    inet 127.0.0.1/8 scope host lo\n"
            "2: client-eth1    inet 10.0.2.1/24 scope global client-eth1\n"
            "3: client-eth0    inet 10.0.1.1/24 scope global client-eth0\n",
    }

    def run(self, argv: list[str], check: bool = True) -> str:
        return self.OUTPUT[tuple(argv)]


def test_the_daemon_gets_the_kernels_preferred_interface_first() -> None:
    """The daemon sends through the first interface with a gateway: it must be the one the
    kernel's lowest-metric default route names, or our initial subflow takes another path
    than Linux's would (it did, with interfaces made in another order than their paths)."""
    from testbed.stacks.userspace import host_addresses

    found = host_addresses(_FakeHost())  # type: ignore[arg-type]
    assert [(a.dev, a.addr, a.gateway, a.metric) for a in found] == [
        ("client-eth0", "10.0.1.1/24", "10.0.1.254", 100),
        ("client-eth1", "10.0.2.1/24", "10.0.2.254", 101)]


def _subflow(local: str, port: int, initial: bool) -> dict[str, Any]:
    return {"state": "ESTABLISHED", "cwnd": 14480, "ssthresh": 28960, "mss": 1448,
            "srtt_ms": 20.0, "bytes_acked": 1000, "local_addr": local, "local_port": port,
            "remote_addr": "10.0.3.1", "remote_port": 5201, "initial": initial,
            "fully_established": True}


def test_the_sampler_writes_a_row_per_subflow_with_the_connections_token() -> None:
    from testbed.sampler import stack_sample
    from testbed.stats import max_established_subflows, sample_to_row

    conn = {"local": ["10.0.1.1", 40000], "remote": ["10.0.3.1", 5201],
            "congestion": "lia", "state": "ESTABLISHED",
            "stats": {"fallback": False, "local_token": 0xBEEF, "bytes_acked": 2000,
                      "subflows": [_subflow("10.0.1.1", 40000, True),
                                   _subflow("10.0.2.1", 40001, False)]}}
    rows = stack_sample(conn, 1.0)
    assert [(r.kind, r.token, r.mptcp_flags) for r in rows] == [
        ("mptcp", "beef", None), ("subflow", "beef", "Me"), ("subflow", "beef", "Je")]
    assert rows[0].subflows == 1 and rows[2].local == "10.0.2.1:40001" and rows[2].cwnd == 10
    assert rows[2].congestion == "lia"
    csv_rows = [{k: "" if v is None else str(v) for k, v in
                 zip(CSV_FIELDS, sample_to_row(r), strict=True)} for r in rows]
    assert max_established_subflows(csv_rows, port=5201) == 2
    # Fallen back to TCP: one plain row, as ss shows a TCP socket.
    conn["stats"] = {"fallback": True, "subflows": [_subflow("10.0.1.1", 40000, True)]}
    assert [r.kind for r in stack_sample(conn, 1.0)] == ["tcp"]
