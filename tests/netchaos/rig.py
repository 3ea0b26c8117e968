"""The hub of the hostile-network lab and the observers of the tests: a real Mosquitto and a real
`shadowline fleet serve` inside the hub namespace, real `shadowline edge run` daemons inside the device namespaces,
a feeder that drops real PCB images into the devices' watched folders, a watcher of the fleet's device registry
(through its HTTP API) and a counter of every prediction record that crosses the broker."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import yaml

from fleet.control import ensure_control_key
from fleet.protocol import ReleaseSpec, StageSpec, Topics
from fleet.security import add_token
from tests.conftest import ROOT, until
from tests.netchaos.netlab import NetLab

MQTT_PORT, HTTP_PORT = 1883, 8700  # inside the hub namespace: nothing else listens there
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class Hub:
    """Mosquitto and the fleet service in the hub namespace, reachable at `lab.hub_ip` from everywhere."""

    def __init__(self, lab: NetLab, workdir: Path, trust: Path, devices: list[str]) -> None:
        self.lab, self.workdir = lab, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        tokens = workdir / "tokens.json"
        self.admin = add_token(tokens, "ops", ["admin"])
        self.device_tokens = {d: add_token(tokens, d, ["device"], device=d) for d in devices}
        broker = workdir / "broker"
        broker.mkdir()
        (broker / "mosquitto.conf").write_text(
            f"listener {MQTT_PORT} {lab.hub_ip}\nallow_anonymous true\n"
            f"persistence true\npersistence_location {broker}/\nlog_dest file {broker}/mosquitto.log\n"
            "max_queued_messages 100000\n"
            # as root Mosquitto would drop to the `mosquitto` user, who cannot write pytest's temp folders
            + ("user root\n" if os.geteuid() == 0 else ""))
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.broker = lab.popen(lab.hub, [exe, "-c", str(broker / "mosquitto.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: self._listening(MQTT_PORT), 15, "Mosquitto in the hub namespace")
        self.data = workdir / "fleet-data"
        # the fleet's control key (signs desired states and commands), made before the fleet starts so the device
        # configs can name its public half, as `fleet provision` does
        self.control_pub = ensure_control_key(self.data)[1]
        self.url = f"http://{lab.hub_ip}:{HTTP_PORT}"
        cfg = {"data_dir": str(self.data), "broker_url": f"mqtt://{lab.hub_ip}:{MQTT_PORT}",
               "http_host": lab.hub_ip, "http_port": HTTP_PORT, "public_url": self.url,
               "trust_store": str(trust), "tokens_file": str(tokens), "monitor_interval_s": 0,
               "rollout_tick_s": 0.1}
        (workdir / "fleet.json").write_text(json.dumps(cfg))
        self.log = workdir / "fleet.log"
        with open(self.log, "ab") as log:
            self.fleet = lab.popen(lab.hub, [sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--config",
                                             str(workdir / "fleet.json")], cwd=ROOT, env=ENV, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin}"}, timeout=30)
        until(self._ready, 60, "the fleet service in the hub namespace to be ready")

    def _listening(self, port: int) -> bool:
        assert self.broker.poll() is None, "mosquitto exited"
        try:
            socket.create_connection((self.lab.hub_ip, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def _ready(self) -> bool:
        assert self.fleet.poll() is None, self.log.read_text()[-3000:]
        try:
            return self.http.get("/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def release(self, tar: Path) -> str:
        """Push a signed bundle tar and create a one-stage release of it; returns its ref (name@revision)."""
        bundle = self.call("POST", "/api/bundles", content=tar.read_bytes(),
                           headers={"Content-Type": "application/x-tar", "X-Bundle-Name": tar.name})["id"]
        spec = ReleaseSpec(name="pcb-screen", stages=[StageSpec(role="screen", bundle=bundle,
                                                                candidate_classes=["Defective"], threshold=0.5)])
        made = self.call("POST", "/api/releases", json=spec.model_dump(mode="json", by_alias=True))
        return f"{made['name']}@{made['revision']}"

    def rollout(self, ref: str, group: str, wave_timeout_s: float) -> str:
        # the error/latency gates need more predictions than these tests make: only activation is judged
        gates = {"wave_timeout_s": wave_timeout_s, "min_predictions": 1_000_000, "min_reviews": 1_000_000}
        return self.call("POST", "/api/rollouts", json={"release": ref, "group": group, "waves": ["100%"],
                                                         "gates": gates})["id"]

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in self.call("GET", "/api/devices")}

    def store_ids(self, device: str) -> tuple[int, set[str]]:
        """(rows, ids) of the device's predictions in the fleet store, read from the store file itself."""
        db = self.data / "fleet.db"
        if not db.exists():
            return 0, set()
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            try:
                ids = [r[0] for r in conn.execute("SELECT id FROM predictions WHERE device = ?", (device,))]
            except sqlite3.OperationalError:  # not created yet
                return 0, set()
        return len(ids), set(ids)

    def desired(self, device: str) -> dict[str, Any] | None:
        """The fleet's latest desired state for `device` (release ref and revision), from the store."""
        with sqlite3.connect(f"file:{self.data / 'fleet.db'}?mode=ro", uri=True, timeout=10) as conn:
            row = conn.execute("SELECT release, revision FROM desired WHERE device = ?", (device,)).fetchone()
        return {"release": row[0], "revision": row[1]} if row else None

    def close(self) -> None:
        self.http.close()
        self.lab.kill(self.fleet, wait=30)
        self.lab.kill(self.broker)


