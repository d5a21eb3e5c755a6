"""The daemon's request lines: every op parsed to its value, every bad line refused with a
message (never an exception other than RequestError)."""

from __future__ import annotations

import json

import pytest

from testbed.runtime.requests import (
    AcceptRequest,
    ConnectRequest,
    ListenRequest,
    RequestError,
    StatsRequest,
    encode_request,
    error_reply,
    ok_reply,
    parse_request,
)


def test_ops_parse_to_values() -> None:
    line = encode_request({"op": "connect", "remote": "10.0.3.1", "port": 5201,
                           "local": "10.0.2.1", "options": {"congestion": "cubic"}})
    assert parse_request(line) == ConnectRequest(bytes([10, 0, 3, 1]), 5201,
                                                 local=bytes([10, 0, 2, 1]), congestion="cubic")
    assert parse_request(b'{"op":"listen","port":80}') == ListenRequest(b"\0\0\0\0", 80, 16)
    assert parse_request(b'{"op":"accept","port":80}\n') == AcceptRequest(80)
    assert parse_request(b'{"op":"stats"}') == StatsRequest()


def test_connect_carries_the_mptcp_choices() -> None:
    line = encode_request({"op": "connect", "remote": "10.0.3.1", "port": 80, "options": {
        "congestion": "lia", "scheduler": "default", "path_manager": "default",
        "checksum": True}})
    assert parse_request(line) == ConnectRequest(bytes([10, 0, 3, 1]), 80, congestion="lia",
                                                 scheduler="default", path_manager="default",
                                                 checksum=True)


@pytest.mark.parametrize("line", [
    b"", b"not json", b"[]", b'"connect"', b'{"op":"bind"}', b'{"port":1}',
    b'{"op":"connect","remote":"10.0.3.1"}',                      # no port
    b'{"op":"connect","remote":"10.0.3.1","port":0}',
    b'{"op":"connect","remote":"10.0.3.1","port":65536}',
    b'{"op":"connect","remote":"10.0.3.1","port":true}',
    b'{"op":"connect","remote":"10.0.3.1","port":"80"}',
    b'{"op":"connect","remote":"::1","port":80}',
    b'{"op":"connect","remote":"10.0.3.1","port":80,"options":{"nagle":false}}',
    b'{"op":"connect","remote":"10.0.3.1","port":80,"options":{"congestion":""}}',
    b'{"op":"connect","remote":"10.0.3.1","port":80,"options":{"scheduler":3}}',
    b'{"op":"connect","remote":"10.0.3.1","port":80,"options":{"checksum":"yes"}}',
    b'{"op":"listen","port":80,"backlog":0}',
    b'{"op":"listen","port":80,"extra":1}',
    b'{"op":"stats","port":1}',
    b'\xff\xfe',
    b'{"op":"stats"' + b" " * 5000 + b"}",
])
def test_bad_lines_are_refused_with_a_message(line: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(line)
    assert str(info.value)


def test_replies_are_json_lines() -> None:
    assert json.loads(ok_reply(port=5)) == {"ok": True, "port": 5}
    assert json.loads(error_reply("no")) == {"ok": False, "error": "no"}
    assert ok_reply().endswith(b"\n") and b"\n" not in ok_reply()[:-1]
