"""Broker security with a real Mosquitto: per-device passwords and the ACL (device A cannot publish as B nor read
B's desired state), and TLS with a self-signed CA."""

from __future__ import annotations

import grp
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from fleet.acl import Acl
from fleet.broker import MqttClient
from fleet.credentials import reload_mosquitto, verify_mosquitto_hash
from fleet.protocol import Topics
from fleet.security import make_tls, mosquitto_hash, provision
from runtime.errors import ConfigError, Conflict, NotFound
from runtime.mqtt import TLSSettings
from tests.attacks.brokers import Creds, GeneratedMosquitto
from tests.conftest import Mosquitto
from tests.fleet.devicesim import wait_for


def _client(port: int, user: str, password: str, tls_ca=None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    if tls_ca:
        c.tls_set(ca_certs=str(tls_ca), cert_reqs=ssl.CERT_REQUIRED)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    return c


@pytest.fixture
def secured(tmp_path):
    topics = Topics("acme")
    creds = provision(tmp_path / "sec", ["dev-a", "dev-b"], topics, "fleet-svc")
    broker = Mosquitto(tmp_path / "broker", extra_conf=(
        "user root\nallow_anonymous false\n"
        f"password_file {tmp_path / 'sec' / 'passwd'}\n"
        f"acl_file {tmp_path / 'sec' / 'acl'}\n")).start()
    yield broker, topics, creds
    broker.stop()


def test_password_hash_is_what_mosquitto_passwd_would_write():
    h = mosquitto_hash("secret", salt=b"0123456789ab")
    assert h.startswith("$7$101$MDEyMzQ1Njc4OWFi$") and len(h.split("$")[-1]) == 88


def test_device_cannot_publish_as_another_or_read_its_desired(secured):
    broker, t, creds = secured
    fleet = _client(broker.port, "fleet-svc", creds["fleet-svc"].password)
    seen: list[str] = []
    fleet.on_message = lambda c, u, m: seen.append(m.topic)
    fleet.subscribe(t.all_devices("predictions"), qos=1)
    fleet.subscribe(t.all_devices("reported"), qos=1)
    for dev in ("dev-a", "dev-b"):
        fleet.publish(t.device(dev, "desired"), json.dumps({"for": dev}).encode(), qos=1, retain=True).wait_for_publish(5)
    a = _client(broker.port, "dev-a", creds["dev-a"].password)
    got: dict[str, list[bytes]] = {}
    a.on_message = lambda c, u, m: got.setdefault(m.topic, []).append(m.payload)
    a.subscribe(t.device("dev-a", "desired"), qos=1)
    a.subscribe(t.device("dev-b", "desired"), qos=1)
    a.subscribe(t.device("dev-b", "cmd"), qos=1)
    wait_for(lambda: t.device("dev-a", "desired") in got, 5, "dev-a's own desired state")
    a.publish(t.device("dev-b", "predictions"), b"forged", qos=1).wait_for_publish(5)
    a.publish(t.device("dev-b", "reported"), b"forged", qos=1, retain=True).wait_for_publish(5)
    a.publish(t.device("dev-a", "predictions"), b"mine", qos=1).wait_for_publish(5)
    a.publish(t.device("dev-a", "desired"), b"self-promotion", qos=1, retain=True).wait_for_publish(5)
    fleet.publish(t.device("dev-b", "cmd"), b"{}", qos=1).wait_for_publish(5)
    wait_for(lambda: t.device("dev-a", "predictions") in seen, 5, "dev-a's own publish to arrive")
    time.sleep(0.5)  # let anything that wrongly got through arrive too
    assert t.device("dev-b", "predictions") not in seen and t.device("dev-b", "reported") not in seen
    assert t.device("dev-b", "desired") not in got and t.device("dev-b", "cmd") not in got
    assert got[t.device("dev-a", "desired")] == [json.dumps({"for": "dev-a"}).encode()]
    # dev-b still sees its own desired state, untouched by dev-a
    b = _client(broker.port, "dev-b", creds["dev-b"].password)
    got_b: list[bytes] = []
    b.on_message = lambda c, u, m: got_b.append(m.payload)
    b.subscribe(t.device("dev-b", "desired"), qos=1)
    wait_for(lambda: got_b, 5, "dev-b's desired")
    assert got_b == [json.dumps({"for": "dev-b"}).encode()]
    # a device may read its desired state but not write it: the retained value is still the fleet's
    again: list[bytes] = []
    b2 = _client(broker.port, "fleet-svc", creds["fleet-svc"].password)
    b2.on_message = lambda c, u, m: again.append(m.payload)
    b2.subscribe(t.device("dev-a", "desired"), qos=1)
    wait_for(lambda: again, 5, "dev-a's retained desired")
    assert again == [json.dumps({"for": "dev-a"}).encode()]
    for c in (fleet, a, b, b2):
        c.disconnect()
        c.loop_stop()


def test_a_device_reads_its_own_acks_and_not_anothers(secured):
    """The `acks` topic (fleet -> device, the fleet's commit acknowledgements) is readable by its device only, and no
    device may write it: a forged ack would make a device delete records the fleet never stored."""
    broker, t, creds = secured
    fleet = _client(broker.port, "fleet-svc", creds["fleet-svc"].password)
    a = _client(broker.port, "dev-a", creds["dev-a"].password)
    b = _client(broker.port, "dev-b", creds["dev-b"].password)
    got_a: list[tuple[str, bytes]] = []
    got_b: list[tuple[str, bytes]] = []
    a.on_message = lambda c, u, m: got_a.append((m.topic, m.payload))
    b.on_message = lambda c, u, m: got_b.append((m.topic, m.payload))
    for c in (a, b):
        c.subscribe([(t.device("dev-a", "acks"), 1), (t.device("dev-b", "acks"), 1), (t.all_devices("acks"), 1)])
    time.sleep(0.5)  # the SUBACKs
    a.publish(t.device("dev-b", "acks"), b"forged by dev-a", qos=1).wait_for_publish(5)
    a.publish(t.device("dev-a", "acks"), b"self-acknowledged by dev-a", qos=1).wait_for_publish(5)
    fleet.publish(t.device("dev-a", "acks"), b"for dev-a", qos=1).wait_for_publish(5)
    fleet.publish(t.device("dev-b", "acks"), b"for dev-b", qos=1).wait_for_publish(5)
    wait_for(lambda: got_a and got_b, 5, "each device's own ack")
    time.sleep(0.5)  # let anything that wrongly got through arrive too
    # (a copy per matching subscription: the wildcard is accepted but delivers only what the ACL lets it read)
    assert set(got_a) == {(t.device("dev-a", "acks"), b"for dev-a")}
    assert set(got_b) == {(t.device("dev-b", "acks"), b"for dev-b")}
    for c in (fleet, a, b):
        c.disconnect()
        c.loop_stop()
    # the embedded broker evaluates the same ACL text
    acl = Acl.parse((broker.conf.parent.parent / "sec" / "acl").read_text())
    assert acl.allows("dev-a", "dev-a", t.device("dev-a", "acks"), "read")
    assert not acl.allows("dev-a", "dev-a", t.device("dev-b", "acks"), "read")
    assert not acl.allows("dev-a", "dev-a", t.device("dev-a", "acks"), "write")
    assert acl.allows_subscribe("dev-a", "dev-a", t.device("dev-a", "acks"))
    assert not acl.allows_subscribe("dev-a", "dev-a", t.all_devices("acks"))


def test_wrong_password_is_refused(secured):
    broker, t, creds = secured
    with pytest.raises(ConfigError, match="cannot connect"):
        MqttClient(broker.url, "x", username="dev-a", password="wrong").start(wait=2)
    ok = MqttClient(broker.url, "y", username="dev-a", password=creds["dev-a"].password, persistent=False).start(5)
    ok.stop()


def test_tls_with_a_self_signed_ca(tmp_path):
    pki = make_tls(tmp_path / "pki", "localhost")
    broker = Mosquitto(tmp_path / "broker", extra_conf=(
        f"user root\ncafile {pki['ca']}\ncertfile {pki['cert']}\nkeyfile {pki['key']}\nallow_anonymous true\n")).start()
    try:
        url = f"mqtts://localhost:{broker.port}"
        tls = TLSSettings(ca_file=pki["ca"])
        sub = MqttClient(url, "tls-sub", tls=tls, persistent=False)
        got: list[bytes] = []
        sub.on_message(lambda m: got.append(m.payload))
        sub.subscribe("acme/dev/x/predictions")
        sub.start(10)
        pub = MqttClient(url, "tls-pub", tls=tls, persistent=False).start(10)
        pub.publish("acme/dev/x/predictions", b"over tls")
        wait_for(lambda: got, 5, "message over TLS")
        assert got == [b"over tls"]
        pub.stop()
        sub.stop()
        # a client that trusts another CA refuses the broker's certificate
        other = make_tls(tmp_path / "other", "localhost")
        with pytest.raises(ConfigError, match="cannot connect"):
            MqttClient(url, "tls-bad", tls=TLSSettings(ca_file=other["ca"]), persistent=False).start(wait=2)
        # and a plain-text client cannot talk to the TLS listener
        with pytest.raises(ConfigError, match="cannot connect"):
            MqttClient(f"mqtt://localhost:{broker.port}", "plain", persistent=False).start(wait=2)
    finally:
        broker.stop()


# -- provisioning an admin can follow (issue 12.6) -------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shadowline.cli", "fleet", *args], capture_output=True, text=True,
                          timeout=120)


