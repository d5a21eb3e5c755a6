"""MPTCP at the data level, from captures: DSS mappings per subflow, reinjections, out-of-order
delay at the receiver and one-way delay between two capture points.

Every function takes packet DataFrames in the `analysis.tshark.COLUMNS` layout (one host's
captures dissected together, `metrics.read_host_packets`). The data sequence number of each
segment is worked out here from the DSS mappings (RFC 8684 §3.3.1: `dss_length` bytes from
subflow sequence number `dss_ssn` carry data sequence numbers from `dss_dsn`), not taken from
tshark's per-segment guess, which Wireshark 4.0 gets wrong once several segments share a
mapping.
"""

from __future__ import annotations

import bisect
import heapq
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEGMENT_COLUMNS = ["frame", "time_epoch", "time_s", "mptcp_stream", "tcp_stream", "subflow",
                   "ip_src", "ip_dst", "tcp_srcport", "tcp_dstport", "tcp_seq", "tcp_len",
                   "dsn", "dsn_end", "retransmission", "ip_ttl"]
REINJECTION_COLUMNS = ["time_s", "mptcp_stream", "dsn", "bytes", "from_subflow", "to_subflow",
                       "from_stream", "to_stream"]
OOO_COLUMNS = ["time_s", "mptcp_stream", "tcp_stream", "subflow", "dsn", "bytes", "delay_s"]
OWD_COLUMNS = ["time_s", "subflow", "direction", "upstream", "downstream", "tcp_len", "owd_s"]

# Packets are the same packet at two capture points when all of these agree (a router only
# changes the TTL and the checksum).
MATCH_KEY = ["ip_src", "ip_dst", "tcp_srcport", "tcp_dstport", "tcp_seq_raw", "tcp_ack_raw",
             "ip_id", "tcp_len"]


def subflow_label(src: Any, sport: Any, dst: Any, dport: Any) -> str:
    """A subflow named by its data direction's addresses and ports: the same at every capture
    point, where tshark's stream numbers are not."""
    return f"{src}:{sport}→{dst}:{dport}"


def _mp_capable_start(packets: pd.DataFrame) -> int | None:
    """DSN of the first data byte (IDSN + 1): the implied start of MP_CAPABLE's mapping
    (RFC 8684 §3.1, the first data packet carries a data-level length and no DSN)."""
    carrying = packets[packets["mp_capable"] & (packets["tcp_len"] > 0)
                       & packets["dsn"].notna()]
    if carrying.empty:
        return None
    return int(carrying.sort_values("time_epoch")["dsn"].iloc[0])


def _mappings(packets: pd.DataFrame) -> tuple[list[int], list[tuple[int, int]]]:
    """The mappings of one direction of one subflow: sorted subflow sequence starts and, for
    each, (end, dsn start). A mapping repeated on many segments is kept once; an infinite
    mapping (length 0, a fallback) maps nothing."""
    found: dict[int, tuple[int, int]] = {}
    explicit = packets[packets["dss_length"].notna() & packets["dss_ssn"].notna()
                       & packets["dss_dsn"].notna()]
    for ssn, length, dsn in zip(explicit["dss_ssn"], explicit["dss_length"],
                                explicit["dss_dsn"], strict=True):
        if int(length) > 0:
            found[int(ssn)] = (int(ssn) + int(length), int(dsn))
    implied = packets[packets["mp_capable"] & packets["dss_length"].notna()
                      & packets["dss_dsn"].isna()]
    start = _mp_capable_start(packets) if not implied.empty else None
    if start is not None:
        length = int(implied["dss_length"].max())
        found.setdefault(1, (1 + length, start))
    starts = sorted(found)
    return starts, [found[s] for s in starts]


