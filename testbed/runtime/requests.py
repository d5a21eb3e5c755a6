"""The application protocol of the stack daemon: one JSON request line per Unix connection,
one JSON reply line, then (for connect and accept) the TCP byte stream on the same socket.

    {"op": "connect", "remote": "10.0.3.1", "port": 5201, "local": "10.0.1.1",
     "options": {"congestion": "lia", "scheduler": "default", "path_manager": "default",
                 "checksum": false}}
    {"op": "listen", "addr": "0.0.0.0", "port": 5201, "backlog": 16}
    {"op": "accept", "port": 5201}
    {"op": "stats"}

Path management (one reply each, then the Unix connection closes):

    {"op": "endpoint", "action": "add", "addr": "10.0.2.1", "flags": ["subflow", "backup"],
     "id": 3}                                   # id optional, as `ip mptcp endpoint add`
    {"op": "endpoint", "action": "delete", "addr": "10.0.2.1"}   # or "id": 3
    {"op": "endpoint", "action": "change", "addr": "10.0.2.1", "backup": false}
    {"op": "endpoint", "action": "show"}
    {"op": "address", "action": "down", "addr": "10.0.1.1"}      # withdraw; "up": back
    {"op": "pm", "action": "create_subflow", "token": 123, "local": "10.0.2.1",
     "remote": "10.0.3.1", "port": 5201, "backup": false}        # port: the connection's
    {"op": "pm", "action": "destroy_subflow", "token": 123, "local": "10.0.2.1",
     "remote": "10.0.3.1"}
    {"op": "pm", "action": "announce", "token": 123, "id": 5, "addr": "10.0.2.1"}
    {"op": "pm", "action": "remove", "token": 123, "id": 5}
    {"op": "pm", "action": "set_backup", "token": 123, "local": "10.0.2.1", "backup": true}

`token` is the connection's local token (`stats` shows it), as the kernel's userspace path
manager names connections; the `pm` commands work whatever path manager the connection runs.
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


ENDPOINT_ACTIONS = ("add", "delete", "change", "show")
ADDRESS_ACTIONS = ("down", "up")
PM_ACTIONS = ("create_subflow", "destroy_subflow", "announce", "remove", "set_backup")
ENDPOINT_FLAG_NAMES = ("subflow", "signal", "backup", "fullmesh")


@dataclass(frozen=True)
class EndpointRequest:
    """`ip mptcp endpoint add|delete|change|show` for our stack."""

    action: str
    addr: bytes | None = None
    address_id: int | None = None
    flags: frozenset[str] = frozenset()
    backup: bool | None = None


@dataclass(frozen=True)
class AddressRequest:
    """A local address withdrawn (down) or back (up), as if its interface went down or up."""

    action: str
    addr: bytes


@dataclass(frozen=True)
class PmRequest:
    """A command of the external path manager on one connection (by its local token)."""

    action: str
    token: int
    local: bytes | None = None
    remote: bytes | None = None
    port: int | None = None
    address_id: int | None = None
    addr: bytes | None = None
    backup: bool | None = None


Request = (ConnectRequest | ListenRequest | AcceptRequest | StatsRequest | EndpointRequest
           | AddressRequest | PmRequest)

_FIELDS: dict[str, set[str]] = {
    "connect": {"op", "remote", "port", "local", "local_port", "options"},
    "listen": {"op", "addr", "port", "backlog"},
    "accept": {"op", "port"},
    "stats": {"op"},
    "endpoint": {"op", "action", "addr", "id", "flags", "backup"},
    "address": {"op", "action", "addr"},
    "pm": {"op", "action", "token", "local", "remote", "port", "id", "addr", "backup"},
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
    if op == "endpoint":
        return _endpoint_request(data)
    if op == "address":
        action = _action(data, ADDRESS_ACTIONS)
        return AddressRequest(action, _address(data.get("addr"), "address: addr"))
    if op == "pm":
        return _pm_request(data)
    return StatsRequest()


def _action(data: dict[str, Any], actions: tuple[str, ...]) -> str:
    action = data.get("action")
    if action not in actions:
        raise RequestError(f"{data['op']}: unknown action {action!r}; actions: "
                           f"{', '.join(actions)}")
    return str(action)


def _optional(data: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        wanted = "true or false" if kind is bool else "an integer"
        raise RequestError(f"{what}: {key} must be {wanted}")
    return value


def _address_id(data: dict[str, Any], what: str) -> int | None:
    value = _optional(data, "id", int, what)
    if value is not None and not 0 <= value <= 255:
        raise RequestError(f"{what}: id {value} is not within 0..255")
    return value  # type: ignore[no-any-return]


def _endpoint_request(data: dict[str, Any]) -> EndpointRequest:
    action = _action(data, ENDPOINT_ACTIONS)
    what = f"endpoint {action}"
    addr = None if data.get("addr") is None else _address(data["addr"], f"{what}: addr")
    address_id = _address_id(data, what)
    flags = data.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise RequestError(f"{what}: flags must be a list of names")
    unknown = set(flags) - set(ENDPOINT_FLAG_NAMES)
    if unknown:
        raise RequestError(f"{what}: unknown flag(s) {', '.join(sorted(unknown))}; flags: "
                           f"{', '.join(ENDPOINT_FLAG_NAMES)}")
    backup = _optional(data, "backup", bool, what)
    if action in ("add", "change") and addr is None:
        raise RequestError(f"{what}: addr is required")
    if action == "delete" and addr is None and address_id is None:
        raise RequestError(f"{what}: addr or id is required")
    if action == "change" and backup is None:
        raise RequestError(f"{what}: backup (true or false) is required")
    return EndpointRequest(action, addr, address_id, frozenset(flags), backup)


def _pm_request(data: dict[str, Any]) -> PmRequest:
    action = _action(data, PM_ACTIONS)
    what = f"pm {action}"
    token = data.get("token")
    if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token <= 0xFFFFFFFF:
        raise RequestError(f"{what}: token must be the connection's 32-bit local token")
    local = None if data.get("local") is None else _address(data["local"], f"{what}: local")
    remote = None if data.get("remote") is None else _address(data["remote"],
                                                                f"{what}: remote")
    addr = None if data.get("addr") is None else _address(data["addr"], f"{what}: addr")
    port = None if data.get("port") is None else _port(data["port"], f"{what}: port")
    address_id = _address_id(data, what)
    backup = _optional(data, "backup", bool, what)
    needed = {"create_subflow": ("local", "remote"), "destroy_subflow": ("local",),
              "announce": ("id", "addr"), "remove": ("id",),
              "set_backup": ("local", "backup")}[action]
    given = {"local": local, "remote": remote, "id": address_id, "addr": addr,
             "backup": backup}
    missing = [key for key in needed if given[key] is None]
    if missing:
        raise RequestError(f"{what}: {', '.join(missing)} required")
    return PmRequest(action, token, local, remote, port, address_id, addr, backup)


def encode_request(request: dict[str, Any]) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def ok_reply(**fields: Any) -> bytes:
    return json.dumps({"ok": True, **fields}, separators=(",", ":")).encode() + b"\n"


def error_reply(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}, separators=(",", ":")).encode() + b"\n"
