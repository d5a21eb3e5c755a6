"""What a run created, written down as it is created, so that exactly that can be removed: by the
run itself when it ends or is interrupted, and by `testbed clean` after a crash or a kill -9.

Everything the testbed creates lives in network namespaces held by processes (Mininet host
shells, the shaper, tcpdump, workloads); interfaces and addresses die with their namespace. So the
record is a list of processes, each identified by pid *and* start time (a pid alone can be reused
by an unrelated process), plus the namespaces they held.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = Path(os.environ.get("TESTBED_STATE_DIR", "/run/mptcp-testbed"))


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_time: int  # clock ticks since boot, field 22 of /proc/PID/stat
    what: str

    @classmethod
    def of(cls, pid: int, what: str) -> ProcessRecord:
        start = process_start_time(pid)
        if start is None:
            raise ProcessLookupError(pid)
        return cls(pid, start, what)

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


def process_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


@dataclass
class RunRecord:
    run_id: str
    owner: ProcessRecord
    processes: list[ProcessRecord] = field(default_factory=list)
    netns_inodes: list[int] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        return cls(
            run_id=data["run_id"],
            owner=ProcessRecord(**data["owner"]),
            processes=[ProcessRecord(**p) for p in data["processes"]],
            netns_inodes=list(data["netns_inodes"]),
        )

    def add_process(self, pid: int, what: str, holds_netns: bool = False) -> None:
        record = ProcessRecord.of(pid, what)
        self.processes.append(record)
        if holds_netns:
            inode = netns_inode(pid)
            if inode is not None and inode not in self.netns_inodes:
                self.netns_inodes.append(inode)
        self.save()


def _namespaces_still_ours(record: RunRecord) -> set[int]:
    """Recorded namespaces that one of our recorded processes still holds.

    A namespace inode can be reused once the namespace is gone; only a live process of ours
    inside it proves that it is still the namespace we made.
    """
    ours: set[int] = set()
    for proc in record.processes:
        if proc.alive():
            inode = netns_inode(proc.pid)
            if inode in record.netns_inodes:
                ours.add(inode)
    return ours


def _processes_in(inodes: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and netns_inode(int(entry.name)) in inodes:
            found.append(int(entry.name))
    return found


def sweep(record: RunRecord, grace_s: float = 1.0) -> list[str]:
    """Stop every process of the run and every process left in its namespaces.

    SIGTERM first so that tcpdump and the workloads flush their files, SIGKILL after the grace
    period. Returns what was done, for the user.
    """
    done: list[str] = []
    ours = _namespaces_still_ours(record)
    targets = {p.pid: p.what for p in record.processes if p.alive()}
    for pid in _processes_in(ours):
        targets.setdefault(pid, "process in an emulated host")
    targets.pop(os.getpid(), None)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in targets):
        time.sleep(0.05)
    for pid, what in targets.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        done.append(f"stopped {what} (pid {pid})")
    return done


def clean_stale(force: bool = False) -> list[str]:
    """`testbed clean`: sweep every recorded run whose owner is gone (all of them with force)."""
    done: list[str] = []
    if not STATE_DIR.is_dir():
        return done
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            record = RunRecord.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            done.append(f"unreadable record {path}: {exc}; removed")
            path.unlink(missing_ok=True)
            continue
        if record.owner.alive() and record.owner.pid != os.getpid() and not force:
            done.append(f"run {record.run_id} is still running (pid {record.owner.pid}); "
                        "left alone (use --force)")
            continue
        if record.owner.alive() and record.owner.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.owner.pid, signal.SIGTERM)
            done.append(f"stopped the runner of {record.run_id} (pid {record.owner.pid})")
        done.extend(sweep(record))
        path.unlink(missing_ok=True)
        done.append(f"removed run record {record.run_id}")
    return done


@contextlib.contextmanager
def signals_as_keyboard_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end a run like Ctrl-C, so the same cleanup runs and results
    are kept. SIGINT is set explicitly: a process started in the background by a
    non-interactive shell inherits it ignored, and Python then never raises KeyboardInterrupt.

    Only in this process: a forked copy of it (a library's helper) inherits the handler, and
    raising there would run our cleanup in the copy; the copy dies of the signal as it would
    have without us.
    """
    owner = os.getpid()

    def raise_interrupt(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_interrupt)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
