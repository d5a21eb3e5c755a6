"""Bad input to `testbed` is a clear error (exit status 2) before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["run", "nonexistent"], "unknown scenario 'nonexistent'"),
    (["run", "aggregate", "--set", "nope=1"], "unknown parameter 'nope'"),
    (["run", "aggregate", "--set", "delay1_ms=-1"], "delay_ms must be >= 0"),
    (["run", "aggregate", "--set", "loss1_pct=101"], "loss_pct must be within 0..100"),
    (["run", "aggregate", "--stack", "quic"], "unknown stack 'quic'"),
    (["run", "aggregate", "--server-stack", "nope"], "unknown stack 'nope'"),
    (["run", "aggregate", "--stack", "kernel", "--set", "opportunistic=1"],
     "opportunistic retransmission is a switch of our stack only"),
    (["run", "aggregate", "--client-stack", "userspace", "--server-stack", "kernel", "--set",
      "opportunistic=true"], "Linux MPTCP has no such knob"),
])
def test_bad_input_is_refused_before_anything_is_created(
        args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_list_names_the_scenarios_and_their_parameters(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("aggregate:")
    assert "rate1_mbps = 10.0" in out


def test_without_root_the_run_says_why_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    out = tmp_path / "run"
    assert main(["run", "aggregate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs root" in err and "network namespaces" in err
    assert not out.exists()
