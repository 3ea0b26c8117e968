"""The monitoring loop of a running fleet service (real Mosquitto): a recorded prediction stream, sent by a
device over MQTT, crosses the error-rate rule; the service raises the alert once (per device and fleet-wide),
stores it, publishes it on the fleet alerts topic, and clears it when the stream no longer crosses the rule."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest

from fleet.config import FleetConfig, load_config
from fleet.protocol import AlertRecord, Batch, PredictionRecord, Topics, encode
from fleet.service import FleetService
from runtime.errors import ConfigError
from tests.fleet.devicesim import wait_for


class Listener:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, AlertRecord]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-listener")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, AlertRecord.model_validate_json(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _stream(device: str, start: datetime, n: int, errors: int) -> list[PredictionRecord]:
    """n predictions one second apart, the first `errors` of them errors: error rate errors/n, by hand."""
    return [PredictionRecord(device=device, created_at=(start + timedelta(seconds=i)).isoformat(), source="http",
                             release="seal", revision=1, mode="production",
                             decision="error" if i < errors else "pass", top_label="Normal", top_score=0.9,
                             latency_ms={"total": 10.0}, error="decode failed" if i < errors else None)
            for i in range(n)]


def test_monitor_config_is_checked():
    assert FleetConfig().monitor_interval_s == 60.0
    with pytest.raises(ConfigError, match="monitor_window"):
        load_config(None, monitor_window="2h")
    with pytest.raises(ConfigError, match="alert_rules"):
        load_config(None, alert_rules={"error_rate": {"max_rate": 2}})


def test_running_service_raises_stores_publishes_and_clears(config, mosquitto):
    topics = Topics(config.prefix)
    assert topics.fleet("alerts") == "shadowline/fleet/alerts" and topics.parse(topics.fleet("alerts")) is None
    with pytest.raises(ValueError):
        topics.fleet("desired")
    listener = Listener(mosquitto.port, topics.fleet("alerts"))
    assert listener.ready.wait(10)
    svc = FleetService(config.model_copy(update={"broker_url": mosquitto.url, "monitor_interval_s": 0.2})).start()
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-1")
    dev.connect("127.0.0.1", mosquitto.port)
    dev.loop_start()
    try:
        fleet = svc.fleet
        start = datetime.now(timezone.utc) - timedelta(minutes=30)
        first = _stream("cam-1", start, 30, errors=3)  # 3 / 30 = 10% > 1%, with 30 >= 20 samples
        dev.publish(topics.device("cam-1", "predictions"),
                    encode(Batch(device="cam-1", kind="predictions", records=[p.model_dump(mode="json") for p in first])),
                    qos=1).wait_for_publish(10)
        wait_for(lambda: len(list(fleet.store.alerts())) >= 2, 30, "the error-rate alerts")
        raised = sorted(fleet.store.alerts(), key=lambda a: a.device)
        assert [(a.device, a.rule, a.state) for a in raised] == [("*", "error_rate", "raised"),
                                                                 ("cam-1", "error_rate", "raised")]
        assert raised[1].value == pytest.approx(0.1) and raised[1].threshold == 0.01
        # raised once: further passes over the same records change nothing
        passes = svc.config.monitor_interval_s * 6
        threading.Event().wait(passes)
        assert len(list(fleet.store.alerts())) == 2
        wait_for(lambda: len(listener.messages) >= 2, 10, "the published alerts")
        assert {(t, a.id) for t, a in listener.messages} == {("shadowline/fleet/alerts", a.id) for a in raised}

        # 300 more good predictions: 3 / 330 = 0.91% <= 1%, the condition no longer holds
        more = _stream("cam-1", start + timedelta(seconds=60), 300, errors=0)
        dev.publish(topics.device("cam-1", "predictions"),
                    encode(Batch(device="cam-1", kind="predictions", records=[p.model_dump(mode="json") for p in more])),
                    qos=1).wait_for_publish(10)
        wait_for(lambda: len(list(fleet.store.alerts())) >= 4, 30, "the alerts to clear")
        cleared = [a for a in fleet.store.alerts() if a.state == "cleared"]
        assert sorted(a.device for a in cleared) == ["*", "cam-1"]
        assert all(a.value == pytest.approx(3 / 330) for a in cleared)
        wait_for(lambda: len(listener.messages) >= 4, 10, "the published clearances")
        threading.Event().wait(passes)
        assert len(list(fleet.store.alerts())) == 4 and len(listener.messages) == 4
    finally:
        dev.loop_stop()
        listener.stop()
        svc.stop()
