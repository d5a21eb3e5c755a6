"""The receive-buffer run parameter (`--set rcvbuf_kib=N`): validated before anything starts,
carried through StackConfig to the kernel drivers (the namespace's tcp_rmem, moderation off)
and to our daemon (a fixed connection-level buffer)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest

from experiments.aggregate import AggregateParams
from experiments.scenario import parse_overrides
from testbed.errors import EnvironmentProblem, ParameterError
from testbed.runtime.daemon import make_stack, parse_args
from testbed.stacks.base import StackConfig, get_stack
from testbed.stacks.kernel import set_receive_buffer
from testbed.stacks.userspace import daemon_choices


class RecordingHost:
    """A HostExec that answers sysctl reads from a dict, records writes, and claims to be in
    its own network namespace (or the runner's, with `own_namespace=False`)."""

    name = "h1"

    def __init__(self, own_namespace: bool = True) -> None:
        self.sysctls = {
            "net.mptcp.enabled": "1", "net.mptcp.available_path_managers": "kernel userspace",
            "net.mptcp.available_schedulers": "default", "net.mptcp.scheduler": "default",
            "net.ipv4.tcp_available_congestion_control": "reno cubic",
            "net.ipv4.tcp_allowed_congestion_control": "reno cubic",
            "net.ipv4.tcp_rmem": "4096 131072 6291456", "net.ipv4.tcp_moderate_rcvbuf": "1",
        }
        self.netns = "net:[4026599999]" if own_namespace else os.readlink("/proc/self/ns/net")
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        argv = list(argv)
        self.commands.append(argv)
        if argv[:2] == ["sysctl", "-n"]:
            return self.sysctls.get(argv[2], "")
        if argv[:3] == ["sysctl", "-q", "-w"]:
            key, _, value = argv[3].partition("=")
            self.sysctls[key] = value
        if argv[0] == "readlink":
            return self.netns + "\n"
        return ""

    def popen(self, argv: Sequence[str], **kwargs: Any) -> Any:
        raise AssertionError("no process is started here")


def test_rcvbuf_kib_is_typed_defaults_to_none_and_is_range_checked() -> None:
    assert parse_overrides(AggregateParams, []).rcvbuf_kib is None
    assert parse_overrides(AggregateParams, ["rcvbuf_kib=50"]).rcvbuf_kib == 50
    assert parse_overrides(AggregateParams, ["rcvbuf_kib=none"]).rcvbuf_kib is None
    for bad in ("0", "-4", "7", str(64 * 1024 + 1)):
        with pytest.raises(ParameterError, match=r"rcvbuf_kib must be within 8\.\.65536"):
            parse_overrides(AggregateParams, [f"rcvbuf_kib={bad}"])
    with pytest.raises(ParameterError, match="rcvbuf_kib=big: expected int"):
        parse_overrides(AggregateParams, ["rcvbuf_kib=big"])
    StackConfig(rcvbuf_bytes=8 << 10)
    StackConfig(rcvbuf_bytes=64 << 20)
    with pytest.raises(ParameterError, match="out of range"):
        StackConfig(rcvbuf_bytes=100)


@pytest.mark.parametrize("stack", ["kernel", "tcp"])
def test_the_kernel_drivers_fix_tcp_rmem_and_turn_moderation_off(stack: str) -> None:
    host = RecordingHost()
    prepared = get_stack(stack).prepare(host, [], StackConfig(rcvbuf_bytes=50 << 10))
    assert host.sysctls["net.ipv4.tcp_rmem"] == "4096 51200 51200"
    assert host.sysctls["net.ipv4.tcp_moderate_rcvbuf"] == "0"
    assert any("51200 bytes" in note for note in prepared.notes)


@pytest.mark.parametrize("stack", ["kernel", "tcp"])
def test_without_the_setting_the_kernel_keeps_its_auto_tuned_default(stack: str) -> None:
    host = RecordingHost()
    get_stack(stack).prepare(host, [], StackConfig())
    assert host.sysctls["net.ipv4.tcp_rmem"] == "4096 131072 6291456"
    assert host.sysctls["net.ipv4.tcp_moderate_rcvbuf"] == "1"
    assert not any("tcp_rmem" in " ".join(c) or "moderate" in " ".join(c)
                   for c in host.commands)


def test_a_host_in_the_runners_namespace_is_refused_before_any_sysctl_is_written() -> None:
    host = RecordingHost(own_namespace=False)
    with pytest.raises(EnvironmentProblem, match="initial network namespace"):
        set_receive_buffer(host, 100 << 10)
    assert not any(c[:3] == ["sysctl", "-q", "-w"] for c in host.commands)


def test_our_daemon_gets_a_fixed_connection_level_buffer() -> None:
    base = ["--control", "x", "--iface", "eth0=10.0.1.1/24"]
    argv = daemon_choices(StackConfig(rcvbuf_bytes=200 << 10))
    assert argv[argv.index("--receive-buffer") + 1] == str(200 << 10)
    stack = make_stack(parse_args([*base, *argv]))
    assert stack.config.receive_buffer == stack.config.receive_buffer_max == 200 << 10
    assert stack.tcp.config.receive_buffer == stack.tcp.config.receive_buffer_max == 200 << 10
    # None: the auto-tuned default (128 KiB growing to 6 MiB), and no flag at all.
    assert "--receive-buffer" not in daemon_choices(StackConfig())
    default = make_stack(parse_args(base))
    assert default.config.receive_buffer < default.config.receive_buffer_max


def test_the_daemon_refuses_a_receive_buffer_out_of_range(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    base = ["--control", "x", "--iface", "eth0=10.0.1.1/24"]
    for bad in ("12", "lots"):
        with pytest.raises(SystemExit):
            parse_args([*base, "--receive-buffer", bad])
        assert "--receive-buffer" in capsys.readouterr().err