def data_segments(df: pd.DataFrame) -> pd.DataFrame:
    """Every payload-carrying MPTCP segment with the data sequence range it carries.

    `dsn` counts from the lowest data sequence number mapped in this capture for its
    connection (0 = the first data byte seen), so captures with and without the keys give the
    same numbers. Segments no mapping covers (a fallback to TCP, a mapping not captured) are
    left out. time_s counts from the first packet of `df`.
    """
    if df.empty or "dss_dsn" not in df:
        return pd.DataFrame(columns=SEGMENT_COLUMNS)
    t0 = float(df["time_epoch"].min())
    mp = df[df["mptcp_stream"].notna() & df["tcp_stream"].notna()]
    rows: list[dict[str, Any]] = []
    for (_, src, sport), packets in mp.groupby(["tcp_stream", "ip_src", "tcp_srcport"]):
        payload = packets[packets["tcp_len"] > 0]
        if payload.empty:
            continue
        starts, spans = _mappings(packets)
        if not starts:
            continue
        for row in payload.itertuples(index=False):
            seq = int(row.tcp_seq) if not pd.isna(row.tcp_seq) else None
            if seq is None:
                continue
            i = bisect.bisect_right(starts, seq) - 1
            if i < 0 or seq >= spans[i][0]:
                continue
            dsn = spans[i][1] + (seq - starts[i])
            rows.append({
                "frame": row.frame, "time_epoch": row.time_epoch,
                "time_s": float(row.time_epoch) - t0,
                "mptcp_stream": int(row.mptcp_stream), "tcp_stream": int(row.tcp_stream),
                "subflow": subflow_label(src, sport, row.ip_dst, row.tcp_dstport),
                "ip_src": src, "ip_dst": row.ip_dst, "tcp_srcport": int(sport),
                "tcp_dstport": int(row.tcp_dstport), "tcp_seq": seq,
                "tcp_len": int(row.tcp_len), "dsn": dsn, "dsn_end": dsn + int(row.tcp_len),
                "retransmission": bool(row.retransmission),
                "ip_ttl": row.ip_ttl if not pd.isna(row.ip_ttl) else None,
            })
    if not rows:
        return pd.DataFrame(columns=SEGMENT_COLUMNS)
    out = pd.DataFrame(rows, columns=SEGMENT_COLUMNS)
    # Rebase per connection with Python ints: 64-bit DSNs do not survive a float.
    bases = {conn: min(int(v) for v in group["dsn"])
             for conn, group in out.groupby("mptcp_stream")}
    out["dsn"] = [int(d) - bases[c] for d, c in zip(out["dsn"], out["mptcp_stream"],
                                                     strict=True)]
    out["dsn_end"] = out["dsn"] + out["tcp_len"]
    out = out.astype({"dsn": "int64", "dsn_end": "int64"})
    return out.sort_values(["time_epoch", "frame"], kind="stable").reset_index(drop=True)


def _insert_owned(owned: list[list[int]], start: int, end: int, owner: int) -> None:
    """Add [start, end) as first sent by `owner` to the sorted, disjoint interval list; the
    caller has made sure no interval overlaps it. Neighbours of the same owner merge."""
    i = bisect.bisect_left(owned, [start])
    if i > 0 and owned[i - 1][1] == start and owned[i - 1][2] == owner:
        owned[i - 1][1] = end
        if i < len(owned) and owned[i][0] == end and owned[i][2] == owner:
            owned[i - 1][1] = owned[i][1]
            del owned[i]
        return
    if i < len(owned) and owned[i][0] == end and owned[i][2] == owner:
        owned[i][0] = start
        return
    owned.insert(i, [start, end, owner])


