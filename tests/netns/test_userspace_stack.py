"""Our stack daemon as the server host's IPv4 endpoint in a real emulation: Linux pings it
through a router (ARP, routing via the gateway, ICMP echo), Linux TCP and our TCP exchange
10 MB with equal sha256 in both directions, and nothing is left behind."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.emu.linkparams import LinkShaping
from testbed.emu.network import Emulation
from testbed.runtime import api
from testbed.stacks.base import StackConfig
from testbed.stacks.userspace import UserspacePreparedHost, UserspaceStack
from testbed.workload import payload_sha256
from tests.netns.nsutil import emulated, machine_unchanged
from tests.netns.test_emulation import ping_rtts
from topologies.two_path import CLIENT_ADDRS, SERVER_ADDR, TwoPathTopo

HAVE_TCP = importlib.util.find_spec("testbed.stack.tcp.stack") is not None
needs_tcp = pytest.mark.xfail(not HAVE_TCP, run=False, reason="the TCP core "
                              "(testbed.stack.tcp.stack.TcpStack) has not landed yet")
MB10 = 10 * 1000 * 1000
PATH = LinkShaping.symmetric(rate_mbps=1000, delay_ms=5)


@pytest.fixture
def ours(request: pytest.FixtureRequest,
         tmp_path: Path) -> Iterator[tuple[Emulation, UserspacePreparedHost, UserspaceStack]]:
    """The two-path emulation with our stack on one host: the server (10.0.3.1, behind the
    router) unless the test asks for the (two-homed) client."""
    where = getattr(request, "param", "server")
    driver = UserspaceStack(control_dir=tmp_path / "run", pcap_dir=tmp_path)
    with machine_unchanged(), emulated(TwoPathTopo(path1=PATH, path2=PATH), seed=3) as emu:
        host = emu.host(where)
        prepared = driver.prepare(host, [], StackConfig(congestion="reno"))
        assert isinstance(prepared, UserspacePreparedHost)
        emu.record.add_process(prepared.daemon_pid, f"stack daemon on {where}")
        yield emu, prepared, driver
        driver.release(host, prepared)
        # The kernel has its addresses back and the daemon its socket gone.
        assert host.run(["ip", "-4", "addr", "show"]).count("inet ") == 1 + len(
            prepared.addresses)
        assert not Path(prepared.control_path).exists()


def test_linux_pings_our_stack_through_the_router(ours: tuple[Emulation, UserspacePreparedHost,
                                                              UserspaceStack]) -> None:
    emu, prepared, _ = ours
    # The kernel gave the address up: nothing of it left for it to answer with.
    assert "inet " not in emu.host("server").run(["ip", "-4", "addr", "show", "server-eth0"])
    fastest, mean, _ = ping_rtts(emu, CLIENT_ADDRS[0], SERVER_ADDR, count=20)
    # 10 ms of configured path delay; our reply adds a Python loop's worth, not milliseconds.
    assert 9.5 <= fastest <= 13.0 and mean <= 20.0, (fastest, mean)
    counters = api.stats(prepared.control_path)["counters"]
    assert counters["IcmpInEchos"] >= 20
    assert counters["IcmpOutEchoReps"] == counters["IcmpInEchos"]
    # Who asks whom first depends on the router's ARP cache (the interface keeps its MAC, so
    # an entry from before the handover stays valid); either way ARP went through us.
    assert counters["ArpRepliesSent"] + counters["ArpResolved"] >= 1
    assert counters["LoopErrors"] == 0


def _workload(emu: Emulation, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
    return emu.popen(emu.host(host), [sys.executable, "-m", "testbed.workload", *argv],
                     "workload", stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _transfer(emu: Emulation, server_args: list[str], client_args: list[str],
              tmp: Path) -> tuple[dict[str, object], dict[str, object]]:
    server = _workload(emu, "server", ["server", "--listen", "0.0.0.0", "--port", "5201",
                                       "--report", str(tmp / "server.json"), "--seed", "9",
                                       "--timeout", "30", "--bytes", str(MB10), *server_args])
    assert server.stdout is not None
    assert b"LISTENING" in server.stdout.readline()
    client = _workload(emu, "client", ["client", "--connect", SERVER_ADDR, "--port", "5201",
                                       "--bytes", str(MB10), "--report", str(tmp / "client.json"),
                                       "--seed", "9", "--timeout", "30", *client_args])
    for proc in (client, server):
        proc.communicate(timeout=120)
    return (json.loads((tmp / "client.json").read_text()),
            json.loads((tmp / "server.json").read_text()))


@needs_tcp
def test_linux_client_uploads_10mb_to_our_stack(
        ours: tuple[Emulation, UserspacePreparedHost, UserspaceStack], tmp_path: Path) -> None:
    emu, prepared, _ = ours
    client, server = _transfer(emu, prepared.workload_args(), ["--proto", "tcp"], tmp_path)
    assert client["error"] is None and server["error"] is None, (client, server)
    assert server["bytes"] == MB10 and server["sha256"] == payload_sha256(9, MB10)
    print(f"\nLinux -> ours: {server['goodput_mbps']:.1f} Mbit/s over 10 MB")


@needs_tcp
@pytest.mark.parametrize("ours", ["client"], indirect=True)
def test_our_client_uploads_10mb_to_a_linux_server(
        ours: tuple[Emulation, UserspacePreparedHost, UserspaceStack], tmp_path: Path) -> None:
    emu, prepared, _ = ours
    client, server = _transfer(emu, ["--proto", "tcp"], prepared.workload_args(), tmp_path)
    assert client["error"] is None and server["error"] is None, (client, server)
    assert server["bytes"] == MB10 and server["sha256"] == payload_sha256(9, MB10)
    print(f"\nours -> Linux: {server['goodput_mbps']:.1f} Mbit/s over 10 MB")
    assert client["local"] == f"{CLIENT_ADDRS[0]}:" + str(client["local"]).split(":")[1]


@needs_tcp
def test_our_server_sends_10mb_to_a_linux_client(
        ours: tuple[Emulation, UserspacePreparedHost, UserspaceStack], tmp_path: Path) -> None:
    # --direction download: our stack on the server host sends, the Linux client receives.
    emu, prepared, _ = ours
    client, server = _transfer(emu, [*prepared.workload_args(), "--direction", "download"],
                               ["--proto", "tcp", "--direction", "download"], tmp_path)
    assert client["error"] is None and server["error"] is None, (client, server)
    assert client["bytes"] == MB10 and client["sha256"] == payload_sha256(9, MB10)
    print(f"\nours (server) -> Linux: {client['goodput_mbps']:.1f} Mbit/s over 10 MB")
