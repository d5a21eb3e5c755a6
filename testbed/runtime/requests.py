"""The application protocol of the stack daemon: one JSON request line per Unix connection,
one JSON reply line, then (for connect and accept) the TCP byte stream on the same socket.

    {"op": "connect", "remote": "10.0.3.1", "port": 5201, "local": "10.0.1.1",
     "options": {"congestion": "lia", "scheduler": "default", "path_manager": "default",
                 "checksum": false}}
    {"op": "listen", "addr": "0.0.0.0", "port": 5201, "backlog": 16}
    {"op": "accept", "port": 5201}
    {"op": "stats"}

A listener lives as long as the Unix connection that asked for it, so an application that
dies takes its listener with it. Replies: {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

MAX_REQUEST_LINE = 4096  # a request is a few dozen bytes; more is a confused client
CONNECT_OPTIONS = ("congestion", "scheduler", "path_manager", "checksum")


class RequestError(ValueError):
    """A request line that is not a valid request; the reply carries the message."""


@dataclass(frozen=True)
class ConnectRequest:
    remote: bytes
    port: int
    local: bytes | None = None
    local_port: int | None = None
    congestion: str | None = None
    # MPTCP choices for this connection (None: the daemon's defaults).
    scheduler: str | None = None
    path_manager: str | None = None
    checksum: bool | None = None


@dataclass(frozen=True)
class ListenRequest:
    addr: bytes
    port: int
    backlog: int = 16


@dataclass(frozen=True)
class AcceptRequest:
    port: int


@dataclass(frozen=True)
class StatsRequest:
    pass


Request = ConnectRequest | ListenRequest | AcceptRequest | StatsRequest

_FIELDS: dict[str, set[str]] = {
    "connect": {"op", "remote", "port", "local", "local_port", "options"},
    "listen": {"op", "addr", "port", "backlog"},
    "accept": {"op", "port"},
    "stats": {"op"},
}


def _address(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a dotted IPv4 address string")
    try:
        return ipaddress.IPv4Address(value).packed
    except ValueError:
        raise RequestError(f"{what} {value!r} is not an IPv4 address") from None


def _port(value: Any, what: str, allow_zero: bool = False) -> int:
    # bool is an int in Python; `true` is not a port.
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{what} must be an integer")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise RequestError(f"{what} {value} is out of range")
    return value


def parse_request(line: bytes) -> Request:
    """One request line (without or with its newline) to a request; RequestError otherwise."""
    if len(line) > MAX_REQUEST_LINE:
        raise RequestError(f"request line longer than {MAX_REQUEST_LINE} bytes")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("request is not a JSON line") from None
    if not isinstance(data, dict):
        raise RequestError("request must be a JSON object")
    op = data.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise RequestError(f"unknown op {op!r}; ops: {', '.join(sorted(_FIELDS))}")
    unknown = set(data) - _FIELDS[op]
    if unknown:
        raise RequestError(f"{op}: unknown field(s) {', '.join(sorted(unknown))}")
    if op == "connect":
        options = data.get("options", {})
        if not isinstance(options, dict) or set(options) - set(CONNECT_OPTIONS):
            raise RequestError(f"connect: options may only hold {', '.join(CONNECT_OPTIONS)}")
        names: dict[str, str | None] = {}
        for key in ("congestion", "scheduler", "path_manager"):
            value = options.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise RequestError(f"connect: {key} must be a non-empty name")
            names[key] = value
        checksum = options.get("checksum")
        if checksum is not None and not isinstance(checksum, bool):
            raise RequestError("connect: checksum must be true or false")
        local = data.get("local")
        local_port = data.get("local_port")
        return ConnectRequest(
            remote=_address(data.get("remote"), "remote"),
            port=_port(data.get("port"), "port"),
            local=None if local is None else _address(local, "local"),
            local_port=None if local_port is None else _port(local_port, "local_port"),
            congestion=names["congestion"],
            scheduler=names["scheduler"],
            path_manager=names["path_manager"],
            checksum=checksum,
        )
    if op == "listen":
        backlog = data.get("backlog", 16)
        if not isinstance(backlog, int) or isinstance(backlog, bool) or not 1 <= backlog <= 1024:
            raise RequestError("listen: backlog must be an integer within 1..1024")
        return ListenRequest(_address(data.get("addr", "0.0.0.0"), "addr"),
                             _port(data.get("port"), "port"), backlog)
    if op == "accept":
        return AcceptRequest(_port(data.get("port"), "port"))
    return StatsRequest()


def encode_request(request: dict[str, Any]) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def ok_reply(**fields: Any) -> bytes:
    return json.dumps({"ok": True, **fields}, separators=(",", ":")).encode() + b"\n"


def error_reply(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}, separators=(",", ":")).encode() + b"\n"
