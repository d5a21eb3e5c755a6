"""What each path manager does on each event, over the in-memory network: endpoints (subflow,
signal, backup, fullmesh), `fullmesh`, `ndiffports`, `single-path`, `userspace` driven by
commands, and the host's addresses going down and coming up (REMOVE_ADDR, joins, MP_PRIO),
with the byte stream intact through all of it.

The client has one address per path (A1 on path 0, A2 on path 1, as a phone's WiFi and
cellular); the server has B1 and B2, both reachable over either path."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest

from testbed.errors import ParameterError
from testbed.stack.mptcp.connection import MptcpConfig, MptcpConnection
from testbed.stack.mptcp.options import AddAddr, MpPrio, RemoveAddr, mptcp_options
from testbed.stack.wire.ipv4 import parse_ipv4
from testbed.stack.wire.tcp import SYN, parse_tcp
from tests.protocol.mptcp_hosts import MptcpHost, MptcpSender, MptcpSink, route_by_address
from tests.protocol.netsim import Network, PathConditions

A1, A2 = bytes([10, 0, 1, 1]), bytes([10, 0, 2, 1])
B1, B2 = bytes([10, 0, 0, 2]), bytes([10, 0, 3, 2])
PORT = 7000


@dataclass
class Setup:
    net: Network
    client: MptcpHost
    server: MptcpHost
    sender: MptcpSender
    sink: MptcpSink
    paths: list[str]
    data: bytes

    @property
    def conn(self) -> MptcpConnection:
        assert self.sender.conn is not None
        return self.sender.conn

    def run_to_end(self, limit: float = 200.0) -> None:
        self.net.run(limit, stop=lambda: self.sender.conn is not None and self.sender.conn.closed
                     and not self.server.stack.connections())
        assert self.sink.sha256() == hashlib.sha256(self.data).hexdigest()

    def pairs(self) -> set[tuple[bytes, bytes]]:
        """(local, remote) address of the client's live subflows."""
        return {(sf.tcp.local_addr, sf.tcp.remote_addr) for sf in self.conn.subflows}

    def path_down(self, index: int) -> None:
        for direction in ("ab", "ba"):
            self.net.set_conditions(self.paths[index], direction,  # type: ignore[arg-type]
                                    PathConditions(delay_s=0.01, down=True))

    def syns_from(self, addr: bytes) -> int:
        return sum(1 for e in self.net.trace if e.fate == "sent"
                   and parse_ipv4(e.packet).src == addr
                   and parse_tcp(parse_ipv4(e.packet).payload, addr,
                                 parse_ipv4(e.packet).dst).flags == SYN)

    def signals(self, kind: type) -> list[object]:
        out = []
        for e in self.net.trace:
            if e.fate != "sent":
                continue
            ip = parse_ipv4(e.packet)
            seg = parse_tcp(ip.payload, ip.src, ip.dst)
            out += [o for o in mptcp_options(seg.options) if isinstance(o, kind)]
        return out


def setup(seed: int, *, client: MptcpConfig, server: MptcpConfig | None = None,
          size: int = 2_000_000, delays: tuple[float, float] = (0.005, 0.03)) -> Setup:
    net = Network(seed)
    c = MptcpHost("client", [A1, A2], seed=seed + 1, config=client)
    s = MptcpHost("server", [B1, B2], seed=seed + 2, config=server)
    net.attach(c)
    net.attach(s)
    paths = [net.connect("client", "server", PathConditions(delay_s=d, rate_bps=20e6,
                                                           queue_packets=80))
             for d in delays]
    net.route = route_by_address({A1: paths[0], A2: paths[1]})
    sink = MptcpSink(s.stack.listen(B1, PORT))
    s.apps.append(sink)
    data = random.Random(seed).randbytes(size)
    sender = MptcpSender(B1, PORT, data)
    c.apps.append(sender)
    return Setup(net, c, s, sender, sink, paths, data)


# -- the in-kernel path manager's endpoints ---------------------------------------------------

def test_kernel_subflow_endpoint_joins_the_peer_with_its_endpoint_id() -> None:
    run = setup(1, client=MptcpConfig(path_manager="kernel", extra_local_addrs=(A2,)))
    run.net.run(0.3)
    assert run.pairs() == {(A1, B1), (A2, B1)}
    joined = next(sf for sf in run.conn.subflows if sf.join)
    assert joined.local_id == run.client.stack.endpoints[A2].address_id == 1
    run.run_to_end()


