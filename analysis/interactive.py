"""A constant-rate interactive flow beside the measured bulk one (`handover`): each message's
application delay over time around the failure, per run and across runs, and the columns of
the report's table. Reads summary.json (`flows`, `interactive`), the flow's workload reports
(stats/workload-<flow>-{client,server}.json) and stats/timeline.json only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis import figures, metrics

HANDOVER = "handover"
FIGURE = "interactive"
# summary.json's `interactive` fields the runs table keeps, as `interactive_<field>`.
FIELDS = ("delay_ms_p50", "delay_ms_p95", "delay_ms_p99", "delay_ms_max", "sent", "received",
          "lost", "survived", "worst_around_failure_ms", "delay_ms_p50_before_failure",
          "delay_ms_p50_after_failure")
COLUMNS = ["time_s", "delay_ms"]
FAIL_COLOUR, DETECT_COLOUR = "#c0392b", "0.35"
# The comparison's zoom: from this long before the failure to this long after its detection.
ZOOM_S = (-0.5, 1.5)


def message_flow(summary: dict[str, Any]) -> str | None:
    """The name of the run's flow of messages (summary `flows`, `messages` set), or None."""
    for name, flow in (summary.get("flows") or {}).items():
        if isinstance(flow, dict) and flow.get("messages") is not None:
            return str(name)
    return None


def receiver_report(run_dir: Path, name: str) -> dict[str, Any]:
    """The receiving side's workload report of flow `name` ({} when there is none)."""
    for side in ("client", "server"):
        report = metrics.load_json(Path(run_dir) / "stats" / f"workload-{name}-{side}.json")
        if report.get("role") == "receiver":
            return report
    return {}


def failure_walls(run_dir: Path) -> tuple[float | None, float | None]:
    """Wall times of the first link going down and of the first host action after it (the
    connection manager noticing), from the timeline as played."""
    fail = detect = None
    for event in metrics.load_timeline(run_dir):
        wall = event.get("wall_time")
        if not isinstance(wall, int | float):
            continue
        if fail is None and event.get("action") == "down":
            fail = float(wall)
        elif fail is not None and detect is None and "host_action" in event:
            detect = float(wall)
    return fail, detect


def message_frame(report: dict[str, Any], origin_wall: float | None) -> pd.DataFrame:
    """One row per message received: `time_s`, when it was due at the sender (seconds after
    `origin_wall`, else after the receiver's start), and its `delay_ms` to arrival."""
    start = report.get("t_start")
    series = report.get("message_series") or []
    if start is None or not series:
        return pd.DataFrame(columns=COLUMNS)
    origin = float(start) if origin_wall is None else origin_wall
    rows = [(float(start) + arrival - delay / 1000 - origin, float(delay))
            for arrival, delay in series]
    return pd.DataFrame(rows, columns=COLUMNS)


def run_frame(run_dir: Path, summary: dict[str, Any]) -> tuple[pd.DataFrame, float | None]:
    """The messages of a run on the failure's clock, and when the failure was noticed on it
    (None without a failure or a connection manager)."""
    name = message_flow(summary)
    if name is None:
        return pd.DataFrame(columns=COLUMNS), None
    fail, detect = failure_walls(run_dir)
    frame = message_frame(receiver_report(run_dir, name), fail)
    return frame, (detect - fail if fail is not None and detect is not None else None)


def row_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """The runs-table fields of a run's interactive flow (None where it had none)."""
    numbers = summary.get("interactive") or {}
    return {f"interactive_{key}": numbers.get(key) for key in FIELDS}


def _broke_text(summary: dict[str, Any]) -> str | None:
    numbers = summary.get("interactive") or {}
    if numbers.get("survived") is not False:
        return None
    lost = numbers.get("lost")
    sent = numbers.get("sent")
    return (f"connection broke: {lost} of {sent} messages never arrived"
            if lost is not None and sent is not None else "connection broke")


def _mark_failure(ax: Any, detected_s: float | None) -> None:
    ax.axvline(0.0, color=FAIL_COLOUR, linewidth=1.3, zorder=1)
    if detected_s is not None:
        ax.axvline(detected_s, color=DETECT_COLOUR, linestyle="--", linewidth=1.1, zorder=1)


def _failure_handles(detected: bool) -> list[Any]:
    handles: list[Any] = [Line2D([], [], color=FAIL_COLOUR, linewidth=1.3, label="WiFi lost")]
    if detected:
        handles.append(Line2D([], [], color=DETECT_COLOUR, linestyle="--", linewidth=1.1,
                              label="connection manager acts"))
    return handles


