"""The `receive-buffer` scenario's verdict, which needs more than one run: each MPTCP run's
goodput against plain TCP's on the best path (WiFi) at the same receive buffer (Raiciu et al.,
NSDI 2012, §4.2). Pure functions over the runs table (analysis.report.runs_table)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

SCENARIO = "receive-buffer"
# The anchor: with opportunistic retransmission and penalisation, at least best-path TCP.
# One run per point on a shared machine: 5% below TCP still counts as "at least".
AT_LEAST_TCP = 0.95
VARIANT_ORDER = ("tcp", "kernel", "userspace", "userspace+opportunistic")
VARIANT_NAMES = {"tcp": "plain TCP (WiFi path)", "kernel": "kernel MPTCP",
                 "userspace": "our MPTCP",
                 "userspace+opportunistic": "our MPTCP + opportunistic/penalisation"}


def buffer_key(value: Any) -> float:
    """Sort key of a receive buffer in KiB; auto-tuned (None) after every fixed size."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.inf
    return float(value)


def buffer_name(value: Any) -> str:
    return "auto-tuned" if math.isinf(buffer_key(value)) else f"{buffer_key(value):g} KiB"


def variant(stack: str, params: dict[str, Any]) -> str:
    """The stack as it ran: ours with opportunistic=1 is its own curve."""
    return f"{stack}+opportunistic" if params.get("opportunistic") else stack


def judged_goodput(row: dict[str, Any]) -> float:
    """The steady-state goodput (after the first second) when the run has it, else the
    whole transfer's."""
    for key in ("steady_goodput_mbps", "goodput_mbps"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return float(value)
    return math.nan


def add_verdicts(runs: pd.DataFrame) -> pd.DataFrame:
    """Fill, for the receive-buffer rows, `variant`, `buffer_kib`, `tcp_mbps` (median of the
    plain TCP runs at the same buffer), `fraction_of_tcp` and `anchor_met`: True/False for
    our MPTCP with opportunistic retransmission (at least AT_LEAST_TCP of TCP), None for the
    others (kernel MPTCP and ours without it may fall below TCP: shown, not judged)."""
    if runs.empty or "scenario" not in runs:
        return runs
    runs = runs.copy()
    mask = runs["scenario"].astype(str) == SCENARIO
    if not mask.any():
        return runs
    for column in ("variant", "buffer_kib", "tcp_mbps", "fraction_of_tcp"):
        if column not in runs:
            runs[column] = None
    runs["anchor_met"] = runs["anchor_met"].astype(object) if "anchor_met" in runs else None
    rows = runs[mask]
    tcp: dict[float, list[float]] = {}
    for index, row in rows.iterrows():
        params = row["params"] if isinstance(row["params"], dict) else {}
        runs.at[index, "variant"] = variant(str(row["stack"]), params)
        runs.at[index, "buffer_kib"] = params.get("rcvbuf_kib")
        if str(row["stack"]) == "tcp":
            goodput = judged_goodput(row.to_dict())
            if not math.isnan(goodput):
                tcp.setdefault(buffer_key(params.get("rcvbuf_kib")), []).append(goodput)
    for index in rows.index:
        reference = tcp.get(buffer_key(runs.at[index, "buffer_kib"]))
        name = str(runs.at[index, "variant"])
        runs.at[index, "anchor_met"] = None
        if not reference:
            continue
        base = float(pd.Series(reference).median())
        runs.at[index, "tcp_mbps"] = base
        goodput = judged_goodput(runs.loc[index].to_dict())
        if math.isnan(goodput) or base <= 0:
            continue
        fraction = goodput / base
        runs.at[index, "fraction_of_tcp"] = fraction
        if name == "userspace+opportunistic":
            runs.at[index, "anchor_met"] = bool(fraction >= AT_LEAST_TCP)
    return runs


def in_plot_order(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows by buffer (auto-tuned last), then plain TCP, kernel MPTCP, ours, ours with
    opportunistic retransmission."""
    if runs.empty or "variant" not in runs:
        return runs
    order = {name: i for i, name in enumerate(VARIANT_ORDER)}
    keys = [(buffer_key(b), order.get(str(v), len(order)))
            for b, v in zip(runs["buffer_kib"], runs["variant"], strict=True)]
    return runs.iloc[sorted(range(len(runs)), key=keys.__getitem__)]


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Median judged goodput and fraction of TCP per variant and buffer, long form:
    variant, buffer_kib, position (plot order of the buffer), goodput_mbps, fraction_of_tcp,
    fidelity_ok (False when any run of the point failed the check)."""
    columns = ["variant", "buffer_kib", "position", "goodput_mbps", "fraction_of_tcp",
               "fidelity_ok"]
    if runs.empty or "variant" not in runs:
        return pd.DataFrame(columns=columns)
    rows = runs[runs["scenario"].astype(str) == SCENARIO]
    buffers = sorted({buffer_key(b) for b in rows["buffer_kib"]})
    out = []
    for (name, key), group in rows.groupby(
            [rows["variant"].astype(str), rows["buffer_kib"].map(buffer_key)]):
        goodputs = [judged_goodput(r) for r in group.to_dict(orient="records")]
        fractions = pd.to_numeric(group["fraction_of_tcp"], errors="coerce").dropna()
        out.append({
            "variant": name, "buffer_kib": None if math.isinf(key) else key,
            "position": buffers.index(key),
            "goodput_mbps": float(pd.Series(goodputs).median()),
            "fraction_of_tcp": float(fractions.median()) if not fractions.empty else math.nan,
            "fidelity_ok": not group["fidelity_ok"].eq(False).any()
            if "fidelity_ok" in group else True,
        })
    return pd.DataFrame(out, columns=columns).sort_values(["variant", "position"])
