"""Many concurrent flows in one run: a scenario that lists its flows (host pairs), and the run
that starts one workload server and one client per flow, together, and judges them over the
interval in which all of them were sending.

The single-flow runner (experiments/runner.py) measures one transfer between `client` and
`server`; a `MultiFlowScenario` names as many pairs as it likes (a data-center permutation,
several users behind one bottleneck), each with its own port. What is shared with the
single-flow run: the results directory (meta.json, summary.json, stats/), the stack drivers,
the link timeline, the fidelity check. What differs: every host that takes part is prepared by
the stack driver, each flow writes stats/workload-<flow>-{client,server}.json, no per-socket
sampler runs (one per host would cost more CPU than the flows at data-center host counts: the
number of subflows comes from MPTCP_INFO at the end of each flow instead), and summary.json
gets `flows` (per-flow goodput over the common interval) and their aggregate.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from experiments.runner import Run, Workloads, _write_json
from experiments.scenario import RunOutcome, Scenario
from testbed import stats
from testbed.emu.network import Emulation
from testbed.errors import ParameterError, TestbedError
from testbed.stacks.base import Endpoint, PreparedHost


@dataclass(frozen=True)
class Flow:
    """One transfer of a multi-flow run: `client` connects to `server_addr` (an address of
    `server`) on `port`; the scenario's workload says who sends."""

    name: str
    client: str
    server: str
    server_addr: str
    port: int


class MultiFlowScenario(Scenario):
    """A scenario of several concurrent flows (see the module's docstring)."""

    multi_flow: ClassVar[bool] = True
    # The stacks this scenario runs with (None: any).
    stacks: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def flows(self) -> list[Flow]: ...

    def host_endpoints(self, host: str) -> list[Endpoint]:
        """Kernel MPTCP endpoints of one host (none by default)."""
        return []

    def extra_subflows(self) -> int:
        """`ip mptcp limits set subflows N` on every host."""
        return 2

    def setup_hosts(self, emu: Emulation) -> None:
        """Called once the network is up, before the stacks are prepared (extra addresses)."""

    def warmup_s(self) -> float:
        """Seconds after the last flow started that the common interval leaves out."""
        return 0.0

    def evaluate_flows(self, flows: list[dict[str, Any]],
                       summary: dict[str, Any]) -> dict[str, Any]:
        """Scenario verdicts over the per-flow results (each as in summary.json's `flows`)."""
        return {}

    # Single-flow hooks a multi-flow scenario does not use.
    def server_address(self) -> str:
        flows = self.flows()
        return flows[0].server_addr if flows else ""

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        return {}


# -- what the flows achieved (plain values, unit-tested) ---------------------------------------

def common_interval(receivers: Sequence[dict[str, Any]], warmup_s: float,
                    bin_s: float = 0.1) -> tuple[float, float] | None:
    """(start, end) in wall-clock seconds in which every receiver was receiving: from the
    last receiver's start plus `warmup_s` to the earliest end of a receiver's series. None
    when some receiver has no series or the interval is empty."""
    starts, ends = [], []
    for report in receivers:
        series = report.get("series") or []
        if report.get("t_start") is None or not series:
            return None
        starts.append(float(report["t_start"]))
        ends.append(float(report["t_start"]) + float(series[-1][0]) + bin_s)
    if not starts:
        return None
    start, end = max(starts) + warmup_s, min(ends)
    return (start, end) if end > start else None


def bytes_in_interval(report: dict[str, Any], start: float, end: float,
                      bin_s: float = 0.1) -> int:
    """Bytes of the receiver's 100 ms bins that lie wholly inside [start, end]."""
    t0 = float(report["t_start"])
    total = 0
    for offset, count in report.get("series") or []:
        begin = t0 + float(offset)
        if begin >= start - 1e-9 and begin + bin_s <= end + 1e-9:
            total += int(count)
    return total