def test_kernel_fullmesh_endpoint_joins_every_announced_address_too() -> None:
    run = setup(2, client=MptcpConfig(path_manager="kernel"),
                server=MptcpConfig(announce_addrs=(B2,)))
    run.client.stack.add_endpoint(A2, {"subflow", "fullmesh"}, 0.0)
    run.net.run(0.5)
    # The fullmesh endpoint joins both server addresses; with a fullmesh endpoint the
    # announced address is joined from it alone (pm_kernel.c), not from A1.
    assert run.pairs() == {(A1, B1), (A2, B1), (A2, B2)}
    assert run.server.stack.counters["AddAddrTx"] == 1
    run.run_to_end()


def test_fullmesh_opens_a_subflow_for_every_pair_of_addresses() -> None:
    run = setup(3, client=MptcpConfig(path_manager="fullmesh", extra_local_addrs=(A2,)),
                server=MptcpConfig(announce_addrs=(B2,)))
    run.net.run(0.5)
    assert run.pairs() == {(A1, B1), (A1, B2), (A2, B1), (A2, B2)}
    run.run_to_end()
    assert run.client.stack.counters["MPJoinSynTx"] == 3


@pytest.mark.parametrize("n", [1, 4])
def test_ndiffports_opens_n_subflows_over_the_initial_pair(n: int) -> None:
    run = setup(4, client=MptcpConfig(path_manager="ndiffports", ndiffports=n,
                                      extra_local_addrs=(A2,)))
    run.net.run(0.3)
    subflows = run.conn.subflows
    assert len(subflows) == n and run.pairs() == {(A1, B1)}
    assert len({sf.tcp.local_port for sf in subflows}) == n
    run.run_to_end()
    assert run.syns_from(A2) == 0


def test_userspace_does_nothing_by_itself_and_follows_commands() -> None:
    run = setup(5, client=MptcpConfig(path_manager="userspace", extra_local_addrs=(A2,)),
                server=MptcpConfig(path_manager="userspace", announce_addrs=(B2,)))
    run.net.run(0.3)
    assert run.pairs() == {(A1, B1)}
    assert not run.signals(AddAddr)
    conn = run.conn
    second = conn.open_subflow(A2, B1, PORT, run.net.now, backup=True)
    assert second is not None
    run.net.run(run.net.now + 0.3)
    assert run.pairs() == {(A1, B1), (A2, B1)}
    peer = run.sink.conns[0]
    assert next(sf for sf in peer.subflows if sf.join).peer_backup  # MP_JOIN B bit
    conn.set_backup(second, False, run.net.now)
    peer.announce_address(9, B2, run.net.now)
    run.net.run(run.net.now + 0.3)
    assert run.client.stack.counters["MPPrioTx"] == 1
    assert run.server.stack.counters["MPPrioRx"] == 1
    assert conn.peer_addresses == {9: (B2, PORT)}
    assert run.pairs() == {(A1, B1), (A2, B1)}  # announced, not joined: nobody asked
    conn.close_subflow(second, run.net.now)
    conn.remove_address(second.local_id, run.net.now)
    run.run_to_end()
    assert [o.address_ids for o in run.signals(RemoveAddr)] == [(1,)]  # type: ignore[attr-defined]
    assert run.client.stack.counters["MPJoinSynTx"] == 1


# -- the host's addresses ------------------------------------------------------------------

def test_an_address_going_down_is_withdrawn_and_the_transfer_moves() -> None:
    run = setup(6, client=MptcpConfig(extra_local_addrs=(A2,)))
    run.net.run(0.4)
    assert run.pairs() == {(A1, B1), (A2, B1)}
    run.path_down(0)
    run.client.stack.address_down(A1, run.net.now)
    assert run.pairs() == {(A2, B1)}  # the initial subflow closed at once
    run.run_to_end()
    assert [o.address_ids for o in run.signals(RemoveAddr)] == [(0,)]  # type: ignore[attr-defined]
    assert run.server.stack.counters["RmAddr"] == 1
    assert run.server.stack.counters["RmSubflow"] == 1
    assert run.conn.counters.bytes_reinjected > 0  # ours, from the closed subflow


