"""Entry points over results directories: analyse one run, compare runs, write a Markdown report.

`analyze_run`, `compare_runs` and `write_report` are what the CLI (`python -m analysis`, or
the testbed CLI) calls. Importing this module has no side effects: figures use the Agg canvas
explicitly (see `analysis.figures`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import datacenter, datalevel, figures, interactive, metrics, repetitions, tshark
from analysis import receive_buffer as rcvbuf

AGGREGATE, MIGRATION, MULTI_WIFI = figures.AGGREGATE, "vm-migration", "multi-wifi"
HANDOVER = interactive.HANDOVER
MIDDLEBOX = "middlebox"
RECEIVE_BUFFER = rcvbuf.SCENARIO
# receive-buffer summary fields shown in the report (experiments/receive_buffer.py).
RECEIVE_BUFFER_FIELDS = ("rcvbuf_kib", "opportunistic", "steady_goodput_mbps")
DATACENTER = datacenter.DATACENTER
# datacenter summary fields shown in the report (experiments/datacenter.py writes them).
DATACENTER_FIELDS = ("utilisation", "jain_index", "lowest_decile_fraction",
                     "min_flow_fraction", "flow_count", "interval_s")
# middlebox summary fields shown in the report (experiments/middlebox.py writes them).
MIDDLEBOX_FIELDS = ("transforms", "on_path", "outcome", "expected_outcomes", "as_expected",
                    "box_changed_segments", "box_exercised", "checksum_detected")
FAIRNESS = figures.FAIRNESS
# fairness summary fields shown in the report (experiments/fairness.py writes them).
FAIRNESS_FIELDS = ("mode", "aqm", "expected", "mptcp_mbps", "tcp_mbps", "ratio", "anchor_low",
                   "anchor_high", "within_anchor", "path2_share", "fraction_of_capacity_left",
                   "shifted", "mptcp_loss_pct", "tcp_loss_pct", "loss_ratio")
# vm-migration summary fields shown in the report (experiments/vm_migration.py writes them).
MIGRATION_FIELDS = ("survived", "survived_reason", "gap_s", "gap_start_s", "expected_gap_s",
                    "goodput_before_mbps", "goodput_after_mbps", "bytes_after_move",
                    "joined_new_address")
# handover summary fields shown in the report (experiments/handover.py writes them), besides
# its interactive flow's (`interactive.row_fields`); gap_s is its repetitions' headline.
HANDOVER_FIELDS = ("mode", "survived", "survived_reason", "gap_s", "expected_gap_s",
                   "goodput_before_mbps", "goodput_after_mbps")
MOBILITY = "mobility"
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
        # The measured connection's subflows only, where other connections shared its hosts.
        packets = metrics.measured_packets(metrics.read_host_packets(run_dir, host), meta)
        tput = metrics.throughput(packets, bin_s=bin_s)
        written += figures.plot_throughput(tput, meta, summary, out_dir / THROUGHPUT_FIGURE)

    report = metrics.load_workload_report(run_dir)
    goodput = metrics.goodput_series(report)
    # Many flows (experiments/flows.py, a list): one bar each, not one series. The runner's
    # competing flows (a dict by name) run beside the measured one, whose series this is.
    if isinstance(summary.get("flows"), list) and summary["flows"]:
        written += datacenter.plot_flows(summary, out_dir / GOODPUT_FIGURE)
    elif not goodput.empty or report:
        written += figures.plot_goodput(goodput, meta, summary, out_dir / GOODPUT_FIGURE)

    if interactive.message_flow(summary) is not None:  # a constant-rate flow beside it
        frame, detected = interactive.run_frame(run_dir, summary)
        written += interactive.plot_run(frame, detected, meta, summary,
                                        out_dir / interactive.FIGURE)
        result["interactive"] = summary.get("interactive")

    samples = metrics.measured_samples(metrics.load_socket_samples(run_dir), meta)
    sender = metrics.sender_host(samples)
    result["sender_host"] = sender
    if sender is not None:
        series = metrics.subflow_series(samples[sender])
        written += figures.plot_subflow_state(series, meta, summary, out_dir / SUBFLOWS_FIGURE,
                                              host=sender)

    # Sequence graph, reinjections, out-of-order and one-way delay, where captures allow.
    result["datalevel"], drawn = datalevel.analyze(run_dir, meta, summary, out_dir)
    written += drawn

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
    scenario = str(summary.get("scenario", meta.get("scenario", "")))
    done = metrics.completion(summary)
    multipath = metrics.speaks_mptcp(meta, summary)
    extra: dict[str, Any] = {"multipath": multipath, "anchor_met": done["within_bound"]}
    if scenario == MIGRATION:
        extra.update({key: summary.get(key) for key in MIGRATION_FIELDS})
        extra.update(metrics.migration_events(Path(run_dir)))
        extra["anchor_met"] = metrics.migration_verdict(summary, multipath)
    elif scenario == HANDOVER:
        extra.update({key: summary.get(key) for key in HANDOVER_FIELDS})
        extra.update(interactive.row_fields(summary))
        # Each run against its mode's expected gap; the order of the modes (single-path's
        # gap larger than backup's) is a property of the runs together: handover_order.
        extra["anchor_met"] = metrics.migration_verdict(summary, multipath,
                                                        metrics.HANDOVER_GAP_SLACK_S)
    elif scenario == MULTI_WIFI:
        extra.update(metrics.wifi_result(summary))
        extra["anchor_met"] = extra["within_best_ap"]
    elif scenario == DATACENTER:
        extra.update({key: summary.get(key) for key in DATACENTER_FIELDS})
        extra["anchor_met"] = None  # a property of the sweep: see datacenter.anchor_sentence
    elif scenario == MIDDLEBOX:
        extra.update({key: summary.get(key) for key in MIDDLEBOX_FIELDS})
        judged = summary.get("as_expected")
        extra["anchor_met"] = None if judged is None else \
            bool(judged and summary.get("box_exercised"))
    elif scenario == RECEIVE_BUFFER:
        # Judged against the plain TCP run at the same buffer: rcvbuf.add_verdicts.
        extra.update({key: summary.get(key) for key in RECEIVE_BUFFER_FIELDS})
        extra["anchor_met"] = None
    elif scenario == MOBILITY:
        fraction = summary.get("fraction_of_envelope")
        extra["fraction_of_envelope"] = fraction
        # Judged for MPTCP (plain TCP over one path is the reference, not judged).
        extra["anchor_met"] = (None if not multipath or not isinstance(fraction, int | float)
                               else fraction >= metrics.MOBILITY_ENVELOPE_FRACTION)
    elif scenario == FAIRNESS:
        extra.update({key: summary.get(key) for key in FAIRNESS_FIELDS})
        extra["congestion"] = params.get("congestion")
        # cross: only a coupled MPTCP is judged (an uncoupled one is the reference, 2/3).
        extra["anchor_met"] = summary.get("within_anchor") if summary.get("mode") == "shared" \
            else summary.get("shifted") if summary.get("expected") == "coupled" else None
    return {
        "run": Path(run_dir).name,
        "path": str(run_dir),
        "scenario": summary.get("scenario", meta.get("scenario", "")),
        "case": metrics.case_label({**meta, "params": params}, keys),
        "stack": metrics.stack_label(meta, summary),
        "link_backend": summary.get("link_backend", meta.get("link_backend", "")),
        "params": params,
        "seed": meta.get("seed"),
        "group": figures.params_label(params, group_keys),
        "goodput_mbps": float(goodput) if goodput is not None else math.nan,
        "rate_sum_mbps": sum(rates.values()) if rates else math.nan,
        "best_path_mbps": max(rates.values()) if rates else math.nan,
        "sha256_match": summary.get("sha256_match"),
        "subflows": summary.get("subflows"),
        **done,
        "verdict": summary.get("verdict"),
        "fidelity_ok": summary.get("fidelity_ok"),
        "fidelity_notes": summary.get("fidelity_notes") or [],
        "fidelity_links": summary.get("fidelity_links") or [],
        **extra,
    }


def runs_table(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """The runs table; `case` and `group` label only the parameters that differ between runs
    (when meta.json carries no `label`). Runs of one case differ only in their seed: a case
    label that two sets of parameters share (a scenario's own label names only some of them)
    gets the parameters that tell them apart."""
    params = [metrics.load_meta(Path(d)).get("params") or {} for d in run_dirs]
    keys = figures.varying_keys(params)
    runs = pd.DataFrame([run_row(Path(d), keys) for d in run_dirs])
    return rcvbuf.add_verdicts(distinct_cases(runs))


def distinct_cases(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with every case label naming one set of parameters per scenario: where runs of
    other parameters share a label, the label gets the parameters that differ among them
    ("10+5 Mbit/s, 10/50 ms" -> "10+5 Mbit/s, 10/50 ms (scheduler=ecf)")."""
    if runs.empty or not {"scenario", "case", "params"} <= set(runs):
        return runs
    runs = runs.copy()
    for (_, _), group in runs.groupby([runs["scenario"].astype(str), runs["case"].astype(str)],
                                      sort=False):
        sets = [p if isinstance(p, dict) else {} for p in group["params"]]
        keys = figures.varying_keys(sets)
        if not keys:
            continue
        for index, chosen in zip(group.index, sets, strict=True):
            shown = ", ".join(f"{k}={chosen.get(k)}" for k in keys)
            runs.at[index, "case"] = f"{runs.at[index, 'case']} ({shown})"
    return runs


def compare_runs(run_dirs: Sequence[Path], out_dir: Path,
                 name: str = "comparison") -> list[Path]:
    """Comparison figures across runs (e.g. kernel MPTCP against plain TCP), chosen by the
    runs' scenario (when they all share one):

    - `vm-migration`: name-goodput.*, receiver goodput over time around the move (raw 100 ms
      bins) with the link-down, stop time, resume, each run's gap and lost connections;
    - `multi-wifi`: name-goodput.*, goodput along the walk against each AP's configured rate;
    - otherwise name.*: goodput per case and stack, with, for `aggregate` only, the sum of the
      path rates, the best path and the selftest bound (completion time panel); then
      name-goodput.*: goodput over time per case (small multiples, averaged over 0.5 s).
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one results directory")
    runs = runs_table(run_dirs)
    scenarios = sorted({str(s) for s in runs["scenario"] if s})
    scenario = scenarios[0] if len(scenarios) == 1 else ""
    stacks = figures.ordered_stacks([str(s) for s in runs["stack"]])
    title = " vs ".join(figures.stack_name(s) for s in stacks)
    if scenarios:
        title = f"{', '.join(scenarios)}: {title}"
    out = Path(out_dir)
    if scenario == MIGRATION:
        return figures.plot_migration(_raw_curves(run_dirs, runs), runs, out / f"{name}-goodput",
                                      title=f"{title}: receiver goodput around the move")
    if scenario == RECEIVE_BUFFER:
        return figures.plot_receive_buffer(rcvbuf.curves(runs), runs, out / name,
                                           title=f"{title}: goodput by receive buffer")
    if scenario == DATACENTER:
        return datacenter.plot(datacenter.rows(run_dirs), out / f"{name}-utilisation",
                               title=f"{title}: FatTree permutation utilisation")
    if scenario == MULTI_WIFI:
        return figures.plot_wifi(_wifi_positions(run_dirs, runs), runs, out / f"{name}-goodput",
                                 title=f"{title}: goodput along the walk")
    if scenario == FAIRNESS:
        return figures.plot_fairness(runs, out / name, title=f"{title}: MPTCP against one TCP")
    sizes = {p.get("size_mib") for p in runs["params"] if isinstance(p, dict)}
    if len(sizes) == 1 and None not in sizes:
        title += f", {next(iter(sizes)):g} MiB transfer"
    references = scenario == AGGREGATE
    written = figures.plot_comparison(runs, out / name, title=title, references=references)
    curves = []
    for run_dir, row in zip(run_dirs, runs.itertuples(), strict=True):
        series = metrics.goodput_series(metrics.load_workload_report(Path(run_dir)))
        smooth = metrics.smoothed_goodput(series, SMOOTHING_S)
        if not smooth.empty:
            curves.append(smooth.assign(case=row.case, stack=row.stack, run=row.path))
    if curves:
        written += figures.plot_goodput_small_multiples(
            pd.concat(curves, ignore_index=True), runs, out / f"{name}-goodput",
            title=title, window_s=SMOOTHING_S, references=references)
    if scenario == HANDOVER and any(
            interactive.message_flow(metrics.load_summary(Path(d))) for d in run_dirs):
        written += interactive.plot_comparison(
            run_dirs, runs, out / f"{name}-interactive",
            title=f"{title}: interactive flow's message delay around the failure")
    return written


def _raw_curves(run_dirs: Sequence[Path], runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's receiver series in its own 100 ms bins (no smoothing: a gap of a few bins
    must stay visible), long form case, stack, run, time_s, mbps."""
    curves = [metrics.goodput_series(metrics.load_workload_report(Path(d)))
              .assign(case=row.case, stack=row.stack, run=row.path)
              for d, row in zip(run_dirs, runs.itertuples(), strict=True)]
    curves = [c for c in curves if not c.empty]
    return pd.concat(curves, ignore_index=True) if curves else \
        pd.DataFrame(columns=["time_s", "bytes", "mbps", "case", "stack", "run"])


def _wifi_positions(run_dirs: Sequence[Path], runs: pd.DataFrame) -> pd.DataFrame:
    frames = [metrics.wifi_positions(metrics.load_summary(Path(d)))
              .assign(case=row.case, stack=row.stack, run=row.path)
              for d, row in zip(run_dirs, runs.itertuples(), strict=True)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=[*metrics.WIFI_COLUMNS, "case", "stack", "run"])


def _absent(value: Any) -> bool:
    """No value: None, or the NaN a missing field becomes in a DataFrame."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any) -> str:
    if _absent(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "–"
    return str(value).replace("|", "\\|")


ANCHORS: dict[str, str] = {
    AGGREGATE: "Linux selftest `simult_flows.sh`: the transfer must finish within "
               "size*8/(r1+r2) * 10/9 + 0.4 s (opposed delays are known to be flaky "
               "upstream)",
    MIGRATION: "MPTCP survives via ADD_ADDR/MP_JOIN/REMOVE_ADDR with a gap about the stop "
               "time plus one RTT of the new path; plain TCP dies (Le & Nahum, INFOCOM 2019)",
    MULTI_WIFI: "MPTCP within about 15% of the best AP at every position (Croitoru et al., "
                "NSDI 2015)",
    MIDDLEBOX: "every case ends in working MPTCP or a clean fallback to TCP with the data "
               "intact, or, where a box changes payload without DSS checksums, in what TCP "
               "would deliver (Honda et al., IMC 2011; Raiciu et al., NSDI 2012; RFC 8684 "
               "§3.7)",
    RECEIVE_BUFFER: "with opportunistic retransmission and penalisation MPTCP's goodput is at "
                    "least best-path TCP's at every receive buffer; without them it can fall "
                    "below (Raiciu et al., NSDI 2012, §4.2). Judged on our MPTCP with "
                    f"`opportunistic=1` (at least {rcvbuf.AT_LEAST_TCP:g} of plain TCP on the "
                    "WiFi path at the same buffer, steady-state goodput); Linux MPTCP and ours "
                    "without it are shown, not judged",
    DATACENTER: "with a permutation matrix over a FatTree with ECMP, utilisation grows with the "
                "number of MPTCP subflows and MPTCP with 4 or more subflows beats TCP, which "
                "loses to ECMP collisions (Raiciu et al., SIGCOMM 2011)",
    HANDOVER: "Paasch et al., CellNet 2012: with full MPTCP the gap is about one round trip of "
              "the cellular path after detection, with a backup subflow it is bounded by "
              "detection, in single-path mode it is larger than backup's (the join and slow "
              "start come after detection); plain TCP breaks. Judged per run against the "
              "mode's expected gap (detection plus one cellular round trip, three in "
              f"single-path) + {metrics.HANDOVER_GAP_SLACK_S:g} s",
    MOBILITY: "MPTCP's goodput tracks the upper envelope of the single-path capacities along a "
              "commute (the seed talk's subway trip; capacity traces in Mahimahi's format). "
              "Judged on MPTCP runs: the mean over seconds of goodput / the better path's "
              f"capacity at least {metrics.MOBILITY_ENVELOPE_FRACTION:g} (a perfect single-path "
              "transfer reaches about 0.96 of it: headers); plain TCP over WiFi is shown, not "
              "judged",
    FAIRNESS: "RFC 6356 (LIA), Khalili et al. CoNEXT 2012 (OLIA), Peng et al. (BALIA): at a "
              "shared bottleneck coupled MPTCP takes 1 +- 0.15 of a Reno TCP's goodput, "
              "uncoupled subflows about 2 (at least 1.6); with cross traffic on path 1 a coupled "
              "MPTCP carries more than an uncoupled one's 2/3 of its bytes on path 2",
}


def _links_verdicts(row: dict[str, Any]) -> str:
    """How many shaped link directions held their rate (summary `fidelity_links`)."""
    counts: dict[str, int] = {}
    for link in row.get("fidelity_links") or []:
        if isinstance(link, dict) and link.get("rate_verdict") not in (None, "unshaped"):
            verdict = str(link["rate_verdict"])
            counts[verdict] = counts.get(verdict, 0) + 1
    order = ["short", "achieved", "not saturated", "not judged", "not measured"]
    parts = [f"{counts[v]} {v}" for v in order if v in counts]
    return f" (links: {', '.join(parts)})" if parts else ""


def _fidelity_cell(row: dict[str, Any]) -> str:
    if row["fidelity_ok"] is None:
        return "–"
    links = _links_verdicts(row)
    if row["fidelity_ok"]:
        return f"ok{links}"
    notes = "; ".join(str(n) for n in row.get("fidelity_notes") or [])
    return f"**failed**{links}: {notes}" if notes else f"**failed**{links}"


def _within_cell(row: dict[str, Any]) -> str:
    if row["within_bound"] is None:
        return _cell(row.get("verdict"))
    return "yes" if row["within_bound"] else "**no**"


def anchor_counts(runs: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per stack: (runs that met the scenario's anchor, runs judged), stacks in figure order.

    `anchor_met` (see `run_row`) when the table has it, else `within_bound` (aggregate)."""
    column = "anchor_met" if "anchor_met" in runs else "within_bound"
    counts: dict[str, tuple[int, int]] = {}
    if column not in runs:
        return counts
    verdicts = [metrics.flag(v) for v in runs[column]]
    judged = runs[[v is not None for v in verdicts]]
    met = pd.Series([v is True for v in verdicts], index=runs.index)
    for stack in figures.ordered_stacks([str(s) for s in judged["stack"]]):
        rows = judged[judged["stack"] == stack]
        counts[stack] = (int(met[rows.index].sum()), len(rows))
    return counts


def _criterion(scenario: str, runs: pd.DataFrame, stack: str) -> str:
    """What `met` means for this stack's runs: the anchor's MPTCP or single-path half."""
    if scenario not in (MIGRATION, HANDOVER) or "multipath" not in runs:
        return ""
    multipath = set(runs[runs["stack"] == stack]["multipath"].astype(bool))
    slack = metrics.MIGRATION_GAP_SLACK_S if scenario == MIGRATION else \
        metrics.HANDOVER_GAP_SLACK_S
    halves = {True: f"survived, gap <= expected + {slack:g} s",
              False: "single path: connection lost"}
    return " (" + " or ".join(halves[m] for m in sorted(multipath, reverse=True)) + ")"


_MET_WORDS = {AGGREGATE: "Within the bound", MIGRATION: "Met",
              MULTI_WIFI: "Within 15% of the best AP at every position",
              MIDDLEBOX: "Outcome as expected, box exercised",
              RECEIVE_BUFFER: "At least best-path TCP", HANDOVER: "Met",
              MOBILITY: "Tracked the envelope",
              FAIRNESS: "Met (shared: ratio in the band its controller expects; cross, coupled "
                        "controllers only: more than 2/3 on path 2)"}


def anchor_line(scenario: str, runs: pd.DataFrame) -> str | None:
    """The "published anchor" sentence of a scenario and how many runs of each stack met it."""
    if scenario not in ANCHORS:
        return None
    if scenario == DATACENTER:
        paths = [Path(p) for p in runs["path"]] if "path" in runs else []
        return (f"**Published anchor**: {ANCHORS[scenario]}. Measured: "
                f"{datacenter.anchor_sentence(datacenter.rows(paths))}.")
    counts = anchor_counts(runs)
    met = "; ".join(f"{figures.stack_name(stack)} {ok} of {n} runs"
                    f"{_criterion(scenario, runs, stack)}" for stack, (ok, n) in counts.items())
    bad = runs[runs["fidelity_ok"].eq(False)] if "fidelity_ok" in runs else runs[:0]
    caveat = (f" ({len(bad)} run(s) failed the emulation fidelity check, see the table)"
              if not bad.empty else "")
    nothing = "no run carries the bound" if scenario == AGGREGATE else "no run could be judged"
    order = f" {handover_order(runs)}" if scenario == HANDOVER else ""
    return (f"**Published anchor**: {ANCHORS[scenario]}. {_MET_WORDS[scenario]}: "
            f"{met or nothing}{caveat}.{order}")


HANDOVER_MODES = ("full", "backup", "single-path")


def handover_order(runs: pd.DataFrame) -> str:
    """Per MPTCP stack, the median gap of each mode's surviving runs and whether
    single-path's is larger than backup's (the paper's order); '' without two modes."""
    if not {"mode", "gap_s", "survived"} <= set(runs.columns):
        return ""
    parts = []
    for stack in figures.ordered_stacks([str(s) for s in runs["stack"]]):
        rows = runs[(runs["stack"] == stack) & runs["mode"].isin(HANDOVER_MODES)
                    & runs["survived"].eq(True)]
        gaps = {mode: float(group["gap_s"].dropna().median())
                for mode, group in rows.groupby("mode") if group["gap_s"].notna().any()}
        if len(gaps) < 2:
            continue
        listed = ", ".join(f"{mode} {gaps[mode]:.2f} s" for mode in HANDOVER_MODES
                           if mode in gaps)
        verdict = ""
        if "single-path" in gaps and "backup" in gaps:
            larger = gaps["single-path"] > gaps["backup"]
            verdict = (": single-path's larger than backup's, as published" if larger else
                       ": single-path's **not** larger than backup's")
        parts.append(f"{figures.stack_name(stack)} {listed}{verdict}")
    return f"Median gap by mode: {'; '.join(parts)}." if parts else ""


# -- the runs table of each scenario ----------------------------------------------------------

Column = tuple[str, str, Callable[[dict[str, Any]], str]]


def _stack_cell(row: dict[str, Any]) -> str:
    return _cell(figures.stack_name(str(row["stack"])))


def _survived_cell(row: dict[str, Any]) -> str:
    survived = metrics.flag(row.get("survived"))
    if survived is None:
        return "–"
    if survived:
        return "yes"
    reason = row.get("survived_reason")
    return f"**no**: {_cell(reason)}" if reason else "**no**"


def _joined_cell(row: dict[str, Any]) -> str:
    joined = metrics.flag(row.get("joined_new_address"))
    if joined is None:
        return "–"
    # Single-path TCP cannot join: "no" is what it should show, not a failure to flag.
    return "yes" if joined else ("**no**" if row.get("multipath") else "no")


def _worst_cell(row: dict[str, Any]) -> str:
    worst = row.get("worst_fraction")
    if _absent(worst):
        return "–"
    where = row.get("worst_position_m")
    at = f" at {where:g} m" if isinstance(where, float) and not math.isnan(where) else ""
    text = f"{worst:.2f}{at}"
    return text if row.get("within_best_ap") is not False else f"**{text}**"


def _box_cell(row: dict[str, Any]) -> str:
    transforms = row.get("transforms") or []
    box = ", ".join(str(t) for t in transforms) if transforms else "untouched"
    changed = row.get("box_changed_segments")
    touched = f", {changed} segment(s) changed" if changed is not None else ""
    return _cell(f"{box} on path {row.get('on_path')}{touched}")


def _outcome_cell(row: dict[str, Any]) -> str:
    outcome = row.get("outcome")
    if outcome is None:
        return "–"
    expected = "/".join(str(e) for e in row.get("expected_outcomes") or [])
    met = row.get("as_expected") and row.get("box_exercised")
    return f"{outcome}" if met else f"**{outcome}** (expected {expected})"


def _checksum_cell(row: dict[str, Any]) -> str:
    if row.get("checksum_detected"):
        return "yes"
    return "no" if (row.get("params") or {}).get("checksum") else "– (off)"


def _fraction_cell(row: dict[str, Any]) -> str:
    fraction = row.get("fraction_of_tcp")
    if _absent(fraction):
        return "–"
    text = f"{fraction:.2f}"
    return f"**{text}**" if row.get("anchor_met") is False else text


def _within_positions_cell(row: dict[str, Any]) -> str:
    judged = row.get("positions_judged")
    if not judged:
        return "–"
    return f"{row.get('positions_within')} of {judged}"


def _fairness_queue_cell(row: dict[str, Any]) -> str:
    """The shaped links' queue discipline; runs from before it was recorded were drop-tail."""
    aqm = row.get("aqm")
    return aqm if isinstance(aqm, str) and aqm else "droptail"


def _fairness_loss_cell(row: dict[str, Any]) -> str:
    """The loss rates both flows saw where they met (shaper's per-flow counters)."""
    losses = [row.get("mptcp_loss_pct"), row.get("tcp_loss_pct")]
    if any(_absent(v) for v in losses):
        return "–"
    return "/".join(f"{v:.2f}" for v in losses)


def _fairness_anchor_cell(row: dict[str, Any]) -> str:
    if row.get("mode") == "cross":
        return "path-2 share > 0.67" if row.get("expected") == "coupled" else "–"
    low, high = row.get("anchor_low"), row.get("anchor_high")
    if _absent(low):
        return "–"
    if _absent(high):
        return f">= {low:g}"
    return f"{low:g}–{high:g}"


def _interactive_delays_cell(row: dict[str, Any]) -> str:
    values = [row.get(f"interactive_delay_ms_{q}") for q in ("p50", "p95", "max")]
    if all(_absent(v) for v in values):
        return "–"
    return "/".join(interactive.delay_cell(v) for v in values)


def _interactive_count_cell(row: dict[str, Any]) -> str:
    received: Any = row.get("interactive_received")
    sent: Any = row.get("interactive_sent")
    if _absent(received):
        return "–"
    sent_text = "–" if _absent(sent) else f"{int(sent)}"
    return f"{int(received)}/{sent_text}"


# The run's verdict against its scenario's anchor (`anchor_met` of `run_row`).
_MET_COLUMN: Column = ("met", "---", lambda r: _cell(metrics.flag(r.get("anchor_met"))))
_COMMON_HEAD: list[Column] = [("case", "---", lambda r: _cell(r["case"])),
                              ("stack", "---", _stack_cell)]
_COMMON_TAIL: list[Column] = [("sha256 match", "---", lambda r: _cell(r["sha256_match"])),
                              ("fidelity", "---", _fidelity_cell)]
TABLES: dict[str, list[Column]] = {
    "": [
        ("goodput [Mbit/s]", "---:", lambda r: _cell(r["goodput_mbps"])),
        ("duration [s]", "---:", lambda r: _cell(r["duration_s"])),
        ("bound [s]", "---:", lambda r: _cell(r["bound_s"])),
        ("within bound", "---", _within_cell),
        ("subflows", "---:", lambda r: _cell(r["subflows"])),
    ],
    MIGRATION: [
        ("survived", "---", _survived_cell),
        ("gap [s]", "---:", lambda r: _cell(r.get("gap_s"))),
        ("expected gap [s]", "---:", lambda r: _cell(r.get("expected_gap_s"))),
        ("goodput before [Mbit/s]", "---:", lambda r: _cell(r.get("goodput_before_mbps"))),
        ("goodput after [Mbit/s]", "---:", lambda r: _cell(r.get("goodput_after_mbps"))),
        ("joined new address", "---", _joined_cell),
    ],
    FAIRNESS: [
        ("mode", "---", lambda r: _cell(r.get("mode"))),
        ("queue", "---", _fairness_queue_cell),
        ("congestion", "---", lambda r: _cell(r.get("congestion"))),
        ("expected", "---", lambda r: _cell(r.get("expected"))),
        ("MPTCP [Mbit/s]", "---:", lambda r: _cell(r.get("mptcp_mbps"))),
        ("TCP [Mbit/s]", "---:", lambda r: _cell(r.get("tcp_mbps"))),
        ("ratio", "---:", lambda r: _cell(r.get("ratio"))),
        ("anchor", "---", _fairness_anchor_cell),
        ("loss MPTCP/TCP [%]", "---:", _fairness_loss_cell),
        ("path-2 share", "---:", lambda r: _cell(r.get("path2_share"))),
        ("of capacity left", "---:", lambda r: _cell(r.get("fraction_of_capacity_left"))),
        _MET_COLUMN,
    ],
    HANDOVER: [
        ("mode", "---", lambda r: _cell(r.get("mode"))),
        ("survived", "---", _survived_cell),
        ("gap [s]", "---:", lambda r: _cell(r.get("gap_s"))),
        ("expected gap [s]", "---:", lambda r: _cell(r.get("expected_gap_s"))),
        ("goodput after [Mbit/s]", "---:", lambda r: _cell(r.get("goodput_after_mbps"))),
        ("interactive p50/p95/max [ms]", "---:", _interactive_delays_cell),
        ("interactive worst around failure [ms]", "---:",
         lambda r: interactive.delay_cell(r.get("interactive_worst_around_failure_ms"))),
        ("interactive received/sent", "---:", _interactive_count_cell),
        ("interactive survived", "---", lambda r: _cell(
            metrics.flag(r.get("interactive_survived")))),
        _MET_COLUMN,
    ],
    MOBILITY: [
        ("goodput [Mbit/s]", "---:", lambda r: _cell(r["goodput_mbps"])),
        ("fraction of envelope", "---:", lambda r: _cell(r.get("fraction_of_envelope"))),
        ("subflows", "---:", lambda r: _cell(r["subflows"])),
        _MET_COLUMN,
    ],
    MULTI_WIFI: [
        ("fraction of best AP (mean)", "---:", lambda r: _cell(r.get("fraction_of_best_ap"))),
        ("worst position", "---:", _worst_cell),
        ("goodput [Mbit/s]", "---:", lambda r: _cell(r["goodput_mbps"])),
        ("positions within 15%", "---:", _within_positions_cell),
    ],
    RECEIVE_BUFFER: [
        ("goodput [Mbit/s]", "---:", lambda r: _cell(r["goodput_mbps"])),
        ("steady goodput [Mbit/s]", "---:", lambda r: _cell(r.get("steady_goodput_mbps"))),
        ("TCP at this buffer [Mbit/s]", "---:", lambda r: _cell(r.get("tcp_mbps"))),
        ("fraction of TCP", "---:", _fraction_cell),
        ("subflows", "---:", lambda r: _cell(r["subflows"])),
    ],
    DATACENTER: [
        ("subflows", "---:", lambda r: _cell(r["subflows"])),
        ("utilisation", "---:", lambda r: _cell(r.get("utilisation"))),
        ("Jain's index", "---:", lambda r: _cell(r.get("jain_index"))),
        ("lowest decile / rate", "---:", lambda r: _cell(r.get("lowest_decile_fraction"))),
        ("aggregate goodput [Mbit/s]", "---:", lambda r: _cell(r["goodput_mbps"])),
        ("interval [s]", "---:", lambda r: _cell(r.get("interval_s"))),
    ],
    MIDDLEBOX: [
        ("box", "---", _box_cell),
        ("outcome", "---", _outcome_cell),
        ("DSS checksum caught it", "---", _checksum_cell),
        ("goodput [Mbit/s]", "---:", lambda r: _cell(r["goodput_mbps"])),
        ("subflows", "---:", lambda r: _cell(r["subflows"])),
    ],
}


def runs_table_lines(scenario: str, runs: pd.DataFrame, report_dir: Path) -> list[str]:
    """The Markdown table of a scenario's runs, with the columns its anchor is judged on."""
    if scenario == RECEIVE_BUFFER:
        runs = rcvbuf.in_plot_order(runs)
    columns = [*_COMMON_HEAD, *TABLES.get(scenario, TABLES[""]), *_COMMON_TAIL,
               ("run", "---", lambda r: f"`{_rel(Path(r['path']), report_dir)}`")]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |",
             "|" + "|".join(c[1] for c in columns) + "|"]
    for row in runs.to_dict(orient="records"):
        cells = [fn(row).replace("|", "\\|") if name == "fidelity" else fn(row)
                 for name, _, fn in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(run_dirs: Sequence[Path], out_path: Path, analyze: bool = True) -> Path:
    """A Markdown report: per scenario a table of runs against the published anchor and the
    comparison figure, then each run's figures (linked relative to the report).

    Where a case and stack ran more than once, a "Repetitions" table comes first: the spread
    of the scenario's headline metrics and how many runs met the anchor
    (`analysis.repetitions`). Those numbers, for every case and stack, also go to
    `<report>-repetitions.csv` next to the report.

    With `analyze` the figures are (re)made first; otherwise existing figures are linked.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs = runs_table(run_dirs)
    lines = ["# MPTCP testbed report", ""]
    scenarios = list(dict.fromkeys(str(s) for s in runs["scenario"])) if not runs.empty else []
    repeated = repetitions.groups(runs)
    csv_path = repetitions.write_csv(repeated, repetitions_csv(out_path))
    for scenario in scenarios:
        mask = runs["scenario"].astype(str) == scenario
        subset = runs[mask]
        lines += [f"## Scenario `{scenario or 'unknown'}`", ""]
        if repetitions.repeated(repeated[repeated["scenario"] == scenario]):
            lines += ["### Repetitions", "",
                      repetitions.caption(repeated, scenario, _rel(csv_path, out_path.parent)),
                      "", *repetitions.table_lines(repeated, scenario), "", "### Each run", ""]
        lines += [*runs_table_lines(scenario, subset, out_path.parent), ""]
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
            lines += _datalevel_lines(result.get("datalevel") or {})
            lines.append("")
        for figure in (THROUGHPUT_FIGURE, GOODPUT_FIGURE, SUBFLOWS_FIGURE, interactive.FIGURE,
                       *datalevel.FIGURES):
            png = run_dir / "figures" / f"{figure}.png"
            if png.exists():
                lines.append(f"![{row['case']}, {row['stack']}: {figure}]"
                             f"({_rel(png, out_path.parent)})")
        lines.append("")
    out_path.write_text("\n".join(lines))
    return out_path


def repetitions_csv(report_path: Path) -> Path:
    """Where `write_report` puts the repetitions' numbers: `<report>-repetitions.csv`."""
    return Path(report_path).with_name(f"{Path(report_path).stem}-repetitions.csv")


def _datalevel_lines(numbers: dict[str, Any]) -> list[str]:
    """The data-level numbers of a run as report bullets (reinjections, out-of-order delay,
    one-way delay), and what could not be measured."""
    lines = []
    if numbers.get("measured_port") is not None:
        lines.append(f"- the captures also hold other connections between the measured hosts: "
                     f"the numbers below are the measured flow's (port "
                     f"{numbers['measured_port']}) only")
    reinjected = numbers.get("reinjections")
    if reinjected:
        pairs = "; ".join(f"{p['bytes']} B from {p['from']} to {p['to']}"
                          for p in reinjected["by_pair"])
        lines.append(f"- reinjections (at `{reinjected['captured_at']}`): "
                     f"{reinjected['bytes']} bytes in {reinjected['ranges']} range(s)"
                     + (f": {pairs}" if pairs else ""))
    ooo = numbers.get("out_of_order")
    if ooo:
        parts = [f"{s['subflow']} {s['out_of_order_segments']} of {s['segments']} segments "
                 f"held, median {_cell(s['median_ms'])} ms, p95 {_cell(s['p95_ms'])} ms"
                 for s in ooo["subflows"]]
        lines.append(f"- out-of-order delay (at `{ooo['captured_at']}`): " + "; ".join(parts))
    owd = numbers.get("one_way_delay")
    if owd:
        parts = [f"{s['direction']} {_cell(s['median_ms'])} ms (min {_cell(s['min_ms'])})"
                 for s in owd["subflows"]]
        lines.append(f"- one-way delay `{owd['between'][0]}`↔`{owd['between'][1]}`, median: "
                     + "; ".join(parts))
    lines += [f"- not measured: {note}" for note in numbers.get("notes") or []]
    return lines


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
