"""The netem backend's translation of shaping into qdiscs (the kernel here has no sch_netem, so
the netlink calls are recorded by a fake; tests/netns checks the real kernel where it can)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pyroute2.netlink.rtnl.tcmsg import sched_netem

from testbed.emu.linkparams import Shaping
from testbed.emu.netem import (
    NETEM_HANDLE,
    RED_HANDLE,
    RED_PARENT,
    TBF_HANDLE,
    TBF_PARENT,
    NetemShaper,
    ewma_log,
    red_burst,
    tc_red_ewma_log,
)
from testbed.errors import BackendUnsupported


class FakeNetNS:
    calls: ClassVar[list[tuple[Any, ...]]] = []

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> FakeNetNS:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def link_lookup(self, ifname: str) -> list[int]:
        return [7] if ifname == "h1-eth0" else []

    def tc(self, *args: Any, **kwargs: Any) -> None:
        FakeNetNS.calls.append((*args, kwargs))


@pytest.fixture(autouse=True)
def reset() -> None:
    FakeNetNS.calls = []


def test_netem_then_tbf_with_the_queue_as_byte_limit() -> None:
    shaper = NetemShaper("/proc/1/ns/net", "h1-eth0", open_netns=FakeNetNS)
    shaper.apply(Shaping(rate_mbps=10, delay_ms=25, jitter_ms=2, loss_pct=1.5, queue_pkts=40),
                 create=True)
    (verb1, kind1, index1, netem), (verb2, kind2, index2, tbf) = FakeNetNS.calls
    assert (verb1, kind1, index1, verb2, kind2, index2) == ("add", "netem", 7, "add", "tbf", 7)
    assert netem["handle"] == NETEM_HANDLE
    assert netem["delay"] == 25_000 and netem["jitter"] == 2_000  # microseconds
    assert netem["loss"] == 1.5
    assert tbf["parent"] == TBF_PARENT and tbf["handle"] == TBF_HANDLE
    assert tbf["rate"] == "10000000bit"
    assert tbf["limit"] == 40 * 1514


def test_reordering_is_netems_reorder_with_a_gap_of_one() -> None:
    shaper = NetemShaper("/proc/1/ns/net", "h1-eth0", open_netns=FakeNetNS)
    shaper.apply(Shaping(rate_mbps=10, delay_ms=5, reorder_pct=2), create=True)
    netem = FakeNetNS.calls[0][3]
    assert netem["prob_reorder"] == 2
    # What pyroute2 makes of it: a reorder attribute with 2% of 2**32 - 1, and gap 1 (every
    # frame may be reordered), as `tc qdisc ... netem delay 5ms reorder 2%` does.
    opts = sched_netem.get_parameters(netem)
    assert opts["gap"] == 1
    assert ["TCA_NETEM_REORDER", {"prob_reorder": (2**32 - 1) * 2 // 100, "corr_reorder": 0}] \
        in opts["attrs"]
    # Without reordering, no reorder attribute and gap 0: a change turns it off.
    FakeNetNS.calls = []
    shaper.apply(Shaping(rate_mbps=10, delay_ms=5), create=False)
    opts = sched_netem.get_parameters(FakeNetNS.calls[0][3])
    assert opts["gap"] == 0
    assert not [attr for attr in opts["attrs"] if attr[0] == "TCA_NETEM_REORDER"]


def test_a_change_keeps_the_qdiscs_and_changes_them_in_place() -> None:
    shaper = NetemShaper("/proc/1/ns/net", "h1-eth0", open_netns=FakeNetNS)
    shaper.apply(Shaping(rate_mbps=5), create=False)
    assert [call[0] for call in FakeNetNS.calls] == ["change", "change"]


def test_what_netem_cannot_do_is_an_error_not_a_silent_no_op() -> None:
    with pytest.raises(BackendUnsupported, match="userspace backend"):
        NetemShaper.check(Shaping(trace="cellular.down"))
    shaper = NetemShaper("/proc/1/ns/net", "missing0", open_netns=FakeNetNS)
    with pytest.raises(BackendUnsupported, match="no interface missing0"):
        shaper.apply(Shaping(rate_mbps=5), create=True)


# -- RED as tbf's child (tc commands; untested against a kernel here: no sch_red) -------------


def _red_shaper(commands: list[list[str]]) -> NetemShaper:
    return NetemShaper("/proc/1/ns/net", "h1-eth0", open_netns=FakeNetNS,
                       run=lambda argv: commands.append(list(argv)))


def test_red_replaces_tbfs_queue_with_thresholds_in_bytes_of_full_frames() -> None:
    commands: list[list[str]] = []
    shaping = Shaping(rate_mbps=10, delay_ms=10, queue_pkts=25, aqm="red")
    _red_shaper(commands).apply(shaping, create=True)
    assert [call[1] for call in FakeNetNS.calls] == ["netem", "tbf"]
    (argv,) = commands
    assert argv[:11] == ["nsenter", "--net=/proc/1/ns/net", "tc", "qdisc", "add", "dev",
                         "h1-eth0", "parent", RED_PARENT, "handle", RED_HANDLE]
    assert RED_PARENT == "10:1" and TBF_HANDLE == 0x100000  # tbf 10:'s only class
    options = dict(zip(argv[12::2], argv[13::2], strict=True))
    assert argv[11] == "red"
    assert options == {
        "limit": str(25 * 1514),
        "min": str(round(6.25 * 1514)),
        "max": str(round(18.75 * 1514)),
        "avpkt": "1514",
        # The burst for which tc derives Wlog 9, a weight of 1/512 (nearest to 0.002).
        "burst": str(red_burst(round(6.25 * 1514), 9)),
        "probability": "0.1",
        "bandwidth": "10000000bit",
    }
    assert tc_red_ewma_log(round(6.25 * 1514), int(options["burst"]), 1514) == 9
    # A change changes red in place.
    commands.clear()
    _red_shaper(commands).apply(shaping.with_changes(red_max_p=0.05), create=False,
                                previous=shaping)
    assert commands[0][4] == "change" and "0.05" in commands[0]


def test_droptail_runs_no_tc_command() -> None:
    commands: list[list[str]] = []
    _red_shaper(commands).apply(Shaping(rate_mbps=10, queue_pkts=25), create=True)
    assert commands == []


def test_tc_ewma_log_follows_the_burst() -> None:
    # Values read back from the netlink request of iproute2's tc (min 9462 bytes, avpkt 1514)
    # with strace: bursts 10, 30, 52, 60, 80, 200 gave Wlog 3, 7, 8, 9, 10, 12.
    logs = [tc_red_ewma_log(9462, burst, 1514) for burst in (10, 30, 52, 60, 80, 200)]
    assert logs == [3, 7, 8, 9, 10, 12]
    assert tc_red_ewma_log(9462, 5, 1514) is None  # shorter than min: tc refuses it
    assert ewma_log(0.002) == 9 and ewma_log(0.5) == 1 and ewma_log(1e-12) == 31
    for log in (6, 9, 12):
        assert tc_red_ewma_log(9462, red_burst(9462, log), 1514) == log


def test_switching_the_discipline_during_a_run_is_refused_by_netem() -> None:
    commands: list[list[str]] = []
    with pytest.raises(BackendUnsupported, match="userspace backend"):
        _red_shaper(commands).apply(Shaping(rate_mbps=10, aqm="red"), create=False,
                                    previous=Shaping(rate_mbps=10))
    assert commands == [] and FakeNetNS.calls == []