def plot_run(frame: pd.DataFrame, detected_s: float | None, meta: dict[str, Any],
             summary: dict[str, Any], base: Path) -> list[Path]:
    """Each message's delay (log scale) against when it was due, the failure at 0."""
    numbers = summary.get("interactive") or {}
    failed = any(e.get("action") == "down" for e in meta.get("timeline") or [])
    with sns.axes_style("whitegrid"), mpl.rc_context(figures._RC):
        fig, (ax,) = figures._new_figure()
        if frame.empty:
            ax.text(0.5, 0.5, "no message arrived", transform=ax.transAxes, ha="center",
                    va="center", color="0.4")
        else:
            ax.plot(frame["time_s"], frame["delay_ms"], color="#0072b2", linewidth=0.9,
                    marker=".", markersize=3, label="message delay (due → arrival)")
            ax.set_yscale("log")
        if failed:
            _mark_failure(ax, detected_s)
        worst = numbers.get("worst_around_failure_ms")
        when = numbers.get("worst_due_after_failure_s")
        if worst is not None and when is not None:
            ax.annotate(f"worst around the failure {worst:.0f} ms", (when, worst),
                        xytext=(8, 0), textcoords="offset points", fontsize=8.5,
                        va="center", color="0.2")
        broke = _broke_text(summary)
        if broke:
            ax.text(0.98, 0.95, broke, transform=ax.transAxes, ha="right", va="top",
                    fontsize=9, color=FAIL_COLOUR, fontweight="bold")
        ax.set_xlabel("Message due at the sender [s after WiFi was lost]" if failed
                      else "Message due at the sender [s]")
        ax.set_ylabel("Application delay [ms]")
        size, interval = numbers.get("size"), numbers.get("interval_ms")
        what = "Interactive flow" + (f" ({size} B every {interval:g} ms)"
                                     if size is not None and interval is not None else "")
        fig.suptitle(figures._run_title(meta, summary, what))
        handles = ax.get_legend_handles_labels()[0] + (
            _failure_handles(detected_s is not None) if failed else [])
        if handles:
            ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                      ncols=min(len(handles), 3), frameon=False, fontsize=8)
        figures._mark_fidelity(fig, summary)
        return figures.save(fig, base)


def plot_comparison(run_dirs: Sequence[Path], runs: pd.DataFrame, base: Path,
                    title: str = HANDOVER) -> list[Path]:
    """Per case (a mode of the handover, one column), each run's message delays over time,
    coloured by stack: the whole run on top, a zoom on the failure below (ZOOM_S). The
    failure is at 0, the connection manager's action dashed; a run whose interactive
    connection broke ends in a cross."""
    cases = figures.case_order(runs)
    stacks = figures.ordered_stacks([str(s) for s in runs["stack"]]) if not runs.empty else []
    colours = figures._stack_colours(stacks)
    ncols = min(max(len(cases), 1), 3)
    nrows = max(math.ceil(len(cases) / ncols), 1)
    width = max(4.6 * ncols + 0.8, 8.0)
    with sns.axes_style("whitegrid"), mpl.rc_context(figures._RC):
        fig = Figure(figsize=(width, 5.6 * nrows + 1.2), layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.subplots(2 * nrows, ncols, sharey=True, squeeze=False)
        broke_any = detected_any = False
        for i, (case, full, zoom) in enumerate(figures.whole_and_zoom_panels(grid, cases)):
            detections = []
            for run_dir, row in zip(run_dirs, runs.to_dict(orient="records"), strict=True):
                if str(row["case"]) != case:
                    continue
                summary = metrics.load_summary(Path(run_dir))
                frame, detected = run_frame(Path(run_dir), summary)
                if detected is not None:
                    detections.append(detected)
                if frame.empty:
                    continue
                colour = colours[str(row["stack"])]
                broke = _broke_text(summary) is not None
                broke_any = broke_any or broke
                for ax in (full, zoom):
                    ax.plot(frame["time_s"], frame["delay_ms"], color=colour, linewidth=0.9,
                            alpha=0.9)
                    if broke:
                        last = frame.iloc[-1]
                        ax.plot([last["time_s"]], [last["delay_ms"]], marker="X",
                                markersize=8, color=colour, linestyle="none", zorder=5)
            detected_any = detected_any or bool(detections)
            detected_s = sorted(detections)[len(detections) // 2] if detections else None
            for ax in (full, zoom):
                ax.grid(True, color="0.88", linewidth=0.8)
                ax.set_axisbelow(True)
                ax.set_yscale("log")
                _mark_failure(ax, detected_s)
                ax.set_xlabel("Due [s after WiFi was lost]")
                if i % ncols == 0:
                    ax.set_ylabel("Application delay [ms]")
            zoom.set_xlim(ZOOM_S[0], (detected_s or 0.0) + ZOOM_S[1])
            zoom.set_title("around the failure", fontsize=9, color="0.3")
            full.set_title(figures.fit_title([case], width / ncols, fontsize=10), fontsize=10)
        handles: list[Any] = [Line2D([], [], color=colours[s], linewidth=1.2,
                                     label=figures.stack_name(s)) for s in stacks]
        handles += _failure_handles(detected_any)
        if broke_any:
            handles.append(Line2D([], [], color="0.2", marker="X", linestyle="none",
                                  markersize=8, label="connection broke (last message)"))
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4),
                   frameon=False, title=figures.fit_title([title], width), title_fontsize=12)
        banner = figures.fidelity_banner(runs)
        if banner:
            figures._banner(fig, banner.replace(" (hatched bars)", ""))
        return figures.save(fig, base)


def delay_cell(value: Any) -> str:
    """A delay in ms for the report's table ("–" when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.0f}"
