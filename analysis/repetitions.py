"""Repetitions of a case: runs of the same scenario, parameters and stack that differ only in
their seed (suite files' `repetitions`/`seeds`, the built-in suites' `--full` repetitions),
gathered into one row per case and stack with the spread of the scenario's headline metrics
and how many of the runs met the published anchor.

Pure functions over the runs table (analysis.report.runs_table); the report renders them and
writes them to a CSV next to itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import figures, metrics
from analysis.spread import spread


@dataclass(frozen=True)
class Headline:
    column: str  # of the runs table
    label: str  # as the report prints it, with its unit


# The numbers each scenario's anchor is about, first the one it is judged on. Scenarios not
# listed here are summarised by their goodput.
HEADLINES: dict[str, tuple[Headline, ...]] = {
    # simult_flows.sh judges the completion time against its bound; goodput is what a reader
    # compares between stacks.
    "aggregate": (Headline("duration_s", "completion time [s]"),
                  Headline("goodput_mbps", "goodput [Mbit/s]")),
    # Le & Nahum: the gap around the move (single-path runs that lost the connection have
    # none), and what the new path carried after it.
    "vm-migration": (Headline("gap_s", "gap [s]"),
                     Headline("goodput_after_mbps", "goodput after [Mbit/s]")),
    # Paasch et al.: the gap when WiFi is lost, ordered across the modes, and what the
    # interactive flow's worst message waited around it.
    "handover": (Headline("gap_s", "gap [s]"), Headline("goodput_mbps", "goodput [Mbit/s]"),
                 Headline("interactive_worst_around_failure_ms",
                          "interactive: worst delay around the failure [ms]")),
    # Croitoru et al.: "within 15% of the best AP at every position" is judged on the worst
    # position; the mean over the walk is what the run reports as its result.
    "multi-wifi": (Headline("worst_fraction", "worst position / best AP"),
                   Headline("fraction_of_best_ap", "mean fraction of best AP")),
    # The upper envelope of the single paths.
    "mobility": (Headline("fraction_of_envelope", "fraction of the envelope"),
                 Headline("goodput_mbps", "goodput [Mbit/s]")),
    # Raiciu et al. §4.2: steady-state goodput against plain TCP's at the same buffer.
    "receive-buffer": (Headline("steady_goodput_mbps", "steady goodput [Mbit/s]"),
                       Headline("fraction_of_tcp", "fraction of TCP")),
    # Raiciu et al. SIGCOMM 2011: utilisation, and how evenly the flows share it.
    "datacenter": (Headline("utilisation", "utilisation"),
                   Headline("jain_index", "Jain's index")),
    # RFC 6356 and its successors: the MPTCP/TCP goodput ratio at a shared bottleneck, the
    # share of MPTCP's bytes on the free path with cross traffic (one of the two per mode),
    # and whether both flows saw the loss rate the coupling's derivation assumes they share.
    "fairness": (Headline("ratio", "MPTCP/TCP ratio (shared)"),
                 Headline("path2_share", "path-2 share (cross)"),
                 Headline("loss_ratio", "MPTCP/TCP loss rate")),
    # An outcome, not a number: the anchor count says it; goodput shows what a fallback costs.
    "middlebox": (Headline("goodput_mbps", "goodput [Mbit/s]"),),
}
DEFAULT_HEADLINES = (Headline("goodput_mbps", "goodput [Mbit/s]"),)

COLUMNS = ["scenario", "case", "stack", "runs", "seeds", "anchor_met", "anchor_judged",
           "fidelity_failed", "metric", "label", "n", "mean", "std", "ci95", "ci95_low",
           "ci95_high", "median", "min", "max", "params", "paths"]


def headlines(scenario: str) -> tuple[Headline, ...]:
    return HEADLINES.get(scenario, DEFAULT_HEADLINES)


def _verdict_column(runs: pd.DataFrame) -> str | None:
    # The same column anchor_counts (analysis.report) reads.
    for column in ("anchor_met", "within_bound"):
        if column in runs:
            return column
    return None


def _seed(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def groups(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario, case, stack and headline metric: `runs` in the group, their
    seeds, `anchor_met` of `anchor_judged` (runs the anchor could judge), `fidelity_failed`
    (counted in the group and in its numbers), then the metric's `n` (runs that measured
    it), mean, sample std, the 95% t-interval of the mean (`ci95` its half-width, NaN for
    n < 2), median, min and max. Cases and stacks in the order of the figures."""
    rows: list[dict[str, Any]] = []
    if runs.empty or not {"scenario", "case", "stack"} <= set(runs):
        return pd.DataFrame(rows, columns=COLUMNS)
    verdicts = _verdict_column(runs)
    for scenario in dict.fromkeys(str(s) for s in runs["scenario"]):
        part = runs[runs["scenario"].astype(str) == scenario]
        stacks = figures.ordered_stacks([str(s) for s in part["stack"]])
        for case in figures.case_order(part):
            for stack in stacks:
                group = part[(part["case"].astype(str) == case)
                             & (part["stack"].astype(str) == stack)]
                if group.empty:
                    continue
                flags = [metrics.flag(v) for v in group[verdicts]] if verdicts else []
                seeds = [s for s in (_seed(v) for v in group.get("seed", [])) if s is not None]
                params = group["params"].iloc[0] if "params" in group else {}
                common = {
                    "scenario": scenario, "case": case, "stack": stack, "runs": len(group),
                    "seeds": " ".join(str(s) for s in seeds),
                    "anchor_met": sum(f is True for f in flags),
                    "anchor_judged": sum(f is not None for f in flags),
                    "fidelity_failed": int(group["fidelity_ok"].eq(False).sum())
                    if "fidelity_ok" in group else 0,
                    "params": json.dumps(params if isinstance(params, dict) else {},
                                         sort_keys=True),
                    "paths": " ".join(str(p) for p in group.get("path", [])),
                }
                for headline in headlines(scenario):
                    s = spread(group.get(headline.column, []))
                    rows.append({**common, "metric": headline.column, "label": headline.label,
                                 "n": s.n, "mean": s.mean, "std": s.std, "ci95": s.ci95,
                                 "ci95_low": s.ci95_low, "ci95_high": s.ci95_high,
                                 "median": s.median, "min": s.min, "max": s.max})
    return pd.DataFrame(rows, columns=COLUMNS)


