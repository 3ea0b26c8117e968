"""Fleet-service fixtures: a Fleet on a temporary store, API tokens for every role, and its HTTP app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet.api import create_app
from fleet.config import FleetConfig
from fleet.security import add_token
from fleet.service import Fleet


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "tokens.json"
    out = {role: add_token(path, f"{role}-user", [role]) for role in ("admin", "viewer", "inspector", "device")}
    out["file"] = str(path)
    return out


@pytest.fixture
def config(tmp_path: Path, keys: dict, tokens: dict) -> FleetConfig:
    return FleetConfig(data_dir=tmp_path / "fleet", trust_store=keys["trust"], tokens_file=Path(tokens["file"]),
                       public_url="http://fleet.test:8700")


class Published:
    """What the fleet published, in order (topic, payload, retain): the test broker for Fleet without MQTT."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def fleet(config: FleetConfig, published: Published) -> Iterator[Fleet]:
    f = Fleet(config, publish=published)
    yield f
    f.close()


@pytest.fixture
def client(fleet: Fleet) -> Iterator[TestClient]:
    with TestClient(create_app(fleet)) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
