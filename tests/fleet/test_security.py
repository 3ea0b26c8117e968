"""Broker security with a real Mosquitto: per-device passwords and the ACL (device A cannot publish as B nor read
B's desired state), and TLS with a self-signed CA."""

from __future__ import annotations

import json
import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.broker import BrokerTLS, MqttClient
from fleet.protocol import Topics
from fleet.security import make_tls, mosquitto_hash, provision
from runtime.errors import ConfigError
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
        tls = BrokerTLS(ca_file=pki["ca"])
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
            MqttClient(url, "tls-bad", tls=BrokerTLS(ca_file=other["ca"]), persistent=False).start(wait=2)
        # and a plain-text client cannot talk to the TLS listener
        with pytest.raises(ConfigError, match="cannot connect"):
            MqttClient(f"mqtt://localhost:{broker.port}", "plain", persistent=False).start(wait=2)
    finally:
        broker.stop()