def interval_goodputs(receivers: Sequence[dict[str, Any]], warmup_s: float,
                      bin_s: float = 0.1) -> tuple[list[float], float] | None:
    """Each receiver's goodput (Mbit/s) over the common interval, and its length (s): whole
    bins only, so the length is what those bins span."""
    interval = common_interval(receivers, warmup_s, bin_s)
    if interval is None:
        return None
    start, end = interval
    rates = []
    length = 0.0
    for report in receivers:
        t0 = float(report["t_start"])
        first = math.ceil((start - t0) / bin_s - 1e-9)
        last = math.floor((end - t0) / bin_s + 1e-9)  # exclusive bin index
        length = max(0, last - first) * bin_s
        counted = bytes_in_interval(report, start, end, bin_s)
        rates.append(counted * 8 / length / 1e6 if length > 0 else 0.0)
    return rates, length


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index: 1 when all are equal, 1/n when one takes everything."""
    if not values:
        return None
    squares = sum(v * v for v in values)
    if squares == 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def lowest_decile(values: Sequence[float]) -> float | None:
    """The 10th percentile (linear interpolation between order statistics, numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = 0.1 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- the run -----------------------------------------------------------------------------------

class MultiFlowRun(Run):
    """Run.execute() with every flow of a MultiFlowScenario at once."""

    scenario: MultiFlowScenario

    def __init__(self, scenario: Scenario, options: Any) -> None:
        if not isinstance(scenario, MultiFlowScenario):
            raise ParameterError(f"scenario {scenario.name} has no flows to run")
        for stack in (options.client_stack, options.server_stack):
            if scenario.stacks is not None and stack not in scenario.stacks:
                raise ParameterError(f"{scenario.name} runs with the stacks "
                                     f"{', '.join(scenario.stacks)}, not {stack!r}")
        super().__init__(scenario, options)
        # Not `flows`: the base Run keeps a scenario's competing flows under that name.
        self.run_flows = scenario.flows()
        if not self.run_flows:
            raise ParameterError(f"scenario {scenario.name}: no flows")
        names = [flow.name for flow in self.run_flows]
        if len(set(names)) != len(names):
            raise ParameterError(f"scenario {scenario.name}: flow names repeat: {names}")
        clients = {flow.client for flow in self.run_flows}
        servers = {flow.server for flow in self.run_flows}
        if clients & servers and options.client_stack != options.server_stack:
            raise ParameterError(
                f"{scenario.name}: hosts are clients of one flow and servers of another, so "
                "both ends need the same stack (give --stack, not --client-stack/--server-stack)")
        self.stack_config = replace(self.stack_config, subflows=scenario.extra_subflows(),
                                    add_addr_accepted=0)
        if self.workload.direction != "upload":
            raise ParameterError(f"{scenario.name}: flows are uploads (the client sends)")

    def _hosts(self) -> list[str]:
        return list(dict.fromkeys(h for f in self.run_flows for h in (f.client, f.server)))

    def _run_in(self, emu: Emulation) -> None:
        stats_dir = self.run_dir / "stats"
        self.scenario.setup_hosts(emu)
        clients = {f.client for f in self.run_flows}
        prepared: dict[str, PreparedHost] = {}
        for name in self._hosts():
            driver = self.client_driver if name in clients else self.server_driver
            prepared[name] = driver.prepare(emu.recorded(name), self.scenario.host_endpoints(name),
                                            self.stack_config)
        self.prepared = {name: asdict(prep) for name, prep in prepared.items()}
        before = {name: stats.nstat_snapshot(emu.host(name)) for name in prepared}
        try:
            with self._measured(emu):
                self._transfer_all(emu, prepared)
        finally:
            delta: dict[str, dict[str, int]] = {}
            for name in prepared:
                with contextlib.suppress(TestbedError):
                    after = stats.nstat_snapshot(emu.host(name))
                    delta[name] = stats.filter_counters(stats.counters_delta(before[name], after),
                                                        (stats.MPTCP_PREFIX,))
            _write_json(stats_dir / "nstat-delta.json", delta)
            with contextlib.suppress(TestbedError):
                _write_json(stats_dir / "shaper.json", emu.shaper_stats())
            self._release(emu, prepared)

    def _release(self, emu: Emulation, prepared: dict[str, PreparedHost]) -> None:
        clients = {f.client for f in self.run_flows}
        for name, prep in prepared.items():
            driver = self.client_driver if name in clients else self.server_driver
            release = getattr(driver, "release", None)
            if release is not None:
                try:
                    release(emu.recorded(name), prep)
                except TestbedError as exc:
                    self.errors.append(f"releasing the stack of {name}: {exc}")

    def _flow_argv(self, flow: Flow, mode: str, prepared: PreparedHost) -> list[str]:
        w = self.workload
        report = self.run_dir / "stats" / f"workload-{flow.name}-{mode}.json"
        argv = [sys.executable, "-m", "testbed.workload", mode, *prepared.workload_args(),
                "--port", str(flow.port), "--direction", w.direction,
                "--seed", str(self.options.seed), "--report", str(report),
                "--timeout", str(self.params.timeout_s)]
        argv += ["--listen", flow.server_addr] if mode == "server" else \
                ["--connect", flow.server_addr]
        argv += ["--bytes", str(w.bytes)] if w.bytes is not None else ["--seconds", str(w.seconds)]
        return argv

    def _transfer_all(self, emu: Emulation, prepared: dict[str, PreparedHost]) -> None:
        workloads = Workloads(emu, self.errors)
        try:
            workloads.start_servers([
                (flow.server, self._flow_argv(flow, "server", prepared[flow.server]),
                 f"workload server {flow.name}") for flow in self.run_flows])
            self._say(f"{len(self.run_flows)} flows running")
            for flow in self.run_flows:
                workloads.start_client(flow.client,
                                       self._flow_argv(flow, "client", prepared[flow.client]),
                                       f"workload client {flow.name}")
            t0 = time.monotonic()
            deadline = t0 + self.params.timeout_s + 10
            with self._timeline_playing(emu, t0):
                while workloads.running():
                    if time.monotonic() > deadline:
                        self.errors.append(
                            f"workloads did not finish within {self.params.timeout_s} s")
                        break
                    self._say(f"running: {time.monotonic() - t0:5.1f} s")
                    time.sleep(0.5)
        finally:
            workloads.close()

    # -- results --------------------------------------------------------------------------

    def _flow_report(self, flow: Flow, mode: str) -> dict[str, Any]:
        path = self.run_dir / "stats" / f"workload-{flow.name}-{mode}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def _finish(self, backend: str, interrupted: bool, wall_s: float) -> None:
        senders = [self._flow_report(f, "client") for f in self.run_flows]
        receivers = [self._flow_report(f, "server") for f in self.run_flows]
        measured = interval_goodputs(receivers, self.scenario.warmup_s())
        rates, length = measured if measured is not None else ([None] * len(self.run_flows), None)
        flows: list[dict[str, Any]] = []
        for flow, sender, receiver, rate in zip(self.run_flows, senders, receivers, rates,
                                                strict=True):
            subflows = [s for s in (sender.get("mptcp_subflows"),
                                    receiver.get("mptcp_subflows")) if s is not None]
            flows.append({
                "name": flow.name, "client": flow.client, "server": flow.server,
                "server_addr": flow.server_addr, "port": flow.port,
                "goodput_mbps": None if rate is None else round(rate, 4),
                "goodput_whole_mbps": receiver.get("goodput_mbps"),
                "bytes_sent": sender.get("bytes"), "bytes_received": receiver.get("bytes"),
                "sha256_match": bool(sender.get("sha256"))
                and sender.get("sha256") == receiver.get("sha256")
                and sender.get("bytes") == receiver.get("bytes"),
                # MPTCP_INFO counts the subflows beyond the first; None for plain TCP.
                "subflows": 1 + max(subflows) if subflows else 1,
                "fallback": sender.get("mptcp_fallback"),
                "errors": [e for e in (sender.get("error"), receiver.get("error")) if e],
            })
        valid = [f["goodput_mbps"] for f in flows if f["goodput_mbps"] is not None]
        starts = [s["t_start"] for s in senders if s.get("t_start")]
        ends = [r["t_end"] for r in receivers if r.get("t_end")]
        summary: dict[str, Any] = {
            "scenario": self.scenario.name,
            "stack": self.stack_label,
            "client_stack": self.options.client_stack,
            "server_stack": self.options.server_stack,
            "link_backend": backend,
            # The aggregate over the common interval (None if some flow never received).
            "goodput_mbps": round(sum(valid), 4) if len(valid) == len(flows) else None,
            "bytes_sent": sum(s.get("bytes") or 0 for s in senders),
            "bytes_received": sum(r.get("bytes") or 0 for r in receivers),
            "sha256_match": all(f["sha256_match"] for f in flows),
            "subflows": max(f["subflows"] for f in flows),
            "duration_s": round(max(ends) - min(starts), 4) if starts and ends else None,
            "interval_s": None if length is None else round(length, 3),
            "start_spread_s": round(max(starts) - min(starts), 3) if starts else None,
            "flow_count": len(flows),
            "flows": flows,
            "wall_s": round(wall_s, 3),
            "interrupted": interrupted,
            "errors": self.errors + [f"{f['name']}: {e}" for f in flows for e in f["errors"]],
            "prepared": getattr(self, "prepared", None),
        }
        summary.update(self._fidelity())
        summary.update(self.scenario.evaluate_flows(flows, summary))
        self.summary = summary
        _write_json(self.run_dir / "summary.json", summary)
