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
SUBFLOWS_FIGURE = "subflows"
METRICS_FILE = "metrics.json"
# Goodput over time in the comparison is averaged over this window: the receiver's 100 ms
# bins alternate with the sender's bursts and would draw a comb instead of a rate.
SMOOTHING_S = 0.5


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

    Figures: throughput.{png,pdf} (per subflow and total, from the busiest host's captures),
    goodput.{png,pdf} (receiver series) and subflows.{png,pdf} (cwnd and srtt per subflow
    from the sender's socket samples, stats/subflows-<host>.csv). Metrics are also written to
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

    samples = metrics.load_socket_samples(run_dir)
    sender = metrics.sender_host(samples)
    result["sender_host"] = sender
    if sender is not None:
        series = metrics.subflow_series(samples[sender])
        written += figures.plot_subflow_state(series, meta, summary, out_dir / SUBFLOWS_FIGURE,
                                              host=sender)

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
    """One line of the runs table, from meta.json and summary.json only (no pcap parsing).

    `group_keys`: the parameters that vary between the runs compared, for a case label when
    meta.json has none.
    """
    meta, summary = metrics.load_meta(Path(run_dir)), metrics.load_summary(Path(run_dir))
    params = meta.get("params") or summary.get("params") or {}
    goodput = summary.get("goodput_mbps")
    if goodput is None:
        goodput = metrics.mean_goodput_mbps(metrics.load_workload_report(Path(run_dir)))
    rates = metrics.configured_rates(meta)
    keys = list(group_keys) if group_keys is not None else None
    return {
        "run": Path(run_dir).name,
        "path": str(run_dir),
        "scenario": summary.get("scenario", meta.get("scenario", "")),
        "case": metrics.case_label({**meta, "params": params}, keys),
        "stack": metrics.stack_label(meta, summary),
        "link_backend": summary.get("link_backend", meta.get("link_backend", "")),
        "params": params,
        "group": figures.params_label(params, group_keys),
        "goodput_mbps": float(goodput) if goodput is not None else math.nan,
        "rate_sum_mbps": sum(rates.values()) if rates else math.nan,
        "best_path_mbps": max(rates.values()) if rates else math.nan,
        "sha256_match": summary.get("sha256_match"),
        "subflows": summary.get("subflows"),
        **metrics.completion(summary),
        "verdict": summary.get("verdict"),
        "fidelity_ok": summary.get("fidelity_ok"),
        "fidelity_notes": summary.get("fidelity_notes") or [],
    }


def runs_table(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """The runs table; `case` and `group` label only the parameters that differ between runs
    (when meta.json carries no `label`)."""
    params = [metrics.load_meta(Path(d)).get("params") or {} for d in run_dirs]
    keys = figures.varying_keys(params)
    return pd.DataFrame([run_row(Path(d), keys) for d in run_dirs])


def compare_runs(run_dirs: Sequence[Path], out_dir: Path,
                 name: str = "comparison") -> list[Path]:
    """Comparison figure across runs (e.g. kernel MPTCP against plain TCP): out_dir/name.*.

    Goodput per case and stack against the configured rates, and, for runs whose summary
    carries the selftest bound (`aggregate`), completion time against that bound; then
    name-goodput.*: goodput over time per case (small multiples, averaged over 0.5 s),
    when the runs have a receiver series.
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one results directory")
    runs = runs_table(run_dirs)
    scenarios = sorted({str(s) for s in runs["scenario"] if s})
    stacks = figures.ordered_stacks([str(s) for s in runs["stack"]])
    title = " vs ".join(figures.stack_name(s) for s in stacks)
    if scenarios:
        title = f"{', '.join(scenarios)}: {title}"
    sizes = {p.get("size_mib") for p in runs["params"] if isinstance(p, dict)}
    if len(sizes) == 1 and None not in sizes:
        title += f", {next(iter(sizes)):g} MiB transfer"
    written = figures.plot_comparison(runs, Path(out_dir) / name, title=title)
    curves = []
    for run_dir, row in zip(run_dirs, runs.itertuples(), strict=True):
        series = metrics.goodput_series(metrics.load_workload_report(Path(run_dir)))
        smooth = metrics.smoothed_goodput(series, SMOOTHING_S)
        if not smooth.empty:
            curves.append(smooth.assign(case=row.case, stack=row.stack, run=row.path))
    if curves:
        written += figures.plot_goodput_small_multiples(
            pd.concat(curves, ignore_index=True), runs, Path(out_dir) / f"{name}-goodput",
            title=title, window_s=SMOOTHING_S)
    return written


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


ANCHORS: dict[str, str] = {
    "aggregate": "Linux selftest `simult_flows.sh`: the transfer must finish within "
                 "size*8/(r1+r2) * 10/9 + 0.4 s (opposed delays are known to be flaky "
                 "upstream)",
}


def _fidelity_cell(row: dict[str, Any]) -> str:
    if row["fidelity_ok"] is None:
        return "–"
    if row["fidelity_ok"]:
        return "ok"
    notes = "; ".join(str(n) for n in row.get("fidelity_notes") or [])
    return f"**failed**: {notes}" if notes else "**failed**"


def _within_cell(row: dict[str, Any]) -> str:
    if row["within_bound"] is None:
        return _cell(row.get("verdict"))
    return "yes" if row["within_bound"] else "**no**"


def anchor_counts(runs: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per stack: (runs within the bound, runs with a bound), stacks in figure order."""
    counts: dict[str, tuple[int, int]] = {}
    judged = runs[runs["within_bound"].isin([True, False])] if "within_bound" in runs else runs[:0]
    for stack in figures.ordered_stacks([str(s) for s in judged["stack"]]):
        rows = judged[judged["stack"] == stack]
        counts[stack] = (int(rows["within_bound"].eq(True).sum()), len(rows))
    return counts


def anchor_line(scenario: str, runs: pd.DataFrame) -> str | None:
    """The "published anchor" sentence of a scenario and how many runs of each stack met it."""
    if scenario not in ANCHORS:
        return None
    counts = anchor_counts(runs)
    met = "; ".join(f"{figures.stack_name(stack)} {ok} of {n} runs" for stack, (ok, n)
                    in counts.items())
    bad = runs[runs["fidelity_ok"].eq(False)] if "fidelity_ok" in runs else runs[:0]
    caveat = (f" ({len(bad)} run(s) failed the emulation fidelity check, see the table)"
              if not bad.empty else "")
    return (f"**Published anchor**: {ANCHORS[scenario]}. Within the bound: "
            f"{met or 'no run carries the bound'}{caveat}.")


def write_report(run_dirs: Sequence[Path], out_path: Path, analyze: bool = True) -> Path:
    """A Markdown report: per scenario a table of runs against the published anchor and the
    comparison figure, then each run's figures (linked relative to the report).

    With `analyze` the figures are (re)made first; otherwise existing figures are linked.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs = runs_table(run_dirs)
    lines = ["# MPTCP testbed report", ""]
    scenarios = list(dict.fromkeys(str(s) for s in runs["scenario"])) if not runs.empty else []
    for scenario in scenarios:
        mask = runs["scenario"].astype(str) == scenario
        subset = runs[mask]
        lines += [f"## Scenario `{scenario or 'unknown'}`", ""]
        lines += ["| case | stack | goodput [Mbit/s] | duration [s] | bound [s] | within bound "
                  "| subflows | sha256 match | fidelity | run |",
                  "|---|---|---:|---:|---:|---|---:|---|---|---|"]
        for row in subset.to_dict(orient="records"):
            cells = [_cell(row["case"]), _cell(figures.stack_name(str(row["stack"]))),
                     _cell(row["goodput_mbps"]), _cell(row["duration_s"]),
                     _cell(row["bound_s"]), _within_cell(row), _cell(row["subflows"]),
                     _cell(row["sha256_match"]), _fidelity_cell(row).replace("|", "\\|"),
                     f"`{_rel(Path(row['path']), out_path.parent)}`"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        anchor = anchor_line(scenario, subset)
        if anchor:
            lines += [anchor, ""]
        selected = [d for d, keep in zip(run_dirs, mask, strict=True) if keep]
        name = f"{out_path.stem}-comparison" if len(scenarios) == 1 else \
            f"{out_path.stem}-{scenario}-comparison"
        compare = compare_runs(selected, out_path.parent / "figures", name=name)
        lines += [f"![{scenario} comparison]({_rel(p, out_path.parent)})" for p in compare
                  if p.suffix == ".png"] + [""]
    lines += ["## Runs", ""]
    for run_dir, row in zip(run_dirs, runs.to_dict(orient="records"), strict=True):
        run_dir = Path(run_dir)
        title = f"{row['scenario']}: {row['case']}, {figures.stack_name(str(row['stack']))}"
        lines += [f"### {title}", "", f"Results: `{_rel(run_dir, out_path.parent)}`", ""]
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
        for figure in (THROUGHPUT_FIGURE, GOODPUT_FIGURE, SUBFLOWS_FIGURE):
            png = run_dir / "figures" / f"{figure}.png"
            if png.exists():
                lines.append(f"![{row['case']}, {row['stack']}: {figure}]"
                             f"({_rel(png, out_path.parent)})")
        lines.append("")
    out_path.write_text("\n".join(lines))
    return out_path


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
