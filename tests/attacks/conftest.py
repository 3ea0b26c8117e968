"""The attack catalogue's tally and rigs. Every case runs inside `attack(...)`: it counts as tried when it starts
and as refused only if the block finishes, i.e. every assertion that the attack had no effect held. Records an
honest device sent that never reached the store are added with `.lost(n)`. The run ends with one line:
`attack catalogue: N tried / M refused / K records lost`.

Brokers: the same credentials directory (fleet/credentials.py) serves a real Mosquitto started with the generated
config (fleet/mosquitto.py) and the embedded broker; `broker` is parametrised over both."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.credentials import FLEET_USER
from fleet.protocol import Topics
from fleet.service import FleetService
from tests.attacks.brokers import Creds, GeneratedMosquitto, make_creds
from tests.conftest import free_port

TALLY = pytest.StashKey["Tally"]()


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    lost: int = 0
    failed: list[str] = field(default_factory=list)


class Attack:
    def __init__(self, name: str) -> None:
        self.name = name
        self.records_lost = 0

    def lost(self, n: int) -> None:
        """Records an honest device got acknowledged that the fleet never stored (0 is the goal)."""
        self.records_lost += n


@pytest.fixture
def attack(request: pytest.FixtureRequest):
    tally: Tally = request.config.stash[TALLY]

    @contextmanager
    def run(name: str) -> Iterator[Attack]:
        a = Attack(name)
        tally.tried += 1
        try:
            yield a
        except BaseException:
            tally.failed.append(name)
            tally.lost += a.records_lost
            raise
        tally.lost += a.records_lost
        if a.records_lost:
            tally.failed.append(f"{name} ({a.records_lost} records lost)")
        else:
            tally.refused += 1

    return run


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TALLY] = Tally()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    tally = config.stash.get(TALLY, None)
    if tally is None or not tally.tried:
        return
    terminalreporter.write_sep("=", "attack catalogue")
    terminalreporter.write_line(f"attack catalogue: {tally.tried} tried / {tally.refused} refused / "
                                f"{tally.lost} records lost")
    for name in tally.failed:
        terminalreporter.write_line(f"  NOT refused: {name}")


@dataclass
class Rig:
    """A real fleet service on a real broker of `kind`, with per-device credentials for DEVICES."""

    kind: str
    url: str
    creds: Creds
    service: FleetService
    mosquitto: GeneratedMosquitto | None = None

    @property
    def fleet(self):
        return self.service.fleet

    @property
    def topics(self) -> Topics:
        return self.creds.topics

    def password(self, user: str) -> str:
        return self.creds.passwords[user]


def start_rig(kind: str, tmp: Path, config: FleetConfig) -> Rig:
    topics = Topics()
    creds = make_creds(tmp / "broker-creds", topics)
    if kind == "mosquitto":
        mosq = GeneratedMosquitto(tmp / "mosquitto", creds).start()
        svc = FleetService(config.model_copy(update={
            "broker_url": mosq.url, "mqtt_username": FLEET_USER, "mqtt_password": creds.passwords[FLEET_USER],
            "data_dir": tmp / "fleet"})).start()
        return Rig(kind, mosq.url, creds, svc, mosq)
    port = free_port()
    svc = FleetService(config.model_copy(update={
        "broker_url": None, "embedded_broker_port": port, "broker_credentials_dir": creds.directory,
        "data_dir": tmp / "fleet"})).start()
    return Rig(kind, f"mqtt://127.0.0.1:{port}", creds, svc)


@pytest.fixture(params=["mosquitto", "embedded"])
def rig(request: pytest.FixtureRequest, tmp_path: Path, config: FleetConfig) -> Iterator[Rig]:
    r = start_rig(request.param, tmp_path, config.model_copy(update={"monitor_interval_s": 0}))
    try:
        yield r
    finally:
        r.service.stop()
        if r.mosquitto is not None:
            r.mosquitto.stop()


# fixtures of the fleet tests (a FleetConfig on a temporary store, tokens for every role, the API client)
from tests.fleet import conftest as _fleet  # noqa: E402

client, config, fleet, published, tokens = _fleet.client, _fleet.config, _fleet.fleet, _fleet.published, _fleet.tokens


@pytest.fixture
def store_url() -> None:
    """The attacks run on the embedded default store (SQLite): what they probe is the broker and the HTTP edge,
    which are the same whichever store is behind (tests/fleet runs the store contract on both)."""
    return None
