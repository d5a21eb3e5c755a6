"""Metrics from results directories: throughput per subflow, MPTCP option counts, goodput.

Everything here takes either a packet DataFrame in the `analysis.tshark.COLUMNS` layout or a
results directory (DESIGN.md, "Results directory"); nothing imports the stack.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import tshark

DEFAULT_BIN_S = 0.1
TOTAL_LABEL = "total"


# ---------------------------------------------------------------------------------------------
# Results directory loading


MEASURED_REPORTS = ("workload-client.json", "workload-server.json")


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is absent (runs may be partial)."""
    if not path.is_file():
        return {}
    with path.open() as fh:
        data = json.load(fh)
    return data if isinstance(data, dict) else {}


def load_meta(run_dir: Path) -> dict[str, Any]:
    return load_json(Path(run_dir) / "meta.json")


def load_summary(run_dir: Path) -> dict[str, Any]:
    return load_json(Path(run_dir) / "summary.json")


def stack_label(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """The stack that ran, as one label: `stack`, or `client_stack/server_stack`."""
    for source in (summary, meta):
        if source.get("stack"):
            return str(source["stack"])
    client, server = meta.get("client_stack"), meta.get("server_stack")
    if client or server:
        return str(client) if client == server else f"{client}/{server}"
    return "unknown"


def load_workload_report(run_dir: Path) -> dict[str, Any]:
    """The measured flow's receiver's workload report (the one with a goodput "series"), or
    {}. The measured flow's reports (workload-client.json, workload-server.json) come before
    those of other flows (workload-<flow>-<side>.json), whichever way their names sort."""
    stats = Path(run_dir) / "stats"
    reports = sorted(stats.glob("workload-*.json"),
                     key=lambda p: (p.name not in MEASURED_REPORTS, p.name)) \
        if stats.is_dir() else []
    # The contract names the receiver by the presence of "series", not by file name.
    for path in reports:
        report = load_json(path)
        if report.get("series"):
            return report
    return load_json(reports[0]) if reports else {}


def measured_port(meta: dict[str, Any]) -> int | None:
    """The measured flow's port when other connections ran between the same hosts (competing
    flows `on_measured_stack`, e.g. handover's interactive flow), so that captures hold more
    than the measured connection; None otherwise (nothing to tell apart)."""
    flows = meta.get("competing_flows") or []
    if not any(isinstance(f, dict) and f.get("on_measured_stack") for f in flows):
        return None
    port = (meta.get("params") or {}).get("port")
    return int(port) if isinstance(port, int) else None


def measured_packets(df: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """The packets of the measured flow's connection (its subflows: either port is the
    measured one) where the run had other connections between its hosts; else all."""
    port = measured_port(meta)
    if port is None or df.empty:
        return df
    keep = (df["tcp_srcport"] == port) | (df["tcp_dstport"] == port)
    return df[keep.fillna(False).astype(bool)]


def run_pcaps(run_dir: Path) -> dict[str, list[Path]]:
    """Captures of a run grouped by host: pcap/<host>-<intf>.pcap -> {host: [paths]}."""
    pcap_dir = Path(run_dir) / "pcap"
    groups: dict[str, list[Path]] = {}
    for path in sorted(pcap_dir.glob("*.pcap")) if pcap_dir.is_dir() else []:
        # Interface names carry no '-' in Mininet (h1-eth0), host names may: split on the last.
        host = path.stem.rsplit("-", 1)[0] if "-" in path.stem else path.stem
        groups.setdefault(host, []).append(path)
    return groups


def read_host_packets(run_dir: Path, host: str) -> pd.DataFrame:
    """All captures of one host dissected together (see `tshark.read_merged`)."""
    pcaps = run_pcaps(run_dir).get(host, [])
    cache = Path(run_dir) / "pcap" / f"{host}.all{tshark.CACHE_SUFFIX}"
    return tshark.read_merged(pcaps, cache)


# ---------------------------------------------------------------------------------------------
# Packet-level metrics


def option_counts(df: pd.DataFrame) -> dict[str, int]:
    """Packets carrying each MPTCP option subtype, keyed by RFC 8684 name."""
    counts: dict[str, int] = {}
    for label in tshark.MPTCP_SUBTYPES.values():
        column = "rm_addr" if label == "REMOVE_ADDR" else label.lower()
        counts[label] = int(df[column].sum()) if column in df else 0
    return counts


def _data_direction(df: pd.DataFrame) -> pd.Series:
    """True for packets sent by the side of their subflow that sent the most payload.

    A bulk transfer's reverse direction is pure ACKs; picking the heavier side per subflow
    keeps the figure about data without needing to know which host was the client.
    """
    tcp = df[df["tcp_stream"].notna()]
    sent = tcp.groupby(["tcp_stream", "ip_src", "tcp_srcport"], dropna=False)["tcp_len"].sum()
    if sent.empty:
        return pd.Series(False, index=df.index)
    heavy = sent.reset_index().sort_values("tcp_len").groupby("tcp_stream").tail(1)
    keys = set(zip(heavy["tcp_stream"], heavy["ip_src"], heavy["tcp_srcport"], strict=True))
    return pd.Series([(s, a, p) in keys for s, a, p in
                      zip(df["tcp_stream"], df["ip_src"], df["tcp_srcport"], strict=True)],
                     index=df.index)


def subflows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per subflow (TCP stream) in its data direction.

    Columns: tcp_stream, mptcp_stream, src, dst (addr:port), label, first_s, last_s, packets,
    bytes (payload incl. retransmissions), retransmitted_bytes, join (opened by MP_JOIN),
    backup (backup flag seen on its MP_JOIN or MP_PRIO).
    """
    columns = ["tcp_stream", "mptcp_stream", "src", "dst", "label", "first_s", "last_s",
               "packets", "bytes", "retransmitted_bytes", "join", "backup"]
    if df.empty or df["tcp_stream"].isna().all():
        return pd.DataFrame(columns=columns)
    t0 = float(df["time_epoch"].min())
    data = df[_data_direction(df)]
    rows = []
    for stream, pkts in data.groupby("tcp_stream"):
        every = df[df["tcp_stream"] == stream]
        first = pkts.iloc[0]
        mptcp = every["mptcp_stream"].dropna()
        rows.append({
            "tcp_stream": int(stream),
            "mptcp_stream": int(mptcp.iloc[0]) if not mptcp.empty else pd.NA,
            "src": f"{first['ip_src']}:{first['tcp_srcport']}",
            "dst": f"{first['ip_dst']}:{first['tcp_dstport']}",
            "label": f"sf{int(stream)} {first['ip_src']}→{first['ip_dst']}",
            "first_s": float(every["time_epoch"].min()) - t0,
            "last_s": float(every["time_epoch"].max()) - t0,
            "packets": len(pkts),
            "bytes": int(pkts["tcp_len"].sum()),
            "retransmitted_bytes": int(pkts.loc[pkts["retransmission"], "tcp_len"].sum()),
            "join": bool((every["mp_join"] & every["syn"]).any()),
            "backup": bool(every["backup"].any()),
        })
    return pd.DataFrame(rows, columns=columns)


def subflows_per_connection(df: pd.DataFrame) -> pd.Series:
    """Number of subflows (TCP streams) per MPTCP connection, indexed by mptcp_stream.

    Plain TCP connections have no mptcp_stream and are not counted.
    """
    mp = df.dropna(subset=["mptcp_stream", "tcp_stream"])
    if mp.empty:
        return pd.Series(dtype="int64", name="subflows")
    counts = mp.groupby("mptcp_stream")["tcp_stream"].nunique().astype("int64")
    counts.name = "subflows"
    return counts


def throughput(df: pd.DataFrame, bin_s: float = DEFAULT_BIN_S,
               exclude_retransmissions: bool = False) -> pd.DataFrame:
    """Throughput over time per subflow and in total, in the data direction.

    Returns long-form rows (time_s, subflow, tcp_stream, mptcp_stream, bytes, mbps), time_s
    being the start of each bin relative to the first packet of `df`; the "total" rows sum
    all subflows. Empty bins are present with 0 so lines drop to zero during stalls.
    """
    if bin_s <= 0:
        raise ValueError(f"bin_s must be positive, got {bin_s}")
    columns = ["time_s", "subflow", "tcp_stream", "mptcp_stream", "bytes", "mbps"]
    if df.empty or df["tcp_stream"].isna().all():
        return pd.DataFrame(columns=columns)
    t0 = float(df["time_epoch"].min())
    data = df[_data_direction(df)]
    if exclude_retransmissions:
        data = data[~data["retransmission"]]
    n_bins = math.floor((float(df["time_epoch"].max()) - t0) / bin_s) + 1
    bins = ((data["time_epoch"] - t0) / bin_s).astype("int64").clip(upper=n_bins - 1)
    info = subflows(df).set_index("tcp_stream")
    frames = []
    for stream, sizes in data["tcp_len"].groupby(data["tcp_stream"]):
        per_bin = sizes.groupby(bins.loc[sizes.index]).sum().reindex(range(n_bins), fill_value=0)
        row = info.loc[stream] if stream in info.index else None
        frames.append(pd.DataFrame({
            "time_s": [i * bin_s for i in range(n_bins)],
            "subflow": row["label"] if row is not None else f"sf{stream}",
            "tcp_stream": int(stream),
            "mptcp_stream": row["mptcp_stream"] if row is not None else pd.NA,
            "bytes": per_bin.to_numpy(dtype="int64"),
        }))
    per_subflow = pd.concat(frames, ignore_index=True)
    total = per_subflow.groupby("time_s", as_index=False)["bytes"].sum()
    total["subflow"] = TOTAL_LABEL
    total["tcp_stream"] = pd.NA
    total["mptcp_stream"] = pd.NA
    out = pd.concat([per_subflow, total], ignore_index=True)
    out["mbps"] = out["bytes"] * 8 / bin_s / 1e6
    return out[columns]


# ---------------------------------------------------------------------------------------------
# Workload-level metrics


def goodput_series(report: dict[str, Any]) -> pd.DataFrame:
    """The receiver's goodput over time: columns time_s, bytes, mbps.

    The report's "series" holds [t_seconds, bytes_in_bin] pairs; the bin width is taken from
    the spacing of t (100 ms by contract) because dividing by a wrong width would scale the
    whole curve silently.
    """
    series = report.get("series") or []
    if not series:
        return pd.DataFrame(columns=["time_s", "bytes", "mbps"])
    frame = pd.DataFrame([(float(t), int(b)) for t, b in series], columns=["time_s", "bytes"])
    steps = frame["time_s"].diff().dropna()
    steps = steps[steps > 0]
    bin_s = float(steps.median()) if not steps.empty else DEFAULT_BIN_S
    frame["mbps"] = frame["bytes"] * 8 / bin_s / 1e6
    return frame


def mean_goodput_mbps(report: dict[str, Any]) -> float | None:
    """Goodput over the whole transfer from the report's bytes and timestamps."""
    if report.get("goodput_mbps") is not None:
        return float(report["goodput_mbps"])
    start, end, size = report.get("t_start"), report.get("t_end"), report.get("bytes")
    if start is None or end is None or size is None or float(end) <= float(start):
        return None
    return float(size) * 8 / (float(end) - float(start)) / 1e6


def link_rates_mbps(meta: dict[str, Any]) -> dict[str, float]:
    """Configured link rates from meta.json params: keys like rate1_mbps, rate_mbps, bw_mbps.

    Absent keys simply give no reference lines; non-numeric values are ignored rather than
    crashing a figure.
    """
    params = meta.get("params") or {}
    rates: dict[str, float] = {}
    for key, value in sorted(params.items()) if isinstance(params, dict) else []:
        if not (key.endswith("_mbps") and ("rate" in key or "bw" in key)):
            continue
        try:
            rate = float(value)
        except (TypeError, ValueError):
            continue
        if rate > 0:
            rates[key] = rate
    return rates


def packet_metrics(df: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers from one host's packets."""
    per_conn = subflows_per_connection(df)
    table = subflows(df)
    return {
        "packets": len(df),
        "malformed_packets": int(df["malformed"].sum()) if "malformed" in df else 0,
        "option_counts": option_counts(df),
        "mptcp_connections": len(per_conn),
        "subflows_per_connection": {int(k): int(v) for k, v in per_conn.items()},
        "tcp_streams": int(df["tcp_stream"].nunique()),
        "subflows": table.drop(columns=["label"]).to_dict(orient="records"),
        "payload_bytes": int(table["bytes"].sum()) if not table.empty else 0,
        "retransmitted_bytes": int(table["retransmitted_bytes"].sum()) if not table.empty else 0,
    }


def nstat_deltas(run_dir: Path) -> dict[str, dict[str, int]]:
    """Counter changes per host from stats/nstat-<host>-before/after.json (non-zero only)."""
    stats = Path(run_dir) / "stats"
    deltas: dict[str, dict[str, int]] = {}
    for after_path in sorted(stats.glob("nstat-*-after.json")) if stats.is_dir() else []:
        host = after_path.name.removeprefix("nstat-").removesuffix("-after.json")
        before = load_json(stats / f"nstat-{host}-before.json")
        after = load_json(after_path)
        changed = {name: int(value) - int(before.get(name, 0)) for name, value in after.items()
                   if isinstance(value, int) and int(value) != int(before.get(name, 0))}
        deltas[host] = dict(sorted(changed.items()))
    return deltas


def run_metrics(run_dir: Path, host: str | None = None) -> dict[str, Any]:
    """Metrics of one run: summary fields, goodput, and packet metrics per captured host."""
    run_dir = Path(run_dir)
    meta, summary = load_meta(run_dir), load_summary(run_dir)
    report = load_workload_report(run_dir)
    result: dict[str, Any] = {
        "run": run_dir.name,
        "scenario": summary.get("scenario", meta.get("scenario")),
        "stack": stack_label(meta, summary),
        "params": meta.get("params", {}),
        "summary": summary,
        "workload_goodput_mbps": mean_goodput_mbps(report),
        "nstat_deltas": nstat_deltas(run_dir),
        "hosts": {},
    }
    hosts = [host] if host else list(run_pcaps(run_dir))
    for name in hosts:
        result["hosts"][name] = packet_metrics(read_host_packets(run_dir, name))
    return result


# ---------------------------------------------------------------------------------------------
# Cases, configured rates and the selftest bound (comparison across runs)

# Parameter name stem -> (unit shown, how the values of a numbered group are joined). Rates of
# two paths add up (what aggregation can reach), so they are joined with "+"; the other
# per-path values are just listed.
_UNITS: dict[str, tuple[str, str]] = {
    "mbps": ("Mbit/s", "/"), "ms": ("ms", "/"), "pct": ("%", "/"), "mib": ("MiB", "/"),
    "s": ("s", "/"), "pkts": ("pkts", "/"),
}
# Stems that need no name in front of their value: the unit says what they are.
_SELF_EXPLAINING = {"rate", "delay", "bw"}
_STEM_ORDER = ["rate", "bw", "delay", "jitter", "loss", "queue"]


def _split_param(key: str) -> tuple[str, str, str]:
    """"rate1_mbps" -> ("rate", "1", "mbps"); "direction" -> ("direction", "", "")."""
    head, _, tail = key.rpartition("_")
    stem, unit = (head, tail) if head and tail in _UNITS else (key, "")
    digits = ""
    while stem and stem[-1].isdigit():
        stem, digits = stem[:-1], stem[-1] + digits
    return stem, digits, unit


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def compact_params(params: dict[str, Any], keys: list[str]) -> str:
    """A short label from the parameters named in `keys` ("10+10 Mbit/s, 1/25 ms").

    Numbered parameters of the same kind (rate1_mbps, rate2_mbps) are shown together as soon
    as one of them is named, so a label never shows one path's rate without the other's.
    """
    stems: list[tuple[str, str]] = []
    for key in keys:
        stem, _, unit = _split_param(key)
        if (stem, unit) not in stems:
            stems.append((stem, unit))
    # Rates first, then delays: the order a reader of a two-path experiment looks for them.
    stems.sort(key=lambda su: _STEM_ORDER.index(su[0]) if su[0] in _STEM_ORDER
               else len(_STEM_ORDER))
    parts = []
    for stem, unit in stems:
        members = sorted((k for k in params if _split_param(k)[0] == stem
                          and _split_param(k)[2] == unit), key=lambda k: _split_param(k)[1])
        values = [params[k] for k in members if params[k] is not None]
        if not values:
            continue
        shown, joiner = _UNITS.get(unit, ("", "/"))
        joiner = "+" if stem in ("rate", "bw") else joiner
        text = joiner.join(_fmt_value(v) for v in values)
        if shown:
            text = f"{text} {shown}" if shown != "%" else f"{text}%"
        if stem not in _SELF_EXPLAINING and not (isinstance(values[0], str) and not shown):
            text = f"{stem.replace('_', ' ')} {text}"
        parts.append(text)
    return ", ".join(parts) if parts else "default"


def case_label(meta: dict[str, Any], varying: list[str] | None = None) -> str:
    """The short label of a run's case: meta.json's `label`, else the varying parameters."""
    if meta.get("label"):
        return str(meta["label"])
    params = meta.get("params") or {}
    if not isinstance(params, dict):
        return str(meta.get("scenario") or "default")
    keys = varying if varying is not None else sorted(params)
    chosen = [k for k in keys if k in params]
    if not chosen:  # nothing differs between the runs compared: the scenario is the case
        return str(meta.get("scenario") or "default")
    return compact_params(params, chosen)


def configured_rates(meta: dict[str, Any]) -> dict[str, float]:
    """Path name -> configured rate [Mbit/s]: meta.json's `configured_rates_mbps`, else the
    rate parameters (older runs)."""
    given = meta.get("configured_rates_mbps")
    if isinstance(given, dict) and given:
        rates = {}
        for name, value in given.items():
            try:
                rate = float(value)
            except (TypeError, ValueError):
                continue
            if rate > 0:
                rates[str(name)] = rate
        if rates:
            return rates
    return link_rates_mbps(meta)


def simult_flows_bound_s(size_bytes: float, rates_mbps: list[float]) -> float:
    """The kernel selftest simult_flows.sh bound: size*8/(r1+r2) * 10/9 + 0.4 s."""
    return link_limited_s(size_bytes, rates_mbps) * 10 / 9 + 0.4


def link_limited_s(size_bytes: float, rates_mbps: list[float]) -> float:
    """The time the summed configured rates need for `size_bytes`, without any slack."""
    total = sum(rates_mbps)
    if total <= 0:
        raise ValueError("rates must sum to a positive value")
    return size_bytes * 8 / (total * 1e6)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def completion(summary: dict[str, Any]) -> dict[str, Any]:
    """Duration against the selftest bound, from summary.json: duration_s, bound_s,
    link_limited_s, within_bound (None when the run has no bound).

    `link_limited_s` is derived from the bound when an older summary lacks it (the bound is
    link-limited time * 10/9 + 0.4 s); `within_bound` is recomputed from the duration when
    absent, so the verdict drawn is the one the numbers give.
    """
    duration, bound = _number(summary.get("duration_s")), _number(summary.get("bound_s"))
    limited = _number(summary.get("link_limited_s"))
    if limited is None and bound is not None:
        limited = (bound - 0.4) * 9 / 10
    within = summary.get("within_bound")
    if bound is None:
        within = None
    elif not isinstance(within, bool):
        within = duration is not None and duration <= bound
    return {"duration_s": duration, "bound_s": bound, "link_limited_s": limited,
            "within_bound": within}


# ---------------------------------------------------------------------------------------------
# Socket samples (stats/subflows-<host>.csv, written by the sampler)

SAMPLE_NUMBERS = ("cwnd", "ssthresh", "srtt_ms", "rttvar_ms", "rto_ms", "bytes_acked",
                  "bytes_received", "bytes_sent", "retrans", "delivery_rate_bps")


def load_socket_samples(run_dir: Path) -> dict[str, pd.DataFrame]:
    """The sampler's CSV per host: {host: frame}; empty cells (not reported) become NaN.

    A file that cannot be parsed is skipped rather than failing the whole analysis.
    """
    stats = Path(run_dir) / "stats"
    samples: dict[str, pd.DataFrame] = {}
    for path in sorted(stats.glob("subflows-*.csv")) if stats.is_dir() else []:
        host = path.stem.removeprefix("subflows-")
        try:
            frame = pd.read_csv(path, dtype={"token": "string", "local": "string",
                                             "remote": "string", "kind": "string"})
        except (ValueError, OSError, pd.errors.ParserError):
            continue
        if frame.empty or "t" not in frame:
            continue
        for column in SAMPLE_NUMBERS:
            if column in frame:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
        frame["t"] = pd.to_numeric(frame["t"], errors="coerce")
        samples[host] = frame.dropna(subset=["t"])
    return samples


def measured_samples(samples: dict[str, pd.DataFrame],
                     meta: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The measured hosts' socket samples: without the files of competing flows
    (stats/subflows-<flow>-<host>.csv, flows named in meta.json)."""
    prefixes = tuple(f"{f['name']}-" for f in meta.get("competing_flows") or []
                     if isinstance(f, dict) and f.get("name"))
    return {host: frame for host, frame in samples.items()
            if not (prefixes and host.startswith(prefixes))}


def _connections(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of TCP connections (MPTCP subflows or plain TCP), without the MPTCP meta rows."""
    if "kind" in frame:
        return frame[frame["kind"].fillna("tcp").isin(["subflow", "tcp"])]
    return frame


def acked_growth(frame: pd.DataFrame) -> float:
    """Bytes acknowledged over the samples, summed over connections: > 0 only at a sender."""
    rows = _connections(frame)
    if rows.empty or "bytes_acked" not in rows or rows["bytes_acked"].isna().all():
        return 0.0
    keys = [c for c in ("local", "remote") if c in rows]
    if not keys:
        return float(rows["bytes_acked"].max() - rows["bytes_acked"].min())
    per = rows.groupby(keys, dropna=False)["bytes_acked"]
    return float((per.max() - per.min()).fillna(0).sum())


def sender_host(samples: dict[str, pd.DataFrame]) -> str | None:
    """The host whose sockets saw bytes_acked grow the most: the data sender."""
    best, growth = None, 0.0
    for host, frame in samples.items():
        grown = acked_growth(frame)
        if grown > growth:
            best, growth = host, grown
    return best


def subflow_series(frame: pd.DataFrame) -> pd.DataFrame:
    """cwnd and srtt over time per subflow: columns time_s, subflow, cwnd, srtt_ms.

    time_s counts from the first sample of the file; a subflow is named by its addresses
    ("10.0.1.1:60616 → 10.0.3.1:5201"), in the order subflows first appear.
    """
    columns = ["time_s", "subflow", "cwnd", "srtt_ms"]
    rows = _connections(frame)
    if rows.empty or "t" not in rows:
        return pd.DataFrame(columns=columns)
    t0 = float(frame["t"].min())
    local = rows["local"].fillna("?") if "local" in rows else pd.Series("?", index=rows.index)
    remote = rows["remote"].fillna("?") if "remote" in rows else pd.Series("?", index=rows.index)
    out = pd.DataFrame({
        "time_s": rows["t"] - t0,
        "subflow": local.astype(str) + " → " + remote.astype(str),
        "cwnd": rows.get("cwnd", math.nan),
        "srtt_ms": rows.get("srtt_ms", math.nan),
    })
    out = out.dropna(subset=["cwnd", "srtt_ms"], how="all")
    return out.sort_values(["time_s"], kind="stable").reset_index(drop=True)[columns]


def smoothed_goodput(series: pd.DataFrame, window_s: float = 0.5) -> pd.DataFrame:
    """A goodput series (`goodput_series`) averaged over consecutive windows of `window_s`:
    columns time_s (window start), mbps.

    Each window's rate divides its bytes by the time its bins cover, so a short last window
    is not drawn as a drop.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    if series.empty:
        return pd.DataFrame(columns=["time_s", "mbps"])
    steps = series["time_s"].diff().dropna()
    steps = steps[steps > 0]
    bin_s = float(steps.median()) if not steps.empty else DEFAULT_BIN_S
    window = (series["time_s"] / window_s + 1e-9).astype("int64")
    grouped = series.groupby(window)["bytes"]
    covered = grouped.count() * min(bin_s, window_s)
    return pd.DataFrame({"time_s": grouped.sum().index * window_s,
                         "mbps": (grouped.sum() * 8 / covered / 1e6).to_numpy()})


# ---------------------------------------------------------------------------------------------
# Scenario-specific results: vm-migration and multi-wifi

# A run "met" the migration anchor when its gap is at most the expected gap plus this slack:
# gap_s counts whole 100 ms bins, and detection (the first retransmission after the resume)
# adds a fraction of an RTO on top of the stop time plus one RTT.
MIGRATION_GAP_SLACK_S = 0.5
# handover: the receiver's gap counts whole 100 ms bins, and the expectation (detection plus
# one to three cellular round trips) leaves out slow start after the join: two bins of slack.
HANDOVER_GAP_SLACK_S = 0.2
# Croitoru et al., NSDI 2015: MPTCP within about 15% of the best AP at every position.
WIFI_BEST_AP_FRACTION = 0.85
# mobility: "tracks the upper envelope of the single paths", read as multi-wifi's "within
# about 15%": the mean per-second goodput at least this fraction of the better path's capacity.
MOBILITY_ENVELOPE_FRACTION = 0.85


def flag(value: Any) -> bool | None:
    """A yes/no cell of a runs table (bool, numpy bool, or missing) as bool or None."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return None


def load_timeline(run_dir: Path) -> list[dict[str, Any]]:
    """The events the runner applied (stats/timeline.json), in order; [] when absent."""
    path = Path(run_dir) / "stats" / "timeline.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def speaks_mptcp(meta: dict[str, Any], summary: dict[str, Any]) -> bool:
    """Whether a run used MPTCP (and is judged as such), from what the run recorded.

    The kernel stack always does; plain `tcp` never; any other stack (ours, single-path for
    now) only when the run shows it: an MPTCP workload socket, MPTCP counters that moved, a
    join, or more than one subflow.
    """
    stack = stack_label(meta, summary)
    if stack == "tcp":
        return False
    if stack == "kernel":
        return True
    prepared = summary.get("prepared") or {}
    protos = {str(side.get("workload_proto")) for side in prepared.values()
              if isinstance(side, dict)} if isinstance(prepared, dict) else set()
    counters = summary.get("mptcp_counters") or {}
    moved = any(bool(c) for c in counters.values()) if isinstance(counters, dict) else False
    subflow_count = _number(summary.get("subflows"))
    return ("mptcp" in protos or moved or summary.get("joined_new_address") is True
            or (subflow_count is not None and subflow_count > 1))


def migration_events(run_dir: Path) -> dict[str, float | None]:
    """When the VM stopped and resumed, in seconds of the receiver's series.

    move_s is the summary's `move_at_receiver_s` (the link-down's wall time minus the
    receiver's t_start); resume_s adds the time the runner actually took between the link-down
    and the resume (stats/timeline.json), else the configured stop time. lost_s is the end of
    the receiver's last data and gave_up_s when the receiver gave up (its t_end), both None
    unless the run did not survive.
    """
    run_dir = Path(run_dir)
    meta, summary = load_meta(run_dir), load_summary(run_dir)
    params = meta.get("params") or {}
    stop = _number(params.get("stop_time_s")) if isinstance(params, dict) else None
    move = _number(summary.get("move_at_receiver_s"))
    down = resume = None
    for event in load_timeline(run_dir):
        when = _number(event.get("applied_at_s", event.get("at_s")))
        if event.get("action") == "down" and down is None:
            down = when
        elif "host_action" in event and down is not None and resume is None:
            resume = when
    if move is None and down is not None:
        move = down  # no receiver clock: the runner's is off by the workload's start only
    pause = resume - down if resume is not None and down is not None else stop
    lost = gave_up = None
    if summary.get("survived") is False:
        report = load_workload_report(run_dir)
        lost = last_data_s(report)
        start, end = _number(report.get("t_start")), _number(report.get("t_end"))
        gave_up = end - start if start is not None and end is not None else None
    return {
        "move_s": move,
        "resume_s": move + pause if move is not None and pause is not None else None,
        "stop_time_s": stop,
        "lost_s": lost,
        "gave_up_s": gave_up,
    }


def last_data_s(report: dict[str, Any]) -> float | None:
    """When the receiver last got data, seconds after its t_start: t_last_data, else the end
    of the last non-empty bin of its series."""
    start, last = _number(report.get("t_start")), _number(report.get("t_last_data"))
    if start is not None and last is not None:
        return last - start
    series = goodput_series(report)
    filled = series[series["bytes"] > 0]
    if filled.empty:
        return None
    steps = series["time_s"].diff().dropna()
    steps = steps[steps > 0]
    return float(filled["time_s"].iloc[-1]) + (float(steps.median()) if not steps.empty
                                                else DEFAULT_BIN_S)


def migration_verdict(summary: dict[str, Any], multipath: bool,
                      slack_s: float = MIGRATION_GAP_SLACK_S) -> bool | None:
    """The vm-migration anchor for one run (handover's too, with HANDOVER_GAP_SLACK_S): an
    MPTCP run survives with gap_s <= expected_gap_s + `slack_s`; a single-path run dies. None
    when the summary cannot tell."""
    survived = summary.get("survived")
    if not isinstance(survived, bool):
        return None
    if not multipath:
        return not survived
    gap, expected = _number(summary.get("gap_s")), _number(summary.get("expected_gap_s"))
    if not survived or gap is None:
        return False
    return expected is None or gap <= expected + slack_s


WIFI_COLUMNS = ["step", "t_start_s", "t_end_s", "position_m", "goodput_mbps", "best_ap_mbps",
                "fraction", "ap_rates_mbps"]


def wifi_positions(summary: dict[str, Any]) -> pd.DataFrame:
    """multi-wifi: one row per position of the walk (summary `positions`), with the goodput's
    fraction of the best AP's configured rate. Malformed entries are skipped."""
    rows = []
    for i, entry in enumerate(summary.get("positions") or []):
        if not isinstance(entry, dict):
            continue
        rates = [r for r in (_number(v) for v in entry.get("ap_rates_mbps") or [])
                 if r is not None]
        best = _number(entry.get("best_ap_mbps"))
        best = best if best is not None else (max(rates) if rates else None)
        goodput = _number(entry.get("goodput_mbps"))
        step = _number(entry.get("step"))
        rows.append({
            "step": int(step) if step is not None else i,
            "t_start_s": _number(entry.get("t_start_s")),
            "t_end_s": _number(entry.get("t_end_s")),
            "position_m": _number(entry.get("position_m")),
            "goodput_mbps": goodput,
            "best_ap_mbps": best,
            "fraction": goodput / best if goodput is not None and best else None,
            "ap_rates_mbps": rates,
        })
    frame = pd.DataFrame(rows, columns=WIFI_COLUMNS)
    for column in WIFI_COLUMNS[:-1]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def wifi_result(summary: dict[str, Any]) -> dict[str, Any]:
    """multi-wifi headline numbers: fraction_of_best_ap (as the run reported it: the mean
    over the positions), the worst position's fraction and where it was, how many positions
    were within 15% of the best AP, and whether all were (the run's
    `within_15pct_at_every_step` when it has one)."""
    positions = wifi_positions(summary)
    judged = positions.dropna(subset=["fraction"])
    worst = judged.loc[judged["fraction"].idxmin()] if not judged.empty else None
    reported = _number(summary.get("fraction_of_best_ap"))
    if worst is not None:
        worst_fraction: float | None = float(worst["fraction"])
    else:
        worst_fraction = _number(summary.get("worst_step_fraction_of_best_ap"))
    within = summary.get("within_15pct_at_every_step")  # the experiment's own verdict first
    if not isinstance(within, bool):
        within = None if worst_fraction is None else worst_fraction >= WIFI_BEST_AP_FRACTION
    # Steps with no AP in range (best AP at 0) have no fraction and are not judged.
    return {
        "fraction_of_best_ap": reported,
        "worst_fraction": worst_fraction,
        "worst_position_m": (float(worst["position_m"]) if worst is not None
                             and not math.isnan(worst["position_m"]) else None),
        "positions": len(positions),
        "positions_within": int((judged["fraction"] >= WIFI_BEST_AP_FRACTION).sum()),
        "positions_judged": len(judged),
        "within_best_ap": within,
    }