def reinjections(segments: pd.DataFrame) -> pd.DataFrame:
    """Data sent again on another subflow than the one that sent it first.

    Walks each connection's segments in time order, remembering which subflow first carried
    each data byte; a later segment on another subflow that carries bytes already sent gives
    one row per (earlier subflow, range): when (time_s of the copy), where (dsn), how many
    bytes, from which subflow to which. A retransmission on the same subflow is TCP's own and
    not a reinjection. Captured at the sender this is what was sent; at the receiver, what
    arrived (copies lost on the way are missing there).
    """
    rows: list[dict[str, Any]] = []
    for conn, group in segments.groupby("mptcp_stream"):
        labels = dict(zip(group["tcp_stream"], group["subflow"], strict=False))
        owned: list[list[int]] = []  # [start, end, tcp_stream], sorted and disjoint
        for seg in group.sort_values(["time_epoch"], kind="stable").itertuples(index=False):
            start, end, me = int(seg.dsn), int(seg.dsn_end), int(seg.tcp_stream)
            i = max(0, bisect.bisect_right(owned, [start]) - 1)
            cursor = start
            gaps: list[tuple[int, int]] = []
            while i < len(owned) and owned[i][0] < end:
                o_start, o_end, owner = owned[i]
                if o_end <= cursor:
                    i += 1
                    continue
                if o_start > cursor:
                    gaps.append((cursor, o_start))
                lo, hi = max(o_start, cursor), min(o_end, end)
                if owner != me and hi > lo:
                    rows.append({"time_s": float(seg.time_s), "mptcp_stream": int(conn),
                                 "dsn": lo, "bytes": hi - lo,
                                 "from_subflow": labels.get(owner, str(owner)),
                                 "to_subflow": seg.subflow, "from_stream": owner,
                                 "to_stream": me})
                cursor = max(cursor, hi)
                i += 1
            if cursor < end:
                gaps.append((cursor, end))
            for lo, hi in gaps:
                _insert_owned(owned, lo, hi, me)
    frame = pd.DataFrame(rows, columns=REINJECTION_COLUMNS)
    if frame.empty:
        return frame
    # Neighbouring segments of one reinjection burst, from the same subflow to the same
    # other one, stay separate rows: their times differ and the figure marks each.
    return frame.sort_values(["time_s", "dsn"], kind="stable").reset_index(drop=True)


def ooo_delay(segments: pd.DataFrame) -> pd.DataFrame:
    """Out-of-order delay at the receiver: for every segment that brought new data, the time
    from its arrival until everything before it had arrived too (0 when it arrived in order).

    Needs the receiver's capture: `segments` of the receiving host. Data that arrived more
    than once counts at its first arrival; a segment whose gap never filled in the capture
    has NaN. Interface arrival, not delivery to the application: what the MPTCP layer had
    to hold in its out-of-order queue.
    """
    rows: list[dict[str, Any]] = []
    arrived: list[float] = []
    for conn, group in segments.groupby("mptcp_stream"):
        rcv_nxt = int(group["dsn"].min())
        waiting: list[tuple[int, int, int]] = []  # (dsn, dsn_end, row): above a hole
        held: list[list[int]] = []  # the data of `waiting`, merged
        for seg in group.sort_values(["time_epoch"], kind="stable").itertuples(index=False):
            start, end = int(seg.dsn), int(seg.dsn_end)
            if end <= rcv_nxt or _covered(held, start, end):
                continue  # nothing new: a copy of data already here
            rows.append({"time_s": float(seg.time_s), "mptcp_stream": int(conn),
                         "tcp_stream": int(seg.tcp_stream), "subflow": seg.subflow,
                         "dsn": start, "bytes": end - max(start, rcv_nxt),
                         "delay_s": math.nan})
            arrived.append(float(seg.time_epoch))
            if start > rcv_nxt:
                heapq.heappush(waiting, (start, end, len(rows) - 1))
                _add_interval(held, start, end)
                continue
            rows[-1]["delay_s"] = 0.0
            rcv_nxt = end
            while waiting and waiting[0][0] <= rcv_nxt:
                _, w_end, w_row = heapq.heappop(waiting)
                rows[w_row]["delay_s"] = float(seg.time_epoch) - arrived[w_row]
                rcv_nxt = max(rcv_nxt, w_end)
            held = [h for h in held if h[1] > rcv_nxt]
    if not rows:
        return pd.DataFrame(columns=OOO_COLUMNS)
    return pd.DataFrame(rows, columns=OOO_COLUMNS)