def _hashes(d: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in (d / "passwd").read_text().splitlines() if line)


def test_hashes_interoperate_with_mosquitto_passwd(tmp_path):
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(f), "cam-a", "s3cret"], check=True)
    hashed = f.read_text().strip().split(":", 1)[1]
    assert hashed.startswith("$7$")
    assert verify_mosquitto_hash("s3cret", hashed) and not verify_mosquitto_hash("s3cret!", hashed)
    assert verify_mosquitto_hash("x", mosquitto_hash("x")) and not verify_mosquitto_hash("x", "plain")


def test_credentials_merge_and_reload_a_running_mosquitto(tmp_path):
    d = tmp_path / "creds"
    added = _cli("credentials", "add", "--dir", str(d), "--role", "fleet", "shadowline-fleet")
    assert added.returncode == 0, added.stderr
    assert _cli("credentials", "add", "--dir", str(d), "cam-a", "cam-b").returncode == 0
    first = _hashes(d)
    users = json.loads((d / "credentials.json").read_text())["users"]
    broker = GeneratedMosquitto(tmp_path / "mosq", Creds(d, {u: e["password"] for u, e in users.items()},
                                                         Topics())).start()
    try:
        a = MqttClient(broker.url, "cam-a", username="cam-a", password=users["cam-a"]["password"],
                       persistent=False).start(5)
        # issue 12: `fleet credentials --out creds cam-d` replaced the file; now cam-d is merged in
        res = _cli("credentials", "add", "--dir", str(d), "--reload-pid-file", str(broker.pid_file), "--json", "cam-d")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["reloaded_pid"] == broker.proc.pid
        after = _hashes(d)
        assert {u: after[u] for u in first} == first and set(after) == {*first, "cam-d"}
        assert (d / "acl").read_text().count("user shadowline-fleet") == 1
        assert stat.S_IMODE((d / "credentials.json").stat().st_mode) == 0o600
        users = json.loads((d / "credentials.json").read_text())["users"]
        wait_for(lambda: MqttClient(broker.url, "cam-d", username="cam-d", password=users["cam-d"]["password"],
                                    persistent=False).start(2) is not None, 10, "cam-d accepted after the reload")
        assert a.connected, "cam-a was dropped by adding cam-d"
        again = _cli("credentials", "add", "--dir", str(d), "cam-a")
        assert again.returncode == Conflict.exit_code and "rotate" in again.stderr and "Traceback" not in again.stderr
        # rotate cam-b: only its hash changes; revoke cam-a: the broker drops it at the reload
        assert _cli("credentials", "rotate", "--dir", str(d), "cam-b").returncode == 0
        rotated = _hashes(d)
        assert rotated["cam-b"] != after["cam-b"] and {u: rotated[u] for u in after if u != "cam-b"} == \
            {u: after[u] for u in after if u != "cam-b"}
        res = _cli("credentials", "revoke", "--dir", str(d), "--reload-pid-file", str(broker.pid_file), "cam-a")
        assert res.returncode == 0, res.stderr
        wait_for(lambda: not a.connected, 10, "cam-a disconnected once revoked")
        with pytest.raises(ConfigError, match="cannot connect"):
            MqttClient(broker.url, "cam-a", username="cam-a", password=users["cam-a"]["password"],
                       persistent=False).start(wait=2)
        missing = _cli("credentials", "revoke", "--dir", str(d), "nobody")
        assert missing.returncode == NotFound.exit_code and "nobody" in missing.stderr
        a.stop()
    finally:
        broker.stop()


