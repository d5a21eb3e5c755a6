"""The stack daemon of one emulated host: packet sockets on the host's interfaces, the MPTCP
core (RFC 8684 over our TCP, falling back to plain TCP against a peer without MPTCP), the
application API on a Unix socket, and the event loop that feeds them with frames and time.

    python -m testbed.runtime.daemon --control /run/mptcp-testbed/HOST.sock
        --iface client-eth0=10.0.1.1/24,gw=10.0.1.254 [--iface ...] [--pcap FILE] [--seed N]
        [--congestion cubic|reno|lia|olia|balia] [--scheduler NAME] [--path-manager NAME]
        [--checksum] [--opportunistic] [--receive-buffer BYTES]
        [--subflow ADDR [--backup ADDR]] [--announce ADDR] [--fullmesh ADDR]
        [--ndiffports N] [--no-netlink]

The MPTCP endpoints follow `ip mptcp endpoint` flags: a client opens a subflow from every
--subflow address (flagged backup when also given as --backup; to every address the peer
announces too when also --fullmesh), either side announces every --announce address
(ADD_ADDR) to its peers.

The daemon follows the host's interfaces through rtnetlink (testbed.runtime.netmon): a link
going down or up makes its address go down or up in the MPTCP core (whose path manager then
withdraws it or joins from it again), and an IPv4 address the kernel gets on a host
interface later is adopted as at the start: taken from the kernel with its default route,
served on that interface. The control socket also takes path-management requests (endpoints,
addresses, the external path manager's commands: testbed.runtime.requests).

It prints `READY` (flushed) once the control socket listens. SIGTERM or SIGINT ends it: the
control socket is removed, every descriptor closed, and the interfaces go back to the kernel.

The frames come from AF_PACKET sockets bound to the host's own interfaces, which carry no
IPv4 address while the daemon runs (the driver removes it): the kernel then neither answers
ARP for our address nor resets our connections, and the frame reaches us one hop earlier
than through a bridge and a TAP, with nothing to create or remove.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import json
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from testbed.errors import ParameterError
from testbed.runtime.netmon import (
    AddressChange,
    DefaultRouteChange,
    LinkChange,
    NetEvent,
    NetlinkMonitor,
)
from testbed.runtime.network import NetworkLayer
from testbed.runtime.requests import (
    AcceptRequest,
    AddressRequest,
    ConnectRequest,
    EndpointRequest,
    ListenRequest,
    PmRequest,
    RequestError,
    StatsRequest,
    error_reply,
    ok_reply,
    parse_request,
)
from testbed.runtime.routes import Interface, parse_iface_spec
from testbed.stack.mptcp.connection import MptcpConfig
from testbed.stack.mptcp.pm import get_path_manager
from testbed.stack.mptcp.scheduler import get_scheduler
from testbed.stack.mptcp.stack import MptcpStack
from testbed.stack.tcp.congestion import get_congestion_control
from testbed.stack.tcp.connection import TcpConfig

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20: our own transmissions are not looped back to us
SIOCGIFMTU = 0x8921
FRAMES_PER_WAKEUP = 256  # bound the time one busy interface can keep the others waiting
APP_CHUNK = 256 * 1024
# Read more from a sending app only once TCP can take this much (Linux wakes a writer when a
# third of its send buffer is free): one ACK frees two segments, and a wakeup per ACK to read
# 2920 bytes doubled the daemon's CPU per byte on slow paths.
APP_WRITE_WAKE = 64 * 1024
FINISHED_KEPT = 64  # closed connections whose final state a stats query can still see
# How long an address the kernel got at run time waits for its default route before it is
# adopted without one (the route can only be added after the address, by whoever added it).
ADOPT_WAIT_S = 0.3


def _ip(addr: bytes) -> str:
    return str(ipaddress.IPv4Address(addr))


def open_packet_socket(ifname: str) -> tuple[socket.socket, bytes, int]:
    """A non-blocking packet socket on `ifname`, its MAC and its MTU."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         socket.htons(ETH_P_ALL))
    try:
        sock.bind((ifname, ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        # No PACKET_QDISC_BYPASS, although the qdisc layer costs a lock and an enqueue per
        # frame: bypassed frames skip the taps, so tcpdump on this host would never see what
        # our stack sends, and captures are how its packets are checked (by tshark).
        # Large buffers absorb a burst while Python is busy in the TCP core.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        mac = bytes(sock.getsockname()[4])
        ifreq = fcntl.ioctl(sock, SIOCGIFMTU, struct.pack("16s16x", ifname.encode()))
        (mtu,) = struct.unpack_from("i", ifreq, 16)
    except OSError:
        sock.close()
        raise
    return sock, mac, mtu


@dataclass
class AppConn:
    """One Unix connection of an application, through its life: request, then a listener,
    a pending connect or accept, a byte stream, or a stats reply."""

    sock: socket.socket
    state: str = "request"  # request | connecting | accepting | stream | listener | closing
    inbuf: bytearray = field(default_factory=bytearray)
    to_app: bytearray = field(default_factory=bytearray)
    conn: Any = None  # MptcpConnection
    listener: Any = None
    port: int = 0
    app_eof: bool = False  # the app shut down its sending side (or went away)
    sent_fin_to_app: bool = False
    interest: int = 0


class StackDaemon:
    def __init__(self, interfaces: list[Interface], sockets: dict[str, socket.socket],
                 control: socket.socket, tcp: Any, pcap: Any = None,
                 monitor: NetlinkMonitor | None = None) -> None:
        self.sockets = sockets
        self.monitor = monitor
        # Link state of the host's interfaces (by ifindex), and addresses the kernel got
        # that wait for their default route before we adopt them.
        self.link_up: dict[str, bool] = {iface.name: True for iface in interfaces}
        self._adopting: dict[tuple[int, ipaddress.IPv4Interface],
                             list[Any]] = {}  # -> [deadline, gateway]
        self.control = control
        self.tcp = tcp
        self.pcap = pcap
        tap = None if pcap is None else pcap.write
        self.net = NetworkLayer(interfaces, tcp, tap=tap)
        self.sel = selectors.DefaultSelector()
        self.apps: dict[int, AppConn] = {}
        self.listeners: dict[int, AppConn] = {}  # port -> the app holding the listener
        self.accepting: dict[int, deque[AppConn]] = {}
        self.finished: deque[dict[str, Any]] = deque(maxlen=FINISHED_KEPT)
        self.counters: dict[str, int] = dict.fromkeys(
            ("AppConnections", "AppBadRequests", "SendErrors", "LoopErrors", "LinkDown",
             "LinkUp", "AddressesAdopted", "PathRequests"), 0)
        self.running = True
        self._rxbuf = bytearray(65536)
        for name, sock in sockets.items():
            self.sel.register(sock, selectors.EVENT_READ, ("iface", name))
        self.sel.register(control, selectors.EVENT_READ, ("control", None))
        if monitor is not None:
            self.sel.register(monitor.sock, selectors.EVENT_READ, ("netlink", None))
        # A signal handler only sets a flag; this pipe wakes select() so the flag is seen
        # (PEP 475 would otherwise resume an idle select() with no timeout forever).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        while self.running:
            timeout = self._timeout(time.monotonic())
            for key, _mask in self.sel.select(timeout):
                kind, data = key.data
                try:
                    if kind == "iface":
                        self._read_frames(data, key.fileobj)  # type: ignore[arg-type]
                    elif kind == "wake":
                        self._wake_r.recv(4096)
                    elif kind == "control":
                        self._accept_app()
                    elif kind == "netlink":
                        self._read_netlink()
                    else:
                        self._app_event(data, _mask)
                except Exception as exc:  # the loop must survive any one event
                    self.counters["LoopErrors"] += 1
                    print(f"stack daemon: {kind}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    if kind == "app" and data.state != "closed":
                        # Tell the app rather than leave it waiting for a reply forever.
                        self._fail(data, f"internal error: {type(exc).__name__}: {exc}")
            now = time.monotonic()
            if self._adopting:
                self._adopt_due(now)
            if self.tcp is not None:
                due = self.tcp.next_timer()
                if due is not None and due <= now:
                    self.tcp.handle_timer(now)
            self.net.poll(now)
            self._service_apps(now)
            self._transmit(now)

    def _timeout(self, now: float) -> float | None:
        deadlines = [t for t in (self.net.next_timer(),
                                 self.tcp.next_timer() if self.tcp is not None else None)
                     if t is not None]
        deadlines += [due for due, _gateway in self._adopting.values()]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _read_frames(self, name: str, sock: socket.socket) -> None:
        view = memoryview(self._rxbuf)
        now = time.monotonic()
        for _ in range(FRAMES_PER_WAKEUP):
            try:
                n = sock.recv_into(self._rxbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:  # the link went down: netlink tells the rest
                    break
                raise
            now = time.monotonic()
            self.net.receive_frame(name, bytes(view[:n]), now)
            # Answer as we go, but only from the connection the frame reached: an ACK per
            # two segments and data clocked out by each ACK (a batch flushed once would turn
            # them into stretch ACKs and bursts). Applications are served once per batch,
            # by run() after this wakeup's events.
            self._transmit(now, after_input=True)

    def _transmit(self, now: float, after_input: bool = False) -> None:
        self.net.flush_tcp(now, after_input)
        for name, frame in self.net.frames_to_send():
            try:
                self.sockets[name].send(frame)
            except OSError as exc:
                # ENOBUFS/EAGAIN: the interface queue is full; a dropped frame is what a real
                # NIC does, and TCP recovers from it.
                self.counters["SendErrors"] += 1
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN):
                    raise

    # -- the host's interfaces ----------------------------------------------------------------

    def _read_netlink(self) -> None:
        if self.monitor is None:
            return
        now = time.monotonic()
        for event in self.monitor.read():
            self.on_net_event(event, now)

    def on_net_event(self, event: NetEvent, now: float) -> None:
        """What one interface or address change means for the stack."""
        if isinstance(event, LinkChange):
            name = event.ifname or _ifname(event.index)
            if name is None or name not in self.link_up or self.link_up[name] == event.up:
                return
            self.link_up[name] = event.up
            self.counters["LinkUp" if event.up else "LinkDown"] += 1
            self.net.set_link(name, event.up)
            iface = next((i for i in self.net.routes.interfaces if i.name == name), None)
            if iface is not None and self.tcp is not None and hasattr(self.tcp, "address_up"):
                if event.up:
                    self.tcp.address_up(iface.ip, now)
                else:
                    self.tcp.address_down(iface.ip, now)
        elif isinstance(event, AddressChange):
            key = (event.index, event.addr)
            if not event.added:
                self._adopting.pop(key, None)
            elif not self.net.routes.is_local(event.addr.ip.packed) \
                    and not event.addr.ip.is_loopback and key not in self._adopting:
                self._adopting[key] = [now + ADOPT_WAIT_S, None]
        elif isinstance(event, DefaultRouteChange) and event.added:
            for (index, addr), pending in self._adopting.items():
                if index == event.index and event.gateway in addr.network:
                    pending[0] = now  # its route is there: adopt it now
                    pending[1] = event.gateway

    def _adopt_due(self, now: float) -> None:
        for key, (due, gateway) in list(self._adopting.items()):
            if now >= due:
                del self._adopting[key]
                self.adopt(key[0], key[1], gateway, now)

    def adopt(self, index: int, addr: ipaddress.IPv4Interface,
              gateway: ipaddress.IPv4Address | None, now: float) -> None:
        """Take `addr` (and its default route, which goes with it) from the kernel and serve
        it ourselves, as the driver did with the addresses at the start."""
        name = _ifname(index)
        if name is None:
            return
        try:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                ipr.addr("del", index=index, address=str(addr.ip),
                         prefixlen=addr.network.prefixlen)
        except Exception as exc:  # NetlinkError is no OSError; the loop must go on
            print(f"stack daemon: cannot take {addr} from {name}: {exc}", file=sys.stderr)
            return
        if name not in self.sockets:
            sock, mac, mtu = open_packet_socket(name)
            self.sockets[name] = sock
            self.sel.register(sock, selectors.EVENT_READ, ("iface", name))
        else:
            sock = self.sockets[name]
            mac = bytes(sock.getsockname()[4])
            mtu = next((i.mtu for i in self.net.routes.interfaces if i.name == name), 1500)
        self.net.add_interface(Interface(name, mac, addr, gateway, mtu))
        self.link_up.setdefault(name, True)
        self.counters["AddressesAdopted"] += 1
        print(f"stack daemon: adopted {addr} on {name}"
              + (f" via {gateway}" if gateway else ""), file=sys.stderr)
        if self.tcp is not None and hasattr(self.tcp, "address_up"):
            self.tcp.address_up(addr.ip.packed, now)

    def _path_request(self, app: AppConn, request: Any, now: float) -> None:
        """Endpoints, addresses and the external path manager's commands."""
        self.counters["PathRequests"] += 1
        if self._adopting or self.monitor is not None:
            # An address added just before this request (by the same script) is ours first.
            self._read_netlink()
            self._adopt_due(now + ADOPT_WAIT_S if isinstance(request, EndpointRequest)
                            and request.action == "add" else now)
        stack = self.tcp
        if not hasattr(stack, "endpoints"):
            self._fail(app, "this daemon's core has no MPTCP path manager")
            return
        try:
            reply = self._path_action(stack, request, now)
        except (ParameterError, ValueError, KeyError) as exc:
            self._fail(app, str(exc))
            return
        app.to_app += ok_reply(**reply)
        app.state = "closing"

    def _path_action(self, stack: Any, request: Any, now: float) -> dict[str, Any]:
        if isinstance(request, EndpointRequest):
            if request.action == "add":
                endpoint = stack.add_endpoint(request.addr, request.flags, now,
                                              address_id=request.address_id)
            elif request.action == "delete":
                addr = request.addr
                if addr is None:
                    addr = stack.find_endpoint(address_id=request.address_id).addr
                endpoint = stack.delete_endpoint(addr, now)
            elif request.action == "change":
                endpoint = stack.change_endpoint(request.addr, bool(request.backup), now)
            else:
                return {"endpoints": [e.record() for e in stack.endpoints_for_all()]}
            return {"endpoint": endpoint.record()}
        if isinstance(request, AddressRequest):
            if request.action == "down":
                stack.address_down(request.addr, now)
            else:
                stack.address_up(request.addr, now)
            return {"addr": _ip(request.addr), "state": request.action}
        return self._pm_command(stack, request, now)

    @staticmethod
    def _pm_command(stack: Any, request: PmRequest, now: float) -> dict[str, Any]:
        conn = stack.tokens.get(request.token)
        if conn is None or conn.closed:
            raise ParameterError(f"pm {request.action}: no MPTCP connection with local token "
                                 f"{request.token}")

        def matching() -> list[Any]:
            found = [sf for sf in conn.subflows if sf.tcp.local_addr == request.local
                     and (request.remote is None or sf.tcp.remote_addr == request.remote)]
            if not found:
                raise ParameterError(f"pm {request.action}: the connection has no subflow "
                                     f"from {_ip(request.local)}")  # type: ignore[arg-type]
            return found

        if request.action == "create_subflow":
            sf = conn.open_subflow(request.local, request.remote,
                                   request.port or conn.remote_port, now,
                                   backup=bool(request.backup))
            if sf is None:
                raise ParameterError("pm create_subflow: the connection cannot join yet "
                                     "(not fully established, or fallen back to TCP)")
            return {"subflow_id": sf.subflow_id, "local_id": sf.local_id}
        if request.action == "destroy_subflow":
            closed = matching()
            for sf in closed:
                conn.close_subflow(sf, now)
            return {"closed": len(closed)}
        if request.action == "announce":
            conn.announce_address(request.address_id, request.addr, now)
            return {}
        if request.action == "remove":
            conn.remove_address(request.address_id, now)
            return {}
        changed = matching()
        for sf in changed:
            conn.set_backup(sf, bool(request.backup), now)
        return {"changed": len(changed)}

    # -- applications -----------------------------------------------------------------------

    def _accept_app(self) -> None:
        try:
            sock, _ = self.control.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        app = AppConn(sock)
        self.apps[sock.fileno()] = app
        self.counters["AppConnections"] += 1
        app.interest = selectors.EVENT_READ
        self.sel.register(sock, app.interest, ("app", app))

    def _app_event(self, app: AppConn, mask: int) -> None:
        now = time.monotonic()
        if mask & selectors.EVENT_WRITE:
            self._write_to_app(app)
        if mask & selectors.EVENT_READ and app.state != "closing":
            if app.state == "request":
                self._read_request(app, now)
            elif app.state == "stream":
                self._read_stream(app, now)
            else:
                # A listener or a waiting accept/connect: only a close means anything.
                try:
                    data = app.sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self._drop_app(app, now)

    def _read_request(self, app: AppConn, now: float) -> None:
        try:
            data = app.sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._drop_app(app, now)
            return
        app.inbuf += data
        line, sep, rest = bytes(app.inbuf).partition(b"\n")
        if not sep:
            if len(app.inbuf) > 4096:
                self._fail(app, "request line too long")
            return
        try:
            request = parse_request(line)
        except RequestError as exc:
            self._fail(app, str(exc))
            return
        if rest:
            # Data the app sent right after its request (before the reply) is stream data.
            app.inbuf = bytearray(rest)
        else:
            app.inbuf.clear()
        self._handle(app, request, now)

    def _handle(self, app: AppConn, request: Any, now: float) -> None:
        if isinstance(request, StatsRequest):
            app.to_app += json.dumps(self.stats(now)).encode() + b"\n"
            app.state = "closing"
        elif self.tcp is None:
            self._fail(app, "this daemon runs without the TCP core")
        elif isinstance(request, EndpointRequest | AddressRequest | PmRequest):
            self._path_request(app, request, now)
        elif isinstance(request, ConnectRequest):
            local = request.local
            if local is None:
                # The source address is the route's (RFC 1122 §3.3.4.3): its interface's.
                route = self.net.routes.lookup(request.remote)
                if route is None:
                    self._fail(app, f"connect: no route to {_ip(request.remote)}")
                    return
                local = route.src
            # The request's choices over the daemon's defaults; a name our registries do
            # not have is refused with the list of those they do.
            chosen = {key: value for key in ("congestion", "scheduler", "path_manager",
                                             "checksum")
                      if (value := getattr(request, key)) is not None}
            try:
                check_choices(**chosen)
                config = dataclasses.replace(self.tcp.config, **chosen)
                app.conn = self.tcp.connect(local, request.remote, request.port, now,
                                            local_port=request.local_port, config=config)
            except (ValueError, KeyError, OSError) as exc:
                self._fail(app, f"connect: {exc}")
                return
            app.state = "connecting"
        elif isinstance(request, ListenRequest):
            if request.port in self.listeners:
                self._fail(app, f"port {request.port} is already listening")
                return
            try:
                app.listener = self.tcp.listen(request.addr, request.port, request.backlog)
            except (ValueError, OSError) as exc:
                self._fail(app, f"listen: {exc}")
                return
            app.port = request.port
            app.state = "listener"
            self.listeners[request.port] = app
            app.to_app += ok_reply(port=request.port)
        elif isinstance(request, AcceptRequest):
            if request.port not in self.listeners:
                self._fail(app, f"nothing listens on port {request.port}")
                return
            app.port = request.port
            app.state = "accepting"
            self.accepting.setdefault(request.port, deque()).append(app)

    def _push_to_tcp(self, app: AppConn, now: float) -> None:
        """Hand TCP what the app sent and TCP could not take yet (or what came with the
        request line); `inbuf` is the app-to-TCP queue once the stream is open."""
        if app.inbuf:
            taken = app.conn.send(bytes(app.inbuf), now)
            del app.inbuf[:taken]

    def _read_stream(self, app: AppConn, now: float) -> None:
        self._push_to_tcp(app, now)
        space = app.conn.writable_space
        if space <= 0 or app.inbuf:
            return
        try:
            data = app.sock.recv(min(space, APP_CHUNK))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # shutdown(SHUT_WR) (or exit) by the app: our FIN (RFC 9293 §3.10.4 CLOSE).
            app.app_eof = True
            app.conn.close(now)
            return
        taken = app.conn.send(data, now)
        if taken < len(data):
            app.inbuf += data[taken:]

    def _write_to_app(self, app: AppConn) -> None:
        if not app.to_app:
            return
        try:
            n = app.sock.send(app.to_app)
        except BlockingIOError:
            return
        except OSError:
            # The application went away: reset its connection rather than keep the peer
            # sending into a void (what the kernel does when unread data is discarded).
            self._drop_app(app, time.monotonic())
            return
        del app.to_app[:n]

    def _service_apps(self, now: float) -> None:
        for port, waiters in list(self.accepting.items()):
            holder = self.listeners.get(port)
            while waiters and holder is not None:
                conn = holder.listener.accept()
                if conn is None:
                    break
                app = waiters.popleft()
                app.conn = conn
                app.state = "stream"
                app.to_app += ok_reply(**self._describe(conn))
        for app in list(self.apps.values()):
            self._service(app, now)

    def _service(self, app: AppConn, now: float) -> None:
        conn = app.conn
        if app.state == "connecting":
            if conn.established:
                app.state = "stream"
                app.to_app += ok_reply(**self._describe(conn))
            elif conn.closed:
                self._fail(app, f"connect failed: {conn.error or 'closed'}")
                self._finish(conn)
                app.conn = None
        if app.state == "stream":
            self._push_to_tcp(app, now)
            # Only pull from TCP what the app has taken: the TCP receive window then closes
            # when the app is slow, which is backpressure all the way to the peer.
            while not app.to_app and conn.readable:
                data = conn.recv(APP_CHUNK)
                if not data:
                    break
                app.to_app += data
                self._write_to_app(app)
            if not app.to_app and conn.at_eof and not app.sent_fin_to_app:
                app.sent_fin_to_app = True
                with contextlib.suppress(OSError):
                    app.sock.shutdown(socket.SHUT_WR)
            if conn.closed:
                if conn.error:
                    # A reset: the app sees the Unix socket close; the reason stays in stats.
                    self._finish(conn)
                    app.conn = None
                    self._close_app(app)
                    return
                if app.sent_fin_to_app and not app.to_app:
                    self._finish(conn)
                    app.conn = None
                    self._close_app(app)
                    return
        if app.state == "closing" and not app.to_app:
            self._close_app(app)
            return
        self._update_interest(app)

    def _update_interest(self, app: AppConn) -> None:
        want = 0
        if app.to_app:
            want |= selectors.EVENT_WRITE
        # Read from a stream only while TCP can take more (backpressure towards the app);
        # in the other waiting states a read can only be the app going away.
        streaming = (app.state == "stream" and not app.app_eof and app.conn is not None
                     and not app.inbuf and app.conn.writable_space >= self._write_wake(app))
        if streaming or app.state in ("request", "listener", "accepting", "connecting"):
            want |= selectors.EVENT_READ
        if want == app.interest:
            return
        if not want:
            self.sel.unregister(app.sock)
        elif not app.interest:
            self.sel.register(app.sock, want, ("app", app))
        else:
            self.sel.modify(app.sock, want, ("app", app))
        app.interest = want

    @staticmethod
    def _write_wake(app: AppConn) -> int:
        buffer = getattr(getattr(app.conn, "config", None), "send_buffer", 0)
        return max(1, min(APP_WRITE_WAKE, buffer // 4))

    def _fail(self, app: AppConn, message: str) -> None:
        self.counters["AppBadRequests"] += 1
        app.to_app += error_reply(message)
        app.state = "closing"

    def _drop_app(self, app: AppConn, now: float) -> None:
        """The app closed its Unix socket: release whatever it held."""
        if app.state == "listener":
            self.listeners.pop(app.port, None)
            app.listener.close()
        elif app.state == "accepting":
            waiters = self.accepting.get(app.port)
            if waiters is not None and app in waiters:
                waiters.remove(app)
        elif app.conn is not None and not app.conn.closed:
            app.conn.abort(now)
            self._finish(app.conn)
        self._close_app(app)

    def _close_app(self, app: AppConn) -> None:
        if app.interest:
            self.sel.unregister(app.sock)
            app.interest = 0
        self.apps.pop(app.sock.fileno(), None)
        app.state = "closed"
        app.sock.close()

    # -- statistics -------------------------------------------------------------------------

    def _describe(self, conn: Any) -> dict[str, Any]:
        return {
            "local": [_ip(conn.local_addr), conn.local_port],
            "remote": [_ip(conn.remote_addr), conn.remote_port],
            # An MPTCP connection without its own choice runs the stack's TCP default.
            "congestion": conn.config.congestion or self._tcp_core().config.congestion,
        }

    def _tcp_core(self) -> Any:
        """The TCP under MPTCP (the core itself when it is plain TCP)."""
        return getattr(self.tcp, "tcp", self.tcp)

    def _conn_record(self, conn: Any) -> dict[str, Any]:
        record = self._describe(conn)
        record["state"] = str(getattr(conn.state, "name", conn.state))
        record["error"] = conn.error
        record["stats"] = conn.stats()
        return record

    def _finish(self, conn: Any) -> None:
        self.finished.append(self._conn_record(conn))

    def stats(self, now: float) -> dict[str, Any]:
        live = [self._conn_record(app.conn) for app in self.apps.values()
                if app.conn is not None]
        return {
            "time": now,
            "connections": live,
            "finished": list(self.finished),
            "listening": sorted(self.listeners),
            "endpoints": [e.record() for e in self.tcp.endpoints_for_all()]
            if hasattr(self.tcp, "endpoints_for_all") else [],
            "links": dict(self.link_up),
            # TCP's MIB and, named like the kernel's MPTcpExt ones, MPTCP's.
            "counters": {**self.net.counters, **self.net.neighbour_counters(), **self.counters,
                         **(dict(self._tcp_core().counters) if self.tcp is not None else {}),
                         **(dict(self.tcp.counters) if self.tcp is not None else {})},
        }

    def close(self) -> None:
        for app in list(self.apps.values()):
            self._close_app(app)
        if self.monitor is not None:
            self.monitor.close()
        self.sel.close()
        for sock in self.sockets.values():
            sock.close()
        self.control.close()
        self._wake_r.close()
        self._wake_w.close()
        if self.pcap is not None:
            self.pcap.close()


def _ifname(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


def check_choices(congestion: str | None = None, scheduler: str | None = None,
                  path_manager: str | None = None, checksum: bool | None = None) -> None:
    """ParameterError naming what exists when a name is not in our registries (`checksum`
    is a flag: nothing to look up, taken so a request's choices pass as they come)."""
    if congestion is not None:
        get_congestion_control(congestion)
    if scheduler is not None:
        get_scheduler(scheduler)
    if path_manager is not None:
        get_path_manager(path_manager)


def make_stack(args: argparse.Namespace) -> MptcpStack:
    """The MPTCP core with the command line's defaults; ParameterError for a bad choice."""
    check_choices(args.congestion, args.scheduler, args.path_manager)
    addr = ipaddress.IPv4Address
    backup = tuple(addr(a).packed for a in args.backup)
    config = MptcpConfig(
        checksum=args.checksum, scheduler=args.scheduler, path_manager=args.path_manager,
        opportunistic=args.opportunistic,
        # A backup endpoint is a subflow endpoint too (`ip mptcp endpoint ... subflow backup`).
        extra_local_addrs=tuple(dict.fromkeys(
            (*(addr(a).packed for a in args.subflow), *backup))),
        backup_addrs=backup,
        announce_addrs=tuple(addr(a).packed for a in args.announce),
        ndiffports=args.ndiffports)
    tcp_config = TcpConfig(congestion=args.congestion) if args.congestion else TcpConfig()
    if args.receive_buffer is not None:
        # Fixed: initial = max turns auto-tuning off; plain TCP (fallback) gets the same.
        size = args.receive_buffer
        config = dataclasses.replace(config, receive_buffer=size, receive_buffer_max=size)
        tcp_config = dataclasses.replace(tcp_config, receive_buffer=size,
                                         receive_buffer_max=size)
    stack = MptcpStack(rng=random.Random(args.seed), config=config, tcp_config=tcp_config)
    for text in args.fullmesh:
        packed = addr(text).packed
        endpoint = stack.endpoints.get(packed)
        if endpoint is None:
            stack.add_endpoint(packed, {"fullmesh"}, 0.0)
        else:
            endpoint.flags = endpoint.flags | {"fullmesh"}
    return stack


def _receive_buffer(text: str) -> int:
    from testbed.stacks.base import RCVBUF_MAX_BYTES, RCVBUF_MIN_BYTES

    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if not RCVBUF_MIN_BYTES <= size <= RCVBUF_MAX_BYTES:
        raise argparse.ArgumentTypeError(
            f"{size} is outside {RCVBUF_MIN_BYTES}..{RCVBUF_MAX_BYTES} bytes")
    return size


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m testbed.runtime.daemon",
                                description=__doc__.split("\n")[0])
    p.add_argument("--control", required=True, help="Unix socket path of the application API")
    p.add_argument("--iface", action="append", required=True,
                   help="NAME=ADDR/PREFIX[,gw=GW]; repeat per interface")
    p.add_argument("--pcap", help="write every frame the stack sends and receives here")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--congestion", help="default congestion control of new connections "
                   "(lia, olia, balia couple an MPTCP connection's subflows)")
    p.add_argument("--scheduler", default="default", help="default MPTCP scheduler")
    p.add_argument("--path-manager", default="default", help="default MPTCP path manager")
    p.add_argument("--checksum", action="store_true", help="ask for DSS checksums")
    p.add_argument("--opportunistic", action="store_true",
                   help="opportunistic retransmission and penalisation of the slow subflow "
                   "when the peer's window blocks (Raiciu et al., NSDI 2012)")
    p.add_argument("--receive-buffer", type=_receive_buffer, metavar="BYTES",
                   help="a fixed connection-level receive buffer (no auto-tuning; plain TCP "
                   "connections get the same); default: 128 KiB auto-tuned up to 6 MiB")
    p.add_argument("--subflow", action="append", default=[], metavar="ADDR",
                   help="client: open an MPTCP subflow from ADDR too (repeatable)")
    p.add_argument("--backup", action="append", default=[], metavar="ADDR",
                   help="client: subflows from ADDR are backups (repeatable)")
    p.add_argument("--announce", action="append", default=[], metavar="ADDR",
                   help="server: announce ADDR to peers with ADD_ADDR (repeatable)")
    p.add_argument("--fullmesh", action="append", default=[], metavar="ADDR",
                   help="ADDR's endpoint is also fullmesh: it joins every address the peer "
                   "announces (repeatable)")
    p.add_argument("--ndiffports", type=int, default=2, metavar="N",
                   help="the ndiffports path manager's subflows per connection (default 2)")
    p.add_argument("--no-netlink", action="store_true",
                   help="do not follow the host's interfaces (links, addresses)")
    args = p.parse_args(argv)
    if not 1 <= args.ndiffports <= 8:
        p.error("--ndiffports must be within 1..8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = [parse_iface_spec(spec) for spec in args.iface]
        stack = make_stack(args)
    except ValueError as exc:  # ParameterError, or an endpoint that is not an address
        print(f"stack daemon: {exc}", file=sys.stderr)
        return 2
    sockets: dict[str, socket.socket] = {}
    interfaces = []
    control = None
    try:
        for name, addr, gateway in specs:
            sock, mac, mtu = open_packet_socket(name)
            sockets[name] = sock
            interfaces.append(Interface(name, mac, addr, gateway, mtu))
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        if os.path.exists(args.control):
            os.unlink(args.control)  # a stale socket of a daemon that was killed
        control.bind(args.control)
        control.listen(64)
    except OSError as exc:
        print(f"stack daemon: {exc}", file=sys.stderr)
        for sock in sockets.values():
            sock.close()
        if control is not None:
            control.close()
        return 1
    pcap = None
    if args.pcap:
        from testbed.runtime.pcap import PcapWriter
        pcap = PcapWriter(args.pcap)
    monitor = None
    if not args.no_netlink:
        try:
            monitor = NetlinkMonitor()
        except OSError as exc:
            print(f"stack daemon: no netlink ({exc}): interface changes are not followed",
                  file=sys.stderr)
    daemon = StackDaemon(interfaces, sockets, control, stack, pcap, monitor)

    def _stop(signum: int, frame: object) -> None:
        daemon.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.set_wakeup_fd(daemon._wake_w.fileno(), warn_on_full_buffer=False)
    print("READY", flush=True)
    try:
        daemon.run()
    finally:
        daemon.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
