"""Did each shaped link do what it was told? Achieved rate and delay per link direction from the
userspace shaper's counters (stats/shaper.json), judged against the configured shaping.

Handigol et al. ("Reproducible Network Experiments Using Container-Based Emulation", CoNEXT
2012) call an emulation trustworthy only where the emulator kept up; their test is that a
link carried its configured rate whenever it had a backlog. The shaper counts exactly that:
for every frame that queued behind another in the rate FIFO, the service time the configured
rate (or trace) gave it and the time that actually passed since the previous frame's release.
A link the workload never kept backlogged cannot show its rate, so it is "not saturated",
never "short".
"""

from __future__ import annotations

from typing import Any

# A direction is judged on its rate only after this much backlogged time and this many
# backlogged frames: a few ACKs queued behind each other say nothing about the rate.
MIN_BACKLOGGED_S = 0.1
MIN_BACKLOGGED_FRAMES = 50
# Share of the configured rate a backlogged link must achieve (the timer grain and jitter of
# a userspace process on a loaded 2-core machine cost a few percent; tbf is within 5%).
RATE_TOLERANCE = 0.05
# Mean lateness of releases above this adds delay the model did not ask for.
MAX_MEAN_LATE_MS = 1.0

ACHIEVED, SHORT, NOT_SATURATED, NOT_MEASURED, UNSHAPED, NOT_JUDGED = (
    "achieved", "short", "not saturated", "not measured", "unshaped", "not judged")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def direction_fidelity(link: str, direction: str, counters: dict[str, Any]) -> dict[str, Any]:
    """One link direction's record: configured and achieved rate and delay, and a verdict
    (`rate_verdict`: achieved, short, not saturated, not measured, unshaped, not judged;
    `delay_ok`: the shaper's mean lateness within MAX_MEAN_LATE_MS)."""
    ends = link.split("~", 1)
    src, dst = (ends[0], ends[1]) if direction == "a2b" else (ends[-1], ends[0])
    shaping = counters.get("shaping") or {}
    rate = _number(shaping.get("rate_mbps"))
    delay = _number(shaping.get("delay_ms")) or 0.0
    trace = shaping.get("trace")
    busy_s = _number(counters.get("backlogged_s"))
    service_s = _number(counters.get("backlogged_service_s"))
    busy_bytes = _number(counters.get("backlogged_bytes"))
    busy_frames = int(_number(counters.get("backlogged_frames")) or 0)
    late_mean = _number(counters.get("lateness_mean_s"))
    if late_mean is None:
        frames = _number(counters.get("frames_out")) or 0.0
        late_sum = _number(counters.get("lateness_sum_s"))
        late_mean = late_sum / frames if late_sum is not None and frames else None
    late_max = _number(counters.get("lateness_max_s"))
    record: dict[str, Any] = {
        "link": link,
        "direction": direction,
        "from": src,
        "to": dst,
        "rate_mbps": rate,
        "trace": trace,
        "delay_ms": delay,
        "bytes_out": int(_number(counters.get("bytes_out")) or 0),
        "dropped_queue": int(_number(counters.get("dropped_queue")) or 0),
        "dropped_early": int(_number(counters.get("dropped_early")) or 0),
        "dropped_forced": int(_number(counters.get("dropped_forced")) or 0),
        "aqm": shaping.get("aqm", "droptail"),
        "max_backlog_pkts": int(_number(counters.get("max_backlog_pkts")) or 0),
        "backlogged_s": round(busy_s, 4) if busy_s is not None else None,
        "backlogged_frames": busy_frames,
        "achieved_fraction": None,
        "achieved_mbps": None,
        "mean_late_ms": round(late_mean * 1000, 4) if late_mean is not None else None,
        "max_late_ms": round(late_max * 1000, 4) if late_max is not None else None,
        "delay_achieved_ms": (round(delay + late_mean * 1000, 4) if late_mean is not None
                              else None),
        "delay_ok": None if late_mean is None else late_mean * 1000 <= MAX_MEAN_LATE_MS,
    }
    if busy_s and service_s is not None:
        record["achieved_fraction"] = round(service_s / busy_s, 4)
        if busy_bytes is not None:
            record["achieved_mbps"] = round(busy_bytes * 8 / busy_s / 1e6, 4)
    if rate is None and not trace:
        verdict = UNSHAPED
    elif busy_s is None or service_s is None:
        verdict = NOT_MEASURED  # a shaper older than its backlog counters, or another backend
    elif (_number(counters.get("reordered")) or 0) > 0:
        verdict = NOT_JUDGED  # reordered frames skip the delay line the counters time
    elif busy_s < MIN_BACKLOGGED_S or busy_frames < MIN_BACKLOGGED_FRAMES:
        verdict = NOT_SATURATED
    elif service_s / busy_s >= 1 - RATE_TOLERANCE:
        verdict = ACHIEVED
    else:
        verdict = SHORT
    record["rate_verdict"] = verdict
    return record


def link_fidelity(shaper: dict[str, Any]) -> list[dict[str, Any]]:
    """Every shaped link direction of a run's stats/shaper.json, in a stable order."""
    links = shaper.get("links") if isinstance(shaper, dict) else None
    if not isinstance(links, dict):
        return []
    records = []
    for name in sorted(links):
        entry = links[name]
        for direction in ("a2b", "b2a"):
            counters = entry.get(direction) if isinstance(entry, dict) else None
            if isinstance(counters, dict):
                records.append(direction_fidelity(str(name), direction, counters))
    return records


def link_notes(records: list[dict[str, Any]], delays: bool = True) -> list[str]:
    """A sentence for every link direction that fell short of its rate or, with `delays`,
    added delay (the caller leaves those out when the shaper as a whole was already late)."""
    notes = []
    for r in records:
        where = f"{r['from']}->{r['to']}"
        if r["rate_verdict"] == SHORT:
            configured = (f"{r['rate_mbps']:g} Mbit/s" if r["rate_mbps"] is not None
                          else "trace")
            notes.append(f"{where} carried {r['achieved_fraction']:.0%} of its {configured} "
                         f"while backlogged ({r['achieved_mbps']:.2f} Mbit/s over "
                         f"{r['backlogged_s']:.2f} s)")
        if delays and r["delay_ok"] is False:
            notes.append(f"{where} released frames {r['mean_late_ms']:.2f} ms late on average "
                         f"({r['delay_ms']:g} ms configured)")
    return notes