def test_reload_refuses_a_pid_file_that_is_not_mosquitto(tmp_path):
    pid = tmp_path / "pid"
    pid.write_text(str(os.getpid()))
    with pytest.raises(ConfigError, match="not mosquitto"):
        reload_mosquitto(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="Mosquitto drops privileges only when started as root")
def test_tls_init_files_are_readable_by_mosquitto_after_it_drops_root(tmp_path):
    """Mosquitto started as root without `user root` drops to the mosquitto user before it reads its key: the
    key `fleet tls init` writes must be readable by that user's group, the CA key by root only."""
    base = Path(tempfile.mkdtemp(prefix="shadowline-tls-"))
    os.chmod(base, 0o755)
    try:
        tls, creds = base / "tls", base / "creds"
        res = _cli("tls", "init", "--out", str(tls), "--hostname", "localhost", "--hostname", "127.0.0.1",
                   "--device", "cam-a")
        assert res.returncode == 0, res.stderr
        assert stat.S_IMODE((tls / "ca.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((tls / "server.key").stat().st_mode) == 0o640
        assert (tls / "server.key").stat().st_gid == grp.getgrnam("mosquitto").gr_gid
        assert stat.S_IMODE((tls / "devices" / "cam-a.key").stat().st_mode) == 0o600
        os.chmod(tls, 0o755)
        assert _cli("credentials", "add", "--dir", str(creds), "cam-a").returncode == 0
        os.chmod(creds, 0o755)
        pw = json.loads((creds / "credentials.json").read_text())["users"]["cam-a"]["password"]
        run = base / "run"
        run.mkdir()
        shutil.chown(run, "mosquitto", "mosquitto")
        broker = GeneratedMosquitto(run, Creds(creds, {}, Topics()), tls_dir=tls, extra="user mosquitto\n")
        broker.start()
        try:
            c = MqttClient(f"mqtts://localhost:{broker.port}", "cam-a", username="cam-a", password=pw,
                           tls=TLSSettings(ca_file=tls / "ca.crt"), persistent=False).start(10)
            c.publish("shadowline/dev/cam-a/status", b"online")
            c.stop()
        finally:
            broker.stop()
        # what the old helper did (key readable by root only) stops this broker from starting
        os.chmod(tls / "server.key", 0o600)
        with pytest.raises(RuntimeError, match="mosquitto exited"):
            GeneratedMosquitto(base / "run2", Creds(creds, {}, Topics()), tls_dir=tls,
                               extra="user mosquitto\n").start()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_provision_writes_everything_one_device_needs(tmp_path, keys, bundles):
    from edge.agent.config import AgentConfig
    from fleet.security import Tokens, device_of

    creds, tls, tokens = tmp_path / "creds", tmp_path / "tls", tmp_path / "tokens.json"
    assert _cli("credentials", "add", "--dir", str(creds), "cam-a").returncode == 0
    assert _cli("tls", "init", "--out", str(tls), "--hostname", "localhost").returncode == 0
    before = _hashes(creds)
    out = tmp_path / "out" / "cam-z"
    args = ["provision", "cam-z", "--credentials-dir", str(creds), "--tokens-file", str(tokens), "--broker-url",
            "mqtts://localhost:8883", "--fleet-url", "https://fleet.example", "--tls-dir", str(tls),
            "--client-cert", "--trust-store", str(keys["trust"]), "--out", str(out), "--json"]
    # the device acts only on what the fleet's control key signed: provisioning without it is a usage error
    res = _cli(*args)
    assert res.returncode == 64 and "--config" in res.stderr and "--control-key" in res.stderr
    assert not out.exists()
    args += ["--control-key", str(keys["control_public"])]
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    files = [Path(p) for p in json.loads(res.stdout)["files"]]
    assert {f.name for f in files} >= {"broker-password", "fleet-token", "broker-ca.pem", "device.crt", "device.key",
                                       "signer.pub", "fleet.pub", "device.yaml"}
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert _hashes(creds)["cam-a"] == before["cam-a"] and "cam-z" in _hashes(creds)
    password = (out / "broker-password").read_text().strip()
    assert verify_mosquitto_hash(password, _hashes(creds)["cam-z"])
    token = (out / "fleet-token").read_text().strip()
    entry = Tokens.load(tokens).check(token)
    assert entry is not None and device_of(entry) == "cam-z" and entry.roles == ["device"]
    snippet = yaml.safe_load((out / "device.yaml").read_text())
    fleet_section = snippet["fleet"]
    assert fleet_section["username"] == "cam-z" and fleet_section["http_token"] == token
    assert fleet_section["fleet_keys"] == ["/etc/shadowline/fleet.pub"]
    assert (out / "fleet.pub").read_bytes() == keys["control_public"].read_bytes()
    # the snippet is a valid fleet section of the device config once its files are where it says
    AgentConfig.model_validate(fleet_section)
    # provisioning again replaces the device token (the old one stops working) and keeps the password
    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    assert Tokens.load(tokens).check(token) is None
    assert (out / "broker-password").read_text().strip() == password


def test_embedded_broker_listens_beyond_loopback_only_with_passwords(tmp_path):
    from fleet.broker import EmbeddedBroker
    from tests.conftest import free_port

    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        EmbeddedBroker(free_port(), "0.0.0.0", topics=Topics())
    with pytest.raises(ConfigError, match="refusing to listen on 192.0.2.7"):
        EmbeddedBroker(free_port(), "192.0.2.7", topics=Topics(), credentials_dir=tmp_path / "none")
    creds = provision(tmp_path / "creds", ["cam-a"], Topics())
    port = free_port()
    broker = EmbeddedBroker(port, "0.0.0.0", topics=Topics(), credentials_dir=tmp_path / "creds").start()
    try:
        ok = MqttClient(f"mqtt://127.0.0.1:{port}", "cam-a", username="cam-a", password=creds["cam-a"].password,
                        persistent=False).start(5)
        ok.stop()
        with pytest.raises(ConfigError, match="cannot connect"):
            MqttClient(f"mqtt://127.0.0.1:{port}", "anon", persistent=False).start(wait=2)
    finally:
        broker.stop()
