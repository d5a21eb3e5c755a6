"""Run records: processes are identified by pid and start time, and a sweep stops exactly the
recorded ones (a reused pid is not ours)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.emu import cleanup
from testbed.emu.cleanup import ProcessRecord, RunRecord, clean_stale, sweep


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setattr(cleanup, "STATE_DIR", tmp_path)
    yield tmp_path


def test_a_record_round_trips_and_knows_its_processes(state_dir: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        record = RunRecord("r1", ProcessRecord.of(os.getpid(), "test"))
        record.add_process(child.pid, "sleeper")
        loaded = RunRecord.load(state_dir / "r1.json")
        assert loaded == record
        assert loaded.processes[0].alive()
        # Same pid, another start time: somebody else's process now.
        impostor = ProcessRecord(child.pid, loaded.processes[0].start_time + 1, "sleeper")
        assert not impostor.alive()
    finally:
        child.kill()
        child.wait()


def test_sweep_stops_recorded_processes_only(state_dir: Path) -> None:
    ours = subprocess.Popen(["sleep", "30"])
    theirs = subprocess.Popen(["sleep", "30"])
    try:
        record = RunRecord("r2", ProcessRecord.of(os.getpid(), "test"))
        record.add_process(ours.pid, "sleeper")
        done = sweep(record, grace_s=0.2)
        assert ours.wait(timeout=5) is not None
        assert theirs.poll() is None
        assert done == [f"stopped sleeper (pid {ours.pid})"]
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_clean_leaves_live_runs_alone_and_removes_dead_ones(state_dir: Path) -> None:
    owner = subprocess.Popen(["sleep", "30"])
    try:
        live = RunRecord("live", ProcessRecord.of(owner.pid, "runner"))
        live.save()
        dead = RunRecord("dead", ProcessRecord(pid=owner.pid, start_time=1, what="runner"))
        dead.save()
        (state_dir / "broken.json").write_text("{not json")
        report = clean_stale()
        assert any("still running" in line for line in report)
        assert (state_dir / "live.json").exists()
        assert not (state_dir / "dead.json").exists()
        assert not (state_dir / "broken.json").exists()
    finally:
        owner.kill()
        owner.wait()
