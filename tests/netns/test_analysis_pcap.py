"""Analysis against a real kernel MPTCP capture: two namespaces, two veth paths, tshark decoding.

The fixture builds on nsutil, not on the emulation layer: holder processes own the namespaces,
so teardown is "kill these pids", and nothing here depends on named netns files or on Mininet.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from analysis import metrics, tshark
from tests.netns.nsutil import mptcp_two_paths, namespaces, reaped, tcpdump

pytestmark = pytest.mark.netns

IPPROTO_MPTCP = 262
TRANSFER_BYTES = 4 * 1024 * 1024
SERVER_PORT = 5201

# Path 1 carries the initial subflow, path 2 the MP_JOIN from the client's second address.
CLIENT_ADDRS = ("10.31.1.1", "10.31.2.1")
SERVER_ADDRS = ("10.31.1.2", "10.31.2.2")

_SERVER_CODE = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

# The sender pauses after connect so the path manager has time to open the second subflow
# before data flows, and again before close so the join is never raced by the DATA_FIN.
_CLIENT_CODE = r"""
import hashlib, socket, sys, time
n = int(sys.argv[3])
data = (bytes(range(256)) * (n // 256 + 1))[:n]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.connect((sys.argv[1], int(sys.argv[2])))
time.sleep(0.2)
s.sendall(data)
time.sleep(0.2)
s.close()
print(n, hashlib.sha256(data).hexdigest(), flush=True)
"""


@dataclass
class Capture:
    """What the fixture produced: pcaps per client interface and the transfer's ground truth."""

    pcaps: list[Path]
    bytes_sent: int
    sha256_sent: str
    sha256_received: str


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("unshare", "nsenter", "ip", "tcpdump", "ethtool", "tshark"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def make_capture(out_dir: Path) -> Iterator[Capture]:
    """Build namespaces, run one kernel MPTCP transfer under tcpdump, yield, then tear down."""
    suffix = str(os.getpid() % 10000)
    with namespaces("client", "server") as (client, server):
        # Offloads off so every captured frame is one wire segment, as the contract says.
        client_ifs = mptcp_two_paths(
            client, server, CLIENT_ADDRS, SERVER_ADDRS,
            [(f"c{suffix}e{i}", f"s{suffix}e{i}") for i in (0, 1)],
            route_to=f"{SERVER_ADDRS[0].rsplit('.', 1)[0]}.0/24")
        pcaps = [out_dir / f"client-{ifname}.pcap" for ifname in client_ifs]
        with tcpdump(client, list(zip(client_ifs, pcaps, strict=True)), snaplen=128):
            with reaped(server.popen([sys.executable, "-c", _SERVER_CODE, str(SERVER_PORT)],
                                     stdout=subprocess.PIPE, text=True)) as srv:
                assert srv.stdout is not None
                assert srv.stdout.readline().strip() == "listening"
                sent = client.run([sys.executable, "-c", _CLIENT_CODE, SERVER_ADDRS[0],
                                   str(SERVER_PORT), str(TRANSFER_BYTES)]).split()
                received = srv.communicate(timeout=30)[0].split()
            time.sleep(0.3)  # the final ACKs and FINs
        assert int(received[0]) == TRANSFER_BYTES
        yield Capture(pcaps, int(sent[0]), sent[1], received[1])


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    _need_root_tools()
    yield from make_capture(tmp_path_factory.mktemp("pcap"))


@pytest.fixture(scope="module")
def per_pcap(capture: Capture) -> dict[Path, pd.DataFrame]:
    return {pcap: tshark.read_pcap(pcap) for pcap in capture.pcaps}


@pytest.fixture(scope="module")
def merged(capture: Capture) -> pd.DataFrame:
    # Both client interfaces dissected as one, so the join is tied to its connection's keys.
    return tshark.read_merged(capture.pcaps, capture.pcaps[0].parent / "client.all.csv.gz")


def test_transfer_was_intact(capture: Capture) -> None:
    assert capture.sha256_sent == capture.sha256_received
    assert hashlib.sha256(b"").hexdigest() != capture.sha256_sent


def test_mptcp_options_seen(merged: pd.DataFrame) -> None:
    counts = metrics.option_counts(merged)
    assert counts["MP_CAPABLE"] > 0
    assert counts["MP_JOIN"] > 0
    assert counts["DSS"] > 0
    join_syn = merged[merged["mp_join"] & merged["syn"] & ~merged["ack"]]
    assert join_syn["join_token"].notna().all()
    assert join_syn["address_id"].notna().all()


def test_two_subflows_in_one_connection(merged: pd.DataFrame) -> None:
    per_conn = metrics.subflows_per_connection(merged)
    assert len(per_conn) == 1
    assert int(per_conn.iloc[0]) == 2
    table = metrics.subflows(merged)
    assert sorted(table["join"]) == [False, True]


def test_data_direction_covers_bytes_sent(capture: Capture, merged: pd.DataFrame) -> None:
    data = merged[merged["tcp_dstport"] == SERVER_PORT]
    fresh = data[~data["retransmission"]]
    # MP_CAPABLE's data-carrying third ACK and the DSS mappings all count: every byte
    # handed to the socket crossed one of the two captured interfaces at least once.
    assert int(fresh["tcp_len"].sum()) >= capture.bytes_sent
    assert merged["dsn"].notna().any()
    assert merged.loc[merged["data_fin"]].shape[0] >= 1


def test_throughput_sums_to_payload(merged: pd.DataFrame) -> None:
    tput = metrics.throughput(merged)
    total = tput[tput["subflow"] == metrics.TOTAL_LABEL]["bytes"].sum()
    assert int(total) == int(metrics.subflows(merged)["bytes"].sum())


def test_no_malformed_packet(per_pcap: dict[Path, pd.DataFrame], merged: pd.DataFrame) -> None:
    assert not merged["malformed"].any()
    for pcap, df in per_pcap.items():
        assert len(df) > 0, pcap
        bad = df[df["malformed"]]
        assert bad.empty, f"{pcap}: {bad[['frame', 'expert_message']].to_string()}"


def test_cache_is_reused(capture: Capture) -> None:
    pcap = capture.pcaps[0]
    tshark.read_pcap(pcap)
    cache = tshark.cache_path(pcap)
    assert cache.exists()
    mtime = cache.stat().st_mtime_ns
    again = tshark.read_pcap(pcap)
    assert cache.stat().st_mtime_ns == mtime
    assert len(again) > 0
