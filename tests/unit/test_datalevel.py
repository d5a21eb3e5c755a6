"""Data-level analyses (DSS mappings, reinjections, out-of-order delay, one-way delay) on a
small MPTCP connection written with our own codecs and pcap writer, captured at both ends, and
dissected by tshark: every number below follows from the script of `_write_run`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import datalevel, metrics, report
from testbed.runtime.pcap import PcapWriter
from testbed.stack.mptcp import crypto
from testbed.stack.mptcp.options import (
    Dss,
    DssMapping,
    MpCapable,
    MpJoinAck,
    MpJoinSyn,
    MpJoinSynAck,
)
from testbed.stack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, emit_ethernet
from testbed.stack.wire.ipv4 import PROTO_TCP, Ipv4Packet, emit_ipv4, ip_from_str
from testbed.stack.wire.tcp import ACK, SYN, TcpSegment, emit_tcp

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

EPOCH = 1_700_000_000.0
KEY_CLIENT, KEY_SERVER = 0x1122334455667788, 0x99AABBCCDDEEFF00
IDSN = crypto.key_idsn(KEY_CLIENT)
SERVER = ("10.0.3.1", 5201)
SF0, SF1 = ("10.0.1.1", 40000), ("10.0.2.1", 40001)
ISN = {SF0: 1000, SF1: 2000}
SERVER_ISN = {SF0: 5000, SF1: 6000}
# Data A->B takes 10 ms between the two capture points, ACKs B->A 20 ms.
FORWARD_S, BACKWARD_S = 0.010, 0.020
CHUNK = 1000


class _Capture:
    """Both capture points of one connection: the client's and the server's interface."""

    def __init__(self) -> None:
        self.client: list[tuple[float, bytes]] = []
        self.server: list[tuple[float, bytes]] = []
        self.ids = {"client": 0, "server": 0}

    def _frame(self, src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int,
               flags: int, options: tuple[Any, ...], payload: bytes, ident: int,
               ttl: int) -> bytes:
        seg = TcpSegment(src[1], dst[1], seq, ack, flags, 65535,
                         tuple(o.to_tcp_option() for o in options), payload)
        tcp = emit_tcp(seg, ip_from_str(src[0]), ip_from_str(dst[0]))
        ip = emit_ipv4(Ipv4Packet(ip_from_str(src[0]), ip_from_str(dst[0]), PROTO_TCP, tcp,
                                  ttl=ttl, ident=ident))
        return emit_ethernet(EthernetFrame(bytes(6), bytes(5) + b"\x01", ETHERTYPE_IPV4, ip))

    def up(self, t: float, sf: tuple[str, int], seq: int, ack: int, flags: int,
           options: tuple[Any, ...], payload: bytes = b"", lost: bool = False) -> None:
        """Client to server: seen at the client at t, at the server 10 ms later (one router
        between them takes one off the TTL) unless lost on the way."""
        self.ids["client"] += 1
        ident = self.ids["client"]
        args = (sf, SERVER, seq, ack, flags, options, payload, ident)
        self.client.append((t, self._frame(*args, ttl=64)))
        if not lost:
            self.server.append((t + FORWARD_S, self._frame(*args, ttl=63)))

    def down(self, t: float, sf: tuple[str, int], seq: int, ack: int, flags: int,
             options: tuple[Any, ...]) -> None:
        """Server to client: seen at the server at t, at the client 20 ms later."""
        self.ids["server"] += 1
        args = (SERVER, sf, seq, ack, flags, options, b"", self.ids["server"])
        self.server.append((t, self._frame(*args, ttl=64)))
        self.client.append((t + BACKWARD_S, self._frame(*args, ttl=63)))

    def write(self, path: Path, frames: list[tuple[float, bytes]]) -> None:
        with PcapWriter(path, snaplen=128) as writer:
            for t, frame in sorted(frames, key=lambda f: f[0]):
                writer.write(frame, EPOCH + t)


def _data(cap: _Capture, t: float, sf: tuple[str, int], ssn: int, offset: int,
          lost: bool = False) -> None:
    """CHUNK bytes of the stream at data offset `offset`, as subflow bytes from `ssn`."""
    mapping = DssMapping(data_seq=(IDSN + 1 + offset) % 2**64, subflow_seq=ssn,
                         data_level_length=CHUNK)
    cap.up(t, sf, ISN[sf] + ssn, SERVER_ISN[sf] + 1, ACK, (Dss(mapping=mapping),),
           bytes([offset // CHUNK]) * CHUNK, lost=lost)


def _write_run(run: Path) -> None:
    cap = _Capture()
    # The initial subflow (RFC 8684 §3.1): keys in the handshake, then the first data with
    # MP_CAPABLE's data-level length and no DSN (it starts at IDSN + 1).
    cap.up(0.000, SF0, ISN[SF0], 0, SYN, (MpCapable(),))
    cap.down(0.010, SF0, SERVER_ISN[SF0], ISN[SF0] + 1, SYN | ACK,
             (MpCapable(sender_key=KEY_SERVER),))
    cap.up(0.040, SF0, ISN[SF0] + 1, SERVER_ISN[SF0] + 1, ACK,
           (MpCapable(sender_key=KEY_CLIENT, receiver_key=KEY_SERVER),))
    cap.up(0.100, SF0, ISN[SF0] + 1, SERVER_ISN[SF0] + 1, ACK,
           (MpCapable(sender_key=KEY_CLIENT, receiver_key=KEY_SERVER,
                      data_level_length=CHUNK),), bytes(CHUNK))
    # The join (§3.2).
    cap.up(0.050, SF1, ISN[SF1], 0, SYN,
           (MpJoinSyn(receiver_token=crypto.key_token(KEY_SERVER), sender_nonce=7,
                      address_id=1),))
    cap.down(0.060, SF1, SERVER_ISN[SF1], ISN[SF1] + 1, SYN | ACK,
             (MpJoinSynAck(sender_truncated_hmac=bytes(8), sender_nonce=9, address_id=0),))
    cap.up(0.090, SF1, ISN[SF1] + 1, SERVER_ISN[SF1] + 1, ACK,
           (MpJoinAck(sender_hmac=bytes(20)),))
    # Data: offsets 0-1999 on sf0, 2000-3999 on sf1 (the first of those lost), 4000 on sf0,
    # then sf0 carries 2000 again (a reinjection) and sf1 retransmits it itself (TCP's own
    # retransmission, a copy the receiver already has).
    _data(cap, 0.101, SF0, 1001, 1000)
    _data(cap, 0.102, SF1, 1, 2000, lost=True)
    _data(cap, 0.103, SF1, 1001, 3000)
    _data(cap, 0.104, SF0, 2001, 4000)
    cap.down(0.150, SF0, SERVER_ISN[SF0] + 1, ISN[SF0] + 3001, ACK,
             (Dss(data_ack=(IDSN + 1 + 2000) % 2**32),))
    _data(cap, 0.190, SF0, 3001, 2000)
    _data(cap, 0.200, SF1, 1, 2000)
    cap.down(0.260, SF1, SERVER_ISN[SF1] + 1, ISN[SF1] + 2001, ACK,
             (Dss(data_ack=(IDSN + 1 + 5000) % 2**32),))
    (run / "pcap").mkdir(parents=True)
    cap.write(run / "pcap" / "client-eth0.pcap", cap.client)
    cap.write(run / "pcap" / "server-eth0.pcap", cap.server)
    (run / "meta.json").write_text(json.dumps({"scenario": "aggregate", "stack": "kernel",
                                               "params": {}}))
    (run / "summary.json").write_text(json.dumps({"scenario": "aggregate", "stack": "kernel",
                                                  "fidelity_ok": True}))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("datalevel") / "run"
    _write_run(path)
    return path


@pytest.fixture(scope="module")
def packets(run: Path) -> dict[str, pd.DataFrame]:
    return {host: metrics.read_host_packets(run, host) for host in ("client", "server")}


def _sf(ends: tuple[str, int]) -> str:
    return datalevel.subflow_label(*ends, *SERVER)


def test_segments_are_mapped_to_data_sequence_numbers(packets: dict[str, pd.DataFrame]
                                                      ) -> None:
    sent = datalevel.data_segments(packets["client"])
    got = list(zip(sent["subflow"], sent["dsn"], sent["dsn_end"], strict=True))
    assert got == [(_sf(SF0), 0, 1000), (_sf(SF0), 1000, 2000), (_sf(SF1), 2000, 3000),
                   (_sf(SF1), 3000, 4000), (_sf(SF0), 4000, 5000), (_sf(SF0), 2000, 3000),
                   (_sf(SF1), 2000, 3000)]
    assert list(sent["retransmission"]) == [False] * 6 + [True]
    received = datalevel.data_segments(packets["server"])
    assert len(received) == 6  # the lost segment never arrived
    summary = {row["subflow"]: row for row in datalevel.mapping_summary(sent)}
    assert summary[_sf(SF0)]["bytes"] == 4000 and summary[_sf(SF1)]["segments"] == 3


def test_capture_side_comes_from_the_ttl(packets: dict[str, pd.DataFrame]) -> None:
    assert datalevel.sending_side(packets["client"]) is True
    assert datalevel.sending_side(packets["server"]) is False


def test_reinjection_found_at_the_sender(packets: dict[str, pd.DataFrame]) -> None:
    found = datalevel.reinjections(datalevel.data_segments(packets["client"]))
    assert len(found) == 1
    row = found.iloc[0]
    assert (row["dsn"], row["bytes"]) == (2000, 1000)
    assert (row["from_subflow"], row["to_subflow"]) == (_sf(SF1), _sf(SF0))
    assert row["time_s"] == pytest.approx(0.190, abs=1e-5)
    numbers = datalevel.reinjection_summary(found)
    assert numbers["bytes"] == 1000 and numbers["by_pair"][0]["from"] == _sf(SF1)


def test_out_of_order_delay_at_the_receiver(packets: dict[str, pd.DataFrame]) -> None:
    delays = datalevel.ooo_delay(datalevel.data_segments(packets["server"]))
    by_dsn = {int(r.dsn): (r.subflow, r.delay_s) for r in delays.itertuples()}
    # The copy sf1 retransmitted arrives after sf0's reinjection: nothing new, not counted.
    assert sorted(by_dsn) == [0, 1000, 2000, 3000, 4000]
    assert by_dsn[0][1] == 0 and by_dsn[1000][1] == 0 and by_dsn[2000][1] == 0
    # Held from their arrival (103 and 104 ms + 10) until the hole filled (190 + 10 ms).
    assert by_dsn[3000] == (_sf(SF1), pytest.approx(0.087, abs=1e-5))
    assert by_dsn[4000] == (_sf(SF0), pytest.approx(0.086, abs=1e-5))
    summary = {row["subflow"]: row for row in datalevel.ooo_summary(delays)}
    assert summary[_sf(SF0)]["out_of_order_segments"] == 1
    assert summary[_sf(SF0)]["segments"] == 4
    assert summary[_sf(SF1)]["max_ms"] == pytest.approx(87.0, abs=0.01)


def test_a_hole_never_filled_leaves_the_delay_unknown() -> None:
    segments = pd.DataFrame({
        "time_epoch": [1.0, 1.1], "time_s": [0.0, 0.1], "mptcp_stream": [0, 0],
        "tcp_stream": [0, 1], "subflow": ["a", "b"], "dsn": [0, 2000], "dsn_end": [1000, 3000]})
    delays = datalevel.ooo_delay(segments)
    assert delays["delay_s"].iloc[0] == 0 and pd.isna(delays["delay_s"].iloc[1])
    assert datalevel.ooo_summary(delays)[1]["never_completed"] == 1


def test_one_way_delay_matches_packets_between_capture_points(
        packets: dict[str, pd.DataFrame]) -> None:
    owd = datalevel.one_way_delay(packets["client"], packets["server"], "client", "server")
    forward = owd[owd["upstream"] == "client"]
    backward = owd[owd["upstream"] == "server"]
    # 11 packets left the client, one was lost; 4 came back from the server.
    assert (len(forward), len(backward)) == (10, 4)
    assert forward["owd_s"].to_numpy() == pytest.approx([FORWARD_S] * 10, abs=2e-6)
    assert backward["owd_s"].to_numpy() == pytest.approx([BACKWARD_S] * 4, abs=2e-6)
    # ACKs of a subflow carry the name of its data direction.
    assert set(owd["subflow"]) == {_sf(SF0), _sf(SF1)}
    rows = {(r["subflow"], r["from"]): r for r in datalevel.owd_summary(owd)}
    assert rows[(_sf(SF1), "server")]["median_ms"] == pytest.approx(20.0, abs=0.01)


def test_analyze_writes_figures_and_numbers(run: Path, tmp_path: Path) -> None:
    numbers, written = datalevel.analyze(run, {}, {"fidelity_ok": True}, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        f"{name}.{ext}" for name in datalevel.FIGURES for ext in ("png", "pdf"))
    assert numbers["reinjections"]["captured_at"] == "client"
    assert numbers["out_of_order"]["captured_at"] == "server"
    assert numbers["one_way_delay"]["between"] == ["client", "server"]
    assert numbers["hosts"]["client"]["role"] == "sender" and numbers["notes"] == []
    lines = report._datalevel_lines(numbers)
    assert lines[0].startswith("- reinjections (at `client`): 1000 bytes in 1 range(s)")


def test_one_capture_point_says_what_is_missing(run: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    (single / "pcap").mkdir(parents=True)
    shutil.copy(run / "pcap" / "client-eth0.pcap", single / "pcap" / "client-eth0.pcap")
    numbers, written = datalevel.analyze(single, {}, {}, tmp_path / "figures")
    assert [p.stem for p in written] == ["sequence", "sequence"]
    assert "out_of_order" not in numbers and "one_way_delay" not in numbers
    assert any("receiver" in note for note in numbers["notes"])
    assert any("one host only" in note for note in numbers["notes"])


def test_plain_tcp_has_no_data_level(tmp_path: Path) -> None:
    cap = _Capture()
    cap.up(0.0, SF0, ISN[SF0], 0, SYN, ())
    cap.down(0.01, SF0, SERVER_ISN[SF0], ISN[SF0] + 1, SYN | ACK, ())
    for n in range(3):
        cap.up(0.05 + n * 0.001, SF0, ISN[SF0] + 1 + n * CHUNK, SERVER_ISN[SF0] + 1, ACK, (),
               bytes(CHUNK))
    run = tmp_path / "tcp"
    (run / "pcap").mkdir(parents=True)
    cap.write(run / "pcap" / "client-eth0.pcap", cap.client)
    cap.write(run / "pcap" / "server-eth0.pcap", cap.server)
    numbers, written = datalevel.analyze(run, {}, {}, tmp_path / "figures")
    assert datalevel.data_segments(metrics.read_host_packets(run, "client")).empty
    assert "reinjections" not in numbers and "out_of_order" not in numbers
    assert any("no MPTCP data mapped" in note for note in numbers["notes"])
    # One-way delay needs no MPTCP: the plain subflow's packets are matched too.
    assert [p.stem for p in written] == ["owd", "owd"]
    medians = sorted(r["median_ms"] for r in numbers["one_way_delay"]["subflows"])
    assert medians == pytest.approx([10.0, 20.0], abs=0.01)
