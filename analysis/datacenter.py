"""The `datacenter` scenario across runs: utilisation against the number of MPTCP subflows,
plain TCP as a line, and the anchor's verdict (Raiciu et al., SIGCOMM 2011: utilisation grows
with the subflows and MPTCP with 4 or more beats TCP on the same permutation).

Reads summary.json only (experiments/datacenter.py writes `utilisation`, `jain_index`,
`lowest_decile_fraction` and the per-flow goodputs); never imports the experiments.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.lines import Line2D

from analysis import figures, metrics
from analysis.spread import spread

DATACENTER = "datacenter"
# Steps of the sweep may fall back by this much without breaking "grows with the subflows":
# one run per point on a shared 2-core machine does not resolve smaller differences.
GROWTH_SLACK = 0.02
BEATS_TCP_FROM = 4
# Where TCP's whisker goes on the log2 subflows axis: left of MPTCP's 1-subflow point.
TCP_WHISKER_X = 0.85
COLUMNS = ["path", "stack", "subflows", "permutation", "utilisation", "jain_index",
           "lowest_decile_fraction", "fidelity_ok"]


def rows(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per run: stack, configured subflows (1 for TCP), permutation, metrics."""
    out = []
    for run_dir in run_dirs:
        meta, summary = metrics.load_meta(Path(run_dir)), metrics.load_summary(Path(run_dir))
        if summary.get("scenario", meta.get("scenario")) != DATACENTER:
            continue
        params = meta.get("params") or {}
        stack = str(summary.get("stack") or meta.get("stack") or "")
        out.append({
            "path": str(run_dir), "stack": stack,
            "subflows": 1 if stack == "tcp" else int(params.get("subflows", 1)),
            "permutation": params.get("permutation_seed"),
            "utilisation": summary.get("utilisation"),
            "jain_index": summary.get("jain_index"),
            "lowest_decile_fraction": summary.get("lowest_decile_fraction"),
            "fidelity_ok": summary.get("fidelity_ok"),
        })
    return pd.DataFrame(out, columns=COLUMNS)


