"""Figures of runs and comparisons across runs, written as PNG (to look at) and PDF (for papers).

Only the Agg backend is used, selected without touching global state at import: figures are
made from `matplotlib.figure.Figure` objects directly, so importing this module never opens
a display or changes another module's pyplot backend.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.patheffects import withStroke

from analysis import metrics
from analysis.spread import spread

FORMATS: tuple[str, ...] = ("png", "pdf")
# The one scenario whose figures compare goodput with the sum of the path rates and the best
# single path: bandwidth aggregation is what it measures.
AGGREGATE = "aggregate"
FIDELITY_WARNING = "WARNING: emulation fidelity check failed — numbers may not reflect the model"

# Paper-style defaults: sizes in points for a figure printed at about one column wide.
_RC: Any = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable and searchable
}


def _new_figure(width: float = 7.0, height: float = 3.8, ncols: int = 1,
                nrows: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    for ax in axes:
        ax.grid(True, color="0.88", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def save(fig: Figure, base: Path) -> list[Path]:
    """Write `fig` as base.png and base.pdf; return the paths."""
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FORMATS:
        path = base.with_suffix(f".{ext}")
        fig.savefig(path, dpi=150 if ext == "png" else None)
        paths.append(path)
    return paths


def _fidelity_ok(summary: dict[str, Any]) -> bool:
    return summary.get("fidelity_ok") is not False


def _mark_fidelity(fig: Figure, summary: dict[str, Any], which: str = "") -> None:
    # A run whose emulation did not meet its configured rates/delays must not be mistaken for
    # a valid result when the PNG is looked at alone, so the warning is drawn on the figure.
    if _fidelity_ok(summary):
        return
    # supxlabel takes part in the constrained layout, so the banner never hides data.
    text = f"{FIDELITY_WARNING} ({which})" if which else FIDELITY_WARNING
    fig.supxlabel(text, fontsize=11, color="white", fontweight="bold",
                  bbox={"boxstyle": "round", "facecolor": "#c0392b", "edgecolor": "none"})


def _draw_rates(ax: Axes, meta: dict[str, Any]) -> None:
    # Labels go to the legend rather than next to the lines: close rates (5 and 10 Mbit/s on
    # a 300 Mbit/s axis) would print on top of each other. The sum is a reference only where
    # the paths are used at once (aggregate): for a migration or a handover it means nothing.
    rates = metrics.link_rates_mbps(meta)
    for i, (key, rate) in enumerate(rates.items()):
        name = key.removesuffix("_mbps").replace("_", " ")
        ax.axhline(rate, color=str(0.25 + 0.15 * (i % 3)), linestyle=":", linewidth=1.3,
                   zorder=1, label=f"{name} (configured) {rate:g} Mbit/s")
    if len(rates) > 1 and meta.get("scenario") == AGGREGATE:
        total = sum(rates.values())
        ax.axhline(total, color="0.1", linestyle="--", linewidth=1.1, zorder=1,
                   label=f"sum of configured rates {total:g} Mbit/s")


def _legend_above(ax: Axes) -> None:
    # Above the axes, outside the data: a legend inside would cover a time series somewhere.
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncols=min(len(labels), 3), frameon=False, fontsize=8)


def _with_last_step(frame: pd.DataFrame, key: str | None, bin_s: float) -> pd.DataFrame:
    """Repeat each line's last bin at its end time, so steps-post draws the last bin too."""
    if frame.empty:
        return frame
    groups = [g for _, g in frame.groupby(key)] if key else [frame]
    tails = []
    for group in groups:
        tail = group.iloc[[-1]].copy()
        tail["time_s"] = tail["time_s"] + bin_s
        tails.append(tail)
    return pd.concat([frame, *tails], ignore_index=True)


def _bin_width(frame: pd.DataFrame) -> float:
    steps = frame["time_s"].drop_duplicates().sort_values().diff().dropna()
    return float(steps.min()) if not steps.empty else metrics.DEFAULT_BIN_S


def _run_title(meta: dict[str, Any], summary: dict[str, Any], what: str,
               width_in: float = 7.0, where: str = "") -> str:
    """"What: stack" over "scenario: case", each line wrapped to the figure's width, so a
    long case label ("stop 0.5 s, A 10 Mbit/s 20 ms -> B 20 Mbit/s 5 ms") never runs off it."""
    scenario = summary.get("scenario", meta.get("scenario", "run"))
    case = f": {meta['label']}" if meta.get("label") else ""
    stack = stack_name(metrics.stack_label(meta, summary))
    lines = [f"{what}: {stack}{where}", f"{scenario}{case}"]
    return fit_title(lines, width_in)


# Characters of a 12 pt title per inch of figure width (DejaVu Sans averages about 0.55 em),
# with a margin: wrapping a little early is better than a title cut off at the edge.
_TITLE_CHARS_PER_IN = 9.5


def fit_title(lines: Sequence[str], width_in: float, fontsize: float = 12) -> str:
    """Title lines wrapped to fit a figure `width_in` inches wide at `fontsize` points."""
    width = max(20, int(width_in * _TITLE_CHARS_PER_IN * 12 / fontsize))
    return "\n".join(textwrap.fill(line, width=width, break_on_hyphens=False)
                     for line in lines if line)


def plot_throughput(tput: pd.DataFrame, meta: dict[str, Any], summary: dict[str, Any],
                    base: Path) -> list[Path]:
    """Throughput over time per subflow (solid) and in total (black), from the capture."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, (ax,) = _new_figure()
        width = _bin_width(tput) if not tput.empty else metrics.DEFAULT_BIN_S
        per_subflow = _with_last_step(tput[tput["subflow"] != metrics.TOTAL_LABEL],
                                      "subflow", width)
        if not per_subflow.empty:
            sns.lineplot(data=per_subflow, x="time_s", y="mbps", hue="subflow", ax=ax,
                         linewidth=1.4, palette="colorblind", drawstyle="steps-post")
        total = _with_last_step(tput[tput["subflow"] == metrics.TOTAL_LABEL], None, width)
        if not total.empty:
            ax.step(total["time_s"], total["mbps"], where="post", color="black",
                    linewidth=1.8, label="total")
        _draw_rates(ax, meta)
        ax.set_xlabel("Time [s]")
        ax.set_ylabel("Throughput [Mbit/s]")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        fig.suptitle(_run_title(meta, summary, "Throughput per subflow"))
        if ax.get_legend_handles_labels()[0]:
            _legend_above(ax)
        else:
            ax.text(0.5, 0.5, "no TCP data in the capture", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
        _mark_fidelity(fig, summary)
        return save(fig, base)


def plot_goodput(goodput: pd.DataFrame, meta: dict[str, Any], summary: dict[str, Any],
                 base: Path) -> list[Path]:
    """The receiving application's goodput over time (from the workload report)."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, (ax,) = _new_figure()
        if not goodput.empty:
            goodput = _with_last_step(goodput, None, _bin_width(goodput))
            ax.step(goodput["time_s"], goodput["mbps"], where="post", color="#0173b2",
                    linewidth=1.6, label="receiver goodput")
            mean = summary.get("goodput_mbps")
            if mean is not None:
                ax.axhline(float(mean), color="#de8f05", linewidth=1.2, linestyle="-.",
                           label=f"mean {float(mean):.1f} Mbit/s")
        else:
            ax.text(0.5, 0.5, "no goodput series in the workload report",
                    transform=ax.transAxes, ha="center", va="center", color="0.4")
        _draw_rates(ax, meta)
        if ax.get_legend_handles_labels()[0]:
            _legend_above(ax)
        ax.set_xlabel("Time [s]")
        ax.set_ylabel("Goodput [Mbit/s]")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        fig.suptitle(_run_title(meta, summary, "Application goodput"))
        _mark_fidelity(fig, summary)
        return save(fig, base)