def test_backup_is_idle_until_the_primary_address_is_gone_then_promoted() -> None:
    run = setup(7, client=MptcpConfig(backup_addrs=(A2,)), size=4_000_000)
    run.net.run(0.6)
    peer = run.sink.conns[0]
    backup = next(sf for sf in peer.subflows if sf.join)
    assert backup.peer_backup and backup.tcp.counters.segs_out <= 4
    sent_before = run.net.counters(run.paths[1], "ba").sent
    run.path_down(0)
    run.client.stack.address_down(A1, run.net.now)
    run.run_to_end()
    # MP_PRIO (B=0) on the backup once it is the only one left, and the data moved there.
    assert [o.backup for o in run.signals(MpPrio)] == [False]  # type: ignore[attr-defined]
    assert run.server.stack.counters["MPPrioRx"] == 1
    assert run.net.counters(run.paths[1], "ba").sent - sent_before > 1000


def test_single_path_joins_only_once_the_active_address_is_gone() -> None:
    run = setup(8, client=MptcpConfig(path_manager="single-path", extra_local_addrs=(A2,)))
    run.net.run(0.6)
    assert run.pairs() == {(A1, B1)} and run.syns_from(A2) == 0
    run.path_down(0)
    run.client.stack.address_down(A1, run.net.now)
    # The join is under way; the dead subflow is kept until it works (its reset could
    # otherwise reach the server before the join and leave it without any subflow).
    assert run.pairs() == {(A1, B1), (A2, B1)}
    run.net.run(run.net.now + 0.3)
    assert run.pairs() == {(A2, B1)}
    run.run_to_end()
    assert run.syns_from(A2) == 1
    # REMOVE_ADDR of the initial address waited for the new subflow to carry it.
    assert [o.address_ids for o in run.signals(RemoveAddr)] == [(0,)]  # type: ignore[attr-defined]
    assert run.server.stack.counters["RmSubflow"] == 1


def test_endpoints_added_at_run_time_join_and_announce() -> None:
    run = setup(9, client=MptcpConfig(), size=3_000_000)
    run.net.run(0.3)
    assert run.pairs() == {(A1, B1)}
    run.client.stack.add_endpoint(A2, {"subflow"}, run.net.now)
    run.server.stack.add_endpoint(B2, {"signal"}, run.net.now)
    run.net.run(run.net.now + 0.4)
    assert run.pairs() == {(A1, B1), (A2, B1), (A1, B2)}
    run.client.stack.change_endpoint(A2, True, run.net.now)  # `ip mptcp endpoint change`
    run.net.run(run.net.now + 0.1)
    assert run.server.stack.counters["MPPrioRx"] == 1
    run.client.stack.delete_endpoint(A2, run.net.now)
    assert run.pairs() == {(A1, B1), (A1, B2)}
    run.run_to_end()
    assert [o.address_ids for o in run.signals(RemoveAddr)] == [(1,)]  # type: ignore[attr-defined]


def test_an_endpoint_address_back_up_is_joined_again() -> None:
    run = setup(10, client=MptcpConfig(extra_local_addrs=(A2,)), size=4_000_000)
    run.net.run(0.3)
    run.path_down(1)
    run.client.stack.address_down(A2, run.net.now)
    assert run.pairs() == {(A1, B1)}
    run.net.run(run.net.now + 0.3)
    run.net.set_conditions(run.paths[1], "ab", PathConditions(delay_s=0.03, rate_bps=20e6))
    run.net.set_conditions(run.paths[1], "ba", PathConditions(delay_s=0.03, rate_bps=20e6))
    run.client.stack.address_up(A2, run.net.now)
    run.net.run(run.net.now + 0.4)
    assert run.pairs() == {(A1, B1), (A2, B1)}
    run.run_to_end()
    assert run.syns_from(A2) == 2
    assert run.client.stack.counters["MPTCPAddressDown"] == 1
    assert run.client.stack.counters["MPTCPAddressUp"] == 1


