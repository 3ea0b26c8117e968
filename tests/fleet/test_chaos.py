"""Chaos: kill -9 of the fleet service during ingest, and of the broker during streaming. Publishers are plain
paho clients sending fleet.protocol batches with QoS 1 and retrying until PUBACK. Afterwards every record is in
the store exactly once, counted by record id."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleet.config import FleetConfig
from fleet.protocol import Topics
from fleet.service import FleetService
from tests.conftest import Mosquitto, free_port
from tests.fleet.devicesim import batch, client, predictions, publish_until_acked, wait_for

DEVICES, BATCHES, PER_BATCH = 4, 60, 50  # 12,000 records per test


class Streamer(threading.Thread):
    def __init__(self, url: str, device: str, topics: Topics, pause: float) -> None:
        super().__init__(daemon=True)
        self.url, self.device, self.topics, self.pause = url, device, topics, pause
        self.ids: list[str] = []
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            c = client(self.url, f"pub-{self.device}")
            wait_for(c.is_connected, 30, f"{self.device} connected")
            for b in range(BATCHES):
                recs = predictions(self.device, PER_BATCH, seed=b)
                publish_until_acked(c, self.topics.device(self.device, "predictions"),
                                    batch(self.device, "predictions", recs), timeout=120)
                self.ids += [r["id"] for r in recs]
                self.sent += 1
                time.sleep(self.pause)
            c.disconnect()
            c.loop_stop()
        except BaseException as err:  # surfaced by the test's assertion on .error
            self.error = err


def _stored(db: Path) -> tuple[int, int, set[str]]:
    if not db.exists():
        return 0, 0, set()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM predictions").fetchone()
        ids = {r[0] for r in con.execute("SELECT id FROM predictions")}
    except sqlite3.OperationalError:
        return 0, 0, set()
    finally:
        con.close()
    return n, distinct, ids


def _serve(data: Path, broker: str, keys: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--data-dir", str(data), "--broker-url", broker,
           "--port", str(free_port()), "--trust-store", str(keys["trust"]), "--client-id", "fleet-chaos"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


@pytest.mark.slow
def test_kill9_fleet_service_during_ingest(tmp_path, mosquitto, keys):
    data, topics = tmp_path / "fleet", Topics()
    db = data / "fleet.db"
    proc = _serve(data, mosquitto.url, keys, tmp_path / "serve.log")
    try:
        wait_for(lambda: _stored(db)[0] >= 0 and db.exists(), 60, "service store")
        time.sleep(1.0)  # let it subscribe (its session then persists in the broker)
        pubs = [Streamer(mosquitto.url, f"chaos-{i}", topics, 0.01) for i in range(DEVICES)]
        for p in pubs:
            p.start()
        wait_for(lambda: _stored(db)[0] > 1500, 90, "ingest under way")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = _stored(db)[0]
        time.sleep(1.0)  # publishers keep going: the broker queues for the fleet's persistent session
        proc = _serve(data, mosquitto.url, keys, tmp_path / "serve.log")
        for p in pubs:
            p.join(180)
            assert p.error is None and p.sent == BATCHES, p.error
        expected = {i for p in pubs for i in p.ids}
        assert len(expected) == DEVICES * BATCHES * PER_BATCH
        wait_for(lambda: _stored(db)[0] >= len(expected), 120, "every record ingested")
        time.sleep(0.5)
        n, distinct, ids = _stored(db)
        assert killed_at < len(expected)  # the kill did land mid-ingest
        assert n == distinct == len(expected) and ids == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_kill9_broker_during_streaming(tmp_path, config: FleetConfig):
    # Mosquitto writes its store only on autosave: save on every change so the fleet's persistent session (its
    # subscriptions and the messages queued for it) survives a kill -9.
    broker = Mosquitto(tmp_path / "broker", extra_conf="user root\nallow_anonymous true\nautosave_interval 1\n"
                                                         "autosave_on_changes true\n").start()
    svc = FleetService(config.model_copy(update={"broker_url": broker.url, "client_id": "fleet-b"})).start()
    try:
        db = svc.fleet.store.path
        time.sleep(1.5)  # the subscription is saved by the broker's next autosave
        pubs = [Streamer(broker.url, f"stream-{i}", svc.fleet.topics, 0.02) for i in range(DEVICES)]
        for p in pubs:
            p.start()
        wait_for(lambda: svc.fleet.store.count("predictions") > 1500, 90, "streaming under way")
        broker.kill()
        killed_at = svc.fleet.store.count("predictions")
        time.sleep(1.0)
        broker.start()
        for p in pubs:
            p.join(180)
            assert p.error is None and p.sent == BATCHES, p.error
        expected = {i for p in pubs for i in p.ids}
        wait_for(lambda: svc.fleet.store.count("predictions") >= len(expected), 120, "every record ingested")
        time.sleep(0.5)
        n, distinct, ids = _stored(db)
        assert killed_at < len(expected)
        assert n == distinct == len(expected) and ids == expected
    finally:
        svc.stop()
        broker.stop()
