"""Fleet-service fixtures: a Fleet on a temporary store, API tokens for every role, and its HTTP app.

Every test that uses `config` (so `fleet`, `client`, and each service the tests start) runs twice: on SQLite (the
embedded default, a file in the test's data directory) and on PostgreSQL (a server started once per session from
Debian's binaries, a fresh database per test copied from a template the migrations made once)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet.api import create_app
from fleet.config import FleetConfig
from fleet.security import add_token
from fleet.service import Fleet
from fleet.store import Store
from tests.postgres import PostgresServer


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "tokens.json"
    out = {role: add_token(path, f"{role}-user", [role]) for role in ("admin", "viewer", "inspector", "device")}
    out["file"] = str(path)
    return out


TEMPLATE = "fleet_template"
_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (initdb takes seconds) with a migrated template database."""
    server = PostgresServer().start()
    try:
        Store(server.create_database(TEMPLATE)).close()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The test's store: None (SQLite in the data directory, the default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"t{os.getpid()}_{next(_databases)}"
    url = server.create_database(name, template=TEMPLATE)
    yield url
    # FORCE: a service a test killed may still hold a connection until the server notices
    server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def config(tmp_path: Path, keys: dict, tokens: dict, store_url: str | None) -> FleetConfig:
    return FleetConfig(data_dir=tmp_path / "fleet", trust_store=keys["trust"], tokens_file=Path(tokens["file"]),
                       public_url="http://fleet.test:8700", store_url=store_url)


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
