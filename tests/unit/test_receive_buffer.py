"""The receive-buffer scenario: its parameters, its per-run numbers, the suite, and the verdict
against plain TCP at the same buffer that the report computes across runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import receive_buffer as rcvbuf
from analysis.report import runs_table, write_report
from experiments import get_scenario
from experiments.receive_buffer import ReceiveBuffer, ReceiveBufferParams, steady_goodput_mbps
from experiments.scenario import RunOutcome, parse_overrides
from experiments.suites import SUITES
from testbed.errors import ParameterError


def test_the_paths_are_wifi_like_and_3g_like_and_the_client_joins_from_3g() -> None:
    scenario = get_scenario("receive-buffer")(parse_overrides(ReceiveBufferParams, []))
    p = scenario.params
    assert (p.wifi().rate_mbps, 2 * p.wifi().delay_ms) == (8.0, 20.0)
    assert (p.cell().rate_mbps, 2 * p.cell().delay_ms) == (2.0, 150.0)
    assert p.cell().queue_limit == 60 and p.wifi().queue_limit < p.cell().queue_limit
    assert p.direction == "download" and p.rcvbuf_kib is None
    assert [e.addr for e in scenario.client_endpoints()] == ["10.0.2.1"]
    assert scenario.label() == "auto-tuned"
    chosen = ReceiveBuffer(parse_overrides(ReceiveBufferParams,
                                           ["rcvbuf_kib=50", "opportunistic=1"]))
    assert chosen.label() == "50 KiB, opportunistic"


@pytest.mark.parametrize(("override", "message"), [
    ("cell_rate_mbps=0", "rate_mbps must be a positive number"),
    ("size_mib=0", "size_mib must be positive"),
    ("direction=up", "direction must be upload or download"),
    ("rcvbuf_kib=2", "rcvbuf_kib must be within"),
])
def test_bad_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_overrides(ReceiveBufferParams, [override])


def test_steady_goodput_skips_the_first_second_and_ends_with_the_last_bin() -> None:
    # 1 s of slow start at 1 Mbit/s, then 2 s at 8 Mbit/s (100 kB per 100 ms bin).
    series = [[i / 10, 12_500] for i in range(10)] + [[1 + i / 10, 100_000] for i in range(20)]
    assert steady_goodput_mbps(series) == pytest.approx(8.0)
    assert steady_goodput_mbps([*series, [3.0, 0], [3.1, 0]]) == pytest.approx(8.0)
    assert steady_goodput_mbps(series[:10]) is None  # over before the warm-up was
    scenario = ReceiveBuffer(parse_overrides(ReceiveBufferParams, ["rcvbuf_kib=100"]))
    verdict = scenario.evaluate_run(RunOutcome({}, {}, {"series": series}, [], Path(".")))
    assert verdict == {"rcvbuf_kib": 100, "opportunistic": False,
                       "steady_goodput_mbps": 8.0, "fraction_of_wifi_rate": 1.0}


def test_the_suite_runs_every_stack_at_every_buffer_and_ours_again_with_the_mechanisms(
) -> None:
    cases = SUITES["receive-buffer"](False)
    runs = [(c.overrides, s) for c in cases for s in c.stacks]
    assert len(runs) == 20
    for overrides in ((), ("rcvbuf_kib=50",), ("rcvbuf_kib=400",)):
        assert {s for o, s in runs if o == overrides} == {"kernel", "userspace", "tcp"}
        assert [s for o, s in runs if o == (*overrides, "opportunistic=1")] == ["userspace"]
    assert len(SUITES["receive-buffer"](True)) > len(cases)
    for case in cases:  # every case is valid before anything runs
        parse_overrides(ReceiveBufferParams, list(case.overrides))


def _row(stack: str, kib: int | None, steady: float, opportunistic: bool = False,
         scenario: str = "receive-buffer") -> dict[str, Any]:
    return {"scenario": scenario, "stack": stack, "goodput_mbps": steady - 0.1,
            "steady_goodput_mbps": steady, "fidelity_ok": True, "anchor_met": None,
            "params": {"rcvbuf_kib": kib, "opportunistic": opportunistic}}


def test_each_mptcp_run_is_judged_against_tcp_at_the_same_buffer() -> None:
    runs = rcvbuf.add_verdicts(pd.DataFrame([
        _row("tcp", 50, 7.5), _row("kernel", 50, 2.0), _row("userspace", 50, 3.0),
        _row("userspace", 50, 7.2, opportunistic=True),
        _row("tcp", None, 7.6), _row("userspace", None, 9.0, opportunistic=True),
        _row("userspace", 100, 6.0, opportunistic=True),  # no TCP run at 100 KiB
        _row("kernel", None, 9.3, scenario="aggregate"),
    ]))
    by = {(r["variant"], r["buffer_kib"], r["scenario"]): r
          for r in runs.to_dict(orient="records")}
    ours = by[("userspace+opportunistic", 50, "receive-buffer")]
    assert ours["fraction_of_tcp"] == pytest.approx(7.2 / 7.5) and ours["anchor_met"] is True
    assert by[("userspace+opportunistic", None, "receive-buffer")]["anchor_met"] is True
    # Below TCP: shown for kernel MPTCP and ours without the mechanisms, not judged.
    assert by[("kernel", 50, "receive-buffer")]["fraction_of_tcp"] == pytest.approx(2 / 7.5)
    assert by[("kernel", 50, "receive-buffer")]["anchor_met"] is None
    assert by[("userspace", 50, "receive-buffer")]["anchor_met"] is None
    # Nothing to compare with: no verdict rather than a made-up one.
    lone = by[("userspace+opportunistic", 100, "receive-buffer")]
    assert lone["anchor_met"] is None and lone["tcp_mbps"] is None
    other = runs.iloc[-1]  # other scenarios' rows are left as they were
    assert other["scenario"] == "aggregate" and other["variant"] is None
    failing = rcvbuf.add_verdicts(pd.DataFrame([
        _row("tcp", 50, 7.5), _row("userspace", 50, 0.9 * 7.5, opportunistic=True)]))
    assert failing.iloc[1]["anchor_met"] is False
    points = rcvbuf.curves(runs)
    assert list(points[points["variant"] == "userspace+opportunistic"]["buffer_kib"]
                .map(rcvbuf.buffer_key)) == [50, 100, math.inf]


def _run_dir(root: Path, stack: str, kib: int | None, steady: float,
             opportunistic: bool = False) -> Path:
    run = root / f"{stack}-{kib}-{int(opportunistic)}"
    (run / "stats").mkdir(parents=True)
    params = {"rcvbuf_kib": kib, "opportunistic": opportunistic, "wifi_rate_mbps": 8.0}
    meta = {"scenario": "receive-buffer", "stack": stack, "params": params,
            "label": ReceiveBuffer(ReceiveBufferParams(
                rcvbuf_kib=kib, opportunistic=opportunistic)).label(),
            "configured_rates_mbps": {"path1": 8.0, "path2": 2.0}}
    summary = {"scenario": "receive-buffer", "stack": stack, "goodput_mbps": steady,
               "steady_goodput_mbps": steady, "sha256_match": True, "fidelity_ok": True,
               "rcvbuf_kib": kib, "opportunistic": opportunistic, "subflows": 2}
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_the_report_has_the_fractions_the_anchor_count_and_the_figure(tmp_path: Path) -> None:
    dirs = [_run_dir(tmp_path, "tcp", 50, 7.5), _run_dir(tmp_path, "userspace", 50, 3.0),
            _run_dir(tmp_path, "userspace", 50, 4.5, opportunistic=True),
            _run_dir(tmp_path, "tcp", None, 7.6),
            _run_dir(tmp_path, "userspace", None, 9.2, opportunistic=True)]
    table = runs_table(dirs)
    assert list(table["anchor_met"]) == [None, None, False, None, True]
    report = write_report(dirs, tmp_path / "report.md", analyze=False).read_text()
    assert "| 50 KiB, opportunistic | our stack | 4.50 | 4.50 | 7.50 | **0.60** |" in report
    assert "At least best-path TCP: our stack 1 of 2 runs" in report
    assert (tmp_path / "figures" / "report-comparison.png").stat().st_size > 10_000