def params_label(params: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """Scenario parameters as a short, stable label for grouping ("rate1_mbps=10, ...")."""
    chosen = keys if keys is not None else sorted(params)
    parts = [f"{k}={params[k]}" for k in chosen if k in params]
    return ", ".join(parts) if parts else "default"


def varying_keys(param_sets: Sequence[dict[str, Any]]) -> list[str]:
    """Parameter keys whose value differs between runs: the ones worth putting in a label."""
    keys = sorted({k for p in param_sets for k in p})
    return [k for k in keys if len({repr(p.get(k)) for p in param_sets}) > 1]


# Stacks in the order a reader compares them (MPTCP first, the single-path baseline last),
# with fixed colours so a stack looks the same in every figure.
STACK_ORDER: tuple[str, ...] = ("kernel", "userspace", "tcp")
# Our userspace stack speaks single-path TCP today (MPTCP is being built): "our stack" stays
# true as it grows, where "userspace MPTCP" would promise what the runs do not show yet.
STACK_NAMES: dict[str, str] = {"kernel": "kernel MPTCP", "userspace": "our stack",
                               "tcp": "TCP"}
_PALETTE = sns.color_palette("colorblind")
_STACK_COLOURS: dict[str, Any] = {"kernel": _PALETTE[0], "userspace": _PALETTE[2],
                                  "tcp": _PALETTE[1]}
_OTHER_COLOURS = [_PALETTE[i] for i in (4, 3, 7, 8, 9, 5, 6)]
PASS_COLOUR, FAIL_COLOUR = "#1a7f37", "#c0392b"
BOUND_COLOUR = "#c0392b"


def stack_name(stack: str) -> str:
    """The stack as printed in figures ("kernel" -> "kernel MPTCP")."""
    return STACK_NAMES.get(stack, stack)


def ordered_stacks(stacks: Sequence[str]) -> list[str]:
    known = [s for s in STACK_ORDER if s in stacks]
    return known + sorted({s for s in stacks if s not in STACK_ORDER})


def _stack_colours(stacks: Sequence[str]) -> dict[str, Any]:
    others = iter(_OTHER_COLOURS * 3)
    return {s: _STACK_COLOURS[s] if s in _STACK_COLOURS else next(others) for s in stacks}


def case_order(runs: pd.DataFrame) -> list[str]:
    """Cases in the order their runs were given (run directories sort by parameters)."""
    return list(dict.fromkeys(str(c) for c in runs["case"])) if "case" in runs else []


def _first(values: pd.Series) -> float:
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return float(numbers.iloc[0]) if not numbers.empty else math.nan


def case_markers(runs: pd.DataFrame) -> pd.DataFrame:
    """Reference values per case: rate_sum_mbps (what aggregation can reach), best_path_mbps
    (what one path, hence TCP, can reach), bound_s (selftest bound) and link_limited_s.

    The bound is taken from the runs' summaries (all runs of a case share it).
    """
    rows = []
    for case in case_order(runs):
        group = runs[runs["case"].astype(str) == case]
        rows.append({
            "case": case,
            "rate_sum_mbps": _first(group.get("rate_sum_mbps", pd.Series(dtype=float))),
            "best_path_mbps": _first(group.get("best_path_mbps", pd.Series(dtype=float))),
            "bound_s": _first(group.get("bound_s", pd.Series(dtype=float))),
            "link_limited_s": _first(group.get("link_limited_s", pd.Series(dtype=float))),
        })
    return pd.DataFrame(rows, columns=["case", "rate_sum_mbps", "best_path_mbps", "bound_s",
                                       "link_limited_s"])


def bar_table(runs: pd.DataFrame, value: str) -> pd.DataFrame:
    """One bar per (case, stack): x position, mean of `value`, the half-width of its 95%
    t-interval (`ci95`, NaN for fewer than two values), runs, failed fidelity checks, and runs
    within the bound. Cases sit at integers; stacks spread within 0.8 of a slot."""
    cases, stacks = case_order(runs), ordered_stacks([str(s) for s in runs["stack"]])
    width = 0.8 / max(len(stacks), 1)
    rows = []
    for ci, case in enumerate(cases):
        for si, stack in enumerate(stacks):
            group = runs[(runs["case"].astype(str) == case) & (runs["stack"] == stack)]
            if group.empty:
                continue
            values = pd.to_numeric(group[value], errors="coerce").dropna()
            within = group["within_bound"] if "within_bound" in group else pd.Series(dtype=object)
            rows.append({
                "case": case, "stack": stack,
                "x": ci - 0.4 + width * (si + 0.5), "width": width,
                "value": float(values.mean()) if not values.empty else math.nan,
                "ci95": spread(values).ci95,
                "values": [float(v) for v in values],
                "runs": len(group),
                "fidelity_failed": int(group["fidelity_ok"].eq(False).sum())
                if "fidelity_ok" in group else 0,
                "within": int(within.eq(True).sum()),
                "judged": int(within.isin([True, False]).sum()),
            })
    return pd.DataFrame(rows, columns=["case", "stack", "x", "width", "value", "ci95", "values",
                                       "runs", "fidelity_failed", "within", "judged"])


# The legend entry of the error bars drawn where a case and stack ran more than once: the bar
# is the mean of its runs, the whisker the 95% Student-t interval of that mean, a dot a run.
REPETITIONS_LABEL = "mean ± 95% CI (t); dots: runs"


def _bar_top(row: Any) -> float:
    """The highest point drawn of a bar (a row of `bar_table`): its mean, the top of its
    error bar or its highest run; NaN for a bar with no value."""
    if math.isnan(row.value):
        return math.nan
    return max([row.value + (row.ci95 if not math.isnan(row.ci95) else 0.0), *row.values])


def bar_tops(bars: pd.DataFrame) -> list[float]:
    """The highest point drawn of each bar that has a value."""
    return [top for top in (_bar_top(row) for row in bars.itertuples()) if not math.isnan(top)]


def repetitions_handle(bars: pd.DataFrame) -> Line2D | None:
    """A legend handle for the error bars, when any bar has them."""
    if bars.empty or not bars["ci95"].notna().any():
        return None
    return Line2D([], [], color="0.15", marker="o", markersize=3, linewidth=1.0,
                  label=REPETITIONS_LABEL)


def _draw_bars(ax: Axes, bars: pd.DataFrame, colours: dict[str, Any]) -> None:
    for row in bars.itertuples():
        if math.isnan(row.value):
            continue
        bad = row.fidelity_failed > 0
        ax.bar(row.x, row.value, width=row.width * 0.92, color=colours[row.stack],
               edgecolor="0.15" if bad else "none", linewidth=0.9 if bad else 0,
               hatch="///" if bad else None, zorder=2)
        if len(row.values) > 1:  # repetitions: every run as a dot on its bar
            ax.plot([row.x] * len(row.values), row.values, "o", color="0.15", markersize=3,
                    zorder=4)
        if not math.isnan(row.ci95):  # and the mean's 95% t-interval as a whisker
            ax.errorbar(row.x, row.value, yerr=row.ci95, fmt="none", ecolor="0.15",
                        elinewidth=1.0, capsize=3, zorder=4)


def _bar_values(ax: Axes, bars: pd.DataFrame) -> None:
    # The value at the foot of each bar, where no reference marker runs through it.
    for row in bars.itertuples():
        if not math.isnan(row.value) and row.value > 0:
            ax.annotate(f"{row.value:.1f}", (row.x, 0), xytext=(0, 4),
                        textcoords="offset points", ha="center", va="bottom", rotation=90,
                        fontsize=8, color="white", fontweight="bold", zorder=5,
                        path_effects=[withStroke(linewidth=1.8, foreground="0.2")])


def _draw_case_marks(ax: Axes, markers: pd.DataFrame, column: str, **style: Any) -> bool:
    drawn = False
    for i, value in enumerate(markers[column]):
        if not math.isnan(value):
            ax.hlines(value, i - 0.46, i + 0.46, zorder=3, **style)
            drawn = True
    return drawn


def _case_ticks(ax: Axes, cases: Sequence[str]) -> None:
    # One line per part of the label ("10+10 Mbit/s" over "1/25 ms") keeps ticks horizontal.
    ax.set_xticks(range(len(cases)), [c.replace(", ", "\n") for c in cases])
    ax.set_xlim(-0.6, len(cases) - 0.4)
    ax.tick_params(axis="x", length=0)
    ax.grid(False, axis="x")


def fidelity_banner(runs: pd.DataFrame) -> str | None:
    """The banner naming the runs whose emulation fidelity check failed, or None."""
    if "fidelity_ok" not in runs:
        return None
    bad = runs[runs["fidelity_ok"].eq(False)]
    if bad.empty:
        return None
    names = [f"{stack_name(str(r.stack))} at {r.case}" for r in bad.itertuples()]
    return ("WARNING: emulation fidelity check failed (hatched bars) for "
            + "; ".join(dict.fromkeys(names)) + ": these numbers may not reflect the model")


def plot_comparison(runs: pd.DataFrame, base: Path, title: str = "Goodput by stack",
                    references: bool = True) -> list[Path]:
    """Goodput per case and stack against the configured rates and, when the runs carry the
    selftest bound, completion time per case and stack against that bound.

    `references`: draw the sum of the path rates and the best single path per case (what
    aggregation and one path can reach); only meaningful for `aggregate`.

    `runs`: one row per run with columns case, stack, goodput_mbps, fidelity_ok, and
    optionally rate_sum_mbps, best_path_mbps, duration_s, bound_s, link_limited_s,
    within_bound (see `analysis.report.runs_table`).
    """
    cases = case_order(runs)
    stacks = ordered_stacks([str(s) for s in runs["stack"]]) if not runs.empty else []
    colours = _stack_colours(stacks)
    markers = case_markers(runs)
    if not references:
        markers[["rate_sum_mbps", "best_path_mbps"]] = math.nan
    has_bound = bool(markers["bound_s"].notna().any()) and "duration_s" in runs
    # Wide enough for the legend's four columns above two panels, and 1.25 in per case; past
    # a few cases side-by-side panels would squeeze the case labels, so they are stacked.
    stacked = has_bound and len(cases) > 5
    per_row = 1 if stacked else (2 if has_bound else 1)
    width = max(10.5 if has_bound else 6.5, 1.6 + 1.25 * len(cases) * per_row)
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, axes = _new_figure(width=min(width, 18.0), height=9.0 if stacked else 4.6,
                                ncols=1 if stacked else per_row, nrows=2 if stacked else 1)
        ax = axes[0]
        gbars = bar_table(runs, "goodput_mbps") if not runs.empty else bar_table(
            pd.DataFrame(columns=["case", "stack", "goodput_mbps"]), "goodput_mbps")
        _draw_bars(ax, gbars, colours)
        _bar_values(ax, gbars)
        handles: list[Any] = [Patch(color=colours[s], label=stack_name(s))
                              for s in stacks]
        if _draw_case_marks(ax, markers, "rate_sum_mbps", colors="0.1", linestyles="--",
                            linewidth=1.6):
            handles.append(Line2D([], [], color="0.1", linestyle="--",
                                            linewidth=1.6, label="sum of path rates"))
        if _draw_case_marks(ax, markers, "best_path_mbps", colors="0.45", linestyles=":",
                            linewidth=1.8):
            handles.append(Line2D([], [], color="0.45", linestyle=":",
                                            linewidth=1.8, label="best single path"))
        _case_ticks(ax, cases)
        ax.set_ylabel("Goodput [Mbit/s]")
        ax.set_ylim(0, max([1.0, *bar_tops(gbars), *markers["rate_sum_mbps"].dropna()]) * 1.12)
        ax.set_title("Goodput per case")
        if not cases:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="0.4")
        if has_bound:
            _plot_completion(axes[1], runs, markers, colours, cases, handles)
        whisker = repetitions_handle(gbars)
        if whisker is not None:
            handles.append(whisker)
        if (runs.get("fidelity_ok", pd.Series(dtype=object))).eq(False).any():
            handles.append(Patch(facecolor="white", edgecolor="0.15", hatch="///",
                                             label="fidelity check failed"))
        # Above the panels, outside the data, so a legend never hides a bar; the figure's
        # title is the legend's title because a suptitle and an outside legend would overlap.
        fig.legend(handles=handles, loc="outside upper center",
                   ncols=min(len(handles), 4 if has_bound else 3),
                   frameon=False, title=title, title_fontsize=13)
        banner = fidelity_banner(runs)
        if banner:
            _banner(fig, banner)
        return save(fig, base)


