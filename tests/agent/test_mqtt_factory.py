"""runtime.mqtt: the one settings model and client factory every MQTT client of the product is built with, against
real Mosquitto brokers (plain, TLS with a self-signed CA, mutual TLS, passwords), MQTT 3.1.1 and 5."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.protocol import Topics
from fleet.security import provision
from fleet.tls import issue_device_cert, make_tls
from runtime.errors import ConfigError
from runtime.mqtt import MqttSettings, TLSSettings, make_client, parse_url
from tests.agent.mqtt_helpers import Collector
from tests.conftest import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


def test_urls_and_settings_are_checked():
    assert parse_url("mqtt://broker.example") == ("broker.example", 1883, False)
    assert parse_url("mqtts://broker.example") == ("broker.example", 8883, True)
    assert parse_url("mqtts://10.0.0.5:9883") == ("10.0.0.5", 9883, True)
    for bad in ("tcp://h:1883", "ssl://h:8883", "http://h", "mqtt://", "h:1883", "mqtt://h:99999",
                "mqtt://u:p@h:1883", "mqtt://h:1883/topic"):
        with pytest.raises(ConfigError, match="broker URL"):
            parse_url(bad)
        with pytest.raises(ValidationError, match="broker URL"):
            MqttSettings(url=bad, client_id="c")
    with pytest.raises(ValidationError, match="use mqtts://"):
        MqttSettings(url="mqtt://h", client_id="c", tls=TLSSettings(ca_file=Path("ca.pem")))
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        TLSSettings(cert_file=Path("c.pem"))
    with pytest.raises(ValidationError, match="reconnect_max_s"):
        MqttSettings(url="mqtt://h", client_id="c", reconnect_min_s=5, reconnect_max_s=1)
    with pytest.raises(ValidationError, match="Extra inputs"):
        MqttSettings(url="mqtt://h", client_id="c", clean_session=True)
    with pytest.raises(ConfigError, match="tls.ca_file: .*missing.pem is not a file"):
        make_client(MqttSettings(url="mqtts://h", client_id="c", tls=TLSSettings(ca_file=Path("missing.pem"))))
    with pytest.raises(ConfigError, match="password_file: cannot read"):
        make_client(MqttSettings(url="mqtt://h", client_id="c", password_file=Path("/nonexistent/pass")))


def test_only_the_factory_builds_paho_clients():
    offenders = []
    for pkg in ("edge", "fleet", "hwbench", "runtime", "export", "shadowline"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path != ROOT / "runtime" / "mqtt.py" and "mqtt.Client(" in path.read_text():
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"build MQTT clients with runtime.mqtt.make_client: {offenders}"


def _round_trip(settings: MqttSettings, port_url: str | None = None, timeout: float = 10) -> bool:
    """Connect with `settings`, subscribe, publish QoS 1 to ourselves and get it back."""
    c = make_client(settings)
    got = threading.Event()
    c.client.on_connect = lambda cl, u, f, rc, p: (not rc.is_failure) and cl.subscribe("t/x", 1)
    c.client.on_subscribe = lambda cl, u, mid, rcs, p: cl.publish("t/x", b"hello", qos=1)
    c.client.on_message = lambda cl, u, msg: msg.payload == b"hello" and got.set()
    c.connect_async()
    c.client.loop_start()
    try:
        return got.wait(timeout)
    finally:
        c.client.disconnect()
        c.client.loop_stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_persistent_session_keeps_messages_while_away(mosquitto, protocol):
    """persistent=True (the default): the broker queues QoS 1 messages for a client that is away."""
    s = MqttSettings(url=mosquitto.url, client_id=f"persist-{protocol}", protocol=protocol, keepalive_s=10,
                     reconnect_min_s=0.1, reconnect_max_s=0.5)
    assert _round_trip(s)
    other = make_client(MqttSettings(url=mosquitto.url, client_id=f"pub-{protocol}", persistent=False))
    other.connect()
    other.client.loop_start()
    other.client.publish("t/x", b"while away", qos=1).wait_for_publish(5)
    other.client.disconnect()
    other.client.loop_stop()
    back = make_client(s)
    got: list[bytes] = []
    back.client.on_message = lambda cl, u, msg: got.append(msg.payload)
    back.connect_async()
    back.client.loop_start()
    try:
        assert Collector.wait(lambda: b"while away" in got, 10), "queued QoS 1 message delivered on reconnect"
    finally:
        back.client.disconnect()
        back.client.loop_stop()


def test_tls_password_and_mutual_tls_against_mosquitto(tmp_path):
    sec = tmp_path / "sec"
    pki = make_tls(sec / "tls")
    crt, key = issue_device_cert(sec / "tls", "dev-1")
    creds = provision(sec, ["dev-1"], Topics(), fleet_user="fleet")
    (sec / "dev-1.pass").write_text(creds["dev-1"].password + "\n")
    conf = (f"allow_anonymous false\npassword_file {sec / 'passwd'}\nacl_file {sec / 'acl'}\n"
            f"cafile {pki['ca']}\ncertfile {pki['cert']}\nkeyfile {pki['key']}\nrequire_certificate true\n")
    broker = Mosquitto(tmp_path / "broker", "user root\n" + conf).start()
    url = f"mqtts://localhost:{broker.port}"
    good_tls = TLSSettings(ca_file=pki["ca"], cert_file=crt, key_file=key)
    # the device's own topic subtree, as the ACL allows it
    topic = Topics().device("dev-1", "events")

    def round_trip(**kw) -> bool:
        s = MqttSettings(url=url, client_id="dev-1", username="dev-1", protocol="5", reconnect_min_s=0.1,
                         reconnect_max_s=0.2, **kw)
        c = make_client(s)
        acked = threading.Event()
        c.client.on_connect = lambda cl, u, f, rc, p: (not rc.is_failure) and cl.publish(topic, b"{}", qos=1)
        c.client.on_publish = lambda cl, u, mid, rc, p: acked.set()
        try:
            c.connect()
        except (OSError, ssl.SSLError):
            return False
        c.client.loop_start()
        try:
            return acked.wait(3)
        finally:
            c.client.disconnect()
            c.client.loop_stop()

    try:
        assert round_trip(tls=good_tls, password_file=sec / "dev-1.pass"), "TLS + client cert + password"
        assert not round_trip(tls=TLSSettings(ca_file=pki["ca"]), password_file=sec / "dev-1.pass"), \
            "the broker requires a client certificate"
        other = make_tls(tmp_path / "other")
        assert not round_trip(tls=TLSSettings(ca_file=other["ca"], cert_file=crt, key_file=key),
                              password_file=sec / "dev-1.pass"), "a broker certificate of another CA is refused"
        assert not round_trip(tls=good_tls, password="wrong"), "a wrong password is refused"
        assert not round_trip(tls=None, password_file=sec / "dev-1.pass"), \
            "mqtts:// without options trusts only the system CAs, not the self-signed one"
    finally:
        broker.stop()
