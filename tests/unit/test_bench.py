"""`testbed bench links` without root: the Wilson interval, the verdicts, the table and JSON."""

from __future__ import annotations

import json
import math

import pytest

from experiments.bench import (
    CheckResult,
    bench_links,
    capacity_needed_fps,
    exit_status,
    format_table,
    loss_ok,
    percentile,
    rate_ok,
    results_json,
    rtt_ok,
    rtt_tolerance_ms,
    validate,
    wilson_interval,
)
from testbed.errors import ParameterError


@pytest.mark.parametrize(("k", "n", "conf", "low", "high"), [
    # Textbook values: 5/10 and 0/10 at 95% (Newcombe 1998, method 3), 0/10 at 99% is
    # z^2/(n+z^2) with z = 2.5758.
    (5, 10, 0.95, 0.2366, 0.7634),
    (0, 10, 0.95, 0.0, 0.2775),
    (0, 10, 0.99, 0.0, 0.3988),
    (10, 10, 0.95, 0.7225, 1.0),
    (81, 263, 0.95, 0.2553, 0.3662),
])
def test_wilson_interval_matches_known_values(k: int, n: int, conf: float, low: float,
                                              high: float) -> None:
    got = wilson_interval(k, n, conf)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_narrows_with_more_trials_and_holds_the_estimate() -> None:
    small = wilson_interval(1, 100)
    large = wilson_interval(100, 10_000)
    assert small[0] < 0.01 < small[1] and large[0] < 0.01 < large[1]
    assert large[1] - large[0] < small[1] - small[0]


@pytest.mark.parametrize(("k", "n"), [(1, 0), (-1, 10), (11, 10)])
def test_wilson_interval_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ParameterError):
        wilson_interval(k, n)


def test_rtt_target_is_one_ms_or_five_percent() -> None:
    assert rtt_tolerance_ms(10.0) == 1.0
    assert rtt_tolerance_ms(40.0) == pytest.approx(2.0)
    assert rtt_ok(20.9, 20.0) and rtt_ok(19.0, 20.0)
    assert not rtt_ok(21.1, 20.0)
    assert rtt_ok(41.9, 40.0) and not rtt_ok(42.1, 40.0)
    assert rtt_ok(0.9, 0.0) and not rtt_ok(1.1, 0.0)


def test_rate_target_is_five_percent_either_way() -> None:
    assert rate_ok(19.0, 20.0) and rate_ok(21.0, 20.0)
    assert not rate_ok(18.9, 20.0) and not rate_ok(21.1, 20.0)


def test_loss_verdict_asks_whether_the_configured_loss_is_in_the_interval() -> None:
    assert loss_ok(11, 1000, 1.0)
    assert not loss_ok(40, 1000, 1.0)  # 4 % observed: 1 % is far outside
    assert loss_ok(0, 1000, 0.0)  # a lossless link: 0 is the interval's lower end
    assert not loss_ok(5, 1000, 0.0)
    assert loss_ok(1000, 1000, 100.0)


def test_percentile_is_a_measured_value() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile([5.0], 99) == 5.0


def test_capacity_target_scales_with_the_rate() -> None:
    assert capacity_needed_fps(20) == pytest.approx(2 * 20e6 / 8 / 1514)


RESULTS = [
    CheckResult("rtt (ping)", "20.00 ms", "min 20.2 / mean 20.5 / p99 20.9 ms",
                "|mean-cfg| <= 1.00 ms", True),
    CheckResult("tcp rate", "20.00 Mbit/s", "wire 17.00 Mbit/s", "wire within 5%", False),
    CheckResult("shaper capacity", "unshaped", "kernel", "-", None),
]


def test_table_is_aligned_with_a_header_and_verdicts() -> None:
    lines = format_table(RESULTS).splitlines()
    assert lines[0].split() == ["check", "configured", "measured", "target", "verdict"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(RESULTS)
    # Every column starts at the same offset on every line.
    starts = [lines[0].index(word) for word in ("configured", "measured", "target", "verdict")]
    for line, result in zip(lines[2:], RESULTS, strict=True):
        for start, cell in zip(starts, (result.configured, result.measured, result.target,
                                        result.verdict), strict=True):
            assert line[start:].startswith(cell), (line, cell)
    assert [line.split()[-1] for line in lines[2:]] == ["PASS", "FAIL", "skip"]


def test_exit_status_ignores_skipped_checks() -> None:
    assert exit_status(RESULTS) == 1
    assert exit_status([RESULTS[0], RESULTS[2]]) == 0


def test_json_carries_every_check_and_the_overall_verdict() -> None:
    data = json.loads(json.dumps(results_json(RESULTS, {"rate_mbps": 20})))
    assert data["ok"] is False
    assert [c["verdict"] for c in data["checks"]] == ["PASS", "FAIL", "skip"]
    assert data["params"] == {"rate_mbps": 20}


@pytest.mark.parametrize("params", [
    {"rate_mbps": 0}, {"rate_mbps": -5}, {"rate_mbps": math.nan}, {"delay_ms": -1},
    {"loss_pct": 100.5}, {"loss_pct": -0.1}, {"seconds": 0},
])
def test_bad_parameters_are_refused_before_anything_is_created(params: dict[str, float]) -> None:
    args = {"rate_mbps": 20.0, "delay_ms": 10.0, "loss_pct": 1.0, "seconds": 5.0, **params}
    with pytest.raises(ParameterError):
        validate(**args)
    # bench_links refuses them before asking for root, tools or a backend: no root needed here.
    with pytest.raises(ParameterError):
        bench_links("userspace", 1, rate_mbps=args["rate_mbps"], delay_ms=args["delay_ms"],
                    loss_pct=args["loss_pct"], seconds=args["seconds"])
