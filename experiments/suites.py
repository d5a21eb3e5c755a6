"""Suites: named sets of runs (scenario, parameters, stacks) that `make experiment` and
`testbed suite` execute, resuming where a previous invocation stopped, then compare and report."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import ParameterError, TestbedError

# Linux MPTCP and plain TCP run every case; our stack (MPTCP over our TCP) runs the cases whose
# mechanisms it has: aggregation, and (since its path manager follows the host's interfaces
# and takes the connection manager's commands) handover, migration, multi-wifi and mobility.
STACKS = ("kernel", "tcp")
ALL_STACKS = ("kernel", "userspace", "tcp")


@dataclass(frozen=True)
class Case:
    scenario: str
    label: str
    overrides: tuple[str, ...]
    stacks: tuple[str, ...] = STACKS
    seed: int | None = None  # None: the suite's --seed ...
    seed_offset: int = 0  # ... plus this (the repetitions of a built-in suite)

    def seed_for(self, base: int) -> int:
        return self.seed if self.seed is not None else base + self.seed_offset


def _aggregate_cases(full: bool) -> list[Case]:
    """The simult_flows.sh cases: equal and unequal rates, symmetric and opposed delays."""
    rates = [(10, 10), (15, 5)]
    delays = [(0, 0), (1, 25), (25, 1)] if full else [(0, 0), (1, 25)]
    directions = ["upload", "download"] if full else ["upload"]
    cases = []
    for r1, r2 in rates:
        for d1, d2 in delays:
            for direction in directions:
                label = f"r{r1}-{r2}_d{d1}-{d2}_{direction}"
                cases.append(Case("aggregate", label, (
                    f"rate1_mbps={r1}", f"rate2_mbps={r2}", f"delay1_ms={d1}",
                    f"delay2_ms={d2}", f"direction={direction}"), ALL_STACKS))
    return cases


def _vm_migration_cases(full: bool) -> list[Case]:
    """Stop times of a live migration (the VM is paused for this long)."""
    stops = [0.1, 0.5, 1.0, 2.0] if full else [0.5]
    return [Case("vm-migration", f"stop{stop:g}s", (f"stop_time_s={stop}",), ALL_STACKS)
            for stop in stops]


def _multi_wifi_cases(full: bool) -> list[Case]:
    """The default walk past three APs; in full, slower and faster walks too (a slower walk
    spends longer at each position, a faster one changes AP more often)."""
    speeds = [0.7, 1.4, 2.8] if full else [1.4]
    return [Case("multi-wifi", f"walk{speed:g}mps", (f"walk_speed_mps={speed}",), ALL_STACKS)
            for speed in speeds]


def _handover_cases(full: bool) -> list[Case]:
    """The paper's three modes; in full, slower and faster detection of the lost WiFi too.
    Plain TCP runs each case as well: its mode does not apply, it breaks every time."""
    detections = [0.0, 0.2, 1.0] if full else [0.2]
    return [Case("handover", f"{mode}_detect{detect:g}s",
                 (f"mode={mode}", f"detection_s={detect}"), ALL_STACKS)
            for mode in ("full", "backup", "single-path") for detect in detections]


def _mobility_cases(full: bool) -> list[Case]:
    """The shipped 60 s commute; in full, its delays swapped too (cellular the short one)."""
    cases = [Case("mobility", "commute", (), ALL_STACKS)]
    if full:
        cases.append(Case("mobility", "commute_cell-short-delay",
                          ("wifi_delay_ms=30", "cell_delay_ms=5"), ALL_STACKS))
    return cases


def _middlebox_cases(full: bool) -> list[Case]:
    """Every box of experiments/middlebox.py with Linux MPTCP and ours; payload changes with
    DSS checksums (caught) and, as the control, without (what TCP would deliver). In full,
    plain TCP through each box too."""
    from experiments.middlebox import CASES

    stacks = ALL_STACKS if full else ("kernel", "userspace")
    cases = [Case("middlebox", name, (f"case={name}",) + (
        ("checksum=1",) if name == "payload-change" else ()), stacks) for name in CASES]
    cases.append(Case("middlebox", "payload-change_no-checksum",
                      ("case=payload-change", "checksum=0"), stacks))
    return cases


def _receive_buffer_cases(full: bool) -> list[Case]:
    """Receive buffers from small to auto-tuned (NSDI 2012 §4.2): Linux MPTCP, ours and plain
    TCP at each, and ours again with opportunistic retransmission and penalisation. In full,
    more sizes between."""
    sizes: list[int | None] = [50, 75, 100, 150, 200, 300, 400, None] if full else \
        [50, 100, 200, 400, None]
    cases = []
    for kib in sizes:
        label = "auto" if kib is None else f"buf{kib}k"
        overrides = () if kib is None else (f"rcvbuf_kib={kib}",)
        cases.append(Case("receive-buffer", label, overrides, ALL_STACKS))
        cases.append(Case("receive-buffer", f"{label}_opportunistic",
                          (*overrides, "opportunistic=1"), ("userspace",)))
    return cases


def _datacenter_cases(full: bool) -> list[Case]:
    """The FatTree permutation with Linux MPTCP at 1, 2, 4 and 8 subflows and plain TCP, all
    on the same permutation; in full, three permutations."""
    cases = []
    for perm in (1, 2, 3) if full else (1,):
        cases.append(Case("datacenter", f"perm{perm}_tcp", (f"permutation_seed={perm}",),
                          ("tcp",)))
        cases += [Case("datacenter", f"perm{perm}_subflows{n}",
                       (f"permutation_seed={perm}", f"subflows={n}"), ("kernel",))
                  for n in (1, 2, 4, 8)]
    return cases


def _fairness_cases(full: bool) -> list[Case]:
    """Both modes with our coupled controllers (lia, olia, balia), the uncoupled ones on our
    stack and on Linux MPTCP (reno, the negative control, and cubic; this kernel offers no
    coupled controller), and plain TCP with Reno as the single-path reference. In full, three
    repetitions of each with seeds --seed, +1, +2 (the shares of competing flows vary from run
    to run)."""
    repetitions = 3 if full else 1
    cases = []
    for mode in ("shared", "cross"):
        for congestion, stacks in (("lia", ("userspace",)), ("olia", ("userspace",)),
                                   ("balia", ("userspace",)),
                                   ("reno", ("kernel", "userspace", "tcp")),
                                   ("cubic", ("kernel", "userspace"))):
            for rep in range(1, repetitions + 1):
                label = f"{mode}_{congestion}" + (f"_rep{rep}" if full else "")
                cases.append(Case("fairness", label,
                                  (f"mode={mode}", f"congestion={congestion}"), stacks,
                                  seed_offset=rep - 1))
    return cases


def _default_cases(full: bool) -> list[Case]:
    return _aggregate_cases(full) + _vm_migration_cases(full) + _multi_wifi_cases(full)


SUITES = {"default": _default_cases, "aggregate": _aggregate_cases,
          "vm-migration": _vm_migration_cases, "multi-wifi": _multi_wifi_cases,
          "handover": _handover_cases, "mobility": _mobility_cases,
          "middlebox": _middlebox_cases, "receive-buffer": _receive_buffer_cases,
          "datacenter": _datacenter_cases, "fairness": _fairness_cases}


def _complete(run_dir: Path) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    if summary.get("interrupted"):
        return False
    # A run is complete when it produced its result: data intact, or, where surviving is the
    # question (plain TCP through a migration), a verdict on survival.
    # A middlebox run's outcome is its result even when the data arrived changed.
    return (bool(summary.get("sha256_match")) or summary.get("survived") is not None
            or summary.get("outcome") is not None)


def _interrupted(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "summary.json").read_text()).get("interrupted"))
    except (OSError, ValueError):
        return False


def suite_cases(name: str, full: bool, overrides: Sequence[str] = (),
                seed: int = 1) -> tuple[str, list[Case]]:
    """(the suite's name, its cases): a built-in suite by name, or a suite file (a path ending
    in .toml, see experiments/suite_file.py). `overrides` apply to every case, last."""
    if name.endswith(".toml") or "/" in name:
        from experiments.suite_file import load_suite_file

        if full:
            raise ParameterError("--full chooses a built-in suite's fuller version; a suite "
                                 "file says what it runs itself")
        loaded = load_suite_file(Path(name), overrides, base_seed=seed)
        return loaded.name, loaded.cases
    if name not in SUITES:
        raise ParameterError(f"unknown suite {name!r}; available: {', '.join(sorted(SUITES))}"
                             " (or a suite file, NAME.toml)")
    cases = [dataclasses.replace(case, overrides=(*case.overrides, *overrides))
             for case in SUITES[name](full)]
    return name, cases


def expected_params(case: Case) -> dict[str, Any]:
    """The parameters a run of `case` records in meta.json (ParameterError if invalid)."""
    from experiments import get_scenario
    from experiments.scenario import parse_overrides

    cls = get_scenario(case.scenario)
    return dict(json.loads(json.dumps(dataclasses.asdict(
        parse_overrides(cls.params_type, case.overrides)))))


def conflicting_runs(root: Path, runs: Sequence[tuple[Case, str]], seed: int) -> list[str]:
    """Run directories that already hold a run of other parameters, seed or stacks than the
    suite asks for: resuming would mix them in, so the suite refuses to start."""
    found = []
    for case, stack in runs:
        run_dir = root / case.scenario / case.label / stack
        try:
            meta = json.loads((run_dir / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        wanted = expected_params(case)
        recorded = meta.get("params") or {}
        differ = sorted(k for k in set(wanted) | set(recorded) if wanted.get(k) != recorded.get(k))
        if meta.get("seed") != case.seed_for(seed):
            differ.append("seed")
        if (meta.get("client_stack"), meta.get("server_stack")) != (stack, stack):
            differ.append("stacks")
        if differ:
            found.append(f"{run_dir} (differs in {', '.join(differ)})")
    return found


def run_suite(name: str, results: Path, link_backend: str, seed: int, full: bool,
              overrides: Sequence[str] = ()) -> int:
    from testbed.cli import run_one

    name, cases = suite_cases(name, full, overrides, seed)
    for case in cases:  # every case's parameters checked before the first run starts
        expected_params(case)
    root = results / name
    runs = [(case, stack) for case in cases for stack in case.stacks]
    conflicts = conflicting_runs(root, runs, seed)
    if conflicts:
        raise ParameterError(
            "these results were made with other parameters; give another --results or "
            "remove them:\n  " + "\n  ".join(conflicts))
    failed: list[str] = []
    for number, (case, stack) in enumerate(runs, 1):
        run_dir = root / case.scenario / case.label / stack
        tag = f"[{number}/{len(runs)}] {case.scenario} {case.label} {stack}"
        if _complete(run_dir):
            print(f"{tag}: already complete, kept", file=sys.stderr)
            continue
        print(f"{tag}", file=sys.stderr)
        try:
            run_one(case.scenario, case.overrides, stack, stack, link_backend,
                    case.seed_for(seed), run_dir, results,
                    analyze=True)
        except TestbedError as exc:
            failed.append(f"{tag}: {exc}")
            print(f"{tag}: failed: {exc}", file=sys.stderr)
        if _interrupted(run_dir):
            print(f"{tag}: interrupted; the suite stops here. Run it again to resume: "
                  "complete runs are kept.", file=sys.stderr)
            return 130
        if not _complete(run_dir):
            failed.append(f"{tag}: incomplete (see {run_dir}/summary.json)")
    redraw(results, name)
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


def redraw(results: Path, name: str | None = None) -> int:
    """The report of one suite (or of every suite found), with its comparison figures per
    scenario (analysis.report.write_report draws them)."""
    from analysis.report import write_report

    names = [name] if name else sorted(p.name for p in results.iterdir() if p.is_dir()) \
        if results.is_dir() else []
    drawn = 0
    for suite in names:
        run_dirs = sorted(p.parent for p in (results / suite).glob("*/*/*/summary.json"))
        if not run_dirs:
            continue
        report = results / suite / "report.md"
        write_report(run_dirs, report)
        drawn += 1
        print(f"{suite}: {len(run_dirs)} runs, report and comparison figures in {report}")
    if not drawn:
        print(f"no results under {results}; run `make experiment` first", file=sys.stderr)
        return 1
    return 0