def _banner(fig: Figure, text: str) -> None:
    # supxlabel takes part in the constrained layout, so the banner never hides data.
    width = int(fig.get_figwidth() * 10)
    fig.supxlabel(textwrap.fill(text, width=width), fontsize=10, color="white",
                  fontweight="bold", bbox={"boxstyle": "round", "facecolor": "#c0392b",
                                           "edgecolor": "none"})


def _plot_completion(ax: Axes, runs: pd.DataFrame, markers: pd.DataFrame,
                     colours: dict[str, Any], cases: Sequence[str], handles: list[Any]) -> None:
    """Completion time bars with the selftest bound per case; OK/FAIL over every bar, as
    simult_flows.sh prints them."""
    bars = bar_table(runs, "duration_s")
    _draw_bars(ax, bars, colours)
    _bar_values(ax, bars)
    if _draw_case_marks(ax, markers, "bound_s", colors=BOUND_COLOUR, linestyles="-",
                        linewidth=2.0):
        handles.append(Line2D([], [], color=BOUND_COLOUR, linewidth=2.0,
                                        label="selftest bound (simult_flows.sh)"))
    if _draw_case_marks(ax, markers, "link_limited_s", colors="0.1", linestyles="--",
                        linewidth=1.4):
        handles.append(Line2D([], [], color="0.1", linestyle="--", linewidth=1.4,
                                        label="link-limited time"))
    top = max([1.0, *bar_tops(bars), *markers["bound_s"].dropna()])
    # The verdicts sit in one row above every bar, clear of the bound line: read left to
    # right like the selftest's [ OK ] / [FAIL] column.
    for row in bars.itertuples():
        if math.isnan(row.value):
            continue
        if row.judged == 0:
            continue
        ok = row.within == row.judged
        text = ("OK" if ok else "FAIL") if row.judged == 1 else f"{row.within}/{row.judged}"
        ax.text(row.x, top * 1.06, text, ha="center", va="bottom", fontsize=8,
                fontweight="bold", color=PASS_COLOUR if ok else FAIL_COLOUR, zorder=5)
    _case_ticks(ax, cases)
    ax.set_ylabel("Completion time [s]")
    ax.set_ylim(0, top * 1.15)
    ax.set_title("Completion time vs selftest bound")


