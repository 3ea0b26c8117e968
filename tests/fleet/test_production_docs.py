"""docs/fleet.md's production setup, started as written: the Mosquitto config (which must be what `fleet
mosquitto-conf` prints) and the `fleet.yaml`, with only the paths, ports and host name replaced by this test's; the
provisioning commands of the same section make every file. A provisioned device then publishes over TLS and the
fleet stores its records."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from fleet.broker import MqttClient
from fleet.protocol import Topics
from runtime.mqtt import TLSSettings
from tests.conftest import Mosquitto, free_port
from tests.fleet.devicesim import batch, predictions, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fleet.md"


def _block(text: str, first_line: str) -> str:
    for m in re.finditer(r"```\w*\n(.*?)```", text, re.S):
        if m.group(1).startswith(first_line):
            return m.group(1)
    raise AssertionError(f"docs/fleet.md has no code block starting {first_line!r}")


def _cli(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p


def test_documented_mosquitto_conf_is_the_generated_one():
    doc = _block(DOC.read_text(), "# mosquitto.conf")
    printed = _cli("mosquitto-conf", "--dir", "/etc/shadowline/broker", "--tls-dir", "/etc/shadowline/tls").stdout
    assert doc.split("\n", 1)[1] == printed


@pytest.mark.skipif(os.geteuid() != 0, reason="Mosquitto as written drops root for its own user: run as root")
def test_the_documented_production_setup_starts_and_ingests(keys):
    text = DOC.read_text()
    base = Path(tempfile.mkdtemp(prefix="shadowline-prod-"))
    os.chmod(base, 0o755)
    ports = {"8883": str(free_port()), "1883": str(free_port()), "8700": str(free_port())}

    def local(s: str) -> str:
        for old, new in (("/etc/shadowline", f"{base}/etc"), ("/var/lib/mosquitto", f"{base}/mosquitto"),
                         ("/run/mosquitto", f"{base}/run"), ("/var/lib/shadowline", f"{base}/var"),
                         ("fleet.plant.example", "localhost"),
                         # the alerting channels' hosts: loopback, where nothing listens (no traffic leaves)
                         ("alerts.plant.example", "127.0.0.1"), ("smtp.plant.example", "127.0.0.1")):
            s = s.replace(old, new)
        for old, new in ports.items():
            s = re.sub(rf"\b{old}\b", new, s)
        return s

    serve = None
    try:
        etc = base / "etc"
        for d in ("etc", "mosquitto", "run", "var"):
            (base / d).mkdir(mode=0o755)
        shutil.chown(base / "mosquitto", "mosquitto", "mosquitto")
        shutil.chown(base / "run", "mosquitto", "mosquitto")
        shutil.copytree(keys["trust"], etc / "trust")
        # the documented provisioning commands, in order
        _cli("tls", "init", "--out", f"{etc}/tls", "--hostname", "localhost")
        _cli("credentials", "add", "--dir", f"{etc}/broker", "--role", "fleet", "shadowline-fleet")
        for d in (etc, etc / "tls", etc / "broker"):
            os.chmod(d, 0o755)
        conf = local(_block(text, "# mosquitto.conf"))
        (base / "mosquitto.conf").write_text(conf)
        (etc / "fleet-broker-password").write_text(json.loads((etc / "broker" / "credentials.json").read_text())
                                                   ["users"]["shadowline-fleet"]["password"] + "\n")
        os.chmod(etc / "fleet-broker-password", 0o600)
        (etc / "smtp-password").write_text("not-used-here\n")
        os.chmod(etc / "smtp-password", 0o600)
        admin = _cli("token", "create", "--tokens-file", f"{etc}/tokens.json", "--name", "ops",
                     "--role", "admin").stdout.strip()
        mosq = Mosquitto(base / "run", port=int(ports["8883"]))
        mosq.conf = base / "mosquitto.conf"  # the documented config, as it is
        mosq.spawn()
        pid_file = base / "run" / "mosquitto.pid"
        try:
            fleet_yaml = base / "fleet.yaml"
            fleet_yaml.write_text(local(_block(text, "# fleet.yaml")))
            log = open(base / "serve.log", "wb")
            serve = subprocess.Popen([sys.executable, "-m", "shadowline.cli", "fleet", "serve", "--config",
                                      str(fleet_yaml)], stdout=log, stderr=log)
            url = f"http://127.0.0.1:{ports['8700']}"

            def ready() -> bool:
                try:
                    return httpx.get(url + "/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, 60, "the documented fleet.yaml to serve: " + str(base / "serve.log"))
            # the documented alerting channels are loaded: each has its notification counters from the start
            metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {admin}"}).text
            assert {m for m in re.findall(r'shadowline_fleet_alert_notifications_total\{channel="([^"]+)"', metrics)} \
                == {"on-call", "quality-team"}, metrics
            out = base / "line3-jetson-02"
            _cli("provision", "line3-jetson-02", "--credentials-dir", f"{etc}/broker", "--tokens-file",
                 f"{etc}/tokens.json", "--broker-url", f"mqtts://localhost:{ports['8883']}", "--fleet-url", url,
                 "--tls-dir", f"{etc}/tls", "--trust-store", f"{etc}/trust", "--config", str(fleet_yaml),
                 "--out", str(out), "--reload-pid-file", str(pid_file))
            # the device trusts the control key the running fleet signs with (made on its first start)
            data_dir = Path(yaml.safe_load(fleet_yaml.read_text())["data_dir"])
            assert (out / "fleet.pub").read_bytes() == (data_dir / "control.pub").read_bytes()
            dev = MqttClient(f"mqtts://localhost:{ports['8883']}", "line3-jetson-02", username="line3-jetson-02",
                             password=(out / "broker-password").read_text().strip(),
                             tls=TLSSettings(ca_file=out / "broker-ca.pem"), persistent=False)
            wait_for(lambda: dev.start(2) is not None, 20, "the provisioned device to connect over TLS")
            recs = predictions("line3-jetson-02", 5)
            dev.publish(Topics().device("line3-jetson-02", "predictions"), batch("line3-jetson-02", "predictions", recs))
            dev.stop()
            h = {"Authorization": f"Bearer {admin}"}
            wait_for(lambda: httpx.get(url + "/api/ingest", headers=h).json()["stored"]["predictions"] == 5, 20,
                     "the records to be stored")
            # the device's own token downloads nothing it was not sent, and reads its inspector list
            tok = (out / "fleet-token").read_text().strip()
            r = httpx.get(url + "/api/devices/line3-jetson-02/inspectors", headers={"Authorization": f"Bearer {tok}"})
            assert r.status_code == 200 and r.json() == {"inspectors": []}
        finally:
            mosq.stop()
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(20)
        shutil.rmtree(base, ignore_errors=True)
