"""The workload over plain TCP on 127.0.0.1 (no root): integrity, seconds mode, reports on
failure, and the command-line contract (LISTENING, report file, exit status)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from testbed.workload import (
    CHUNK,
    MESSAGE_HEADER,
    Report,
    message_delays,
    parse_args,
    payload_chunks,
    payload_sha256,
    run,
    write_report,
)

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transfer_in_process(*extra: str, direction: str = "upload") -> tuple[Report, Report]:
    """Server in a thread, client in this thread; returns (client, server) reports."""
    port = free_port()
    common = ["--proto", "tcp", "--port", str(port), "--direction", direction, "--timeout", "10",
              "--close-delay", "0", *extra]  # fmt: skip
    server_args = parse_args(["server", "--listen", "127.0.0.1", *common])
    result: dict[str, Report] = {}
    server = threading.Thread(target=lambda: result.setdefault("server", run(server_args)))
    server.start()
    client_args = parse_args(["client", "--connect", "127.0.0.1", *common])
    # The server prints LISTENING before accept; retry the connect until it listens.
    for _ in range(100):
        client = run(client_args)
        if client.error is None or "Refused" not in client.error:
            break
        threading.Event().wait(0.02)
    server.join(15)
    return client, result["server"]


def test_payload_is_deterministic_and_seed_dependent() -> None:
    n = 3 * CHUNK + 17
    a = b"".join(payload_chunks(5, n))
    assert len(a) == n
    assert a == b"".join(payload_chunks(5, n))
    assert a[: CHUNK + 1] == b"".join(payload_chunks(5, CHUNK + 1))  # prefixes agree
    assert a != b"".join(payload_chunks(6, n))


def test_upload_bytes_and_sha256_match() -> None:
    n = 5 * 1024 * 1024 + 3
    client, server = transfer_in_process("--bytes", str(n), "--seed", "3")
    assert client.error is None and server.error is None
    assert (client.role, client.side, server.role, server.side) == (
        "sender", "client", "receiver", "server",
    )  # fmt: skip
    assert client.bytes == server.bytes == n
    assert client.sha256 == server.sha256 == payload_sha256(3, n)
    assert server.t_start is not None and server.t_end is not None
    assert server.t_start <= (server.t_last_data or 0) <= server.t_end
    assert server.goodput_mbps is not None and server.goodput_mbps > 0
    assert sum(b for _, b in server.series) == n
    assert all(t == pytest.approx(i * 0.1) for i, (t, _) in enumerate(server.series))


def test_download_direction_server_sends() -> None:
    client, server = transfer_in_process("--bytes", "100000", direction="download")
    assert (client.role, server.role) == ("receiver", "sender")
    assert client.sha256 == server.sha256 == payload_sha256(1, 100000)


def test_seconds_mode_runs_for_the_given_time() -> None:
    client, server = transfer_in_process("--seconds", "0.3")
    assert client.error is None and server.error is None
    assert client.bytes == server.bytes > 0
    assert client.sha256 == server.sha256 == payload_sha256(1, client.bytes)
    assert server.duration_s is not None and server.duration_s >= 0.25


def test_messages_arrive_on_schedule_with_their_delays() -> None:
    client, server = transfer_in_process("--seconds", "0.5", "--messages", "200",
                                         "--interval-ms", "20")
    assert client.error is None and server.error is None
    # 0.5 s at one message per 20 ms: messages due at 0, 20, ..., 480 ms.
    assert client.messages == {"size": 200, "interval_ms": 20.0, "sent": 25}
    assert server.bytes == client.bytes == 25 * 200 and server.sha256 == client.sha256
    assert server.messages is not None and server.messages["received"] == 25
    assert len(server.message_series) == 25
    # Over loopback a message arrives within a few ms of being due, never before it.
    delays = [delay for _, delay in server.message_series]
    assert min(delays) >= 0 and server.messages["delay_ms_p50"] < 20
    arrivals = [t for t, _ in server.message_series]
    assert arrivals == sorted(arrivals) and arrivals[-1] >= 0.45


def test_message_delay_summary() -> None:
    series = [[0.1 * i, float(d)] for i, d in enumerate([5, 1, 3, 100, 2])]
    summary = message_delays(series, 64, 0.02, sent_hint=6)
    assert summary["received"] == 5 and summary["sent"] == 6
    assert summary["delay_ms_p50"] == 3 and summary["delay_ms_max"] == 100
    assert summary["delay_ms_mean"] == pytest.approx(22.2)
    assert message_delays([], 64, 0.02)["received"] == 0


def test_messages_need_room_for_their_header() -> None:
    with pytest.raises(SystemExit):
        parse_args(["client", "--connect", "x", "--port", "1", "--messages",
                    str(MESSAGE_HEADER.size - 1)])


def test_zero_bytes() -> None:
    client, server = transfer_in_process("--bytes", "0")
    assert client.error is None and server.error is None
    assert server.bytes == 0 and server.sha256 == payload_sha256(1, 0)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.workload", *args]


def test_cli_transfer_with_reports(tmp_path: Path) -> None:
    port = str(free_port())
    common = ["--proto", "tcp", "--port", port, "--bytes", "2000000", "--seed", "9"]
    server = subprocess.Popen(
        _cli("server", "--listen", "127.0.0.1", "--report", str(tmp_path / "s.json"), *common),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "LISTENING\n"
        client = subprocess.run(
            _cli("client", "--connect", "127.0.0.1", "--report", str(tmp_path / "c.json"),
                 *common),
            capture_output=True, text=True, cwd=REPO, timeout=30,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    c = json.loads((tmp_path / "c.json").read_text())
    s = json.loads((tmp_path / "s.json").read_text())
    for key in ("role", "side", "proto", "bytes", "sha256", "t_start", "t_end",
                "goodput_mbps", "series", "error"):  # fmt: skip
        assert key in c and key in s
    assert c["sha256"] == s["sha256"] == payload_sha256(9, 2000000)
    assert s["error"] is None and s["proto"] == "tcp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "s.json"]  # no temp left


def test_refused_connection_reports_error(tmp_path: Path) -> None:
    report = tmp_path / "c.json"
    proc = subprocess.run(
        _cli("client", "--proto", "tcp", "--connect", "127.0.0.1", "--port", str(free_port()),
             "--report", str(report)),
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    doc = json.loads(report.read_text())
    assert "ConnectionRefusedError" in doc["error"]
    assert doc["bytes"] == 0 and doc["t_start"] is None and doc["goodput_mbps"] is None


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["server", "--port", "1"])  # no --listen
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["client", "--connect", "x", "--port", "1", "--bytes", "1", "--seconds", "1"])


def test_report_into_device_keeps_the_device() -> None:
    report = Report("sender", "client", "tcp", "upload", 1, None)
    write_report(report, os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
