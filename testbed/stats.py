"""Per-host statistics of the kernel stacks: nstat counter snapshots and the parsing of
`ss -tinHM` into per-connection/per-subflow samples (written by testbed.sampler)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from testbed.errors import TestbedError

if TYPE_CHECKING:
    from testbed.stacks.base import HostExec

# ---------------------------------------------------------------------------------------------
# nstat

# -a: absolute values, ignore the history file; -s: do not update it. Together nstat neither
# reads nor writes /tmp/.nstat.u$UID, which every namespace shares (it lives in the file
# system, not the netns), so hosts would otherwise corrupt each other's baselines.
NSTAT_ARGV: tuple[str, ...] = ("nstat", "-a", "-z", "-s", "--json")
MPTCP_PREFIX = "MPTcpExt"
TCP_PREFIXES: tuple[str, ...] = ("Tcp",)  # Tcp* and TcpExt*


def parse_nstat_json(text: str) -> dict[str, int]:
    """Counters from `nstat --json` output ({"kernel": {name: value}})."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TestbedError(f"nstat printed no valid JSON ({exc}): {text[:200]!r}") from None
    table = doc.get("kernel") if isinstance(doc, dict) else None
    if not isinstance(table, dict):
        raise TestbedError(f"nstat JSON has no 'kernel' table: {text[:200]!r}")
    return {str(k): int(v) for k, v in table.items()}


def nstat_snapshot(host: HostExec) -> dict[str, int]:
    """All of the host's SNMP/netstat counters now, zeros included."""
    return parse_nstat_json(host.run(list(NSTAT_ARGV)))


def counters_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """after - before for every counter in either snapshot (a missing one counts as 0)."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))}


def filter_counters(
    counters: Mapping[str, int], prefixes: Sequence[str] = (MPTCP_PREFIX, *TCP_PREFIXES)
) -> dict[str, int]:
    """Only the counters whose names start with one of `prefixes` (default MPTcpExt*, Tcp*)."""
    return {k: v for k, v in counters.items() if k.startswith(tuple(prefixes))}


def mptcp_counters(counters: Mapping[str, int]) -> dict[str, int]:
    """MPTcpExt* counters with the prefix removed, so names match the kernel MIB
    (MPCapableSYNRX, MPJoinSynRx, ...) and our own stack's counters."""
    return {k[len(MPTCP_PREFIX) :]: v for k, v in counters.items() if k.startswith(MPTCP_PREFIX)}


# ---------------------------------------------------------------------------------------------
# ss -tinHM


@dataclass
class SocketSample:
    """One socket at one instant, as `ss -tinHM` shows it. None = ss did not print it."""

    t: float
    netid: str  # "tcp" or "mptcp"
    kind: str  # "subflow" (TCP with ulp mptcp), "mptcp" (the MPTCP socket), "tcp" (plain)
    state: str
    local: str
    remote: str
    token: str | None = None  # local MPTCP token: the same for a connection and its subflows
    subflows: int | None = None  # MPTCP socket: extra subflows (the first one not counted)
    cwnd: int | None = None
    ssthresh: int | None = None
    srtt_ms: float | None = None
    rttvar_ms: float | None = None
    rto_ms: float | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    bytes_sent: int | None = None
    retrans: int | None = None  # total retransmitted segments
    delivery_rate_bps: float | None = None
    congestion: str | None = None
    mptcp_flags: str | None = None  # subflow: M=MP_CAPABLE, J=MP_JOIN, e=established, ...


CSV_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SocketSample))

# Bare words ss prints before the congestion control name (tcp_show_info in ss.c).
_BARE_FLAGS = frozenset({"ts", "sack", "ecn", "ecnseen", "fastopen", "app_limited", "ecn_low"})
# Keys ss separates from their value by a space instead of a colon.
_SPACED_KEYS = frozenset({"send", "pacing_rate", "delivery_rate"})
_RATE = re.compile(r"^([0-9.]+)([KMGT]?)bps$")
_RATE_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_TOKEN = re.compile(r"([0-9a-f]+)\(id:\d+\)$")


