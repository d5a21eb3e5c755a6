"""Per-link emulation fidelity from hand-made userspace shaper counters (stats/shaper.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments import fidelity


def counters(rate: float | None = 10.0, *, busy_s: float | None = 2.0,
             service_s: float | None = 2.0, frames: int = 1000, late_s: float = 0.0001,
             delay_ms: float = 5.0, reordered: int = 0, trace: str | None = None
             ) -> dict[str, Any]:
    c: dict[str, Any] = {
        "frames_out": frames + 10, "bytes_out": (frames + 10) * 1514, "dropped_queue": 3,
        "max_backlog_pkts": 40, "lateness_sum_s": late_s * (frames + 10),
        "lateness_mean_s": late_s, "lateness_max_s": 0.002, "reordered": reordered,
        "shaping": {"rate_mbps": rate, "delay_ms": delay_ms, "jitter_ms": 0.0,
                    "loss_pct": 0.0, "queue_pkts": 100, "reorder_pct": 0.0, "trace": trace},
    }
    if busy_s is not None and service_s is not None:
        c.update(backlogged_s=busy_s, backlogged_service_s=service_s,
                 backlogged_frames=frames,
                 # What the configured rate (10 Mbit/s for a trace) serves in service_s.
                 backlogged_bytes=round(service_s * (rate or 10.0) * 1e6 / 8))
    return c


def shaper(a2b: dict[str, Any], b2a: dict[str, Any]) -> dict[str, Any]:
    return {"links": {"client-eth0~router-eth0": {"a2b": a2b, "b2a": b2a, "down": False}},
            "loop": {}}


def test_a_backlogged_link_at_its_rate_is_achieved_and_ack_direction_not_saturated() -> None:
    acks = counters(busy_s=0.002, service_s=0.0001, frames=180)
    records = fidelity.link_fidelity(shaper(counters(), acks))
    assert [(r["from"], r["to"], r["rate_verdict"]) for r in records] == [
        ("client-eth0", "router-eth0", "achieved"),
        ("router-eth0", "client-eth0", "not saturated")]
    assert records[0]["achieved_fraction"] == pytest.approx(1.0)
    assert records[0]["achieved_mbps"] == pytest.approx(10.0)
    assert records[0]["delay_achieved_ms"] == pytest.approx(5.1)
    assert fidelity.link_notes(records) == []


def test_a_link_that_fell_short_while_backlogged_is_named_in_the_notes() -> None:
    slow = counters(busy_s=2.0, service_s=1.6)  # 80% of the rate
    records = fidelity.link_fidelity(shaper(slow, counters(busy_s=0.0, service_s=0.0)))
    assert records[0]["rate_verdict"] == "short"
    assert records[0]["achieved_fraction"] == pytest.approx(0.8)
    (note,) = fidelity.link_notes(records)
    assert "client-eth0->router-eth0" in note and "80%" in note and "10 Mbit/s" in note


def test_the_tolerance_is_five_percent() -> None:
    inside = fidelity.direction_fidelity("a~b", "a2b", counters(busy_s=1.0, service_s=0.951))
    outside = fidelity.direction_fidelity("a~b", "a2b", counters(busy_s=1.0, service_s=0.949))
    assert (inside["rate_verdict"], outside["rate_verdict"]) == ("achieved", "short")


def test_late_releases_are_a_delay_note() -> None:
    late = counters(late_s=0.0025)
    (record,) = fidelity.link_fidelity(shaper(late, late))[:1]
    assert record["delay_ok"] is False and record["delay_achieved_ms"] == pytest.approx(7.5)
    notes = fidelity.link_notes(fidelity.link_fidelity(shaper(late, counters())))
    assert notes == ["client-eth0->router-eth0 released frames 2.50 ms late on average "
                     "(5 ms configured)"]
    assert fidelity.link_notes(fidelity.link_fidelity(shaper(late, counters())),
                               delays=False) == []


def test_what_cannot_be_judged_is_said_so() -> None:
    def verdict(c: dict[str, Any]) -> str:
        return str(fidelity.direction_fidelity("a~b", "b2a", c)["rate_verdict"])

    assert verdict(counters(rate=None)) == "unshaped"
    assert verdict(counters(busy_s=None)) == "not measured"  # an older shaper.json
    assert verdict(counters(reordered=3, service_s=1.0)) == "not judged"
    assert verdict(counters(busy_s=0.05, service_s=0.05)) == "not saturated"
    assert verdict(counters(frames=20)) == "not saturated"
    # A trace has no single rate, but the counters still hold its service times.
    assert verdict(counters(rate=None, trace="traces/x.trace", service_s=1.0)) == "short"


def test_malformed_or_missing_stats_give_no_records() -> None:
    assert fidelity.link_fidelity({}) == []
    assert fidelity.link_fidelity({"links": {"x~y": "nonsense"}}) == []
    assert fidelity.link_fidelity({"links": []}) == []


def test_the_runner_puts_links_into_the_summary_fields(tmp_path: Path) -> None:
    from experiments.aggregate import Aggregate, AggregateParams
    from experiments.runner import Run, RunOptions

    run = Run(Aggregate(AggregateParams()), RunOptions("tcp", "tcp", out_dir=tmp_path))
    (tmp_path / "stats").mkdir()
    slow = counters(busy_s=2.0, service_s=1.5)
    (tmp_path / "stats" / "shaper.json").write_text(json.dumps(shaper(slow, counters())))
    result = run._fidelity()
    assert [r["rate_verdict"] for r in result["fidelity_links"]] == ["short", "achieved"]
    assert result["fidelity_ok"] is False
    assert result["fidelity_notes"] == [
        "client-eth0->router-eth0 carried 75% of its 10 Mbit/s while backlogged "
        "(7.50 Mbit/s over 2.00 s)"]
    (tmp_path / "stats" / "shaper.json").write_text(json.dumps(shaper(counters(), counters())))
    assert run._fidelity()["fidelity_ok"] is True
    (tmp_path / "stats" / "shaper.json").unlink()  # the netem backend writes none
    assert run._fidelity()["fidelity_links"] == []
