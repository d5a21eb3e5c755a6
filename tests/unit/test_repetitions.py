"""Repetitions gathered per case and stack: the spread of the headline metrics (checked against
numbers worked out by hand), the anchor count, the report's table, its CSV and the error bars
of the comparison figures. Synthetic results directories, no root."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from analysis import figures, repetitions, report
from analysis.spread import spread, t975

from .test_analysis import _spy_saved, make_run

# -- the spread of a few numbers --------------------------------------------------------------


def test_spread_of_three_values_by_hand() -> None:
    s = spread([7.2, 7.9, 7.4])
    # mean 22.5 / 3; deviations -0.3, 0.4, -0.1: sum of squares 0.26, over n - 1 = 2.
    assert s.n == 3
    assert s.mean == pytest.approx(7.5)
    assert s.std == pytest.approx(math.sqrt(0.13))
    assert (s.median, s.min, s.max) == (7.4, 7.2, 7.9)
    # t(0.975, 2) = 4.3027; half-width 4.3027 * sqrt(0.13) / sqrt(3) = 0.8957.
    assert s.ci95 == pytest.approx(0.8957, abs=1e-4)
    assert (s.ci95_low, s.ci95_high) == pytest.approx((6.6043, 8.3957), abs=1e-4)


def test_spread_of_two_and_of_five() -> None:
    two = spread([1.0, 2.0])
    # sd sqrt(0.5); half-width 12.7062 * sqrt(0.5) / sqrt(2) = 12.7062 / 2.
    assert two.std == pytest.approx(math.sqrt(0.5))
    assert two.ci95 == pytest.approx(6.3531)
    assert two.median == 1.5
    five = spread([10, 12, 11, 13, 9])
    # mean 11, squares 1+1+0+4+4 = 10 over 4: sd sqrt(2.5); t(0.975, 4) = 2.7764.
    assert five.mean == 11 and five.median == 11
    assert five.ci95 == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), abs=1e-6)


def test_spread_drops_missing_values_and_needs_two_for_an_interval() -> None:
    s = spread([None, float("nan"), 4.0, "x"])
    assert s.n == 1 and s.mean == 4.0 and s.min == s.max == 4.0
    assert math.isnan(s.std) and math.isnan(s.ci95)
    empty = spread([None])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_t_quantiles() -> None:
    assert t975(1) == pytest.approx(12.706, abs=1e-3)
    assert t975(9) == pytest.approx(2.262, abs=1e-3)
    assert t975(30) == pytest.approx(2.042, abs=1e-3)
    # Past the table: the expansion, still above the normal quantile and falling towards it.
    assert t975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t975(120) == pytest.approx(1.9799, abs=2e-4)
    values = [t975(df) for df in range(1, 200)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] > 1.96
    with pytest.raises(ValueError):
        t975(0)


# -- grouping a suite's runs -----------------------------------------------------------------


def _reseed(run: Path, seed: int) -> Path:
    meta = json.loads((run / "meta.json").read_text())
    meta["seed"] = seed
    (run / "meta.json").write_text(json.dumps(meta))
    return run


# (seed, kernel goodput, kernel duration, tcp goodput, tcp duration); the 10+10 bound is
# 7.857 s, so the kernel's third run misses it. The TCP run of seed 3 failed its fidelity check.
REPEATS = ((1, 18.8, 7.2, 9.5, 14.1), (2, 18.4, 7.4, 9.6, 14.0), (3, 17.9, 7.9, 9.4, 14.3))


def _repeated_suite(root: Path) -> list[Path]:
    """Three seeds of one aggregate case with kernel MPTCP and TCP, and one run of another
    case: the layout a suite file with `repetitions = 3` writes."""
    runs = []
    for seed, gk, dk, gt, dt in REPEATS:
        runs.append(_reseed(make_run(root, f"aggregate/a_seed{seed}/kernel", "kernel", 10, gk,
                                     rate2=10, bound=True, duration=dk), seed))
        runs.append(_reseed(make_run(root, f"aggregate/a_seed{seed}/tcp", "tcp", 10, gt,
                                     rate2=10, bound=True, duration=dt,
                                     fidelity_ok=seed != 3), seed))
    runs.append(make_run(root, "aggregate/b/kernel", "kernel", 15, 18.1, rate2=5, bound=True,
                         duration=7.6))
    return runs


def test_groups_by_case_and_stack(tmp_path: Path) -> None:
    table = repetitions.groups(report.runs_table(_repeated_suite(tmp_path)))
    rows = table.set_index(["case", "stack", "metric"])
    kernel = rows.loc[("10+10 Mbit/s", "kernel", "duration_s")]
    assert (kernel["runs"], kernel["n"], kernel["seeds"]) == (3, 3, "1 2 3")
    assert kernel["mean"] == pytest.approx(7.5)
    assert kernel["std"] == pytest.approx(math.sqrt(0.13))
    assert kernel["ci95"] == pytest.approx(0.8957, abs=1e-4)
    assert (kernel["min"], kernel["max"]) == (7.2, 7.9)
    assert (kernel["anchor_met"], kernel["anchor_judged"], kernel["fidelity_failed"]) == \
        (2, 3, 0)
    goodput = rows.loc[("10+10 Mbit/s", "kernel", "goodput_mbps")]
    # 18.8, 18.4, 17.9: mean 18.3667, deviations .4333 .0333 -.4667, squares sum 0.4067.
    assert goodput["mean"] == pytest.approx(55.1 / 3)
    assert goodput["std"] == pytest.approx(math.sqrt(0.40667 / 2), abs=1e-4)
    tcp = rows.loc[("10+10 Mbit/s", "tcp", "goodput_mbps")]
    assert tcp["mean"] == pytest.approx(9.5) and tcp["std"] == pytest.approx(0.1)
    assert tcp["ci95"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), abs=1e-4)
    # The run that failed its fidelity check is counted in its group, and said to be.
    assert (tcp["runs"], tcp["anchor_met"], tcp["fidelity_failed"]) == (3, 0, 1)
    single = rows.loc[("15+5 Mbit/s", "kernel", "duration_s")]
    assert single["runs"] == 1 and single["mean"] == 7.6 and math.isnan(single["ci95"])
    # Cases in the order of the figures, MPTCP before TCP, headline metrics in order.
    assert list(dict.fromkeys(zip(table["case"], table["stack"], strict=True))) == \
        [("10+10 Mbit/s", "kernel"), ("10+10 Mbit/s", "tcp"), ("15+5 Mbit/s", "kernel")]
    assert list(table["metric"][:2]) == ["duration_s", "goodput_mbps"]
    assert repetitions.repeated(table)
    assert not repetitions.repeated(table[table["case"] == "15+5 Mbit/s"])


def test_headline_per_mode_and_missing_values() -> None:
    """fairness: the ratio in shared mode, the path-2 share in cross mode; vm-migration: a
    TCP run that lost its connection has no gap, so n counts only the runs that have one."""
    runs = pd.DataFrame([
        {"scenario": "fairness", "case": "shared, lia", "stack": "userspace", "mode": "shared",
         "ratio": r, "path2_share": None, "loss_ratio": r - 0.25, "anchor_met": r <= 1.15,
         "fidelity_ok": True}
        for r in (0.82, 1.25, 1.27)] + [
        {"scenario": "vm-migration", "case": "stop 0.5 s", "stack": "tcp", "gap_s": gap,
         "goodput_after_mbps": None, "anchor_met": True, "fidelity_ok": None}
        for gap in (None, None)] + [
        {"scenario": "vm-migration", "case": "stop 0.5 s", "stack": "kernel", "gap_s": gap,
         "goodput_after_mbps": 18.0, "anchor_met": gap is not None, "fidelity_ok": True}
        for gap in (0.5, 0.6, None)])
    table = repetitions.groups(runs).set_index(["scenario", "stack", "metric"])
    ratio = table.loc[("fairness", "userspace", "ratio")]
    assert ratio["n"] == 3 and ratio["mean"] == pytest.approx(3.34 / 3)
    assert (ratio["anchor_met"], ratio["anchor_judged"]) == (1, 3)
    assert table.loc[("fairness", "userspace", "path2_share"), "n"] == 0
    # Whether the flows saw one loss rate (the shaper's per-flow counters).
    assert table.loc[("fairness", "userspace", "loss_ratio"), "mean"] == pytest.approx(
        (3.34 - 0.75) / 3)
    assert table.loc[("vm-migration", "tcp", "gap_s"), "n"] == 0
    gap = table.loc[("vm-migration", "kernel", "gap_s")]
    assert (gap["runs"], gap["n"]) == (3, 2) and gap["mean"] == pytest.approx(0.55)
    lines = repetitions.table_lines(repetitions.groups(runs), "vm-migration")
    kernel = next(line for line in lines if "kernel MPTCP" in line).split(" | ")
    # sd 0.0707: shown to its second significant digit, three decimals.
    assert kernel[3] == "0.550 ± 0.635 (sd 0.071) [2 measured]"
    assert kernel[4] == "0.500–0.600"
    assert kernel[-2] == "**2 of 3**"
    tcp = next(line for line in lines if "| TCP |" in line).split(" | ")
    assert tcp[3:5] == ["–", "–"] and tcp[-2] == "2 of 2"


def test_same_label_other_parameters_are_other_cases(tmp_path: Path) -> None:
    """A scenario's label that leaves out a swept parameter (the schedulers suite) must not
    merge runs of different parameters into one case."""
    runs = []
    for scheduler in ("default", "ecf"):
        for seed in (1, 2):
            run = make_run(tmp_path, f"{scheduler}_seed{seed}/userspace", "userspace", 10,
                           13.0 + seed, label="10+5 Mbit/s, 10/50 ms")
            meta = json.loads((run / "meta.json").read_text())
            meta["params"]["scheduler"] = scheduler
            (run / "meta.json").write_text(json.dumps(meta))
            runs.append(_reseed(run, seed))
    table = report.runs_table(runs)
    assert list(table["case"]) == ["10+5 Mbit/s, 10/50 ms (scheduler=default)"] * 2 + \
        ["10+5 Mbit/s, 10/50 ms (scheduler=ecf)"] * 2
    groups = repetitions.groups(table)
    assert list(groups["runs"]) == [2, 2]
    assert list(groups["mean"]) == pytest.approx([14.5, 14.5])


# -- the report and its CSV ------------------------------------------------------------------


def test_report_shows_repetitions_before_the_runs(tmp_path: Path) -> None:
    runs = _repeated_suite(tmp_path / "suite")
    out = report.write_report(runs, tmp_path / "suite" / "report.md", analyze=False)
    text = out.read_text()
    section = text.split("## Scenario `aggregate`")[1].split("## Runs")[0]
    assert section.index("### Repetitions") < section.index("### Each run")
    assert "`report-repetitions.csv`" in section
    assert "1 run(s) in 1 group(s) failed the emulation fidelity check" in section
    rows = [line for line in section.splitlines() if line.startswith("| 10+10 Mbit/s |")]
    kernel, tcp = rows[0].split(" | "), rows[1].split(" | ")
    assert kernel[1:3] == ["kernel MPTCP", "3"]
    assert kernel[3] == "7.50 ± 0.90 (sd 0.36)" and kernel[4] == "7.20–7.90"
    assert kernel[5] == "18.37 ± 1.12 (sd 0.45)" and kernel[6] == "17.90–18.80"
    assert kernel[7] == "**2 of 3**" and kernel[8] == "– |"
    assert tcp[7] == "**0 of 3**" and tcp[8] == "**1 of 3 failed** |"
    single = next(line for line in section.splitlines() if line.startswith("| 15+5 Mbit/s |"))
    assert single.split(" | ")[2:5] == ["1", "7.60", "7.60"]
    # The anchor sentence is unchanged: counted per stack over every run.
    assert "kernel MPTCP 3 of 4 runs; TCP 0 of 3 runs" in text

    with (tmp_path / "suite" / "report-repetitions.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6  # 3 groups x 2 headline metrics
    row = next(r for r in table if r["stack"] == "kernel" and r["metric"] == "duration_s"
               and r["runs"] == "3")
    assert float(row["mean"]) == pytest.approx(7.5)
    assert float(row["ci95_low"]) == pytest.approx(6.6043, abs=1e-4)
    assert float(row["ci95_high"]) == pytest.approx(8.3957, abs=1e-4)
    assert (row["anchor_met"], row["anchor_judged"], row["seeds"]) == ("2", "3", "1 2 3")
    assert json.loads(row["params"])["rate1_mbps"] == 10


def test_decimals_follow_the_spread() -> None:
    rows = repetitions.groups(pd.DataFrame([
        {"scenario": "aggregate", "case": "c", "stack": "tcp", "duration_s": d,
         "goodput_mbps": 9.5, "within_bound": False} for d in (3.5098, 3.5099, 3.5100)]))
    line = repetitions.table_lines(rows, "aggregate")[2].split(" | ")
    # sd 0.0001: five decimals, so the three runs stay apart; equal goodputs: two.
    assert line[3] == "3.50990 ± 0.00025 (sd 0.00010)" and line[4] == "3.50980–3.51000"
    assert line[5] == "9.50 ± 0.00 (sd 0.00)" and line[6] == "9.50–9.50"


def test_report_without_repetitions_has_no_table(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, f"r{rate}/{stack}", stack, rate, 9.0, bound=True)
            for rate in (10, 15) for stack in ("kernel", "tcp")]
    text = report.write_report(runs, tmp_path / "report.md", analyze=False).read_text()
    assert "Repetitions" not in text and "### Each run" not in text
    assert (tmp_path / "report-repetitions.csv").exists()  # the numbers are there anyway


# -- error bars on the comparison figures -----------------------------------------------------


def _error_bars(ax: Any) -> list[tuple[float, float, float]]:
    """(x, low, high) of each error bar drawn on `ax`."""
    found = []
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            segments = container.lines[2][0].get_segments()
            for (x, low), (_, high) in segments:
                found.append((float(x), float(low), float(high)))
    return found


def test_bars_of_repeated_runs_carry_the_interval(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    runs = report.runs_table(_repeated_suite(tmp_path / "suite"))
    bars = figures.bar_table(runs, "duration_s").set_index(["case", "stack"])
    assert bars.loc[("10+10 Mbit/s", "kernel"), "ci95"] == pytest.approx(0.8957, abs=1e-4)
    assert math.isnan(bars.loc[("15+5 Mbit/s", "kernel"), "ci95"])
    figures.plot_comparison(runs, tmp_path / "cmp", references=True)
    fig = saved[0]
    goodput_ax, completion_ax = fig.axes
    # One whisker per repeated bar (kernel and TCP at 10+10), none on the single run.
    whiskers = sorted(_error_bars(completion_ax))
    assert len(whiskers) == 2
    x, low, high = whiskers[0]
    assert x == pytest.approx(-0.2)  # the kernel's slot, left of TCP's
    assert (low, high) == pytest.approx((6.6043, 8.3957), abs=1e-4)
    assert whiskers[1][1:] == pytest.approx((14.1333 - 0.3795, 14.1333 + 0.3795), abs=1e-3)
    assert len(_error_bars(goodput_ax)) == 2
    assert completion_ax.get_ylim()[1] >= 14.1333 + 0.3795
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert figures.REPETITIONS_LABEL in legend


def test_single_runs_have_no_error_bars(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _spy_saved(monkeypatch)
    runs = report.runs_table([make_run(tmp_path, f"r{rate}/{stack}", stack, rate, 9.0,
                                       bound=True) for rate in (10, 15)
                              for stack in ("kernel", "tcp")])
    figures.plot_comparison(runs, tmp_path / "cmp")
    assert all(not _error_bars(ax) for ax in saved[0].axes)
    assert figures.REPETITIONS_LABEL not in [t.get_text() for t in saved[0].legends[0].get_texts()]


def test_datacenter_points_of_repeated_runs_carry_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis import datacenter

    saved = _spy_saved(monkeypatch)
    rows = [{"path": f"r{i}", "stack": "kernel", "subflows": 4, "permutation": 1,
             "utilisation": u, "jain_index": 0.9, "lowest_decile_fraction": 0.5,
             "fidelity_ok": True} for i, u in enumerate((0.6, 0.7))]
    rows += [{"path": "one", "stack": "kernel", "subflows": 1, "permutation": 1,
              "utilisation": 0.5, "jain_index": 0.9, "lowest_decile_fraction": 0.4,
              "fidelity_ok": True}]
    rows += [{"path": f"t{i}", "stack": "tcp", "subflows": 1, "permutation": 1,
              "utilisation": u, "jain_index": 0.8, "lowest_decile_fraction": 0.2,
              "fidelity_ok": True} for i, u in enumerate((0.4, 0.5, 0.6))]
    datacenter.plot(pd.DataFrame(rows, columns=datacenter.COLUMNS), tmp_path / "dc", title="dc")
    ax_u = saved[0].axes[0]
    # 4 subflows: mean 0.65, sd sqrt(0.005), half-width 12.7062 * 0.05 = 0.6353.
    # TCP: mean 0.5, sd 0.1, half-width 4.3027 * 0.1 / sqrt(3) = 0.2484, left of 1 subflow.
    (x_tcp, *tcp), (x, low, high) = sorted(_error_bars(ax_u))
    assert x == 4 and (low, high) == pytest.approx((0.65 - 0.6353, 0.65 + 0.6353), abs=1e-4)
    assert x_tcp < 1 and tcp == pytest.approx([0.5 - 0.2484, 0.5 + 0.2484], abs=1e-4)
    assert figures.REPETITIONS_LABEL in [t.get_text() for t in ax_u.get_legend().get_texts()]