def plot_subflow_state(series: pd.DataFrame, meta: dict[str, Any], summary: dict[str, Any],
                       base: Path, host: str | None = None) -> list[Path]:
    """cwnd (top) and smoothed RTT (bottom) over time per subflow, from the sender's socket
    samples (`metrics.subflow_series`); the panels share the time axis."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig = Figure(figsize=(7.0, 5.2), layout="constrained")
        FigureCanvasAgg(fig)
        top = fig.add_subplot(2, 1, 1)
        bottom = fig.add_subplot(2, 1, 2, sharex=top)
        for ax in (top, bottom):
            ax.grid(True, color="0.88", linewidth=0.8)
            ax.set_axisbelow(True)
        names = sorted(set(series["subflow"])) if not series.empty else []
        palette = sns.color_palette("colorblind", max(len(names), 1))
        for colour, name in zip(palette, names, strict=False):
            rows = series[series["subflow"] == name]
            cwnd, srtt = rows.dropna(subset=["cwnd"]), rows.dropna(subset=["srtt_ms"])
            top.step(cwnd["time_s"], cwnd["cwnd"], where="post", color=colour, linewidth=1.4,
                     label=name)
            bottom.step(srtt["time_s"], srtt["srtt_ms"], where="post", color=colour,
                        linewidth=1.4)
        top.set_ylabel("cwnd [segments]")
        bottom.set_ylabel("srtt [ms]")
        bottom.set_xlabel("Time [s]")
        top.tick_params(labelbottom=False)
        for ax in (top, bottom):
            ax.set_ylim(bottom=0)
            ax.set_xlim(left=0)
        if names:
            # Just above the top panel, where no line can run.
            top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(names), 2),
                       frameon=False, fontsize=8)
        else:
            top.text(0.5, 0.5, "no subflow samples", transform=top.transAxes, ha="center",
                     va="center", color="0.4")
        where = f" (sender {host})" if host else ""
        fig.suptitle(_run_title(meta, summary, "Subflow state", where=where))
        _mark_fidelity(fig, summary)
        return save(fig, base)


def plot_goodput_small_multiples(curves: pd.DataFrame, runs: pd.DataFrame, base: Path,
                                 title: str = "Goodput over time", window_s: float = 0.5,
                                 references: bool = True) -> list[Path]:
    """Goodput over time, one panel per case (shared axes), one line per run coloured by
    stack, each already averaged over `window_s` (`metrics.smoothed_goodput`).

    `curves`: long form case, stack, run, time_s, mbps. `runs`: the runs table, for the
    sum of the configured rates per case and the fidelity banner.
    """
    cases = case_order(runs)
    stacks = ordered_stacks([str(s) for s in runs["stack"]]) if not runs.empty else []
    colours = _stack_colours(stacks)
    markers = case_markers(runs).set_index("case") if cases else pd.DataFrame()
    if not references and not markers.empty:
        markers[["rate_sum_mbps", "best_path_mbps"]] = math.nan
    ncols = min(max(len(cases), 1), 4)
    nrows = max(math.ceil(len(cases) / ncols), 1)
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        # A single case still gets a readable width: the legend's title spans the figure.
        width = max(2.9 * ncols + 0.8, 6.5)
        fig = Figure(figsize=(width, 2.4 * nrows + 1.2 + (0.8 if ncols == 1 else 0)),
                     layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for i, (case, ax) in enumerate(case_panels(grid, cases)):
            part = curves[curves["case"] == case] if not curves.empty else curves
            for _, line in part.groupby("run", sort=False) if not part.empty else []:
                stack = str(line["stack"].iloc[0])
                ax.step(line["time_s"], line["mbps"], where="post", color=colours[stack],
                        linewidth=1.4)
            total = markers.loc[case, "rate_sum_mbps"] if case in markers.index else math.nan
            if not math.isnan(total):
                ax.axhline(total, color="0.1", linestyle="--", linewidth=1.1, zorder=1)
            best = markers.loc[case, "best_path_mbps"] if case in markers.index else math.nan
            if not math.isnan(best):
                ax.axhline(best, color="0.45", linestyle=":", linewidth=1.4, zorder=1)
            ax.set_title(fit_title([case], width / ncols, fontsize=10), fontsize=10)
            ax.set_xlim(left=0)
            if i % ncols == 0:
                ax.set_ylabel("Goodput [Mbit/s]")
            if i // ncols == nrows - 1 or i + ncols >= len(cases):
                ax.set_xlabel("Time [s]")
                ax.tick_params(labelbottom=True)
        # The shared y axis is set once all panels are drawn, so no panel's peak is cut off.
        peaks = [1.0, *(curves["mbps"].dropna() if not curves.empty else []),
                 *(markers["rate_sum_mbps"].dropna() if not markers.empty else [])]
        grid.flat[0].set_ylim(0, max(peaks) * 1.08)
        handles: list[Any] = [Line2D([], [], color=colours[s], linewidth=1.4,
                                     label=stack_name(s)) for s in stacks]
        if references:
            handles += [Line2D([], [], color="0.1", linestyle="--", label="sum of path rates"),
                        Line2D([], [], color="0.45", linestyle=":", label="best single path")]
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5),
                   frameon=False, title=fit_title([f"{title} (averaged over {window_s:g} s)"],
                                                  width), title_fontsize=12)
        banner = fidelity_banner(runs)
        if banner:
            _banner(fig, banner.replace(" (hatched bars)", ""))
        return save(fig, base)


# ---------------------------------------------------------------------------------------------
# vm-migration: goodput over time around the move, as the migration papers draw it

MOVE_COLOUR, RESUME_COLOUR, STOP_SHADE = "#c0392b", "#1a7f37", "#f2c9c4"
MIGRATION_COLUMNS = ("move_s", "resume_s", "stop_time_s", "lost_s", "gave_up_s", "survived",
                     "gap_s", "gap_start_s", "expected_gap_s")


def _panel_grid(n: int, ncols_max: int, panel_w: float, panel_h: float, min_w: float,
                extra_h: float) -> tuple[Figure, Any, int, float]:
    ncols = min(max(n, 1), ncols_max)
    nrows = max(math.ceil(n / ncols), 1)
    width = max(panel_w * ncols + 0.8, min_w)
    fig = Figure(figsize=(width, panel_h * nrows + extra_h), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    return fig, grid, ncols, width


def case_panels(grid: Any, cases: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """(case, panel) of a grid of one panel per case, each with a light grid behind the
    data; the panels left over after the last case are hidden."""
    for i, ax in enumerate(grid.flat):
        if i < len(cases):
            ax.grid(True, color="0.88", linewidth=0.8)
            ax.set_axisbelow(True)
            yield cases[i], ax
        else:
            ax.set_visible(False)


def whole_and_zoom_panels(grid: Any, cases: Sequence[str]) -> Iterator[tuple[str, Any, Any]]:
    """(case, whole-run panel, zoom panel below it) of a grid with two rows per row of cases;
    the panels left over after the last case are hidden."""
    nrows, ncols = grid.shape[0] // 2, grid.shape[1]
    for i in range(nrows * ncols):
        whole, zoom = grid[2 * (i // ncols), i % ncols], grid[2 * (i // ncols) + 1, i % ncols]
        if i < len(cases):
            yield cases[i], whole, zoom
        else:
            whole.set_visible(False)
            zoom.set_visible(False)


def _median(rows: pd.DataFrame, column: str) -> float:
    values = pd.to_numeric(rows[column], errors="coerce").dropna() if column in rows else []
    return float(pd.Series(values).median()) if len(values) else math.nan


def _mark_move(ax: Axes, move: float, resume: float) -> None:
    """The link-down (solid), the stop time (shaded) and the resume (dashed)."""
    if math.isnan(move):
        return
    if not math.isnan(resume) and resume > move:
        ax.axvspan(move, resume, color=STOP_SHADE, alpha=0.7, zorder=0, linewidth=0)
        ax.axvline(resume, color=RESUME_COLOUR, linestyle="--", linewidth=1.3, zorder=1)
    ax.axvline(move, color=MOVE_COLOUR, linewidth=1.3, zorder=1)


def plot_migration(curves: pd.DataFrame, runs: pd.DataFrame, base: Path,
                   title: str = "vm-migration") -> list[Path]:
    """Receiver goodput over time around the move, one column per case (stop time), one line
    per run coloured by stack, in raw 100 ms bins so the gap stays visible: the whole run on
    top, a zoom on the move below (a gap of a few bins is a sliver on a 20 s axis).

    `curves`: long form case, stack, run, time_s, mbps (`metrics.goodput_series`). `runs`: the
    runs table with the migration columns (MIGRATION_COLUMNS, `analysis.report.run_row`).
    The link-down is a solid line, the stop time shaded, the resume dashed; each surviving
    run's gap is drawn as an arrow with its measured and expected length; a run that did not
    survive ends in a cross marked "connection lost", flat at zero after its last data.
    """
    cases = case_order(runs)
    stacks = ordered_stacks([str(s) for s in runs["stack"]]) if not runs.empty else []
    colours = _stack_colours(stacks)
    ncols = min(max(len(cases), 1), 3)
    nrows = max(math.ceil(len(cases) / ncols), 1)
    width = max(5.2 * ncols + 0.8, 8.0)
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig = Figure(figsize=(width, 5.4 * nrows + 1.4), layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.subplots(2 * nrows, ncols, sharey=True, squeeze=False,
                            gridspec_kw={"height_ratios": [1.15, 1.0] * nrows})
        end = float(curves["time_s"].max()) + metrics.DEFAULT_BIN_S if not curves.empty \
            else 1.0
        peak = max([1.0, *(curves["mbps"].dropna() if not curves.empty else [])])
        top = peak * 1.45  # room above the data for the annotations
        for i, (case, full, zoom) in enumerate(whole_and_zoom_panels(grid, cases)):
            rows = runs[runs["case"].astype(str) == case]
            move, resume = _median(rows, "move_s"), _median(rows, "resume_s")
            part = curves[curves["case"] == case] if not curves.empty else curves
            window = ((move - 1.0, (resume if not math.isnan(resume) else move) + 2.5)
                      if not math.isnan(move) else (0.0, end))
            for ax in (full, zoom):
                ax.grid(True, color="0.88", linewidth=0.8)
                ax.set_axisbelow(True)
                _mark_move(ax, move, resume)
            notes = 0
            for row in rows.itertuples():
                line = part[part["run"] == row.path] if not part.empty else part
                colour = colours[str(row.stack)]
                if not line.empty:
                    drawn = _with_last_step(line, None, _bin_width(line))
                    for ax in (full, zoom):
                        ax.step(drawn["time_s"], drawn["mbps"], where="post", color=colour,
                                linewidth=1.4, zorder=3)
                survived = metrics.flag(row.survived)
                if survived is False:
                    _mark_lost(full, row, line, colour, end, top, label=True)
                    _mark_lost(zoom, row, line, colour, end, top, label=False)
                elif survived and not _isnan(row.gap_s) and not _isnan(row.gap_start_s):
                    _mark_gap(zoom, row, colour, top * (0.92 - 0.1 * notes))
                    notes += 1
            full.set_title(fit_title([case], width / ncols, fontsize=10), fontsize=10)
            full.set_xlim(0, end)
            zoom.set_xlim(max(window[0], 0.0), min(window[1], end))
            zoom.set_title("around the move", fontsize=9, color="0.3")
            if not math.isnan(move):
                full.axvspan(*window, color="0.5", alpha=0.08, zorder=0, linewidth=0)
            for ax in (full, zoom):
                ax.set_xlabel("Time [s]")
                if i % ncols == 0:
                    ax.set_ylabel("Goodput [Mbit/s]")
        grid[0, 0].set_ylim(0, top)
        handles: list[Any] = [Line2D([], [], color=colours[s], linewidth=1.4,
                                     label=f"{stack_name(s)} (receiver, 100 ms bins)")
                              for s in stacks]
        stop = _median(runs, "stop_time_s") if not runs.empty else math.nan
        same_stop = "stop_time_s" in runs and runs["stop_time_s"].nunique() <= 1
        stop_text = f" ({stop:g} s)" if not math.isnan(stop) and same_stop else ""
        handles += [Line2D([], [], color=MOVE_COLOUR, linewidth=1.3,
                           label="link to domain A down"),
                    Patch(color=STOP_SHADE, alpha=0.7, label=f"VM stopped{stop_text}"),
                    Line2D([], [], color=RESUME_COLOUR, linestyle="--", linewidth=1.3,
                           label="VM resumes in domain B")]
        if any(metrics.flag(v) is False for v in runs.get("survived", [])):
            handles.append(Line2D([], [], color="0.2", marker="X", linestyle="none",
                                  markersize=8, label="connection lost"))
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 3),
                   frameon=False, title=fit_title([title], width), title_fontsize=12)
        banner = fidelity_banner(runs)
        if banner:
            _banner(fig, banner.replace(" (hatched bars)", ""))
        return save(fig, base)


def _isnan(value: Any) -> bool:
    number = pd.to_numeric(value, errors="coerce")
    return bool(pd.isna(number))


def _mark_gap(ax: Axes, row: Any, colour: Any, y: float) -> None:
    start, gap = float(row.gap_start_s), float(row.gap_s)
    ax.annotate("", xy=(start, y), xytext=(start + gap, y), zorder=5,
                arrowprops={"arrowstyle": "<->", "color": colour, "linewidth": 1.3,
                            "shrinkA": 0, "shrinkB": 0})
    for x in (start, start + gap):
        ax.plot([x, x], [0, y], color=colour, linewidth=0.7, linestyle=":", zorder=2)
    expected = "" if _isnan(row.expected_gap_s) else \
        f" (expected ≈ {float(row.expected_gap_s):.2f} s)"
    ax.annotate(f"{stack_name(str(row.stack))}: gap {gap:.2f} s{expected}",
                (start + gap, y), xytext=(6, 0), textcoords="offset points", ha="left",
                va="center", fontsize=8.5, color=colour, fontweight="bold", zorder=5)


def _mark_lost(ax: Axes, row: Any, line: pd.DataFrame, colour: Any, xmax: float,
               top: float, label: bool = True) -> None:
    lost = float(row.lost_s) if not _isnan(row.lost_s) else (
        float(line["time_s"].max()) + _bin_width(line) if not line.empty else math.nan)
    if math.isnan(lost):
        return
    # Nothing arrives any more: flat at zero to the end of the axis, dotted (no data drawn).
    ax.plot([lost, xmax], [0, 0], color=colour, linewidth=1.4, linestyle=":", zorder=3)
    ax.plot([lost], [0], marker="X", color=colour, markersize=9, markeredgecolor="0.15",
            zorder=6, clip_on=False)
    if not label:
        return
    after = "" if _isnan(row.gave_up_s) else f"\n(gave up at {float(row.gave_up_s):.1f} s)"
    ax.annotate(f"{stack_name(str(row.stack))}: connection lost{after}", (lost, 0),
                xytext=(max(lost + 0.08 * xmax, 0), top * 0.3), ha="left", va="center",
                fontsize=8.5, color=colour, fontweight="bold", zorder=5,
                arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.0})


# ---------------------------------------------------------------------------------------------
# multi-wifi: goodput along the walk against each AP's configured rate

WIFI_BAND_COLOUR = "#dfe8d8"


def wifi_axis(positions: pd.DataFrame) -> str:
    """"position_m" when every step has a position and they only grow (a walk past the APs);
    otherwise "time_s": positions visited twice would fold a line back on itself."""
    pos = pd.to_numeric(positions.get("position_m", pd.Series(dtype=float)), errors="coerce")
    if not positions.empty and pos.notna().all():
        per_run = positions.assign(_pos=pos).groupby("run", sort=False)["_pos"]
        if all(g.is_monotonic_increasing and g.is_unique for _, g in per_run):
            return "position_m"
    return "time_s"


def plot_wifi(positions: pd.DataFrame, runs: pd.DataFrame, base: Path,
              title: str = "multi-wifi") -> list[Path]:
    """Goodput along the walk per stack, each AP's configured rate as a thin line and the best
    AP as the upper envelope, with the band within 15% of it (Croitoru et al., NSDI 2015).

    `positions`: long form case, stack, run plus the `metrics.WIFI_COLUMNS`. Against position
    when the walk only moves forward (`wifi_axis`), else against time, each step held flat.
    """
    cases = case_order(runs)
    stacks = ordered_stacks([str(s) for s in runs["stack"]]) if not runs.empty else []
    colours = _stack_colours(stacks)
    axis = wifi_axis(positions)
    fraction = metrics.WIFI_BEST_AP_FRACTION
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, grid, ncols, width = _panel_grid(len(cases), 2, 5.2, 3.6, 7.5, 1.4)
        n_aps = 0
        for i, (case, ax) in enumerate(case_panels(grid, cases)):
            part = positions[positions["case"] == case] if not positions.empty else positions
            if not part.empty:
                # The configured rates are the case's, the same for every stack: the first run.
                first = part[part["run"] == part["run"].iloc[0]].sort_values("step")
                xs, hold = _wifi_x(first, axis)
                rates = pd.DataFrame(first["ap_rates_mbps"].tolist(), index=first.index)
                n_aps = max(n_aps, rates.shape[1])
                for j in rates.columns:
                    ax.plot(xs, _held(rates[j], hold), color=_AP_GREYS[j % len(_AP_GREYS)],
                            linestyle=_AP_DASHES[j % len(_AP_DASHES)], linewidth=0.9, zorder=1,
                            drawstyle="steps-post" if hold else "default")
                best = _held(first["best_ap_mbps"], hold)
                style = "steps-post" if hold else "default"
                ax.fill_between(xs, best * fraction, best, color=WIFI_BAND_COLOUR, zorder=0,
                                step="post" if hold else None, linewidth=0)
                ax.plot(xs, best, color="0.35", linewidth=2.6, alpha=0.55, zorder=2,
                        drawstyle=style)
                for _, line in part.groupby("run", sort=False):
                    line = line.sort_values("step")
                    lx, lhold = _wifi_x(line, axis)
                    colour = colours[str(line["stack"].iloc[0])]
                    ax.plot(lx, _held(line["goodput_mbps"], lhold), color=colour,
                            linewidth=1.6, zorder=4, drawstyle="steps-post" if lhold else
                            "default", marker=None if lhold else "o", markersize=4)
            ax.set_title(fit_title([case], width / ncols, fontsize=10), fontsize=10)
            if i % ncols == 0:
                ax.set_ylabel("Goodput [Mbit/s]")
            ax.set_xlabel("Position [m]" if axis == "position_m" else "Time [s]")
            ax.tick_params(labelbottom=True)
        peaks = [1.0]
        if not positions.empty:
            peaks += [*positions["goodput_mbps"].dropna(), *positions["best_ap_mbps"].dropna()]
        grid.flat[0].set_ylim(0, max(peaks) * 1.1)
        handles: list[Any] = [Line2D([], [], color=colours[s], linewidth=1.6,
                                     label=stack_name(s)) for s in stacks]
        handles += [Line2D([], [], color="0.35", linewidth=2.6, alpha=0.55,
                           label="best AP (configured)"),
                    Patch(color=WIFI_BAND_COLOUR, label=f"within {1 - fraction:.0%} of best AP")]
        handles += [Line2D([], [], color=_AP_GREYS[j % len(_AP_GREYS)], linewidth=0.9,
                           linestyle=_AP_DASHES[j % len(_AP_DASHES)],
                           label=f"AP {j + 1} rate") for j in range(n_aps)]
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4),
                   frameon=False, title=fit_title([title], width), title_fontsize=12)
        banner = fidelity_banner(runs)
        if banner:
            _banner(fig, banner.replace(" (hatched bars)", ""))
        return save(fig, base)


# Grey levels alone do not tell three thin lines apart: each AP also has its own dashes.
_AP_GREYS = ("0.45", "0.6", "0.35", "0.7")
_AP_DASHES: tuple[Any, ...] = ("-", "--", "-.", ":")


def _wifi_x(line: pd.DataFrame, axis: str) -> tuple[pd.Series, bool]:
    """x values of a run's steps and whether they are held flat (time: each step from its
    t_start_s, plus the last step's end so its level is drawn too)."""
    if axis == "position_m":
        return line["position_m"].reset_index(drop=True), False
    starts = line["t_start_s"].fillna(line["step"].astype(float))
    end = line["t_end_s"].iloc[-1]
    last = float(end) if not pd.isna(end) else float(starts.iloc[-1]) + 1.0
    return pd.concat([starts, pd.Series([last])], ignore_index=True), True


