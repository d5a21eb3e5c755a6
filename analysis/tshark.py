"""tshark into pandas: one row per captured packet, with stable, documented column names.

The dissector is Wireshark's, on purpose: analysis must not trust our own codec to check our
own packets (see DESIGN.md, "Analysis"). `COLUMNS` is the contract every other analysis module
and test codes against; tshark field names live only here, so a Wireshark upgrade that renames
a field is fixed in one place.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# Bump when COLUMNS or the derivations change, so that stale caches are not reused.
SCHEMA_VERSION = 3  # 2: payload decoded as data (no protocol guessing); 3: ip_id, ip_ttl,
# frame_len, dss_dsn
CACHE_SUFFIX = f".fields.v{SCHEMA_VERSION}.csv.gz"

# tshark prints every occurrence of a repeated field joined with this character. Expert
# messages are free text, but '|' is rare in them and reads well when shown to a human.
_AGGREGATOR = "|"

# Wireshark expert-info group for malformed packets (epan/proto.h, PI_MALFORMED).
PI_MALFORMED = 0x07000000

# MPTCP option subtypes, RFC 8684 section 3 (table 1).
MPTCP_SUBTYPES: dict[int, str] = {
    0: "MP_CAPABLE",
    1: "MP_JOIN",
    2: "DSS",
    3: "ADD_ADDR",
    4: "REMOVE_ADDR",
    5: "MP_PRIO",
    6: "MP_FAIL",
    7: "MP_FASTCLOSE",
    8: "MP_TCPRST",
}

# Preferences that make the MPTCP dissector map every segment to its data sequence number
# and link reinjections across subflows; both are off by default in Wireshark 4.0.
TSHARK_PREFS: tuple[str, ...] = (
    "mptcp.analyze_mptcp:TRUE",
    "mptcp.relative_sequence_numbers:TRUE",
    "mptcp.analyze_mappings:TRUE",
    "mptcp.intersubflows_retransmission:TRUE",
    "tcp.analyze_sequence_numbers:TRUE",
    "tcp.relative_sequence_numbers:TRUE",
)


@dataclass(frozen=True)
class Column:
    """One DataFrame column: its name, where it comes from, its pandas dtype and meaning."""

    name: str
    field: str | None  # tshark field; None when derived from other fields
    dtype: str  # "float64", "Int64" (nullable), "UInt64", "bool" or "str"
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("frame", "frame.number", "Int64", "frame number in the capture (1-based)"),
    Column("time_epoch", "frame.time_epoch", "float64", "capture time, seconds since the epoch"),
    Column("time", "frame.time_relative", "float64", "seconds since the first frame of the file"),
    Column("ip_src", None, "str", "source address (ip.src, or ipv6.src)"),
    Column("ip_dst", None, "str", "destination address (ip.dst, or ipv6.dst)"),
    Column("ip_id", "ip.id", "Int64", "IPv4 identification: with the addresses, ports and "
           "sequence numbers it names one packet at every capture point it passes"),
    Column("ip_ttl", "ip.ttl", "Int64", "IPv4 time to live: highest where the packet was "
           "sent, one less behind each router (tells a capture's own packets from others')"),
    Column("frame_len", "frame.len", "Int64", "frame length on the wire, bytes (not cut by "
           "the snaplen)"),
    Column("tcp_srcport", "tcp.srcport", "Int64", "TCP source port"),
    Column("tcp_dstport", "tcp.dstport", "Int64", "TCP destination port"),
    Column("tcp_stream", "tcp.stream", "Int64", "tshark's TCP conversation index = one subflow"),
    Column("tcp_seq", "tcp.seq", "Int64", "sequence number, relative to the ISN"),
    Column("tcp_seq_raw", "tcp.seq_raw", "Int64", "sequence number as on the wire"),
    Column("tcp_ack", "tcp.ack", "Int64", "acknowledgment number, relative"),
    Column("tcp_ack_raw", "tcp.ack_raw", "Int64", "acknowledgment number as on the wire"),
    Column("tcp_len", "tcp.len", "Int64", "TCP payload length in bytes (from IP lengths, "
           "so right even when the capture's snaplen cut the payload)"),
    Column("tcp_flags", "tcp.flags", "Int64", "TCP flags as an integer"),
    Column("syn", None, "bool", "SYN flag"),
    Column("ack", None, "bool", "ACK flag"),
    Column("fin", None, "bool", "FIN flag"),
    Column("rst", None, "bool", "RST flag"),
    Column("psh", None, "bool", "PSH flag"),
    Column("tcp_window", "tcp.window_size_value", "Int64", "window field as on the wire"),
    Column("tcp_window_scaled", "tcp.window_size", "Int64", "window after scaling, bytes"),
    Column("retransmission", None, "bool", "tshark's TCP analysis flags this segment as a "
           "retransmission (plain, fast or spurious) on its subflow"),
    Column("mptcp_subtypes", "tcp.options.mptcp.subtype", "str",
           "MPTCP option subtypes present, comma-separated integers (RFC 8684 table 1)"),
    Column("mp_capable", None, "bool", "an MP_CAPABLE option is present"),
    Column("mp_join", None, "bool", "an MP_JOIN option is present"),
    Column("dss", None, "bool", "a DSS option is present"),
    Column("add_addr", None, "bool", "an ADD_ADDR option is present"),
    Column("rm_addr", None, "bool", "a REMOVE_ADDR option is present"),
    Column("mp_prio", None, "bool", "an MP_PRIO option is present"),
    Column("mp_fail", None, "bool", "an MP_FAIL option is present"),
    Column("mp_fastclose", None, "bool", "an MP_FASTCLOSE option is present"),
    Column("mp_tcprst", None, "bool", "an MP_TCPRST option is present"),
    Column("mptcp_stream", "mptcp.stream", "Int64", "tshark's MPTCP connection index; "
           "subflows with the same value belong to one MPTCP connection"),
    Column("mptcp_master", "mptcp.master", "Int64", "1 on the initial subflow, 0 on joins"),
    Column("dsn", "mptcp.dsn", "UInt64", "data sequence number of this segment's first byte, "
           "mapped by tshark (relative when the keys were captured, else absolute)"),
    Column("dsn_raw", "tcp.options.mptcp.rawdataseqno", "UInt64",
           "DSN field of the DSS option as on the wire (start of the mapping)"),
    Column("dss_dsn", "mptcp.dss.dsn", "UInt64", "data sequence number where the DSS "
           "mapping starts (relative when the keys were captured, else absolute); with "
           "dss_ssn and dss_length it maps subflow bytes to data bytes"),
    Column("dss_ssn", "tcp.options.mptcp.subflowseqno", "Int64",
           "subflow sequence number of the DSS mapping (relative to the subflow ISN)"),
    Column("dss_length", "tcp.options.mptcp.datalvllen", "Int64", "data-level length of the "
           "DSS mapping, bytes"),
    Column("data_ack", "mptcp.ack", "UInt64", "data ACK (relative when keys are known)"),
    Column("data_ack_raw", "tcp.options.mptcp.rawdataack", "UInt64", "data ACK as on the wire"),
    Column("data_fin", "tcp.options.mptcp.datafin.flag", "bool", "DSS DATA_FIN flag set"),
    Column("join_token", "tcp.options.mptcp.recvtok", "Int64", "receiver's token in an "
           "MP_JOIN SYN"),
    Column("address_id", "tcp.options.mptcp.addrid", "Int64", "address ID in MP_JOIN, "
           "ADD_ADDR or MP_PRIO"),
    Column("backup", "tcp.options.mptcp.backup.flag", "bool", "backup flag (MP_JOIN or "
           "MP_PRIO)"),
    Column("reinjection_of", "mptcp.reinjection_of", "Int64", "frame whose data this segment "
           "carries again on another subflow (needs intersubflows_retransmission)"),
    Column("malformed", None, "bool", "tshark found the packet malformed (_ws.malformed or an "
           "expert item of the Malformed group)"),
    Column("expert_message", "_ws.expert.message", "str", "all expert messages, '|'-joined"),
    Column("expert_severity", "_ws.expert.severity", "Int64", "highest expert severity "
           "(Wireshark's PI_* values: chat 0x200000 ... error 0x800000)"),
    Column("pcap", None, "str", "file name of the capture the packet came from"),
)

# Raw fields only needed to derive columns, not kept under their own name.
_HELPER_FIELDS: tuple[str, ...] = (
    "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
    "tcp.analysis.retransmission", "tcp.analysis.fast_retransmission",
    "tcp.analysis.spurious_retransmission",
    "_ws.malformed", "_ws.expert.group",
)

_FLAG_BITS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10}


class TsharkError(RuntimeError):
    """tshark is missing, or could not read the capture."""


def column_table() -> str:
    """The column contract as a Markdown table (for docs and reports)."""
    lines = ["| column | tshark field | dtype | meaning |", "|---|---|---|---|"]
    for col in COLUMNS:
        lines.append(f"| `{col.name}` | {f'`{col.field}`' if col.field else '(derived)'} | "
                     f"{col.dtype} | {col.meaning} |")
    return "\n".join(lines)


def tshark_fields() -> list[str]:
    """Every tshark field we ask for, in a stable order."""
    fields = [c.field for c in COLUMNS if c.field is not None]
    return fields + [f for f in _HELPER_FIELDS if f not in fields]


def _tshark_binary() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise TsharkError("tshark not found on PATH: install it (Debian: apt-get install "
                          "tshark) to analyse captures")
    return path


def tshark_command(pcap: Path) -> list[str]:
    """The argument list used to dissect `pcap` (exposed so it can be logged or reproduced)."""
    args = [_tshark_binary(), "-r", str(pcap), "-n", "-T", "fields",
            "-E", "header=y", "-E", "separator=/t", "-E", "quote=n",
            "-E", "occurrence=a", "-E", f"aggregator={_AGGREGATOR}"]
    for pref in TSHARK_PREFS:
        args += ["-o", pref]
    # The payload is the workload's random bytes: left to guess, tshark reads it as iperf3
    # (port 5201), thrift or jxta and then calls correct TCP retransmissions "malformed".
    # Everything above TCP is plain data to us.
    args += ["-d", "tcp.port==1-65535,data"]
    for field in tshark_fields():
        args += ["-e", field]
    return args


def cache_path(pcap: Path) -> Path:
    """Where the DataFrame of `pcap` is cached: next to it."""
    return pcap.with_name(pcap.name + CACHE_SUFFIX)


def _first(series: pd.Series) -> pd.Series:
    # Repeated options (two DSS in one segment are legal) are rare; the first occurrence is
    # the one that describes the segment, and it keeps numeric columns scalar.
    return series.str.split(_AGGREGATOR, n=1, regex=False).str[0]


def _to_int(series: pd.Series, dtype: str) -> pd.Series:
    text = _first(series).str.strip()
    text = text.where(text != "", None)
    # Flags print as "0x0012"; int(x, 0) reads both hex and decimal.
    values = [None if v is None or pd.isna(v) else int(v, 0) for v in text]
    return pd.Series(values, index=series.index, dtype=dtype)


def _present(series: pd.Series) -> pd.Series:
    return series.str.strip().ne("") & series.str.strip().ne("0")


def _groups_malformed(series: pd.Series) -> pd.Series:
    def check(cell: str) -> bool:
        return any(v.strip() and int(v, 0) == PI_MALFORMED for v in cell.split(_AGGREGATOR))

    return series.map(check).astype(bool)


def _max_severity(series: pd.Series) -> pd.Series:
    values = [max((int(v, 0) for v in cell.split(_AGGREGATOR) if v.strip()), default=None)
              for cell in series]
    return pd.Series(values, index=series.index, dtype="Int64")


def _frame_from_text(text: str, pcap_name: str) -> pd.DataFrame:
    raw = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False,
                      quoting=csv.QUOTE_NONE)
    out: dict[str, pd.Series] = {}
    for col in COLUMNS:
        if col.field is None:
            continue
        src = raw[col.field]
        if col.dtype == "float64":
            out[col.name] = pd.to_numeric(_first(src).replace("", None), errors="coerce")
        elif col.dtype in ("Int64", "UInt64"):
            out[col.name] = _to_int(src, col.dtype)
        elif col.dtype == "bool":
            out[col.name] = _present(_first(src))
        elif col.name == "mptcp_subtypes":
            out[col.name] = src.str.replace(_AGGREGATOR, ",", regex=False)
        else:
            out[col.name] = src
    out["expert_severity"] = _max_severity(raw["_ws.expert.severity"])
    out["ip_src"] = raw["ip.src"].where(raw["ip.src"] != "", raw["ipv6.src"])
    out["ip_dst"] = raw["ip.dst"].where(raw["ip.dst"] != "", raw["ipv6.dst"])
    flags = out["tcp_flags"].fillna(0).astype("int64")
    for name, bit in _FLAG_BITS.items():
        out[name] = (flags & bit) != 0
    out["retransmission"] = (_present(raw["tcp.analysis.retransmission"])
                             | _present(raw["tcp.analysis.fast_retransmission"])
                             | _present(raw["tcp.analysis.spurious_retransmission"]))
    subtypes = out["mptcp_subtypes"].fillna("")
    sets = subtypes.map(lambda s: {int(v) for v in s.split(",") if v.strip()})
    for number, label in MPTCP_SUBTYPES.items():
        name = "rm_addr" if label == "REMOVE_ADDR" else label.lower()
        out[name] = sets.map(lambda found, n=number: n in found).astype(bool)
    out["malformed"] = (_present(raw["_ws.malformed"])
                        | _groups_malformed(raw["_ws.expert.group"]))
    out["pcap"] = pd.Series(pcap_name, index=raw.index, dtype="str")
    return _conform(pd.DataFrame(out, index=raw.index))


def _conform(df: pd.DataFrame) -> pd.DataFrame:
    """Put columns in contract order with contract dtypes (also used after reading a cache)."""
    result = pd.DataFrame(index=df.index)
    for col in COLUMNS:
        series = df[col.name] if col.name in df else pd.Series(None, index=df.index)
        if col.dtype == "bool":
            result[col.name] = series.fillna(False).astype(bool)
        elif col.dtype == "str":
            result[col.name] = series.fillna("").astype(str)
        else:
            result[col.name] = series.astype(col.dtype)
    return result.reset_index(drop=True)


def empty_frame() -> pd.DataFrame:
    """A DataFrame with all contract columns and no rows."""
    return _conform(pd.DataFrame({c.name: [] for c in COLUMNS}))


def _is_fresh(cache: Path, sources: Sequence[Path]) -> bool:
    if not cache.exists():
        return False
    mtime = cache.stat().st_mtime_ns
    return all(mtime > src.stat().st_mtime_ns for src in sources)


def _read_cache(cache: Path) -> pd.DataFrame:
    dtypes = {c.name: ("str" if c.dtype in ("str", "bool") else "float64") for c in COLUMNS}
    # Read integers as text so that 64-bit DSNs do not pass through float and lose bits.
    text_cols = {c.name: "str" for c in COLUMNS if c.dtype in ("Int64", "UInt64")}
    df = pd.read_csv(cache, dtype={**dtypes, **text_cols}, keep_default_na=False)
    for col in COLUMNS:
        if col.dtype in ("Int64", "UInt64"):
            df[col.name] = pd.Series([int(v) if v else None for v in df[col.name]],
                                     dtype=col.dtype)
        elif col.dtype == "bool":
            df[col.name] = df[col.name] == "True"
    return _conform(df)


def _dissect(pcap: Path, name: str) -> pd.DataFrame:
    if not pcap.is_file():
        raise TsharkError(f"capture not found: {pcap}")
    proc = subprocess.run(tshark_command(pcap), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # tshark's stderr starts with a harmless "Running as user root" line; keep the rest.
        detail = "\n".join(line for line in proc.stderr.splitlines()
                           if "Running as user" not in line)
        raise TsharkError(f"tshark could not read {pcap} (exit {proc.returncode}): "
                          f"{detail.strip()}")
    if not proc.stdout.strip():
        return empty_frame()
    return _frame_from_text(proc.stdout, name)


def _write_cache(df: pd.DataFrame, cache: Path) -> None:
    # Write to a temporary name first: a concurrent reader must never see half a cache.
    tmp = cache.with_name(cache.name + ".tmp.csv.gz")
    df.to_csv(tmp, index=False, compression="gzip")
    tmp.replace(cache)


def read_pcap(pcap: Path, *, use_cache: bool = True) -> pd.DataFrame:
    """Dissect one capture into the `COLUMNS` DataFrame, cached next to the pcap.

    The cache is reused when it is newer than the pcap. Raises `TsharkError` when tshark is
    missing or the file is not a capture it can read.
    """
    pcap = Path(pcap)
    cache = cache_path(pcap)
    if use_cache and pcap.exists() and _is_fresh(cache, [pcap]):
        return _read_cache(cache)
    df = _dissect(pcap, pcap.name)
    if use_cache:
        _write_cache(df, cache)
    return df


def read_merged(pcaps: Sequence[Path], cache: Path, *, use_cache: bool = True) -> pd.DataFrame:
    """Dissect several captures of ONE host as one, so tshark sees whole MPTCP connections.

    Captures from different interfaces of a host hold different subflows of the same
    connection; dissected apart, tshark numbers each file's streams from 0 and cannot tie a
    join to its connection's keys. Merged by time (mergecap), `mptcp_stream` groups subflows
    correctly. Do not merge captures of both ends of a path: every packet would appear twice.
    The `pcap` column names the merged set. The result is cached at `cache`.
    """
    paths = [Path(p) for p in pcaps]
    if len(paths) == 1:
        return read_pcap(paths[0], use_cache=use_cache)
    if not paths:
        return empty_frame()
    for path in paths:
        if not path.is_file():
            raise TsharkError(f"capture not found: {path}")
    if use_cache and _is_fresh(cache, paths):
        return _read_cache(cache)
    mergecap = shutil.which("mergecap")
    if mergecap is None:
        raise TsharkError("mergecap not found on PATH (it ships with tshark/wireshark-common)")
    with tempfile.TemporaryDirectory(prefix="analysis-merge-") as tmp:
        merged = Path(tmp) / "merged.pcapng"
        proc = subprocess.run([mergecap, "-w", str(merged), *map(str, paths)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise TsharkError(f"mergecap failed on {paths}: {proc.stderr.strip()}")
        df = _dissect(merged, "+".join(p.name for p in paths))
    if use_cache:
        _write_cache(df, cache)
    return df


def concat_captures(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Stack DataFrames of separately dissected captures, keeping their stream ids apart.

    tshark numbers streams per file, so stream ids are offset to stay unique. This does not
    know which subflows belong together across files; use `read_merged` for that.
    """
    parts = []
    tcp_offset = 0
    mptcp_offset = 0
    for df in frames:
        part = df.copy()
        part["tcp_stream"] = part["tcp_stream"] + tcp_offset
        part["mptcp_stream"] = part["mptcp_stream"] + mptcp_offset
        if part["tcp_stream"].notna().any():
            tcp_offset = int(part["tcp_stream"].max()) + 1
        if part["mptcp_stream"].notna().any():
            mptcp_offset = int(part["mptcp_stream"].max()) + 1
        parts.append(part)
    if not parts:
        return empty_frame()
    return _conform(pd.concat(parts, ignore_index=True))
