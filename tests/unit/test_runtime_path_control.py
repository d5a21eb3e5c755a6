"""The daemon's path management: request lines for endpoints, addresses and the external
path manager, answered by a real MPTCP core behind a real Unix socket; the rtnetlink
messages the daemon follows (decoded from messages pyroute2 encodes), and what a link
going down or up does to the core."""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from testbed.runtime import api
from testbed.runtime.daemon import StackDaemon
from testbed.runtime.netmon import (
    AddressChange,
    DefaultRouteChange,
    LinkChange,
    parse,
)
from testbed.runtime.requests import (
    AddressRequest,
    EndpointRequest,
    PmRequest,
    RequestError,
    encode_request,
    parse_request,
)
from testbed.runtime.routes import Interface
from testbed.stack.mptcp.connection import MptcpConfig
from testbed.stack.mptcp.stack import MptcpStack

A1, A2 = bytes([10, 0, 1, 1]), bytes([10, 0, 2, 1])


def test_path_requests_parse_to_values() -> None:
    assert parse_request(encode_request({
        "op": "endpoint", "action": "add", "addr": "10.0.2.1", "flags": ["subflow", "backup"],
        "id": 3})) == EndpointRequest("add", A2, 3, frozenset({"subflow", "backup"}))
    assert parse_request(b'{"op":"endpoint","action":"delete","id":3}') == \
        EndpointRequest("delete", None, 3)
    assert parse_request(b'{"op":"address","action":"down","addr":"10.0.1.1"}') == \
        AddressRequest("down", A1)
    assert parse_request(encode_request({
        "op": "pm", "action": "create_subflow", "token": 7, "local": "10.0.2.1",
        "remote": "10.0.1.1", "backup": True})) == \
        PmRequest("create_subflow", 7, A2, A1, backup=True)


@pytest.mark.parametrize(("request_", "message"), [
    ({"op": "endpoint", "action": "add", "addr": "10.0.2.1", "flags": ["subflows"]},
     "unknown flag.*subflows.*flags: subflow, signal, backup, fullmesh"),
    ({"op": "endpoint", "action": "flush"}, "unknown action 'flush'.*add, delete"),
    ({"op": "endpoint", "action": "change", "addr": "10.0.2.1"}, "backup .* required"),
    ({"op": "endpoint", "action": "delete"}, "addr or id is required"),
    ({"op": "endpoint", "action": "add", "addr": "10.0.2.1", "id": 300}, "not within 0..255"),
    ({"op": "address", "action": "gone", "addr": "10.0.2.1"}, "actions: down, up"),
    ({"op": "pm", "action": "announce", "token": 1, "id": 2}, "addr required"),
    ({"op": "pm", "action": "remove", "token": "x", "id": 2}, "token must be"),
    ({"op": "pm", "action": "set_backup", "token": 1, "local": "10.0.2.1", "backup": 1},
     "backup must be true or false"),
])
def test_bad_path_requests_are_refused_with_what_exists(request_: dict[str, object],
                                                        message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(encode_request(request_))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[StackDaemon, str, MptcpStack]]:
    path = str(tmp_path / "stack.sock")
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    control.bind(path)
    control.listen()
    ifaces = [Interface("eth0", bytes(6), ipaddress.IPv4Interface("10.0.1.1/24")),
              Interface("eth1", bytes(6), ipaddress.IPv4Interface("10.0.2.1/24"))]
    stack = MptcpStack(rng=random.Random(1), config=MptcpConfig(backup_addrs=(A2,)))
    d = StackDaemon(ifaces, {}, control, stack)
    thread = threading.Thread(target=d.run, daemon=True)
    thread.start()
    yield d, path, stack
    d.running = False
    d._wake_w.send(b"x")
    thread.join(timeout=5)
    d.close()


