"""Run one scenario once: build the network, prepare the stacks, capture, run the workload and the
link timeline, collect everything into a results directory, and leave nothing behind.

The results directory is the contract with `analysis/` (../shared/DESIGN.md): meta.json,
summary.json, pcap/, stats/, figures/.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments import fidelity
from experiments.scenario import HostEvent, LinkEvent, RunOutcome, Scenario, TimelineEvent
from testbed import stats
from testbed.emu.capture import Capture, CpuMonitor, start_capture
from testbed.emu.cleanup import ProcessRecord, RunRecord, signals_as_keyboard_interrupt
from testbed.emu.links import resolve_backend
from testbed.emu.network import Emulation, require_root, require_tools
from testbed.errors import TestbedError
from testbed.stacks.base import PreparedHost, StackConfig, StackDriver, get_stack
from testbed.stacks.kernel import check_kernel_config

# A run whose busiest second left less idle CPU than this may have starved the emulator.
MIN_IDLE_PCT = 5.0
# Userspace shaper: mean release lateness above this means it did not keep its schedule.
MAX_MEAN_LATE_MS = 1.0
SERVER_READY_TIMEOUT_S = 15.0

Progress = Callable[[str], None]


@dataclass
class RunOptions:
    client_stack: str
    server_stack: str
    link_backend: str = "auto"
    seed: int = 1
    out_dir: Path | None = None
    results_root: Path = Path("results")
    progress: Progress = field(default=lambda message: None)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mptcp-testbed", "mininet", "pyroute2", "pandas", "seaborn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["iproute2"] = subprocess.run(["ip", "-V"], capture_output=True, text=True,
                                              check=False).stdout.strip()
    return versions


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


class Run:
    """One run of one scenario; `execute()` returns the results directory."""

    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.options = options
        self.params = scenario.params
        # Everything that can be refused is refused here, before anything is created.
        self.client_driver: StackDriver = get_stack(options.client_stack)
        self.server_driver: StackDriver = get_stack(options.server_stack)
        self.stack_config = StackConfig(
            path_manager=self.params.path_manager, scheduler=self.params.scheduler,
            congestion=self.params.congestion, checksum=self.params.checksum,
            opportunistic=self.params.opportunistic,
            ndiffports=self.params.ndiffports,
            rcvbuf_bytes=(None if self.params.rcvbuf_kib is None
                          else self.params.rcvbuf_kib * 1024),
        )
        if "kernel" in (options.client_stack, options.server_stack):
            check_kernel_config(self.stack_config)
        scenario.use_stacks(options.client_stack, options.server_stack)
        self.workload = scenario.workload()
        self.timeline = sorted(scenario.timeline(), key=lambda event: event.at_s)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.run_id = f"{scenario.name}-{self.stack_label}-{stamp}-{secrets.token_hex(2)}"
        self.run_dir = options.out_dir or options.results_root / scenario.name / self.run_id
        self.summary: dict[str, Any] = {}
        self.errors: list[str] = []

    @property
    def stack_label(self) -> str:
        if self.options.client_stack == self.options.server_stack:
            return self.options.client_stack
        return f"{self.options.client_stack}-{self.options.server_stack}"

    def _say(self, message: str) -> None:
        self.options.progress(message)

    def execute(self) -> Path:
        require_root(f"testbed run {self.scenario.name}")
        tools = ["tcpdump"] if self.params.capture else []
        require_tools(tools)
        backend = resolve_backend(self.options.link_backend)
        for sub in ("pcap", "stats", "figures"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        meta = {
            "scenario": self.scenario.name,
            "run_id": self.run_id,
            "label": self.scenario.label(),
            "params": asdict(self.params),
            "seed": self.options.seed,
            "stack": self.stack_label,
            "client_stack": self.options.client_stack,
            "server_stack": self.options.server_stack,
            "link_backend": backend,
            "link_backend_requested": self.options.link_backend,
            "timeline": [event.record() for event in self.timeline],
            "configured_rates_mbps": self.scenario.configured_rates(),
            "versions": _versions(),
            "kernel": platform.release(),
            "started_at": datetime.now(UTC).isoformat(),
            "command": sys.argv,
        }
        _write_json(self.run_dir / "meta.json", meta)
        record = RunRecord(self.run_id, ProcessRecord.of(os.getpid(), "testbed runner"))
        record.save()
        interrupted = False
        started = time.monotonic()
        try:
            with signals_as_keyboard_interrupt():
                self._say(f"building {self.scenario.name} with the {backend} link backend")
                with Emulation(self.scenario.topology(), backend, self.options.seed, record,
                               shaper_log=self.run_dir / "stats" / "shaper.log",
                               stats_dir=self.run_dir / "stats") as emu:
                    self._run_in(emu)
        except KeyboardInterrupt:
            interrupted = True
            self.errors.append("interrupted; results kept so far")
            self._say("interrupted: cleaning up, keeping what was collected")
        except TestbedError as exc:
            self.errors.append(str(exc))
            raise
        finally:
            record.path.unlink(missing_ok=True)
            self._finish(backend, interrupted, time.monotonic() - started)
        return self.run_dir

    # -- the run itself ---------------------------------------------------------------------

    def _prepare(self, emu: Emulation) -> tuple[PreparedHost, PreparedHost]:
        client = self.client_driver.prepare(emu.recorded(self.scenario.client),
                                            self.scenario.client_endpoints(), self.stack_config)
        server = self.server_driver.prepare(emu.recorded(self.scenario.server),
                                            self.scenario.server_endpoints(), self.stack_config)
        return client, server

    def _workload_argv(self, mode: str, prepared: PreparedHost, report: Path) -> list[str]:
        w = self.workload
        argv = [sys.executable, "-m", "testbed.workload", mode, *prepared.workload_args(),
                "--port", str(self.params.port), "--direction", w.direction,
                "--seed", str(self.options.seed), "--report", str(report),
                "--timeout", str(self.params.timeout_s)]
        argv += ["--listen", "0.0.0.0"] if mode == "server" else \
                ["--connect", self.scenario.server_address()]
        argv += ["--bytes", str(w.bytes)] if w.bytes is not None else ["--seconds", str(w.seconds)]
        if w.reconnect:
            argv.append("--reconnect")
        return argv

    def _run_in(self, emu: Emulation) -> None:
        stats_dir = self.run_dir / "stats"
        client_prep, server_prep = self._prepare(emu)
        self.prepared = {"client": asdict(client_prep), "server": asdict(server_prep)}
        # The timeline's connection managers act on each host's path manager through this.
        emu.path_controls = {
            self.scenario.client: self.client_driver.path_control(
                emu.host(self.scenario.client), client_prep),
            self.scenario.server: self.server_driver.path_control(
                emu.host(self.scenario.server), server_prep)}
        endpoints = (self.scenario.client, self.scenario.server)
        for name in endpoints:
            _write_json(stats_dir / f"nstat-{name}-before.json",
                        stats.nstat_snapshot(emu.host(name)))
        prepared = dict(zip(endpoints, (client_prep, server_prep), strict=True))
        samplers = [
            emu.popen(emu.host(name),
                      stats.sampler_argv(stats_dir / f"subflows-{name}.csv",
                                         self.params.sample_interval_s, self.params.port)
                      + _stack_control_args(prepared[name]),
                      f"sampler {name}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in endpoints
        ]
        captures: list[Capture] = []
        cpu = CpuMonitor()
        try:
            if self.params.capture:
                for host, intf in self.scenario.capture_points():
                    captures.append(start_capture(emu, host, intf,
                                                  self.run_dir / "pcap" / f"{intf}.pcap",
                                                  self.params.snaplen))
            cpu.start()
            self._transfer(emu, client_prep, server_prep)
        finally:
            cpu.stop()
            self.cpu = cpu
            for capture in captures:
                capture.stop()
            for proc in samplers:
                stats.stop_sampler(proc)
            for name in endpoints:
                with contextlib.suppress(TestbedError):
                    _write_json(stats_dir / f"nstat-{name}-after.json",
                                stats.nstat_snapshot(emu.host(name)))
            with contextlib.suppress(TestbedError):
                _write_json(stats_dir / "shaper.json", emu.shaper_stats())
            self._release(emu, prepared)

    def _release(self, emu: Emulation, prepared: dict[str, PreparedHost]) -> None:
        """Counters of stacks that keep their own (ours), then let drivers undo their set-up."""
        drivers = {self.scenario.client: self.client_driver,
                   self.scenario.server: self.server_driver}
        for name, prep in prepared.items():
            control = getattr(prep, "control_path", None)
            if control:
                from testbed.runtime import api

                try:
                    _write_json(self.run_dir / "stats" / f"stack-{name}.json", api.stats(control))
                except (OSError, ValueError) as exc:
                    self.errors.append(f"stack statistics of {name}: {exc}")
            release = getattr(drivers[name], "release", None)
            if release is not None:
                try:
                    if control:  # our stack's daemon log joins the run's statistics
                        release(emu.recorded(name), prep, keep_log_in=self.run_dir / "stats")
                    else:
                        release(emu.recorded(name), prep)
                except TestbedError as exc:
                    self.errors.append(f"releasing the stack of {name}: {exc}")

    def _transfer(self, emu: Emulation, client_prep: PreparedHost,
                  server_prep: PreparedHost) -> None:
        stats_dir = self.run_dir / "stats"
        server = emu.popen(
            emu.host(self.scenario.server),
            self._workload_argv("server", server_prep, stats_dir / "workload-server.json"),
            "workload server", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert server.stdout is not None
        line = _readline_with_timeout(server.stdout, SERVER_READY_TIMEOUT_S)
        if b"LISTENING" not in line:
            server.kill()
            _, err = server.communicate()
            raise TestbedError(f"workload server did not start: {err.decode(errors='replace')}")
        self._say("workload running")
        client = emu.popen(
            emu.host(self.scenario.client),
            self._workload_argv("client", client_prep, stats_dir / "workload-client.json"),
            "workload client", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        timeline = threading.Thread(target=self._play_timeline, args=(emu, t0), daemon=True)
        self._timeline_stop = threading.Event()
        timeline.start()
        deadline = t0 + self.params.timeout_s + 10
        try:
            while client.poll() is None or server.poll() is None:
                if time.monotonic() > deadline:
                    self.errors.append(f"workload did not finish within {self.params.timeout_s} s")
                    break
                self._say(f"running: {time.monotonic() - t0:5.1f} s")
                time.sleep(0.5)
        finally:
            self._timeline_stop.set()
            timeline.join()
            for name, proc in (("client", client), ("server", server)):
                if proc.poll() is None:
                    proc.kill()
                _, err = proc.communicate()
                if proc.returncode:
                    message = err.decode(errors="replace").strip().splitlines()
                    self.errors.append(f"workload {name} exited with {proc.returncode}"
                                       + (f": {message[-1]}" if message else ""))

    def _play_timeline(self, emu: Emulation, t0: float) -> None:
        applied = []
        try:
            for event in self.timeline:
                if self._timeline_stop.wait(max(0.0, t0 + event.at_s - time.monotonic())):
                    break
                started, wall = time.monotonic(), time.time()
                try:
                    self._apply(emu, event)
                    # Wall time too: the workload reports stamp their start with time.time().
                    applied.append({**event.record(), "applied_at_s": round(started - t0, 4),
                                    "wall_time": wall,
                                    "took_s": round(time.monotonic() - started, 4)})
                except Exception as exc:  # one failed event must not end the
                    # timeline: the events after it still run, and the run says what failed.
                    kind = "link" if isinstance(event, LinkEvent) else "host"
                    self.errors.append(f"{kind} event at {event.at_s} s failed: "
                                       f"{type(exc).__name__}: {exc}")
        finally:
            # Written even if an action had a bug: analysis needs to know what was played.
            _write_json(self.run_dir / "stats" / "timeline.json", applied)

    @staticmethod
    def _apply(emu: Emulation, event: TimelineEvent) -> None:
        if isinstance(event, HostEvent):
            event.action(emu)
            return
        link = emu.link(event.link)
        if event.action == "set":
            assert event.shaping is not None
            link.set_shaping(event.direction, event.shaping)
        else:
            link.set_down(event.action == "down")

    # -- results ----------------------------------------------------------------------------

    def _read_report(self, side: str) -> dict[str, Any]:
        path = self.run_dir / "stats" / f"workload-{side}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def _read_timeline(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.run_dir / "stats" / "timeline.json").read_text()))
        except (OSError, ValueError):
            return []

    def _finish(self, backend: str, interrupted: bool, wall_s: float) -> None:
        client, server = self._read_report("client"), self._read_report("server")
        sender, receiver = (client, server) if self.workload.direction == "upload" \
            else (server, client)
        duration = None
        if receiver.get("t_end") and sender.get("t_start"):
            # As simult_flows.sh times it: from the sender's start to the last byte received.
            duration = round(receiver["t_end"] - sender["t_start"], 4)
        subflows = 0
        for name in (self.scenario.client, self.scenario.server):
            path = self.run_dir / "stats" / f"subflows-{name}.csv"
            if path.exists():
                with contextlib.suppress(OSError, KeyError, ValueError):
                    subflows = max(subflows,
                                   stats.max_established_subflows(path, port=self.params.port))
        summary: dict[str, Any] = {
            "scenario": self.scenario.name,
            "stack": self.stack_label,
            "client_stack": self.options.client_stack,
            "server_stack": self.options.server_stack,
            "link_backend": backend,
            "goodput_mbps": receiver.get("goodput_mbps"),
            "bytes_sent": sender.get("bytes"),
            "bytes_received": receiver.get("bytes"),
            "sha256_match": bool(sender.get("sha256")) and
            sender.get("sha256") == receiver.get("sha256")
            and sender.get("bytes") == receiver.get("bytes"),
            "subflows": subflows,
            "duration_s": duration,
            "wall_s": round(wall_s, 3),
            "interrupted": interrupted,
            "errors": self.errors + [e for e in (sender.get("error"), receiver.get("error")) if e],
            "prepared": getattr(self, "prepared", None),
        }
        summary.update(self._fidelity())
        summary.update(self.scenario.evaluate_run(RunOutcome(
            summary=summary, sender=sender, receiver=receiver,
            timeline=self._read_timeline(), run_dir=self.run_dir)))
        self.summary = summary
        _write_json(self.run_dir / "summary.json", summary)

    def _fidelity(self) -> dict[str, Any]:
        cpu: CpuMonitor | None = getattr(self, "cpu", None)
        result: dict[str, Any] = {"cpu_idle_mean_pct": None, "cpu_idle_worst_pct": None}
        reasons = []
        if cpu is not None and cpu.mean_idle_pct is not None:
            result["cpu_idle_mean_pct"] = round(cpu.mean_idle_pct, 1)
            result["cpu_idle_worst_pct"] = round(cpu.worst_idle_pct, 1)
            if cpu.worst_idle_pct < MIN_IDLE_PCT:
                reasons.append(f"CPU saturated (worst second {cpu.worst_idle_pct:.1f}% idle)")
        shaper_path = self.run_dir / "stats" / "shaper.json"
        late = _shaper_mean_late_ms(shaper_path)
        result["shaper_mean_late_ms"] = late
        if late is not None and late > MAX_MEAN_LATE_MS:
            reasons.append(f"shaper released frames {late:.2f} ms late on average")
        # Per link direction: the rate achieved while backlogged and the delay added.
        try:
            shaper = json.loads(shaper_path.read_text())
        except (OSError, ValueError):
            shaper = {}
        result["fidelity_links"] = fidelity.link_fidelity(shaper)
        late_overall = late is not None and late > MAX_MEAN_LATE_MS
        reasons += fidelity.link_notes(result["fidelity_links"], delays=not late_overall)
        result["fidelity_ok"] = not reasons
        result["fidelity_notes"] = reasons
        return result


def _stack_control_args(prepared: PreparedHost) -> list[str]:
    """Samplers read our stack through its control channel, the kernel's through ss."""
    control = getattr(prepared, "control_path", None)
    return ["--stack-control", str(control)] if control else []


def _shaper_mean_late_ms(path: Path) -> float | None:
    """Mean lateness over all directions of all links, from the shaper's counters."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    total_late = 0.0
    frames = 0
    for link in data.get("links", {}).values():
        for direction in ("a2b", "b2a"):
            counters = link.get(direction, {})
            total_late += counters.get("lateness_sum_s", 0.0)
            frames += counters.get("frames_out", 0)
    return round(1000 * total_late / frames, 4) if frames else None


def _readline_with_timeout(stream: Any, timeout: float) -> bytes:
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    return bytes(stream.readline()) if ready else b""
