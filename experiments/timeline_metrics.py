"""Metrics shared by scenarios with a timeline: what the receiver's 100 ms series shows around an
event (a gap, goodput before and after, goodput over a window), survival, where the timeline's
clock stands in the receiver's, and which kernel counters moved."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import stats
from testbed.workload import BIN_S

# -- around one event: gap, goodput before and after, survival --------------------------------

@dataclass(frozen=True)
class MoveMetrics:
    """What the receiver saw around the move: the scenario's disruptive event (a VM leaving its
    domain, a client losing its WiFi).

    `gap_s` counts whole empty bins, so the real silence lies between gap_s and gap_s plus two
    bins; None when no data came after the move. Goodput before is over the bins before the
    move's bin; goodput after, over the bins from the end of the gap to the last data."""

    gap_s: float | None
    gap_start_s: float | None
    bytes_after_move: int
    goodput_before_mbps: float | None
    goodput_after_mbps: float | None


def _mbps(byte_count: int, bins: int, bin_s: float) -> float | None:
    return round(byte_count * 8 / (bins * bin_s) / 1e6, 3) if bins > 0 else None


def move_metrics(series: Sequence[Sequence[float]], move_s: float,
                 bin_s: float = BIN_S) -> MoveMetrics:
    """`series` is the workload receiver's [[bin start (s), bytes], ...]; `move_s` is when the
    event happened (the VM stopped), in the same clock (seconds after the receiver's t_start)."""
    bins: list[int] = []
    for start, count in series:
        index = round(start / bin_s)
        if index >= len(bins):
            bins.extend([0] * (index + 1 - len(bins)))
        bins[index] += int(count)
    move_bin = max(0, math.floor(move_s / bin_s))
    before = _mbps(sum(bins[:move_bin]), min(move_bin, len(bins)), bin_s)
    after_bytes = sum(bins[move_bin + 1:])
    if after_bytes == 0:
        return MoveMetrics(None, None, 0, before, None)
    # Longest run of empty bins that is not over before the move: a silence that began a
    # little earlier (the bin of the move itself may hold data) still counts.
    best_start, best_len = move_bin, 0
    run_start = None
    for index, count in enumerate(bins):
        if count == 0:
            run_start = index if run_start is None else run_start
            continue
        if run_start is not None and index > move_bin and index - run_start > best_len:
            best_start, best_len = run_start, index - run_start
        run_start = None
    resumed = best_start + best_len
    after = _mbps(sum(bins[resumed:]), len(bins) - resumed, bin_s)
    return MoveMetrics(
        gap_s=round(best_len * bin_s, 3),
        gap_start_s=round(best_start * bin_s, 3),
        bytes_after_move=after_bytes,
        goodput_before_mbps=before,
        goodput_after_mbps=after,
    )


def survival(sha256_match: bool, bytes_after_move: int,
             errors: Sequence[str]) -> tuple[bool, str]:
    """Survived: the whole byte stream arrived intact (sha256 and length equal) and data
    flowed after the move. Otherwise the reason, the workload's own error first."""
    if sha256_match and bytes_after_move > 0:
        return True, "the whole byte stream arrived intact, with data after the move"
    if errors:
        return False, "; ".join(errors)
    if not sha256_match:
        return False, "the byte stream did not arrive intact (sha256 or length differ)"
    return False, "no data arrived after the move"


# -- over windows of the timeline ------------------------------------------------------------

def window_goodput_mbps(series: Sequence[Sequence[float]], start_s: float, end_s: float,
                        bin_s: float = BIN_S) -> float:
    """Goodput over [start_s, end_s) from the receiver's 100 ms bins, each bin's bytes counted
    in proportion to its overlap with the window (steps need not fall on bin edges)."""
    if end_s <= start_s:
        return 0.0
    total = 0.0
    for bin_start, count in series:
        overlap = min(end_s, bin_start + bin_s) - max(start_s, bin_start)
        if overlap > 0:
            total += count * overlap / bin_s
    return total * 8 / (end_s - start_s) / 1e6


def timeline_offset_s(timeline: Sequence[dict[str, Any]], t_start: float | None) -> float | None:
    """When the timeline's clock started, in seconds after the receiver's t_start: each
    applied event knows both its wall time and its time on the timeline's clock."""
    if t_start is None:
        return None
    for event in timeline:
        if event.get("wall_time") is not None and event.get("applied_at_s") is not None:
            return float(event["wall_time"]) - float(event["applied_at_s"]) - float(t_start)
    return None


def nstat_changes(run_dir: Path, side: str, names: Sequence[str]) -> dict[str, int]:
    """Non-zero changes of the counters `names` on one host over the run (the runner's nstat
    snapshots in stats/); a missing or unreadable snapshot counts as all zero."""
    snapshots: list[dict[str, int]] = []
    for when in ("before", "after"):
        path = run_dir / "stats" / f"nstat-{side}-{when}.json"
        try:
            snapshots.append({str(k): int(v) for k, v in json.loads(path.read_text()).items()})
        except (OSError, ValueError, AttributeError):
            snapshots.append({})
    delta = stats.counters_delta(snapshots[0], snapshots[1])
    changes = {name: delta[name] for name in names if delta.get(name)}
    # Our stack's daemon counts from its start, which is the run's, under the kernel's names
    # without their MPTcpExt prefix; its file is there only when the host ran it.
    try:
        ours = json.loads((run_dir / "stats" / f"stack-{side}.json").read_text())["counters"]
    except (OSError, ValueError, KeyError, TypeError):
        ours = {}
    for name in names:
        value = ours.get(name.removeprefix("MPTcpExt")) if isinstance(ours, dict) else None
        if isinstance(value, int) and value:
            changes[name] = changes.get(name, 0) + value
    return changes