def test_endpoints_through_the_control_channel(
        daemon: tuple[StackDaemon, str, MptcpStack]) -> None:
    _, path, stack = daemon
    assert api.endpoint_show(path) == [
        {"id": 1, "addr": "10.0.2.1", "flags": ["backup", "subflow"], "up": True}]
    assert api.endpoint_change(path, "10.0.2.1", backup=False)["flags"] == ["subflow"]
    added = api.endpoint_add(path, "10.0.3.1", ["signal"], address_id=7)
    assert added == {"id": 7, "addr": "10.0.3.1", "flags": ["signal"], "up": True}
    with pytest.raises(api.StackApiError, match="exists already"):
        api.endpoint_add(path, "10.0.3.1", ["signal"])
    assert api.endpoint_delete(path, address_id=7)["addr"] == "10.0.3.1"
    with pytest.raises(api.StackApiError, match=r"no MPTCP endpoint id 7; endpoints: 1="):
        api.endpoint_delete(path, address_id=7)
    api.address_down(path, "10.0.2.1")
    assert not stack.address_is_up(A2) and api.endpoint_show(path)[0]["up"] is False
    api.address_up(path, "10.0.2.1")
    assert stack.address_is_up(A2)
    with pytest.raises(api.StackApiError, match="no MPTCP connection with local token 5"):
        api.pm_command(path, "remove", 5, address_id=1)
    assert api.stats(path)["endpoints"][0]["id"] == 1


def test_a_link_going_down_and_up_takes_its_address_down_and_up(
        daemon: tuple[StackDaemon, str, MptcpStack]) -> None:
    d, _, stack = daemon
    d.on_net_event(LinkChange(5, "eth1", up=False), 1.0)
    d.on_net_event(LinkChange(5, "eth1", up=False), 1.1)  # no change, nothing done
    d.on_net_event(LinkChange(6, "eth9", up=False), 1.1)  # not ours
    assert not stack.address_is_up(A2) and stack.address_is_up(A1)
    assert d.counters["LinkDown"] == 1 and stack.counters["MPTCPAddressDown"] == 1
    d.on_net_event(LinkChange(5, "eth1", up=True), 2.0)
    assert stack.address_is_up(A2) and d.counters["LinkUp"] == 1


def test_an_address_waits_for_its_default_route_before_it_is_adopted(
        daemon: tuple[StackDaemon, str, MptcpStack]) -> None:
    d, _, _ = daemon
    new = ipaddress.IPv4Interface("10.0.5.1/24")
    d.on_net_event(AddressChange(9, new, added=True), 1.0)
    d.on_net_event(AddressChange(9, ipaddress.IPv4Interface("10.0.1.1/24"), True), 1.0)
    assert list(d._adopting) == [(9, new)]  # our own address is not adopted again
    d.on_net_event(DefaultRouteChange(9, ipaddress.IPv4Address("10.0.5.254"), True), 1.1)
    assert d._adopting[(9, new)] == [1.1, ipaddress.IPv4Address("10.0.5.254")]
    d.on_net_event(AddressChange(9, new, added=False), 1.2)
    assert not d._adopting


def _encoded(msg: object) -> bytes:
    msg.encode()  # type: ignore[attr-defined]
    return bytes(msg.data)  # type: ignore[attr-defined]


def test_rtnetlink_messages_decode_to_events() -> None:
    link = ifinfmsg()
    link["header"]["type"] = 16  # RTM_NEWLINK
    link["index"], link["flags"] = 4, 0x1 | 0x40 | 0x10000
    link["attrs"] = [("IFLA_IFNAME", "client-eth0")]
    down = ifinfmsg()
    down["header"]["type"] = 16
    down["index"], down["flags"] = 4, 0x1  # up, but no carrier
    down["attrs"] = [("IFLA_IFNAME", "client-eth0")]
    addr = ifaddrmsg()
    addr["header"]["type"] = 20  # RTM_NEWADDR
    addr["family"], addr["prefixlen"], addr["index"] = socket.AF_INET, 24, 4
    addr["attrs"] = [("IFA_LOCAL", "10.0.5.1"), ("IFA_ADDRESS", "10.0.5.1")]
    route = rtmsg()
    route["header"]["type"] = 24  # RTM_NEWROUTE
    route["family"], route["dst_len"], route["table"] = socket.AF_INET, 0, 254
    route["attrs"] = [("RTA_TABLE", 254), ("RTA_GATEWAY", "10.0.5.254"), ("RTA_OIF", 4)]
    data = b"".join(_encoded(m) for m in (link, down, addr, route))
    assert parse(data) == [
        LinkChange(4, "client-eth0", True), LinkChange(4, "client-eth0", False),
        AddressChange(4, ipaddress.IPv4Interface("10.0.5.1/24"), True),
        DefaultRouteChange(4, ipaddress.IPv4Address("10.0.5.254"), True)]


