"""Our userspace TCP against Linux TCP on the same emulated path, side by side (not a test).

On `topologies.pair` (hosts a and b, one link shaped by the userspace link backend, 20 ms RTT)
each path runs, in turn and interleaved over the repeats:

    linux->linux   the workload with kernel TCP on both hosts (cubic set per socket)
    ours->ours     our stack daemon on both hosts (cubic), a sends to b
    ours->linux    our daemon on a sends, Linux on b receives
    linux->ours    Linux on a sends, our daemon on b receives

on links of 10, 50 and 100 Mbit/s and an unshaped one (where the CPU is the limit), and prints
goodput (receiver's report), ours/Linux, packets per second on a's interface, and CPU seconds
per GB: for our daemons from /proc/PID/stat (utime + stime, both daemons when both run ours),
for Linux the two workload processes' own CPU (wait4), which is a lower bound: the kernel's
softirq work is charged to whatever runs when a packet arrives. The shaper's CPU is shown too
(it shares the 2 cores). Then the memory of our daemon: RSS per idle connection (N open) and
the RSS growth during a transfer. Needs root.

    .venv/bin/python benchmarks/userspace_tcp.py [--quick] [--seconds 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.emu.cleanup import ProcessRecord, RunRecord
from testbed.emu.linkparams import LinkShaping
from testbed.emu.network import Emulation
from testbed.stacks.base import StackConfig
from testbed.stacks.userspace import UserspacePreparedHost, UserspaceStack
from topologies.pair import B_ADDR, PairTopo

PORT = 5201
RTT_MS = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONFIGS = ("linux->linux", "ours->ours", "ours->linux", "linux->ours")
ROOT = Path(__file__).resolve().parents[1]


def cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def iface_packets(emu: Emulation, host: str) -> int:
    """Packets sent plus received on the host's link interface (the kernel's counters, which
    see our packet socket's frames as well as the kernel stack's)."""
    out = emu.host(host).run(["ip", "-s", "-j", "link", "show", "dev", f"{host}-eth0"])
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])


@dataclass
class Run:
    config: str
    goodput_mbps: float
    pps: float
    cpu_s_per_gb: float  # ours: daemon(s); linux: workload processes (lower bound)
    shaper_cpu_pct: float
    sha_ok: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _workload(emu: Emulation, host: str, argv: list[str]) -> subprocess.Popen[bytes]:
    return emu.popen(emu.host(host), [sys.executable, "-m", "testbed.workload", *argv],
                     "workload", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(ROOT))


def _wait_cpu(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a child and return its CPU seconds (user + system) from wait4."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            return float("nan")
        time.sleep(0.05)


def transfer(emu: Emulation, config: str, seconds: float,
             daemons: dict[str, UserspacePreparedHost], tmp: Path) -> Run:
    sender_ours, receiver_ours = (side == "ours" for side in config.split("->"))
    server_args = ["server", "--listen", "0.0.0.0", "--port", str(PORT), "--seed", "5",
                   "--timeout", "60", "--report", str(tmp / "server.json")]
    client_args = ["client", "--connect", B_ADDR, "--port", str(PORT), "--seed", "5",
                   "--timeout", "60", "--seconds", f"{seconds:g}", "--close-delay", "0",
                   "--report", str(tmp / "client.json")]
    server_args += daemons["b"].workload_args() if receiver_ours else \
        ["--proto", "tcp", "--congestion", "cubic"]
    client_args += daemons["a"].workload_args() if sender_ours else \
        ["--proto", "tcp", "--congestion", "cubic"]
    ours_pids = [daemons[h].daemon_pid for h, ours in (("a", sender_ours), ("b", receiver_ours))
                 if ours]
    shaper = emu.shaper_stats().get("loop", {})
    cpu0 = [cpu_s(pid) for pid in ours_pids]
    pkts0 = iface_packets(emu, "a")
    t0 = time.monotonic()
    server = _workload(emu, "b", server_args)
    assert server.stdout is not None
    if b"LISTENING" not in server.stdout.readline():
        raise RuntimeError("workload server did not listen")
    client = _workload(emu, "a", client_args)
    client_cpu = _wait_cpu(client, seconds + 90)
    server_cpu = _wait_cpu(server, 30)
    elapsed = time.monotonic() - t0
    pkts = iface_packets(emu, "a") - pkts0
    cpu = sum(cpu_s(pid) for pid in ours_pids) - sum(cpu0)
    shaper_after = emu.shaper_stats().get("loop", {})
    shaper_cpu = shaper_after.get("cpu_s", 0.0) - shaper.get("cpu_s", 0.0)
    server.communicate()
    report = json.loads((tmp / "server.json").read_text())
    sent = json.loads((tmp / "client.json").read_text())
    got = int(report["bytes"])
    gb = max(got, 1) / 1e9
    if not ours_pids:
        cpu = client_cpu + server_cpu
    duration = float(report["duration_s"] or elapsed)
    return Run(config, float(report["goodput_mbps"] or 0.0), pkts / duration, cpu / gb,
               100 * shaper_cpu / elapsed, report["sha256"] == sent["sha256"] and got > 0,
               {"bytes": got, "duration_s": duration, "cpu_s": cpu,
                "errors": [report["error"], sent["error"]]})


@contextmanager
def emulation(shaping: LinkShaping, record: RunRecord) -> Iterator[Emulation]:
    emu = Emulation(PairTopo(shaping=shaping), "userspace", seed=1, record=record)
    try:
        emu.start()
        for host in ("a", "b"):
            # Linux caches ssthresh per destination; every Linux run must start afresh.
            emu.host(host).run(["sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1"])
        yield emu
    finally:
        emu.stop()


def prepare(emu: Emulation, host: str, driver: UserspaceStack) -> UserspacePreparedHost:
    prepared = driver.prepare(emu.recorded(host), [], StackConfig(congestion="cubic"))
    assert isinstance(prepared, UserspacePreparedHost)
    return prepared


def run_path(rate: float | None, seconds: float, repeat: int, configs: list[str],
             record: RunRecord, driver: UserspaceStack, tmp: Path) -> dict[str, list[Run]]:
    shaping = LinkShaping.symmetric(rate_mbps=rate, delay_ms=RTT_MS / 2)
    runs: dict[str, list[Run]] = {c: [] for c in configs}
    with emulation(shaping, record) as emu:
        for _ in range(repeat):
            for config in configs:
                daemons = {}
                try:
                    for host, side in zip("ab", config.split("->"), strict=True):
                        if side == "ours":
                            daemons[host] = prepare(emu, host, driver)
                    runs[config].append(transfer(emu, config, seconds, daemons, tmp))
                finally:
                    for host, prepared in daemons.items():
                        driver.release(emu.recorded(host), prepared)
                r = runs[config][-1]
                print(f"  {_rate(rate):>9s} {config:13s} {r.goodput_mbps:7.1f} Mbit/s "
                      f"{r.cpu_s_per_gb:6.1f} CPU s/GB  sha {'ok' if r.sha_ok else 'BAD'}",
                      file=sys.stderr, flush=True)
    return runs


def _rate(rate: float | None) -> str:
    return "unshaped" if rate is None else f"{rate:g} Mbit/s"


# -- memory ------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from testbed.runtime import api
ctl, role, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
held = []
if role == "server":
    listener = api.listen(ctl, "0.0.0.0", 5300, backlog=1024)
    print("LISTENING", flush=True)
    held = [listener.accept(timeout=30)[0] for _ in range(n)]
else:
    held = [api.connect(ctl, sys.argv[4], 5300, timeout=30) for _ in range(n)]
print("HELD", flush=True)
sys.stdin.read()
"""


