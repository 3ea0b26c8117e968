"""Two fleet service instances on one store (API replicas), on both backends: the rollout loop runs in the one
elected through the store (PostgreSQL advisory lock; SQLite lock file), the other serves the API. Chaos: kill -9
the leader mid-rollout; the other instance takes over and finishes the rollout; no wave runs twice (each device
got exactly one desired revision from the rollout), nothing is lost (every prediction the devices sent is stored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from fleet.config import FleetConfig
from fleet.protocol import ReleaseSpec, StageSpec
from fleet.service import Fleet, leadership
from tests.conftest import free_port
from tests.fleet.devicesim import SimFleet, wait_for

DEVICES = [f"cam-{i:02d}" for i in range(20)]
PER_REPORT = 30


class Instance:
    """One `shadowline fleet serve` process with its own client id, name and HTTP port."""

    def __init__(self, tmp: Path, name: str, base: dict) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**base, "client_id": name, "instance_name": name, "http_port": self.port}))
        self.proc = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "ab"))

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def test_one_leader_at_a_time_and_the_lock_goes_with_its_holder(fleet):
    store = fleet.store
    a, b = leadership(store, "a"), leadership(store, "b")
    try:
        assert who_leads(store) is None
        assert a.try_acquire() and a.try_acquire() and a.held()
        assert not b.try_acquire() and not b.held()
        assert who_leads(store) == "a"
        a.release()
        assert not a.held() and who_leads(store) is None
        assert b.try_acquire() and who_leads(store) == "b"
        if store.dialect == "postgresql":
            # the leader's session ends (as when its process dies or its network goes): the server frees the lock,
            # the old leader sees it at its next check, and another instance can take over
            store.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
                          ("shadowline-fleet:b",))
            wait_for(lambda: not b.held(), 10, "b to notice it lost its session")
            assert a.try_acquire() and who_leads(store) == "a"
    finally:
        a.release()
        b.release()


def who_leads(store) -> str | None:
    return leadership(store, "observer").current()


@pytest.mark.slow
def test_kill9_leader_mid_rollout_the_other_instance_finishes_it(tmp_path, config: FleetConfig, mosquitto, bundles,
                                                                 tokens):
    base = {"data_dir": str(config.data_dir), "store_url": config.store_url, "broker_url": mosquitto.url,
            "trust_store": str(config.trust_store), "tokens_file": str(config.tokens_file),
            "rollout_tick_s": 0.05, "leader_check_s": 0.3, "monitor_interval_s": 0}
    fleet = Fleet(config)  # the test's own view of the shared store (no MQTT)
    who = leadership(fleet.store, "observer")
    instances: list[Instance] = []
    sims = None
    try:
        bundle = fleet.registry.push(bundles["pcb-aoi"])["id"]
        fleet.releases.create(ReleaseSpec(name="seal", stages=[StageSpec(role="verify", bundle=bundle)]))
        for d in DEVICES:
            fleet.devices.add(d, groups=["line-1"])
        a = Instance(tmp_path, "fleet-a", base)
        instances.append(a)
        wait_for(a.ready, 60, "instance a ready")
        wait_for(lambda: who.current() == "fleet-a", 30, "instance a to lead")
        b = Instance(tmp_path, "fleet-b", base)
        instances.append(b)
        wait_for(b.ready, 60, "instance b ready (a standby serves the API too)")
        assert who.current() == "fleet-a"
        sims = SimFleet(mosquitto.url, fleet.topics, DEVICES, predictions_per_report=PER_REPORT)
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        gates = {"soak_s": 1.5, "wave_timeout_s": 120, "min_predictions": 1000, "min_reviews": 1000}
        # started through the standby's API: any replica takes commands, the leader's loop runs the waves
        ro = httpx.post(f"{b.url}/api/rollouts", headers=admin, timeout=30,
                        json={"release": "seal@1", "group": "line-1", "waves": ["2", "25%", "50%", "100%"],
                              "gates": gates}).json()
        rid = ro["id"]
        status = lambda: httpx.get(f"{b.url}/api/rollouts/{rid}", headers=admin, timeout=30).json()
        wait_for(lambda: status()["wave"] >= 1, 60, "the rollout's second wave")
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
        killed_in_wave = status()["wave"]
        wait_for(lambda: who.current() == "fleet-b", 30, "instance b to take over")
        wait_for(lambda: status()["state"] != "running", 120, "the rollout to finish")
        st = status()
        assert st["state"] == "completed" and st["counts"] == {"active": len(DEVICES)}, st
        assert killed_in_wave < len(st["sizes"]) - 1  # the kill landed before the last wave: mid-rollout
        # no wave ran twice: each wave started once, in order, and each device was sent exactly one desired state
        plan = json.loads(fleet.store.get("rollouts", rid)["plan"])
        assert [w["wave"] for w in plan["waves"]] == list(range(len(st["sizes"])))
        sent = fleet.store.rows("SELECT device, count(*) AS n FROM desired_history WHERE rollout = ? GROUP BY device "
                                "ORDER BY device", (rid,))
        assert sent == [{"device": d, "n": 1} for d in DEVICES]
        assert set(sims.active.values()) == {"seal@1"} and not sims.errors
        # nothing lost: every device's predictions (sent once it activated) are stored, once
        wait_for(lambda: fleet.store.count("predictions") >= len(DEVICES) * PER_REPORT, 60, "every prediction")
        assert fleet.store.count("predictions") == len(DEVICES) * PER_REPORT
        print(f"leader-kill: killed fleet-a in wave {killed_in_wave} of {len(st['sizes'])}; fleet-b took over and "
              f"completed; {len(DEVICES)} devices, 1 desired state each, {len(DEVICES) * PER_REPORT} predictions "
              "stored, 0 lost, 0 duplicated")
    finally:
        if sims is not None:
            sims.stop()
        for i in instances:
            i.stop()
        fleet.close()
