"""Namespace tests need root and the system tools; skip them with the reason otherwise."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# nsutil's checks (machine_unchanged) assert outside a test module: let pytest explain them.
pytest.register_assert_rewrite("tests.netns.nsutil")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, TAP devices); run `sudo make test`"
    elif shutil.which("mnexec") is None:
        reason = "Mininet is not installed; run `make setup`"
    here = Path(__file__).parent
    for item in items:
        if here not in Path(item.fspath).parents:
            continue  # the hook sees the whole session; only this folder's tests are ours
        item.add_marker(pytest.mark.netns)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