def _held(values: pd.Series, hold: bool) -> pd.Series:
    values = pd.to_numeric(values, errors="coerce").reset_index(drop=True)
    return pd.concat([values, values.iloc[-1:]], ignore_index=True) if hold else values


def plot_receive_buffer(points: pd.DataFrame, runs: pd.DataFrame, base: Path,
                        title: str = "Goodput by receive buffer") -> list[Path]:
    """`receive-buffer`: steady-state goodput against the receive buffer, one line per stack
    as it ran (kernel MPTCP, ours, ours with opportunistic retransmission and penalisation)
    and plain TCP on the best path as the dashed reference; below, each MPTCP line as a
    fraction of that TCP at the same buffer, with the anchor's 1.0. Hollow markers: a point
    whose run failed the fidelity check. `points`: analysis.receive_buffer.curves()."""
    from analysis import receive_buffer as rcvbuf

    positions = sorted({int(p) for p in points["position"]}) if not points.empty else []
    names = {int(r.position): rcvbuf.buffer_name(r.buffer_kib) for r in points.itertuples()}
    variants = [v for v in rcvbuf.VARIANT_ORDER if v in set(points["variant"])]
    variants += sorted(set(points["variant"]) - set(variants))
    colours = {"tcp": "0.1", "kernel": _STACK_COLOURS["kernel"],
               "userspace": _STACK_COLOURS["userspace"],
               "userspace+opportunistic": _PALETTE[4]}
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, axes = _new_figure(width=7.5, height=6.8, nrows=2)
        top, bottom = axes
        handles: list[Any] = []
        for name in variants:
            line = points[points["variant"] == name].sort_values("position")
            colour = colours.get(name, _OTHER_COLOURS[len(handles) % len(_OTHER_COLOURS)])
            style = {"color": colour, "linestyle": "--" if name == "tcp" else "-",
                     "linewidth": 1.6, "marker": "o", "markersize": 6}
            top.plot(line["position"], line["goodput_mbps"], **style)
            bad = line[~line["fidelity_ok"].astype(bool)]
            top.plot(bad["position"], bad["goodput_mbps"], linestyle="none", marker="o",
                     markersize=9, markerfacecolor="white", markeredgecolor=colour)
            if name != "tcp":
                bottom.plot(line["position"], line["fraction_of_tcp"], **style)
            handles.append(Line2D([], [], label=rcvbuf.VARIANT_NAMES.get(name, name), **style))
        bottom.axhline(1.0, color="0.1", linestyle="--", linewidth=1.2)
        for ax in axes:
            ax.set_xticks(positions, [names[p] for p in positions])
        top.set_ylabel("Goodput [Mbit/s]")
        top.set_ylim(0, max([1.0, *pd.to_numeric(points["goodput_mbps"]).dropna()]) * 1.12)
        top.set_title("Steady-state goodput (after the first second)")
        bottom.set_ylabel("Fraction of TCP")
        bottom.set_xlabel("Receive buffer (both hosts)")
        bottom.set_ylim(0, max([1.2, *pd.to_numeric(points["fraction_of_tcp"]).dropna()])
                        * 1.08)
        bottom.set_title("MPTCP goodput / plain TCP on the best path at the same buffer")
        if points.empty:
            top.text(0.5, 0.5, "no runs", transform=top.transAxes, ha="center", color="0.4")
        if not points.empty and not points["fidelity_ok"].astype(bool).all():
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=9,
                                  markerfacecolor="white", markeredgecolor="0.3",
                                  label="fidelity check failed"))
        fig.legend(handles=handles, loc="outside upper center", ncols=2, frameon=False,
                   title=fit_title([title], 7.5), title_fontsize=12)
        banner = fidelity_banner(runs)
        if banner:
            _banner(fig, banner.replace(" (hatched bars)", ""))
        return save(fig, base)


