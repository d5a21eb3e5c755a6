"""Entry points over results directories: analyse one run, compare runs, write a Markdown report.

`analyze_run`, `compare_runs` and `write_report` are what the CLI (`python -m analysis`, or
the testbed CLI) calls. Importing this module has no side effects: figures use the Agg canvas
explicitly (see `analysis.figures`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures, metrics, tshark

THROUGHPUT_FIGURE = "throughput"
GOODPUT_FIGURE = "goodput"
METRICS_FILE = "metrics.json"


def _capture_host(run_dir: Path) -> str | None:
    """The host whose captures carry the most payload: the one to plot.

    Both ends are often captured; their throughput is the same data twice, so one host is
    drawn. Choosing by payload rather than by name needs no knowledge of the topology.
    """
    best, best_bytes = None, -1
    for host in metrics.run_pcaps(run_dir):
        df = metrics.read_host_packets(run_dir, host)
        payload = int(df["tcp_len"].sum()) if not df.empty else 0
        if payload > best_bytes:
            best, best_bytes = host, payload
    return best


def analyze_run(run_dir: Path, bin_s: float = metrics.DEFAULT_BIN_S) -> dict[str, Any]:
    """Analyse one results directory: write figures into run_dir/figures, return metrics.

    Figures: throughput.{png,pdf} (per subflow and total, from the busiest host's captures)
    and goodput.{png,pdf} (receiver series). Metrics are also written to
    figures/metrics.json. A run without captures or stats still gets what can be drawn.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"results directory not found: {run_dir}")
    meta, summary = metrics.load_meta(run_dir), metrics.load_summary(run_dir)
    out_dir = run_dir / "figures"
    result = metrics.run_metrics(run_dir)
    written: list[Path] = []

    host = _capture_host(run_dir)
    result["plotted_host"] = host
    if host is not None:
        tput = metrics.throughput(metrics.read_host_packets(run_dir, host), bin_s=bin_s)
        written += figures.plot_throughput(tput, meta, summary, out_dir / THROUGHPUT_FIGURE)

    report = metrics.load_workload_report(run_dir)
    goodput = metrics.goodput_series(report)
    if not goodput.empty or report:
        written += figures.plot_goodput(goodput, meta, summary, out_dir / GOODPUT_FIGURE)

    result["figures"] = [str(p.relative_to(run_dir)) for p in written]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _json_default(value: Any) -> Any:
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def run_row(run_dir: Path, group_keys: Sequence[str] | None = None) -> dict[str, Any]:
    """One line of the runs table, from meta.json and summary.json only (no pcap parsing)."""
    meta, summary = metrics.load_meta(Path(run_dir)), metrics.load_summary(Path(run_dir))
    params = meta.get("params") or summary.get("params") or {}
    goodput = summary.get("goodput_mbps")
    if goodput is None:
        goodput = metrics.mean_goodput_mbps(metrics.load_workload_report(Path(run_dir)))
    return {
        "run": Path(run_dir).name,
        "scenario": summary.get("scenario", meta.get("scenario", "")),
        "stack": metrics.stack_label(meta, summary),
        "link_backend": summary.get("link_backend", meta.get("link_backend", "")),
        "params": params,
        "group": figures.params_label(params, group_keys),
        "goodput_mbps": float(goodput) if goodput is not None else math.nan,
        "sha256_match": summary.get("sha256_match"),
        "subflows": summary.get("subflows"),
        "duration_s": summary.get("duration_s"),
        "verdict": summary.get("verdict"),
        "fidelity_ok": summary.get("fidelity_ok"),
    }


def runs_table(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """The runs table; `group` labels only the parameters that differ between runs."""
    params = [metrics.load_meta(Path(d)).get("params") or {} for d in run_dirs]
    keys = figures.varying_keys(params)
    return pd.DataFrame([run_row(Path(d), keys) for d in run_dirs])


def compare_runs(run_dirs: Sequence[Path], out_dir: Path,
                 name: str = "comparison") -> list[Path]:
    """Comparison figure across runs (e.g. kernel MPTCP against plain TCP): out_dir/name.*."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one results directory")
    runs = runs_table(run_dirs)
    series_parts = []
    for run_dir, row in zip(run_dirs, runs.itertuples(), strict=True):
        goodput = metrics.goodput_series(metrics.load_workload_report(Path(run_dir)))
        if not goodput.empty:
            goodput["stack"] = row.stack
            goodput["run"] = row.run
            goodput["group"] = row.group
            series_parts.append(goodput)
    series = pd.concat(series_parts, ignore_index=True) if series_parts else pd.DataFrame(
        columns=["time_s", "bytes", "mbps", "stack", "run", "group"])
    scenarios = sorted({str(s) for s in runs["scenario"] if s})
    title = f"Goodput by stack: {', '.join(scenarios)}" if scenarios else "Goodput by stack"
    return figures.plot_comparison(runs, series, Path(out_dir) / name, title=title)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "–"
    return str(value).replace("|", "\\|")


def write_report(run_dirs: Sequence[Path], out_path: Path, analyze: bool = True) -> Path:
    """A Markdown report: a table of runs, then each run's figures (linked relative to the report).

    With `analyze` the figures are (re)made first; otherwise existing figures are linked.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs = runs_table(run_dirs)
    lines = ["# MPTCP testbed report", ""]
    lines += ["| run | scenario | stack | params | goodput [Mbit/s] | sha256 match | subflows "
              "| duration [s] | verdict |", "|---|---|---|---|---:|---|---:|---:|---|"]
    for row in runs.to_dict(orient="records"):
        verdict = row["verdict"]
        if row["fidelity_ok"] is False:
            verdict = f"{verdict or ''} ⚠ fidelity check failed".strip()
        cells = [row["run"], row["scenario"], row["stack"], row["params"], row["goodput_mbps"],
                 row["sha256_match"], row["subflows"], row["duration_s"], verdict]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    if len(run_dirs) > 1:
        compare = compare_runs(run_dirs, out_path.parent / "figures",
                               name=f"{out_path.stem}-comparison")
        lines += ["## Comparison", ""]
        lines += [f"![comparison]({_rel(p, out_path.parent)})" for p in compare
                  if p.suffix == ".png"] + [""]
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        lines += [f"## {run_dir.name}", ""]
        if analyze:
            try:
                result = analyze_run(run_dir)
            except tshark.TsharkError as exc:
                lines += [f"> Capture analysis failed: {exc}", ""]
                continue
            for host, numbers in result["hosts"].items():
                counts = numbers["option_counts"]
                lines.append(
                    f"- `{host}`: {numbers['packets']} packets, "
                    f"{numbers['mptcp_connections']} MPTCP connection(s), subflows per "
                    f"connection {numbers['subflows_per_connection'] or '–'}, MP_CAPABLE "
                    f"{counts['MP_CAPABLE']}, MP_JOIN {counts['MP_JOIN']}, DSS {counts['DSS']}"
                    f", malformed {numbers['malformed_packets']}")
            lines.append("")
        for figure in (THROUGHPUT_FIGURE, GOODPUT_FIGURE):
            png = run_dir / "figures" / f"{figure}.png"
            if png.exists():
                lines.append(f"![{run_dir.name} {figure}]({_rel(png, out_path.parent)})")
        lines.append("")
    out_path.write_text("\n".join(lines))
    return out_path


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
