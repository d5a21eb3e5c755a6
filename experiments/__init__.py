"""Scenarios, the runner and the results directory."""

from __future__ import annotations

from experiments.aggregate import Aggregate
from experiments.datacenter import Datacenter
from experiments.fairness import Fairness
from experiments.handover import Handover
from experiments.middlebox import Middlebox
from experiments.mobility import Mobility
from experiments.multi_wifi import MultiWifi
from experiments.receive_buffer import ReceiveBuffer
from experiments.scenario import Scenario
from experiments.vm_migration import VmMigration
from testbed.errors import ParameterError

SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in (Aggregate, VmMigration,
                                                                      MultiWifi, Handover,
                                                                      Mobility, Middlebox,
                                                                      ReceiveBuffer, Datacenter,
                                                                      Fairness)}


def get_scenario(name: str) -> type[Scenario]:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ParameterError(
            f"unknown scenario {name!r}; available: {', '.join(sorted(SCENARIOS))}"
        ) from None