# -- fairness ---------------------------------------------------------------------------------

FAIRNESS = "fairness"
ANCHOR_BAND_COLOUR = "#dfe8d8"
# The controllers in the order the figure shows them: coupled first, then uncoupled.
CONTROLLER_ORDER: tuple[str, ...] = ("lia", "olia", "balia", "reno", "cubic")


def fairness_table(runs: pd.DataFrame, value: str) -> pd.DataFrame:
    """`runs` of one fairness mode with `case` replaced by the congestion controller of the
    measured flow (plain TCP as "TCP (<cc>)"), in CONTROLLER_ORDER, for `bar_table`."""
    if runs.empty:
        return runs.assign(case=[])
    frame = runs.copy()
    names = []
    for row in frame.itertuples():
        cc = str(row.congestion)
        names.append(f"TCP ({cc})" if getattr(row, "expected", "") == "single-path" else cc)
    frame["case"] = names
    rank = {name: i for i, name in enumerate(CONTROLLER_ORDER)}
    frame["_rank"] = [rank.get(n, len(rank)) for n in names]
    frame = frame.sort_values(["_rank", "case"], kind="stable").drop(columns="_rank")
    frame[value] = pd.to_numeric(frame.get(value), errors="coerce")
    return frame


def plot_fairness(runs: pd.DataFrame, base: Path, title: str = "fairness") -> list[Path]:
    """Per mode, one panel with a bar per (controller, stack), kernel MPTCP and ours side by
    side: `shared`, the MPTCP/TCP goodput ratio against the coupled band 1 +- 0.15 and the
    uncoupled expectation 2 (at least 1.6); `cross`, the share of MPTCP's bytes on the free
    path 2 against an uncoupled flow's 2/3.

    `runs`: the runs table with mode, congestion, expected, ratio, path2_share, fidelity_ok
    (see `analysis.report.run_row`)."""
    modes = [m for m in ("shared", "cross") if "mode" in runs and runs["mode"].eq(m).any()]
    stacks = ordered_stacks([str(s) for s in runs["stack"]]) if not runs.empty else []
    colours = _stack_colours(stacks)
    panels = modes or ["shared"]
    slots = max([1] + [len(fairness_table(runs[runs["mode"] == m], "ratio")["case"].unique())
                       for m in modes])
    width = min(18.0, max(8.5, 1.6 + 1.1 * slots * len(panels)))
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, axes = _new_figure(width=width, height=4.6, ncols=len(panels))
        handles: list[Any] = [Patch(color=colours[s], label=stack_name(s)) for s in stacks]
        whisker = None
        for ax, mode in zip(axes, panels, strict=True):
            part = runs[runs["mode"] == mode] if modes else runs[:0]
            value = "ratio" if mode == "shared" else "path2_share"
            table = fairness_table(part, value)
            bars = bar_table(table, value) if not table.empty else bar_table(
                pd.DataFrame(columns=["case", "stack", value]), value)
            cases = case_order(table) if not table.empty else []
            _draw_bars(ax, bars, colours)
            whisker = whisker or repetitions_handle(bars)
            if mode == "shared":
                ax.axhspan(0.85, 1.15, color=ANCHOR_BAND_COLOUR, zorder=0)
                ax.axhline(2.0, color="0.3", linestyle="--", linewidth=1.4, zorder=3)
                ax.axhline(1.6, color="0.3", linestyle=":", linewidth=1.2, zorder=3)
                ax.set_ylabel("MPTCP / TCP goodput")
                ax.set_title("Shared bottleneck")
                top = max([2.3, *bar_tops(bars)]) * 1.1
            else:
                ax.axhline(2 / 3, color="0.3", linestyle="--", linewidth=1.4, zorder=3)
                ax.set_ylabel("Share of MPTCP bytes on path 2")
                ax.set_title("Cross traffic on path 1")
                top = max([1.0, *bar_tops(bars)]) * 1.1
            for row in bars.itertuples():
                if not math.isnan(row.value):  # above the whisker and the runs' dots
                    ax.annotate(f"{row.value:.2f}", (row.x, _bar_top(row)), xytext=(0, 3),
                                textcoords="offset points", ha="center", va="bottom",
                                fontsize=8, zorder=5)
            _case_ticks(ax, cases)
            ax.set_ylim(0, top)
            if not cases:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="0.4")
        if "shared" in panels:
            handles += [Patch(color=ANCHOR_BAND_COLOUR, label="coupled: 1 ± 0.15 (RFC 6356)"),
                        Line2D([], [], color="0.3", linestyle="--", linewidth=1.4,
                               label="uncoupled: about 2"),
                        Line2D([], [], color="0.3", linestyle=":", linewidth=1.2,
                               label="uncoupled: at least 1.6")]
        if "cross" in panels:
            handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.4,
                                  label="uncoupled share on path 2 (2/3)"))
        if whisker is not None:
            handles.append(whisker)
        if runs.get("fidelity_ok", pd.Series(dtype=object)).eq(False).any():
            handles.append(Patch(facecolor="white", edgecolor="0.15", hatch="///",
                                 label="fidelity check failed"))
        fig.legend(handles=handles, loc="outside upper center",
                   # a fourth column is too wide for the figure once the whisker's entry is in
                   ncols=min(len(handles), 3 if len(panels) == 1 or whisker else 4),
                   frameon=False, title=fit_title([title], width), title_fontsize=12)
        banner = fidelity_banner(runs)
        if banner:
            _banner(fig, banner)
        return save(fig, base)
