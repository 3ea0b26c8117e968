"""The agent on a broker with TLS (self-signed CA), per-device passwords and the fleet's ACL, speaking MQTT 5."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from edge.agent.config import AgentConfig
from edge.agent.headless import HeadlessHost
from edge.agent.runtime import Agent
from fleet.protocol import Topics
from fleet.security import make_tls, provision
from runtime.mqtt import TLSSettings
from tests.agent.conftest import PCB_IMAGES, desired_for, signed
from tests.agent.mqtt_helpers import Collector
from tests.conftest import Mosquitto


def test_tls_password_acl_mqtt5(tmp_path, keys, tars, artifact_server):
    sec = tmp_path / "sec"
    sec.mkdir()
    tls = make_tls(sec)
    creds = provision(sec, ["dev-1"], Topics(), fleet_user="fleet")
    conf = (f"user root\nallow_anonymous false\npassword_file {sec / 'passwd'}\nacl_file {sec / 'acl'}\n"
            f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n")
    broker = Mosquitto(tmp_path / "broker", conf).start()
    (sec / "dev-1.pass").write_text(creds["dev-1"].password + "\n")
    config = AgentConfig(broker_url=f"mqtts://localhost:{broker.port}", tls=TLSSettings(ca_file=tls["ca"]),
                         password_file=sec / "dev-1.pass", releases_dir=tmp_path / "releases",
                         trust_store=keys["trust"], mqtt_version="5", smoke_images=1, reconnect_min_s=0.1,
                         reconnect_max_s=0.5, fleet_keys=[keys["control_public"]])
    agent = Agent(config, HeadlessHost("dev-1", tmp_path / "host", PCB_IMAGES)).start()
    fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet")
    fleet.username_pw_set("fleet", creds["fleet"].password)
    fleet.tls_set(ca_certs=str(tls["ca"]))
    fleet.connect("localhost", broker.port)
    fleet.loop_start()
    try:
        assert Collector.wait(agent.connected.is_set, 10), "TLS + password connect"
        desired = desired_for(artifact_server, tars["v1.0"], "dev-1", 1)
        fleet.publish(Topics().device("dev-1", "desired"), signed(desired, keys), qos=1, retain=True).wait_for_publish(5)
        assert Collector.wait(lambda: agent.host.current()[0] is not None, 20)
        assert agent.host.current()[0].ref == "pcb-screen@1"
    finally:
        agent.stop()
        fleet.loop_stop()
        broker.stop()


def test_wrong_password_never_connects_and_agent_keeps_running(tmp_path, keys):
    sec = tmp_path / "sec"
    sec.mkdir()
    provision(sec, ["dev-1"], Topics(), fleet_user="fleet")
    broker = Mosquitto(tmp_path / "broker", f"user root\nallow_anonymous false\npassword_file {sec / 'passwd'}\n")
    broker.start()
    config = AgentConfig(broker_url=broker.url, password="wrong", releases_dir=tmp_path / "releases",
                         reconnect_min_s=0.1, reconnect_max_s=0.2, fleet_keys=[keys["control_public"]])
    agent = Agent(config, HeadlessHost("dev-1", tmp_path / "host")).start()
    try:
        assert not Collector.wait(agent.connected.is_set, 1.5)
        assert agent._worker is not None and agent._worker.is_alive()
    finally:
        agent.stop()
        broker.stop()