def _add_interval(intervals: list[list[int]], start: int, end: int) -> None:
    """Add [start, end) to a sorted list of disjoint intervals, merging what it touches."""
    kept = [iv for iv in intervals if iv[1] < start or iv[0] > end]
    touching = [iv for iv in intervals if not (iv[1] < start or iv[0] > end)]
    lo = min([start, *(iv[0] for iv in touching)])
    hi = max([end, *(iv[1] for iv in touching)])
    intervals[:] = sorted([*kept, [lo, hi]])


def _covered(intervals: list[list[int]], start: int, end: int) -> bool:
    return any(iv[0] <= start and end <= iv[1] for iv in intervals)


def sending_side(df: pd.DataFrame) -> bool | None:
    """Whether a host's capture is at the data's sender (True), its receiver (False), or
    cannot tell (None): packets leave with the highest TTL and lose one per router, so at the
    sender the data segments have a higher TTL than the ACKs coming back, at the receiver a
    lower one. Without a router between the two (equal TTLs) nothing can be said."""
    mp = df[df["mptcp_stream"].notna() & df["ip_ttl"].notna()]
    if mp.empty:
        return None
    sent = mp.groupby(["tcp_stream", "ip_src", "tcp_srcport"])["tcp_len"].sum()
    votes = []
    for (stream, src, sport), total in sent.items():
        if total <= 0:
            continue
        packets = mp[mp["tcp_stream"] == stream]
        data = packets[(packets["ip_src"] == src) & (packets["tcp_srcport"] == sport)]
        back = packets[(packets["ip_src"] != src) | (packets["tcp_srcport"] != sport)]
        if data.empty or back.empty:
            continue
        if sent.get((stream, back["ip_src"].iloc[0], back["tcp_srcport"].iloc[0]), 0) \
                >= total:
            continue  # the heavier direction of this subflow is the other one
        d, b = int(data["ip_ttl"].median()), int(back["ip_ttl"].median())
        if d != b:
            votes.append(d > b)
    if not votes:
        return None
    return sum(votes) * 2 > len(votes)


def one_way_delay(upstream: pd.DataFrame, downstream: pd.DataFrame, up_name: str,
                  down_name: str) -> pd.DataFrame:
    """One-way delay of every packet seen at both capture points, in both directions.

    Packets are matched on `MATCH_KEY` (a key seen twice at one point, e.g. a retransmission
    with the same IP id, is dropped as ambiguous). Both captures share the machine's clock, so
    the delay is the difference of the capture times: propagation, queueing and the
    emulator's own work between the two points. `direction` is the packet's addresses and
    ports; `subflow` names the subflow by its data direction (the heavier one) so data and
    ACKs of one subflow share a label. time_s counts from the first matched packet.
    """
    keys = [k for k in MATCH_KEY if k in upstream and k in downstream]
    a = upstream.dropna(subset=keys).drop_duplicates(subset=keys, keep=False)
    b = downstream.dropna(subset=keys).drop_duplicates(subset=keys, keep=False)
    if a.empty or b.empty:
        return pd.DataFrame(columns=OWD_COLUMNS)
    merged = a[[*keys, "time_epoch"]].merge(b[[*keys, "time_epoch"]], on=keys,
                                            suffixes=("_a", "_b"))
    if merged.empty:
        return pd.DataFrame(columns=OWD_COLUMNS)
    forward = merged["time_epoch_b"] >= merged["time_epoch_a"]
    first = np.where(forward, merged["time_epoch_a"], merged["time_epoch_b"])
    owd = (merged["time_epoch_b"] - merged["time_epoch_a"]).abs()
    directions = [subflow_label(s, sp, d, dp) for s, sp, d, dp in
                  zip(merged["ip_src"], merged["tcp_srcport"], merged["ip_dst"],
                      merged["tcp_dstport"], strict=True)]
    # Name each subflow by its heavier direction.
    volume = merged.assign(direction=directions).groupby("direction")["tcp_len"].sum()
    names = []
    for s, sp, d, dp in zip(merged["ip_src"], merged["tcp_srcport"], merged["ip_dst"],
                            merged["tcp_dstport"], strict=True):
        this, other = subflow_label(s, sp, d, dp), subflow_label(d, dp, s, sp)
        names.append(this if volume.get(this, 0) >= volume.get(other, 0) else other)
    out = pd.DataFrame({
        "time_s": first - float(first.min()),
        "subflow": names,
        "direction": directions,
        "upstream": np.where(forward, up_name, down_name),
        "downstream": np.where(forward, down_name, up_name),
        "tcp_len": merged["tcp_len"].astype("int64"),
        "owd_s": owd.astype("float64"),
    })
    return out.sort_values("time_s", kind="stable").reset_index(drop=True)[OWD_COLUMNS]


