"""The real fleet service (store, registry, rollout loop, HTTP artifacts through uvicorn) on a real Mosquitto, plus
in-process devices running the real agent against headless hosts. Shared by the integration test and the
rollout benchmark."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn

from edge.agent.config import AgentConfig
from edge.agent.headless import HeadlessHost
from edge.agent.runtime import Agent
from fleet.api import create_app
from fleet.config import FleetConfig
from fleet.security import add_token
from fleet.service import FleetService
from tests.conftest import free_port


class FleetRig:
    def __init__(self, workdir: Path, broker_url: str, trust: Path) -> None:
        self.workdir, self.trust = Path(workdir), trust
        self.tokens = self.workdir / "tokens.json"
        tokens = self.tokens
        self.config = FleetConfig(data_dir=self.workdir / "fleet", broker_url=broker_url, trust_store=trust,
                                  tokens_file=tokens, http_port=free_port(), rollout_tick_s=0.05)
        self.service = FleetService(self.config).start()
        self.fleet = self.service.fleet
        server_config = uvicorn.Config(create_app(self.fleet, lambda: self.service.ready), host="127.0.0.1",
                                       port=self.config.http_port, log_level="warning")
        self.server = uvicorn.Server(server_config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the fleet API did not start within 10 s"
        self.agents: dict[str, Agent] = {}
        self.broker_url = broker_url

    def add_devices(self, names: list[str], images: list[Path], load_models: bool = True, **config) -> None:
        for name in names:
            # one token per device: a device token downloads only artifacts of releases sent to that device
            agent_config = AgentConfig(broker_url=self.broker_url, releases_dir=self.workdir / name / "releases",
                                       trust_store=self.trust, http_token=add_token(self.tokens, name, ["device"]),
                                       reconnect_min_s=0.1, reconnect_max_s=1.0, publish_interval_s=0.05,
                                       fleet_keys=[self.fleet.control.public_file], **config)
            host = HeadlessHost(name, self.workdir / name, images, load_models=load_models)
            self.agents[name] = Agent(agent_config, host).start()

    def wait(self, cond, timeout: float, step: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(step)
        return cond()

    def reported_active(self, device: str) -> str | None:
        """What the fleet store says the device runs (from its reported state), once the activation ended."""
        row = self.fleet.store.get("devices", device) or {}
        import json

        activation = json.loads(row.get("activation") or "{}")
        return row.get("active") if activation.get("state") in ("committed", "failed", "idle") else None

    def all_active(self, ref: str, devices: list[str] | None = None) -> bool:
        return all(self.reported_active(d) == ref for d in (devices or list(self.agents)))

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.server.should_exit = True
        self.thread.join(10)
        self.service.stop()
