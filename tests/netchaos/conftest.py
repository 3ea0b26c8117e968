"""Fixtures of the hostile-network tests: the lab of network namespaces (skipped, saying why, only where it cannot
be built) and the agent tests' signed bundle tars."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agent.conftest import tars  # noqa: F401  (signed PCB bundle tars v1.0 and v1.1, session-scoped)
from tests.netchaos.netlab import NetLab, remove_stale, unavailable


@pytest.fixture(scope="session")
def netlab_possible() -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(f"hostile-network tests need network namespaces: {why}")
    remove_stale()


@pytest.fixture(scope="module")
def netlab(netlab_possible: None) -> Iterator[NetLab]:
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
        left = lab.leftovers()
        assert not left, f"the lab left these behind: {left}"
