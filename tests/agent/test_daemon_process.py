"""A real daemon process (`shadowline edge run`) with a `fleet:` section: the agent inside it follows a desired
state, the daemon's predictions leave through the outbox, and after kill -9 the daemon comes back on the committed
release without downloading it again."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from fleet.protocol import Topics
from tests.agent.conftest import PCB_IMAGES, desired_for, signed
from tests.agent.mqtt_helpers import Collector, connect
from tests.conftest import ROOT


def start_daemon(config):
    return subprocess.Popen([sys.executable, "-m", "shadowline.cli", "edge", "run", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_daemon_follows_fleet_and_streams_predictions(tmp_path, mosquitto, keys, tars, artifact_server):
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": "line3-cam1",
        "trust_store": str(keys["trust"]),
        "sources": [{"type": "folder", "path": str(tmp_path / "inbox"), "poll_s": 0.1, "settle_s": 0.1}],
        "store": {"path": str(tmp_path / "shadowline.db")},
        "api": {"enabled": False},
        "fleet": {"broker_url": mosquitto.url, "releases_dir": str(tmp_path / "releases"),
                  "trust_store": str(keys["trust"]), "fleet_keys": [str(keys["control_public"])],
                  "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                  "publish_interval_s": 0.05, "smoke_images": 1},
    }))
    col = Collector(mosquitto.port)
    fleet = connect(mosquitto.port, "fleet-standin")
    proc = start_daemon(config)
    try:
        assert col.wait(lambda: col.status.get("line3-cam1") == "online", 30), proc.stderr.read1().decode()
        desired = desired_for(artifact_server, tars["v1.0"], "line3-cam1", 1)
        fleet.publish(Topics().device("line3-cam1", "desired"), signed(desired, keys), qos=1,
                      retain=True).wait_for_publish(5)
        assert col.wait(lambda: (col.reported.get("line3-cam1") or {}).get("active") == "pcb-screen@1", 60)
        for image in PCB_IMAGES:
            shutil.copy(image, tmp_path / "inbox" / image.name)

        def predictions():
            with col.lock:
                return [r for r in col.records.values() if r["_kind"] == "predictions"]
        assert col.wait(lambda: len(predictions()) == len(PCB_IMAGES), 30)
        assert {p["release"] for p in predictions()} == {"pcb-screen"}

        requests = len(artifact_server.requests)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert col.wait(lambda: col.status.get("line3-cam1") == "offline", 60), "last will"
        proc = start_daemon(config)
        assert col.wait(lambda: col.status.get("line3-cam1") == "online", 30)
        assert col.wait(lambda: (col.reported.get("line3-cam1") or {}).get("active") == "pcb-screen@1", 30)
        assert len(artifact_server.requests) == requests, "restart restored the release from the cache"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        fleet.loop_stop()
        col.close()