def verdict(table: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """Per permutation: MPTCP's utilisation by subflows, TCP's, and whether the anchor holds
    (`grows`: every step of the sweep at least the previous minus GROWTH_SLACK and the last
    above the first; `beats_tcp`: every MPTCP run with >= 4 subflows above TCP)."""
    result: dict[Any, dict[str, Any]] = {}
    valid = table.dropna(subset=["utilisation"])
    for perm, group in valid.groupby("permutation", dropna=False):
        mptcp = group[group["stack"] != "tcp"].groupby("subflows")["utilisation"].mean()
        tcp = group[group["stack"] == "tcp"]["utilisation"]
        curve = [float(v) for v in mptcp.sort_index().tolist()]
        grows = (len(curve) >= 2 and curve[-1] > curve[0]
                 and all(b >= a - GROWTH_SLACK for a, b in itertools.pairwise(curve)))
        tcp_u = float(tcp.mean()) if not tcp.empty else None
        many = [float(u) for n, u in mptcp.items() if int(n) >= BEATS_TCP_FROM]
        beats = None if tcp_u is None or not many else all(u > tcp_u for u in many)
        result[perm] = {"mptcp": {int(n): round(float(u), 4) for n, u in mptcp.items()},
                        "tcp": None if tcp_u is None else round(tcp_u, 4),
                        "grows": grows if len(curve) >= 2 else None, "beats_tcp": beats}
    return result


def anchor_sentence(table: pd.DataFrame) -> str:
    parts = []
    for perm, v in verdict(table).items():
        curve = ", ".join(f"{n}: {u:.2f}" for n, u in sorted(v["mptcp"].items()))
        tcp = "–" if v["tcp"] is None else f"{v['tcp']:.2f}"
        grows = {True: "grows", False: "does **not** grow", None: "not swept"}[v["grows"]]
        beats = {True: "beats TCP", False: "does **not** beat TCP", None: "no TCP run"}[
            v["beats_tcp"]]
        parts.append(f"permutation {perm}: MPTCP utilisation by subflows {curve or '–'} "
                     f"({grows}), TCP {tcp}; with >= {BEATS_TCP_FROM} subflows MPTCP {beats}")
    return "; ".join(parts) if parts else "no run could be judged"


def plot(table: pd.DataFrame, base: Path, title: str) -> list[Path]:
    """Utilisation (and the lowest decile of per-flow goodput, as a fraction of the host
    rate) against the number of subflows; plain TCP as horizontal lines. Points that ran
    more than once are the mean of their runs with a whisker for its 95% t-interval, each
    run a small dot (TCP's at the left of 1 subflow, its line at the mean)."""
    fig, (ax_u, ax_low) = figures._new_figure(width=9.0, height=3.8, ncols=2)
    colours = figures._STACK_COLOURS
    valid = table.dropna(subset=["utilisation"])
    repeated = False
    for ax, column, label in ((ax_u, "utilisation", "utilisation (aggregate / hosts x rate)"),
                              (ax_low, "lowest_decile_fraction",
                               "lowest decile of flows (/ host rate)")):
        mptcp = valid[valid["stack"] != "tcp"]
        for perm, group in mptcp.groupby("permutation", dropna=False):
            mean = group.groupby("subflows")[column].mean().sort_index()
            ax.plot(mean.index, mean.values, marker="o", color=colours.get("kernel"),
                    label=f"Linux MPTCP (perm. {perm})")
            for subflows, runs in group.groupby("subflows")[column]:
                s = spread(runs)
                if s.n > 1:
                    repeated = True
                    ax.plot([subflows] * s.n, runs.dropna(), ".", color="0.15", markersize=3)
                    ax.errorbar([subflows], [s.mean], yerr=[s.ci95], fmt="none", ecolor="0.15",
                                elinewidth=1.0, capsize=3)
        for perm, group in valid[valid["stack"] == "tcp"].groupby("permutation", dropna=False):
            s = spread(group[column])
            if s.n:
                ax.axhline(s.mean, linestyle="--", color=colours.get("tcp"),
                           label=f"TCP (perm. {perm})")
            if s.n > 1:  # beside MPTCP's 1-subflow point, which would hide it
                repeated = True
                x = TCP_WHISKER_X
                ax.plot([x] * s.n, group[column].dropna(), ".", color=colours.get("tcp"),
                        markersize=3)
                ax.errorbar([x], [s.mean], yerr=[s.ci95], fmt="none", ecolor=colours.get("tcp"),
                            elinewidth=1.0, capsize=3)
        ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8], labels=["1", "2", "4", "8"])
        ax.set_xlabel("MPTCP subflows per flow")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
    handles, _ = ax_u.get_legend_handles_labels()
    if repeated:
        handles.append(Line2D([], [], color="0.15", marker=".", linewidth=1.0,
                              label=figures.REPETITIONS_LABEL))
    ax_u.legend(handles=handles, loc="lower right")
    fig.suptitle(title)
    bad = valid[valid["fidelity_ok"].eq(False)]
    if not bad.empty:
        names = [f"{figures.stack_name(str(r.stack))}" + ("" if r.stack == "tcp" else
                                                          f" {r.subflows} subflows")
                 for r in bad.itertuples()]
        figures._banner(fig, "WARNING: emulation fidelity check failed for "
                        + ", ".join(dict.fromkeys(names))
                        + ": these numbers may not reflect the model")
    return figures.save(fig, base)


def plot_flows(summary: dict[str, Any], base: Path) -> list[Path]:
    """One run of many flows: each flow's goodput over the common interval, against the host
    rate, coloured by how many equal-cost paths its hosts have."""
    flows = summary.get("flows") or []
    fig, (ax,) = figures._new_figure(width=8.0, height=3.6)
    rate = summary.get("host_rate_mbps")
    paths = summary.get("paths_per_flow") or [None] * len(flows)
    palette = {1: "#999999", 2: "#e69f00", 4: "#0072b2"}
    for i, (flow, n) in enumerate(zip(flows, paths, strict=False)):
        value = flow.get("goodput_mbps")
        ax.bar(i, value if value is not None else 0.0, color=palette.get(n, "#56b4e9"),
               label=f"{n} path{'s' if n != 1 else ''}" if n is not None else None)
    if rate:
        ax.axhline(rate, color="0.3", linestyle=":", label="host rate")
        ax.set_ylim(0, rate * 1.45)  # room for the legend above the bars
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8)
    ax.set_xticks(range(len(flows)),
                  labels=[f"{f.get('client')}\n→{f.get('server')}" for f in flows],
                  rotation=90, fontsize=7)
    ax.set_ylabel("goodput [Mbit/s]")
    stack = figures.stack_name(str(summary.get("stack", "")))
    fig.suptitle(f"{stack}, {summary.get('subflows')} subflow(s): utilisation "
                 f"{summary.get('utilisation')}, Jain's index {summary.get('jain_index')}")
    if summary.get("fidelity_ok") is False:
        figures._banner(fig, figures.FIDELITY_WARNING)
    return figures.save(fig, base)
