"""Dashboard test fixtures: a populated fleet (tests/dashboard/world.py) on a temporary store with a token per
role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.security import add_token
from fleet.service import Fleet
from tests.dashboard.world import populate


@pytest.fixture
def world(tmp_path: Path, bundles, keys) -> Iterator[tuple[Fleet, dict[str, str], list]]:
    tokens_file = tmp_path / "tokens.json"
    tokens = {r: add_token(tokens_file, f"{r}-user", [r]) for r in ("admin", "viewer", "inspector")}
    published: list = []
    fleet = Fleet(FleetConfig(data_dir=tmp_path / "fleet", trust_store=keys["trust"], tokens_file=tokens_file,
                              public_url="http://fleet.test"), publish=lambda t, p, r: published.append((t, p, r)))
    populate(fleet, bundles["pcb-aoi"])
    yield fleet, tokens, published
    fleet.close()