def memory(seconds: float, n_idle: int, record: RunRecord, driver: UserspaceStack,
           tmp: Path) -> dict[str, float]:
    """RSS per idle connection (N held open between two of our daemons) and RSS growth of
    the sender's and receiver's daemon during an unshaped transfer."""
    out: dict[str, float] = {}
    with emulation(LinkShaping.symmetric(delay_ms=RTT_MS / 2), record) as emu:
        daemons = {h: prepare(emu, h, driver) for h in "ab"}
        try:
            time.sleep(0.5)
            base = {h: rss_kb(d.daemon_pid) for h, d in daemons.items()}
            procs = []
            for host, role in (("b", "server"), ("a", "client")):
                argv = [sys.executable, "-c", HOLDER, daemons[host].control_path, role,
                        str(n_idle), B_ADDR]
                p = emu.popen(emu.host(host), argv, "holder", stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, cwd=str(ROOT))
                procs.append(p)
                if role == "server":
                    assert p.stdout is not None
                    p.stdout.readline()
            for p in procs:
                assert p.stdout is not None
                while b"HELD" not in p.stdout.readline():
                    pass
            time.sleep(0.5)
            for h in "ab":
                out[f"idle_kb_per_conn_{h}"] = (rss_kb(daemons[h].daemon_pid) - base[h]) / n_idle
            for p in procs:
                p.communicate(b"", timeout=30)
            time.sleep(0.5)
            before = {h: rss_kb(d.daemon_pid) for h, d in daemons.items()}
            peak = dict(before)
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    for h, d in daemons.items():
                        peak[h] = max(peak[h], rss_kb(d.daemon_pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                r = transfer(emu, "ours->ours", seconds, daemons, tmp)
            finally:
                stop.set()
                sampler.join()
            out["busy_kb_sender"] = peak["a"] - before["a"]
            out["busy_kb_receiver"] = peak["b"] - before["b"]
            out["busy_goodput_mbps"] = r.goodput_mbps
            out["rss_kb_base"] = base["a"]
        finally:
            for host, prepared in daemons.items():
                driver.release(emu.recorded(host), prepared)
    return out


# -- report ------------------------------------------------------------------------------------

def table(results: dict[float | None, dict[str, list[Run]]]) -> str:
    head = ("path (20 ms RTT)", "stacks (a->b)", "goodput Mbit/s", "ours/Linux", "pkts/s",
            "CPU s/GB", "shaper CPU", "sha256")
    rows: list[tuple[str, ...]] = [head]
    for rate, runs in results.items():
        linux = runs.get("linux->linux")
        base = statistics.median(r.goodput_mbps for r in linux) if linux else None
        for config, rs in runs.items():
            if not rs:
                continue
            good = statistics.median(r.goodput_mbps for r in rs)
            ratio = "-" if base is None or config == "linux->linux" or not base else \
                f"{good / base:.0%}"
            cpu = statistics.median(r.cpu_s_per_gb for r in rs)
            cpu_text = f"{cpu:.1f}" + (" (>=)" if config == "linux->linux" else "")
            rows.append((_rate(rate), config, f"{good:.1f}", ratio,
                         f"{statistics.median(r.pps for r in rs):.0f}", cpu_text,
                         f"{statistics.median(r.shaper_cpu_pct for r in rs):.0f}%",
                         "ok" if all(r.sha_ok for r in rs) else "BAD"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s transfers, one repeat")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rates", default="10,50,100,0", help="Mbit/s, 0 for unshaped")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--idle", type=int, default=100, help="idle connections for the memory")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--json", type=Path, help="also write the runs here")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.repeat = 3.0, 1
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    configs = [c for c in args.configs.split(",") if c]
    rates = [None if float(r) == 0 else float(r) for r in args.rates.split(",")]
    record = RunRecord(f"bench-userspace-{secrets.token_hex(3)}",
                       ProcessRecord.of(os.getpid(), "benchmarks/userspace_tcp.py"))
    record.save()
    results: dict[float | None, dict[str, list[Run]]] = {}
    mem: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            driver = UserspaceStack(control_dir=tmp / "run")
            for rate in rates:
                results[rate] = run_path(rate, args.seconds, args.repeat, configs, record,
                                         driver, tmp)
            if not args.no_memory:
                mem = memory(args.seconds, args.idle, record, driver, tmp)
    finally:
        record.path.unlink(missing_ok=True)
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {args.seconds:g} s transfers, "
          f"median of {args.repeat}; userspace link backend; Linux: cubic per socket")
    print(table(results))
    if mem:
        print(f"\nour daemon's memory: {mem['idle_kb_per_conn_a']:.1f} KiB (client) / "
              f"{mem['idle_kb_per_conn_b']:.1f} KiB (server) RSS per idle connection "
              f"({args.idle} open; base RSS {mem['rss_kb_base'] / 1024:.1f} MiB); during a "
              f"transfer at {mem['busy_goodput_mbps']:.0f} Mbit/s the RSS grows by "
              f"{mem['busy_kb_sender'] / 1024:.1f} MiB (sender) and "
              f"{mem['busy_kb_receiver'] / 1024:.1f} MiB (receiver)")
    if args.json:
        args.json.write_text(json.dumps({
            "runs": {_rate(r): {c: [vars(x) for x in rs] for c, rs in runs.items()}
                     for r, runs in results.items()}, "memory": mem}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
