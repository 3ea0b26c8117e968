"""Capability records: `shadowline hwbench --publish` on the real PCB bundle sends an EventRecord(kind="capability")
through a real Mosquitto to a running fleet service, which stores it; the latest record per device is served by
the API and summarised on the dashboard's devices page."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from fleet.api import create_app
from fleet.protocol import EventRecord
from fleet.service import FleetService
from hwbench.publish import PublishTarget, publish
from shadowline.cli import main
from tests.fleet.conftest import auth
from tests.fleet.devicesim import wait_for

FAST = ["--warmup", "1", "--iterations", "5", "--seconds", "0", "--quiet"]


def test_published_capability_is_stored_served_and_shown(config, mosquitto, bundles, tokens, tmp_path):
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "monitor_interval_s": 0})).start()
    try:
        fleet = svc.fleet
        for d in ("cam-1", "cam-2"):
            fleet.devices.add(d, groups=["line"])
        rc = main(["hwbench", str(bundles["pcb-aoi"]), "--batch-sizes", "1", "--precisions", "fp32", *FAST,
                   "--out", str(tmp_path), "--publish", "--broker", mosquitto.url, "--device-id", "cam-1"])
        assert rc == 0
        wait_for(lambda: "cam-1" in fleet.store.latest_events("capability"), 30, "the capability record stored")
        stored = fleet.store.latest_events("capability")["cam-1"]
        report = json.loads((tmp_path / "hwbench-pcb-aoi-v1.0.json").read_text())
        (measured,) = [c for c in report["configs"] if c["status"] == "ok"]
        assert stored.detail["bundle"] == "pcb-aoi-v1.0" and stored.detail["configs"][0]["id"] == measured["id"]

        # a later record from the same device replaces it on the page; another device's garbage still renders
        newer = {**stored.detail, "measured_at": "2099-01-01T00:00:00+00:00",
                 "configs": [{**stored.detail["configs"][0], "p95_ms": 7.25, "throughput_ips": 131.0}]}
        publish(PublishTarget(broker_url=mosquitto.url, device_id="cam-1"), newer)
        publish(PublishTarget(broker_url=mosquitto.url, device_id="cam-2"), {"configs": "not a list", "verdicts": 3})
        wait_for(lambda: len(list(fleet.store.events(kind="capability"))) == 3, 30, "all three records stored")
        latest = fleet.store.latest_events("capability")
        assert latest["cam-1"].detail["measured_at"] == "2099-01-01T00:00:00+00:00" and set(latest) == {"cam-1", "cam-2"}

        client = TestClient(create_app(fleet))
        r = client.get("/api/devices/cam-1/capability", headers=auth(tokens["viewer"]))
        assert r.status_code == 200 and EventRecord.model_validate(r.json()).id == latest["cam-1"].id
        assert client.get("/api/devices/cam-9/capability", headers=auth(tokens["viewer"])).status_code == 404

        login = client.post("/dashboard/login", data={"token": tokens["viewer"], "next": "/dashboard/"},
                            follow_redirects=False)
        assert login.status_code == 303
        html = client.get("/dashboard/").text
        rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr>(?:(?!</tr>).)*?>(cam-\d)</a>.*?</tr>", html, re.S)}
        cell = rows["cam-1"]
        assert "capability" in html and "pcb-aoi-v1.0" in cell and f"{measured['id']}: P95 7.25 ms" in cell
        assert "2099-01-01" in cell
        for target, v in stored.detail["verdicts"].items():
            assert f"{target} {v['status']}" in cell
        assert "no configuration measured" in rows["cam-2"]
    finally:
        svc.stop()
