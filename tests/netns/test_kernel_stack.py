"""Kernel MPTCP and plain TCP between two real network namespaces joined by two veth pairs:
the `kernel`/`tcp` drivers, the workload, nstat deltas and the ss sampler end to end."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint, HostExec, StackConfig, get_stack
from testbed.stats import (
    counters_delta,
    max_established_subflows,
    mptcp_counters,
    nstat_snapshot,
    start_sampler,
    stop_sampler,
)
from testbed.workload import payload_sha256
from tests.netns.nsutil import NsHost, namespaces, source_route, veth_path

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("unshare", "nsenter", "ip", "ss", "nstat", "sysctl")
PORT = 5201
SIZE = 16 * 1024 * 1024

if os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS):
    pytest.skip("needs root and " + ", ".join(TOOLS), allow_module_level=True)


@pytest.fixture
def hosts() -> Iterator[tuple[NsHost, NsHost]]:
    """client (10.0.1.1, 10.0.2.1) and server (10.0.1.2, 10.0.2.2) over two veth pairs."""
    with namespaces("cli", "srv") as (cli, srv):
        for i in (1, 2):
            veth_path(cli, f"c{i}", f"10.0.{i}.1", srv, f"s{i}", f"10.0.{i}.2")
            source_route(cli, f"10.0.{i}.1", 100 + i, via=f"10.0.{i}.2", dev=f"c{i}")
        for h in (cli, srv):
            h.run(["ip", "link", "set", "lo", "up"])
        yield cli, srv


@dataclass
class Transfer:
    client: dict[str, Any]
    server: dict[str, Any]
    server_delta: dict[str, int]
    client_csv: Path
    server_csv: Path


def _wait_listening(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    if line.strip() != b"LISTENING":
        proc.kill()
        raise AssertionError(f"server did not start listening: {line!r}")


def run_transfer(cli: NsHost, srv: NsHost, proto: str, tmp: Path) -> Transfer:
    common = ["--port", str(PORT), "--bytes", str(SIZE), "--seed", "7", "--proto", proto,
              "--congestion", "cubic", "--timeout", "30"]  # fmt: skip
    py = [sys.executable, "-m", "testbed.workload"]
    samplers = [
        start_sampler(cli, tmp / "cli.csv", 0.05, PORT),
        start_sampler(srv, tmp / "srv.csv", 0.05, PORT),
    ]
    before = nstat_snapshot(srv)
    server = srv.popen(
        [*py, "server", "--listen", "0.0.0.0", "--report", str(tmp / "srv.json"), *common],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        _wait_listening(server)
        cli.run([*py, "client", "--connect", "10.0.1.2", "--report", str(tmp / "cli.json"),
                 *common])  # fmt: skip
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(5)
        if server.stdout is not None:
            server.stdout.close()
        # One more sampling period so the last established state is on file.
        time.sleep(0.1)
        for s in samplers:
            stop_sampler(s)
    after = nstat_snapshot(srv)
    return Transfer(
        client=json.loads((tmp / "cli.json").read_text()),
        server=json.loads((tmp / "srv.json").read_text()),
        server_delta=counters_delta(before, after),
        client_csv=tmp / "cli.csv",
        server_csv=tmp / "srv.csv",
    )


def _prepare(stack: str, cli: HostExec, srv: HostExec) -> None:
    driver = get_stack(stack)
    config = StackConfig(congestion="cubic", subflows=2, add_addr_accepted=2)
    driver.prepare(cli, [Endpoint("10.0.2.1", "c2", frozenset({"subflow"}))], config)
    driver.prepare(srv, [], config)


def test_kernel_mptcp_uses_both_paths(hosts: tuple[NsHost, NsHost], tmp_path: Path) -> None:
    cli, srv = hosts
    _prepare("kernel", cli, srv)
    assert "subflow" in cli.run(["ip", "mptcp", "endpoint", "show"])
    # Whether cubic may be a namespace default depends on the root namespace's allowed list;
    # force the default elsewhere so the check below proves the per-socket choice reaches
    # every subflow (the path taken when cubic is not allowed).
    for h in (cli, srv):
        h.run(["sysctl", "-q", "-w", "net.ipv4.tcp_congestion_control=reno"])
    t = run_transfer(cli, srv, "mptcp", tmp_path)

    expected = payload_sha256(7, SIZE)
    assert t.client["error"] is None and t.server["error"] is None
    assert t.client["bytes"] == t.server["bytes"] == SIZE
    assert t.client["sha256"] == t.server["sha256"] == expected
    assert t.client["mptcp_fallback"] is False
    mib = mptcp_counters(t.server_delta)
    assert mib["MPCapableSYNRX"] >= 1
    assert mib["MPJoinSynRx"] >= 1
    assert max_established_subflows(t.client_csv, port=PORT) == 2
    assert max_established_subflows(t.server_csv, port=PORT) == 2
    # cubic was asked per socket; every subflow must really run it (the namespace default
    # may be something else).
    rows = [r for r in _rows(t.client_csv) + _rows(t.server_csv) if r["kind"] == "subflow"]
    assert rows and {r["congestion"] for r in rows} == {"cubic"}
    print(f"mptcp 16 MiB: {t.server['goodput_mbps']:.0f} Mbit/s")


def test_plain_tcp_single_path(hosts: tuple[NsHost, NsHost], tmp_path: Path) -> None:
    cli, srv = hosts
    _prepare("tcp", cli, srv)
    t = run_transfer(cli, srv, "tcp", tmp_path)

    assert t.client["error"] is None and t.server["error"] is None
    assert t.client["sha256"] == t.server["sha256"] == payload_sha256(7, SIZE)
    assert max_established_subflows(t.client_csv, port=PORT) == 1
    assert mptcp_counters(t.server_delta)["MPCapableSYNRX"] == 0
    rows = [r for r in _rows(t.client_csv) if r["kind"] == "tcp"]
    assert rows and {r["congestion"] for r in rows} == {"cubic"}
    print(f"tcp 16 MiB: {t.server['goodput_mbps']:.0f} Mbit/s")


def _rows(path: Path) -> list[dict[str, str]]:
    from testbed.stats import read_samples

    return read_samples(path)


def test_bad_scheduler_refused_before_any_change(hosts: tuple[NsHost, NsHost]) -> None:
    cli, _ = hosts
    before = cli.run(["sysctl", "-n", "net.mptcp.scheduler"])
    with pytest.raises(ParameterError, match=r"scheduler 'no-such-sched'.*available: .*default"):
        get_stack("kernel").prepare(cli, [], StackConfig(scheduler="no-such-sched"))
    with pytest.raises(ParameterError, match=r"path manager 'nope'.*available: .*kernel"):
        get_stack("kernel").prepare(cli, [], StackConfig(path_manager="nope"))
    assert cli.run(["sysctl", "-n", "net.mptcp.scheduler"]) == before
    assert cli.run(["ip", "mptcp", "endpoint", "show"]).strip() == ""


def test_kernel_prepare_sets_namespace_state(hosts: tuple[NsHost, NsHost]) -> None:
    cli, _ = hosts
    prepared = get_stack("kernel").prepare(
        cli,
        [Endpoint("10.0.2.1", "c2", frozenset({"subflow", "backup"}))],
        StackConfig(congestion="reno", subflows=3, add_addr_accepted=1, checksum=True),
    )
    assert prepared.workload_args() == ["--proto", "mptcp", "--congestion", "reno"]
    # reno is always in the allowed list, so the namespace default follows it.
    assert not prepared.congestion_per_socket_only
    assert cli.run(["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).strip() == "reno"
    assert cli.run(["sysctl", "-n", "net.mptcp.checksum_enabled"]).strip() == "1"
    limits = cli.run(["ip", "mptcp", "limits", "show"])
    assert "subflows 3" in limits and "add_addr_accepted 1" in limits
    eps = cli.run(["ip", "mptcp", "endpoint", "show"]).strip().splitlines()
    assert len(eps) == 1 and "subflow" in eps[0] and "backup" in eps[0]
    # Preparing again replaces, never accumulates, the endpoints.
    get_stack("kernel").prepare(cli, [Endpoint("10.0.1.1", "c1")], StackConfig())
    eps = cli.run(["ip", "mptcp", "endpoint", "show"]).strip().splitlines()
    assert len(eps) == 1 and "10.0.1.1" in eps[0]


def test_workload_says_when_mptcp_is_disabled(hosts: tuple[NsHost, NsHost], tmp_path: Path) -> None:
    cli, _ = hosts
    cli.run(["sysctl", "-q", "-w", "net.mptcp.enabled=0"])
    report = tmp_path / "c.json"
    proc = cli.popen(
        [sys.executable, "-m", "testbed.workload", "client", "--proto", "mptcp",
         "--connect", "10.0.1.2", "--port", str(PORT), "--report", str(report)],
        stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and b"Traceback" not in err
    error = json.loads(report.read_text())["error"]
    assert "refused an MPTCP socket" in error and "net.mptcp.enabled=1" in error
