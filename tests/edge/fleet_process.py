"""A real fleet service process for device-side tests: `shadowline fleet serve --config` with its embedded broker,
device broker credentials and API tokens (an admin token and one device token per device)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleet.protocol import Topics
from fleet.security import add_token, provision
from tests.conftest import free_port, until

ROOT = Path(__file__).resolve().parents[2]


class FleetProcess:
    """`shadowline fleet serve --config` with its embedded broker, device credentials and tokens."""

    def __init__(self, workdir: Path, trust: Path, devices: list[str], http_port: int | None = None,
                 **config: Any) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.tokens = workdir / "tokens.json"
        self.admin = add_token(self.tokens, "ops", ["admin"])
        self.device_tokens = {d: add_token(self.tokens, d, ["device"], device=d) for d in devices}
        self.creds = provision(workdir / "broker", devices, Topics())
        self.http_port, self.mqtt_port = http_port or free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.data = workdir / "fleet-data"
        cfg = {"data_dir": str(self.data), "trust_store": str(trust), "tokens_file": str(self.tokens),
               "http_port": self.http_port, "embedded_broker_port": self.mqtt_port,
               "broker_credentials_dir": str(workdir / "broker"), "monitor_interval_s": 0, **config}
        self.config = workdir / "fleet.json"
        self.config.write_text(json.dumps(cfg))
        self.log = open(workdir / "fleet.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--config",
                                      str(self.config)], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc.poll() is None, (workdir / "fleet.log").read_text()[-3000:]
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        until(ready, 60, "fleet serve to be ready")

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.url + path, params=params, headers={"Authorization": f"Bearer {self.admin}"}, timeout=30)
        r.raise_for_status()
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.content

    def device_section(self, device: str, home: Path) -> dict[str, Any]:
        (home / "broker-password").write_text(self.creds[device].password + "\n")
        return {"broker_url": f"mqtt://127.0.0.1:{self.mqtt_port}", "releases_dir": "releases",
                "http_token": self.device_tokens[device], "password_file": "broker-password",
                "reconnect_min_s": 0.2, "reconnect_max_s": 2.0, "publish_interval_s": 0.1}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def fleet_process(tmp_path: Path, keys) -> Iterator[Callable[..., FleetProcess]]:
    started: list[FleetProcess] = []

    def start(devices: list[str], **config: Any) -> FleetProcess:
        f = FleetProcess(tmp_path / f"fleet{len(started)}", keys["trust"], devices, **config)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