# ---------------------------------------------------------------------------------------------
# Numbers for metrics.json


def _ms_stats(values: pd.Series) -> dict[str, float | None]:
    v = values.dropna().astype("float64") * 1000
    if v.empty:
        return {"mean_ms": None, "median_ms": None, "p95_ms": None, "max_ms": None}
    return {"mean_ms": round(float(v.mean()), 3), "median_ms": round(float(v.median()), 3),
            "p95_ms": round(float(v.quantile(0.95)), 3), "max_ms": round(float(v.max()), 3)}


def mapping_summary(segments: pd.DataFrame) -> list[dict[str, Any]]:
    """Per subflow: segments, bytes carried (copies included) and the data range it covered."""
    rows = []
    for (conn, label), group in segments.groupby(["mptcp_stream", "subflow"]):
        rows.append({"mptcp_stream": int(conn), "subflow": label,
                     "segments": len(group), "bytes": int(group["tcp_len"].sum()),
                     "dsn_first": int(group["dsn"].min()), "dsn_last": int(group["dsn_end"].max()),
                     "first_s": round(float(group["time_s"].min()), 4),
                     "last_s": round(float(group["time_s"].max()), 4)})
    return rows


def reinjection_summary(reinjected: pd.DataFrame) -> dict[str, Any]:
    by_pair = []
    for (src, dst), group in reinjected.groupby(["from_subflow", "to_subflow"]):
        by_pair.append({"from": src, "to": dst, "ranges": len(group),
                        "bytes": int(group["bytes"].sum()),
                        "first_s": round(float(group["time_s"].min()), 4),
                        "last_s": round(float(group["time_s"].max()), 4)})
    return {"ranges": len(reinjected), "bytes": int(reinjected["bytes"].sum()) if len(reinjected)
            else 0, "by_pair": by_pair}