def repeated(table: pd.DataFrame) -> bool:
    """Whether any case and stack of `table` (from `groups`) ran more than once."""
    return bool(not table.empty and (table["runs"] > 1).any())


def _decimals(std: float) -> int:
    """Decimals that show a group's spread: two, or down to the second significant digit of
    its standard deviation (runs 3.5098 and 3.5100 s must not both print as 3.51)."""
    if math.isnan(std) or std <= 0:
        return 2
    # The nudge keeps an sd of 0.0001 that arithmetic left at 0.0000999... at its own digit.
    return min(max(2, 1 - math.floor(math.log10(std) + 1e-9)), 6)


def _num(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if not math.isnan(value) else "–"


def _mean_cell(row: dict[str, Any]) -> str:
    if row["n"] == 0:
        return "–"
    d = _decimals(row["std"])
    text = _num(row["mean"], d)
    if row["n"] >= 2:
        text += f" ± {_num(row['ci95'], d)} (sd {_num(row['std'], d)})"
    return text + (f" [{row['n']} measured]" if row["n"] < row["runs"] else "")


def _range_cell(row: dict[str, Any]) -> str:
    if row["n"] == 0:
        return "–"
    d = _decimals(row["std"])
    low, high = _num(row["min"], d), _num(row["max"], d)
    return low if row["n"] == 1 else f"{low}–{high}"


def _anchor_cell(row: dict[str, Any]) -> str:
    met, judged, runs = row["anchor_met"], row["anchor_judged"], row["runs"]
    if judged == 0:
        return "–"
    text = f"{met} of {judged}" + ("" if judged == runs else f" judged ({runs} runs)")
    return text if met == judged else f"**{text}**"


def _fidelity_cell(row: dict[str, Any]) -> str:
    failed = row["fidelity_failed"]
    return "–" if not failed else f"**{failed} of {row['runs']} failed**"


def table_lines(table: pd.DataFrame, scenario: str) -> list[str]:
    """The Markdown "Repetitions" table of one scenario (rows of `groups`): per case and
    stack, the runs, each headline metric's mean ± 95% CI (sd) and min–max, the anchor met
    and the runs that failed the fidelity check."""
    part = table[table["scenario"] == scenario]
    if part.empty:
        return []
    names = list(dict.fromkeys(zip(part["metric"], part["label"], strict=True)))
    head = ["case", "stack", "runs"]
    align = ["---", "---", "---:"]
    for _, label in names:
        head += [f"{label}: mean ± 95% CI (sd)", f"{label}: min–max"]
        align += ["---:", "---:"]
    head += ["anchor met", "fidelity check"]
    align += ["---", "---"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for (case, stack), group in part.groupby(["case", "stack"], sort=False):
        by_metric = {str(r["metric"]): r for r in group.to_dict(orient="records")}
        first = next(iter(by_metric.values()))
        cells = [str(case).replace("|", "\\|"), figures.stack_name(str(stack)),
                 str(first["runs"])]
        for metric, _ in names:
            row = by_metric.get(metric)
            cells += [_mean_cell(row), _range_cell(row)] if row else ["–", "–"]
        cells += [_anchor_cell(first), _fidelity_cell(first)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def caption(table: pd.DataFrame, scenario: str, csv_name: str) -> str:
    """What the Repetitions table shows, and which groups hold runs that failed the
    fidelity check."""
    part = table[table["scenario"] == scenario].drop_duplicates(["case", "stack"])
    failed = part[part["fidelity_failed"] > 0]
    text = ("Repetitions: runs of the same case and stack (seeds differ). Mean ± the "
            "half-width of the 95% Student-t interval of the mean (n >= 2) and the sample "
            "standard deviation; min–max over the runs; anchor met: runs that met it of those "
            f"it could judge. Every number is also in `{csv_name}`.")
    if not failed.empty:
        text += (f" {int(failed['fidelity_failed'].sum())} run(s) in {len(failed)} group(s) "
                 "failed the emulation fidelity check; they are counted in their group's "
                 "numbers, see the runs below.")
    return text


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """The `groups` table as CSV (one row per case, stack and metric), for plotting."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.6g")
    return path
