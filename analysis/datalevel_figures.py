"""Figures of the data-level analyses (`analysis.datalevel`): the MPTCP sequence graph with its
reinjections, out-of-order delay at the receiver, and one-way delay per subflow. Same style,
title and fidelity banner as `analysis.figures`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.figures import _RC, _mark_fidelity, _new_figure, _run_title, save

MIB = 1024 * 1024


def _colours(names: list[str]) -> dict[str, Any]:
    palette = sns.color_palette("colorblind", max(len(names), 1))
    return dict(zip(names, palette, strict=False))


def plot_sequence(segments: pd.DataFrame, reinjected: pd.DataFrame, meta: dict[str, Any],
                  summary: dict[str, Any], base: Path, host: str) -> list[Path]:
    """Data sequence number against time, one colour per subflow (the classic MPTCP sequence
    graph: each subflow's share of the stream and when it carried it); copies sent on a
    second subflow are marked with crosses. Retransmissions on the same subflow are hollow."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, (ax,) = _new_figure(height=4.2)
        names = sorted(set(segments["subflow"]))
        colours = _colours(names)
        for name in names:
            rows = segments[segments["subflow"] == name]
            first = rows[~rows["retransmission"]]
            again = rows[rows["retransmission"]]
            ax.scatter(first["time_s"], first["dsn"] / MIB, s=3, color=colours[name],
                       linewidths=0, label=name, rasterized=True)
            if not again.empty:
                ax.scatter(again["time_s"], again["dsn"] / MIB, s=14, facecolors="none",
                           edgecolors=colours[name], linewidths=0.8,
                           label=f"{name} (retransmitted on it)")
        if not reinjected.empty:
            ax.scatter(reinjected["time_s"], reinjected["dsn"] / MIB, s=22, marker="x",
                       color="black", linewidths=1.0,
                       label=f"reinjected on another subflow ({len(reinjected)})")
        ax.set_xlabel("Time [s]")
        ax.set_ylabel("Data sequence number [MiB]")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                  ncols=min(len(labels), 2), frameon=False, fontsize=8, markerscale=2)
        fig.suptitle(_run_title(meta, summary, "DSS mappings per subflow",
                                where=f" (captured at {host})"))
        _mark_fidelity(fig, summary)
        return save(fig, base)


def plot_ooo_delay(delays: pd.DataFrame, meta: dict[str, Any], summary: dict[str, Any],
                   base: Path, host: str) -> list[Path]:
    """Out-of-order delay at the receiver per subflow: over time (left) and as a CDF over
    segments (right, 0 = arrived in order)."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, (left, right) = _new_figure(width=8.0, height=3.8, ncols=2)
        names = sorted(set(delays["subflow"]))
        colours = _colours(names)
        for name in names:
            rows = delays[(delays["subflow"] == name)].dropna(subset=["delay_s"])
            if rows.empty:
                continue
            left.scatter(rows["time_s"], rows["delay_s"] * 1000, s=3, color=colours[name],
                         linewidths=0, label=name, rasterized=True)
            values = np.sort(rows["delay_s"].to_numpy() * 1000)
            right.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                       color=colours[name], linewidth=1.5, label=name)
        left.set_xlabel("Arrival time [s]")
        left.set_ylabel("Out-of-order delay [ms]")
        left.set_xlim(left=0)
        left.set_ylim(bottom=0)
        right.set_xlabel("Out-of-order delay [ms]")
        right.set_ylabel("Share of segments")
        right.set_ylim(0, 1.02)
        right.set_xlim(left=0)
        if right.get_legend_handles_labels()[0]:
            # A CDF leaves its lower right empty: curves start high at 0 when most segments
            # arrive in order, and end at the top.
            right.legend(loc="lower right", frameon=True, fontsize=7)
        fig.suptitle(_run_title(meta, summary, "Out-of-order delay at the receiver",
                                width_in=8.0, where=f" ({host})"))
        _mark_fidelity(fig, summary)
        return save(fig, base)


def plot_owd(owd: pd.DataFrame, meta: dict[str, Any], summary: dict[str, Any],
             base: Path, points: str) -> list[Path]:
    """One-way delay over time per subflow between two capture points: the data direction
    as dots, the ACK direction as a thin line of the same colour."""
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        fig, (ax,) = _new_figure(height=4.0)
        names = sorted(set(owd["subflow"]))
        colours = _colours(names)
        for name in names:
            rows = owd[owd["subflow"] == name]
            data = rows[rows["direction"] == name]
            acks = rows[rows["direction"] != name]
            ax.scatter(data["time_s"], data["owd_s"] * 1000, s=3, color=colours[name],
                       linewidths=0, label=f"{name} (data)", rasterized=True)
            if not acks.empty:
                ax.plot(acks["time_s"], acks["owd_s"] * 1000, color=colours[name],
                        linewidth=0.7, alpha=0.8, label=f"{name} (ACKs back)")
        ax.set_xlabel("Time [s]")
        ax.set_ylabel("One-way delay [ms]")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                  ncols=min(len(labels), 2), frameon=False, fontsize=8, markerscale=2)
        fig.suptitle(_run_title(meta, summary, "One-way delay per subflow",
                                where=f" ({points})"))
        _mark_fidelity(fig, summary)
        return save(fig, base)
