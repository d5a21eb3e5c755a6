"""The application side of the stack daemon's API: real socket objects for programs such as
testbed.workload, so `sendall`, `recv`, `shutdown` and `close` work on our stack unchanged.

The socket returned by `connect` and `accept` is the Unix connection that carries the TCP
byte stream; `getsockname()`/`getpeername()` answer with the TCP connection's IPv4 endpoints
and `getsockopt(IPPROTO_TCP, TCP_CONGESTION)` with its congestion control, as a kernel TCP
socket would.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import Any

from testbed.runtime.requests import encode_request


class StackApiError(OSError):
    """The daemon refused a request (or is not there); the message is the daemon's."""


class StackSocket(socket.socket):
    """A Unix stream socket carrying one TCP connection of our stack."""

    tcp_local: tuple[str, int] = ("0.0.0.0", 0)
    tcp_remote: tuple[str, int] = ("0.0.0.0", 0)
    congestion: str | None = None

    def getsockname(self) -> tuple[str, int]:  # type: ignore[override]
        return self.tcp_local

    def getpeername(self) -> tuple[str, int]:  # type: ignore[override]
        return self.tcp_remote

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:  # type: ignore[override]
        if level == socket.IPPROTO_TCP and option == socket.TCP_CONGESTION:
            name = (self.congestion or "").encode()
            return name[:buflen] if buflen is not None else name
        if buflen is None:
            return super().getsockopt(level, option)
        return super().getsockopt(level, option, buflen)


def _request(control_path: str, request: dict[str, Any],
             timeout: float | None) -> tuple[socket.socket, dict[str, Any]]:
    """Send one request line and read the one reply line, byte by byte so that nothing of
    the stream that follows is consumed here."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(control_path)
        except OSError as exc:
            raise StackApiError(exc.errno,
                                f"stack daemon at {control_path}: {exc.strerror}") from None
        sock.sendall(encode_request(request))
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                raise StackApiError(f"stack daemon closed the connection after {request['op']}")
            line += byte
        reply = json.loads(line)
        if not reply.get("ok"):
            raise StackApiError(f"{request['op']}: {reply.get('error', 'refused')}")
    except BaseException:
        sock.close()
        raise
    return sock, reply


def _stream_socket(sock: socket.socket, reply: dict[str, Any]) -> StackSocket:
    stream = StackSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=sock.detach())
    stream.tcp_local = (reply["local"][0], int(reply["local"][1]))
    stream.tcp_remote = (reply["remote"][0], int(reply["remote"][1]))
    stream.congestion = reply.get("congestion")
    stream.settimeout(None)
    return stream


def connect(control_path: str, remote: str, port: int, local: str | None = None,
            congestion: str | None = None, timeout: float | None = None, *,
            scheduler: str | None = None, path_manager: str | None = None,
            checksum: bool | None = None) -> StackSocket:
    """Open an MPTCP connection (plain TCP if the peer does not speak MPTCP) through our
    stack; returns once it is established (or raises StackApiError with the reason: reset,
    timeout, no route, a name the stack does not have). Options left None are the daemon's."""
    request: dict[str, Any] = {"op": "connect", "remote": remote, "port": port}
    if local is not None:
        request["local"] = local
    options = {key: value for key, value in (
        ("congestion", congestion), ("scheduler", scheduler),
        ("path_manager", path_manager), ("checksum", checksum)) if value is not None}
    if options:
        request["options"] = options
    return _stream_socket(*_request(control_path, request, timeout))


class Listener:
    """A listening port of our stack, held open as long as this object is."""

    def __init__(self, control_path: str, sock: socket.socket, port: int) -> None:
        self.control_path = control_path
        self.port = port
        self._sock = sock

    def accept(self, timeout: float | None = None) -> tuple[StackSocket, tuple[str, int]]:
        """The next established connection, as `socket.accept()` returns it."""
        stream = _stream_socket(*_request(self.control_path,
                                          {"op": "accept", "port": self.port}, timeout))
        return stream, stream.getpeername()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listen(control_path: str, addr: str, port: int, backlog: int = 16,
           timeout: float | None = None) -> Listener:
    sock, _ = _request(control_path, {"op": "listen", "addr": addr, "port": port,
                                      "backlog": backlog}, timeout)
    return Listener(control_path, sock, port)


def accept(listener: Listener, timeout: float | None = None) -> tuple[StackSocket, tuple[str, int]]:
    return listener.accept(timeout)


def stats(control_path: str, timeout: float | None = 5.0) -> dict[str, Any]:
    """Connection states, per-connection stats() and the stack's counters."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect(control_path)
        sock.sendall(encode_request({"op": "stats"}))
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    result = json.loads(data)
    if not isinstance(result, dict):
        raise StackApiError("stats: the daemon's reply is not an object")
    return result


# -- path management (one request, one reply) ----------------------------------------------

def _command(control_path: str, request: dict[str, Any],
             timeout: float | None = 5.0) -> dict[str, Any]:
    sock, reply = _request(control_path, request, timeout)
    sock.close()
    return reply


def endpoint_add(control_path: str, addr: str, flags: Sequence[str] = (),
                 address_id: int | None = None) -> dict[str, Any]:
    """`ip mptcp endpoint add ADDR [id N] FLAGS...` on our stack; its record back."""
    request: dict[str, Any] = {"op": "endpoint", "action": "add", "addr": addr,
                               "flags": list(flags)}
    if address_id is not None:
        request["id"] = address_id
    return dict(_command(control_path, request)["endpoint"])


def endpoint_delete(control_path: str, addr: str | None = None,
                    address_id: int | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"op": "endpoint", "action": "delete"}
    if addr is not None:
        request["addr"] = addr
    if address_id is not None:
        request["id"] = address_id
    return dict(_command(control_path, request)["endpoint"])


def endpoint_change(control_path: str, addr: str, backup: bool) -> dict[str, Any]:
    """`ip mptcp endpoint change ADDR backup|nobackup`: MP_PRIO on its subflows."""
    return dict(_command(control_path, {"op": "endpoint", "action": "change", "addr": addr,
                                        "backup": backup})["endpoint"])


def endpoint_show(control_path: str) -> list[dict[str, Any]]:
    return list(_command(control_path, {"op": "endpoint", "action": "show"})["endpoints"])


def address_down(control_path: str, addr: str) -> None:
    """Withdraw a local address (as if its interface went down): REMOVE_ADDR, subflows
    closed, whatever the path manager does next."""
    _command(control_path, {"op": "address", "action": "down", "addr": addr})


def address_up(control_path: str, addr: str) -> None:
    _command(control_path, {"op": "address", "action": "up", "addr": addr})


def pm_command(control_path: str, action: str, token: int, **fields: Any) -> dict[str, Any]:
    """The external path manager's commands on the connection whose local token is `token`:
    create_subflow (local, remote[, port, backup]), destroy_subflow (local[, remote]),
    announce (id, addr), remove (id), set_backup (local, backup)."""
    if "address_id" in fields:
        fields["id"] = fields.pop("address_id")
    request = {"op": "pm", "action": action, "token": token,
               **{k: v for k, v in fields.items() if v is not None}}
    return _command(control_path, request)
