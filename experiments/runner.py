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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from experiments import fidelity
from experiments.scenario import (
    CompetingFlow,
    HostEvent,
    LinkEvent,
    RunOutcome,
    Scenario,
    TimelineEvent,
    Workload,
)
from testbed import stats
from testbed.emu.capture import Capture, CpuMonitor, start_capture
from testbed.emu.cleanup import ProcessRecord, RunRecord, signals_as_keyboard_interrupt
from testbed.emu.links import resolve_backend
from testbed.emu.network import Emulation, require_root, require_tools
from testbed.errors import ParameterError, TestbedError
from testbed.stacks.base import PreparedHost, StackConfig, StackDriver, get_stack
from testbed.stacks.kernel import check_kernel_config

# A run whose busiest second left less idle CPU than this may have starved the emulator.
MIN_IDLE_PCT = 5.0
# Userspace shaper: mean release lateness above this means it did not keep its schedule.
MAX_MEAN_LATE_MS = 1.0
SERVER_READY_TIMEOUT_S = 15.0

Progress = Callable[[str], None]


class Workloads:
    """The workload processes of a run, started through the emulation: servers (each waited
    for until it prints LISTENING), then clients. `close` stops whatever still runs and says
    in `errors` which ones exited with an error (and their last line on stderr)."""

    def __init__(self, emu: Emulation, errors: list[str]) -> None:
        self.emu = emu
        self.errors = errors
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start_servers(self, servers: Sequence[tuple[str, list[str], str]]) -> None:
        """(host, argv, what) of each server: all are started, then each is waited for."""
        started = []
        for host, argv, what in servers:
            proc = self.emu.popen(self.emu.host(host), argv, what, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
            self.procs.append((what, proc))
            started.append((what, proc))
        for what, proc in started:
            assert proc.stdout is not None
            if b"LISTENING" not in _readline_with_timeout(proc.stdout, SERVER_READY_TIMEOUT_S):
                proc.kill()
                _, err = proc.communicate()
                raise TestbedError(f"{what} did not start: {err.decode(errors='replace')}")

    def start_client(self, host: str, argv: list[str], what: str) -> None:
        self.procs.append((what, self.emu.popen(self.emu.host(host), argv, what,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)))

    def running(self) -> bool:
        return any(proc.poll() is None for _, proc in self.procs)

    def close(self) -> None:
        for what, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
            if proc.returncode:
                message = (err or b"").decode(errors="replace").strip().splitlines()
                self.errors.append(f"{what} exited with {proc.returncode}"
                                   + (f": {message[-1]}" if message else ""))


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
        self.flows = scenario.competing_flows()
        self.flow_drivers = {flow.name: get_stack(flow.stack) for flow in self.flows
                             if not flow.on_measured_stack}
        _check_flows(self.flows, self.workload, scenario)
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
            "competing_flows": [flow.record() for flow in self.flows],
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

    def _workload_argv(self, mode: str, prepared: PreparedHost, report: Path,
                       flow: CompetingFlow | None = None) -> list[str]:
        w = self.workload
        port = flow.port if flow else self.params.port
        direction = flow.direction if flow else w.direction
        # A competing flow sends other bytes than the measured one (its own seed).
        seed = self.options.seed + 1 + self.flows.index(flow) if flow else self.options.seed
        argv = [sys.executable, "-m", "testbed.workload", mode, *prepared.workload_args(),
                "--port", str(port), "--direction", direction,
                "--seed", str(seed), "--report", str(report),
                "--timeout", str(self.params.timeout_s)]
        server_address = flow.server_address if flow else self.scenario.server_address()
        argv += ["--listen", "0.0.0.0"] if mode == "server" else ["--connect", server_address]
        if flow is not None:
            argv += ["--seconds", str(flow.duration_s(w))]
            if flow.messages is not None:
                argv += ["--messages", str(flow.messages),
                         "--interval-ms", str(flow.interval_ms)]
        elif w.bytes is not None:
            argv += ["--bytes", str(w.bytes)]
        else:
            argv += ["--seconds", str(w.seconds)]
        if w.reconnect and flow is None:
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
        counted = list(dict.fromkeys([*endpoints, *(host for flow in self.flows
                                                    for host in (flow.client, flow.server))]))
        for name in counted:
            _write_json(stats_dir / f"nstat-{name}-before.json",
                        stats.nstat_snapshot(emu.host(name)))
        prepared = dict(zip(endpoints, (client_prep, server_prep), strict=True))
        self.flow_prepared = self._prepare_flows(emu, client_prep, server_prep)
        samplers = [
            emu.popen(emu.host(name),
                      stats.sampler_argv(stats_dir / f"subflows-{name}.csv",
                                         self.params.sample_interval_s, self.params.port)
                      + _stack_control_args(prepared[name]),
                      f"sampler {name}", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in endpoints
        ]
        # Each competing flow's sender too (its window, RTT and retransmissions).
        for flow in self.flows:
            sender = 0 if flow.direction == "upload" else 1
            host = (flow.client, flow.server)[sender]
            samplers.append(emu.popen(
                emu.host(host),
                stats.sampler_argv(stats_dir / f"subflows-{flow.name}-{host}.csv",
                                   self.params.sample_interval_s, flow.port)
                + _stack_control_args(self.flow_prepared[flow.name][sender]),
                f"sampler {flow.name} {host}", stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        try:
            with self._measured(emu):
                self._transfer(emu, client_prep, server_prep)
        finally:
            for proc in samplers:
                stats.stop_sampler(proc)
            for name in counted:
                with contextlib.suppress(TestbedError):
                    _write_json(stats_dir / f"nstat-{name}-after.json",
                                stats.nstat_snapshot(emu.host(name)))
            with contextlib.suppress(TestbedError):
                _write_json(stats_dir / "shaper.json", emu.shaper_stats())
            self._release(emu, prepared)
            self._release_flows(emu)

    @contextlib.contextmanager
    def _measured(self, emu: Emulation) -> Iterator[None]:
        """Around a transfer: the captures at the scenario's capture points and the CPU
        monitor, which the fidelity check reads afterwards (`self.cpu`)."""
        captures: list[Capture] = []
        cpu = CpuMonitor()
        try:
            if self.params.capture:
                for host, intf in self.scenario.capture_points():
                    captures.append(start_capture(emu, host, intf,
                                                  self.run_dir / "pcap" / f"{intf}.pcap",
                                                  self.params.snaplen))
            cpu.start()
            yield
        finally:
            cpu.stop()
            self.cpu = cpu
            for capture in captures:
                capture.stop()

    def _prepare_flows(self, emu: Emulation, client_prep: PreparedHost,
                       server_prep: PreparedHost) -> dict[str, tuple[PreparedHost, PreparedHost]]:
        """Each competing flow's two hosts, set up by the flow's own stack and congestion
        control (the measured flow's parameters do not apply to them); a flow on the
        measured stacks uses the measured hosts as they were prepared."""
        result = {}
        for flow in self.flows:
            if flow.on_measured_stack:
                result[flow.name] = (client_prep, server_prep)
                continue
            driver = self.flow_drivers[flow.name]
            config = StackConfig(congestion=flow.congestion)
            result[flow.name] = (driver.prepare(emu.recorded(flow.client), [], config),
                                 driver.prepare(emu.recorded(flow.server), [], config))
        return result

    def _release_flows(self, emu: Emulation) -> None:
        for flow in self.flows:
            if flow.on_measured_stack:
                continue  # the measured hosts' release undoes their stacks
            release = getattr(self.flow_drivers[flow.name], "release", None)
            if release is None or flow.name not in getattr(self, "flow_prepared", {}):
                continue
            for host, prep in zip((flow.client, flow.server), self.flow_prepared[flow.name],
                                  strict=True):
                try:
                    release(emu.recorded(host), prep)
                except TestbedError as exc:
                    self.errors.append(f"releasing the stack of {host} ({flow.name}): {exc}")

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
        workloads = Workloads(emu, self.errors)
        try:
            # Competitors' servers too, so that every client can start at once.
            workloads.start_servers([
                *((flow.server, self._workload_argv(
                    "server", self.flow_prepared[flow.name][1],
                    stats_dir / f"workload-{flow.name}-server.json", flow),
                   f"workload server of {flow.name}") for flow in self.flows),
                (self.scenario.server, self._workload_argv(
                    "server", server_prep, stats_dir / "workload-server.json"),
                 "workload server")])
            self._say("workload running")
            pending = sorted(self.flows, key=lambda flow: flow.start_s)
            t0 = time.monotonic()
            pending = self._start_flow_clients(workloads, pending, t0)
            workloads.start_client(self.scenario.client, self._workload_argv(
                "client", client_prep, stats_dir / "workload-client.json"), "workload client")
            last_flow_end = max((flow.start_s + flow.duration_s(self.workload)
                                 for flow in self.flows), default=0.0)
            deadline = t0 + max(self.params.timeout_s, last_flow_end) + 10
            with self._timeline_playing(emu, t0):
                while pending or workloads.running():
                    now = time.monotonic()
                    if now > deadline:
                        self.errors.append(
                            f"workload did not finish within {self.params.timeout_s} s")
                        break
                    pending = self._start_flow_clients(workloads, pending, t0)
                    self._say(f"running: {now - t0:5.1f} s")
                    next_start = pending[0].start_s + t0 - now if pending else 0.5
                    time.sleep(max(0.01, min(0.5, next_start)))
        finally:
            workloads.close()

    def _start_flow_clients(self, workloads: Workloads, pending: list[CompetingFlow],
                            t0: float) -> list[CompetingFlow]:
        """Start the clients of the competing flows whose time has come; the rest stay."""
        stats_dir = self.run_dir / "stats"
        while pending and pending[0].start_s <= time.monotonic() - t0:
            flow = pending.pop(0)
            workloads.start_client(flow.client, self._workload_argv(
                "client", self.flow_prepared[flow.name][0],
                stats_dir / f"workload-{flow.name}-client.json", flow),
                f"workload client of {flow.name}")
        return pending

    @contextlib.contextmanager
    def _timeline_playing(self, emu: Emulation, t0: float) -> Iterator[None]:
        """The scenario's timeline plays (its own thread, times from `t0`) during the block,
        and is stopped at its end."""
        self._timeline_stop = threading.Event()
        timeline = threading.Thread(target=self._play_timeline, args=(emu, t0), daemon=True)
        timeline.start()
        try:
            yield
        finally:
            self._timeline_stop.set()
            timeline.join()

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

    def _read_report(self, side: str, flow: str | None = None) -> dict[str, Any]:
        name = f"workload-{flow}-{side}.json" if flow else f"workload-{side}.json"
        path = self.run_dir / "stats" / name
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
        flows: dict[str, dict[str, Any]] = {}
        if self.flows:
            summary["flows"] = {}
        for flow in self.flows:
            f_client = self._read_report("client", flow.name)
            f_server = self._read_report("server", flow.name)
            f_sender, f_receiver = (f_client, f_server) if flow.direction == "upload" \
                else (f_server, f_client)
            flows[flow.name] = {"sender": f_sender, "receiver": f_receiver}
            summary["flows"][flow.name] = flow_summary(
                flow, f_sender, f_receiver,
                stack=self.stack_label if flow.on_measured_stack else None)
            summary["errors"] += [f"{flow.name}: {e}"
                                  for e in (f_sender.get("error"), f_receiver.get("error")) if e]
        summary.update(self._fidelity())
        summary.update(self.scenario.evaluate_run(RunOutcome(
            summary=summary, sender=sender, receiver=receiver,
            timeline=self._read_timeline(), run_dir=self.run_dir, flows=flows)))
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


def _check_flows(flows: list[CompetingFlow], workload: Workload, scenario: Scenario) -> None:
    """Competing flows are refused before anything starts: unknown hosts, a host of the
    measured flow (its stack owns that host) unless the flow runs on the measured stacks, and
    then exactly the measured client and server, two flows with one name or one server port
    on one host (the measured flow's port included), a duration that cannot be known."""
    if not flows:
        return
    hosts = set(scenario.topology().hosts())
    measured = (scenario.client, scenario.server)
    names: set[str] = set()
    listening: set[tuple[str, int]] = {(scenario.server, scenario.params.port)}
    own = [flow for flow in flows if not flow.on_measured_stack]
    stacks_on: dict[str, set[str]] = {}
    for flow in own:
        for host in (flow.client, flow.server):
            stacks_on.setdefault(host, set()).add(flow.stack)
    for flow in flows:
        if flow.name in names:
            raise ParameterError(f"two competing flows are named {flow.name!r}")
        names.add(flow.name)
        for host in (flow.client, flow.server):
            if host not in hosts:
                raise ParameterError(f"competing flow {flow.name}: no host {host!r} in this "
                                     f"topology; hosts are {', '.join(sorted(hosts))}")
        if flow.on_measured_stack:
            if (flow.client, flow.server) != measured:
                raise ParameterError(
                    f"competing flow {flow.name}: on the measured stacks it runs from the "
                    f"measured client {scenario.client!r} to the measured server "
                    f"{scenario.server!r}, not from {flow.client!r} to {flow.server!r}")
        else:
            for host in (flow.client, flow.server):
                if host in measured:
                    raise ParameterError(
                        f"competing flow {flow.name}: {host!r} carries the measured flow; a "
                        "competing flow needs hosts of its own (or on_measured_stack)")
            for host in (flow.client, flow.server):
                # Our stack's daemon takes the host's addresses: one per host, shared by flows
                # of that stack only (each prepare would start another).
                if "userspace" in stacks_on[host] and sum(
                        host in (f.client, f.server) for f in own) > 1:
                    raise ParameterError(f"competing flow {flow.name}: {host!r} runs our stack "
                                         "for one flow and cannot carry another")
        if (flow.server, flow.port) in listening:
            taken = "the measured flow" if (flow.server, flow.port) == (
                scenario.server, scenario.params.port) else "another flow"
            raise ParameterError(f"competing flow {flow.name}: port {flow.port} on "
                                 f"{flow.server} is taken by {taken}")
        listening.add((flow.server, flow.port))
        flow.duration_s(workload)


def flow_summary(flow: CompetingFlow, sender: dict[str, Any], receiver: dict[str, Any],
                 stack: str | None = None) -> dict[str, Any]:
    """What summary.json keeps of a competing flow (`stack`: the measured stacks' label, for
    a flow on them); a flow of messages also has the receiver's delay statistics and the
    number the sender sent."""
    messages = None
    if flow.messages is not None:
        messages = dict(receiver.get("messages") or {})
        messages["sent"] = (sender.get("messages") or {}).get("sent")
    return {
        "client": flow.client, "server": flow.server, "stack": stack or flow.stack,
        "on_measured_stack": flow.on_measured_stack, "port": flow.port,
        "messages": messages,
        "congestion": sender.get("congestion") or flow.congestion,
        "goodput_mbps": receiver.get("goodput_mbps"),
        "bytes_sent": sender.get("bytes"),
        "bytes_received": receiver.get("bytes"),
        "sha256_match": bool(sender.get("sha256")) and sender.get("sha256") ==
        receiver.get("sha256") and sender.get("bytes") == receiver.get("bytes"),
        "duration_s": receiver.get("duration_s"),
    }


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
