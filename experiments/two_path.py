"""What the scenarios on the two-path topology (topologies/two_path.py, and its middlebox
variant) have in common: the client's first address carries the initial subflow, its second is
a `subflow` endpoint the client joins from, and the workload moves the parameters' `size_mib`
in their `direction`."""

from __future__ import annotations

from typing import Any

from experiments.scenario import Workload
from testbed.stacks.base import Endpoint
from topologies.two_path import CLIENT_ADDRS, SERVER_ADDR


class TwoPathTransfer:
    """A mixin for a Scenario whose params have `size_mib` and `direction`; put it before
    Scenario among the bases."""

    params: Any

    def server_address(self) -> str:
        return SERVER_ADDR

    def client_endpoints(self) -> list[Endpoint]:
        return [Endpoint(addr=CLIENT_ADDRS[1], dev="client-eth1", flags=frozenset({"subflow"}))]

    def workload(self) -> Workload:
        return Workload(direction=self.params.direction,
                        bytes=round(self.params.size_mib * 1024 * 1024))

    def default_capture_points(self) -> list[tuple[str, str]]:
        return [("client", "client-eth0"), ("client", "client-eth1")]
