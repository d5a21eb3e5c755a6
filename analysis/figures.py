"""Figures of runs and comparisons across runs, written as PNG (to look at) and PDF (for papers).

Only the Agg backend is used, selected without touching global state at import: figures are
made from `matplotlib.figure.Figure` objects directly, so importing this module never opens
a display or changes another module's pyplot backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import metrics

FORMATS: tuple[str, ...] = ("png", "pdf")
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


def _new_figure(width: float = 7.0, height: float = 3.8, ncols: int = 1) -> tuple[Figure,
                                                                                  list[Axes]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
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
    # a 300 Mbit/s axis) would print on top of each other.
    rates = metrics.link_rates_mbps(meta)
    for i, (key, rate) in enumerate(rates.items()):
        name = key.removesuffix("_mbps").replace("_", " ")
        ax.axhline(rate, color=str(0.25 + 0.15 * (i % 3)), linestyle=":", linewidth=1.3,
                   zorder=1, label=f"{name} (configured) {rate:g} Mbit/s")
    if len(rates) > 1:
        total = sum(rates.values())
        ax.axhline(total, color="0.1", linestyle="--", linewidth=1.1, zorder=1,
                   label=f"sum of configured rates {total:g} Mbit/s")


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


def _run_title(meta: dict[str, Any], summary: dict[str, Any], what: str) -> str:
    scenario = summary.get("scenario", meta.get("scenario", "run"))
    return f"{what}: {scenario}, {metrics.stack_label(meta, summary)}"


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
        ax.set_title(_run_title(meta, summary, "Throughput per subflow"))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title=None, loc="best", frameon=True, framealpha=0.9)
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
            ax.legend(loc="lower right", framealpha=0.9)
        ax.set_xlabel("Time [s]")
        ax.set_ylabel("Goodput [Mbit/s]")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.set_title(_run_title(meta, summary, "Application goodput"))
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


def plot_comparison(runs: pd.DataFrame, series: pd.DataFrame, base: Path,
                    title: str = "Goodput by stack") -> list[Path]:
    """Bars of mean goodput per stack grouped by parameters, and goodput over time per stack.

    `runs`: one row per run with columns stack, group (parameter label), goodput_mbps,
    fidelity_ok. `series`: long form time_s, mbps, stack, run and optionally group (may be
    empty).
    """
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, (bars, lines) = _new_figure(width=11.0, height=4.2, ncols=2)
        if not runs.empty and runs["goodput_mbps"].notna().any():
            sns.barplot(data=runs, x="group", y="goodput_mbps", hue="stack", ax=bars,
                        palette="colorblind", errorbar=("ci", 95) if len(runs) > 1 else None,
                        capsize=0.1, err_kws={"linewidth": 1.0})
            for container in bars.containers:
                bars.bar_label(container, fmt="%.1f", fontsize=8, padding=2)  # type: ignore[arg-type]
        bars.set_xlabel("Scenario parameters")
        bars.set_ylabel("Goodput [Mbit/s]")
        bars.set_title("Mean goodput per run")
        bars.tick_params(axis="x", labelrotation=15)
        if not series.empty:
            # Runs with different parameters are drawn apart (style); only repetitions of
            # the same stack and parameters are pooled into the median and its band.
            style = "group" if "group" in series and series["group"].nunique() > 1 else None
            sns.lineplot(data=series, x="time_s", y="mbps", hue="stack", style=style,
                         ax=lines, palette="colorblind", errorbar=("pi", 50), linewidth=1.4,
                         drawstyle="steps-post")
        lines.set_xlabel("Time [s]")
        lines.set_ylabel("Goodput [Mbit/s]")
        lines.set_title("Goodput over time (median, 50% band)")
        lines.set_ylim(bottom=0)
        lines.set_xlim(left=0)
        for ax in (bars, lines):
            if ax.get_legend() is not None:
                ax.legend(loc="lower right", framealpha=0.9, fontsize=8)
        fig.suptitle(title)
        if "fidelity_ok" in runs and runs["fidelity_ok"].eq(False).any():
            bad = runs.loc[runs["fidelity_ok"].eq(False), "run"] if "run" in runs else []
            _mark_fidelity(fig, {"fidelity_ok": False}, which=", ".join(map(str, bad)))
        return save(fig, base)