def _strip_scope(addr: str) -> str:
    """`10.0.2.1%c2:53769` -> `10.0.2.1:53769` (ss adds %dev for sockets bound to a device)."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr
    if host.startswith("["):
        return addr  # IPv6: keep as printed, the scope there is part of the address
    return f"{host.split('%', 1)[0]}:{port}"


def addr_port(addr: str) -> int | None:
    """The port of an `addr:port` string, None for `*`."""
    _, _, port = addr.rpartition(":")
    return int(port) if port.isdigit() else None


def _rate(text: str) -> float | None:
    m = _RATE.match(text)
    return float(m.group(1)) * _RATE_SCALE[m.group(2)] if m else None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_info(sample: SocketSample, tokens: list[str]) -> None:
    """Fill `sample` from the key:value tokens of ss's info line; unknown tokens are ignored
    so that a newer ss with more fields still parses."""
    seen_keyed = False
    in_ulp = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok in _SPACED_KEYS and i < len(tokens):
            if tok == "delivery_rate":
                sample.delivery_rate_bps = _rate(tokens[i])
            i += 1
            seen_keyed = True
            continue
        if tok == "tcp-ulp-mptcp":
            in_ulp = True
            sample.kind = "subflow"
            continue
        key, sep, value = tok.partition(":")
        if not sep:
            # The congestion control name is the first bare word that is not an option flag,
            # printed before any key:value (bbr adds its own "bbr:(...)" token later).
            if not seen_keyed and sample.congestion is None and tok not in _BARE_FLAGS:
                sample.congestion = tok
            continue
        seen_keyed = True
        if in_ulp:
            if key == "flags":
                sample.mptcp_flags = value
            elif key == "token":
                # "remote(id:R)/local(id:L)": the local token names the connection on this host
                m = _TOKEN.search(value.rpartition("/")[2])
                if m:
                    sample.token = m.group(1)
            continue
        if key == "cwnd":
            sample.cwnd = _int(value)
        elif key == "ssthresh":
            sample.ssthresh = _int(value)
        elif key == "rtt":
            srtt, _, var = value.partition("/")
            sample.srtt_ms, sample.rttvar_ms = _float(srtt), _float(var)
        elif key == "rto":
            sample.rto_ms = _float(value)
        elif key == "bytes_acked":
            sample.bytes_acked = _int(value)
        elif key == "bytes_received":
            sample.bytes_received = _int(value)
        elif key == "bytes_sent":
            sample.bytes_sent = _int(value)
        elif key == "retrans":
            # "retrans:unacked/total"
            sample.retrans = _int(value.rpartition("/")[2])
        elif key == "token" and sample.netid == "mptcp":
            sample.token = value
        elif key == "subflows" and sample.netid == "mptcp":
            sample.subflows = _int(value)


def parse_ss(text: str, t: float) -> list[SocketSample]:
    """Parse `ss -tinHM` output: each socket is a header line (netid state recv-q send-q
    local peer) followed by indented info line(s). Lines that fit no pattern are skipped."""
    samples: list[SocketSample] = []
    current: SocketSample | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if current is not None:
                _parse_info(current, line.split())
            continue
        cols = line.split()
        if len(cols) < 6 or cols[0] not in ("tcp", "mptcp"):
            current = None
            continue
        netid, state = cols[0], cols[1]
        current = SocketSample(
            t=t,
            netid=netid,
            kind="mptcp" if netid == "mptcp" else "tcp",
            state=state,
            local=_strip_scope(cols[4]),
            remote=_strip_scope(cols[5]),
        )
        if current.netid == "tcp":
            current.retrans = 0  # ss omits retrans:… until the first retransmission
        samples.append(current)
    return samples


def ss_argv(port: int | None = None) -> list[str]:
    """`ss -tinHM` (TCP and MPTCP sockets, numeric, info, no header), optionally only the
    sockets whose source or destination port is `port`."""
    argv = ["ss", "-tinHM"]
    if port is not None:
        argv += ["(", "sport", "=", f":{port}", "or", "dport", "=", f":{port}", ")"]
    return argv


def sample_to_row(sample: SocketSample) -> list[str]:
    row = []
    for name in CSV_FIELDS:
        value = getattr(sample, name)
        row.append("" if value is None else repr(value) if isinstance(value, float) else str(value))
    return row


def read_samples(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The sampler's CSV as a list of rows (strings; empty = not reported)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def max_established_subflows(
    rows: Iterable[Mapping[str, str]] | str | os.PathLike[str],
    *,
    token: str | None = None,
    port: int | None = None,
) -> int:
    """The largest number of subflows one connection had in state ESTAB at one sampling
    instant. A plain TCP connection counts as one subflow. Restrict to a connection with
    `token` (its local MPTCP token) or `port` (either end's port, e.g. the server's)."""
    if isinstance(rows, str | os.PathLike):
        rows = read_samples(rows)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        if row["state"] != "ESTAB" or row["kind"] not in ("subflow", "tcp"):
            continue
        if token is not None and row["token"] != token:
            continue
        if port is not None and port not in (addr_port(row["local"]), addr_port(row["remote"])):
            continue
        conn = row["token"] if row["kind"] == "subflow" else f"{row['local']}>{row['remote']}"
        counts[(row["t"], conn)] += 1
    return max(counts.values(), default=0)


# ---------------------------------------------------------------------------------------------
# Starting the sampler on a host


def sampler_argv(
    out: str | os.PathLike[str], interval: float = 0.1, port: int | None = None
) -> list[str]:
    """The command line of testbed.sampler, run with this interpreter."""
    argv = [sys.executable, "-m", "testbed.sampler", "--interval", str(interval), "--out", str(out)]
    if port is not None:
        argv += ["--port", str(port)]
    return argv


def start_sampler(
    host: HostExec, out: str | os.PathLike[str], interval: float = 0.1, port: int | None = None
) -> subprocess.Popen[bytes]:
    """One long-lived sampler process inside `host` (one exec per sample from outside would
    cost more than the sampling itself at 10 Hz)."""
    return host.popen(
        sampler_argv(out, interval, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parent.parent),
    )


def stop_sampler(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then wait for the file to be flushed; SIGKILL only if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()
