"""Suite files: parsed into the cases a suite runs, every mistake refused before a run starts,
and a results directory made with other parameters never resumed into."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.suite_file import load_suite_file
from experiments.suites import Case, conflicting_runs, expected_params, suite_cases
from testbed.errors import ParameterError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


SWEEP = """
name = "sweep"
stacks = ["kernel", "tcp"]
repetitions = 2

[[run]]
scenario = "aggregate"
set = { size_mib = 2 }
sweep = { rate1_mbps = [10, 20], delay2_ms = [0, 25] }
"""


def test_a_sweep_is_the_cartesian_product_times_the_seeds(tmp_path: Path) -> None:
    suite = load_suite_file(write(tmp_path, SWEEP), base_seed=5)
    assert suite.name == "sweep"
    assert len(suite.cases) == 2 * 2 * 2
    first = suite.cases[0]
    assert first.scenario == "aggregate" and first.stacks == ("kernel", "tcp")
    assert first.overrides == ("size_mib=2", "rate1_mbps=10", "delay2_ms=0")
    assert [c.label for c in suite.cases[:2]] == ["rate1_mbps10_delay2_ms0_seed5",
                                                  "rate1_mbps10_delay2_ms0_seed6"]
    assert [c.seed for c in suite.cases[:2]] == [5, 6]
    assert expected_params(first)["rate1_mbps"] == 10.0


def test_command_line_overrides_come_last(tmp_path: Path) -> None:
    suite = load_suite_file(write(tmp_path, SWEEP), overrides=["size_mib=1"])
    assert suite.cases[0].overrides[-1] == "size_mib=1"
    assert expected_params(suite.cases[0])["size_mib"] == 1.0


def test_labels_seeds_and_booleans(tmp_path: Path) -> None:
    path = write(tmp_path, """
seeds = [3, 9]
[[run]]
scenario = "middlebox"
sweep = { case = ["split"], checksum = [false, true] }
label = "{case}_csum{checksum}"
stacks = ["userspace"]
""")
    cases = load_suite_file(path).cases
    assert [(c.label, c.seed) for c in cases] == [
        ("split_csumFalse_seed3", 3), ("split_csumFalse_seed9", 9),
        ("split_csumTrue_seed3", 3), ("split_csumTrue_seed9", 9)]
    assert "checksum=1" in cases[2].overrides
    assert cases[0].stacks == ("userspace",) and load_suite_file(path).name == "mine"


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n[[run]]\nscenario='aggregate'", "unknown key.*colour"),
    ("[[run]]\nscenario='teleport'", "unknown scenario 'teleport'"),
    ("[[run]]\nscenario='aggregate'\nset={rate1_mbps=-3}", r"run 1, its parameters: .*rate"),
    ("[[run]]\nscenario='aggregate'\nsweep={rate1_mbps=[10, -1]}", r"\{'rate1_mbps': -1\}"),
    ("[[run]]\nscenario='aggregate'\nsweep={size_mib=[]}", "non-empty list"),
    ("[[run]]\nscenario='aggregate'\nset={queue=3}", "unknown parameter 'queue'"),
    ("[[run]]\nscenario='aggregate'\nset={size_mib=1}\nsweep={size_mib=[2]}",
     "both set and swept"),
    ("[[run]]\nscenario='aggregate'\nsweep={size_mib=[1,2]}\nlabel='same'", "labelled 'same'"),
    ("[[run]]\nscenario='aggregate'\nsweep={size_mib=[1]}\nlabel='{speed}'", "names no swept"),
    ("stacks=['quic']\n[[run]]\nscenario='aggregate'", "unknown stack.*quic"),
    ("seeds=[1]\nrepetitions=2\n[[run]]\nscenario='aggregate'", "either seeds or repetitions"),
    ("repetitions=0\n[[run]]\nscenario='aggregate'", "repetitions must be"),
    ("name='a/b'\n[[run]]\nscenario='aggregate'", "not usable as a directory"),
    ("name='x'", r"no \[\[run\]\]"),
    ("[[run]\n", "not valid TOML"),
])
def test_mistakes_are_refused_with_where_they_are(tmp_path: Path, text: str,
                                                  message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        load_suite_file(write(tmp_path, text))


def test_a_missing_file_is_a_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="No such file"):
        load_suite_file(tmp_path / "absent.toml")


def test_every_shipped_suite_file_loads() -> None:
    files = sorted((ROOT / "suites").glob("*.toml"))
    assert files, "suites/ ships no example"
    for path in files:
        suite = load_suite_file(path)
        assert suite.cases and suite.description
        for case in suite.cases:
            expected_params(case)


def test_builtin_suites_take_overrides_and_files_refuse_full(tmp_path: Path) -> None:
    name, cases = suite_cases("middlebox", False, ["size_mib=1"])
    assert name == "middlebox" and all(c.overrides[-1] == "size_mib=1" for c in cases)
    with pytest.raises(ParameterError, match="--full"):
        suite_cases(str(write(tmp_path, SWEEP)), True)
    with pytest.raises(ParameterError, match="unknown suite 'nope'"):
        suite_cases("nope", False)


def test_results_of_other_parameters_are_not_resumed_into(tmp_path: Path) -> None:
    case = Case("aggregate", "small", ("size_mib=2",), ("kernel",))
    run_dir = tmp_path / "aggregate" / "small" / "kernel"
    run_dir.mkdir(parents=True)
    meta = {"params": expected_params(case), "seed": 1, "client_stack": "kernel",
            "server_stack": "kernel"}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    assert conflicting_runs(tmp_path, [(case, "kernel")], seed=1) == []
    other = Case("aggregate", "small", ("size_mib=4",), ("kernel",))
    [found] = conflicting_runs(tmp_path, [(other, "kernel")], seed=2)
    assert "size_mib" in found and "seed" in found
