"""Suite files: a set of runs written down in TOML, run with `testbed suite FILE.toml`.

    name = "handover-detection"        # results go to <results>/<name>/
    description = "gap against detection delay"
    stacks = ["kernel", "tcp"]         # default of every [[run]]
    repetitions = 3                    # each run with seeds seed, seed+1, seed+2 (--seed)
    # seeds = [1, 7, 42]               # ... or these seeds (not with repetitions)

    [[run]]
    scenario = "handover"
    set = { duration_s = 10 }          # fixed parameters (what `--set` takes)
    sweep = { mode = ["full", "backup", "single-path"], detection_s = [0.0, 0.2, 1.0] }
    label = "{mode}_detect{detection_s}s"    # optional; default: the swept key=value pairs
    stacks = ["kernel"]                # optional, overrides the file's

A sweep runs the cartesian product of its lists. Everything is checked before the first run
starts: unknown keys, unknown scenarios or stacks, parameter values (through the scenario's own
validation, point by point), labels that would collide. `--set` on the command line applies to
every run, after the file's values.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.suites import Case
from testbed.errors import ParameterError

FILE_KEYS = {"name", "description", "stacks", "repetitions", "seeds", "run"}
RUN_KEYS = {"scenario", "set", "sweep", "label", "stacks"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SuiteFile:
    name: str
    description: str
    cases: list[Case]
    path: Path


def _text(value: Any) -> str:
    """A TOML value as `--set` would write it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ParameterError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")


def _stacks(value: Any, where: str) -> tuple[str, ...]:
    from testbed.stacks.base import available_stacks

    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ParameterError(f"{where}: stacks must be a non-empty list of names")
    unknown = [s for s in value if s not in available_stacks()]
    if unknown:
        raise ParameterError(f"{where}: unknown stack(s) {', '.join(unknown)}; "
                             f"available: {', '.join(available_stacks())}")
    return tuple(value)


def _seeds(doc: Mapping[str, Any], base_seed: int) -> list[int | None]:
    """None: the suite's --seed, once. Repetitions: consecutive seeds from --seed."""
    if "seeds" in doc and "repetitions" in doc:
        raise ParameterError("give either seeds or repetitions, not both")
    if "seeds" in doc:
        seeds = doc["seeds"]
        if not isinstance(seeds, list) or not seeds or \
                not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ParameterError("seeds must be a non-empty list of integers")
        if len(set(seeds)) != len(seeds):
            raise ParameterError("seeds must not repeat")
        return list(seeds)
    repetitions = doc.get("repetitions", 1)
    if not isinstance(repetitions, int) or isinstance(repetitions, bool) or repetitions < 1:
        raise ParameterError(f"repetitions must be an integer >= 1, got {repetitions!r}")
    return [None] if repetitions == 1 else [base_seed + k for k in range(repetitions)]


def _points(sweep: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ParameterError(f"{where}: sweep.{key} must be a non-empty list")
    keys = list(sweep)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(sweep[k] for k in keys))]


def _label(template: str | None, point: Mapping[str, Any], scenario: str, where: str) -> str:
    if template is None:
        label = "_".join(f"{k}{_text(v)}" for k, v in point.items()) or scenario
    else:
        try:
            label = template.format(**point)
        except (KeyError, IndexError, ValueError) as exc:
            raise ParameterError(f"{where}: label {template!r} names no swept key: {exc}") \
                from None
    label = label.replace("/", "-").replace(" ", "")
    if not _NAME.match(label):
        raise ParameterError(f"{where}: label {label!r} is not usable as a directory name")
    return label


def load_suite_file(path: Path, overrides: Sequence[str] = (), base_seed: int = 1) -> SuiteFile:
    """Read and check a suite file; ParameterError says what is wrong and where."""
    from experiments import get_scenario
    from experiments.scenario import parse_overrides

    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParameterError(f"suite file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(f"suite file {path}: not valid TOML: {exc}") from None
    _check_keys(doc, FILE_KEYS, f"suite file {path}")
    name = doc.get("name", Path(path).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ParameterError(f"suite file {path}: name {name!r} is not usable as a directory")
    default_stacks = _stacks(doc.get("stacks", ["kernel"]), f"suite file {path}")
    seeds = _seeds(doc, base_seed)
    runs = doc.get("run")
    if not isinstance(runs, list) or not runs:
        raise ParameterError(f"suite file {path}: no [[run]] table")
    cases: list[Case] = []
    for index, run in enumerate(runs, 1):
        where = f"suite file {path}, run {index}"
        if not isinstance(run, dict):
            raise ParameterError(f"{where}: must be a table")
        _check_keys(run, RUN_KEYS, where)
        if "scenario" not in run:
            raise ParameterError(f"{where}: needs a scenario")
        cls = get_scenario(str(run["scenario"]))
        fixed, sweep = run.get("set", {}), run.get("sweep", {})
        if not isinstance(fixed, dict) or not isinstance(sweep, dict):
            raise ParameterError(f"{where}: set and sweep must be tables")
        both = sorted(set(fixed) & set(sweep))
        if both:
            raise ParameterError(f"{where}: {', '.join(both)} both set and swept")
        stacks = _stacks(run["stacks"], where) if "stacks" in run else default_stacks
        for point in _points(sweep, where):
            values = [f"{k}={_text(v)}" for k, v in {**fixed, **point}.items()]
            values += list(overrides)
            try:
                parse_overrides(cls.params_type, values)  # the scenario's own checks
            except ParameterError as exc:
                raise ParameterError(f"{where}, {point or 'its parameters'}: {exc}") from None
            label = _label(run.get("label"), point, cls.name, where)
            for seed in seeds:
                cases.append(Case(cls.name, label if seed is None else f"{label}_seed{seed}",
                                  tuple(values), stacks, seed))
    seen: set[tuple[str, str]] = set()
    for case in cases:
        if (case.scenario, case.label) in seen:
            raise ParameterError(f"suite file {path}: two runs of {case.scenario} are labelled "
                                 f"{case.label!r}; give the runs distinct labels")
        seen.add((case.scenario, case.label))
    return SuiteFile(name, str(doc.get("description", "")), cases, Path(path))