def test_the_last_subflow_waits_for_its_address_to_come_back() -> None:
    run = setup(11, client=MptcpConfig(), size=1_000_000)
    run.net.run(0.2)
    run.path_down(0)
    run.client.stack.address_down(A1, run.net.now)
    assert run.pairs() == {(A1, B1)} and not run.conn.closed  # nothing else to move to
    run.net.run(run.net.now + 1.0)
    for direction in ("ab", "ba"):
        run.net.set_conditions(run.paths[0], direction,  # type: ignore[arg-type]
                               PathConditions(delay_s=0.005, rate_bps=20e6))
    run.client.stack.address_up(A1, run.net.now)
    run.run_to_end()
    assert not run.signals(RemoveAddr)


def test_endpoint_commands_refuse_what_does_not_exist() -> None:
    host = MptcpHost("h", [A1], seed=1, config=MptcpConfig(extra_local_addrs=(A2,)))
    with pytest.raises(ParameterError,
                       match=r"no MPTCP endpoint 10\.0\.3\.2; endpoints: 1=10\.0\.2\.1"):
        host.stack.delete_endpoint(B2, 0.0)
    with pytest.raises(ParameterError, match="exists already"):
        host.stack.add_endpoint(A2, {"subflow"}, 0.0)
    with pytest.raises(ParameterError, match="unknown flag"):
        host.stack.add_endpoint(B1, {"subflows"}, 0.0)
    with pytest.raises(ParameterError, match="id 1 is already in use"):
        host.stack.add_endpoint(B1, {"signal"}, 0.0, address_id=1)


def test_a_download_survives_the_client_losing_its_address_in_each_mode() -> None:
    """The handover's direction: the server sends; the client's REMOVE_ADDR makes the server
    close its subflow on the dead path and reinject what it carried."""
    from tests.protocol.mptcp_hosts import MptcpReader

    modes = {"full": MptcpConfig(extra_local_addrs=(A2,)),
             "backup": MptcpConfig(backup_addrs=(A2,)),
             "single-path": MptcpConfig(path_manager="single-path", extra_local_addrs=(A2,))}
    for seed, (mode, config) in enumerate(modes.items(), start=20):
        run = setup(seed, client=config, size=1000)
        reply = random.Random(seed).randbytes(3_000_000)
        run.sink.reply = reply
        run.sink.close_on_eof = True
        reader = MptcpReader(run.sender)
        run.client.apps.append(reader)
        run.net.run(0.8)
        assert 0 < len(reader.received) < len(reply), mode
        run.path_down(0)
        run.client.stack.address_down(A1, run.net.now)
        run.run_to_end()
        assert hashlib.sha256(reader.received).digest() == hashlib.sha256(reply).digest(), mode
        assert run.server.stack.counters["RmAddr"] == 1, mode
        assert run.server.stack.counters["MPTCPReinject"] >= 1, mode


def test_a_subflow_kept_for_its_dead_address_is_withdrawn_once_another_joins() -> None:
    """The kernel path manager with nothing to move to keeps the dead subflow; a `subflow`
    endpoint added later (a connection manager's single-path) joins, and then the dead
    address is withdrawn by itself."""
    run = setup(12, client=MptcpConfig(), size=3_000_000)
    run.net.run(0.4)
    run.path_down(0)
    run.client.stack.address_down(A1, run.net.now)
    run.net.run(run.net.now + 0.2)
    assert run.pairs() == {(A1, B1)} and not run.signals(RemoveAddr)
    run.client.stack.add_endpoint(A2, {"subflow"}, run.net.now)
    run.net.run(run.net.now + 0.5)
    assert run.pairs() == {(A2, B1)}
    run.run_to_end()
    assert [o.address_ids for o in run.signals(RemoveAddr)] == [(0,)]  # type: ignore[attr-defined]
    assert run.server.stack.counters["RmSubflow"] == 1


def test_kernel_fullmesh_without_subflow_joins_only_announced_addresses() -> None:
    run = setup(13, client=MptcpConfig(path_manager="kernel"),
                server=MptcpConfig(announce_addrs=(B2,)))
    run.client.stack.add_endpoint(A2, {"fullmesh"}, 0.0)
    run.net.run(0.5)
    assert run.pairs() == {(A1, B1), (A2, B2)}
    run.run_to_end()