def ooo_summary(delays: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for label, group in delays.groupby("subflow"):
        late = group[group["delay_s"] > 0]
        rows.append({"subflow": label, "segments": len(group),
                     "bytes": int(group["bytes"].sum()),
                     "out_of_order_segments": len(late),
                     "out_of_order_bytes": int(late["bytes"].sum()),
                     "never_completed": int(group["delay_s"].isna().sum()),
                     **_ms_stats(group["delay_s"])})
    return rows


def owd_summary(owd: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for (label, direction, up, down), group in owd.groupby(
            ["subflow", "direction", "upstream", "downstream"]):
        rows.append({"subflow": label, "direction": direction, "from": up, "to": down,
                     "packets": len(group), "min_ms": round(float(group["owd_s"].min()) * 1000, 3),
                     **_ms_stats(group["owd_s"])})
    return rows


# ---------------------------------------------------------------------------------------------
# One run: numbers and figures

SEQUENCE_FIGURE = "sequence"
OOO_FIGURE = "ooo-delay"
OWD_FIGURE = "owd"
FIGURES = (SEQUENCE_FIGURE, OOO_FIGURE, OWD_FIGURE)


def _role(side: bool | None) -> str:
    if side is None:
        return "unknown"
    return "sender" if side else "receiver"


def analyze(run_dir: Path, meta: dict[str, Any], summary: dict[str, Any],
            out_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    """The data-level numbers of one run (for metrics.json) and its figures, drawn only where
    the captures hold what they need; `notes` says what could not be measured and why."""
    from analysis import datalevel_figures, metrics  # figures import metrics: no cycle here

    # The measured connection only, where others ran between the same hosts.
    frames = {host: metrics.measured_packets(metrics.read_host_packets(run_dir, host), meta)
              for host in metrics.run_pcaps(run_dir)}
    segments = {host: data_segments(df) for host, df in frames.items()}
    roles = {host: _role(sending_side(df)) for host, df in frames.items()}
    result: dict[str, Any] = {"hosts": {}, "notes": []}
    port = metrics.measured_port(meta)
    if port is not None:  # the report says so next to the numbers
        result["measured_port"] = port
    written: list[Path] = []
    for host, segs in segments.items():
        result["hosts"][host] = {"role": roles[host], "mappings": mapping_summary(segs)}
    mapped = [h for h, s in segments.items() if not s.empty]
    if not mapped:
        result["notes"].append("no MPTCP data mapped in the captures (plain TCP, a fallback "
                               "to TCP, or nothing captured): no sequence graph, reinjections "
                               "or out-of-order delay")
    else:
        # The sender's capture shows what was sent (reinjections included, lost or not).
        by_role = sorted(mapped, key=lambda h: ("sender", "unknown", "receiver")
                         .index(roles[h]))
        host = by_role[0]
        reinjected = reinjections(segments[host])
        result["reinjections"] = {"captured_at": host, **reinjection_summary(reinjected)}
        written += datalevel_figures.plot_sequence(segments[host], reinjected, meta, summary,
                                                   out_dir / SEQUENCE_FIGURE, host)
        receivers = [h for h in mapped if roles[h] == "receiver"]
        if receivers:
            delays = ooo_delay(segments[receivers[0]])
            result["out_of_order"] = {"captured_at": receivers[0],
                                      "subflows": ooo_summary(delays)}
            written += datalevel_figures.plot_ooo_delay(delays, meta, summary,
                                                        out_dir / OOO_FIGURE, receivers[0])
        else:
            result["notes"].append(
                "no capture at the data's receiver (" + ", ".join(
                    f"{h}: {roles[h]}" for h in mapped) + "): out-of-order delay needs one "
                "(--set capture_on=... with a receiver interface)")
    hosts = list(frames)
    best: tuple[str, str, pd.DataFrame] | None = None
    for i, a in enumerate(hosts):
        for b in hosts[i + 1:]:
            owd = one_way_delay(frames[a], frames[b], a, b)
            if not owd.empty and (best is None or len(owd) > len(best[2])):
                best = (a, b, owd)
    if best is not None:
        a, b, owd = best
        result["one_way_delay"] = {"between": [a, b], "subflows": owd_summary(owd)}
        written += datalevel_figures.plot_owd(owd, meta, summary, out_dir / OWD_FIGURE,
                                              f"{a} to {b}")
    elif len(hosts) < 2:
        result["notes"].append(
            f"captures at one host only ({', '.join(hosts) or 'none'}): one-way delay needs "
            "the same packets seen at two (e.g. --set capture_on=client-eth0,client-eth1,"
            "server-eth0)")
    else:
        result["notes"].append(f"no packet was seen at two capture points ({', '.join(hosts)}"
                               "): no one-way delay (a box between them may rewrite addresses, "
                               "ports or sequence numbers)")
    return result, written