class Daemon:
    """`shadowline edge run` inside the device's namespace, following the fleet and watching its inbox."""

    def __init__(self, lab: NetLab, hub: Hub, name: str, home: Path, trust: Path) -> None:
        self.lab, self.name, self.home = lab, name, home
        self.inbox = home / "inbox"
        self.inbox.mkdir(parents=True)
        self.db = home / "shadowline.db"
        self.releases = home / "releases"
        cfg = {"device_id": name, "trust_store": str(trust),
               "sources": [{"type": "folder", "path": str(self.inbox), "poll_s": 0.1, "settle_s": 0.0}],
               "store": {"path": str(self.db)}, "api": {"enabled": False}, "runner": {"threads": 1},
               "retention": {"dir": str(home / "images"), "sample_pct": 0.0},
               "fleet": {"broker_url": f"mqtt://{lab.hub_ip}:{MQTT_PORT}", "releases_dir": str(self.releases),
                         "trust_store": str(trust), "http_token": hub.device_tokens[name],
                         "fleet_keys": [str(hub.control_pub)],
                         # a dead link is noticed by the broker after 1.5 x keepalive: about 8 s
                         "keepalive_s": 5, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                         "publish_interval_s": 0.1, "smoke_images": 1, "download_timeout_s": 8}}
        (home / "device.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log = home / "daemon.log"
        with open(self.log, "ab") as log:
            self.proc = lab.popen(lab.devices[name].ns, [sys.executable, "-m", "shadowline.cli", "edge", "run",
                                                         "--config", str(home / "device.yaml")],
                                  cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
        return True

    def local_ids(self) -> set[str]:
        """Ids of every prediction the daemon made (its own store)."""
        if not self.db.exists():
            return set()
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            try:
                return {r[0] for r in conn.execute("SELECT id FROM predictions")}
            except sqlite3.OperationalError:
                return set()

    def latest_prediction(self) -> tuple[str, int] | None:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            row = conn.execute("SELECT release, revision FROM predictions ORDER BY created_at DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def outbox(self) -> tuple[int, int]:
        """(prediction records still waiting in the outbox, records ever dropped by its overflow policy)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            waiting = conn.execute("SELECT count(*) FROM outbox WHERE kind = 'predictions'").fetchone()[0]
            dropped = conn.execute("SELECT coalesce(sum(dropped), 0) FROM outbox_losses").fetchone()[0]
        return waiting, dropped

    def pending_frames(self) -> int:
        return sum(1 for p in self.inbox.iterdir() if p.is_file())

    def part_bytes(self) -> int:
        """Bytes of an artifact download in progress (its .part file), 0 when none."""
        return max((p.stat().st_size for p in self.releases.rglob("*.part")), default=0)


class Feeder(threading.Thread):
    """Drops one real PCB image into each device's watched folder every `every_s` (written under a dot-name,
    then renamed in, as the folder source asks of writers)."""

    def __init__(self, daemons: list[Daemon], images: list[Path], every_s: float) -> None:
        super().__init__(daemon=True)
        self.daemons, self.images, self.every_s = daemons, images, every_s
        self.sent: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.wait(self.every_s):
            src = self.images[n % len(self.images)]
            for d in self.daemons:
                tmp = d.inbox / f".{n:05d}-{src.name}"
                shutil.copyfile(src, tmp)
                os.replace(tmp, d.inbox / f"{n:05d}-{src.name}")
                self.sent[d.name] += 1
            n += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class StatusWatcher(threading.Thread):
    """Polls the fleet's device registry (GET /api/devices) and keeps each device's status changes with their
    wall-clock time: what an operator's dashboard would have shown, and when."""

    def __init__(self, hub: Hub, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.hub, self.every_s = hub, every_s
        self.history: dict[str, list[tuple[float, str]]] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        with httpx.Client(base_url=self.hub.url, headers={"Authorization": f"Bearer {self.hub.admin}"},
                          timeout=10) as http:
            while not self.halt.wait(self.every_s):
                try:
                    devices = http.get("/api/devices").json()
                except (httpx.HTTPError, ValueError):
                    continue
                now = time.time()
                with self.lock:
                    for d in devices:
                        seen = self.history.setdefault(d["id"], [])
                        if d.get("status") and (not seen or seen[-1][1] != d["status"]):
                            seen.append((now, d["status"]))

    def status(self, device: str) -> str | None:
        with self.lock:
            seen = self.history.get(device) or []
            return seen[-1][1] if seen else None

    def first(self, device: str, status: str, after: float, before: float = float("inf")) -> float | None:
        """When the fleet first showed `status` for `device` within [after, before]."""
        with self.lock:
            return next((t for t, s in self.history.get(device, []) if s == status and after <= t <= before), None)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class WireCounter:
    """Counts every prediction record id the broker delivers (all devices), to tell redeliveries on the wire
    (QoS 1 is at-least-once) from duplicates in the store (which must be none)."""

    def __init__(self, host: str) -> None:
        self.topics = Topics()
        self.ids: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="netchaos-wire", clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topics.all_devices("predictions"), qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, MQTT_PORT)
        self.client.loop_start()
        until(self.client.is_connected, 10, "the wire counter to connect")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None:
            return
        with self.lock:
            seen = self.ids.setdefault(parsed[0], Counter())
            for r in json.loads(msg.payload)["records"]:
                seen[r["id"]] += 1

    def copies(self, device: str) -> tuple[int, int]:
        """(records delivered, of which redeliveries) for `device`."""
        with self.lock:
            seen = self.ids.get(device, Counter())
            return sum(seen.values()), sum(c - 1 for c in seen.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
