"""mobility without root: the shipped traces are what the generator writes, trace capacity per
second, user traces accepted or refused with a clear error, netem refused, the timeline that
restarts the traces, and the envelope verdicts from synthetic series."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import SCENARIOS
from experiments.mobility import (
    LINKS,
    TRACE_FILES,
    TRACES_DIR,
    Mobility,
    MobilityParams,
    Second,
    capacity_mbps,
    load_trace,
    mean_fraction,
    opportunities_ms,
    synthetic_commute,
    trace_epochs,
    write_traces,
)
from experiments.scenario import LinkEvent, parse_overrides
from testbed.emu.links import NetemBackend
from testbed.emu.shaper.core import Trace
from testbed.errors import BackendUnsupported, ParameterError

REAL_TRACE = Path("/work/shared/traces/Verizon-LTE-short.down")


def test_registered_and_using_the_shipped_commute_by_default() -> None:
    assert SCENARIOS["mobility"] is Mobility
    params = MobilityParams()
    assert params.trace_path("wifi") == str(TRACES_DIR / TRACE_FILES["wifi"])


def test_shipped_traces_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    for written in write_traces(tmp_path):
        assert written.read_bytes() == (TRACES_DIR / written.name).read_bytes()


def test_opportunities_follow_the_rate() -> None:
    # 12 Mbit/s is one 1500-byte opportunity per ms (Mahimahi's "a file holding 1").
    times = opportunities_ms([12.0] * 100)
    assert len(times) == 1000 and times[0] == 1 and times[-1] == 1000
    trace = Trace(tuple(opportunities_ms([12.0] * 50 + [0.0] * 50)))
    assert trace.period_ms == 1000  # the silent half keeps its place: the period is appended
    # Opportunities fall at the end of each millisecond: windows offset by half of one.
    assert capacity_mbps(trace, 0.0005, 0.5005) == pytest.approx(12.0)
    assert capacity_mbps(trace, 0.5005, 0.9995) == 0.0
    assert capacity_mbps(trace, 1.0005, 1.5005) == pytest.approx(12.0)  # the trace repeats


def test_the_commute_loses_wifi_underground_and_keeps_some_cellular() -> None:
    wifi, cell = synthetic_commute("wifi"), synthetic_commute("cell")
    assert len(wifi) == len(cell) == 6000  # 60 s in 10 ms steps
    underground = slice(2500, 3300)  # 25-33 s
    assert max(wifi[underground]) == 0.0 and min(cell[underground]) > 0.5
    assert max(wifi[:1000]) > max(cell[:1000])  # WiFi is the fast path at home


def test_a_user_trace_in_mahimahi_format_is_accepted(tmp_path: Path) -> None:
    mine = tmp_path / "mine.down"
    mine.write_text("1\n1\n2\n")
    params = parse_overrides(MobilityParams, [f"cell_trace={mine}"])
    assert params.trace_path("cell") == str(mine)
    assert load_trace(params.trace_path("cell")).opportunities_ms == (1, 1, 2)


@pytest.mark.skipif(not REAL_TRACE.exists(), reason="no shared traces on this machine")
def test_a_recorded_cellular_trace_is_accepted() -> None:
    params = parse_overrides(MobilityParams, [f"cell_trace={REAL_TRACE}"])
    trace = load_trace(params.trace_path("cell"))
    assert 3.0 < trace.mean_rate_mbps < 8.0  # the README says about 5 Mbit/s


@pytest.mark.parametrize(("text", "message"), [
    (None, "cannot read trace"),
    ("12\nfast\n", "expected an integer time in ms"),
    ("5\n3\n", "non-decreasing"),
])
def test_bad_trace_files_are_refused_before_anything_runs(tmp_path: Path, text: str | None,
                                                          message: str) -> None:
    path = tmp_path / "bad.down"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ParameterError, match=message):
        parse_overrides(MobilityParams, [f"wifi_trace={path}"])


def test_netem_cannot_replay_traces_and_says_so() -> None:
    shaping = Mobility(MobilityParams()).topology()
    links = [info for _, _, _, info in shaping.links(withKeys=True, withInfo=True)
             if info.get("shaping") is not None]
    assert len(links) == 2
    for info in links:
        with pytest.raises(BackendUnsupported, match="userspace backend"):
            NetemBackend().check(info["shaping"])


def test_traces_shape_the_data_direction_and_restart_with_the_workload() -> None:
    params = MobilityParams()
    assert params.link_shaping("wifi").b2a.trace is not None  # router to client: a download
    assert params.link_shaping("wifi").a2b.trace is None
    events = Mobility(params).timeline()
    assert all(isinstance(e, LinkEvent) and e.at_s == 0.0 and e.direction == "b2a"
               for e in events)
    for link in LINKS.values():
        constant, trace = [e for e in events if isinstance(e, LinkEvent) and e.link == link]
        assert constant.shaping is not None and constant.shaping.trace is None
        assert trace.shaping is not None and trace.shaping.trace is not None
    records = [{**e.record(), "applied_at_s": 0.01} for e in events]
    assert trace_epochs(records) == {"path1": 0.01, "path2": 0.01}


def test_fractions_of_the_envelope_and_of_the_sum() -> None:
    seconds = [Second(0, 10.0, 10.0, 5.0), Second(1, 4.0, 0.0, 5.0), Second(2, 0.0, 0.0, 0.0)]
    assert mean_fraction(seconds, of_sum=False) == pytest.approx((1.0 + 0.8) / 2)
    assert mean_fraction(seconds, of_sum=True) == pytest.approx((10 / 15 + 0.8) / 2, abs=1e-3)
    assert mean_fraction([], of_sum=False) is None


def test_per_second_rows_line_the_series_up_with_the_traces() -> None:
    scenario = Mobility(parse_overrides(MobilityParams, ["duration_s=3"]))
    series = [[round(i * 0.1, 1), 125_000] for i in range(40)]  # 10 Mbit/s
    rows = scenario.seconds(series, offset_s=0.5, epochs={})
    assert [r.t_s for r in rows] == [0, 1, 2]
    assert all(r.goodput_mbps == pytest.approx(10.0) for r in rows)
    wifi = load_trace(scenario.params.trace_path("wifi"))
    assert rows[1].wifi_mbps == pytest.approx(capacity_mbps(wifi, 1.0, 2.0))
