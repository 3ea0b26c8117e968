"""End to end: a running fleet service on a real Mosquitto broker; a device's prediction stream crosses the
error-rate rule; the monitoring loop raises the alert and the notify loop delivers it, grouped, by e-mail to a
real SMTP server and as an Alertmanager webhook to a real HTTP receiver; acknowledging it from the API of the
book stops repeats, and the clear arrives as one resolved message."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt

from fleet.config import FleetConfig
from fleet.protocol import Batch, PredictionRecord, Topics, encode
from fleet.service import FleetService
from tests.alerting.receivers import HttpReceiver, SmtpReceiver
from tests.fleet.devicesim import wait_for


def _stream(device: str, start: datetime, n: int, errors: int) -> list[dict]:
    return [PredictionRecord(device=device, created_at=(start + timedelta(seconds=i)).isoformat(), source="http",
                             release="seal", revision=1, mode="production", decision="error" if i < errors else "pass",
                             top_label="Normal", top_score=0.9, latency_ms={"total": 10.0}).model_dump(mode="json")
            for i in range(n)]


def test_running_service_mails_and_posts_an_alert(tmp_path: Path, mosquitto, keys):
    with SmtpReceiver() as smtp, HttpReceiver() as http:
        cfg = FleetConfig(
            data_dir=tmp_path / "fleet", trust_store=keys["trust"], broker_url=mosquitto.url,
            public_url="http://fleet.plant:8700", monitor_interval_s=0.2,
            alerting={"group_wait_s": 0.5, "group_interval_s": 1.0, "repeat_interval_s": 3600, "tick_s": 0.1,
                      "channels": [
                          {"kind": "webhook", "name": "hook", "url": http.url},
                          {"kind": "email", "name": "mail", "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                           "security": "none", "sender": "fleet@plant.example", "to": ["oncall@plant.example"]}]})
        svc = FleetService(cfg).start()
        topics = Topics(cfg.prefix)
        dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-1")
        dev.connect("127.0.0.1", mosquitto.port)
        dev.loop_start()
        try:
            start = datetime.now(timezone.utc) - timedelta(minutes=30)
            batch = Batch(device="cam-1", kind="predictions", records=_stream("cam-1", start, 30, errors=3))
            dev.publish(topics.device("cam-1", "predictions"), encode(batch), qos=1).wait_for_publish(10)

            wait_for(lambda: http.delivered() and smtp.messages, 30, "the alert by webhook and e-mail")
            [body] = http.delivered()
            assert body["status"] == "firing" and body["groupLabels"] == {"rule": "error_rate"}
            # the device and the fleet-wide figure crossed together: one message for both
            assert sorted(a["labels"]["device"] for a in body["alerts"]) == ["*", "cam-1"]
            assert {a["labels"]["severity"] for a in body["alerts"]} == {"critical"}
            assert {a["annotations"]["runbook_url"] for a in body["alerts"]} == {"docs/runbooks.md#error-rate"}
            [(rcpt, mail)] = smtp.messages
            assert rcpt == ["oncall@plant.example"] and "[FIRING:2] rule=error_rate (critical)" in mail["Subject"]
            assert "error rate 10.00% over 30 predictions" in mail.get_content()

            book = svc.fleet.alerts
            assert sorted((v.device, v.status) for v in book.current()) == [("*", "firing"), ("cam-1", "firing")]
            for v in book.current():
                book.ack(v.id, "olga", "on it")

            more = Batch(device="cam-1", kind="predictions",
                         records=_stream("cam-1", start + timedelta(seconds=60), 300, errors=0))
            dev.publish(topics.device("cam-1", "predictions"), encode(more), qos=1).wait_for_publish(10)
            wait_for(lambda: len(http.delivered()) >= 2 and len(smtp.messages) >= 2, 30, "the resolved message")
            last = http.delivered()[-1]
            assert last["status"] == "resolved" and len(last["alerts"]) == 2
            assert "[RESOLVED]" in smtp.messages[-1][1]["Subject"]
            assert len(http.delivered()) == 2 and len(smtp.messages) == 2
            assert book.current() == []
        finally:
            dev.loop_stop()
            svc.stop()
