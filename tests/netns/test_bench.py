"""`testbed bench links` measurements on the real userspace link: short versions, wide tolerances
(the statistics and verdicts are unit-tested; here the question is whether the numbers are
right), and nothing left behind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments import bench
from testbed.emu.cleanup import STATE_DIR
from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.emu.network import Emulation
from tests.netns.nsutil import emulated, root_links
from topologies.pair import PairTopo

SECONDS = 1.5


def _children() -> list[str]:
    """Live processes whose parent is this one: every host shell, shaper, ping and iperf3 the
    bench starts is one (through mnexec or directly). Scoped to us, because other sessions may
    run Mininet hosts of their own on this machine at the same time."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(f"{entry.name} {cmdline}")
    return found


def leftovers() -> list[str]:
    """Our children (this topology's host shells among them: Mininet starts them) and
    root-namespace interfaces."""
    return _children() + root_links("a-eth", "b-eth")


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    before = leftovers()
    yield
    assert leftovers() == before
    if STATE_DIR.is_dir():
        assert not list(STATE_DIR.glob("test-bench-*.json"))
        assert not list(STATE_DIR.glob("bench-links-*.json"))


@pytest.fixture
def pair(request: pytest.FixtureRequest, no_leftovers: None) -> Iterator[Emulation]:
    shaping: LinkShaping = request.param
    with emulated(PairTopo(shaping=shaping), seed=3, run_prefix="test-bench") as emu:
        yield emu


@pytest.mark.parametrize("pair", [LinkShaping.symmetric(delay_ms=10)], indirect=True)
def test_rtt_is_twice_the_configured_delay(pair: Emulation) -> None:
    m = bench.measure_rtt(pair, count=60)
    assert len(m.samples_ms) == 60
    assert abs(m.mean_ms - 20.0) <= 2.0, m
    assert 19.0 <= m.min_ms <= m.mean_ms <= m.p99_ms


@pytest.mark.parametrize("pair", [LinkShaping.symmetric(rate_mbps=20, delay_ms=5)],
                         indirect=True)
def test_tcp_goodput_and_wire_rate_follow_the_rate(pair: Emulation) -> None:
    m = bench.measure_tcp(pair, SECONDS)
    assert 0.80 * 20 <= m.goodput_mbps <= 20.0, m
    # The wire carries headers on top of the payload, and never more than the link rate.
    assert m.goodput_mbps < m.wire_mbps <= 1.02 * 20, m
    assert m.wire_source == "shaper counters"
    assert m.congestion


@pytest.mark.parametrize("pair", [LinkShaping.symmetric(rate_mbps=10, delay_ms=5)],
                         indirect=True)
def test_udp_overload_is_cut_to_the_rate(pair: Emulation) -> None:
    m = bench.measure_udp(pair, 10.0, SECONDS)
    assert m.offered_mbps == pytest.approx(12.0)
    assert 0.85 * 10 <= m.wire_mbps <= 1.05 * 10, m
    assert m.lost_pct > 5, m  # a sixth of what was offered cannot fit


@pytest.mark.parametrize("pair", [LinkShaping(Shaping(delay_ms=1, loss_pct=10),
                                              Shaping(delay_ms=1))], indirect=True)
def test_loss_is_what_was_configured(pair: Emulation) -> None:
    m = bench.measure_loss(pair, count=600)
    assert m.sent == 600
    assert 0.04 <= m.fraction <= 0.18, m
    low, high = m.interval()
    assert low < m.fraction < high


@pytest.mark.parametrize("pair", [LinkShaping.symmetric()], indirect=True)
def test_shaper_capacity_is_read_from_its_counters(pair: Emulation) -> None:
    m = bench.measure_capacity(pair, 1.0)
    assert m is not None
    assert m.frames_per_s > 1000, m
    assert m.cpu_s > 0 and m.frames_per_cpu_s > 0


def test_bench_links_prints_a_table_writes_json_and_cleans_up(
        tmp_path: Path, no_leftovers: None, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = bench.bench_links("userspace", 1, rate_mbps=20, delay_ms=5, loss_pct=2,
                               seconds=1.0, out=out)
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [c["check"].split()[0] for c in data["checks"]] == ["rtt", "tcp", "udp", "loss",
                                                               "shaper"]
    assert status == (0 if data["ok"] else 1)
    for check in data["checks"]:
        assert check["verdict"] in printed
        assert check["measured"] in printed