def test_our_path_control_drives_the_daemon_as_ip_mptcp_drives_the_kernel(
        daemon: tuple[StackDaemon, str, MptcpStack]) -> None:
    from testbed.stacks.userspace import UserspacePathControl

    _, path, stack = daemon
    control = UserspacePathControl(path)
    control.set_backup("10.0.2.1", False)
    assert stack.endpoints[A2].flags == frozenset({"subflow"})
    control.add_endpoint("10.0.3.1", "eth2", ["signal"])
    control.add_endpoint("10.0.3.1", "eth2", ["signal"])  # there already: nothing more
    assert [e["addr"] for e in api.endpoint_show(path)] == ["10.0.2.1", "10.0.3.1"]
    control.withdraw_address("10.0.2.1")  # an endpoint: deleted, and the address down
    control.withdraw_address("10.0.1.1")  # the initial address: down (REMOVE_ADDR id 0)
    assert A2 not in stack.endpoints
    assert not stack.address_is_up(A2) and not stack.address_is_up(A1)
    assert not control.has_subflow_from("10.0.1.1")


def test_the_handover_connection_manager_uses_the_hosts_path_control() -> None:
    from experiments.handover import CELL_ADDR, CELL_INTF, WIFI_ADDR, WifiLost

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[object, ...]] = []

        def add_endpoint(self, addr: str, dev: str, flags: list[str]) -> None:
            self.calls.append(("add", addr, dev, tuple(flags)))

        def set_backup(self, addr: str, backup: bool) -> None:
            self.calls.append(("backup", addr, backup))

        def withdraw_address(self, addr: str, destroy_tcp: bool = True) -> None:
            self.calls.append(("withdraw", addr))

        def has_subflow_from(self, addr: str) -> bool:
            self.calls.append(("joined?", addr))
            return True

    class Emu:
        def __init__(self) -> None:
            self.path_controls = {"client": Recorder()}

    for mode, expected in [
            ("full", [("withdraw", WIFI_ADDR)]),
            ("backup", [("backup", CELL_ADDR, False), ("withdraw", WIFI_ADDR)]),
            ("single-path", [("add", CELL_ADDR, CELL_INTF, ("subflow",)),
                             ("joined?", CELL_ADDR), ("withdraw", WIFI_ADDR)])]:
        emu = Emu()
        WifiLost(mode)(emu)  # type: ignore[arg-type]
        assert emu.path_controls["client"].calls == expected, mode


def test_pm_requests_act_on_the_connection_named_by_its_token() -> None:
    """The external path manager's commands, dispatched as the daemon does, on a connection
    running over the in-memory network (tests/protocol)."""
    from testbed.errors import ParameterError
    from tests.protocol.test_mptcp_path_managers import B1, B2, setup

    run = setup(40, client=MptcpConfig(path_manager="userspace"),
                server=MptcpConfig(path_manager="userspace"), size=2_000_000)
    run.net.run(0.3)
    conn, token = run.conn, run.conn.local_token
    command = StackDaemon._pm_command
    reply = command(run.client.stack, PmRequest("create_subflow", token, A2, B1), run.net.now)
    assert reply["local_id"] == 1  # A2's id on the stack (no endpoint: one of its own)
    run.net.run(run.net.now + 0.3)
    assert run.pairs() == {(A1, B1), (A2, B1)}
    assert command(run.client.stack, PmRequest("set_backup", token, A2, backup=True),
                   run.net.now) == {"changed": 1}
    peer_token = run.sink.conns[0].local_token
    command(run.server.stack, PmRequest("announce", peer_token, address_id=4, addr=B2),
            run.net.now)
    run.net.run(run.net.now + 0.3)
    assert conn.peer_addresses == {4: (B2, 7000)} and run.server.stack.counters["MPPrioRx"] == 1
    assert command(run.client.stack, PmRequest("destroy_subflow", token, A2), run.net.now) \
        == {"closed": 1}
    with pytest.raises(ParameterError, match=r"no subflow from 10\.0\.2\.1"):
        command(run.client.stack, PmRequest("set_backup", token, A2, backup=False), run.net.now)
    command(run.client.stack, PmRequest("remove", token, address_id=1), run.net.now)
    run.run_to_end()
    assert run.client.stack.counters["RmAddrTx"] == 1
